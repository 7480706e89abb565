"""Delivery receipts: what became of each message, for GET /v1/receipts/{messageId} and the
debugger's history.

A stored or quarantined message is its own receipt: its row in storage. Every other outcome gets
a receipt row of its own, written after the events' write: `duplicate` (that (workspace,
messageId) was stored before), `rejected` (answered 400; with its errors and, up to
MESSAGE_BYTES, the message as the debugger shows it), `suppressed` (a suppressed identity) and
`dropped` (a privacy policy: consent_refused, consent_missing, gpc_dropped, dnt_dropped). A
request whose messages were all stored writes nothing more, so the hot path pays one check.

Receipts are best effort: a failed receipt write is logged and counted (receipts_failed), and
the answer stays what the events' write made it. They are kept for receiptRetention and deleted
every retentionIntervalSeconds once older (on NATS the receipts stream's max_age expires them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import Any

import orjson

from collector import jsonio
from collector.pipeline.enrichment import format_micros, now_micros
from collector.pipeline.records import Rejected
from collector.settings import Settings, Source
from collector.storage.base import EventQuery, Receipt, ReceiptStore, Storage, StoredEvent, WriteResult, arrival

MESSAGE_BYTES = 65536  # a rejected message larger than this is kept without its body
LOOKUP_LIMIT = 1000  # of each kind (stored, quarantined, receipt rows) returned for one messageId
NO_DETAIL = b"{}"

log = logging.getLogger("collector")


def receipts_for(
    source: Source,
    messages: list[Any],
    events: list[StoredEvent],
    result: WriteResult,
    refused: list[Rejected],
    dropped: dict[int, str],
    at: str,
) -> list[Receipt]:
    """The receipt rows of one request: its messages that were not stored (none, usually)."""
    if not (result.duplicates or refused or dropped):
        return []
    workspace_id, source_id = source.workspace_id, source.id
    receipts = []
    inserted = result.inserted_ids
    if result.duplicates and inserted is not None:
        first = set()  # the first copy of a messageId sent twice in one request is the one stored
        for event in events:
            message_id = event.message_id
            if message_id in inserted and message_id not in first:
                first.add(message_id)
            else:
                receipts.append(Receipt(workspace_id, source_id, message_id, "duplicate", at, NO_DETAIL))
    for index, reason in dropped.items():
        status = "suppressed" if reason == "suppressed" else "dropped"
        detail = orjson.dumps({"policy": reason})
        receipts.append(Receipt(workspace_id, source_id, message_id_of(messages[index]), status, at, detail))
    for _index, message, problems in refused:
        detail = rejection(message, problems)
        receipts.append(Receipt(workspace_id, source_id, message_id_of(message), "rejected", at, detail))
    return receipts


def message_id_of(message: Any) -> str | None:
    found = message.get("messageId") if isinstance(message, dict) else None
    return found if isinstance(found, str) else None


def rejection(message: Any, problems: list[Any]) -> bytes:
    """{"errors", "message"}: the message as sent, minus its write key, or null when too large."""
    if isinstance(message, dict) and "writeKey" in message:
        message = {key: value for key, value in message.items() if key != "writeKey"}
    body = jsonio.dumps_kept(message)
    kept = orjson.Fragment(body) if len(body) <= MESSAGE_BYTES else None
    return orjson.dumps({"errors": problems, "message": kept})


class Receipts:
    """Writes, finds and expires receipts (storage: a ReceiptStore, as every backend here is)."""

    def __init__(self, settings: Settings, storage: Storage, counters: Counter[Any]) -> None:
        self.settings = settings
        self.storage = storage
        self.store = storage if isinstance(storage, ReceiptStore) else None
        self.counters = counters
        self._expiry: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.store is not None and self.settings.receipt_retention is not None:
            self._expiry = asyncio.create_task(self._expire_forever(), name="receipts-expiry")

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._expiry
            self._expiry = None

    async def record(self, receipts: list[Receipt]) -> None:
        if self.store is None:
            return
        try:
            await self.store.write_receipts(receipts)
        except Exception:
            log.warning("writing %d receipts failed", len(receipts), exc_info=True)
            self.counters[("receipts_failed", receipts[0].source_id)] += len(receipts)

    def cutoff(self) -> str | None:
        """Receipts from before this moment are expired (None: kept forever)."""
        seconds = self.settings.receipt_retention
        if seconds is None:
            return None
        return format_micros(now_micros() - seconds * 1_000_000)

    async def lookup(self, message_id: str, workspace_id: str | None) -> list[dict[str, Any]]:
        """Every outcome recorded for that messageId: its stored event, quarantined copies and
        receipts (those still within receiptRetention), oldest first."""
        query = EventQuery(message_id=message_id, workspace_id=workspace_id, limit=LOOKUP_LIMIT)
        found = [
            arrival("stored", item["workspaceId"], item["sourceId"], message_id, item["event"].get("receivedAt"), {})
            for item in (await self.storage.read_events(query)).items
        ]
        quarantined = await self.storage.read_quarantine(workspace_id, 0, LOOKUP_LIMIT, message_id)
        found += [
            arrival("quarantined", item["workspaceId"], item["sourceId"], message_id, item["receivedAt"], {})
            | {"errors": item["errors"]}
            for item in quarantined.items
        ]
        if self.store is not None:
            cutoff = self.cutoff()
            for receipt in await self.store.read_receipts(message_id, workspace_id, LOOKUP_LIMIT):
                if cutoff is None or receipt["at"] >= cutoff:
                    receipt.pop("message", None)  # the receipt says what happened; the debugger shows bodies
                    found.append(receipt)
        found.sort(key=lambda receipt: receipt["at"] or "")
        return found

    async def _expire_forever(self) -> None:
        assert self.store is not None
        while True:
            cutoff = self.cutoff()
            if cutoff is not None:
                try:
                    expired = await self.store.expire_receipts(cutoff)
                    if expired:
                        self.counters[("receipts_expired", "")] += expired
                except Exception:
                    log.warning("expiring receipts failed", exc_info=True)
            await asyncio.sleep(self.settings.retention_interval_seconds)
