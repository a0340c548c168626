"""``model.positive_class``: which class of a binary label the score and the metrics describe."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn import metrics as skm

from inference_service.model_loader import LoadedModel
from shared.labels import check_binary, positive_index
from shared.registry_contract import Tag
from shared.spec import DatasetSpec, load_spec
from tests.helpers import CHURN_SPEC, fti_env
from training_pipeline.evaluate import compute_metrics

REPO = Path(__file__).resolve().parents[3]


def test_the_default_is_the_last_class_and_a_choice_is_matched_by_its_text():
    assert positive_index(np.array(["bad", "good"])) == 1
    assert positive_index(np.array(["bad", "good"]), "bad") == 0
    assert positive_index(np.array([0, 1]), "0") == 0 and positive_index(np.array([0, 1]), 1) == 1
    with pytest.raises(ValueError, match=r"not one of the label's classes \['no', 'yes'\].*quote the value"):
        positive_index(np.array(["no", "yes"]), True)  # what YAML makes of an unquoted `yes`
    with pytest.raises(ValueError, match="applies to a binary label; this label has 3 classes"):
        check_binary(np.array(["a", "b", "c"]), "a")
    check_binary(np.array(["a", "b", "c"]), None)


def test_binary_metrics_describe_the_chosen_class():
    rng = np.random.default_rng(3)
    y = np.where(rng.random(500) < 0.2, "bad", "good").astype(object)
    p_bad = np.clip(np.where(y == "bad", 0.6, 0.3) + rng.normal(0, 0.2, 500), 0, 1)
    proba = np.column_stack([p_bad, 1 - p_bad])
    classes = np.array(["bad", "good"], dtype=object)
    chosen, default = compute_metrics(classes, y, proba, "bad"), compute_metrics(classes, y, proba)
    assert chosen["positive_rate"] == pytest.approx(np.mean(y == "bad"))
    assert default["positive_rate"] == pytest.approx(np.mean(y == "good"))
    assert chosen["average_precision"] == skm.average_precision_score(y == "bad", p_bad)
    assert chosen["recall"] == skm.recall_score(y, classes[proba.argmax(1)], pos_label="bad")
    assert chosen["average_precision"] != default["average_precision"]
    assert chosen["roc_auc"] == pytest.approx(default["roc_auc"])  # symmetric: the same ranking either way


def test_an_unset_positive_class_keeps_the_spec_hash_and_a_set_one_changes_it():
    raw = yaml.safe_load(CHURN_SPEC.read_text())
    unset = DatasetSpec.model_validate(raw)
    assert unset.content_hash == load_spec(CHURN_SPEC).hash
    raw["model"]["positive_class"] = "no"
    chosen = DatasetSpec.model_validate(raw)
    assert chosen.model.positive_class == "no" and chosen.content_hash != unset.content_hash
    assert chosen.feature_hash == unset.feature_hash  # features unchanged: serving still matches


def test_serving_reads_the_score_column_from_the_model_versions_tag():
    def model(tags):
        return LoadedModel(pipeline=None, name="m", version="1", alias="champion", run_id="r", tags=tags,
                           features=[], classes=["bad", "good"])

    assert model({Tag.POSITIVE_CLASS: "bad"}).positive_index == 0
    assert model({}).positive_index == 1  # models registered before the tag: the last class, as before
    assert model({Tag.POSITIVE_CLASS: "gone"}).positive_index == 1


@pytest.mark.slow  # ~30 s: the feature job and `fti train` on the churn set, embedded stores
def test_training_with_a_chosen_positive_class_records_it_and_reports_its_metrics(tmp_path):
    folder = tmp_path / "churn"
    shutil.copytree(CHURN_SPEC.parent, folder)
    raw = yaml.safe_load((folder / "spec.yaml").read_text())
    raw["model"]["positive_class"] = "no"
    raw["model"]["primary_metric"] = "average_precision"
    (folder / "spec.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = fti_env(tmp_path / "data", OMP_NUM_THREADS="1")
    fti = [sys.executable, "-c", "import sys; from fti.cli import main; sys.exit(main())"]
    for args in (["features", "run"], ["train"]):
        res = subprocess.run([*fti, *args, "--spec", str(folder / "spec.yaml")], env=env, capture_output=True,
                             text=True, timeout=300, cwd=REPO)
        assert res.returncode == 0, res.stderr[-3000:]
    with sqlite3.connect(tmp_path / "data" / "mlflow.db") as conn:
        tags = dict(conn.execute("select key, value from model_version_tags").fetchall())
        metrics = dict(conn.execute("select key, value from latest_metrics").fetchall())
    assert tags[Tag.POSITIVE_CLASS] == "no"
    labels = yaml.safe_load((folder / "spec.yaml").read_text())["label"]
    import pandas as pd

    share_no = (pd.read_csv(folder / "customers.csv")[labels].astype(str) == "no").mean()
    assert abs(metrics["positive_rate"] - share_no) < 0.05  # the evaluation split's rate of "no", not "yes"
