"""The live debugger: `GET /debugger` (a page) and `GET /debugger/stream` (Server-Sent Events).

Shows events as they arrive, per source, with the validation errors of invalid ones. Both need
the admin token, as `Authorization: Bearer` or `?token=` (EventSource cannot send headers).

Each stream lasts at most STREAM_SECONDS, then the browser's EventSource reconnects by itself
with `Last-Event-ID`, and the entries it missed are replayed from a small in-memory ring. The
bounded lifetime matters: uvicorn's graceful shutdown waits for open responses, and an
endless stream would hold a restart forever. Each worker process streams its own arrivals.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from collector.auth import AdminRequired, bearer_token
from collector.runtime import IntakeReport, Runtime

STREAM_SECONDS = 10.0
KEEPALIVE_SECONDS = 5.0
RING_SIZE = 500  # entries kept for reconnecting streams
QUEUE_SIZE = 1000  # per subscriber; a subscriber that falls further behind misses entries
Entry = tuple[int, str, tuple[bytes, ...]]  # (id, source id, JSON in parts, joined only if someone reads it)


class DebugHub:
    """Fan-out of arrivals to the open streams, plus the recent ones for reconnects."""

    def __init__(self) -> None:
        self.recent: deque[Entry] = deque(maxlen=RING_SIZE)
        self.last_id = 0
        self.subscribers: set[asyncio.Queue[Entry]] = set()
        self.prefixes: dict[str, bytes] = {}  # source id → the JSON before an event's body

    def publish(self, source_id: str, *parts: bytes) -> None:
        self.publish_all(source_id, [parts])

    def publish_all(self, source_id: str, entries: list[tuple[bytes, ...]]) -> None:
        first = self.last_id + 1
        self.last_id += len(entries)
        items = [(first + offset, source_id, parts) for offset, parts in enumerate(entries)]
        self.recent.extend(items)
        for queue in self.subscribers:
            for item in items:
                try:
                    queue.put_nowait(item)
                except asyncio.QueueFull:
                    break  # a stalled page must not slow ingestion down

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
                self.publish(source.id, orjson.dumps({**entry, "errors": errors}, default=repr))

    def since(self, after: int) -> list[Entry]:
        return [item for item in self.recent if item[0] > after]


def hub_of(runtime: Runtime) -> DebugHub:
    hub = runtime.extras.get("debugger")
    assert isinstance(hub, DebugHub)
    return hub


def install(runtime: Runtime) -> DebugHub:
    hub = DebugHub()
    runtime.extras["debugger"] = hub
    runtime.listeners.append(hub.on_intake)
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
    after = int(last_event_id) if last_event_id.isdigit() else hub.last_id
    queue: asyncio.Queue[Entry] = asyncio.Queue(QUEUE_SIZE)
    hub.subscribers.add(queue)  # before reading the ring, so nothing falls between the two

    async def frames() -> AsyncIterator[bytes]:
        sent = after
        try:
            yield b"retry: 300\n: connected\n\n"
            for item in hub.since(after):
                if wanted in (None, item[1]):
                    yield frame(item)
                sent = item[0]
            deadline = time.monotonic() + STREAM_SECONDS
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=min(remaining, KEEPALIVE_SECONDS))
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if item[0] > sent and wanted in (None, item[1]):
                    yield frame(item)
                sent = max(sent, item[0])
        finally:
            hub.subscribers.discard(queue)

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
  if (entry.kind === "invalid") line.append(el("span", "badge", entry.outcome));
  row.append(line);
  if (entry.kind === "invalid") {
    const errors = el("ul", "errors");
    for (const e of entry.errors || []) errors.append(el("li", "", `${e.pointer || "/"} ${e.keyword}: ${e.message}`));
    row.append(errors);
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
