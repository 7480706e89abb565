"""The collector's Prometheus metrics, kept as plain dicts and lists (http/metrics.py serves them at
`GET /metrics`, admin token: per-source counts are business data).

- `collector_events_total{outcome, type, source}`: outcome is accepted / duplicate /
  quarantined / rejected. A batch that is partly duplicate and mixes types cannot be split by
  type (storage reports totals), so that remainder is counted with `type="mixed"`.
- `collector_request_duration_seconds{method, route, status}`: route is the path template.
- `collector_storage_write_seconds` and `collector_storage_write_events`: each hand-over to
  storage, from call until durable (group-commit wait included), and its number of events.
- `collector_quality_violations_total{source, rule}`: stored messages that broke a quality rule
  or were repaired (rule: `<field>:<keyword>`, or a repair's name), see README "What is rejected".
- `collector_sdk_telemetry_requests_total`, `collector_sdk_telemetry_series_total` (POST /v1/m)
  and `collector_rate_limited_total{source}`, read from the runtime counters at scrape time.

Each app has its own registry (several apps live in one test process). With `--workers N` the
workers pool their figures through a directory (`workersDir`): each one writes its own every
second, and the one that answers a scrape adds the others' to its live figures.
"""

from __future__ import annotations

import asyncio
import logging
import os
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import suppress
from itertools import accumulate
from math import inf as INF
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_go_float

from collector.paths import CALL_TYPES
from collector.pipeline.records import IntakeReport

go_float: Callable[[float], str] = _untyped_go_float  # Prometheus' float text (+Inf, 0.005)
EVENT_TYPES = frozenset(CALL_TYPES)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000)


class Tally:
    """A labelled counter kept as a plain dict: the event loop is its only writer."""

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, key: tuple[str, ...], amount: float = 1) -> None:
        self.values[key] = self.values.get(key, 0) + amount

    def family(self, values: dict[tuple[str, ...], float]) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in sorted(values.items()):
            family.add_metric(list(key), value)
        return family


class Buckets:
    """One histogram series: counts per bucket (not cumulative until exported) and the sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bound >= value: Prometheus' `le`
        self.total += value


class LabelledHistogram:
    def __init__(self, name: str, documentation: str, labels: list[str], bounds: tuple[float, ...]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.bounds = tuple(float(b) for b in bounds) + (INF,)
        self.series: dict[tuple[str, ...], Buckets] = {}

    def child(self, key: tuple[str, ...]) -> Buckets:
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Buckets(self.bounds)
        return series

    def snapshot(self) -> dict[tuple[str, ...], tuple[list[int], float]]:
        return {key: (list(series.counts), series.total) for key, series in self.series.items()}

    def family(self, series: dict[tuple[str, ...], tuple[list[int], float]]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, (counts, total) in sorted(series.items()):
            buckets = [(go_float(b), c) for b, c in zip(self.bounds, accumulate(counts), strict=True)]
            family.add_metric(list(key), buckets, total)
        return family


class Metrics(Collector):
    """The collector's own metrics, as plain dicts and lists turned into metric families only when
    /metrics is scraped. prometheus_client's Histogram takes a lock and makes several calls per
    observation: ~2.2 us here, against ~0.5 for Buckets.observe, three times per request."""

    def __init__(self, counters: Counter[tuple[str, str]], pool_dir: str = "") -> None:
        self.counters = counters  # the runtime's (rate_limited, telemetry_*, plan_violations)
        self.pool = Pool(Path(pool_dir), self.state) if pool_dir else None
        self.registry = CollectorRegistry()
        self.events = Tally(
            "collector_events",
            "Events by outcome (accepted, duplicate, quarantined, rejected), type and source.",
            ["outcome", "type", "source"],
        )
        self.quality = Tally(
            "collector_quality_violations",
            "Stored messages with a quality violation or repair, by source and rule (never dropped for it).",
            ["source", "rule"],
        )
        self.tallies = [self.events, self.quality]
        self.request_seconds = LabelledHistogram(
            "collector_request_duration_seconds",
            "HTTP request latency, from request start until the last byte of the answer.",
            ["method", "route", "status"],
            Histogram.DEFAULT_BUCKETS[:-1],
        )
        write_seconds = LabelledHistogram(
            "collector_storage_write_seconds",
            "Time from handing events to storage until they are durable (group-commit wait included).",
            [],
            Histogram.DEFAULT_BUCKETS[:-1],
        )
        write_events = LabelledHistogram(
            "collector_storage_write_events",
            "Events (plus quarantined ones) per hand-over to storage.",
            [],
            BATCH_SIZE_BUCKETS,
        )
        self.histograms = [self.request_seconds, write_seconds, write_events]
        self.write_seconds, self.write_events = write_seconds.child(()), write_events.child(())
        self.registry.register(self)

    def state(self) -> dict[str, Any]:
        """What this process has counted (the runtime's counters too), as JSON-able lists."""
        return {
            "tallies": {t.name: [[*key, value] for key, value in t.values.items()] for t in self.tallies},
            "histograms": {
                h.name: [[list(key), counts, total] for key, (counts, total) in h.snapshot().items()]
                for h in self.histograms
            },
            "counters": [[name, source, value] for (name, source), value in self.counters.items()],
        }

    def collect(self) -> Iterator[Any]:
        tallies, series, counters = self.pooled()
        for tally in self.tallies:
            yield tally.family(tallies.get(tally.name, {}))
        for histogram in self.histograms:
            yield histogram.family(series.get(histogram.name, {}))
        yield from counter_families(counters)

    def pooled(
        self,
    ) -> tuple[dict[str, dict[Any, float]], dict[str, dict[Any, tuple[list[int], float]]], Counter[Any]]:
        """This process's live figures, plus the other workers' latest when they pool them."""
        tallies = {tally.name: dict(tally.values) for tally in self.tallies}
        series = {h.name: h.snapshot() for h in self.histograms}
        counters: Counter[tuple[str, str]] = Counter(self.counters)
        for state in self.pool.others() if self.pool else ():
            for name, entries in state["tallies"].items():
                values = tallies.setdefault(name, {})
                for *key, value in entries:
                    values[tuple(key)] = values.get(tuple(key), 0) + value
            for name, entries in state["histograms"].items():
                mine = series.setdefault(name, {})
                for key, counts, total in entries:
                    have = mine.get(tuple(key))
                    if have is not None:
                        counts, total = [a + b for a, b in zip(have[0], counts, strict=True)], have[1] + total
                    mine[tuple(key)] = (counts, total)
            for name, source, value in state["counters"]:
                counters[(name, source)] += value
        return tallies, series, counters

    def request_timer(self, method: str, route: str, status: int) -> Buckets:
        return self.request_seconds.child((method, route, str(status)))

    def on_intake(self, report: IntakeReport) -> None:
        """Runtime listener: count one request's events by outcome and type."""
        source = report.source.id
        events = report.events
        self.write_seconds.observe(report.write_seconds)
        self.write_events.observe(len(events) + len(report.quarantined))
        if len(events) == 1:
            by_type = {events[0].type: 1}
        else:
            by_type = {}
            for event in events:
                by_type[event.type] = by_type.get(event.type, 0) + 1
        stored, duplicates = report.result.stored, report.result.duplicates
        count = self.events.inc
        if duplicates == 0 or stored == 0 or len(by_type) == 1:
            outcome = "accepted" if duplicates == 0 else "duplicate"
            for kind, number in by_type.items():
                if stored and duplicates:  # one type, split between the two outcomes
                    count(("accepted", kind, source), stored)
                    count(("duplicate", kind, source), duplicates)
                else:
                    count((outcome, kind, source), number)
        else:
            count(("accepted", "mixed", source), stored)
            count(("duplicate", "mixed", source), duplicates)
        for outcome, items in (("quarantined", report.quarantined), ("rejected", report.rejected)):
            for _index, message, _errors in items:
                sent_type = message.get("type") if isinstance(message, dict) else None
                kind = sent_type if isinstance(sent_type, str) and sent_type in EVENT_TYPES else "unknown"
                count((outcome, kind, source))  # a sent type may be any JSON
        for rule, number in report.quality.items():
            self.quality.inc((source, rule), number)


def counter_families(counters: Counter[tuple[str, str]]) -> Iterator[CounterMetricFamily]:
    """The counters the endpoints keep in `Runtime.counters`, exported at scrape time."""
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
    privacy = CounterMetricFamily(
        "collector_privacy",
        "Messages a privacy policy dropped or changed, by source and reason (suppressed, consent_refused, "
        "consent_missing, gpc_dropped, gpc_anonymized, dnt_dropped, dnt_anonymized, ip_truncated, ip_dropped, "
        "redacted).",
        labels=["source", "reason"],
    )
    for (name, source), value in sorted(counters.items()):
        if name.startswith("privacy:"):
            privacy.add_metric([source, name.partition(":")[2]], value)
    failed = CounterMetricFamily(
        "collector_receipts_failed",
        "Receipts that could not be written (the answers stood), by source.",
        labels=["source"],
    )
    for (name, source), value in sorted(counters.items()):
        if name == "receipts_failed":
            failed.add_metric([source], value)
    expired = CounterMetricFamily("collector_receipts_expired", "Receipts deleted after receiptRetention.")
    expired.add_metric([], sum(v for (name, _), v in counters.items() if name == "receipts_expired"))
    yield from (requests, series, limited, violations, privacy, failed, expired)


class Pool:
    """The worker processes of one server, pooling their figures through a directory. Each writes
    its own state to <pid>.json (atomically, every PUBLISH_SECONDS and at shutdown). A worker that
    exits leaves its file, so counters never go back; use a fresh directory per server start."""

    PUBLISH_SECONDS = 1.0

    def __init__(self, directory: Path, state: Callable[[], dict[str, Any]]) -> None:
        self.directory = directory
        self.state = state
        self.own = directory / f"{os.getpid()}.json"
        self._publishing: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._publishing = asyncio.create_task(self._publish_forever())

    async def stop(self) -> None:
        if self._publishing is not None:
            self._publishing.cancel()
            with suppress(asyncio.CancelledError):
                await self._publishing
            self._publishing = None
        self.publish()  # this worker's last figures stay in the pool

    def publish(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.own.with_suffix(".partial")
        partial.write_bytes(orjson.dumps(self.state()))
        os.replace(partial, self.own)  # readers see the old file or the new one, never half of one

    def others(self) -> list[dict[str, Any]]:
        states = []
        for path in sorted(self.directory.glob("*.json")):
            if path == self.own:
                continue  # this process's live figures are fresher
            try:
                states.append(orjson.loads(path.read_bytes()))
            except (OSError, orjson.JSONDecodeError):  # removed meanwhile, or not ours
                continue
        return states

    async def _publish_forever(self) -> None:
        while True:
            try:
                self.publish()
            except OSError:
                logging.getLogger("collector").exception("cannot write metrics to %s", self.directory)
            await asyncio.sleep(self.PUBLISH_SECONDS)
