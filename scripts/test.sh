#!/usr/bin/env bash
# The one test command:   bash scripts/test.sh [pytest args...]
#                 or:     bash scripts/test.sh --fast [pytest args...]
#
# --fast: the quick tier for the development loop -- unit and in-process app tests, without the
# ones marked slow (tests/unit shared -m "not slow"); CI always runs everything.
#
# Bootstraps the environment (scripts/bootstrap.sh), then runs
# `.venv/bin/python -m pytest "$@"` from the repo root (no args = whole suite), on
# $FTI_TEST_WORKERS (default 2) pytest-xdist workers; FTI_TEST_WORKERS=0 runs it in one process.
# Exits with pytest's exit code, except that exit 5 ("no tests collected")
# is turned into a failure (exit 1).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# every extra, pyspark included: the Spark engine's tests run (FTI_WITH_SPARK=0 skips them)
FTI_WITH_SPARK="${FTI_WITH_SPARK:-1}" bash "$root/scripts/bootstrap.sh"
export UV_SYSTEM_CERTS=1 UV_PYTHON_DOWNLOADS=never

cd "$root"
if [[ ${1:-} == --fast ]]; then
    shift
    set -- tests/unit shared -m "not slow" "$@"
fi
# Two workers by default (pytest-xdist): much of the suite waits on servers, containers and jobs, so a
# second worker uses what the first leaves idle. One test file per worker at a time (module fixtures are
# built once), taken in collection order: the long compose and e2e files start first, unit files fill in.
# Then the tests marked `alone`, with nothing beside them. FTI_TEST_WORKERS=0 runs everything in one process.
workers="${FTI_TEST_WORKERS:-2}"
pytest() {  # pytest [pytest args...]: echoed, run, its exit code returned
    echo "test.sh: ${FTI_TEST_PHASE:+FTI_TEST_PHASE=$FTI_TEST_PHASE }.venv/bin/python -m pytest $*" >&2
    "$root/.venv/bin/python" -m pytest "$@"
}
rc=0
if [[ $workers == 0 ]]; then
    pytest "$@" || rc=$?
else
    # Phase 1, on the workers: every test but those marked `alone` (a latency bound, such as a rollback
    # served within 10 s, measures the system only with no second worker loading the machine).
    FTI_TEST_PHASE=parallel pytest -n "$workers" --dist loadfile --no-loadscope-reorder "$@" || rc=$?
    # Phase 2, in this process: the `alone` tests the same arguments select (none: pytest exits 5).
    rc2=0
    FTI_TEST_PHASE=serial pytest "$@" || rc2=$?
    if [[ $rc -eq 5 && $rc2 -ne 5 ]]; then rc=0; fi  # everything selected was `alone`
    if [[ $rc2 -eq 5 && $rc -ne 5 ]]; then rc2=0; fi  # nothing selected was `alone`
    if [[ $rc -eq 0 ]]; then rc=$rc2; fi
fi

if [[ $rc -eq 5 ]]; then
    echo "test.sh: FAILED - pytest collected no tests (exit 5)" >&2
    exit 1
fi
exit "$rc"
