"""The live debugger's hub: arrivals fanned out to open streams (http/debugger.py serves them),
a small ring for reconnects, and, with `--workers N`, the workers sharing their arrivals (DebugPeers):
while a worker has a stream open it follows the others' arrivals over Unix sockets in the shared
workers directory. Entry ids are times (µs) plus a worker tag, the same in every worker, so a
reconnect that lands on another worker still replays what it missed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from contextlib import suppress
from pathlib import Path
from typing import Any

import orjson

from collector import jsonio
from collector.pipeline.records import IntakeReport

RING_SIZE = 500  # entries kept for reconnecting streams
QUEUE_SIZE = 1000  # per subscriber; a subscriber that falls further behind misses entries
ID_STEP = 1000  # ids are µs × ID_STEP + a worker tag: the same order in every worker, no clashes
# (id, source id, JSON in parts joined only if someone reads it, the peer it came from or None)
Entry = tuple[int, str, tuple[bytes, ...], str | None]
log = logging.getLogger("collector")


def _put(queue: asyncio.Queue[Entry], items: list[Entry]) -> None:
    for item in items:
        try:
            queue.put_nowait(item)
        except asyncio.QueueFull:
            break  # a stalled page (or peer) must not slow ingestion down


class DebugHub:
    """Fan-out of arrivals to the open streams (and to peer workers that follow this one), plus
    the recent ones for reconnects."""

    def __init__(self) -> None:
        self.recent: deque[Entry] = deque(maxlen=RING_SIZE)
        self.tag = os.getpid() % ID_STEP
        self.last_id = 0
        self.subscribers: set[asyncio.Queue[Entry]] = set()  # this worker's open streams
        self.feeds: set[asyncio.Queue[Entry]] = set()  # peers following this worker's own arrivals
        # ids of the peers' latest entries: a peer that is followed again resends what it had
        self.imported: set[int] = set()
        self._imported_order: deque[int] = deque()
        self.prefixes: dict[str, bytes] = {}  # source id → the JSON before an event's body

    def now_id(self) -> int:
        """The id an entry published now would at least get: a fresh stream starts after it."""
        return max(self.last_id, time.time_ns() // 1000 * ID_STEP + self.tag)

    def publish(self, source_id: str, *parts: bytes) -> None:
        self.publish_all(source_id, [parts])

    def publish_all(self, source_id: str, entries: list[tuple[bytes, ...]]) -> None:
        first = max(self.last_id + ID_STEP, time.time_ns() // 1000 * ID_STEP + self.tag)
        self.last_id = first + (len(entries) - 1) * ID_STEP
        items: list[Entry] = [(first + n * ID_STEP, source_id, parts, None) for n, parts in enumerate(entries)]
        self.recent.extend(items)
        for queue in self.subscribers:
            _put(queue, items)
        for queue in self.feeds:
            _put(queue, items)

    def take_in(self, entry_id: int, source_id: str, body: bytes, peer: str) -> None:
        """An arrival at a peer worker: kept and streamed here, not passed on to other peers."""
        if entry_id in self.imported:
            return
        self.imported.add(entry_id)
        self._imported_order.append(entry_id)
        if len(self._imported_order) > RING_SIZE:
            self.imported.discard(self._imported_order.popleft())
        item: Entry = (entry_id, source_id, (body,), peer)
        self.recent.append(item)
        for queue in self.subscribers:
            _put(queue, [item])

    def on_intake(self, report: IntakeReport) -> None:
        """Runtime listener: one entry per valid event (as stored) and per invalid message."""
        source = report.source
        head = {"sourceId": source.id, "sourceName": source.name, "workspaceId": source.workspace_id}
        if report.events:
            # The stored body is already JSON: spliced in (when read) instead of re-encoded.
            prefix = self.prefixes.get(source.id)
            if prefix is None:
                prefix = self.prefixes[source.id] = orjson.dumps({"kind": "event", **head})[:-1] + b',"message":'
            self.publish_all(source.id, [(prefix, event.body, b"}") for event in report.events])
        for outcome, items in (("quarantined", report.quarantined), ("rejected", report.rejected)):
            for index, message, errors in items:
                shown = orjson.Fragment(jsonio.dumps_kept(message))  # any message, however deep
                entry = {"kind": "invalid", "outcome": outcome, **head, "index": index, "message": shown}
                self.publish(source.id, orjson.dumps({**entry, "errors": errors}))

    def since(self, after: int) -> list[Entry]:
        return [item for item in self.recent if item[0] > after]


class DebugPeers:
    """The live debugger across the workers of one server. Each worker listens on
    <workers dir>/debug-<pid>.sock; a worker with a stream open connects to every other worker's
    socket, says which entry it saw last, and then receives their own arrivals as they happen.
    No stream open anywhere: nobody is connected, and arrivals cost nothing more."""

    SCAN_SECONDS = 1.0  # how soon a worker that (re)started is followed

    def __init__(self, hub: DebugHub, directory: Path, name: str | None = None) -> None:
        self.hub = hub
        self.directory = directory
        self.own = directory / f"debug-{name or os.getpid()}.sock"  # name: two in one process (tests)
        self.watchers = 0
        self._server: asyncio.AbstractServer | None = None
        self._feeding: set[asyncio.Task[Any]] = set()  # serving the peers connected to this worker
        self._gathering: asyncio.Task[None] | None = None
        self._gathered_after = 0  # what the peers were asked for when following began
        self._replays: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._server = await asyncio.start_unix_server(self._feed_peer, path=str(self.own))
        except OSError as exc:  # e.g. a path longer than a Unix socket allows (~107 bytes)
            log.warning("live debugger: cannot share arrivals with other workers at %s: %s", self.own, exc)

    async def stop(self) -> None:
        await self._stop_gathering()
        if self._server is not None:
            self._server.close()
            self._server = None
            with suppress(OSError):
                self.own.unlink()
        for task in list(self._feeding):
            task.cancel()
        await asyncio.gather(*self._feeding, return_exceptions=True)

    # --- this worker's arrivals, to the peers that follow it ----------------------------------

    async def _feed_peer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[Entry] = asyncio.Queue(QUEUE_SIZE)
        self.hub.feeds.add(queue)  # before reading the ring, as a stream does
        task = asyncio.current_task()
        assert task is not None
        self._feeding.add(task)
        try:
            asked, _, once = (await reader.readline()).strip().partition(b" ")
            after = int(asked) if asked.isdigit() else self.hub.now_id()
            sent = set()
            for item in self.hub.since(after):
                if item[3] is None:  # its own arrivals only: the peer follows every worker itself
                    writer.write(_line(item))
                    sent.add(item[0])
            if once:  # "<after> once": what the ring holds, then the end
                await writer.drain()
                return
            while True:
                await writer.drain()
                item = await queue.get()
                if item[0] not in sent:
                    writer.write(_line(item))
        except (ConnectionError, OSError):
            pass  # the peer's stream ended; it reconnects when it has one again
        except asyncio.CancelledError:
            pass  # stop(): the end of this task, not an error for asyncio's stream callback to log
        finally:
            self.hub.feeds.discard(queue)
            self._feeding.discard(task)
            writer.close()

    # --- the other workers' arrivals, while this worker has a stream open ---------------------

    def watch(self, after: int) -> None:
        self.watchers += 1
        if self._gathering is None:
            self._gathering = asyncio.create_task(self._gather(after))
            self._gathered_after = after
        elif after < self._gathered_after:
            # A second stream reaching further back than the first (two tabs, a late reconnect):
            # the peers' entries from before this worker followed them are asked for once.
            replay = asyncio.create_task(self._replay(after))
            self._replays.add(replay)
            replay.add_done_callback(self._replays.discard)

    async def unwatch(self) -> None:
        self.watchers -= 1
        if self.watchers == 0:
            await self._stop_gathering()

    async def _stop_gathering(self) -> None:
        for task in [*self._replays, *([self._gathering] if self._gathering else [])]:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        self._gathering = None

    async def _replay(self, after: int) -> None:
        peers = [path for path in self.directory.glob("debug-*.sock") if path != self.own]
        await asyncio.gather(*(self._follow(path, after, {}, once=True) for path in peers))

    async def _gather(self, after: int) -> None:
        following: dict[Path, asyncio.Task[None]] = {}
        last_seen: dict[Path, int] = {}
        try:
            while True:
                for path in self.directory.glob("debug-*.sock"):
                    if path != self.own and (path not in following or following[path].done()):
                        since = last_seen.get(path, after)
                        following[path] = asyncio.create_task(self._follow(path, since, last_seen))
                await asyncio.sleep(self.SCAN_SECONDS)
        finally:
            for task in following.values():
                task.cancel()
            await asyncio.gather(*following.values(), return_exceptions=True)

    async def _follow(self, path: Path, after: int, last_seen: dict[Path, int], once: bool = False) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(str(path))
        except OSError:
            return  # a worker that has gone (its socket is left after a crash); scanned again later
        peer = path.stem
        try:
            writer.write(b"%d once\n" % after if once else b"%d\n" % after)
            while line := await reader.readline():
                entry_id, source_id, body = line.rstrip(b"\n").split(b"\t", 2)
                last_seen[path] = int(entry_id)
                self.hub.take_in(int(entry_id), orjson.loads(source_id), body, peer)
        except (ConnectionError, OSError, ValueError):
            pass
        finally:
            writer.close()


def _line(item: Entry) -> bytes:
    """One entry on a peer socket: id, source id (as JSON), the entry's JSON. JSON has no raw tab
    or newline."""
    return b"%d\t%b\t%b\n" % (item[0], orjson.dumps(item[1]), b"".join(item[2]))
