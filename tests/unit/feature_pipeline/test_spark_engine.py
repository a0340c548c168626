"""The Spark engine's failure modes that need no JVM (its builds: tests/integration/test_bucketed_build.py)."""

from __future__ import annotations

import sys

import pytest

from feature_pipeline.spark_engine import SparkUnavailable, session
from shared.errors import user_error_message


def test_without_pyspark_the_error_says_what_to_install_and_the_cli_prints_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pyspark", None)
    monkeypatch.setitem(sys.modules, "pyspark.sql", None)
    with pytest.raises(SparkUnavailable) as err:
        session("local[2]")
    message = user_error_message(err.value)
    assert message is not None and "uv sync --extra spark" in message and "Java 17" in message
    assert "--engine local" in message
