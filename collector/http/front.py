"""The front door: every HTTP request enters here, once, before anything else sees it.

    request id → CORS (preflight / 403 / headers) → event POST? collect() : Starlette routes
               → answer with X-Request-Id + CORS headers → latency metric (+ access log line)

Event POSTs (/v1/t, /v1/batch, …) are the traffic a collector lives on, so they go straight
from ASGI to `events.collect()`: no router, Request or middleware stack, one dict of the
headers built once. Every other path goes through the Starlette app. The two share this one
place for what every answer needs, so they cannot drift apart.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from collector.errors import CollectorError, MethodNotAllowed, NotFound, render
from collector.http import events
from collector.http.cors import CorsPolicy
from collector.http.metrics import route_template
from collector.ids import unique_hex
from collector.pipeline.intake import Caller
from collector.pipeline.runtime import Runtime

log = logging.getLogger("collector")
access_log = logging.getLogger("collector.access")
REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")  # fullmatch: `$` would admit a trailing newline
JSON = (b"content-type", b"application/json")
SUCCESS_HEADERS = [JSON, (b"content-length", str(len(events.SUCCESS_BODY)).encode())]


class FrontDoor:
    """The ASGI app the server runs (create_app() returns one)."""

    def __init__(self, routed: Starlette, runtime: Runtime, event_paths: dict[str, str]) -> None:
        self.routed = routed
        self.state = routed.state  # app.state.runtime, as for a Starlette app
        self.runtime = runtime
        self.metrics = runtime.metrics
        self.event_paths = event_paths  # path → call type, or paths.BATCH
        self.cors = CorsPolicy(runtime.settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan
            await self.routed(scope, receive, send)
            return
        began = time.perf_counter()
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id")
        if request_id is None or not REQUEST_ID.fullmatch(request_id.decode("latin-1")):
            request_id = unique_hex()[-24:].encode()
        scope["request_id"] = request_id.decode("latin-1")
        extra = [(b"x-request-id", request_id)]

        origin = headers.get(b"origin")
        refusal = caller = None
        if origin is not None:  # a browser's CORS request
            if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
                cors, refusal = self.cors.preflight(origin)
                status = 403 if refusal else 204
                if refusal is None:
                    await self.answer(send, status, b"", cors + extra)
                else:
                    await self.answer_error(send, refusal, cors + extra, scope["request_id"])
                path = scope["path"]  # a known event path, or "unmatched": label values stay bounded
                self.observe(scope, path if path in self.event_paths else "unmatched", status, began)
                return
            caller = Caller.of(scope, headers)
            cors, refusal = self.cors.answer_headers(origin, caller)
            extra += cors

        kind = self.event_paths.get(scope["path"]) if scope["method"] == "POST" else None
        if refusal is not None:
            status = await self.answer_error(send, refusal, extra, scope["request_id"])
        elif kind is not None:
            status = await self.collect(scope, receive, send, caller or Caller.of(scope, headers), kind, extra)
        else:
            status = await self.route(scope, receive, send, extra)
        self.observe(scope, scope["path"] if kind is not None else None, status, began)

    async def collect(
        self, scope: Scope, receive: Receive, send: Send, caller: Caller, kind: str, extra: list[Any]
    ) -> int:
        try:
            await events.collect(self.runtime, caller, receive, kind)
        except CollectorError as exc:
            return await self.answer_error(send, exc, extra, scope["request_id"])
        except Exception:
            log.exception("unhandled error", extra={"request_id": scope["request_id"], "path": scope["path"]})
            return await self.answer_error(send, CollectorError(), extra, None)
        await send({"type": "http.response.start", "status": 200, "headers": SUCCESS_HEADERS + extra})
        await send({"type": "http.response.body", "body": events.SUCCESS_BODY})
        return 200

    async def route(self, scope: Scope, receive: Receive, send: Send, extra: list[Any]) -> int:
        started = False
        status = 500

        async def sending(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        try:
            await self.routed(scope, receive, sending)
        except Exception:
            log.exception("unhandled error", extra={"request_id": scope["request_id"], "path": scope.get("path")})
            if not started:  # (Starlette's ServerErrorMiddleware normally answered already, via on_unhandled)
                await self.answer_error(send, CollectorError(), extra, None)
        return status

    async def answer(self, send: Send, status: int, body: bytes, headers: list[Any]) -> int:
        if status != 204:
            headers = [*headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return status

    async def answer_error(self, send: Send, error: CollectorError, extra: list[Any], request_id: str | None) -> int:
        log_server_error(error, request_id)
        status, headers, body = render(error, self.runtime.settings)
        await send({"type": "http.response.start", "status": status, "headers": headers + extra})
        await send({"type": "http.response.body", "body": body})
        return status

    def observe(self, scope: Scope, route: str | None, status: int, began: float) -> None:
        elapsed = time.perf_counter() - began
        method = scope["method"]
        self.metrics.request_timer(method, route or route_template(scope), status).observe(elapsed)
        if access_log.isEnabledFor(logging.INFO):  # off by default: no per-request cost
            path = scope["path"]
            access_log.info(
                "%s %s %s",
                method,
                path,
                status,
                extra={
                    "request_id": scope["request_id"],
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )


def log_server_error(error: CollectorError, request_id: str | None) -> None:
    if error.status >= 500:
        log.warning("%s: %s", error.code, error.more_info, extra={"request_id": request_id})


# --- how the Starlette part answers what its routes raise: through the same renderer -----------


def rendered(request: Request, error: CollectorError) -> Response:
    runtime: Runtime = request.app.state.runtime
    status, headers, body = render(error, runtime.settings)
    response = Response(body, status_code=status)
    response.raw_headers = headers  # content-type and content-length included
    return response


async def on_collector_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CollectorError)
    log_server_error(exc, request.scope.get("request_id"))
    return rendered(request, exc)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: CollectorError
    if exc.status_code == 404 and request.url.path in request.app.state.event_paths:  # the front door's POSTs
        error = MethodNotAllowed(
            more_info=f"{request.method} is not accepted on {request.url.path}.", headers={"Allow": "POST"}
        )
    elif exc.status_code == 404:
        error = NotFound("Not found", f"No endpoint at {request.url.path}.")
    elif exc.status_code == 405:
        error = MethodNotAllowed(
            more_info=f"{request.method} is not accepted on {request.url.path}.", headers=dict(exc.headers or {})
        )
    else:
        error = CollectorError(str(exc.detail), str(exc.detail))
        error.status = exc.status_code
        error.code = "http_error"
    return rendered(request, error)


async def on_unhandled(request: Request, exc: Exception) -> Response:
    """The JSON 500 (Starlette then re-raises, and FrontDoor.route logs it with the request id)."""
    return rendered(request, CollectorError())
