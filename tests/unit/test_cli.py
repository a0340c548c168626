"""The ``fti`` command's conventions: ``--version``, help on every option, a validated log level, one exit
code per class of outcome, friendly empty states, and BLAS/OpenMP thread limits in every command."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fti import threads
from fti.cli import build_parser, main
from shared.exit_codes import ExitCode
from tests.helpers import fti_env, run_fti, write_claims_spec


def _subparsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, (*path, name))


def test_version_names_fti_and_shared(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("fti ") and "shared " in out


def test_every_option_and_command_has_help() -> None:
    missing = []
    for path, parser in _subparsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{' '.join(path)} {c.dest}" for c in action._choices_actions if not c.help]
                continue
            if not action.help:
                missing.append(f"{' '.join(path) or 'fti'} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


@pytest.mark.parametrize("level", ["bogus", "inf", ""])
def test_an_unknown_log_level_is_a_usage_error(level: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--log-level", level, "keys", "new", "--id", "x"])
    assert done.value.code == ExitCode.USAGE
    assert "is not a log level; use one of DEBUG, INFO, WARNING, ERROR, CRITICAL" in capsys.readouterr().err


def test_log_level_is_case_insensitive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--log-level", "warning", "keys", "new", "--id", "x"]) == ExitCode.OK


def test_exit_codes_by_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_claims_spec(tmp_path / "spec", n_policyholders=5)
    monkeypatch.setenv("FTI_DATA_DIR", str(tmp_path / "data"))
    # usage: argparse's 2; a malformed key id too
    with pytest.raises(SystemExit) as done:
        main(["features", "run"])
    assert done.value.code == ExitCode.USAGE
    assert main(["keys", "new", "--id", "a b"]) == ExitCode.USAGE
    # something to fix outside the command line: 3 and one line, no traceback
    assert main(["features", "show", "--spec", str(spec), "7"]) == ExitCode.USER_ERROR
    assert main(["train", "--spec", str(tmp_path / "missing.yaml")]) == ExitCode.USER_ERROR
    err = capsys.readouterr().err
    assert err.count("fti: error:") >= 3 and "Traceback" not in err
    # a bug: 70 with its traceback, never 1 (which means "a check answered no")
    import fti.cli as cli

    def boom(args: argparse.Namespace) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "cmd_features_list", boom)
    assert main(["features", "list", "--spec", str(spec)]) == ExitCode.INTERNAL_ERROR
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: a bug" in err and "internal error" in err


def test_an_empty_store_lists_no_versions_and_says_what_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_claims_spec(tmp_path / "spec", n_policyholders=5)
    monkeypatch.setenv("FTI_DATA_DIR", str(tmp_path / "data"))
    assert main(["features", "list", "--spec", str(spec)]) == ExitCode.OK
    out = capsys.readouterr().out
    assert "no feature versions of 'claims' yet: run `fti features run --spec" in out
    assert main(["features", "list", "--spec", str(spec), "--json"]) == ExitCode.OK
    assert capsys.readouterr().out.strip() == "[]"


# ------------------------------------------------------------------------------------------ spec check


def test_spec_check_reports_what_a_run_would_publish_and_writes_nothing(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_claims_spec(tmp_path / "spec", n_policyholders=60)
    monkeypatch.setenv("FTI_DATA_DIR", str(tmp_path / "data"))
    assert main(["spec", "check", "--spec", str(spec)]) == ExitCode.OK
    out = capsys.readouterr().out
    assert ": valid (dataset 'claims'" in out and "feature rows would be published (checksum" in out
    assert "label 'is_fraud': '0' " in out and "'1' " in out and "nothing was written" in out
    assert not (tmp_path / "data").exists()  # no store, no MLflow database, no version
    # the same checksum the feature job then publishes
    checksum = out.split("(checksum ")[1][:16]
    assert main(["features", "run", "--spec", str(spec)]) == ExitCode.OK
    assert f"checksum {checksum}" in capsys.readouterr().out


def test_spec_check_names_what_training_would_refuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    spec = write_claims_spec(tmp_path / "spec", n_policyholders=60, overrides={"model.positive_class": "yes"})
    monkeypatch.setenv("FTI_DATA_DIR", str(tmp_path / "data"))
    assert main(["spec", "check", "--spec", str(spec)]) == ExitCode.USER_ERROR
    captured = capsys.readouterr()
    assert "problem: model.positive_class 'yes' is not one of the label's classes ['0', '1']" in captured.err
    assert "1 problem(s) to fix before training" in captured.out
    data = yaml.safe_load(spec.read_text())
    data["columns"]["claim_amount"]["min"] = 10**9  # every row out of bounds: the feature job's own error
    data["model"].pop("positive_class")
    spec.write_text(yaml.safe_dump(data))
    assert main(["spec", "check", "--spec", str(spec)]) == ExitCode.USER_ERROR
    assert "claim_amount" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ threads


def test_usable_cpus_reads_the_cgroup_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) == 1.5
    affinity = threads.usable_cpus(Path("/nonexistent"))
    assert threads.usable_cpus(tmp_path) == min(affinity, 2)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert threads.cgroup_cpu_limit(v1) == 0.5
    assert threads.usable_cpus(v1) == 1


@pytest.mark.parametrize("setting, cpus, expected", [(None, 1, 1), (None, 2, 1), ("auto", 8, 4), ("AUTO", 3, 1),
                                                     ("3", 2, 3)])
def test_thread_count_decided(setting: str | None, cpus: int, expected: int) -> None:
    assert threads.decide(setting, cpus) == expected


@pytest.mark.parametrize("setting", ["0", "-1", "two", "1.5"])
def test_a_bad_thread_setting_is_refused(setting: str) -> None:
    with pytest.raises(threads.ThreadSettingError, match="FTI_THREADS"):
        threads.decide(setting, 2)


def test_apply_keeps_what_the_user_set(tmp_path: Path) -> None:
    env = {"OMP_NUM_THREADS": "4", "FTI_THREADS": "2"}
    in_force = threads.apply(env, root=tmp_path)
    assert in_force["OMP_NUM_THREADS"] == "4" and in_force["OPENBLAS_NUM_THREADS"] == "2"
    assert set(in_force) == set(threads.THREAD_VARS) and env["MKL_NUM_THREADS"] == "2"


# Each command runs for real (a subprocess) and fails fast on a missing spec -- after the limit is set.
COMMANDS = [["data", "generate", "--spec", "{spec}"], ["features", "run", "--spec", "{spec}"],
            ["features", "list", "--spec", "{spec}"], ["features", "show", "--spec", "{spec}"],
            ["train", "--spec", "{spec}"], ["reproduce", "m/1", "--spec", "{spec}"],
            ["serve", "--spec", "{spec}"], ["predict-batch", "--spec", "{spec}"],
            ["lineage", "0" * 32, "--spec", "{spec}"], ["features", "migrate"], ["keys", "new", "--id", "k"],
            ["spec", "check", "--spec", "{spec}"], ["spec", "init", "--source", "{spec}", "--label", "y"],
            ["monitor", "run", "--spec", "{spec}"], ["monitor", "serve", "--spec", "{spec}"], ["rollback", "m"],
            ["worker", "features", "--spec", "{spec}"]]


def test_every_command_covered() -> None:
    parser_commands = {p for p, sub in _subparsers(build_parser()) if p and not any(
        isinstance(a, argparse._SubParsersAction) for a in sub._actions)}
    assert parser_commands == {tuple(c[:2]) if c[0] in ("data", "features", "keys", "spec", "monitor") else (c[0],)
                               for c in COMMANDS}


# In the quick tier: one command per service (each start costs ~2 s); the full suite runs them all.
QUICK = {"features run", "train --spec", "serve --spec"}


@pytest.mark.parametrize("argv", [c if " ".join(c[:2]) in QUICK else pytest.param(c, marks=pytest.mark.slow)
                                  for c in COMMANDS],
                         ids=lambda a: " ".join(a[:2]))
def test_every_command_runs_with_the_thread_limit(argv: list[str], tmp_path: Path) -> None:
    """The limit is in the command's own environment, so every process it starts inherits it."""
    env = fti_env(tmp_path / "data", FTI_THREADS="3")
    for name in threads.THREAD_VARS:
        env.pop(name, None)
    args = [a.format(spec=tmp_path / "missing.yaml") for a in argv]
    res = run_fti(["--log-level", "DEBUG", *args], env, timeout=120)
    wanted = ", ".join(f"{name}=3" for name in threads.THREAD_VARS)
    assert f"threads: {wanted} (usable CPUs" in res.stderr, res.stderr[-2000:]
