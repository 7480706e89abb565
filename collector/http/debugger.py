"""The live debugger: `GET /debugger` (a page) and `GET /debugger/stream` (Server-Sent Events).

Shows events as they arrive, per source, with the validation errors of invalid ones. Both need
the admin token, as `Authorization: Bearer` or `?token=` (EventSource cannot send headers).

Each stream lasts at most STREAM_SECONDS, then the browser's EventSource reconnects by itself
with `Last-Event-ID`, and the entries it missed are replayed from a small in-memory ring. The
bounded lifetime matters: uvicorn's graceful shutdown waits for open responses, and an
endless stream would hold a restart forever.

With `--workers N` a stream is served by one worker, so the workers share their arrivals
(DebugPeers): while a worker has a stream open it follows the others' arrivals over Unix sockets
in the shared workers directory. Entry ids are times (µs) plus a worker tag, the same in every
worker, so a reconnect that lands on another worker still replays what it missed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from collector import jsonio
from collector.pipeline.auth import AdminRequired, bearer_token
from collector.pipeline.runtime import IntakeReport, Runtime

STREAM_SECONDS = 10.0
KEEPALIVE_SECONDS = 5.0
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
                entry = {"kind": "invalid", "outcome": outcome, **head, "index": index, "message": message}
                self.publish(source.id, jsonio.dumps({**entry, "errors": errors}, default=repr))

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


def hub_of(runtime: Runtime) -> DebugHub:
    hub = runtime.extras.get("debugger")
    assert isinstance(hub, DebugHub)
    return hub


def peers_of(runtime: Runtime) -> DebugPeers | None:
    peers = runtime.extras.get("debugger_peers")
    return peers if isinstance(peers, DebugPeers) else None


def install(runtime: Runtime) -> DebugHub:
    hub = DebugHub()
    runtime.extras["debugger"] = hub
    runtime.listeners.append(hub.on_intake)
    if runtime.settings.workers_dir:  # several workers: the app's lifespan starts and stops these
        runtime.extras["debugger_peers"] = DebugPeers(hub, Path(runtime.settings.workers_dir))
    return hub


def require_admin_token(request: Request, runtime: Runtime) -> None:
    token = bearer_token(request.headers.get("authorization")) or request.query_params.get("token")
    if not token or not runtime.settings.is_admin_token(token):
        raise AdminRequired(
            more_info="The debugger needs the admin token: Authorization: Bearer <admin token>, or ?token=."
        )


def frame(item: Entry) -> bytes:
    return b"id: %d\nevent: arrival\ndata: %s\n\n" % (item[0], b"".join(item[2]))


async def stream(request: Request) -> Response:
    """GET /debugger/stream?token=&sourceId= : text/event-stream of arrivals."""
    runtime: Runtime = request.app.state.runtime
    require_admin_token(request, runtime)
    hub = hub_of(runtime)
    wanted = request.query_params.get("sourceId") or None
    last_event_id = request.headers.get("last-event-id") or request.query_params.get("lastEventId") or ""
    after = int(last_event_id) if last_event_id.isdigit() else hub.now_id()
    queue: asyncio.Queue[Entry] = asyncio.Queue(QUEUE_SIZE)
    hub.subscribers.add(queue)  # before reading the ring, so nothing falls between the two
    peers = peers_of(runtime)

    async def frames() -> AsyncIterator[bytes]:
        if peers is not None:
            peers.watch(after)
        try:
            yield b"retry: 300\n: connected\n\n"
            replayed = set()
            for item in hub.since(after):
                if wanted in (None, item[1]):
                    yield frame(item)
                replayed.add(item[0])
            deadline = time.monotonic() + STREAM_SECONDS
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=min(remaining, KEEPALIVE_SECONDS))
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                # (item[0] > after: entries another stream asked the peers to replay are not for this one)
                if item[0] > after and item[0] not in replayed and wanted in (None, item[1]):
                    yield frame(item)
        finally:
            hub.subscribers.discard(queue)
            if peers is not None:
                await peers.unwatch()

    return StreamingResponse(
        frames(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def page(request: Request) -> Response:
    """GET /debugger?token= : the page; it opens the stream with the same token."""
    runtime: Runtime = request.app.state.runtime
    require_admin_token(request, runtime)
    sources = sorted({(s.id, s.name) for s in runtime.settings.write_keys.values()})
    options = "".join(f'<option value="{_attr(i)}">{_attr(n)} ({_attr(i)})</option>' for i, n in sources)
    return Response(
        PAGE.replace("<!--sources-->", options),
        media_type="text/html; charset=utf-8",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
            "style-src 'unsafe-inline'; connect-src 'self'",
            "Referrer-Policy": "no-referrer",  # the token is in the URL
        },
    )


def _attr(text: Any) -> str:
    return str(text).replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def routes() -> list[Route]:
    return [
        Route("/debugger", page, methods=["GET"]),
        Route("/debugger/stream", stream, methods=["GET"]),
    ]


# Everything the page shows is put in with textContent, never innerHTML: events are untrusted.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Collector live debugger</title>
<style>
body{font:14px system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 16px;display:flex;gap:12px;align-items:center;flex-wrap:wrap}
header h1{font-size:16px;margin:0 12px 0 0}
header label{font-size:12px;opacity:.85}
header input,header select{margin-left:4px;padding:3px 6px}
#status{margin-left:auto;font-size:12px;padding:2px 8px;border-radius:8px;background:#555}
#status.live{background:#1a7f37}
#list{list-style:none;margin:0;padding:8px 16px}
#list li{background:#fff;border:1px solid #d8dce3;border-left:4px solid #2f6feb;border-radius:4px;
  margin:6px 0;padding:6px 10px}
#list li.invalid{border-left-color:#cf222e;background:#fff6f6}
.line{display:flex;gap:10px;cursor:pointer;align-items:baseline}
.type{font-weight:600;min-width:70px}.name{min-width:160px}.who,.src,.time{color:#57606a;font-size:12px}
.badge{font-size:11px;color:#fff;background:#cf222e;border-radius:6px;padding:1px 6px}
pre{background:#f3f4f6;padding:8px;overflow:auto;max-height:320px;margin:6px 0 0}
ul.errors{margin:6px 0 0;color:#a40e26;font-family:monospace;font-size:12px}
#empty{color:#57606a;padding:16px}
</style></head><body>
<header><h1>Live debugger</h1>
<label>source <select id="f-source"><option value="">all</option><!--sources--></select></label>
<label>type <select id="f-type"><option value="">all</option><option>track</option><option>page</option>
<option>screen</option><option>identify</option><option>group</option><option>alias</option></select></label>
<label>event <input id="f-event" placeholder="name contains"></label>
<label>user <input id="f-user" placeholder="userId / anonymousId"></label>
<label><input type="checkbox" id="f-invalid"> invalid only</label>
<span id="status">connecting</span></header>
<div id="empty">Waiting for events…</div>
<ul id="list"></ul>
<script>
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
const list = document.getElementById("list"), statusEl = document.getElementById("status");
const filters = ["f-source", "f-type", "f-event", "f-user", "f-invalid"].map((id) => document.getElementById(id));
const MAX_ROWS = 500;
function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}
function matches(entry) {
  const values = filters.map((f) => (f.type === "checkbox" ? f.checked : f.value.trim()));
  const [source, type, eventText, user, invalidOnly] = values;
  const m = entry.message && typeof entry.message === "object" ? entry.message : {};
  const name = String(m.event ?? m.name ?? "");
  if (source && entry.sourceId !== source) return false;
  if (type && m.type !== type) return false;
  if (eventText && !name.toLowerCase().includes(eventText.toLowerCase())) return false;
  if (user && String(m.userId ?? "") !== user && String(m.anonymousId ?? "") !== user) return false;
  if (invalidOnly && entry.kind !== "invalid") return false;
  return true;
}
function render(entry) {
  const m = entry.message && typeof entry.message === "object" ? entry.message : {};
  const row = el("li", entry.kind === "invalid" ? "invalid" : "event");
  row.entry = entry;
  row.dataset.kind = entry.kind;
  const line = el("div", "line");
  line.append(el("span", "type", m.type ?? "?"), el("span", "name", String(m.event ?? m.name ?? "")),
    el("span", "who", String(m.userId ?? m.anonymousId ?? "")), el("span", "src", entry.sourceId),
    el("span", "time", String(m.receivedAt ?? new Date().toISOString())));
  // Stored but flagged: the quality violations and repairs the collector recorded in the event.
  const flags = ((m.context || {}).protocols || {}).violations || [];
  const quality = Array.isArray(flags) ? flags.filter((v) => v && v.rule) : [];
  if (entry.kind === "invalid") line.append(el("span", "badge", entry.outcome));
  else if (quality.length) line.append(el("span", "badge", `flagged ${quality.length}`));
  row.append(line);
  if (entry.kind === "invalid") {
    const errors = el("ul", "errors");
    for (const e of entry.errors || []) errors.append(el("li", "", `${e.pointer || "/"} ${e.keyword}: ${e.message}`));
    row.append(errors);
  } else if (quality.length) {
    const notes = el("ul", "errors");
    for (const v of quality) notes.append(el("li", "", `${v.field || "/"} ${v.rule}: ${v.description}`));
    row.append(notes);
  }
  const pre = el("pre", "", JSON.stringify(entry.message, null, 2));
  pre.hidden = entry.kind !== "invalid" && list.children.length > 0;
  line.addEventListener("click", () => { pre.hidden = !pre.hidden; });
  row.append(pre);
  row.hidden = !matches(entry);
  return row;
}
function refilter() { for (const row of list.children) row.hidden = !matches(row.entry); }
filters.forEach((f) => f.addEventListener("input", refilter));
const url = "/debugger/stream?token=" + encodeURIComponent(token);
const source = new EventSource(url);
source.onopen = () => { statusEl.textContent = "live"; statusEl.className = "live"; };
source.onerror = () => { statusEl.textContent = "reconnecting"; statusEl.className = ""; };
source.addEventListener("arrival", (message) => {
  document.getElementById("empty").hidden = true;
  list.prepend(render(JSON.parse(message.data)));
  while (list.children.length > MAX_ROWS) list.lastChild.remove();
});
</script></body></html>
"""
