#!/usr/bin/env bash
# Bootstrap the development environment (idempotent).
#
#   bash scripts/bootstrap.sh        # run
#   source scripts/bootstrap.sh      # run, and keep UV_* exports + uv on PATH in this shell
#
# 1. Ensures uv $FTI_UV_VERSION is available: uses `uv` on PATH (or a previous
#    bootstrap's copy) when its version matches, otherwise installs it with pip
#    into a private venv at $HOME/.cache/fti/uvtool.
# 2. Exports UV_SYSTEM_CERTS=1 (TLS through the system trust store / proxy CA) and
#    UV_PYTHON_DOWNLOADS=never (use the machine's python3.11, never download one).
# 3. Runs `uv sync --frozen --all-extras --compile-bytecode --python python3.11` in the repo
#    root, producing .venv exactly as pinned by uv.lock, with bytecode written once. The `spark`
#    extra (pyspark, a 456 MB download, for `fti features run --engine spark`) only with
#    FTI_WITH_SPARK=1 -- scripts/test.sh sets it, the demo does not; without it the sync is
#    --inexact, so a pyspark installed earlier stays.
#
# When sourced, the work runs in a subshell with `set -euo pipefail` so the
# caller's shell options are untouched; a failure returns non-zero.

FTI_UV_VERSION="0.13.9"
FTI_UVTOOL_DIR="${FTI_UVTOOL_DIR:-$HOME/.cache/fti/uvtool}"
FTI_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"

_fti_log() { printf 'bootstrap: %s\n' "$*" >&2; }

# Print the path of a uv binary whose version is exactly $FTI_UV_VERSION; return 1 if none.
_fti_find_uv() {
    local cand ver
    for cand in "$(command -v uv 2>/dev/null || true)" "$FTI_UVTOOL_DIR/bin/uv"; do
        [[ -n "$cand" && -x "$cand" ]] || continue
        ver="$("$cand" --version 2>/dev/null | awk '{print $2}')" || ver=""
        if [[ "$ver" == "$FTI_UV_VERSION" ]]; then
            printf '%s\n' "$cand"
            return 0
        fi
    done
    return 1
}

_fti_bootstrap_main() {
    set -euo pipefail
    export UV_SYSTEM_CERTS=1 UV_PYTHON_DOWNLOADS=never

    local uv
    if uv="$(_fti_find_uv)"; then
        _fti_log "using $uv ($FTI_UV_VERSION)"
    else
        _fti_log "installing uv==$FTI_UV_VERSION into $FTI_UVTOOL_DIR"
        if ! python3 -m venv "$FTI_UVTOOL_DIR"; then
            _fti_log "ERROR: 'python3 -m venv' failed (Debian: apt-get install python3-venv)"
            return 1
        fi
        "$FTI_UVTOOL_DIR/bin/python" -m pip install --quiet --disable-pip-version-check \
            "uv==$FTI_UV_VERSION"
        uv="$(_fti_find_uv)" || { _fti_log "ERROR: uv $FTI_UV_VERSION not found after install"; return 1; }
        _fti_log "installed $uv"
    fi

    if ! command -v python3.11 >/dev/null 2>&1; then
        _fti_log "ERROR: python3.11 not found on PATH (required by pyproject.toml)"
        return 1
    fi

    # --compile-bytecode (and compileall for the repo's own packages): with PYTHONDONTWRITEBYTECODE
    # set, as on CI machines, every process would otherwise recompile pandas/sklearn/mlflow at start.
    local extras=(--all-extras)
    [[ "${FTI_WITH_SPARK:-0}" == 1 ]] || extras+=(--no-extra spark --inexact)
    _fti_log "uv sync --frozen ${extras[*]} --compile-bytecode in $FTI_REPO_ROOT"
    (cd "$FTI_REPO_ROOT" && "$uv" sync --frozen "${extras[@]}" --compile-bytecode --python python3.11 \
        && .venv/bin/python -m compileall -q -j 0 shared feature_pipeline training_pipeline inference_service fti bench)
    _fti_log "ready: $FTI_REPO_ROOT/.venv ($("$FTI_REPO_ROOT/.venv/bin/python" --version 2>&1))"
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    # Sourced: isolate `set -euo pipefail` in a subshell, then export into the caller.
    if ( _fti_bootstrap_main ); then
        export UV_SYSTEM_CERTS=1 UV_PYTHON_DOWNLOADS=never
        if _fti_uv_path="$(_fti_find_uv)"; then
            case ":$PATH:" in
                *":$(dirname "$_fti_uv_path"):"*) ;;
                *) export PATH="$(dirname "$_fti_uv_path"):$PATH" ;;
            esac
        fi
        unset _fti_uv_path
    else
        _fti_log "FAILED"
        return 1
    fi
else
    set -euo pipefail
    _fti_bootstrap_main
fi
