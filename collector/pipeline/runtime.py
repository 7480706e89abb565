"""What a running collector holds between requests: settings, compiled validators, backends, counters."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from collector.pipeline.plans import PlanRegistry
from collector.pipeline.readiness import Readiness
from collector.pipeline.validation import Validators
from collector.schema.plans import Plan
from collector.settings import Settings, Source
from collector.storage.base import ProfileStore, Storage, StoredEvent, WriteResult


class IntakeReport(NamedTuple):
    """What one event request brought, once storage has answered (for metrics and the live debugger)."""

    source: Source
    events: list[StoredEvent]  # valid, enriched, handed to storage
    quarantined: list[tuple[int, Any, list[dict[str, Any]]]]  # (index, message, errors), kept aside
    rejected: list[tuple[int, Any, list[dict[str, Any]]]]  # (index, message, errors), answered 400
    result: WriteResult
    write_seconds: float  # from handing the events to storage until they were durable
    quality: dict[str, int]  # quality rule → stored messages that broke it (recorded, not dropped)


@dataclass
class Runtime:
    settings: Settings
    validators: Validators
    storage: Storage
    profiles: ProfileStore | None
    plans: PlanRegistry | None = None  # tracking plans, reloaded when their files change
    ready: bool = False
    readiness: Readiness | None = None  # durable-write probes, refreshed in the background (for /ready)
    # plan_violations / rate_limited / telemetry_*, per (counter, source id); event outcomes are in metrics
    counters: Counter[tuple[str, str]] = field(default_factory=Counter)
    extras: dict[str, Any] = field(default_factory=dict)
    # Called after every event write; must be quick and must not raise (metrics, live debugger).
    listeners: list[Callable[[IntakeReport], None]] = field(default_factory=list)

    def notify(self, report: IntakeReport) -> None:
        for listener in self.listeners:
            try:
                listener(report)
            except Exception:  # the events are already stored: an observer's fault must not make that a 500
                logging.getLogger("collector").exception("intake listener %r failed", listener)

    def plan_of(self, source: Source) -> Plan | None:
        return self.plans.get(source.tracking_plan) if self.plans is not None else None

    def count(self, name: str, source_id: str, amount: int = 1) -> None:
        if amount:
            self.counters[(name, source_id)] += amount
