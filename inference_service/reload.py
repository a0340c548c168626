"""Bookkeeping for hot reload: what the last alias checks found, and which versions were refused.

The mechanics live in :class:`inference_service.runtime.Runtime` (``check_alias``
and ``watch_alias``); this module only remembers outcomes, so that ``/health/ready``
and ``/model`` can report them and so that a refused version is not loaded again
on every poll:

* a version refused by a check (fingerprint, skops allow-list, contract, parity
  certificate: ``kind == "refused"``) is tried again only once its registry tags
  change (someone re-tagged or fixed it) or after ``refused_retry_seconds``;
* a version that could not be loaded for another reason (registry or artifact
  store unreachable, a download error: ``kind == "error"``) is tried again with
  exponential back-off from the poll interval up to ``refused_retry_seconds``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MAX_REMEMBERED = 20  # refused versions kept (the alias rarely visits more)


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def tags_key(tags: dict[str, Any] | None) -> str:
    """A digest of a model version's registry tags: a change makes a refused version eligible again."""
    text = json.dumps({str(k): str(v) for k, v in (tags or {}).items()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Refusal:
    model_name: str
    model_version: str
    kind: str  # "refused": a check failed; "error": could not be loaded (transient, retried sooner)
    reason: str
    tags_key: str
    at: float
    retry_at: float
    failures: int = 1
    certificate: dict[str, Any] | None = None  # the parity-certificate report when the certificate failed

    def as_dict(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "model_version": self.model_version, "kind": self.kind,
                "reason": self.reason, "at": iso(self.at), "failures": self.failures,
                "retry_not_before": iso(self.retry_at), "retry_when": "its registry tags change, or after "
                "the back-off (retry_not_before)", "certificate": self.certificate}


class ReloadState:
    """Outcomes of the alias checks. Written by the one reload thread at a time, read by any request."""

    def __init__(self, interval_seconds: float, refused_retry_seconds: float):
        self.interval = interval_seconds
        self.refused_retry = refused_retry_seconds
        self._lock = threading.Lock()
        self.checks = 0
        self.reloads = 0
        self.last_check_at: float | None = None
        self.last_outcome: str | None = None
        self.last_detail: str | None = None
        self.alias_version: str | None = None
        self.last_reload: dict[str, Any] | None = None
        self.last_error: Refusal | None = None
        self._refusals: dict[str, Refusal] = {}

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def outcome(self, outcome: str, now: float, detail: str | None = None, alias_version: str | None = None) -> str:
        with self._lock:
            self.checks += 1
            self.last_check_at = now
            self.last_outcome = outcome
            self.last_detail = detail
            if alias_version is not None:
                self.alias_version = alias_version
        return outcome

    def waiting(self, version: str, tags: str, now: float) -> Refusal | None:
        """The earlier refusal of ``version`` if it must not be tried yet (same tags, back-off not over)."""
        with self._lock:
            previous = self._refusals.get(version)
        if previous is not None and previous.tags_key == tags and now < previous.retry_at:
            return previous
        return None

    def refuse(self, name: str, version: str, kind: str, reason: str, tags: str, now: float,
               certificate: dict[str, Any] | None = None) -> Refusal:
        with self._lock:
            previous = self._refusals.pop(version, None)
            failures = previous.failures + 1 if previous is not None else 1
            if kind == "refused":
                wait = self.refused_retry
            else:
                wait = min(max(self.interval, 1.0) * 2 ** (failures - 1), self.refused_retry)
            refusal = Refusal(name, version, kind, reason, tags, now, now + wait, failures, certificate)
            self._refusals[version] = refusal
            while len(self._refusals) > MAX_REMEMBERED:
                self._refusals.pop(next(iter(self._refusals)))
            self.last_error = refusal
        return refusal

    def swapped(self, name: str, old: str, new: str, now: float, load_seconds: float, summary: str) -> None:
        with self._lock:
            self._refusals.pop(new, None)
            self.reloads += 1
            # The alias pointed at ``new`` when it was read: whoever sees the new version served sees
            # it in sync, not the alias version of the check before (the outcome is recorded later).
            self.alias_version = new
            self.last_reload = {"model_name": name, "from_version": old, "to_version": new, "at": iso(now),
                                "load_seconds": round(load_seconds, 3), "certificate": summary}

    def as_dict(self, served_version: str | None) -> dict[str, Any]:
        with self._lock:
            return {
                "enabled": self.enabled, "interval_seconds": self.interval,
                "refused_retry_seconds": self.refused_retry, "checks": self.checks, "reloads": self.reloads,
                "last_check_at": iso(self.last_check_at), "last_outcome": self.last_outcome,
                "last_outcome_detail": self.last_detail, "alias_version": self.alias_version,
                "served_version": served_version,
                "in_sync": None if self.alias_version is None or served_version is None
                else self.alias_version == served_version,
                "last_reload": self.last_reload,
                "last_reload_error": self.last_error.as_dict() if self.last_error is not None else None,
            }
