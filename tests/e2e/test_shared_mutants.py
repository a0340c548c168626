"""Mutation test: the certificate covers the shared code, not a sample of it.

Each mutant is a one-line change of ``shared`` on a different branch (a missing value, the
missing-category marker, a bound, a window edge, a same-time event, an exact sum, an empty history,
rounding, a late arrival, a bool, a missing flag, days since the last event, an aggregate). History
aggregates have two paths: every row at once (``shared/history_fast.py``), and the per-row rules for
rows with a late-known event in their window; the mutants sit where the certificate's rows run. That
the two paths agree bit for bit is ``tests/unit/shared/test_history_fast.py``'s job. A real
``fti serve`` process imports the mutated copy (``PYTHONPATH``) and must refuse the demo model
at load:

* as is, because the fingerprint's sha256 of ``shared``'s source differs while
  ``shared.__version__`` does not;
* with ``FTI_ALLOW_ENV_MISMATCH=true`` (the fingerprint overridden), because the parity
  certificate -- sampled rows, late arrivals and records built from the spec -- fails.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_certificate_and_fingerprint import _not_ready
from tests.helpers import REPO, Server, fti_env, run_fti, write_claims_spec

pytestmark = [pytest.mark.e2e]

# (branch, file, original line fragment, mutated fragment): each fragment occurs exactly once.
MUTANTS = [
    ("missing value -> 0", "transformers.py", "out[~np.isfinite(out)] = np.nan", "out[~np.isfinite(out)] = 0.0"),
    ("missing-category marker", "transformers.py", 'MISSING_CATEGORY = "__missing__"',
     'MISSING_CATEGORY = "__none__"'),
    ("lower bound inclusive", "raw.py", "low = np.flatnonzero(values < col.min)",
     "low = np.flatnonzero(values <= col.min)"),
    ("window edge", "history_fast.py", 'np.searchsorted(e_key, safe_code * width + rank, side="left")',
     'np.searchsorted(e_key, safe_code * width + rank, side="right")'),
    ("same-time events", "history_fast.py", 'hi = np.searchsorted(e_key, safe_code * width + q_rank, side="left")',
     'hi = np.searchsorted(e_key, safe_code * width + q_rank, side="right")'),
    ("exact window sums", "history_fast.py", "(prefix[h] - prefix[lo_]) / _SCALE",
     "float((prefix[h] - prefix[lo_]) >> 1074)"),
    ("empty history sum, all rows", "history_fast.py", "col[:] = np.where(cnt > 0, totals, 0.0)",
     "col[:] = np.where(cnt > 0, totals, np.nan)"),
    ("days since last, all rows", "history_fast.py", "(q_t - last).astype(np.float64) / _US_PER_DAY",
     "(q_t - last).astype(np.float64) // _US_PER_DAY"),
    ("max aggregate, all rows", "history_fast.py", 'ufunc = np.fmax if op == "max" else np.fmin',
     "ufunc = np.fmin"),
    ("empty history sum", "transformers.py", 'return 0.0 if op == "sum" else math.nan', "return math.nan"),
    ("rounding of log1p", "transformers.py", "np.log1p(np.where(a > -1, a, 0.0))",
     "np.log(1.0 + np.where(a > -1, a, 0.0))"),
    ("late arrivals", "transformers.py", "idx = idx[e_known[idx] <= known_at[i]]", "idx = idx"),
    ("bool parsing", "raw.py", "out[i] = 1.0 if v else 0.0", "out[i] = 1.0"),
    ("missing flag", "transformers.py", "return frame[inputs[0]].isna().to_numpy().astype(np.float64)",
     "return frame[inputs[0]].notna().to_numpy().astype(np.float64)"),
    ("days since last", "transformers.py", "return (t - int(times[idx[-1]])) / _US_PER_DAY",
     "return (t - int(times[idx[-1]])) // _US_PER_DAY"),
    ("max aggregate", "transformers.py", 'return float(vals.max() if op == "max" else vals.min())',
     'return float(vals.min() if op == "max" else vals.min())'),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("mutants")
    spec = write_claims_spec(root / "spec", n_policyholders=300)
    env = fti_env(root / "data", OMP_NUM_THREADS="1")
    for args in (["features", "run", "--spec", str(spec)], ["train", "--spec", str(spec)]):
        res = run_fti(args, env)
        assert res.returncode == 0, res.stderr[-3000:]
    server = Server(spec, env, root / "first.log")  # fills the model cache; the genuine code passes
    try:
        server.wait_ready()
        assert httpx.get(f"{server.url}/model", timeout=10).json()["certificate"]["passed"] is True
    finally:
        server.stop()
    return {"root": root, "spec": spec}


def _mutated_shared(tmp: Path, file: str, original: str, mutated: str) -> Path:
    site = tmp / "site"
    shutil.copytree(REPO / "shared", site / "shared", ignore=shutil.ignore_patterns("__pycache__"))
    path = site / "shared" / file
    text = path.read_text()
    assert text.count(original) == 1, f"{file}: {original!r} occurs {text.count(original)} times"
    path.write_text(text.replace(original, mutated))
    return site


def _refusal(trained: dict, tmp: Path, site: Path, **env: str) -> str:
    data = tmp / "data"
    shutil.copytree(trained["root"] / "data", data)
    server = Server(trained["spec"], fti_env(data, OMP_NUM_THREADS="1", PYTHONPATH=str(site), **env),
                    tmp / "server.log")
    try:
        ready = _not_ready(server, timeout=90)
        loaded_from = httpx.get(f"{server.url}/health/live", timeout=5)
        assert loaded_from.status_code == 200
        return str(ready["reason"])
    finally:
        server.stop()


@pytest.mark.parametrize(("branch", "file", "original", "mutated"), MUTANTS, ids=[m[0] for m in MUTANTS])
def test_each_mutant_is_refused_by_the_certificate(trained: dict, tmp_path: Path, branch: str, file: str,
                                                   original: str, mutated: str) -> None:
    site = _mutated_shared(tmp_path, file, original, mutated)
    reason = _refusal(trained, tmp_path, site, FTI_ALLOW_ENV_MISMATCH="true")
    assert "parity certificate" in reason and ("FAILED" in reason or "could not be checked" in reason), reason
    log = (tmp_path / "server.log").read_text()
    assert "ENVIRONMENT MISMATCH OVERRIDDEN" in log and "shared source (sha256)" in log  # the mutant was imported


def test_a_changed_source_with_the_same_version_is_refused_by_the_fingerprint(trained: dict, tmp_path: Path) -> None:
    site = _mutated_shared(tmp_path, "transformers.py", "out[~np.isfinite(out)] = np.nan",
                           "out[~np.isfinite(out)] = np.nan  # an innocent-looking edit")
    reason = _refusal(trained, tmp_path, site)
    assert "shared source (sha256): model " in reason and "FTI_ALLOW_ENV_MISMATCH" in reason, reason
    assert "parity certificate" not in reason
