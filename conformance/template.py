"""Placeholders in case files, rendered per case so runs can share a target without resets.

    {{run}}            the run id (also sent as X-Conformance-Run)
    {{id:NAME}}        an id unique to this run, case and NAME (stable within the case)
    {{now}}            the runner's clock, ISO-8601 UTC with ms
    {{now:+S}}         the runner's clock shifted by S seconds (negative for the past)
    {{saved:NAME}}     a value an earlier step saved from its response
    {{write_key}}      the write key given on the command line
    {{fill:N}}         N times "x" (long ids and blobs without bloating case files)

A string that is exactly one placeholder takes the placeholder's value as is (a saved
number stays a number); anywhere else the value is formatted into the string.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)(?::([^}]*))?\s*\}\}")


def iso(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


class Renderer:
    """Renders the placeholders of one case run."""

    def __init__(self, run_id: str, case_id: str, write_key: str, now: datetime | None = None) -> None:
        self.run_id = run_id
        self.case_id = case_id
        self.write_key = write_key
        self.now = now or datetime.now(UTC)
        self.saved: dict[str, Any] = {}
        # Short, so ids stay far below field limits (messageId: 100 chars) yet unique per case.
        self.case_tag = hashlib.sha256(case_id.encode()).hexdigest()[:10]

    def value(self, name: str, arg: str | None) -> Any:
        if name == "run":
            return self.run_id
        if name == "id":
            return f"cf-{self.run_id}-{self.case_tag}-{arg or 'x'}"
        if name == "now":
            seconds = float(arg) if arg else 0.0
            return iso(self.now + timedelta(seconds=seconds))
        if name == "saved":
            if arg not in self.saved:
                raise KeyError(f"no saved value {arg!r} (an earlier step must save it)")
            return self.saved[arg]
        if name == "write_key":
            return self.write_key
        if name == "fill":
            return "x" * int(arg or 0)
        raise KeyError(f"unknown placeholder {name!r}")

    def render(self, data: Any) -> Any:
        if isinstance(data, str):
            whole = PLACEHOLDER.fullmatch(data.strip()) if data.startswith("{{") else None
            if whole:
                return self.value(whole.group(1), whole.group(2))
            return PLACEHOLDER.sub(lambda m: str(self.value(m.group(1), m.group(2))), data)
        if isinstance(data, list):
            return [self.render(item) for item in data]
        if isinstance(data, dict):
            return {self.render(key): self.render(value) for key, value in data.items()}
        return data
