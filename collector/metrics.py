"""Prometheus metrics at `GET /metrics` (admin token: per-source counts are business data).

- `collector_events_total{outcome, type, source}`: outcome is accepted / duplicate /
  quarantined / rejected. A batch that is partly duplicate and mixes types cannot be split by
  type (storage reports totals), so that remainder is counted with `type="mixed"`.
- `collector_request_duration_seconds{method, route, status}`: route is the path template.
- `collector_storage_write_seconds` and `collector_storage_write_events`: each hand-over to
  storage, from call until durable (group-commit wait included), and its number of events.
- `collector_sdk_telemetry_requests_total`, `collector_sdk_telemetry_series_total` (POST /v1/m)
  and `collector_rate_limited_total{source}`, read from the runtime counters at scrape time.

Each app has its own registry (several apps live in one test process); with `--workers N`
each worker answers for itself.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from collector.auth import require_admin
from collector.runtime import IntakeReport, Runtime
from collector.storage.base import EventPage, EventQuery, QuarantinedEvent, Storage, StoredEvent, WriteResult

EVENT_TYPES = frozenset(("track", "identify", "page", "screen", "group", "alias"))
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "collector_events",
            "Events by outcome (accepted, duplicate, quarantined, rejected), type and source.",
            ["outcome", "type", "source"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "collector_request_duration_seconds",
            "HTTP request latency, from request start until the last byte of the answer.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.write_seconds = Histogram(
            "collector_storage_write_seconds",
            "Time from handing events to storage until they are durable (group-commit wait included).",
            registry=self.registry,
        )
        self.write_events = Histogram(
            "collector_storage_write_events",
            "Events (plus quarantined ones) per hand-over to storage.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self._event_children: dict[tuple[str, str, str], Any] = {}

    def request_timer(self, method: str, route: str, status: int) -> Any:
        """The labelled histogram child, cached: `.labels()` costs a lock and a dict build per call."""
        key = (method, route, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.request_seconds.labels(method, route, str(status))
        return child

    def event_counter(self, outcome: str, kind: str, source: str) -> Any:
        key = (outcome, kind, source)
        child = self._event_children.get(key)
        if child is None:
            child = self._event_children[key] = self.events.labels(outcome, kind, source)
        return child

    def on_intake(self, report: IntakeReport) -> None:
        """Runtime listener: count one request's events by outcome and type."""
        source = report.source.id
        by_type = Tally(event.type for event in report.events)
        stored, duplicates = report.result.stored, report.result.duplicates
        if duplicates == 0 or stored == 0 or len(by_type) == 1:
            outcome = "accepted" if duplicates == 0 else "duplicate"
            for kind, count in by_type.items():
                if stored and duplicates:  # one type, split between the two outcomes
                    self.event_counter("accepted", kind, source).inc(stored)
                    self.event_counter("duplicate", kind, source).inc(duplicates)
                else:
                    self.event_counter(outcome, kind, source).inc(count)
        else:
            self.event_counter("accepted", "mixed", source).inc(stored)
            self.event_counter("duplicate", "mixed", source).inc(duplicates)
        for outcome, items in (("quarantined", report.quarantined), ("rejected", report.rejected)):
            for _index, message, _errors in items:
                sent_type = message.get("type") if isinstance(message, dict) else None
                kind = sent_type if isinstance(sent_type, str) and sent_type in EVENT_TYPES else "unknown"
                self.event_counter(outcome, kind, source).inc()  # a sent type may be any JSON


class RuntimeCounters(Collector):
    """Counters the endpoints already keep in `Runtime.counters`, exported at scrape time."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[CounterMetricFamily]:
        counters = self.runtime.counters
        requests = CounterMetricFamily("collector_sdk_telemetry_requests", "POST /v1/m requests (SDK telemetry).")
        requests.add_metric([], sum(v for (name, _), v in counters.items() if name == "telemetry_requests"))
        series = CounterMetricFamily("collector_sdk_telemetry_series", "Metric series received in SDK telemetry.")
        series.add_metric([], sum(v for (name, _), v in counters.items() if name == "telemetry_series"))
        limited = CounterMetricFamily("collector_rate_limited", "Requests answered 429 by source.", labels=["source"])
        for (name, source), value in sorted(counters.items()):
            if name == "rate_limited":
                limited.add_metric([source], value)
        violations = CounterMetricFamily(
            "collector_plan_violations", "Tracking-plan violations found, by source.", labels=["source"]
        )
        for (name, source), value in sorted(counters.items()):
            if name == "plan_violations":
                violations.add_metric([source], value)
        yield from (requests, series, limited, violations)


class MeasuredStorage:
    """The event storage, timed: every write's latency and size go to the metrics."""

    def __init__(self, inner: Storage, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def ping(self) -> bool:
        return await self.inner.ping()

    async def write(self, events: list[StoredEvent], quarantined: list[QuarantinedEvent] | None = None) -> WriteResult:
        began = time.perf_counter()
        result = await self.inner.write(events, quarantined)
        self.metrics.write_seconds.observe(time.perf_counter() - began)
        self.metrics.write_events.observe(len(events) + len(quarantined or ()))
        return result

    async def read_events(self, query: EventQuery) -> EventPage:
        return await self.inner.read_events(query)

    async def read_quarantine(self, workspace_id: str | None, after: int, limit: int) -> EventPage:
        return await self.inner.read_quarantine(workspace_id, after, limit)

    def __getattr__(self, name: str) -> Any:  # backend-specific extras (tests, tools)
        return getattr(self.inner, name)


def route_template(scope: Scope) -> str:
    """The matched path with its parameters put back as `{name}` (bounded label values)."""
    if "endpoint" not in scope:
        return "unmatched"
    path: str = scope["path"]
    for name, value in (scope.get("path_params") or {}).items():
        path = path.replace(str(value), "{" + name + "}", 1)
    return path


def install(runtime: Runtime) -> Metrics:
    """Time storage writes, count intake, export runtime counters; returns the app's Metrics."""
    metrics = Metrics()
    runtime.storage = MeasuredStorage(runtime.storage, metrics)
    runtime.listeners.append(metrics.on_intake)
    metrics.registry.register(RuntimeCounters(runtime))
    runtime.extras["metrics"] = metrics
    return metrics


async def metrics_endpoint(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    require_admin(request.headers.get("authorization"), runtime.settings)
    metrics: Metrics = runtime.extras["metrics"]
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def routes() -> list[Route]:
    return [Route("/metrics", metrics_endpoint, methods=["GET"])]
