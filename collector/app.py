"""create_app(settings) → the ASGI app: the front door (front.py) before the Starlette routes, and start-up."""

from __future__ import annotations

import gc
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from collector.errors import CollectorError, ConfigError
from collector.http import browser, debugger, front, metrics, openapi, profiles, readback
from collector.http.front import FrontDoor
from collector.pipeline import ingest as endpoints
from collector.pipeline.plans import PlanRegistry
from collector.pipeline.readiness import Readiness
from collector.pipeline.runtime import Runtime
from collector.pipeline.validation import Validators
from collector.schema.dsl import default_spec_dir
from collector.schema.plans import default_plans_dir
from collector.schema.spec import load_schemas
from collector.settings import Settings
from collector.storage import open_backend, scheme_of

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


def routes() -> list[Route]:
    table = []
    for kind, paths in CALL_PATHS.items():
        for path in paths:
            table.append(Route(path, partial(endpoints.collect_route, kind=kind), methods=["POST"]))
    for path in BATCH_PATHS:
        table.append(Route(path, partial(endpoints.collect_route, kind="batch"), methods=["POST"]))
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


def event_paths() -> dict[str, str]:
    """Path → call type ("batch" for the batch paths): the POSTs the front door takes itself."""
    table = {path: kind for kind, paths in CALL_PATHS.items() for path in paths}
    return table | dict.fromkeys(BATCH_PATHS, "batch")


_GC_DEFAULTS = gc.get_threshold()
_quiet_apps = 0  # running apps that quieted the GC; the last one to stop restores it


def quiet_garbage_collector() -> None:
    """Keeps the cyclic GC out of the hot path (at start-up).

    Requests allocate many short-lived containers (parsing the benchmark's batch of 100 events
    alone makes 1,402 dicts and lists) that reference counting frees, and the pipeline makes no
    cycles, yet the default thresholds start a collection every 700 allocations and rescan the
    older generations, where the ~33k objects of the modules, schemas and validators live. That
    was 28 % of the event loop's time on batches (py-spy). Objects alive at start-up are frozen
    out of collections, and young collections start every 10,000 allocations; cycles are still
    collected. (50,000 saved no more CPU and ended the 10-minute soak at 83 MB RSS; 10,000 at
    82 MB; the defaults at 79 MB.)"""
    global _quiet_apps
    _quiet_apps += 1
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def restore_garbage_collector() -> None:
    global _quiet_apps
    _quiet_apps -= 1
    if _quiet_apps == 0:
        gc.unfreeze()
        gc.set_threshold(*_GC_DEFAULTS)


def create_app(settings: Settings) -> FrontDoor:
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
    debugger_peers = debugger.peers_of(runtime)  # with --workers N: the other workers' arrivals

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await storage.open()
        if profile_store is not None:
            await profile_store.open()
        if plans is not None:
            plans.start()
        readiness = runtime.readiness = Readiness(storage, profile_store)
        await readiness.start()
        runtime.ready = True
        quiet_garbage_collector()
        if app_metrics.pool is not None:
            app_metrics.pool.start()
        if debugger_peers is not None:
            await debugger_peers.start()
        try:
            yield
        finally:
            if debugger_peers is not None:
                await debugger_peers.stop()
            if app_metrics.pool is not None:
                await app_metrics.pool.stop()
            restore_garbage_collector()
            runtime.ready = False
            await readiness.stop()
            if plans is not None:
                await plans.stop()
            if profile_store is not None:
                await profile_store.close()
            await storage.close()

    routed = Starlette(
        routes=routes(),
        lifespan=lifespan,
        exception_handlers={
            CollectorError: front.on_collector_error,
            HTTPException: front.on_http_error,
            Exception: front.on_unhandled,
        },
    )
    routed.state.runtime = runtime
    return FrontDoor(routed, runtime, app_metrics, event_paths())


def app_from_env() -> FrontDoor:
    """Factory for uvicorn (`--workers N` re-imports the app in each process)."""
    from collector.logs import configure_worker_logging
    from collector.settings import load

    configure_worker_logging()  # a worker process inherits no logging set-up from `serve`
    return create_app(load())
