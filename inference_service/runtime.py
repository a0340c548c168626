"""Process state of the service: spec, feature-store engine, the loaded model, load status.

A background task first brings the store schema to the head revision (the
service writes the prediction log; skipped when ``FTI_PREDICTION_LOG=false``),
then loads the model, retrying both with back-off. So the process answers
``/health/live`` at once and ``/health/ready`` says 503 (with the reason: store
unreachable, no model yet, a refused model...) until both succeeded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from inference_service.config import Settings
from inference_service.model_loader import LoadedModel, ModelLoadError
from inference_service.online import certificate_features
from inference_service.prediction_log import PredictionLogWriter
from shared import certificate as certmod
from shared import feature_table as ft
from shared.db import redact
from shared.spec import LoadedSpec

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    spec: LoadedSpec
    engine: Engine
    loader: Any
    model: LoadedModel | None = None
    last_error: str | None = "model not loaded yet"
    attempts: int = 0  # failed load attempts so far
    rejected: dict[str, Any] | None = None  # the last candidate refused by its parity certificate
    certificate: dict[str, Any] | None = None  # verdict for the served model
    prediction_log: PredictionLogWriter | None = None
    store_ready: bool = False
    started_at: float = field(default_factory=time.time)

    @property
    def model_name(self) -> str:
        return self.settings.model_name or self.spec.spec.model.name

    def prepare_store(self) -> None:
        """Upgrade the store schema to the head (creates ``fti_predictions``) when the log is on."""
        if self.prediction_log is not None:
            try:
                ft.upgrade(self.engine)
            except Exception as exc:  # noqa: BLE001 - reported through readiness, retried
                raise ModelLoadError(
                    f"cannot prepare the prediction log in the feature store at "
                    f"{redact(str(self.engine.url))}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                ) from exc
            log.info("feature store schema at revision %s; prediction log on", ft.SCHEMA_HEAD)
        self.store_ready = True

    def load_once(self) -> LoadedModel:
        model = self.loader.load(self.spec.spec, self.model_name, self.settings.model_alias)
        verdict = self.certify(model)
        if not verdict.passed:
            self.rejected = {"model_name": model.name, "model_version": model.version,
                             "certificate": verdict.as_dict()}
            log.error("refusing %s version %s: %s", model.name, model.version, verdict.summary())
            raise ModelLoadError(f"{model.name} version {model.version}: {verdict.summary()}")
        self.model = model
        self.certificate = verdict.as_dict()
        self.rejected = None
        self.last_error = None
        log.info("%s version %s: %s", model.name, model.version, verdict.summary())
        return model

    def certify(self, model: LoadedModel) -> certmod.Verdict:
        """Run the model's parity certificate through this process's online path."""
        assert model.certificate is not None
        spec = self.spec.spec
        try:
            return certmod.verify(model.certificate,
                                  lambda records, version: certificate_features(records, spec, self.engine, version),
                                  model.pipeline.predict_proba, spec)
        except Exception as exc:  # noqa: BLE001 - a certificate that cannot run is a failed certificate
            log.exception("parity certificate of %s version %s could not run", model.name, model.version)
            return certmod.Verdict(False, 0, error=f"{type(exc).__name__}: {str(exc)[:300]}")

    async def load_until_ready(self) -> None:
        delay = self.settings.load_retry_seconds
        tries = 0
        while self.model is None:
            tries += 1
            try:
                if not self.store_ready:
                    await asyncio.to_thread(self.prepare_store)
                await asyncio.to_thread(self.load_once)
                return
            except ModelLoadError as exc:
                self.last_error = str(exc)
            except Exception as exc:  # noqa: BLE001 - keep the process alive, report the cause
                self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            self.attempts = tries  # failed attempts, counted once the reason is known
            log.warning("not ready (attempt %d): %s; retrying in %.0fs", tries, self.last_error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)
