"""create_app(settings) → the Starlette app: routes, the request-id/error middleware, start-up."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from collector import browser, debugger, endpoints, metrics, openapi, profiles, readback
from collector.cors import CORSMiddleware
from collector.errors import CollectorError, ConfigError, MethodNotAllowed, NotFound, StorageUnavailable
from collector.ids import unique_hex
from collector.plans import PlanRegistry, default_plans_dir
from collector.runtime import Runtime
from collector.settings import Settings
from collector.spec import default_spec_dir, load_schemas
from collector.storage import open_backend, scheme_of
from collector.validation import Validators

log = logging.getLogger("collector")
access_log = logging.getLogger("collector.access")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
CALL_PATHS = {
    "track": ("/v1/track", "/v1/t"),
    "identify": ("/v1/identify", "/v1/i"),
    "page": ("/v1/page", "/v1/p"),
    "screen": ("/v1/screen", "/v1/s"),
    "group": ("/v1/group", "/v1/g"),
    "alias": ("/v1/alias", "/v1/a"),
}
BATCH_PATHS = ("/v1/batch", "/v1/import", "/v1/b")


class RequestContext:
    """Gives every answer an X-Request-Id (a valid incoming one is echoed) and turns any
    unexpected exception into the JSON error shape, logged with that id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if REQUEST_ID.match(candidate):
                    request_id = candidate
                break
        if request_id is None:
            request_id = unique_hex()[-24:]
        scope["request_id"] = request_id
        header = (b"x-request-id", request_id.encode("latin-1"))
        started = False
        status = 500
        logging_access = access_log.isEnabledFor(logging.INFO)  # off by default: no per-request cost
        began = time.perf_counter() if logging_access else 0.0

        async def send_with_id(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error", extra={"request_id": request_id, "path": scope.get("path")})
            if started:
                raise
            response = CollectorError().response({"X-Request-Id": request_id})
            await response(scope, receive, send)
        finally:
            if logging_access:
                access_log.info(
                    "%s %s %s",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round((time.perf_counter() - began) * 1000, 2),
                    },
                )


async def on_collector_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CollectorError)
    if exc.status >= 500:
        log.warning("%s: %s", exc.code, exc.more_info, extra={"request_id": request.scope.get("request_id")})
    if isinstance(exc, StorageUnavailable):
        runtime: Runtime = request.app.state.runtime
        return exc.response({"Retry-After": str(runtime.settings.retry_after_seconds)})
    return exc.response()


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return NotFound("Not found", f"No endpoint at {request.url.path}.").response()
    if exc.status_code == 405:
        return MethodNotAllowed(more_info=f"{request.method} is not accepted on {request.url.path}.").response(
            dict(exc.headers or {})
        )
    error = CollectorError(str(exc.detail), str(exc.detail))
    error.status = exc.status_code
    error.code = "http_error"
    return error.response()


def routes() -> list[Route]:
    table = []
    for kind, paths in CALL_PATHS.items():
        for path in paths:
            table.append(Route(path, partial(endpoints.collect, kind=kind), methods=["POST"]))
    for path in BATCH_PATHS:
        table.append(Route(path, partial(endpoints.collect, kind="batch"), methods=["POST"]))
    table += [
        Route("/v1/m", endpoints.telemetry, methods=["POST"]),
        Route("/v1/events", readback.list_events, methods=["GET"]),
        Route("/v1/events/{message_id:path}", readback.get_event, methods=["GET"]),
        Route("/v1/quarantine", readback.list_quarantine, methods=["GET"]),
        Route("/health", endpoints.health, methods=["GET"]),
        Route("/ready", endpoints.ready, methods=["GET"]),
    ]
    table += profiles.routes()
    table += browser.routes() + debugger.routes() + metrics.routes() + openapi.routes()
    return table


def backend_options(url: str, settings: Settings) -> dict[str, Any]:
    if scheme_of(url) == "sqlite":
        return {"synchronous": settings.sqlite_synchronous, "busy_timeout_ms": settings.sqlite_busy_timeout_ms}
    return {}


def tracking_plans(settings: Settings) -> PlanRegistry | None:
    """The plans registry when any source names a plan; a missing or broken plan fails start-up."""
    wanted = {source.tracking_plan for source in settings.write_keys.values() if source.tracking_plan}
    if not wanted:
        return None
    plans_dir = Path(settings.plans_dir) if settings.plans_dir else default_plans_dir()
    try:
        return PlanRegistry(plans_dir, required=wanted)
    except Exception as exc:  # SpecError, or a plan file of the wrong shape
        raise ConfigError(f"tracking plans in {plans_dir}: {exc}") from exc


def create_app(settings: Settings) -> Starlette:
    validators = Validators(load_schemas(default_spec_dir()))
    storage = open_backend(settings.storage, **backend_options(settings.storage, settings))
    if settings.profiles_url == settings.storage:
        if scheme_of(settings.storage) == "nats":
            raise ConfigError("NATS stores events only: give profiles their own URL (--profiles postgresql://…)")
        profile_store = storage  # one backend serves both
    else:
        profile_store = open_backend(settings.profiles_url, **backend_options(settings.profiles_url, settings))
    plans = tracking_plans(settings)
    runtime = Runtime(settings=settings, validators=validators, storage=storage, profiles=profile_store, plans=plans)
    app_metrics = metrics.install(runtime)  # times storage writes, counts intake
    debugger.install(runtime)  # live arrivals for /debugger

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await storage.open()
        if profile_store is not None:
            await profile_store.open()
        if plans is not None:
            plans.start()
        runtime.ready = True
        try:
            yield
        finally:
            runtime.ready = False
            if plans is not None:
                await plans.stop()
            if profile_store is not None:
                await profile_store.close()
            await storage.close()

    app = Starlette(
        routes=routes(),
        lifespan=lifespan,
        exception_handlers={CollectorError: on_collector_error, HTTPException: on_http_error},
    )
    app.state.runtime = runtime
    app.add_middleware(metrics.RequestTimer, metrics=app_metrics)
    app.add_middleware(RequestContext)
    app.add_middleware(CORSMiddleware, settings=settings)  # outermost: even unhandled errors get CORS headers
    return app


def app_from_env() -> Starlette:
    """Factory for uvicorn (`--workers N` re-imports the app in each process)."""
    from collector.settings import load

    return create_app(load())
