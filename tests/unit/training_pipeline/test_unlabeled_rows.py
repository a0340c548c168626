"""Rows whose label has not arrived yet stay in the feature version but are not trained on."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from shared import feature_table as ft
from shared.spec import load_spec
from tests.helpers import fti_env, write_claims_spec
from training_pipeline.data import prepare

SPEC = Path(__file__).resolve().parents[3] / "specs" / "claims.yaml"


def _info(n: int) -> ft.VersionInfo:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return ft.VersionInfo("claims", 1, "0" * 64, n, "h", "s", "c", "csv", "x", "0" * 64, now, [], {}, now)


def _frame(spec, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({spec.record_id: [f"c{i:04d}" for i in range(n)],
                         spec.entity_key: [f"p{i % 50}" for i in range(n)],
                         spec.event_time: pd.date_range("2025-01-01", periods=n, freq="h", tz="UTC"),
                         spec.label: rng.integers(0, 2, n).astype(float),
                         **{c: rng.normal(size=n) for c in spec.model_features}})


def test_unlabeled_rows_are_counted_and_kept_out_of_both_splits():
    spec = load_spec(SPEC).spec
    frame = _frame(spec)
    frame.loc[frame.index % 7 == 0, spec.label] = np.nan
    data = prepare(frame, spec, _info(len(frame)))
    assert data.unlabeled == int((frame.index % 7 == 0).sum()) > 0
    assert len(data.X_train) + len(data.X_test) == len(frame) - data.unlabeled
    assert not data.train[spec.label].isna().any() and not data.test[spec.label].isna().any()
    # the same split as a version that never held those rows: unlabeled rows change nothing else
    labeled_only = prepare(frame[frame[spec.label].notna()].reset_index(drop=True), spec, _info(len(frame)))
    assert data.train[spec.record_id].tolist() == labeled_only.train[spec.record_id].tolist()
    assert labeled_only.unlabeled == 0


def test_a_version_without_any_label_says_what_to_do():
    spec = load_spec(SPEC).spec
    frame = _frame(spec, 50).assign(**{spec.label: np.nan})
    with pytest.raises(ValueError, match="no labeled rows.*once labels have arrived"):
        prepare(frame, spec, _info(len(frame)))


@pytest.mark.slow  # ~40 s: the real feature job and `fti train` on the embedded stores
def test_a_source_with_rows_awaiting_their_label_publishes_and_trains(tmp_path):
    spec_path = write_claims_spec(tmp_path / "spec", n_policyholders=300,
                                  overrides={"columns": {**yaml.safe_load(SPEC.read_text())["columns"],
                                                         "is_fraud": {"type": "int", "nullable": True, "min": 0,
                                                                      "max": 1}}})
    csv = spec_path.parent / "raw" / "claims.csv"
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    latest = frame["claim_ts"].sort_values().iloc[-40:].index  # the newest claims: not yet investigated
    frame.loc[latest, "is_fraud"] = ""
    frame.to_csv(csv, index=False)
    env = fti_env(tmp_path / "data", OMP_NUM_THREADS="1")
    fti = [sys.executable, "-c", "import sys; from fti.cli import main; sys.exit(main())"]
    outs = []
    for args in (["features", "run"], ["train"]):
        res = subprocess.run([*fti, *args, "--spec", str(spec_path)], env=env, capture_output=True, text=True,
                             timeout=300, cwd=Path(__file__).resolve().parents[3])
        assert res.returncode == 0, res.stderr[-3000:]
        outs.append(res.stdout)
    assert "(40 without a label yet)" in outs[0]  # counted in the manifest, said by the feature job
    assert "(40 rows without a label yet skipped)" in res.stderr
    with sqlite3.connect(tmp_path / "data" / "features.db") as conn:
        (details,) = conn.execute("select details from fti_feature_versions").fetchone()
    assert json.loads(details)["unlabeled_rows"] == 40
    db = tmp_path / "data" / "mlflow.db"
    with sqlite3.connect(db) as conn:
        params = dict(conn.execute("select key, value from params").fetchall())
    assert params["n_unlabeled_skipped"] == "40"
    assert int(params["n_train"]) + int(params["n_eval"]) == len(frame) - 40
    res = subprocess.run([*fti, "reproduce", "claims-fraud/1", "--spec", str(spec_path)], env=env, capture_output=True,
                         text=True, timeout=300, cwd=Path(__file__).resolve().parents[3])
    assert res.returncode == 0 and "IDENTICAL" in res.stdout, res.stdout[-3000:]
