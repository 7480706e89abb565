"""The composition root: create_app(settings) builds the typed Runtime, opens each distinct store
once (and closes it on shutdown), and puts the front door (http/front.py) before the routes."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from collector.errors import CollectorError, ConfigError
from collector.http import browser, debugger, events, front, metrics, openapi, privacy, profiles, readback
from collector.http.front import FrontDoor
from collector.paths import DEFAULT_PATHS, IngestPaths
from collector.pipeline.debug_hub import DebugHub, DebugPeers
from collector.pipeline.metrics import Metrics
from collector.pipeline.plans import PlanRegistry
from collector.pipeline.privacy import Guard
from collector.pipeline.privacy_jobs import PrivacyService
from collector.pipeline.ratelimit import RateLimiter
from collector.pipeline.readiness import Readiness
from collector.pipeline.receipts import Receipts
from collector.pipeline.runtime import Runtime
from collector.pipeline.validation import Validators
from collector.schema.dsl import default_spec_dir
from collector.schema.plans import default_plans_dir
from collector.schema.spec import load_schemas
from collector.settings import Settings
from collector.storage import open_event_store, open_profile_store, open_shared_store, scheme_of
from collector.storage.base import ProfileStore, Storage


def routes(ingest: IngestPaths = DEFAULT_PATHS) -> list[Route]:
    """Every path but the event POSTs (`ingest.events`), which the front door answers itself."""
    table = [Route(path, events.telemetry, methods=["POST"]) for path in ingest.telemetry]
    table += [
        Route("/v1/events", readback.list_events, methods=["GET"]),
        Route("/v1/events/{message_id:path}", readback.get_event, methods=["GET"]),
        Route("/v1/quarantine", readback.list_quarantine, methods=["GET"]),
        Route("/v1/receipts/{message_id:path}", readback.get_receipts, methods=["GET"]),
        Route("/health", events.health, methods=["GET"]),
        Route("/ready", events.ready, methods=["GET"]),
    ]
    table += profiles.routes() + privacy.routes()
    table += browser.routes(ingest) + debugger.routes() + metrics.routes() + openapi.routes()
    return table


def backend_options(url: str, settings: Settings) -> dict[str, Any]:
    if scheme_of(url) == "sqlite":
        return {"synchronous": settings.sqlite_synchronous, "busy_timeout_ms": settings.sqlite_busy_timeout_ms}
    if scheme_of(url) == "nats":
        return {"receipt_retention": settings.receipt_retention}  # the receipts stream's max_age
    return {}


def open_stores(settings: Settings) -> tuple[Storage, ProfileStore]:
    """(event store, profile store): one instance when both URLs are the same."""
    events_url, profiles_url = settings.storage, settings.profiles_url
    if profiles_url == events_url:
        shared = open_shared_store(events_url, **backend_options(events_url, settings))
        assert isinstance(shared, ProfileStore)
        return shared, shared
    return (
        open_event_store(events_url, **backend_options(events_url, settings)),
        open_profile_store(profiles_url, **backend_options(profiles_url, settings)),
    )


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


def build_runtime(settings: Settings) -> Runtime:
    storage, profile_store = open_stores(settings)
    counters: Counter[tuple[str, str]] = Counter()
    hub = DebugHub()
    guard = Guard(settings)  # compiles every source's redaction rules: a bad rule fails start-up
    runtime = Runtime(
        settings=settings,
        validators=Validators(load_schemas(default_spec_dir())),
        storage=storage,
        profiles=profile_store,
        plans=tracking_plans(settings),
        rate_limiter=RateLimiter.for_settings(settings, counters),
        metrics=Metrics(counters, settings.workers_dir),
        debug_hub=hub,
        debug_peers=DebugPeers(hub, Path(settings.workers_dir)) if settings.workers_dir else None,
        readiness=Readiness(storage, profile_store),
        privacy=guard,
        privacy_service=PrivacyService(settings, guard, storage, profile_store, counters),
        receipts=Receipts(settings, storage, counters),
        counters=counters,
    )
    runtime.listeners += [runtime.metrics.on_intake, hub.on_intake]  # intake counts, live arrivals
    return runtime


def create_app(settings: Settings) -> FrontDoor:
    ingest = IngestPaths.of(settings.ingest_prefixes)  # every prefix's paths, built once (a bad prefix: ConfigError)
    runtime = build_runtime(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            both: list[Storage | ProfileStore] = [runtime.storage, runtime.profiles]
            for store in {id(store): store for store in both}.values():  # one instance may serve both: once
                await store.open()
                stack.push_async_callback(store.close)
            if runtime.plans is not None:
                runtime.plans.start()
                stack.push_async_callback(runtime.plans.stop)
            await runtime.privacy_service.start()
            stack.push_async_callback(runtime.privacy_service.stop)
            await runtime.receipts.start()
            stack.push_async_callback(runtime.receipts.stop)
            await runtime.readiness.start()
            stack.push_async_callback(runtime.readiness.stop)
            if runtime.metrics.pool is not None:
                runtime.metrics.pool.start()
                stack.push_async_callback(runtime.metrics.pool.stop)
            if runtime.debug_peers is not None:
                await runtime.debug_peers.start()
                stack.push_async_callback(runtime.debug_peers.stop)
            runtime.ready = True
            try:
                yield
            finally:
                runtime.ready = False

    routed = Starlette(
        routes=routes(ingest),
        lifespan=lifespan,
        exception_handlers={
            CollectorError: front.on_collector_error,
            HTTPException: front.on_http_error,
            Exception: front.on_unhandled,
        },
    )
    routed.router.redirect_slashes = False  # its Location would echo the Host header
    routed.state.runtime = runtime
    routed.state.event_paths = ingest.events
    return FrontDoor(routed, runtime, ingest.events)
