"""Which exceptions are the user's to fix, and how to say so in one message."""

from __future__ import annotations

from pydantic import ValidationError


def user_error_message(exc: BaseException) -> str | None:
    """A one-paragraph message for errors a user can act on; ``None`` for internal bugs."""
    from shared.feature_table import FeatureStoreError
    from shared.raw import RawDataError
    from shared.spec import SpecError

    if isinstance(exc, (SpecError, RawDataError, FeatureStoreError)):
        return str(exc)
    if isinstance(exc, ValidationError):  # settings from the environment
        lines = [f"  - {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False,
                                                                                       include_input=False)]
        return "invalid settings (check the FTI_* / MLFLOW_* environment variables):\n" + "\n".join(lines)
    module = type(exc).__module__
    name = type(exc).__name__
    if name in {"SourceError", "StrictSchemaError", "SparkUnavailable", "ServeConfigError", "MonitorError", "RetrainError", "RollbackError"}:
        return str(exc)
    if module.startswith("sqlalchemy") and name == "OperationalError":
        return f"database error: {str(exc).splitlines()[0]} (is the database running and FTI_DATABASE_URL right?)"
    if module.startswith("mlflow"):
        return f"MLflow error: {exc} (check MLFLOW_TRACKING_URI and that the server is reachable)"
    if isinstance(exc, (ValueError, FileNotFoundError, PermissionError)):
        return str(exc)
    return None
