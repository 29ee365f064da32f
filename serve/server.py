"""uvicorn with deadlines for slow clients and a cap on connections (`python -m serve` runs the app through it).

uvicorn closes idle keep-alive connections (`serve.keep_alive_seconds`, its `timeout_keep_alive`) and answers 503
beyond `serve.max_connections` connections or requests in flight (its `limit_concurrency`), but it has no deadline
for a request's headers or body: a client sending one byte a second keeps its connection, and its slot, forever.
`GuardedH11Protocol` adds both at the protocol level: a connection whose request headers are not complete within
`serve.header_timeout_seconds` of its first byte (or of the connection) is answered 408 and closed, and so is one
whose body is not complete within `serve.body_timeout_seconds` of its headers. Header lines are capped by h11 at
MAX_HEADER_BYTES (a longer head is answered 400 by uvicorn).
"""

from __future__ import annotations

import asyncio
import json
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from tasks.config import ServeSettings

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024  # request line + headers; h11's own default, set explicitly


def timeout_response(detail: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers and one for its body."""

    header_timeout = 10.0
    body_timeout = 120.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None
        super().connection_made(transport)
        self._arm("headers", self.header_timeout)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow_state()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer for the idle time until the next request
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _follow_state(self) -> None:
        """After new bytes: headers being received (IDLE), the body (SEND_BODY), or the request complete."""
        state = self.conn.their_state
        if state is h11.IDLE:
            if self._phase != "headers":
                self._arm("headers", self.header_timeout)
        elif state is h11.SEND_BODY:
            if self._phase != "body":
                self._arm("body", self.body_timeout)
        else:
            self._disarm()

    def _arm(self, phase: str, seconds: float) -> None:
        self._disarm()
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._expired, phase, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, None

    def _expired(self, phase: str, seconds: float) -> None:
        self._deadline, self._phase = None, None
        if self.transport.is_closing():
            return
        client = "%s:%d" % self.client if self.client else "a client"
        detail = f"the request {phase} did not arrive within {seconds:g} s"
        log.warning("closing the connection of %s: %s", client, detail)
        if self.cycle is None or self.cycle.response_started is False:
            self.transport.write(timeout_response(detail))
        self.transport.close()


def guarded_protocol(cfg: ServeSettings) -> type[GuardedH11Protocol]:
    return type("ConfiguredH11Protocol", (GuardedH11Protocol,),
                {"header_timeout": cfg.header_timeout_seconds, "body_timeout": cfg.body_timeout_seconds})


def uvicorn_options(cfg: ServeSettings) -> dict:
    """Keyword arguments of uvicorn.run / uvicorn.Config that bound what clients can hold."""
    return {"http": guarded_protocol(cfg), "timeout_keep_alive": cfg.keep_alive_seconds,
            "limit_concurrency": cfg.max_connections, "h11_max_incomplete_event_size": MAX_HEADER_BYTES}
