"""How far a third-party batch call can differ from fti's per-record answer (docs/serving.md).

For each estimator family, a pipeline built exactly as ``fti train`` builds it is fitted on the
churn set's feature rows; every row is then scored (a) by scikit-learn on the whole set at once
-- what ``mlflow.pyfunc`` or ``mlflow models serve`` do with a batch -- and (b) by fti's
reference, each record as if alone (``shared.rowwise``). Writes ``bench/results/batch_invariance.json``
and prints a Markdown table. Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m bench.batch_invariance``.
"""

from __future__ import annotations

import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np

from feature_pipeline.extract import extract
from feature_pipeline.featureset import build, rows_frame
from shared import rowwise
from shared.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = {
    "HistGradientBoostingClassifier": ("sklearn.ensemble.HistGradientBoostingClassifier", {"max_iter": 40}),
    "RandomForestClassifier": ("sklearn.ensemble.RandomForestClassifier", {"n_estimators": 30}),
    "LogisticRegression": ("sklearn.linear_model.LogisticRegression", {"max_iter": 500}),
    "MLPClassifier": ("sklearn.neural_network.MLPClassifier", {"hidden_layer_sizes": [16], "max_iter": 300}),
    "GaussianNB": ("sklearn.naive_bayes.GaussianNB", {}),
    "KNeighborsClassifier": ("sklearn.neighbors.KNeighborsClassifier", {"n_neighbors": 15}),
}


def main() -> None:
    from training_pipeline.data import labels
    from training_pipeline.model import build_pipeline, estimator_class

    loaded = load_spec(ROOT / "tests" / "data" / "churn" / "spec.yaml")
    frame = rows_frame(build(loaded, extract(loaded)).rows, loaded.spec)
    y = labels(frame, loaded.spec)
    results = []
    for family, (cls, params) in FAMILIES.items():
        spec = loaded.spec
        pipe = build_pipeline(spec)  # the spec's preprocessing, with this family's estimator
        est = estimator_class(cls)(**params)
        if "random_state" in est.get_params():
            est.set_params(random_state=spec.model.seed)
        pipe.set_params(model=est)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe.fit(frame[spec.model_features], y)
        X = frame[spec.model_features]
        t0 = time.perf_counter()
        batch = np.asarray(pipe.predict_proba(X), dtype=np.float64)
        t_batch = time.perf_counter() - t0
        t0 = time.perf_counter()
        alone = rowwise.predict_proba(pipe, X)
        t_alone = time.perf_counter() - t0
        differ = (batch != alone).any(axis=1)
        ulps = np.abs(batch - alone) / np.spacing(np.maximum(np.abs(alone), np.finfo(np.float64).tiny))
        results.append({"family": family, "rows": len(X), "rows_differing": int(differ.sum()),
                        "max_abs_diff": float(np.max(np.abs(batch - alone))), "max_ulps": float(np.max(ulps)),
                        "batch_invariant_in_sklearn": bool(not differ.any()),
                        "scored_on_whole_batch_by_fti": rowwise.is_batch_invariant(pipe),
                        "seconds_sklearn_batch": round(t_batch, 4), "seconds_fti_per_record": round(t_alone, 4)})
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
                       "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
           "dataset": "tests/data/churn (all rows of one feature version)", "results": results}
    path = ROOT / "bench" / "results" / "batch_invariance.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"| family | rows differing (of {results[0]['rows']}) | max abs diff | max ulps | fti scores the batch "
          "at once | sklearn batch s | fti per-record s |")
    print("|---|---:|---:|---:|---|---:|---:|")
    for r in results:
        print(f"| {r['family']} | {r['rows_differing']} | {r['max_abs_diff']:.3g} | {r['max_ulps']:.0f} | "
              f"{'yes' if r['scored_on_whole_batch_by_fti'] else 'no (one row at a time)'} | "
              f"{r['seconds_sklearn_batch']:.3f} | {r['seconds_fti_per_record']:.3f} |")


if __name__ == "__main__":
    main()
