"""One model-reference grammar, one table: every command that takes a model reads it the same way.

Each row goes through :func:`shared.model_ref.parse`, ``fti predict-batch --model``'s parser and
``fti reproduce``'s parser; a bad reference is also given to the real CLI entry point of both
commands, which must exit 2 with the grammar's message before touching any store.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fti.cli import main
from fti.reproduce import ReproduceError, parse_ref
from inference_service.batch import BatchError, parse_model_ref
from shared.model_ref import ModelRef, ModelRefError, parse

OK = [
    ("claims-fraud/3", ModelRef("claims-fraud", version="3")),
    ("claims-fraud/03", ModelRef("claims-fraud", version="3")),  # normalised, the same everywhere
    ("models:/claims-fraud/3", ModelRef("claims-fraud", version="3")),  # a name never includes the scheme
    ("models:/claims-fraud/12", ModelRef("claims-fraud", version="12")),
    ("claims-fraud@champion", ModelRef("claims-fraud", alias="champion")),
    ("models:/claims-fraud@champion", ModelRef("claims-fraud", alias="champion")),
    ("claims-fraud@shadow_2", ModelRef("claims-fraud", alias="shadow_2")),
    ("my model.v2/7", ModelRef("my model.v2", version="7")),
    ("a@b", ModelRef("a", alias="b")),
]
BAD = [
    "claims-fraud",  # a bare name: which version? refused everywhere, with the two forms it could mean
    "models:/claims-fraud",
    "claims-fraud/latest",
    "claims-fraud/v3",
    "claims-fraud/0",
    "claims-fraud/-1",
    "claims-fraud/３",  # full-width digit
    "claims-fraud/٣",  # Arabic-Indic digit
    "claims-fraud@",
    "claims-fraud@1abc",
    "claims-fraud@cham pion",
    "/3",
    "@champion",
    "a/b/3",
    "a@b@c",
    " claims-fraud/3",
    "claims-fraud/3 ",
    "",
    "models:/",
    "models://claims-fraud/3",
]


@pytest.mark.parametrize(("text", "expected"), OK)
def test_every_parser_reads_a_good_reference_the_same(text: str, expected: ModelRef) -> None:
    assert parse(text) == expected
    assert parse_model_ref(text, "default", "champion") == expected
    assert parse_ref(text) == (expected.name, expected.version, expected.alias)
    assert parse(str(expected)) == expected and parse(expected.uri) == expected


@pytest.mark.parametrize("text", BAD)
def test_every_parser_refuses_a_bad_reference(text: str) -> None:
    with pytest.raises(ModelRefError, match="NAME/VERSION, NAME@ALIAS, models:/NAME/VERSION or models:/NAME@ALIAS"):
        parse(text)
    with pytest.raises(BatchError, match="NAME/VERSION, NAME@ALIAS"):
        parse_model_ref(text or "x y/z", "default", "champion")
    with pytest.raises(ReproduceError, match="NAME/VERSION, NAME@ALIAS"):
        parse_ref(text)


def test_a_bare_name_suggests_the_forms_it_could_mean() -> None:
    with pytest.raises(ModelRefError, match=r"did you mean claims-fraud@champion or claims-fraud/1\?"):
        parse("claims-fraud")


def test_no_model_given_means_the_spec_model_at_the_configured_alias() -> None:
    assert parse_model_ref(None, "claims-fraud", "staging") == ModelRef("claims-fraud", alias="staging")


@pytest.mark.parametrize("text", ["claims-fraud", "claims-fraud/latest", "models:/claims-fraud"])
def test_the_commands_refuse_it_with_exit_2(text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from tests.helpers import write_claims_spec

    spec = write_claims_spec(tmp_path / "spec", n_policyholders=5)
    # No store exists there: the reference must be refused before anything is opened.
    monkeypatch.setenv("FTI_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}")
    for argv in (["reproduce", text], ["predict-batch", "--spec", str(spec), "--model", text]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "is not NAME/VERSION, NAME@ALIAS, models:/NAME/VERSION or models:/NAME@ALIAS" in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "nowhere").exists()
