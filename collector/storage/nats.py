"""nats://host:4222[,host2:4222,…]?stream=EVENTS&replicas=3&duplicate_window=120&max_age=0&inflight=1024&timeout=5&ping_interval=2&max_outstanding_pings=2&failover=3

Events in a NATS JetStream stream (profiles need their own URL: --profiles postgresql://…).
Each event is published to `<prefix>.<workspace>.<type>` (prefix `events` by default) with
`Nats-Msg-Id: <workspace>:<messageId>`, so the stream's duplicate window drops re-sends from
any node; a request is answered 200 only once every one of its events is acknowledged by the
stream (with R3, by a quorum of the cluster). All events of a request are in flight at once.
Invalid messages kept aside go to the stream `<stream>_QUARANTINE` (`<prefix>_quarantine.<ws>`).
Receipts of messages not stored go to `<stream>_RECEIPTS` (`<prefix>_receipts.<ws>.<digest of the
messageId>`), whose max_age is receiptRetention: JetStream expires them.

Query options: `stream` (EVENTS), `prefix` (events), `replicas` (1; 3 for a cluster),
`duplicate_window` seconds (120; keep it longer than your clients retry), `max_age` seconds
kept (0 = forever), `max_bytes` (-1 = no limit), `inflight` publishes awaiting an ack per
process (1024), `timeout` seconds a request may wait for its acks, publishing again what was
not acknowledged (through reconnects and leader elections) before answering 503 (5),
`ping_interval` seconds between the client's pings and `max_outstanding_pings` unanswered
before the link counts as dead and the client reconnects to another server of the list (2 and
2: a dead link is noticed in 4–6 s; nats-py's own default is 120 s), `failover` seconds that
publishes and probes may fail (timeouts, no responders) while the link looks fine before the
client leaves its server for another one of the list (3; 0 = never): a node cut off from its
cluster's quorum still answers pings.
`ping()` (the /ready probe) publishes to the probe stream `<stream>_PROBE` (`<prefix>_probe.>`,
same replicas, one message kept) and awaits its ack, so it is true only when a write reaches a
quorum now; it is false too while this process's event publishes keep failing.
Streams are created on open when missing; an existing stream is used as it is.
Read-back scans the stream through a short-lived consumer (slow; for tests and debugging).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import math
import os
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client, Server
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.client import NO_RESPONDERS_STATUS

from collector import jsonio
from collector.errors import ConfigError, StorageUnavailable
from collector.storage.base import (
    EventPage,
    EventQuery,
    QuarantinedEvent,
    Receipt,
    StoredEvent,
    WriteResult,
    arrival,
)

OPTIONS: dict[str, Any] = {
    "stream": "EVENTS",
    "prefix": "events",
    "replicas": 1,
    "duplicate_window": 120.0,
    "max_age": 0.0,
    "max_bytes": -1,
    "inflight": 1024,
    "timeout": 5.0,
    "ping_interval": 2.0,
    "max_outstanding_pings": 2,
    "failover": 3.0,
}
SOURCE_HEADER = "Collector-Source"
SCAN_BATCH = 500
RETRY_PAUSE = 0.1  # seconds between publishing again what was not acknowledged
PROBE_TIMEOUT = 1.0  # the readiness loop counts a slower probe as a failure anyway
TICK = 0.05  # seconds between looks for rounds of publishes past their time
RECENT = 2.0  # seconds a failed event publish keeps ping() false (unless one succeeds meanwhile)
_SUBJECT_TOKEN = re.compile(r"[^A-Za-z0-9_\-]")
_HEADER_SAFE = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,199}")  # printable ASCII, no CR/LF

log = logging.getLogger("collector")


def parse_url(url: str) -> tuple[list[str], dict[str, Any]]:
    """(server URLs, options) of nats://a:4222,b:4222?replicas=3."""
    parts = urlsplit(url)
    hosts = [host for host in parts.netloc.split(",") if host]
    if not hosts:
        raise ConfigError(f"no NATS server in storage URL {url!r}")
    options = dict(OPTIONS)
    for key, value in parse_qsl(parts.query):
        if key not in OPTIONS:
            raise ConfigError(f"unknown NATS storage option {key!r}; known: {', '.join(sorted(OPTIONS))}")
        try:
            options[key] = type(OPTIONS[key])(value)
        except ValueError:
            raise ConfigError(f"NATS storage option {key} must be a number, got {value!r}") from None
    auth = ""
    if "@" in hosts[0]:
        auth, _, hosts[0] = hosts[0].rpartition("@")
        auth += "@"
    return [f"nats://{auth}{host}" for host in hosts], options


def subject_token(value: str) -> str:
    return _SUBJECT_TOKEN.sub("_", value) or "_"


def dedupe_id(workspace_id: str, message_id: str) -> str:
    """The Nats-Msg-Id: `<workspace>:<messageId>`, hashed when the id is not a safe header value."""
    candidate = f"{workspace_id}:{message_id}"
    if _HEADER_SAFE.fullmatch(candidate):  # `$` would admit a trailing newline
        return candidate
    return f"{workspace_id}:sha256:{hashlib.sha256(message_id.encode('utf-8', 'surrogatepass')).hexdigest()}"


STARTUP_WAIT_SECONDS = 30


class NATSStorage:
    def __init__(self, url: str, receipt_retention: int | None = None) -> None:
        self.servers, options = parse_url(url)
        self.stream: str = options["stream"]
        self.quarantine_stream = f"{self.stream}_QUARANTINE"
        self.receipts_stream = f"{self.stream}_RECEIPTS"
        self.receipt_retention = receipt_retention  # seconds; None: kept like the events
        self.prefix: str = options["prefix"]
        self.replicas: int = options["replicas"]
        self.duplicate_window: float = options["duplicate_window"]
        self.max_age: float = options["max_age"]
        self.max_bytes: int = options["max_bytes"]
        self.inflight: int = options["inflight"]
        self.timeout: float = options["timeout"]
        self.ping_interval: float = options["ping_interval"]
        self.max_outstanding_pings: int = options["max_outstanding_pings"]
        self.failover: float = options["failover"]
        self.probe_stream = f"{self.stream}_PROBE"
        self.probe_subject = f"{self.prefix}_probe.ping"
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.failovers = 0  # reconnects forced because writes failed on a link that looked fine
        self._failing_since: float | None = None  # publishes and probes: none succeeded since
        self._events_failing_since: float | None = None
        self._events_failed_at = 0.0
        self._forced_at = -math.inf
        self._current = ""  # netloc of the server we are connected to
        self._left: dict[str, float] = {}  # netloc → when we left it (or failed to connect to it)
        self._trying = ""  # the server the reconnect handler picked last
        self._relinked: asyncio.Future[None]  # done when the client has reconnected (a new one then)
        # Event publishes await their PubAck on one inbox of ours, `<_acks_prefix><n>`, rather than
        # through js.publish_async: one future per round of a write instead of one per message.
        self._acks_prefix = ""
        self._tokens = itertools.count()
        self._awaiting: dict[str, tuple[_Round, int]] = {}  # reply subject → its round and message
        self._rounds: dict[_Round, None] = {}  # publishing or awaiting acks, in the order they began
        self._ticker: asyncio.TimerHandle | None = None
        # `inflight` publishes awaiting an ack, per process: a counter (asyncio.Semaphore costs a
        # tenth of a batch's publishing), with an event for the writes that wait for a free slot.
        self._free = self.inflight
        self._starved = 0
        self._freed: asyncio.Event

    def __repr__(self) -> str:
        return f"NATSStorage({self.servers!r}, stream={self.stream!r})"

    # --- life cycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self.nc is not None:
            return
        try:
            nc = Client()
            self._relinked = asyncio.get_running_loop().create_future()

            async def reconnected() -> None:
                self._current, self._trying = _netloc(nc), ""
                self._relinked.set_result(None)
                self._relinked = asyncio.get_running_loop().create_future()
                log.warning("NATS reconnected to %s", self._current)

            # nats-py types these as int but only sleeps on them: fractions of a second work.
            seconds: dict[str, Any] = {"reconnect_time_wait": 0.25, "ping_interval": self.ping_interval}
            await nc.connect(
                servers=self.servers,
                name="collector",
                connect_timeout=2,
                allow_reconnect=True,
                max_reconnect_attempts=-1,  # a node restart or fail-over must never end the connection
                **seconds,
                max_outstanding_pings=self.max_outstanding_pings,
                reconnect_to_server_handler=self._next_server,
                reconnected_cb=reconnected,
            )
            self._current = _netloc(nc)
            self._freed = asyncio.Event()
            self._acks_prefix = f"{nc.new_inbox()}."
            await nc.subscribe(f"{self._acks_prefix}*", cb=self._on_ack)  # kept across reconnects
            js = nc.jetstream(timeout=self.timeout, publish_async_max_pending=self.inflight)
            # A cluster that is still forming (no JetStream meta leader yet) answers with errors
            # or timeouts for a few seconds: keep trying for a while before giving up on start.
            deadline = time.monotonic() + STARTUP_WAIT_SECONDS
            while True:
                try:
                    await self._ensure_stream(js, self.stream, f"{self.prefix}.>", self.duplicate_window)
                    await self._ensure_stream(js, self.quarantine_stream, f"{self.prefix}_quarantine.>", 0)
                    await self._ensure_stream(
                        js, self.receipts_stream, f"{self.prefix}_receipts.>", 0, max_age=self.receipt_retention
                    )
                    await self._ensure_stream(js, self.probe_stream, f"{self.prefix}_probe.>", 0, per_subject=1)
                    break
                except (TimeoutError, nats.errors.Error):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
        except Exception as exc:
            if "nc" in locals():
                await nc.close()
            raise StorageUnavailable(f"Cannot open {self!r}: {type(exc).__name__}: {exc}") from exc
        self.nc, self.js = nc, js

    async def _ensure_stream(
        self,
        js: JetStreamContext,
        name: str,
        subject: str,
        duplicate_window: float,
        per_subject: int | None = None,
        max_age: float | None = None,
    ) -> None:
        try:
            await js.stream_info(name)
            return  # an operator may have tuned it: use it as it is
        except nats.js.errors.NotFoundError:
            pass
        config = api.StreamConfig(
            name=name,
            subjects=[subject],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=self.replicas,
            max_age=max_age or self.max_age or None,
            max_bytes=self.max_bytes,
            discard=api.DiscardPolicy.OLD,
            max_msgs_per_subject=per_subject or -1,
        )
        if duplicate_window:
            config.duplicate_window = duplicate_window
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.stream_info(name)  # another node created it first

    async def close(self) -> None:
        if self.nc is None:
            return
        nc, self.nc, self.js = self.nc, None, None
        await nc.close()

    async def ping(self) -> bool:
        """A durable write now: a probe message acknowledged by a quorum of the probe stream,
        and no run of failed event publishes lately (the events stream has a leader of its own)."""
        if self.nc is None or self.js is None or not self.nc.is_connected:
            return False
        try:
            await self.js.publish(self.probe_subject, b"", timeout=PROBE_TIMEOUT, stream=self.probe_stream)
        except Exception:
            await self._failed()
            return False
        self._failing_since = None
        now = time.monotonic()
        return self._events_failing_since is None or now - self._events_failed_at > RECENT

    # --- fail-over -------------------------------------------------------------------------------
    # A node cut off from its cluster's quorum keeps its client connections and answers pings, so
    # the client never reconnects by itself: writes time out, or find no responders. When they keep
    # failing for `failover` seconds, leave that server for another one of the list.

    async def _failed(self, events: bool = False) -> None:
        now = time.monotonic()
        if events:
            self._events_failed_at = now
            if self._events_failing_since is None:
                self._events_failing_since = now
        if self._failing_since is None:
            self._failing_since = now
        nc = self.nc
        if (
            self.failover > 0
            and nc is not None
            and nc.is_connected
            and now - self._failing_since >= self.failover
            and now - self._forced_at >= self.failover
        ):
            self._forced_at, self._failing_since = now, None
            self.failovers += 1
            log.warning("NATS writes via %s failed for %.1f s: reconnecting elsewhere", self._current, self.failover)
            await nc.force_reconnect()

    def _succeeded(self, events: bool = False) -> None:
        self._failing_since = None
        if events:
            self._events_failing_since = None

    def _next_server(self, servers: list[Server], info: dict[str, Any]) -> tuple[Server | None, float]:
        """nats-py asks this for each reconnect attempt: the servers we left (or could not reach)
        lately go last, the one we just left the very last; the rest in turn."""
        now = time.monotonic()
        for left in (self._current, self._trying):
            if left:
                self._left[left] = now
        self._current = ""
        chosen = min(servers, key=lambda server: self._left.get(server.uri.netloc, -math.inf))
        recently = now - self._left.get(chosen.uri.netloc, -math.inf) < 1.0
        self._trying = chosen.uri.netloc
        return chosen, 0.25 if recently else 0.0  # every server failed a moment ago: do not spin

    # --- events --------------------------------------------------------------------------------

    async def write(self, events: list[StoredEvent], quarantined: list[QuarantinedEvent] | None = None) -> WriteResult:
        if self.nc is None or self.js is None:
            raise StorageUnavailable("Storage is not open")
        messages = [self._event_message(event) for event in events]
        messages += [self._quarantine_message(bad) for bad in quarantined or ()]
        duplicates = await self._publish_all(messages)
        # JetStream says which publishes its duplicate window already held (Nats-Msg-Id).
        stored = [event.message_id for event, duplicate in zip(events, duplicates, strict=False) if not duplicate]
        return WriteResult(
            stored=len(stored),
            duplicates=len(events) - len(stored),
            quarantined=len(quarantined or ()),
            inserted_ids=frozenset(stored),
        )

    def _event_message(self, event: StoredEvent) -> tuple[str, bytes, dict[str, str]]:
        subject = f"{self.prefix}.{subject_token(event.workspace_id)}.{subject_token(event.type)}"
        headers = {"Nats-Msg-Id": dedupe_id(event.workspace_id, event.message_id), SOURCE_HEADER: event.source_id}
        return subject, event.body, headers

    def _quarantine_message(self, bad: QuarantinedEvent) -> tuple[str, bytes, dict[str, str]]:
        # A random id of its own, so that re-publishing it within this request stores it once.
        headers = {"Nats-Msg-Id": "q:" + os.urandom(12).hex()}
        return f"{self.prefix}_quarantine.{subject_token(bad.workspace_id)}", _quarantine_payload(bad), headers

    async def _publish_all(self, messages: list[tuple[str, bytes, dict[str, str]]]) -> list[bool]:
        """Whether each message was a duplicate, in order, once all are acked. Every publish goes out before
        any ack is awaited (one round trip per request, not per event). Those not acked are published again
        (the Nats-Msg-Id makes that safe) until `timeout`: a reconnect or a stream leader election then costs
        latency, not a 503."""
        assert self.nc is not None
        nc = self.nc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        duplicates: list[bool | None] = [None] * len(messages)
        waiting = list(range(len(messages)))
        problem: BaseException | None = None
        while True:
            if nc.is_connected:
                round_ = _Round(loop.create_future(), duplicates)
                try:
                    await self._publish_round(round_, messages, waiting, deadline)
                except Exception as exc:
                    problem = exc
                finally:
                    self._forget(round_)  # frees the in-flight slots of what was not acked
                problem = round_.problem or problem or (None if round_.left == 0 else TimeoutError())
                if round_.acked:
                    self._succeeded(events=True)
                else:
                    await self._failed(events=True)
                waiting = [index for index in waiting if duplicates[index] is None]
                if not waiting:
                    return [duplicate is True for duplicate in duplicates]
            else:
                problem = ConnectionError("not connected to NATS (reconnecting)")
            if loop.time() + RETRY_PAUSE >= deadline:
                raise _unavailable(problem or TimeoutError())
            await asyncio.sleep(RETRY_PAUSE)

    async def _publish_round(
        self, round_: _Round, messages: list[tuple[str, bytes, dict[str, str]]], waiting: list[int], deadline: float
    ) -> None:
        """Publish the messages `waiting` and await their acks (or errors), a reconnect, or a part of the budget."""
        assert self.nc is not None
        nc, loop = self.nc, asyncio.get_running_loop()
        round_.left = len(waiting)  # so that acks arriving while we still publish do not end the round
        # No timer of its own (one per round costs more than the rest of a single event's round):
        # _tick expires the round at `until`, as asyncio.timeout_at would, within TICK.
        async with asyncio.timeout(None) as limit:
            round_.limit, round_.until = limit, deadline
            self._watch(round_)
            try:
                for index in waiting:
                    subject, payload, headers = messages[index]
                    reply = f"{self._acks_prefix}{next(self._tokens)}"
                    if not self._free:
                        await self._slot()
                    self._free -= 1
                    self._awaiting[reply] = (round_, index)
                    round_.replies.append(reply)
                    await nc.publish(subject, payload, reply=reply, headers=headers)
                # An ack lost with a dying leader never comes: wait a part of the budget, then re-publish.
                round_.until = loop.time() + max(min(deadline - loop.time(), max(1.0, self.timeout / 4)), 0.01)
                # Acks on the old link of a reconnect never come either: publish again at once.
                relinked = self._relinked
                relinked.add_done_callback(round_.end)
                try:
                    await round_.done
                finally:
                    relinked.remove_done_callback(round_.end)
            finally:
                self._rounds.pop(round_, None)

    def _watch(self, round_: _Round) -> None:
        self._rounds[round_] = None
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().call_later(TICK, self._tick)

    def _tick(self) -> None:
        now = asyncio.get_running_loop().time()
        for round_ in [round_ for round_ in self._rounds if round_.until <= now]:
            del self._rounds[round_]
            round_.limit.reschedule(now)  # its write gets a TimeoutError out of the `async with`
        self._ticker = asyncio.get_running_loop().call_later(TICK, self._tick) if self._rounds else None

    async def _on_ack(self, msg: Msg) -> None:
        found = self._awaiting.pop(msg.subject, None)
        if found is None:
            return  # its round gave up on it (a re-publish may be acked instead)
        self._release()
        round_, index = found
        round_.settle(index, _pub_ack(msg))

    def _forget(self, round_: _Round) -> None:
        for reply in round_.replies:
            if self._awaiting.pop(reply, None) is not None:
                self._release()

    async def _slot(self) -> None:
        """Until a publish slot is free (the round's deadline bounds the wait)."""
        self._starved += 1
        try:
            while not self._free:
                self._freed.clear()
                await self._freed.wait()
        finally:
            self._starved -= 1

    def _release(self) -> None:
        self._free += 1
        if self._starved:
            self._freed.set()  # each waiter looks again: one takes the slot

    # --- receipts -------------------------------------------------------------------------------

    def _receipt_subject(self, workspace_id: str | None, message_id: str | None) -> str:
        workspace = subject_token(workspace_id) if workspace_id is not None else "*"
        digest = hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()[:32] if message_id else "_"
        return f"{self.prefix}_receipts.{workspace}.{digest}"

    async def write_receipts(self, receipts: list[Receipt]) -> None:
        if self.nc is None or self.js is None:
            raise StorageUnavailable("Storage is not open")
        messages = []
        for receipt in receipts:
            workspace_id, source_id, message_id, status, at, detail = receipt
            kept = arrival(status, workspace_id, source_id, message_id, at, {"detail": orjson.Fragment(detail)})
            payload = orjson.dumps(kept)
            # A random id of its own: re-publishing it within this call stores it once.
            headers = {"Nats-Msg-Id": "r:" + os.urandom(12).hex()}
            messages.append((self._receipt_subject(receipt.workspace_id, receipt.message_id), payload, headers))
        await self._publish_all(messages)

    async def read_receipts(self, message_id: str, workspace_id: str | None, limit: int) -> list[dict[str, Any]]:
        def render(msg: Msg) -> dict[str, Any] | None:
            kept = orjson.loads(msg.data)
            return _receipt(kept) if kept["messageId"] == message_id else None  # a digest may collide

        subject = self._receipt_subject(workspace_id, message_id)
        page = await self._scan(self.receipts_stream, subject, 0, limit, render)
        return [{key: value for key, value in item.items() if key != "position"} for item in page.items]

    async def recent_arrivals(self, source_id: str | None, limit: int) -> list[dict[str, Any]]:
        """From the last `limit` messages of each stream (of those, the source's when one is named)."""

        def stored(msg: Msg) -> dict[str, Any] | None:
            event, source = jsonio.loads(msg.data), (msg.headers or {}).get(SOURCE_HEADER)
            if source_id is not None and source != source_id:
                return None
            workspace, message_id = msg.subject.split(".")[-2], event.get("messageId")
            return arrival("stored", workspace, source or "", message_id, event.get("receivedAt", ""), {}) | {
                "message": event
            }

        def quarantined(msg: Msg) -> dict[str, Any] | None:
            kept = jsonio.loads(msg.data)
            if source_id is not None and kept["sourceId"] != source_id:
                return None
            workspace = msg.subject.split(".")[-1]
            found = arrival("quarantined", workspace, kept["sourceId"], kept["messageId"], kept["receivedAt"], {})
            return found | {"message": kept["event"], "errors": kept["errors"]}

        def receipt(msg: Msg) -> dict[str, Any] | None:
            kept = orjson.loads(msg.data)
            return _receipt(kept) if source_id is None or kept["sourceId"] == source_id else None

        found: list[dict[str, Any]] = []
        for stream, subject, render in (
            (self.stream, f"{self.prefix}.>", stored),
            (self.quarantine_stream, f"{self.prefix}_quarantine.>", quarantined),
            (self.receipts_stream, f"{self.prefix}_receipts.>", receipt),
        ):
            last = await self._last_sequence(stream)
            found += (await self._scan(stream, subject, max(last - limit, 0), limit, render)).items
        found.sort(key=lambda item: item["at"], reverse=True)
        return [{key: value for key, value in item.items() if key != "position"} for item in found[:limit]]

    async def expire_receipts(self, before: str) -> int:
        return 0  # the receipts stream's max_age expires them

    async def _last_sequence(self, stream: str) -> int:
        if self.js is None:
            raise StorageUnavailable("Storage is not open")
        try:
            info = await self.js.stream_info(stream)
        except Exception as exc:
            raise _unavailable(exc) from exc
        return int(info.state.last_seq)

    async def read_events(self, query: EventQuery) -> EventPage:
        subject = f"{self.prefix}.{subject_token(query.workspace_id) if query.workspace_id else '*'}"
        subject += f".{subject_token(query.type) if query.type else '*'}"

        def render(msg: Msg) -> dict[str, Any] | None:
            event = jsonio.loads(msg.data)
            source_id = (msg.headers or {}).get(SOURCE_HEADER)
            if not _matches(event, source_id, query):
                return None
            return {"workspaceId": msg.subject.split(".")[-2], "sourceId": source_id, "event": event}

        return await self._scan(self.stream, subject, query.after, query.limit, render)

    async def read_quarantine(
        self, workspace_id: str | None, after: int, limit: int, message_id: str | None = None
    ) -> EventPage:
        subject = f"{self.prefix}_quarantine.{subject_token(workspace_id) if workspace_id else '*'}"

        def render(msg: Msg) -> dict[str, Any] | None:
            kept = jsonio.loads(msg.data)
            if message_id is not None and kept["messageId"] != message_id:
                return None
            return {
                "workspaceId": msg.subject.split(".")[-1],
                "sourceId": kept["sourceId"],
                "messageId": kept["messageId"],
                "receivedAt": kept["receivedAt"],
                "errors": kept["errors"],
                "event": kept["event"],
            }

        return await self._scan(self.quarantine_stream, subject, after, limit, render)

    async def _scan(
        self, stream: str, subject: str, after: int, limit: int, render: Callable[[Msg], dict[str, Any] | None]
    ) -> EventPage:
        """Items after stream sequence `after`, through a short-lived consumer on the stream leader."""
        if self.js is None:
            raise StorageUnavailable("Storage is not open")
        js = self.js
        name = "readback-" + os.urandom(8).hex()
        config = api.ConsumerConfig(
            name=name,
            filter_subject=subject,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after + 1,
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=30.0,
            mem_storage=True,
            num_replicas=1,
        )
        items: list[dict[str, Any]] = []
        more = False
        try:
            await js.add_consumer(stream, config)
            sub = await js.pull_subscribe_bind(stream=stream, name=name)
            try:
                pending = (await sub.consumer_info()).num_pending
                while pending and not more:
                    for msg in await sub.fetch(min(SCAN_BATCH, pending), timeout=self.timeout):
                        pending = msg.metadata.num_pending
                        item = render(msg)
                        if item is None:
                            continue
                        if len(items) == limit:
                            more = True
                            break
                        items.append({"position": msg.metadata.sequence.stream} | item)
            finally:
                await sub.unsubscribe()
                await js.delete_consumer(stream, name)  # or it lingers for inactive_threshold
        except StorageUnavailable:
            raise
        except Exception as exc:
            raise _unavailable(exc) from exc
        return EventPage(items=items, next_after=items[-1]["position"] if more and items else None)


class _Round:
    """The publishes of one attempt of a write: `done` when each has its ack or error."""

    __slots__ = ("done", "duplicates", "replies", "left", "acked", "problem", "limit", "until")

    def __init__(self, done: asyncio.Future[None], duplicates: list[bool | None]) -> None:
        self.done = done
        self.duplicates = duplicates  # the write's: None until that message is acked
        self.replies: list[str] = []
        self.left = 0  # to be published or awaiting an answer (an ack or an error)
        self.acked = 0
        self.problem: BaseException | None = None
        self.limit: asyncio.Timeout  # the `async with` that _tick expires at `until`
        self.until = math.inf  # the write's deadline while publishing, then the end of this attempt

    def settle(self, index: int, outcome: bool | BaseException) -> None:
        if isinstance(outcome, BaseException):
            self.problem = outcome
        else:
            self.duplicates[index] = outcome
            self.acked += 1
        self.left -= 1
        if self.left == 0:
            self.end()

    def end(self, _: object = None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def _pub_ack(msg: Msg) -> bool | BaseException:
    """A PubAck's `duplicate`, or the error JetStream answered instead (what js.publish would raise)."""
    if msg.headers and msg.headers.get(api.Header.STATUS) == NO_RESPONDERS_STATUS:
        return nats.js.errors.NoStreamResponseError()
    try:
        reply = orjson.loads(msg.data)
    except orjson.JSONDecodeError as exc:
        return exc
    if not isinstance(reply, dict):
        return nats.js.errors.Error(f"not a PubAck: {msg.data[:200]!r}")
    if "error" in reply:
        try:
            nats.js.errors.APIError.from_error(reply["error"])  # raises the error's class
        except nats.js.errors.APIError as exc:
            return exc
    if "stream" not in reply or "seq" not in reply:
        return nats.js.errors.Error(f"not a PubAck: {msg.data[:200]!r}")
    return reply.get("duplicate") is True


def _matches(event: dict[str, Any], source_id: str | None, query: EventQuery) -> bool:
    name = event.get("event") if event.get("type") == "track" else event.get("name")
    received_at = event.get("receivedAt", "")
    return (
        (query.source_id is None or source_id == query.source_id)
        and (query.message_id is None or event.get("messageId") == query.message_id)
        and (query.event is None or name == query.event)
        and (query.user_id is None or event.get("userId") == query.user_id)
        and (query.anonymous_id is None or event.get("anonymousId") == query.anonymous_id)
        and (query.since is None or received_at >= query.since)
        and (query.until is None or received_at < query.until)
    )


def _quarantine_payload(bad: QuarantinedEvent) -> bytes:
    return orjson.dumps(
        {
            "sourceId": bad.source_id,
            "messageId": bad.message_id,
            "receivedAt": bad.received_at,
            "errors": orjson.Fragment(bad.errors),
            "event": orjson.Fragment(bad.body),
        }
    )


def _receipt(kept: dict[str, Any]) -> dict[str, Any]:
    detail: dict[str, Any] = kept.pop("detail")
    return kept | detail


def _netloc(nc: Client) -> str:
    url = nc.connected_url
    return url.netloc if url is not None else ""


def _unavailable(exc: BaseException) -> StorageUnavailable:
    if isinstance(exc, StorageUnavailable):
        return exc
    reason = "no acknowledgement in time" if isinstance(exc, asyncio.TimeoutError) else f"{type(exc).__name__}: {exc}"
    return StorageUnavailable(more_info=f"NATS JetStream error ({reason}). Events may not be stored; retry.")
