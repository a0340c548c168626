"""One row per entity: ``record_id`` may be the entity key (a customer table, one loan application per
applicant). History features are refused with a message saying why; everything else runs by spec alone,
and ``/predict`` answers exactly as the registered pipeline on the stored feature rows."""

from __future__ import annotations

import random
import shutil

import httpx
import pytest
import yaml
from pydantic import ValidationError

from shared.spec import DatasetSpec, load_spec
from tests.helpers import CHURN_SPEC, Server, assert_served_equals_registered, fti_env, raw_json_records, run_fti

pytestmark = [pytest.mark.e2e]


def _one_row_per_entity(raw: dict) -> dict:
    return {**raw, "entity_key": raw["record_id"], "features": {**raw["features"], "history": []}}


def test_history_features_with_one_row_per_entity_are_refused_naming_the_fix():
    raw = yaml.safe_load(CHURN_SPEC.read_text())
    with pytest.raises(ValidationError, match="history features .* need several rows per entity.*remove "
                                              "features.history"):
        DatasetSpec.model_validate({**raw, "entity_key": raw["record_id"]})
    with pytest.raises(ValidationError, match="cannot be both record_id and label"):
        DatasetSpec.model_validate({**_one_row_per_entity(raw), "label": raw["record_id"]})


def test_record_id_equal_to_entity_key_goes_through_all_three_stages(tmp_path):
    folder = tmp_path / "customers"
    shutil.copytree(CHURN_SPEC.parent, folder)
    spec_path = folder / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(_one_row_per_entity(yaml.safe_load(CHURN_SPEC.read_text())),
                                        sort_keys=False))
    spec = load_spec(spec_path).spec
    env = fti_env(tmp_path / "data", OMP_NUM_THREADS="1")
    for args in (["features", "run"], ["train"]):
        res = run_fti([*args, "--spec", str(spec_path)], env)
        assert res.returncode == 0, res.stderr[-3000:]
    assert "PROMOTED" in res.stdout

    records = random.Random(3).sample(raw_json_records(folder / "customers.csv", spec_path), 40)
    server = Server(spec_path, env, tmp_path / "server.log")
    try:
        server.wait_ready()
        r = httpx.post(f"{server.url}/predict", json={"records": records}, timeout=60)
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
    finally:
        server.stop()

    assert_served_equals_registered(tmp_path / "data", spec, records, preds)
