"""The registry contract: the tag names and artifact layout every stage reads and writes.

Training writes these tags on its run and model version and these files beside the model;
serving, lineage, batch scoring and reproduce read them. Each name is written once, here, as a
typed constant, so a rename is one edit that every reader follows (and a typo is an
``AttributeError``, not a tag nobody reads).
"""

from __future__ import annotations

from enum import StrEnum


class Tag(StrEnum):
    """MLflow run and model-version tags (``fti.*``)."""

    DATASET = "fti.dataset"
    SPEC_HASH = "fti.spec_hash"
    FEATURE_SPEC_HASH = "fti.feature_spec_hash"
    FEATURE_VERSION = "fti.feature_version"
    FEATURE_CHECKSUM = "fti.feature_checksum"
    FEATURE_AS_OF = "fti.feature_as_of"
    MODEL_FEATURES = "fti.model_features"
    ESTIMATOR = "fti.estimator"
    SEED = "fti.seed"
    CODE_COMMIT = "fti.code_commit"
    SHARED_VERSION = "fti.shared_version"
    RUN_ID = "fti.run_id"
    VALIDATED = "fti.validated"
    POSITIVE_CLASS = "fti.positive_class"  # binary labels: the class the score is the probability of
    DECISION_THRESHOLD = "fti.decision.threshold"  # for people: serving reads extra_files/decision.json
    ARTIFACT_SHA256 = "fti.artifact_sha256"  # shared.model_file.artifact_digest of the registered model directory
    GATE_PROMOTED = "fti.gate.promoted"
    GATE_REASON = "fti.gate.reason"
    GATE_CHAMPION_VERSION = "fti.gate.champion_version"
    GATE_MARGIN = "fti.gate.margin"  # the non-inferiority margin the gate allowed (retraining policy)
    NEGATIVE_CONTROL = "fti.negative_control"  # trained on shuffled labels (fti train --negative-control)
    ROLLED_BACK_TO = "fti.rollback.to"  # set on a champion the alias was moved away from by fti rollback
    ROLLED_BACK_AT = "fti.rollback.at"
    REPRODUCES = "fti.reproduces"
    REPRODUCE_VERDICT = "fti.reproduce.verdict"
    SOURCE_SHA256 = "fti.source_sha256"
    ENV_PYTHON = "fti.env.python"
    ENV_IMAGE = "fti.env.image"
    ENV_LOCK_SHA256 = "fti.env.lock_sha256"


ENV_TAG_PREFIX = "fti.env."  # + fingerprint item (python, image, lock_sha256...)
LIB_TAG_PREFIX = "fti.lib."  # + enforced package name: its version at training
GATE_TAG_PREFIX = "fti.gate."  # the gate's decision (promoted, reason, champion_version)
TAG_PREFIX = "fti."


class Artifact(StrEnum):
    """Files logged with the model (under the MLflow model's ``extra_files/``) and with the run."""

    EXTRA_FILES = "extra_files"
    CERTIFICATE = "certificate.json"
    ENVIRONMENT = "environment.json"
    SPEC_DIR = "spec"
    FEATURE_VERSION = "lineage/feature_version.json"
    GATE_DECISION = "gate/decision.json"
    PER_CLASS_REPORT = "evaluation/per_class.json"  # precision/recall/F1 per class (run artifact)
    REFERENCE_PROFILE = "reference_profile.json"  # shared.profile: training's bins and counts, for the monitor
    DECISION = "decision.json"  # shared.decision: the fitted decision rule (threshold), beside the model


__all__ = ["ENV_TAG_PREFIX", "GATE_TAG_PREFIX", "LIB_TAG_PREFIX", "TAG_PREFIX", "Artifact", "Tag"]
