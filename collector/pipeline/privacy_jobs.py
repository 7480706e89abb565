"""Suppressions, deletions and retention: the privacy work that happens beside ingestion.

    suppress  → a ledger record (the identity as its keyed digest), at once in this process's
                guard, in the other workers' within REFRESH_SECONDS
    delete    → a ledger record `running`, then the identity's events and quarantined messages
                erased in small transactions (ingestion goes on), its profile deleted, a second
                pass once every worker knows a suppression made with it; `done` with the counts
    retention → every `retentionIntervalSeconds`, each source's expired events and quarantine

The ledger (suppressions, deletions, their audit) lives in the profile store, which is always SQL.
Event erasure needs a store that can find an identity's rows (SQLite, PostgreSQL): on NATS a
deletion is refused, never claimed, and retention is the stream's max_age.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import Any

from collector.errors import CollectorError, ConfigError
from collector.ids import is_user_id
from collector.pipeline.enrichment import format_micros, now_micros
from collector.pipeline.privacy import Guard
from collector.settings import Settings, new_id
from collector.storage.base import Erasable, IdentityKind, PrivacyLedger, PrivacyRecord, ProfileStore, Storage

REFRESH_SECONDS = 2.0  # how stale another worker's view of the suppressions may be
log = logging.getLogger("collector.privacy")


class DeletionUnsupported(CollectorError):
    status = 501
    code = "deletion_unsupported"
    message = "This event store cannot delete by identity"
    more_info = (
        "Events are in a NATS JetStream stream, which deletes messages by sequence only; nothing was deleted. "
        "Keep events in SQLite or PostgreSQL to delete a person's events, or bound them with the stream's max_age."
    )


class LedgerUnavailable(CollectorError):
    status = 501
    code = "privacy_ledger_unavailable"
    message = "No store for suppressions and deletions"
    more_info = "Suppressions and deletions are kept in the profile store (SQLite or PostgreSQL)."


def now_text() -> str:
    return format_micros(now_micros())


class PrivacyService:
    def __init__(
        self, settings: Settings, guard: Guard, storage: Storage, profiles: ProfileStore, counters: Counter[Any]
    ) -> None:
        self.settings = settings
        self.guard = guard
        self.storage = storage
        self.profiles = profiles
        self.counters = counters
        self.ledger = profiles if isinstance(profiles, PrivacyLedger) else None
        self.erasable = storage if isinstance(storage, Erasable) else None
        self.retained = [source for source in settings.write_keys.values() if source.privacy.retention_seconds]
        if self.retained and self.erasable is None:
            raise ConfigError(
                "privacy.retention needs event storage that can delete (sqlite, postgresql); on NATS set "
                "max_age= on the storage URL: the stream keeps one age for every workspace"
            )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        if self.ledger is not None:
            self.guard.load(await self.ledger.privacy_records(action="suppression"))
            self._loops.append(asyncio.create_task(self._refresh_forever(), name="privacy-refresh"))
        if self.retained:
            self._loops.append(asyncio.create_task(self._retention_forever(), name="privacy-retention"))

    async def stop(self) -> None:
        for task in [*self._loops, *self._tasks]:
            task.cancel()
        for task in [*self._loops, *self._tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loops.clear()

    # --- suppressions ----------------------------------------------------------------------------

    def _require_ledger(self) -> PrivacyLedger:
        if self.ledger is None:
            raise LedgerUnavailable()
        return self.ledger

    async def suppress(self, workspace_id: str, kind: IdentityKind, value: str, actor: str) -> PrivacyRecord:
        ledger = self._require_ledger()
        digest = self.guard.digest(workspace_id, kind, value)
        at = now_text()
        record = PrivacyRecord(new_id("sup_"), workspace_id, "suppression", kind, digest, actor, at, at, "active", {})
        await ledger.save_privacy_record(record)
        self.guard.suppress(workspace_id, digest)
        return record

    async def records(self, workspace_id: str | None, action: str | None) -> list[PrivacyRecord]:
        return await self._require_ledger().privacy_records(workspace_id, action)

    async def record(self, record_id: str, action: str) -> PrivacyRecord | None:
        for record in await self.records(None, action):
            if record.id == record_id:
                return record
        return None

    async def unsuppress(self, record_id: str, actor: str) -> PrivacyRecord | None:
        record = await self.record(record_id, "suppression")
        if record is None or record.status != "active":
            return record
        removed = record._replace(
            updated_at=now_text(), status="removed", details={**record.details, "removedBy": actor}
        )
        await self._require_ledger().save_privacy_record(removed)
        self.guard.load(await self.records(None, "suppression"))
        return removed

    # --- deletions --------------------------------------------------------------------------------

    async def start_deletion(
        self, workspace_id: str, kind: IdentityKind, value: str, suppress: bool, actor: str
    ) -> PrivacyRecord:
        ledger = self._require_ledger()
        if self.erasable is None:
            raise DeletionUnsupported()
        suppression = await self.suppress(workspace_id, kind, value, actor) if suppress else None
        at = now_text()
        details: dict[str, Any] = {"suppressionId": suppression.id if suppression else None}
        digest = self.guard.digest(workspace_id, kind, value)
        record = PrivacyRecord(
            new_id("del_"), workspace_id, "deletion", kind, digest, actor, at, at, "running", details
        )
        await ledger.save_privacy_record(record)
        task = asyncio.create_task(self._delete(record, value), name=f"deletion-{record.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return record

    async def _delete(self, record: PrivacyRecord, value: str) -> None:
        """Two passes: the second catches what was in flight when the first ran (and, with a
        suppression, what other workers stored before their next refresh)."""
        assert self.erasable is not None and self.ledger is not None
        began = time.monotonic()
        workspace_id, kind = record.workspace_id, record.identity_kind
        try:
            first = await self.erasable.erase_identity(workspace_id, kind, value)
            profiles = 0
            if kind == "userId" and is_user_id(value) and await self.profiles.delete_user(workspace_id, value):
                profiles = 1
            await asyncio.sleep(REFRESH_SECONDS + 0.5)
            second = await self.erasable.erase_identity(workspace_id, kind, value)
            counts = {
                "events": first.events + second.events,
                "quarantined": first.quarantined + second.quarantined,
                "receipts": first.receipts + second.receipts,
                "profiles": profiles,
                "seconds": round(time.monotonic() - began, 3),
            }
            done = record._replace(updated_at=now_text(), status="done", details={**record.details, **counts})
        except asyncio.CancelledError:
            done = record._replace(
                updated_at=now_text(), status="failed", details={**record.details, "error": "stopped"}
            )
            with contextlib.suppress(Exception):
                await self.ledger.save_privacy_record(done)
            raise
        except Exception as exc:
            log.exception("deletion %s failed", record.id)
            done = record._replace(
                updated_at=now_text(), status="failed", details={**record.details, "error": type(exc).__name__}
            )
        await self.ledger.save_privacy_record(done)

    # --- background ---------------------------------------------------------------------------------

    async def _refresh_forever(self) -> None:
        assert self.ledger is not None
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                self.guard.load(await self.ledger.privacy_records(action="suppression"))
            except Exception:  # storage down: keep what is known, try again
                log.warning("cannot refresh suppressions", exc_info=True)

    async def _retention_forever(self) -> None:
        assert self.erasable is not None
        while True:
            await self.expire_once()
            await asyncio.sleep(self.settings.retention_interval_seconds)

    async def expire_once(self) -> None:
        assert self.erasable is not None
        for source in self.retained:
            seconds = source.privacy.retention_seconds or 0
            cutoff = format_micros(now_micros() - seconds * 1_000_000)
            try:
                erased = await self.erasable.erase_expired(source.workspace_id, source.id, cutoff)
            except Exception:
                log.warning("retention for source %s failed", source.id, exc_info=True)
                continue
            if sum(erased):
                self.counters[("privacy:expired", source.id)] += sum(erased)
