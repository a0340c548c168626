"""uvicorn's httptools protocol with the limits it lacks: header size and read timeouts.

uvicorn bounds idle keep-alive connections but not a request that arrives slowly: a client that
sends one header byte every few seconds (slow-loris), or headers but never the body, holds a
connection -- and the buffers behind it -- forever; and httptools accepts headers of any size.
Here every request must deliver its request line and headers within ``header_timeout`` and at most
``max_header_bytes``, then its body within ``body_timeout``; otherwise it gets 408 or 431 in the
service's JSON error shape, with an ``X-Request-ID``, and the connection is closed.
"""

from __future__ import annotations

import json
import uuid
from asyncio import TimerHandle
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def guarded_protocol(*, max_header_bytes: int, header_timeout: float, body_timeout: float) -> type:
    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        # "idle" (between messages), "head" (request line and headers), "body"; bytes count against the
        # header limit only in the first two -- the rest of a body the app answered early is still body.
        _phase = "idle"
        _head_bytes = 0
        _discarding = False
        _timer: TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel()
            super().connection_lost(exc)

        def _await_head(self) -> None:
            self._phase, self._head_bytes = "idle", 0
            self._arm(header_timeout, "the request line and headers did not arrive in time "
                                      "(FTI_HEADER_TIMEOUT_SECONDS)")

        def _arm(self, seconds: float, why: str) -> None:
            self._cancel()
            self._timer = self.loop.call_later(seconds, self._expire, why)

        def _cancel(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expire(self, why: str) -> None:
            self._timer = None
            cycle = self.cycle
            if self.transport.is_closing():
                return
            if cycle is not None and cycle.response_started:
                self.transport.close()  # answered already: only stop waiting for the rest
                return
            if cycle is not None and self._phase == "body":
                cycle.disconnected = True  # the app's receive() sees a disconnect, not more body
                cycle.message_event.set()
            self._reject(408, "request_timeout", why)

        def _reject(self, status: int, code: str, message: str, *, linger: bool = False) -> None:
            body = json.dumps({"error": {"code": code, "message": message}}).encode()
            head = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status]), b"content-type: application/json\r\n",
                    b"content-length: %d\r\n" % len(body), b"x-request-id: " + uuid.uuid4().hex.encode() + b"\r\n",
                    b"connection: close\r\n\r\n"]
            self.transport.write(b"".join(head) + body)
            if linger and self.transport.can_write_eof():
                # The client is still sending what we refused: closing now would answer its next bytes with a
                # reset that destroys our response. Half-close, drop what still arrives, close a bit later.
                self._discarding = True
                self.transport.write_eof()
                self.loop.call_later(2.0, self.transport.close)
                return
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._discarding:
                return
            if self._phase != "body":
                self._phase = "head"
                self._head_bytes += len(data)
                if self._head_bytes > max_header_bytes:
                    # the headers may end in this very chunk: count only up to the blank line
                    end = data.find(b"\r\n\r\n")
                    if end < 0 or self._head_bytes - len(data) + end > max_header_bytes:
                        self._cancel()
                        self._reject(431, "headers_too_large", f"the request line and headers exceed "
                                                               f"{max_header_bytes} bytes (FTI_MAX_HEADER_BYTES)",
                                     linger=True)
                        return
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._phase = "body"
            super().on_headers_complete()
            self._arm(body_timeout, "the request body did not arrive in time (FTI_BODY_TIMEOUT_SECONDS)")

        def on_message_complete(self) -> None:
            self._cancel()
            super().on_message_complete()
            # a pipelined or next request starts counting from here (its bytes may be in the same chunk)
            self._phase, self._head_bytes = "idle", 0
            if self.cycle is not None and self.cycle.response_complete:
                self._await_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self._phase == "idle":
                self._await_head()  # a keep-alive connection: the next request has the same budget

    return GuardedHttpToolsProtocol
