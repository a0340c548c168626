"""The ``fti`` command: a thin dispatcher over the three services.

Each sub-command imports only the service it runs, so the inference image
(which has no training dependencies) can still run ``fti serve``. Exit codes
(``shared.exit_codes``): 0 done, 1 a check answered "no" (``reproduce`` DIFFERENT,
``features show --verify``, ``lineage`` not recomputed), 2 a usage error, 3 an error
the user fixes (spec, data, settings, a database or registry, a missing version:
one message saying what to do next), 70 an internal error (with its traceback),
130 interrupted. Before any command runs, BLAS/OpenMP threads are limited
(``fti.threads``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.exit_codes import ExitCode

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
    return level


def _version() -> str:
    from importlib import metadata

    from shared import __version__ as shared_version

    try:
        dist = metadata.version("fti")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        dist = "unknown"
    return f"fti {dist} (shared {shared_version}, python {sys.version.split()[0]})"


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow.store.db.utils", "mlflow.utils.uv_utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _spec(path: str) -> Any:
    from shared.spec import load_spec

    return load_spec(path)


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


# --------------------------------------------------------------------------- commands

def cmd_data_generate(args: argparse.Namespace) -> int:
    from fti.demo_data import write_source

    path = write_source(args.spec, n_policyholders=args.policyholders, seed=args.seed, end=args.end,
                        drift_from=args.drift_from, known_at=args.known_at)
    print(f"wrote {path}")
    return 0


def cmd_features_run(args: argparse.Namespace) -> int:
    from feature_pipeline.config import Settings
    from feature_pipeline.pipeline import run

    result = run(_spec(args.spec), Settings(), as_of=args.as_of, strict=args.strict, engine_name=args.engine,
                 buckets=args.buckets, workers=args.workers)
    info = result.info
    state = "created" if result.published.created else "unchanged (identical content already published)"
    unlabeled = int((info.details or {}).get("unlabeled_rows") or 0)
    print(f"feature version {info.version} of {info.dataset!r}: {state}; {info.row_count} rows"
          + (f" ({unlabeled} without a label yet)" if unlabeled else "")
          + f", checksum {info.checksum[:16]}..., as of {info.as_of.isoformat()}Z ({result.seconds:.1f}s)")
    return 0


def cmd_spec_check(args: argparse.Namespace) -> int:
    """Everything ``fti features run`` checks, and what ``fti train`` would need, without writing."""
    import pandas as pd

    from feature_pipeline.featureset import rows_frame
    from feature_pipeline.pipeline import build, parse_as_of
    from shared.exit_codes import ExitCode
    from shared.labels import check_binary
    from training_pipeline.data import labels

    loaded = _spec(args.spec)
    spec = loaded.spec
    manifest, rows, warnings = build(loaded, as_of=parse_as_of(args.as_of), strict=args.strict)
    frame = rows_frame(rows, spec)  # decoded exactly as training will read the stored rows
    has_label = frame[spec.label].notna().to_numpy()
    # the classes as training reads them (integral floats -> integers)
    regression = spec.model.task == "regression"
    values = labels(frame.loc[has_label], spec)
    labeled = pd.Series(values).astype(str)
    counts = labeled.value_counts().sort_index()
    problems: list[str] = []
    if not len(labeled):
        problems.append(f"no row has a {spec.label!r} yet: `fti train` would refuse this version")
    elif regression:
        if len(counts) < 2:
            problems.append(f"every labeled row has {spec.label!r} = {counts.index[0]!r}: nothing to regress on")
    elif len(counts) < 2:
        problems.append(f"every labeled row has {spec.label!r} = {counts.index[0]!r}: a classifier needs at least "
                        "two classes")
    else:
        try:
            check_binary(list(counts.index), spec.model.positive_class)
        except ValueError as exc:
            problems.append(str(exc))
    print(f"spec {args.spec}: valid (dataset {spec.name!r}, spec hash {loaded.hash[:16]}...)")
    print(f"source {manifest['source_location']}: {len(frame)} feature rows would be published "
          f"(checksum {manifest['checksum'][:16]}...)")
    if regression and len(values):
        print(f"label {spec.label!r}: {len(values)} values from {float(values.min()):g} to {float(values.max()):g} "
              f"(mean {float(values.mean()):g}); {len(frame) - len(labeled)} rows without a label yet")
    else:
        print(f"label {spec.label!r}: " + ", ".join(f"{k!r} {v}" for k, v in counts.items())
              + f"; {len(frame) - len(labeled)} rows without a label yet")
    print(f"model {spec.model.name!r}: {spec.model.estimator.class_path} on {len(spec.model_features)} features "
          f"({', '.join(spec.model_features[:8])}{', ...' if len(spec.model_features) > 8 else ''})")
    for w in warnings:
        print(f"warning: {w}")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    print("nothing was written" + ("" if not problems else f"; {len(problems)} problem(s) to fix before training"))
    return int(ExitCode.USER_ERROR) if problems else 0


def cmd_spec_init(args: argparse.Namespace) -> int:
    import yaml

    from fti.spec_init import SpecInitError, draft
    from shared.exit_codes import ExitCode
    from shared.spec import DatasetSpec

    source = Path(args.source)
    if not source.is_file():
        print(f"fti: error: {source} is not a file", file=sys.stderr)
        return int(ExitCode.USER_ERROR)
    out = Path(args.out) if args.out else source.with_suffix(".yaml")
    if out.exists() and not args.force:
        print(f"fti: error: {out} exists; pass --force to replace it, or --out another path", file=sys.stderr)
        return int(ExitCode.USER_ERROR)
    try:
        spec, notes = draft(source, args.label, task=args.task, record_id=args.record_id, entity_key=args.entity_key,
                            event_time=args.event_time, name=args.name)
    except SpecInitError as exc:
        print(f"fti: error: {exc}", file=sys.stderr)
        return int(ExitCode.USER_ERROR)
    spec["source"]["path"] = os.path.relpath(source.resolve(), out.resolve().parent)
    DatasetSpec.model_validate(spec)  # a draft that does not load is a bug here, not the user's problem
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Drafted by `fti spec init --source {source} --label {args.label}`: read it, then edit.\n"
              "# Types come from the data; no min/max bounds are set (the observed range is in each description).\n"
              "# Check it, writing nothing: fti spec check --spec " + str(out) + "\n")
    out.write_text(header + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {out}: {len(spec['columns'])} columns; next: fti spec check --spec {out}")
    return 0


def cmd_features_list(args: argparse.Namespace) -> int:
    from feature_pipeline.config import Settings
    from shared import feature_table as ft
    from shared.db import make_engine

    spec = _spec(args.spec).spec
    engine = make_engine(Settings().feature_store_url)
    versions = ft.list_versions(engine, spec.name)
    if args.json:
        _print([v.as_dict() for v in versions])
        return 0
    if not versions:
        print(f"no feature versions of {spec.name!r} yet: run `fti features run --spec {args.spec}`")
    for v in versions:
        print(f"v{v.version}\t{v.row_count} rows\tas of {ft.iso_utc(v.as_of)}\tchecksum {v.checksum[:16]}\t"
              f"spec {v.spec_hash[:12]}\tcreated {ft.iso_utc(v.created_at)}")
    return 0


def cmd_features_show(args: argparse.Namespace) -> int:
    from feature_pipeline.config import Settings
    from shared import feature_table as ft
    from shared.db import make_engine

    spec = _spec(args.spec).spec
    engine = make_engine(Settings().feature_store_url)
    info = ft.get_version(engine, spec.name, args.version)
    out = info.as_dict()
    if args.verify:
        checksum, rows = ft.stored_checksum(engine, spec.name, info.version)
        out["verified"] = checksum == info.checksum and rows == info.row_count
    _print(out)
    return ExitCode.OK if out.get("verified", True) else ExitCode.CHECK_FAILED


def cmd_features_migrate(args: argparse.Namespace) -> int:
    from feature_pipeline.config import Settings
    from shared import feature_table as ft
    from shared.db import make_engine, redact

    settings = Settings()
    ft.upgrade(make_engine(settings.feature_store_url))
    print(f"feature store at {redact(settings.feature_store_url)} is at schema revision {ft.SCHEMA_HEAD}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from training_pipeline.config import Settings
    from training_pipeline.pipeline import AlreadyTrained, run

    try:
        r = run(_spec(args.spec), Settings(), feature_version=args.feature_version, promote=args.promote,
                skip_if_trained=args.skip_if_trained, negative_control=args.negative_control,
                gate_margin=args.gate_margin)
    except AlreadyTrained as done:
        print(str(done))
        return 0
    primary = r.decision.metric
    print(f"model {r.model_name} version {r.version} (run {r.run_id}, feature version {r.feature_version}): "
          f"{primary} {r.metrics[primary]:.4f}; {'PROMOTED' if r.decision.promoted else 'not promoted'} - "
          f"{r.decision.reason} ({r.seconds:.1f}s)")
    if "decision.threshold" in r.metrics:
        m = r.metrics
        print(f"decision rule: positive when the score is >= {m['decision.threshold']!r} (on the evaluation split: "
              f"precision {m['decision.precision']:.4f}, recall {m['decision.recall']:.4f}, "
              f"{m['decision.flag_rate']:.2%} of records flagged)")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient

    from shared import monitor_table as mt
    from shared.db import make_engine
    from training_pipeline.config import Settings
    from training_pipeline.rollback import rollback

    settings = Settings()
    alias = args.alias or settings.model_alias
    done = rollback(MlflowClient(settings.tracking_uri, settings.registry_uri), args.name, alias, to=args.to)
    print(f"{done.name}@{done.alias}: version {done.from_version} -> {done.to_version}; serving switches at its next "
          "alias check, after verifying the version (FTI_RELOAD_INTERVAL_SECONDS)")
    engine = make_engine(settings.feature_store_url)
    try:  # the record is best-effort: the registry move is what counts
        from shared import feature_table as ft

        ft.upgrade(engine)
        mt.save_decision(engine, {"dataset": args.dataset or "", "model_name": done.name, "created_at": ft.utcnow(),
                                  "action": "rollback", "trigger": {"by": "fti rollback"}, "report_ids": [],
                                  "champion_version": done.from_version, "candidate_version": done.to_version,
                                  "champion_score": None, "candidate_score": None,
                                  "verdict": f"alias {alias} moved back from {done.from_version} to {done.to_version}",
                                  "details": done.as_dict()})
    except Exception as exc:  # noqa: BLE001
        print(f"fti: warning: the rollback was not recorded in fti_retrain_decisions ({exc})", file=sys.stderr)
    finally:
        engine.dispose()
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from fti.reproduce import reproduce
    from shared import model_ref
    from training_pipeline.config import Settings

    model_ref.parse(args.model)  # a malformed MODEL is a usage error (2), before any store is opened
    report = reproduce(args.model, Settings(), spec_path=args.spec, register=args.register)
    if args.json:
        _print(report.as_dict())
    else:
        print(report.render())
    return report.exit_code


def cmd_keys_new(args: argparse.Namespace) -> int:
    import secrets

    from inference_service.guard import SCOPES, hash_key

    scopes = [x.strip() for x in args.scopes.split(",") if x.strip()]
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", args.id):
        print(f"fti: error: --id must be 1-64 of A-Z a-z 0-9 _ . - and --scopes among {', '.join(SCOPES)}"
              + (f" (unknown: {', '.join(unknown)})" if unknown else ""), file=sys.stderr)
        return ExitCode.USAGE
    key = secrets.token_urlsafe(32)
    entry = f"{args.id}:{hash_key(key)}:{'+'.join(scopes)}"
    if args.json:
        print(json.dumps({"id": args.id, "key": key, "entry": entry, "scopes": scopes}))
    else:
        print(f"key (give it to the client; it is not stored anywhere): {key}")
        print(f"entry (add it to FTI_API_KEYS or a line of FTI_API_KEYS_FILE): {entry}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from inference_service.main import serve

    if args.spec:
        os.environ["FTI_SPEC"] = args.spec
    return serve(host=args.host, port=args.port)


def _progress(line: str) -> None:
    print(f"predict-batch: {line}", file=sys.stderr, flush=True)


def cmd_predict_batch(args: argparse.Namespace) -> int:
    from inference_service.batch import BatchError, BatchSettings, ModelLoadError, run
    from shared import model_ref

    if args.model:
        model_ref.parse(args.model, what="--model")  # a malformed MODEL is a usage error (2)
    try:
        result = run(_spec(args.spec), BatchSettings(), feature_version=args.feature_version, model=args.model,
                     replace=args.replace, progress=_progress)
    except (BatchError, ModelLoadError) as exc:
        print(f"fti: error: {exc}", file=sys.stderr)
        return ExitCode.USER_ERROR
    if args.json:
        _print(result.as_dict())
    else:
        print(result.summary())
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from inference_service.config import Settings
    from inference_service.lineage import PredictionNotFound, build
    from inference_service.model_loader import MlflowLoader
    from shared.db import make_engine

    settings = Settings()
    spec_path = args.spec or settings.spec
    loaded = _spec(str(spec_path)) if spec_path else None
    engine = make_engine(settings.feature_store_url)
    loader = MlflowLoader(settings.tracking_uri, settings.registry_uri, settings.cache_dir,
                          allow_env_mismatch=settings.allow_env_mismatch,
                          memory_limit_mb=settings.model_load_memory_mb)
    try:
        out = build(args.prediction_id, engine=engine, loader=loader, spec=loaded, alias=settings.model_alias,
                    do_recompute=not args.no_recompute, spec_origin="--spec" if args.spec else "FTI_SPEC")
    except PredictionNotFound as exc:
        print(f"fti: error: {exc} (is FTI_DATABASE_URL the inference service's store?)", file=sys.stderr)
        return ExitCode.USER_ERROR
    finally:
        engine.dispose()
    if args.json:
        _print(out)
    else:
        _print_lineage(out)
    return ExitCode.OK if args.no_recompute or out["recomputed"] else ExitCode.CHECK_FAILED


def cmd_monitor_run(args: argparse.Namespace) -> int:
    from fti.retrain import cycle
    from monitoring_service.config import Settings
    from shared.cpu_priority import lower_cpu_priority

    loaded = _spec(args.spec)
    settings = Settings(**({"monitor_jobs": args.jobs} if args.jobs is not None else {}))
    lower_cpu_priority(settings.monitor_nice, settings.monitor_sched_idle)
    out_dir = Path(args.out) if args.out else settings.reports_path
    result = cycle(loaded, out_dir=out_dir, retrain=args.retrain, negative_control=args.negative_control,
                   include_partial=args.include_partial, recompute=args.recompute, settings=settings)
    if args.json:
        _print({"reports": result.reports, "new": result.new_reports, "unchanged": result.unchanged,
                "skipped_versions": result.skipped_versions, "decision": result.decision, "out": str(out_dir)})
        return 0
    if result.unchanged:
        print(f"{result.unchanged} window(s) already reported with the same labels, not computed again "
              "(--recompute computes them)")
    if not result.reports and not result.unchanged:
        print(f"no complete window of {loaded.spec.model.name} in the prediction log yet"
              + ("" if args.include_partial else " (--include-partial reports the one still filling)"))
    for r in result.reports:
        verdict = r["status"] if r["status"] != "ok" else \
            ("DRIFT: " + (", ".join(r["drifted"]) or "prediction") if r["drift"] else "no drift")
        print(f"v{r['model_version']} {r['window']} ({r['rows']} rows, {r['start']} .. {r['end']}): {verdict}; "
              f"{r['labeled_rows']} labeled; report {r['report_id']}")
    for version, why in result.skipped_versions.items():
        print(f"v{version} not monitored: {why}")
    print(f"{result.new_reports} new report(s) in fti_drift_reports; JSON and HTML under {out_dir}")
    d = result.decision
    if d is not None:
        extra = f" (candidate v{d['candidate_version']}: {d.get('candidate_score')} vs champion " \
                f"v{d.get('champion_version')}: {d.get('champion_score')})" if d.get("candidate_version") else ""
        print(f"retraining policy: {d['action']} - {d['verdict']}{extra}")
    return 0


def cmd_monitor_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from monitoring_service.app import create_app
    from monitoring_service.config import Settings
    from shared.cpu_priority import lower_cpu_priority

    settings = Settings()
    loaded = _spec(args.spec)
    logging.getLogger("fti.monitor").info("CPU priority: %s",
                                          lower_cpu_priority(settings.monitor_nice, settings.monitor_sched_idle))
    uvicorn.run(create_app(settings, loaded, retrain=not args.no_retrain), host=args.host or settings.monitor_host,
                port=args.port or settings.monitor_port, log_level="warning")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """A pipeline's worker: takes the retrainings the monitor requested, one at a time, until stopped."""
    import time

    from shared.db import make_engine

    loaded = _spec(args.spec)
    if args.stage == "features":
        from feature_pipeline.config import Settings as FeatureSettings
        from feature_pipeline.retrain_step import run_requested

        settings: Any = FeatureSettings()
    else:
        from training_pipeline.config import Settings as TrainSettings
        from training_pipeline.retrain_step import run_requested  # type: ignore[assignment]

        settings = TrainSettings()
    engine = make_engine(settings.feature_store_url)
    print(f"{args.stage} worker for {loaded.spec.name}: waiting for requested retrainings (every {args.interval}s)",
          flush=True)
    said = ""
    try:
        while True:
            try:
                done = run_requested(loaded, settings, engine)
            except Exception as exc:  # noqa: BLE001 - a store not reachable yet, or no monitor tables yet
                text = f"{args.stage} worker: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}; retrying"
                if text != said:
                    print(text, file=sys.stderr, flush=True)
                    said = text
                done = None
            if done is not None:
                print(f"retraining {done['decision_id']}: {done['action']} - {done['verdict']}", flush=True)
                continue
            if args.once:
                return 0
            time.sleep(args.interval)
    finally:
        engine.dispose()


def _print_lineage(out: dict[str, Any]) -> None:
    p, m, run, f = out["prediction"], out["model"], out["training_run"], out["features"]
    tr, hist = f["trained_on"], f["history_read_from"]
    outputs = json.dumps(p["outputs"], sort_keys=True)
    alias_now = m.get("alias_now")
    print(f"prediction   {p['prediction_id']} (request {p['request_id']}, {p['created_at']})")
    print(f"record       {p['record_id']} of {p['dataset']!r} (entity {p['entity_key']}, event time "
          f"{p['event_time']}) -> {outputs}")
    print(f"model        {m['name']} version {m['version']}"
          f"{' (validated)' if m.get('validated') else ''}; {m['alias']} now -> "
          f"{'version ' + alias_now if alias_now else 'no version'}")
    print(f"training run {run.get('run_id')} ({run.get('status', '?')}, ended {run.get('end_time', '?')})")
    print(f"features     trained on version {tr.get('version')} (as of {tr.get('as_of')}, checksum "
          f"{str(tr.get('checksum'))[:16]}...; manifest matches: {tr.get('manifest_matches_model_tags')}); "
          f"history read from version {hist.get('version')}")
    print(f"source       sha256 {out['source']['sha256']} ({out['source']['format']} at {out['source']['location']})")
    print(f"spec         hash {out['spec']['hash']} (features {str(out['spec']['feature_hash'])[:16]}...)")
    print(f"code         commit {out['code']['commit']} (feature job {out['code']['feature_job_commit']}), "
          f"shared {out['code']['shared_version']}")
    print("environment  " + ", ".join(f"{k}={v}" for k, v in out["environment"].items()))
    rc = out.get("recomputation")
    if rc is not None:
        verdict = "YES, identical prediction and probabilities" if out["recomputed"] else \
            f"NO: {rc.get('error') or 'max |diff| ' + str(rc.get('max_abs_diff'))}"
        print(f"recomputed   {verdict} (model from {rc.get('model_loaded_from', '?')}; spec from "
              f"{rc.get('spec', {}).get('origin', '?')})")
    for problem in out["problems"]:
        print(f"problem      {problem}")


# --------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fti", description="Feature / training / inference pipelines with proven parity",
                                epilog="exit codes: 0 done, 1 a check answered no, 2 usage, 3 an error to fix "
                                       "(spec, data, settings, services), 70 internal error, 130 interrupted")
    p.add_argument("--version", action="version", version=_version())
    p.add_argument("--log-level", type=_log_level, default=os.environ.get("FTI_LOG_LEVEL") or "INFO",
                   help=f"one of {', '.join(LOG_LEVELS)} (default: $FTI_LOG_LEVEL, else INFO)")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="demo data").add_subparsers(dest="action", required=True)
    g = data.add_parser("generate", help="write the seeded demo claims source where the spec points")
    g.add_argument("--spec", required=True, help="the dataset spec (YAML), e.g. specs/claims.yaml")
    g.add_argument("--policyholders", type=int, default=4000, help="how many policyholders (default: 4000)")
    g.add_argument("--seed", type=int, default=42, help="random seed: the same seed writes the same file")
    g.add_argument("--end", default="2025-12-31", help="the last day claims are filed (default: 2025-12-31)")
    g.add_argument("--drift-from", help="drift scenario: claims from this day on come from a shifted population "
                                        "(a third of agent/broker business moves online, amounts +35%%)")
    g.add_argument("--known-at", help="write only the rows ingested by the end of this day (the source as it "
                                      "stood then; write the same timeline again later for the next version)")
    g.set_defaults(func=cmd_data_generate)

    spec_cmd = sub.add_parser("spec", help="dataset specs").add_subparsers(dest="action", required=True)
    ck = spec_cmd.add_parser("check", help="validate the spec and its source as `fti features run` would, and "
                             "what training needs (label classes), writing nothing (exit 0 ok, 3 problems)")
    ck.add_argument("--spec", required=True, help="the dataset spec (YAML), e.g. specs/claims.yaml")
    ck.add_argument("--as-of", help="cutoff (ISO 8601): only rows that happened and arrived by then")
    ck.add_argument("--strict", action="store_true", help="fail on source columns the spec does not declare")
    ck.set_defaults(func=cmd_spec_check)
    si = spec_cmd.add_parser("init", help="draft a spec from a CSV file (types, roles, no bounds) for you to edit")
    si.add_argument("--source", required=True, help="the CSV file")
    si.add_argument("--label", required=True, help="the column the model predicts")
    si.add_argument("--task", choices=["classification", "regression"],
                    help="default: regression for non-integer numbers or integers with over 20 distinct values")
    si.add_argument("--record-id", help="the column unique per row (default: the first column that is)")
    si.add_argument("--entity-key", help="the column grouping rows by entity (default: the record id: one row each)")
    si.add_argument("--event-time", help="the ISO timestamp column of each row's event (default: none)")
    si.add_argument("--name", help="the dataset name (default: from the file name)")
    si.add_argument("--out", help="where to write the spec (default: the source path with .yaml)")
    si.add_argument("--force", action="store_true", help="replace an existing file at --out")
    si.set_defaults(func=cmd_spec_init)

    feats = sub.add_parser("features", help="the feature pipeline").add_subparsers(dest="action", required=True)
    r = feats.add_parser("run", help="validate the source and publish a new immutable feature version")
    r.add_argument("--spec", required=True, help="the dataset spec (YAML), e.g. specs/claims.yaml")
    r.add_argument("--as-of", help="cutoff (ISO 8601): only rows that happened and arrived by then")
    r.add_argument("--strict", action="store_true", help="fail on source columns the spec does not declare")
    r.add_argument("--engine", choices=["memory", "local", "spark"], help="memory: the whole source at once; local: "
                   "bounded memory, entity-hash buckets on disk; spark: the same buckets computed as Spark tasks on "
                   "FTI_SPARK_MASTER (needs the spark extra and Java 17) -- all three give the same rows and checksum "
                   "(default: FTI_FEATURE_ENGINE, memory)")
    r.add_argument("--buckets", type=int, help="the local and spark engines' entity buckets (default: "
                   "FTI_FEATURE_BUCKETS, else from the source's size: about 250,000 rows in the buckets computed at once)")
    r.add_argument("--workers", type=int, help="the local engine's worker processes (default: FTI_FEATURE_WORKERS, "
                   "else the CPUs the job may use; 1: compute in the job's own process)")
    r.set_defaults(func=cmd_features_run)
    ls = feats.add_parser("list", help="list feature versions")
    ls.add_argument("--spec", required=True, help="the dataset spec (YAML), e.g. specs/claims.yaml")
    ls.add_argument("--json", action="store_true", help="print the versions as JSON")
    ls.set_defaults(func=cmd_features_list)
    sh = feats.add_parser("show", help="show one version's manifest")
    sh.add_argument("version", type=int, nargs="?", help="default: the latest")
    sh.add_argument("--spec", required=True, help="the dataset spec (YAML), e.g. specs/claims.yaml")
    sh.add_argument("--verify", action="store_true", help="recompute the checksum from the stored rows")
    sh.set_defaults(func=cmd_features_show)
    mg = feats.add_parser("migrate", help="create or upgrade the feature-store schema")
    mg.set_defaults(func=cmd_features_migrate)

    t = sub.add_parser("train", help="the training pipeline")
    t.add_argument("--spec", required=True, help="the dataset spec (YAML), e.g. specs/claims.yaml")
    t.add_argument("--feature-version", type=int, help="default: the latest committed version")
    t.add_argument("--promote", choices=["auto", "always", "never"], default="auto",
                   help="auto: move the alias only if at least as good as the champion")
    t.add_argument("--skip-if-trained", action="store_true",
                   help="do nothing if a validated version already exists for this spec and feature content")
    t.add_argument("--negative-control", action="store_true",
                   help="fit on shuffled training labels (evaluated on the true ones): a model the gate must refuse")
    t.add_argument("--gate-margin", type=float, default=0.0,
                   help="non-inferiority margin: promote if at most this much worse than the champion (default 0)")
    t.set_defaults(func=cmd_train)

    rb = sub.add_parser("rollback", help="move the alias back to the champion the current one replaced (recorded "
                                         "by the gate); serving verifies it before it switches")
    rb.add_argument("name", help="the registered model, e.g. claims-fraud")
    rb.add_argument("--to", help="a validated version to move the alias to (default: the previous champion)")
    rb.add_argument("--alias", help="default: $FTI_MODEL_ALIAS, else champion")
    rb.add_argument("--dataset", help="the dataset name, for the record in fti_retrain_decisions")
    rb.set_defaults(func=cmd_rollback)

    rp = sub.add_parser("reproduce", help="retrain a registered model from its lineage and compare (exit 0 "
                                          "IDENTICAL, 1 DIFFERENT, 3 cannot: what is missing is said)")
    rp.add_argument("model", metavar="MODEL", help="NAME/VERSION, NAME@ALIAS, models:/NAME/VERSION or "
                                                   "models:/NAME@ALIAS, e.g. claims-fraud/3")
    rp.add_argument("--spec", help="reproduce with this spec instead of the one logged with the run ('what if')")
    rp.add_argument("--register", action="store_true",
                    help="log and register the reproduction like `fti train` (never moves the alias)")
    rp.add_argument("--json", action="store_true", help="print the report as JSON")
    rp.set_defaults(func=cmd_reproduce)

    s = sub.add_parser("serve", help="the inference service (REST API)")
    s.add_argument("--spec", help="the dataset spec (YAML); default: $FTI_SPEC")
    s.add_argument("--host", default=None, help="address to listen on (default: $FTI_HOST, else 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="port to listen on (default: $FTI_PORT, else 8000)")
    s.set_defaults(func=cmd_serve)

    pb = sub.add_parser("predict-batch", help="score a whole feature version into fti_batch_predictions "
                                              "(one transaction; a rerun reports the existing batch)")
    pb.add_argument("--spec", required=True, help="the dataset spec (YAML), e.g. specs/claims.yaml")
    pb.add_argument("--feature-version", type=int, help="default: the latest committed version")
    pb.add_argument("--model", metavar="MODEL",
                    help="NAME/VERSION, NAME@ALIAS or their models:/ forms; default: <spec model.name>@"
                         "$FTI_MODEL_ALIAS (champion)")
    pb.add_argument("--replace", action="store_true",
                    help="delete and rewrite an existing batch for this feature and model version (atomically)")
    pb.add_argument("--json", action="store_true", help="print the summary as JSON")
    pb.set_defaults(func=cmd_predict_batch)

    keys = sub.add_parser("keys", help="API keys for the inference service").add_subparsers(dest="action",
                                                                                          required=True)
    kn = keys.add_parser("new", help="make a random API key: prints the key (give it to the client) and the "
                                     "entry to add to FTI_API_KEYS / FTI_API_KEYS_FILE (only its sha256)")
    kn.add_argument("--id", required=True, help="a name for the key, shown in 403 messages and logs")
    kn.add_argument("--scopes", default="predict", help="comma-separated: predict, read-predictions, read-model "
                                                        "(default: predict)")
    kn.add_argument("--json", action="store_true", help="print the key and its entry as JSON")
    kn.set_defaults(func=cmd_keys_new)

    mon = sub.add_parser("monitor", help="watch the served model: drift and realized performance per window of "
                                         "the prediction log").add_subparsers(dest="action", required=True)
    mr = mon.add_parser("run", help="report every complete window not reported yet (fti_drift_reports, JSON, HTML)")
    mr.add_argument("--spec", required=True, help="the dataset spec (its monitoring: section sets the windows)")
    mr.add_argument("--out", help="folder for the JSON and HTML reports (default: $FTI_REPORTS_DIR, else "
                                  "<FTI_DATA_DIR>/reports)")
    mr.add_argument("--include-partial", action="store_true", help="also report the last window, still filling")
    mr.add_argument("--retrain", action="store_true", help="then apply the spec's monitoring.retrain policy: "
                    "retrain through the data-quality gate and the promotion gate when it triggers")
    mr.add_argument("--negative-control", action="store_true", help="a fire drill: a retraining this pass triggers "
                    "fits on shuffled labels, and the gate must refuse it")
    mr.add_argument("--json", action="store_true", help="print the summaries as JSON")
    mr.add_argument("--recompute", action="store_true", help="compute every window again, even those already "
                    "reported with the same labels (their reports come out byte for byte the same)")
    mr.add_argument("--jobs", type=int, help="processes computing the windows (default: $FTI_MONITOR_JOBS, else "
                    "one per usable CPU, at most 4)")
    mr.set_defaults(func=cmd_monitor_run)

    ms = mon.add_parser("serve", help="the monitor service: passes on a timer, /health, /metrics (Prometheus), "
                                      "/reports; requests retrainings for the pipelines' workers")
    ms.add_argument("--spec", required=True, help="the dataset spec")
    ms.add_argument("--host", help="default: $FTI_MONITOR_HOST, else 127.0.0.1")
    ms.add_argument("--port", type=int, help="default: $FTI_MONITOR_PORT, else 8001")
    ms.add_argument("--no-retrain", action="store_true", help="report drift only, never request a retraining")
    ms.set_defaults(func=cmd_monitor_serve)

    wk = sub.add_parser("worker", help="a pipeline's worker for retrainings the monitor requested "
                                       "(features: build + data-quality gate; training: train + gate)")
    wk.add_argument("stage", choices=["features", "training"], help="features (the feature image) or training "
                    "(the training image)")
    wk.add_argument("--spec", required=True, help="the dataset spec")
    wk.add_argument("--interval", type=float, default=5.0, help="seconds between looks at the queue (default 5)")
    wk.add_argument("--once", action="store_true", help="handle what is waiting, then exit")
    wk.set_defaults(func=cmd_worker)

    lin = sub.add_parser("lineage", help="a logged prediction's lineage chain, recomputed")
    lin.add_argument("prediction_id", help="the prediction_id /predict returned")
    lin.add_argument("--spec", help="spec to recompute with (default: $FTI_SPEC, else the training run's copy)")
    lin.add_argument("--json", action="store_true", help="print the chain as JSON")
    lin.add_argument("--no-recompute", action="store_true", help="only the chain; do not load the model")
    lin.set_defaults(func=cmd_lineage)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    from fti.threads import ThreadSettingError, apply
    from shared.errors import user_error_message

    # MLflow imports GitPython, which warns at length when no git executable is on PATH (the images have
    # none); fti records the commit itself (shared.provenance)
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    try:
        apply()  # before any command imports numpy
    except ThreadSettingError as exc:
        print(f"fti: error: {exc}", file=sys.stderr)
        return ExitCode.USER_ERROR
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - user errors get one clear line, others a traceback
        from shared.model_ref import ModelRefError

        if isinstance(exc, ModelRefError):  # a malformed MODEL argument is a usage error
            print(f"fti: error: {exc}", file=sys.stderr)
            return ExitCode.USAGE
        message = user_error_message(exc)
        if message is None:
            traceback.print_exc()
            print(f"fti: internal error ({type(exc).__name__}); the traceback above is for a bug report",
                  file=sys.stderr)
            return ExitCode.INTERNAL_ERROR
        print(f"fti: error: {message}", file=sys.stderr)
        return ExitCode.USER_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
