"""The records that travel between the pipeline's stages (and to its observers)."""

from __future__ import annotations

from typing import Any, NamedTuple, NotRequired, TypedDict

from collector.settings import Source
from collector.storage.base import StoredEvent, WriteResult


class Problem(TypedDict):
    """What is wrong with a message: a JSON pointer into it, the rule (a JSON Schema keyword, a
    repair or a limit) and a sentence."""

    pointer: str
    keyword: str
    message: str
    violation: NotRequired[str]  # a tracking plan's violation type (plans.check)


class Rejected(NamedTuple):
    """A message that is not stored as sent: quarantined, or answered 400."""

    position: int  # index in the request
    message: Any  # as sent (not always an object)
    problems: list[Problem]


Indexed = list[tuple[int, dict[str, Any]]]  # (index in the request, message): indices kept through every stage
Flags = dict[int, list[Problem]]  # index in the request → quality problems and repairs


class IntakeReport(NamedTuple):
    """What one event request brought, once storage has answered (for metrics and the live debugger)."""

    source: Source
    events: list[StoredEvent]  # valid, enriched, handed to storage
    quarantined: list[Rejected]  # kept aside
    rejected: list[Rejected]  # answered 400
    result: WriteResult
    write_seconds: float  # from handing the events to storage until they were durable
    quality: dict[str, int]  # quality rule → stored messages that broke it (recorded, not dropped)
