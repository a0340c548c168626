"""Training-job settings (environment only; modelling choices live in the spec)."""

from pydantic import Field

from shared.settings import MlflowSettings


class Settings(MlflowSettings):
    experiment: str | None = Field(default=None, description="MLflow experiment; default 'fti-<dataset>'")
