"""uvicorn with deadlines for slow clients and a cap on connections (`python -m serve` runs the app through it).

uvicorn closes idle keep-alive connections (`serve.keep_alive_seconds`, its `timeout_keep_alive`) and answers 503
beyond `serve.max_connections` connections or requests in flight (its `limit_concurrency`), but it has no deadline
for a request's headers or body: a client sending one byte a second keeps its connection, and its slot, forever.
`GuardedH11Protocol` adds both at the protocol level: a connection whose request headers are not complete within
`serve.header_timeout_seconds` of its first byte (or of the connection) is answered 408 and closed, and so is one
whose body is not complete within `serve.body_timeout_seconds` of its headers. A request line and headers longer
than MAX_HEADER_BYTES are answered 431 and the connection closed, however they arrive.
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


def closing_response(status: int, reason: str, detail: str) -> bytes:
    """A JSON error answer written straight to the transport, before the request reached the app."""
    body = json.dumps({"detail": detail}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def head_bytes(request: h11.Request) -> int:
    """The size of a parsed request head as sent: request line and header lines with their line ends."""
    line = len(request.method) + len(request.target) + len(b"  HTTP/1.1\r\n")
    return line + sum(len(name) + len(value) + len(b": \r\n") for name, value in request.headers) + 2


MIN_RECHECK_SECONDS = 0.05  # the least a body deadline held up by the app waits before it looks again


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers and one for its body."""

    header_timeout = 10.0
    body_timeout = 120.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None
        self._armed_at, self._paused_before = 0.0, 0.0
        self._paused_seconds, self._paused_at = 0.0, None
        super().connection_made(transport)
        self.conn.next_event = self._head_within_limit(self.conn.next_event)
        self._time_reading_pauses()
        self._arm("headers", self.header_timeout)

    def _time_reading_pauses(self) -> None:
        """Keep count of the time uvicorn does not read because the app has not taken what arrived (a batch decodes
        each file before it reads on): that time is the server's, and the body deadline leaves it out."""
        flow, pause, resume = self.flow, self.flow.pause_reading, self.flow.resume_reading

        def paused() -> None:
            if not flow.read_paused:
                self._paused_at = self.loop.time()
            pause()

        def resumed() -> None:
            if flow.read_paused and self._paused_at is not None:
                self._paused_seconds += self.loop.time() - self._paused_at
                self._paused_at = None
            resume()

        flow.pause_reading, flow.resume_reading = paused, resumed

    def _paused_total(self) -> float:
        ongoing = self.loop.time() - self._paused_at if self._paused_at is not None else 0.0
        return self._paused_seconds + ongoing

    def _head_within_limit(self, next_event):
        """h11's `next_event`, answering 431 for a request head beyond MAX_HEADER_BYTES. h11's own limit only holds a
        head while it is incomplete in its buffer: one that arrives whole in a read, or pipelined behind another
        request, passes it whatever its size. So the size of every parsed request head is checked too."""

        def checked():
            try:
                event = next_event()
            except h11.RemoteProtocolError as exc:
                if exc.error_status_hint != 431:  # h11's "Receive buffer too long": a head still incomplete
                    self._protocol_error = str(exc)  # uvicorn answers it 400 (send_400_response, below)
                    raise
                return self._refuse_head()
            if isinstance(event, h11.Request) and head_bytes(event) > MAX_HEADER_BYTES:
                return self._refuse_head()
            return event

        return checked

    def _refuse_head(self):
        detail = f"the request line and headers exceed {MAX_HEADER_BYTES // 1024} KB"
        log.warning("closing the connection of %s: %s", self._client(), detail)
        if not self.transport.is_closing():
            self.transport.write(closing_response(431, "Request Header Fields Too Large", detail))
            self.transport.close()
        return h11.NEED_DATA  # uvicorn's event loop stops here; the connection is closing

    def send_400_response(self, msg: str) -> None:
        """uvicorn's 400 for a request h11 cannot parse (a negative Content-Length, an unknown Transfer-Encoding, a
        garbled request line) was plain text; every other error of this API is JSON with a `detail` saying why."""
        why = getattr(self, "_protocol_error", "") or "unreadable"
        body = json.dumps({"detail": f"malformed HTTP request: {why}"}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow_state()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer for the idle time until the next request
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            # uvicorn has just parsed a pipelined request from what was buffered: no new byte may come to arm its
            # body deadline in data_received, and uvicorn cancelled the keep-alive timer on seeing it
            self._arm("body", self.body_timeout)
        else:
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
        self._armed_at, self._paused_before = self.loop.time(), self._paused_total()
        self._deadline = self.loop.call_later(seconds, self._expired, phase, seconds)

    def _client_seconds(self) -> float:
        """The time since the deadline was armed, less the time reading was paused for the app meanwhile."""
        return self.loop.time() - self._armed_at - (self._paused_total() - self._paused_before)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, None

    def _expired(self, phase: str, seconds: float) -> None:
        self._deadline, self._phase = None, None
        if self.transport.is_closing():
            return
        if phase == "body" and (left := seconds - self._client_seconds()) > 0:
            # the app held up reading meanwhile (a batch decodes each file before it reads on): the server was the
            # slow one then, not the client, whose clock stood still. A check at the moment reading happened to be
            # paused was not enough: a batch of large files alternates, and a check in between answered 408.
            self._deadline = self.loop.call_later(max(left, MIN_RECHECK_SECONDS), self._expired, phase, seconds)
            self._phase = phase
            return
        detail = f"the request {phase} did not arrive within {seconds:g} s"
        log.warning("closing the connection of %s: %s", self._client(), detail)
        if self.cycle is None or self.cycle.response_started is False:
            self.transport.write(closing_response(408, "Request Timeout", detail))
        self.transport.close()

    def _client(self) -> str:
        return "%s:%d" % self.client if self.client else "a client"


def guarded_protocol(cfg: ServeSettings) -> type[GuardedH11Protocol]:
    return type("ConfiguredH11Protocol", (GuardedH11Protocol,),
                {"header_timeout": cfg.header_timeout_seconds, "body_timeout": cfg.body_timeout_seconds})


def uvicorn_options(cfg: ServeSettings) -> dict:
    """Keyword arguments of uvicorn.run / uvicorn.Config that bound what clients can hold."""
    return {"http": guarded_protocol(cfg), "timeout_keep_alive": cfg.keep_alive_seconds,
            "limit_concurrency": cfg.max_connections, "h11_max_incomplete_event_size": MAX_HEADER_BYTES}
