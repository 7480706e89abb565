"""The storage contracts: `Storage` for events, `ProfileStore` for user profiles.

A backend module's docstring starts with its URL form. `write` returns only once the data
is durable (committed, or acknowledged by the stream) and raises StorageUnavailable for
anything a retry may fix; the endpoint turns that into 503 + Retry-After.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

import orjson

from collector import jsonio


class StoredEvent(NamedTuple):
    """A valid, enriched event. A tuple in the column order of the SQL backends, so it is their row."""

    workspace_id: str
    source_id: str
    message_id: str
    type: str
    event: str | None
    user_id: str | None
    anonymous_id: str | None
    received_at: str
    timestamp: str
    body: bytes  # the enriched message, JSON


class QuarantinedEvent(NamedTuple):
    workspace_id: str
    source_id: str
    message_id: str | None
    received_at: str
    body: bytes  # the message as sent (minus its write key), JSON
    errors: bytes  # JSON list of {pointer, keyword, message}


class WriteResult(NamedTuple):
    stored: int  # new events
    duplicates: int  # events whose (workspace, messageId) was already stored
    quarantined: int = 0
    # messageIds that were new (every backend here reports them; None: unknown, treated as all new)
    inserted_ids: frozenset[str] | None = None


class Receipt(NamedTuple):
    """What became of one message that was not stored (stored and quarantined messages are their own
    receipts: their rows). `detail` is JSON: {"policy"} for suppressed and dropped, {"errors",
    "message"} for rejected (the message as the debugger shows it, null when too large), {} else."""

    workspace_id: str
    source_id: str
    message_id: str | None
    status: str  # duplicate | rejected | suppressed | dropped
    at: str  # ISO-8601, UTC ms Z
    detail: bytes


RECEIPT_STATUSES = ("stored", "duplicate", "rejected", "quarantined", "suppressed", "dropped")


def arrival(
    status: str, workspace_id: str, source_id: str, message_id: str | None, at: str, detail: dict[str, Any]
) -> dict[str, Any]:
    """One message's outcome as receipts and the debugger's history show it."""
    return {
        "status": status,
        "workspaceId": workspace_id,
        "sourceId": source_id,
        "messageId": message_id,
        "at": at,
    } | detail


def arrival_detail(body: bytes | str | None, detail: bytes | str | None) -> dict[str, Any]:
    """A recent arrival's message and errors: a stored or quarantined row's body (and errors, in
    `detail`), or a receipt's detail alone."""
    if body is None:
        return orjson.loads(detail) if detail is not None else {}
    found: dict[str, Any] = {"message": jsonio.loads(body)}
    if detail is not None:
        found["errors"] = orjson.loads(detail)
    return found


@dataclass(frozen=True)
class EventQuery:
    workspace_id: str | None = None
    source_id: str | None = None
    message_id: str | None = None
    type: str | None = None
    event: str | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    since: str | None = None  # receivedAt >= since (ISO-8601, compared as text in UTC ms Z form)
    until: str | None = None  # receivedAt < until
    after: int = 0  # cursor: position of the last item already seen
    limit: int = 100

    def where(self, placeholder: str, text: Any = str) -> tuple[str, list[Any]]:
        """The SQL condition (and its parameters) that SQL backends share; `text` adapts id values."""
        clauses: list[str] = [f"position > {placeholder}"]
        params: list[Any] = [self.after]
        for column, value in (
            ("workspace_id", self.workspace_id),
            ("source_id", self.source_id),
            ("message_id", self.message_id),
            ("type", self.type),
            ("event", self.event),
            ("user_id", self.user_id),
            ("anonymous_id", self.anonymous_id),
        ):
            if value is not None:
                clauses.append(f"{column} = {placeholder}")
                params.append(text(value))
        for column, operator, bound in (("received_at", ">=", self.since), ("received_at", "<", self.until)):
            if bound is not None:
                clauses.append(f"{column} {operator} {placeholder}")
                params.append(bound)
        return " AND ".join(clauses), params


@dataclass(frozen=True)
class EventPage:
    items: list[dict[str, Any]]  # {"position", "workspaceId", "sourceId", "event": {...}}
    next_after: int | None = None


@dataclass
class UserPage:
    users: list[dict[str, Any]]
    next_after: int | None = None
    previous_before: int | None = None
    positions: list[int] = field(default_factory=list)


@runtime_checkable
class Storage(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """True when a small durable write succeeds now (probed in the background for /ready)."""
        ...

    async def write(self, events: list[StoredEvent], quarantined: list[QuarantinedEvent] | None = None) -> WriteResult:
        """Return when durable; duplicates are skipped and counted, not errors."""
        ...

    async def read_events(self, query: EventQuery) -> EventPage: ...

    async def read_quarantine(
        self, workspace_id: str | None, after: int, limit: int, message_id: str | None = None
    ) -> EventPage: ...


@runtime_checkable
class ReceiptStore(Protocol):
    """Receipts of the messages that were not stored, kept for `receiptRetention` (every backend)."""

    async def write_receipts(self, receipts: list[Receipt]) -> None: ...

    async def read_receipts(self, message_id: str, workspace_id: str | None, limit: int) -> list[dict[str, Any]]:
        """The first `limit` receipts kept for that messageId (see `arrival`), oldest first."""
        ...

    async def recent_arrivals(self, source_id: str | None, limit: int) -> list[dict[str, Any]]:
        """The last `limit` outcomes of any kind: stored, quarantined and receipts, newest first, each
        with the message as stored ("message") where one is kept."""
        ...

    async def expire_receipts(self, before: str) -> int:
        """Deletes receipts older than `before` (ISO-8601, UTC ms Z); how many."""
        ...


@runtime_checkable
class ProfileStore(Protocol):
    """User profiles of the Attuitive-compatible API; every method is scoped to one workspace."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> bool: ...

    async def create_user(
        self, workspace_id: str, user_id: str, identifiers: dict[str, Any], traits: dict[str, Any], now: str
    ) -> dict[str, Any]: ...

    async def get_user(self, workspace_id: str, user_id: str) -> dict[str, Any] | None: ...

    async def merge_user(
        self,
        workspace_id: str,
        user_id: str,
        identifiers: dict[str, Any] | None,
        traits: dict[str, Any] | None,
        now: str,
    ) -> dict[str, Any] | None:
        """Top-level append & merge, atomically; a key sent as null is removed. None if absent."""
        ...

    async def delete_user(self, workspace_id: str, user_id: str) -> bool: ...

    async def search_users(
        self,
        workspace_id: str,
        filters: list[tuple[list[str], str]],
        limit: int,
        after: int | None,
        before: int | None,
    ) -> UserPage:
        """Users whose identifiers match every (path, value) filter, in creation order."""
        ...


IdentityKind = Literal["userId", "anonymousId"]
IDENTITY_COLUMNS: dict[str, str] = {"userId": "user_id", "anonymousId": "anonymous_id"}


class Erased(NamedTuple):
    events: int
    quarantined: int
    receipts: int = 0  # rejected messages keep their body in their receipt


class PrivacyRecord(NamedTuple):
    """One suppression or deletion, also its audit entry. The identity is kept only as its keyed
    digest (pipeline/privacy.identity_digest), never as sent; `details` holds counts, not data."""

    id: str
    workspace_id: str
    action: str  # "suppression" | "deletion"
    identity_kind: IdentityKind
    identity_digest: str
    actor: str  # which admin token asked (a digest prefix)
    created_at: str
    updated_at: str
    status: str  # suppression: active | removed; deletion: running | done | failed
    details: dict[str, Any]


@runtime_checkable
class Erasable(Protocol):
    """An event store that can delete what it stored (SQLite, PostgreSQL; a JetStream stream cannot
    find a person's messages without reading all of it)."""

    async def erase_identity(self, workspace_id: str, kind: IdentityKind, value: str) -> Erased:
        """Every stored event, quarantined message and receipt of that identity in the workspace,
        deleted in small transactions so ingestion goes on between them."""
        ...

    async def erase_expired(self, workspace_id: str, source_id: str, before: str) -> Erased:
        """Events, quarantine and receipts of the source received before `before` (ISO-8601, UTC ms Z)."""
        ...


@runtime_checkable
class PrivacyLedger(Protocol):
    """Where suppressions, deletions and their audit live: the profile store (always SQL)."""

    async def save_privacy_record(self, record: PrivacyRecord) -> None:
        """Insert, or replace the record with the same id."""
        ...

    async def privacy_records(self, workspace_id: str | None = None, action: str | None = None) -> list[PrivacyRecord]:
        """In creation order."""
        ...


def merge_top_level(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Sent keys override, unsent keys persist, a key sent as null is removed. Nested objects
    are values like any other: a sent object replaces the stored one whole."""
    merged = dict(current)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def user_object(
    user_id: str,
    workspace_id: str,
    identifiers: dict[str, Any],
    traits: dict[str, Any],
    created_at: str,
    updated_at: str | None,
) -> dict[str, Any]:
    return {
        "id": user_id,
        "workspaceId": workspace_id,
        "identifiers": identifiers,
        "traits": traits,
        "createdAt": created_at,
        "updatedAt": updated_at,
    }
