"""Training-job settings (environment only; modelling choices live in the spec)."""

from pydantic import Field

from shared.settings import MlflowSettings


class Settings(MlflowSettings):
    experiment: str | None = Field(default=None, description="MLflow experiment; default 'fti-<dataset>'")
    mlflow_ui_url: str | None = Field(default=None, description="where a person opens the MLflow UI (e.g. "
                                      "http://127.0.0.1:5000 in compose, where the tracking URI names the "
                                      "internal host mlflow:5000); training then prints the run's link there")
