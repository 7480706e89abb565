"""The HTTP/1.1 connection: uvicorn's httptools protocol with the limits it lacks.

uvicorn with httptools bounds neither the header section nor the time a client takes to send
it: a 20 MiB header and 200,000 headers were accepted, and 3,000 connections sending a byte at a
time were all still open after 90 s. uvicorn's h11 mode bounds only the incomplete head (16 KB)
and has no header or body timeout; hypercorn and granian have a header timeout but no body
timeout, minimum rate or connection cap. So the guard sits here, under the ASGI app, where the
bytes arrive:

    connection made ── past maxConnections? ─────────────────────────→ 503, closed
      head (request line + headers) ── over a limit? ────────────────→ 431 / 414, closed
                                    ── not complete in headerTimeout ─→ 408, closed
      body ── no byte for bodyIdleTimeout, or not all in bodyTimeout ─→ 408, closed
      response, then keep-alive ── idle for keepAliveTimeout ─────────→ closed (uvicorn)

A connection that sent nothing before its header timeout is closed without an answer. Every
answer is the one error shape (errors.render), rendered once at start-up, with Connection: close.
The counts of a head are exact for complete headers (on_header); a header still arriving is
bounded by the bytes received since its message began, so a client can make the parser hold at
most maxHeadBytes plus one socket read.
"""

from __future__ import annotations

from asyncio import TimerHandle, Transport
from dataclasses import dataclass
from typing import Any, Protocol

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from collector.errors import (
    CollectorError,
    HeadersTooLarge,
    InvalidHTTP,
    RequestTimeout,
    TooManyConnections,
    UrlTooLong,
    render,
)


class EdgeSettings(Protocol):
    """What the guard needs of the settings (collector/settings.py)."""

    @property
    def max_header_bytes(self) -> int: ...
    @property
    def max_head_bytes(self) -> int: ...
    @property
    def max_headers(self) -> int: ...
    @property
    def max_url_bytes(self) -> int: ...
    @property
    def header_timeout_seconds(self) -> float: ...
    @property
    def body_idle_timeout_seconds(self) -> float: ...
    @property
    def body_timeout_seconds(self) -> float: ...
    @property
    def max_connections(self) -> int: ...
    @property
    def retry_after_seconds(self) -> int: ...


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 8192
    max_head_bytes: int = 32768
    max_headers: int = 100
    max_url_bytes: int = 8192
    header_timeout: float = 10.0
    body_idle_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 2048
    retry_after_seconds: int = 1


def _answer(error: CollectorError, limits: Limits) -> bytes:
    status, headers, body = render(error, limits)
    lines = [f"HTTP/1.1 {status} {error.message}".encode()]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@dataclass(frozen=True)
class Answers:
    """The guard's answers, as bytes on the wire."""

    headers_too_large: bytes
    url_too_long: bytes
    timeout: bytes
    too_many_connections: bytes
    invalid_http: bytes

    @classmethod
    def of(cls, limits: Limits) -> Answers:
        return cls(
            headers_too_large=_answer(
                HeadersTooLarge(
                    more_info=f"At most {limits.max_headers} headers, {limits.max_header_bytes} bytes in one header "
                    f"and {limits.max_head_bytes} bytes in the request line and headers together."
                ),
                limits,
            ),
            url_too_long=_answer(UrlTooLong(more_info=f"At most {limits.max_url_bytes} bytes of URL."), limits),
            timeout=_answer(RequestTimeout(), limits),
            too_many_connections=_answer(
                TooManyConnections(headers={"Retry-After": str(limits.retry_after_seconds)}), limits
            ),
            invalid_http=_answer(InvalidHTTP(), limits),
        )


_limits = Limits()
_answers = Answers.of(_limits)


def configure(settings: EdgeSettings) -> None:
    """The limits of every connection this process accepts from now on (called by the worker's
    app factory, in each server process, before it accepts any)."""
    global _limits, _answers
    _limits = Limits(
        max_header_bytes=settings.max_header_bytes,
        max_head_bytes=settings.max_head_bytes,
        max_headers=settings.max_headers,
        max_url_bytes=settings.max_url_bytes,
        header_timeout=settings.header_timeout_seconds,
        body_idle_timeout=settings.body_idle_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
        max_connections=settings.max_connections,
        retry_after_seconds=settings.retry_after_seconds,
    )
    _answers = Answers.of(_limits)


class _Refused(Exception):
    """Raised from a parser callback to stop parsing (httptools re-raises it as an
    HttpParserCallbackError); data_received answers with `answer`."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus the limits above. One timer per connection: the phases it guards
    (head, then body) never overlap, and uvicorn's own keep-alive timer covers the idle time
    between requests. A phase's timer is armed only when a read ends inside it, so a request
    that arrives in one read (most do) costs no timer at all."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = _limits
        self.answers = _answers
        self.guard_timer: TimerHandle | None = None
        self.reading_head = False
        self.head_serial = 0  # messages begun on this connection
        self.head_bytes = 0  # exact: request line + complete headers
        self.head_received = 0  # coarse: bytes read while one head was still incomplete
        self.header_count = 0
        self.received_any = False
        self.body_pending = False
        self.body_started = 0.0
        self.body_last = 0.0

    # The connection

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.refuse(self.answers.too_many_connections)
            return
        self.arm(self.limits.header_timeout, self.head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, with the guard's refusals answered in our error shape.
        self._unset_keepalive_if_required()
        self.received_any = True
        serial, in_head = self.head_serial, self.reading_head
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:  # a callback's _Refused arrives as its __context__
            cause = exc.__context__ if isinstance(exc.__context__, _Refused) else None
            self.refuse(cause.answer if cause else self.answers.invalid_http)
            return
        if self.reading_head:
            if in_head and serial == self.head_serial:
                # All of this read belongs to one incomplete head (perhaps a header still arriving).
                self.head_received += len(data)
                if self.head_received > self.limits.max_head_bytes:
                    self.refuse(self.answers.headers_too_large)
                    return
            if self.guard_timer is None:  # a keep-alive request's head timer starts with its first read
                self.arm(self.limits.header_timeout, self.head_timed_out)
        elif self.body_pending and self.guard_timer is None:
            self.body_started = self.body_last = self.loop.time()
            self.arm(self.limits.body_idle_timeout, self.body_timed_out)

    def send_400_response(self, msg: str) -> None:
        self.refuse(self.answers.invalid_http)

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading_head = True
        self.head_serial += 1
        self.head_bytes = self.head_received = self.header_count = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_url_bytes:
            raise _Refused(self.answers.url_too_long)
        self.head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self.header_count += 1
        self.head_bytes += size + 4  # ": " and CRLF
        if (
            size > self.limits.max_header_bytes
            or self.header_count > self.limits.max_headers
            or self.head_bytes > self.limits.max_head_bytes
        ):
            raise _Refused(self.answers.headers_too_large)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.disarm()
        self.reading_head = False
        self.body_pending = True  # its timer starts after this read, if the body is not all in it
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.body_last = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.body_pending = False
        self.disarm()
        super().on_message_complete()

    # Timers and refusals

    def arm(self, delay: float, callback: Any) -> None:
        self.disarm()
        self.guard_timer = self.loop.call_later(delay, callback)

    def disarm(self) -> None:
        if self.guard_timer is not None:
            self.guard_timer.cancel()
            self.guard_timer = None

    def head_timed_out(self) -> None:
        self.guard_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:  # a pipelined request waits for ours to answer: not the client's delay
            self.arm(self.limits.header_timeout, self.head_timed_out)
        elif self.received_any:
            self.refuse(self.answers.timeout)
        else:
            self.transport.close()

    def body_timed_out(self) -> None:
        self.guard_timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        idle_left = self.body_last + self.limits.body_idle_timeout - now
        total_left = self.body_started + self.limits.body_timeout - now
        if self.flow.read_paused:  # the app has not read what it has: not the client's delay
            self.body_last = now
            self.arm(self.limits.body_idle_timeout, self.body_timed_out)
        elif idle_left <= 0 or total_left <= 0:
            self.refuse(self.answers.timeout)
        else:
            self.arm(min(idle_left, total_left), self.body_timed_out)

    def refuse(self, answer: bytes) -> None:
        """Answer (unless a response has begun) and close. An app still waiting for the body
        sees a disconnect."""
        self.disarm()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            started = cycle.response_started
            cycle.disconnected = True
            cycle.message_event.set()
            if started:
                self.transport.close()
                return
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()
