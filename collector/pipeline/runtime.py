"""What a running collector holds between requests, typed: settings, compiled validators, the
stores, tracking plans, the rate limiter, metrics and the debugger's hub. app.create_app builds it."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from collector.pipeline.debug_hub import DebugHub, DebugPeers
from collector.pipeline.metrics import Metrics
from collector.pipeline.plans import PlanRegistry
from collector.pipeline.privacy import Guard
from collector.pipeline.privacy_jobs import PrivacyService
from collector.pipeline.ratelimit import RateLimiter
from collector.pipeline.readiness import Readiness
from collector.pipeline.receipts import Receipts
from collector.pipeline.records import IntakeReport
from collector.pipeline.validation import Validators
from collector.schema.plans import Plan
from collector.settings import Settings, Source
from collector.storage.base import ProfileStore, Storage


@dataclass
class Runtime:
    settings: Settings
    validators: Validators
    storage: Storage
    profiles: ProfileStore
    plans: PlanRegistry | None  # tracking plans, reloaded when their files change; None: no source has one
    rate_limiter: RateLimiter
    metrics: Metrics
    debug_hub: DebugHub
    debug_peers: DebugPeers | None  # with --workers N: the other workers' arrivals
    readiness: Readiness
    privacy: Guard  # compiled privacy policies and suppressed identities
    privacy_service: PrivacyService  # suppressions, deletions, retention
    receipts: Receipts  # what became of messages that were not stored
    # plan_violations / rate_limited / telemetry_*, per (counter, source id); event outcomes are in metrics
    counters: Counter[tuple[str, str]]
    ready: bool = False
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

    def count_reasons(self, name: str, source_id: str, reasons: Counter[str]) -> None:
        """`name:reason` counters (privacy drops and changes), exported with a `reason` label."""
        for reason, amount in reasons.items():
            if amount:
                self.counters[(f"{name}:{reason}", source_id)] += amount

    def count(self, name: str, source_id: str, amount: int = 1) -> None:
        if amount:
            self.counters[(name, source_id)] += amount
