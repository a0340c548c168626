"""Who may call what, how many at once, and for how long -- decided before a request reaches a route.

* **Trusted hosts**: a ``Host`` header outside ``FTI_ALLOWED_HOSTS`` gets 400 (DNS rebinding, cache
  poisoning through absolute URLs). Probes are exempt: orchestrators call them by pod IP.
* **API keys** (``FTI_API_KEYS`` / ``FTI_API_KEYS_FILE``): stored as sha256 digests with scopes
  (``predict``, ``read-predictions``, ``read-model``); a presented key is hashed and compared with
  every stored digest in constant time. Missing or unknown key: 401 with ``WWW-Authenticate``;
  a key without the route's scope: 403. Probes stay open. The key is never logged.
* **Concurrency**: at most ``FTI_MAX_CONCURRENT_REQUESTS`` non-probe requests in flight, of which at
  most ``FTI_MAX_CONCURRENT_LARGE_REQUESTS`` with a body over 64 KiB (the batches that keep a core busy;
  default: the number of CPUs). The next one gets a 503 with ``Retry-After`` at once instead of queueing
  behind them, so probes and single records keep their share of the GIL.
* **Deadline**: a request not answered within ``FTI_REQUEST_TIMEOUT_SECONDS`` gets 504.

Every rejection is the service's JSON error shape; the request id header is added by
:class:`~inference_service.observability.ObserveRequests`, which wraps this layer.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCOPES = ("predict", "read-predictions", "read-model")
PROBES = frozenset({"/health/live", "/health/ready", "/ping", "/health", "/version"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class GuardConfigError(ValueError):
    """The key or host settings cannot be used; the message says how to fix them."""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    digest: bytes
    scopes: frozenset[str]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_key_entries(text: str, origin: str) -> list[ApiKey]:
    """``ID:SHA256HEX:SCOPE[+SCOPE...]`` entries, separated by commas or newlines (``#`` comments)."""
    keys: list[ApiKey] = []
    for n, raw in enumerate(text.replace(",", "\n").splitlines(), start=1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3:
            raise GuardConfigError(f"{origin} entry {n} is not ID:SHA256:SCOPES (create one with `fti keys new`)")
        key_id, digest, scopes = parts
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
            raise GuardConfigError(f"{origin} entry {n} ({key_id!r}): the key must be stored as its sha256 "
                                   "(64 hex digits), never in clear; `fti keys new` prints both")
        wanted = frozenset(s.strip() for s in scopes.split("+") if s.strip())
        unknown = sorted(wanted - set(SCOPES))
        if unknown or not wanted:
            raise GuardConfigError(f"{origin} entry {n} ({key_id!r}): unknown scope(s) {unknown or ['(none)']}; "
                                   f"use {', '.join(SCOPES)}")
        keys.append(ApiKey(key_id, bytes.fromhex(digest.lower()), wanted))
    return keys


def scope_for(method: str, path: str) -> str | None:
    """The scope a request needs; None for the open probes."""
    if path in PROBES:
        return None
    if method == "POST" and path in ("/predict", "/invocations"):
        return "predict"
    if path.startswith("/predictions/"):
        return "read-predictions"
    return "read-model"  # /model, /metrics, /docs, /openapi.json and any unknown path (401 before 404)


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


LARGE_BODY_BYTES = 64 * 1024


def is_large(scope: dict[str, Any]) -> bool:
    """A body over 64 KiB, or one of unknown length (chunked): a batch, not a single record."""
    if scope["method"] not in ("POST", "PUT", "PATCH"):
        return False
    length = _header(scope, b"content-length")
    if length is None:
        return True
    return not length.isdigit() or int(length) > LARGE_BODY_BYTES


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return bytes(v)
    return None


MLFLOW_CODES = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 503: "TEMPORARILY_UNAVAILABLE",
                504: "DEADLINE_EXCEEDED"}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None, *, mlflow: bool = False
           ) -> tuple[int, bytes, dict[str, str]]:
    """fti's error shape, or MLflow's (``error_code`` + ``message``) on MLflow's ``/invocations``."""
    body = {"error_code": MLFLOW_CODES.get(status, "BAD_REQUEST"), "message": message} if mlflow else \
        {"error": {"code": code, "message": message}}
    return status, json.dumps(body).encode(), headers or {}


async def send_json(send: Callable[[dict[str, Any]], Awaitable[None]], status: int, body: bytes,
                    headers: dict[str, str]) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, *, keys: list[ApiKey], auth: bool, allowed_hosts: list[str], max_concurrent: int,
                 timeout_seconds: float, max_concurrent_large: int | None = None, max_body_bytes: int | None = None):
        self.keys = keys
        self.auth = auth
        self.any_host = "*" in allowed_hosts
        self.allowed_hosts = frozenset(h.lower().strip("[]") for h in allowed_hosts)
        self.max_concurrent = max_concurrent
        self.max_large = max_concurrent_large if max_concurrent_large is not None else max_concurrent
        self.timeout = timeout_seconds
        self.max_body = max_body_bytes
        self.in_flight = 0
        self.large_in_flight = 0
        self.rejected_busy = 0
        self.timed_out = 0
        self.denied = 0

    @classmethod
    def from_settings(cls, settings: Any) -> Guard:
        keys: list[ApiKey] = []
        if settings.api_keys:
            keys += parse_key_entries(settings.api_keys, "FTI_API_KEYS")
        if settings.api_keys_file:
            try:
                text = Path(settings.api_keys_file).read_text()
            except OSError as exc:
                raise GuardConfigError(f"FTI_API_KEYS_FILE {settings.api_keys_file} cannot be read "
                                       f"({exc.strerror})") from None
            keys += parse_key_entries(text, "FTI_API_KEYS_FILE")
        mode = settings.auth
        loopback = is_loopback(settings.host)
        if mode == "required" and not keys:
            raise GuardConfigError("FTI_AUTH=required but no key is configured: add one to FTI_API_KEYS or "
                                   "FTI_API_KEYS_FILE (`fti keys new --id NAME` prints an entry)")
        if mode == "auto" and not keys and not loopback:
            raise GuardConfigError(f"the service listens on {settings.host}, beyond this machine, and no API key is "
                                   "configured: set FTI_API_KEYS or FTI_API_KEYS_FILE (`fti keys new --id NAME`), "
                                   "or FTI_AUTH=off to serve without keys deliberately")
        auth = mode != "off" and bool(keys)
        hosts = settings.allowed_host_list or ([*LOOPBACK_NAMES] if loopback else ["*"])
        if not settings.allowed_host_list and not loopback:
            log.warning("FTI_ALLOWED_HOSTS is not set and the service listens on %s: any Host header is accepted; "
                        "set it to the names clients use", settings.host)
        if not auth:
            log.warning("API keys off (%s): every client on %s may call every endpoint",
                        "FTI_AUTH=off" if mode == "off" else "no key configured, loopback only", settings.host)
        large = settings.max_concurrent_large_requests or max(1, len(os.sched_getaffinity(0)))
        return cls(keys=keys, auth=auth, allowed_hosts=hosts, max_concurrent=settings.max_concurrent_requests,
                   timeout_seconds=settings.request_timeout_seconds, max_concurrent_large=large,
                   max_body_bytes=settings.max_body_bytes)

    # ------------------------------------------------------------------ admission

    def _host_ok(self, scope: dict[str, Any]) -> bool:
        if self.any_host:
            return True
        raw = _header(scope, b"host")
        if raw is None:
            return False
        host = raw.decode("latin-1").lower()
        if host.startswith("["):
            host = host[1:host.find("]")] if "]" in host else host
        else:
            host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        return host in self.allowed_hosts

    def _authorize(self, scope: dict[str, Any], needed: str, mlflow: bool
                   ) -> tuple[int, bytes, dict[str, str]] | None:
        presented = _header(scope, b"x-api-key")
        if presented is None:
            auth = _header(scope, b"authorization")
            if auth is not None and auth[:7].lower() == b"bearer ":
                presented = auth[7:].strip()
        challenge = {"WWW-Authenticate": 'APIKey realm="fti", header="X-API-Key"'}
        if not presented:
            return _error(401, "unauthorized", "an API key is required: send it in the X-API-Key header", challenge,
                          mlflow=mlflow)
        digest = hashlib.sha256(presented).digest()
        match = None
        for key in self.keys:  # every entry is compared: the time does not depend on which one matches
            if hmac.compare_digest(digest, key.digest):
                match = key
        if match is None:
            return _error(401, "unauthorized", "the API key is not valid", challenge, mlflow=mlflow)
        if needed not in match.scopes:
            return _error(403, "forbidden", f"this API key ({match.key_id}) lacks the {needed!r} scope", mlflow=mlflow)
        return None

    def admit(self, scope: dict[str, Any]) -> tuple[int, bytes, dict[str, str]] | None:
        """A rejection (status, body, headers), or None to go on."""
        path = scope["path"]
        needed = scope_for(scope["method"], path)
        if needed is None:
            return None
        mlflow = path == "/invocations"
        if not self._host_ok(scope):
            self.denied += 1
            return _error(400, "invalid_host", "the Host header is not one this service answers to "
                                               "(FTI_ALLOWED_HOSTS)", mlflow=mlflow)
        if self.auth:
            rejection = self._authorize(scope, needed, mlflow)
            if rejection is not None:
                self.denied += 1
                return rejection
        if self.max_body is not None:  # a declared length over the limit: refused before a byte is read
            length = _header(scope, b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                return _error(413, "payload_too_large", f"the body is {int(length)} bytes; the limit is "
                                                        f"{self.max_body} (FTI_MAX_BODY_BYTES)", mlflow=mlflow)
        if self.in_flight >= self.max_concurrent:
            self.rejected_busy += 1
            return _error(503, "overloaded", f"{self.in_flight} requests are in progress (the limit is "
                                             f"{self.max_concurrent}, FTI_MAX_CONCURRENT_REQUESTS); retry shortly",
                          {"Retry-After": "1"}, mlflow=mlflow)
        if is_large(scope) and self.large_in_flight >= self.max_large:
            self.rejected_busy += 1
            return _error(503, "overloaded", f"{self.large_in_flight} large requests are in progress (the limit is "
                                             f"{self.max_large}, FTI_MAX_CONCURRENT_LARGE_REQUESTS); retry shortly",
                          {"Retry-After": "1"}, mlflow=mlflow)
        return None

    async def run(self, scope: dict[str, Any], call: Callable[[Callable[[dict[str, Any]], Awaitable[None]]],
                                                               Awaitable[None]],
                  send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """Run an admitted request holding a concurrency slot, under the deadline (probes run as they are)."""
        if scope["path"] in PROBES:
            await call(send)
            return
        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        large = is_large(scope)
        self.in_flight += 1
        self.large_in_flight += large
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(call(tracking_send), timeout=self.timeout)
        except TimeoutError:
            self.timed_out += 1
            log.warning("%s %s exceeded the %.3gs deadline (FTI_REQUEST_TIMEOUT_SECONDS) after %.3fs",
                        scope["method"], scope["path"], self.timeout, time.perf_counter() - t0)
            if not started:
                await send_json(send, *_error(504, "timeout", f"the request was not answered within "
                                                              f"{self.timeout:g} s (FTI_REQUEST_TIMEOUT_SECONDS)",
                                              mlflow=scope["path"] == "/invocations"))
        finally:
            self.in_flight -= 1
            self.large_in_flight -= large

    def status(self) -> dict[str, Any]:
        return {"auth": self.auth, "keys": len(self.keys), "allowed_hosts": "*" if self.any_host else
                sorted(self.allowed_hosts), "max_concurrent_requests": self.max_concurrent,
                "max_concurrent_large_requests": self.max_large, "request_timeout_seconds": self.timeout,
                "in_flight": self.in_flight, "large_in_flight": self.large_in_flight,
                "rejected_busy": self.rejected_busy, "timed_out": self.timed_out, "denied": self.denied}
