"""What a running collector holds between requests: settings, compiled validators, backends, counters."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from collector.settings import Settings
from collector.storage.base import ProfileStore, Storage
from collector.validation import Validators


@dataclass
class Runtime:
    settings: Settings
    validators: Validators
    storage: Storage
    profiles: ProfileStore | None
    ready: bool = False
    # accepted / duplicate / rejected / quarantined / telemetry, per (counter, source id)
    counters: Counter[tuple[str, str]] = field(default_factory=Counter)
    extras: dict[str, Any] = field(default_factory=dict)

    def count(self, name: str, source_id: str, amount: int = 1) -> None:
        if amount:
            self.counters[(name, source_id)] += amount
