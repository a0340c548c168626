"""Deployment settings common to every service, from environment variables.

Each service defines its own ``Settings`` subclass; none is built at import
time. Defaults give the embedded, Docker-free setup: a SQLite feature store and
a local MLflow store under ``FTI_DATA_DIR`` (default ``./data``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FTI_", extra="ignore")

    data_dir: Path = Field(default=Path("data"), description="folder for the embedded stores and the model cache")
    database_url: str | None = Field(default=None, description="the feature store (any SQLAlchemy URL; "
                                     "PostgreSQL: postgresql+psycopg://...); default sqlite:///<FTI_DATA_DIR>/"
                                     "features.db")
    log_level: str = Field(default="INFO", pattern="^(?i:debug|info|warning|error|critical)$",
                           description="DEBUG, INFO, WARNING, ERROR or CRITICAL (the CLI's --log-level default)")
    model_load_memory_mb: int = Field(default=2048, ge=0, le=1_048_576, description="FTI_MODEL_LOAD_MEMORY_MB: "
                                      "every model from the registry is first built in a child process under "
                                      "this address-space limit (0: skip that rehearsal)")

    @model_validator(mode="after")
    def _defaults(self) -> CommonSettings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'features.db'}"
        return self

    @field_validator("database_url")
    @classmethod
    def _valid_url(cls, v: str | None) -> str | None:
        if v:
            try:
                make_url(v)
            except Exception as exc:
                raise ValueError(f"FTI_DATABASE_URL is not an SQLAlchemy URL: {exc}") from None
        return v

    @property
    def feature_store_url(self) -> str:
        assert self.database_url is not None
        return self.database_url


class MlflowSettings(CommonSettings):
    """Adds the MLflow locations. ``MLFLOW_*`` names are MLflow's own variables."""

    mlflow_tracking_uri: str | None = Field(default=None, validation_alias="MLFLOW_TRACKING_URI",
                                            description="MLflow tracking: a database URL or http://host:5000; "
                                            "default sqlite:///<FTI_DATA_DIR>/mlflow.db (artifacts in "
                                            "<FTI_DATA_DIR>/mlartifacts)")
    mlflow_registry_uri: str | None = Field(default=None, validation_alias="MLFLOW_REGISTRY_URI",
                                            description="the model registry; default: the tracking URI")
    model_alias: str = Field(default="champion", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$",
                             description="the alias training moves (through its gate) and inference serves")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: object) -> object:
        import os

        if os.environ.get("FTI_ALIAS"):
            raise ValueError("FTI_ALIAS was renamed FTI_MODEL_ALIAS (one name for training and serving): "
                             "set FTI_MODEL_ALIAS instead")
        return data

    @model_validator(mode="after")
    def _mlflow_defaults(self) -> MlflowSettings:
        if not self.mlflow_tracking_uri:
            self.mlflow_tracking_uri = f"sqlite:///{self.data_dir / 'mlflow.db'}"
        if not self.mlflow_registry_uri:
            self.mlflow_registry_uri = self.mlflow_tracking_uri
        return self

    @property
    def tracking_uri(self) -> str:
        assert self.mlflow_tracking_uri is not None
        return self.mlflow_tracking_uri

    @property
    def registry_uri(self) -> str:
        assert self.mlflow_registry_uri is not None
        return self.mlflow_registry_uri

    @property
    def local_artifact_root(self) -> Path:
        """Where runs store artifacts when tracking is a local database (not a server)."""
        return self.data_dir / "mlartifacts"
