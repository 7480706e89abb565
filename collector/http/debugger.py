"""The live debugger: `GET /debugger` (a page), `GET /debugger/history` (the last arrivals, from
storage and receipts) and `GET /debugger/stream` (Server-Sent Events).

On open the page shows the last 50 arrivals (stored, quarantined, and the receipts of those not
stored: duplicate, rejected, suppressed, dropped), then events as they arrive, per source, with
the validation errors of invalid ones; a filter by status, and per entry a curl command that
replays it. All need the admin token, as `Authorization: Bearer` or `?token=` (EventSource cannot
send headers).

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
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from collector.http.readback import int_param
from collector.http.responses import json_response
from collector.pipeline.auth import AdminRequired, bearer_token
from collector.pipeline.debug_hub import QUEUE_SIZE, Entry
from collector.pipeline.runtime import Runtime

STREAM_SECONDS = 10.0
HISTORY_SIZE = 50  # arrivals the page shows on open
KEEPALIVE_SECONDS = 5.0


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
    hub = runtime.debug_hub
    wanted = request.query_params.get("sourceId") or None
    last_event_id = request.headers.get("last-event-id") or request.query_params.get("lastEventId") or ""
    after = int(last_event_id) if last_event_id.isdigit() else hub.now_id()
    queue: asyncio.Queue[Entry] = asyncio.Queue(QUEUE_SIZE)
    hub.subscribers.add(queue)  # before reading the ring, so nothing falls between the two
    peers = runtime.debug_peers

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


async def history(request: Request) -> Response:
    """GET /debugger/history?token=&sourceId=&limit= : {"data": arrivals newest first, "streamFrom"}.
    `streamFrom` is taken before storage is read: a stream opened with it as lastEventId misses
    nothing that arrived since (the page drops what it got twice)."""
    runtime: Runtime = request.app.state.runtime
    require_admin_token(request, runtime)
    limit = int_param(request, "limit", HISTORY_SIZE, 1, 500)
    stream_from = runtime.debug_hub.now_id()
    wanted = request.query_params.get("sourceId") or None
    store = runtime.receipts.store
    found = await store.recent_arrivals(wanted, limit) if store is not None else []
    answer = json_response({"data": found, "streamFrom": str(stream_from)})
    answer.headers["Cache-Control"] = "no-store"
    return answer


async def page(request: Request) -> Response:
    """GET /debugger?token= : the page; it opens the stream with the same token."""
    runtime: Runtime = request.app.state.runtime
    require_admin_token(request, runtime)
    sources = sorted({(s.id, s.name) for s in runtime.settings.write_keys.values()})
    options = "".join(f'<option value="{_attr(i)}">{_attr(n)} ({_attr(i)})</option>' for i, n in sources)
    prefix = _attr(runtime.settings.ingest_prefixes[0])
    return Response(
        PAGE.replace("<!--sources-->", options).replace("<!--prefix-->", prefix),
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
        Route("/debugger/history", history, methods=["GET"]),
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
#list li.skipped{border-left-color:#9a6700;background:#fffbeb}
#list li.earlier{opacity:.9}
.line{display:flex;gap:10px;cursor:pointer;align-items:baseline}
.type{font-weight:600;min-width:70px}.name{min-width:160px}.who,.src,.time{color:#57606a;font-size:12px}
.badge{font-size:11px;color:#fff;background:#cf222e;border-radius:6px;padding:1px 6px}
.skipped .badge{background:#9a6700}
.tag{font-size:11px;color:#57606a;border:1px solid #d8dce3;border-radius:6px;padding:0 5px}
button.curl{margin-left:auto;font-size:11px}
pre{background:#f3f4f6;padding:8px;overflow:auto;max-height:320px;margin:6px 0 0}
ul.errors{margin:6px 0 0;color:#a40e26;font-family:monospace;font-size:12px}
#empty{color:#57606a;padding:16px}
</style></head><body data-ingest="<!--prefix-->">
<header><h1>Live debugger</h1>
<label>source <select id="f-source"><option value="">all</option><!--sources--></select></label>
<label>status <select id="f-status"><option value="">all</option><option>stored</option><option>duplicate</option>
<option>rejected</option><option>quarantined</option><option>suppressed</option><option>dropped</option></select></label>
<label>type <select id="f-type"><option value="">all</option><option>track</option><option>page</option>
<option>screen</option><option>identify</option><option>group</option><option>alias</option></select></label>
<label>event <input id="f-event" placeholder="name contains"></label>
<label>user <input id="f-user" placeholder="userId / anonymousId"></label>
<span id="status">connecting</span></header>
<div id="empty">Waiting for events…</div>
<ul id="list"></ul>
<script>
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
const list = document.getElementById("list"), statusEl = document.getElementById("status");
const filters = ["f-source", "f-status", "f-type", "f-event", "f-user"].map((id) => document.getElementById(id));
const MAX_ROWS = 500;
const TYPES = ["track", "page", "screen", "identify", "group", "alias"];
const shownEarlier = new Set();  // status|messageId of history rows: the stream may bring them again
function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}
// A live entry ({kind, outcome}) and a history entry ({status, at}) in one shape.
function statusOf(entry) { return entry.status || (entry.kind === "event" ? "stored" : entry.outcome); }
function messageOf(entry) { return entry.message && typeof entry.message === "object" ? entry.message : {}; }
function matches(entry) {
  const [source, status, type, eventText, user] = filters.map((f) => f.value.trim());
  const m = messageOf(entry);
  const name = String(m.event ?? m.name ?? "");
  if (source && entry.sourceId !== source) return false;
  if (status && statusOf(entry) !== status) return false;
  if (type && m.type !== type) return false;
  if (eventText && !name.toLowerCase().includes(eventText.toLowerCase())) return false;
  if (user && String(m.userId ?? "") !== user && String(m.anonymousId ?? "") !== user) return false;
  return true;
}
// A command that sends the entry's message again, as it was kept; the write key comes from $WRITE_KEY.
function curlFor(entry) {
  const m = entry.message;
  const single = m && typeof m === "object" && !Array.isArray(m) && TYPES.includes(m.type);
  const path = document.body.dataset.ingest + "/" + (single ? m.type : "batch");
  const body = JSON.stringify(single ? m : { batch: [m] });
  return `curl -sS -X POST '${location.origin}${path}' -u "\\${WRITE_KEY:?set WRITE_KEY}:" ` +
    `-H 'Content-Type: application/json' --data-binary @- <<'JSON'\\n${body}\\nJSON`;
}
function render(entry, earlier) {
  const m = messageOf(entry);
  const status = statusOf(entry);
  const invalid = status === "rejected" || status === "quarantined";
  const kind = status === "stored" ? "event" : invalid ? "invalid" : "skipped";
  const row = el("li", kind + (earlier ? " earlier" : ""));
  row.entry = entry;
  row.dataset.status = status;
  const line = el("div", "line");
  // A receipt without a body (duplicate, suppressed, dropped) is named by its messageId.
  const name = entry.message === undefined ? String(entry.messageId ?? "") : String(m.event ?? m.name ?? "");
  line.append(el("span", "type", m.type ?? "—"), el("span", "name", name),
    el("span", "who", String(m.userId ?? m.anonymousId ?? "")), el("span", "src", entry.sourceId),
    el("span", "time", String(entry.at ?? m.receivedAt ?? new Date().toISOString())));
  // Stored but flagged: the quality violations and repairs the collector recorded in the event.
  const flags = ((m.context || {}).protocols || {}).violations || [];
  const quality = Array.isArray(flags) ? flags.filter((v) => v && v.rule) : [];
  if (status !== "stored") line.append(el("span", "badge", status));
  else if (quality.length) line.append(el("span", "badge", `flagged ${quality.length}`));
  if (entry.policy) line.append(el("span", "tag", entry.policy));
  if (earlier) line.append(el("span", "tag", "earlier"));
  if (!entry.messageId && m.messageId) entry.messageId = m.messageId;
  if (entry.message !== undefined && entry.message !== null) {
    const copy = el("button", "curl", "copy as curl");
    copy.type = "button";
    copy.addEventListener("click", (click) => {
      click.stopPropagation();
      const command = curlFor(entry);
      let shown = row.querySelector("pre.curl");
      if (!shown) { shown = el("pre", "curl"); row.append(shown); }
      shown.textContent = command;
      if (navigator.clipboard) navigator.clipboard.writeText(command).catch(() => {});
    });
    line.append(copy);
  }
  row.append(line);
  if (entry.errors && entry.errors.length) {
    const errors = el("ul", "errors");
    for (const e of entry.errors) errors.append(el("li", "", `${e.pointer || "/"} ${e.keyword}: ${e.message}`));
    row.append(errors);
  } else if (quality.length) {
    const notes = el("ul", "errors");
    for (const v of quality) notes.append(el("li", "", `${v.field || "/"} ${v.rule}: ${v.description}`));
    row.append(notes);
  }
  if (entry.message !== undefined) {
    const pre = el("pre", "", JSON.stringify(entry.message, null, 2));
    pre.hidden = kind !== "invalid" && list.children.length > 0;
    line.addEventListener("click", () => { pre.hidden = !pre.hidden; });
    row.append(pre);
  }
  row.hidden = !matches(entry);
  return row;
}
function refilter() { for (const row of list.children) row.hidden = !matches(row.entry); }
filters.forEach((f) => f.addEventListener("input", refilter));
function follow(streamFrom) {
  let url = "/debugger/stream?token=" + encodeURIComponent(token);
  if (streamFrom) url += "&lastEventId=" + encodeURIComponent(streamFrom);
  const source = new EventSource(url);
  source.onopen = () => { statusEl.textContent = "live"; statusEl.className = "live"; };
  source.onerror = () => { statusEl.textContent = "reconnecting"; statusEl.className = ""; };
  source.addEventListener("arrival", (message) => {
    const entry = JSON.parse(message.data);
    const key = statusOf(entry) + "|" + messageOf(entry).messageId;
    if (shownEarlier.delete(key)) return;  // already shown from the history
    document.getElementById("empty").hidden = true;
    list.prepend(render(entry, false));
    while (list.children.length > MAX_ROWS) list.lastChild.remove();
  });
}
fetch("/debugger/history?token=" + encodeURIComponent(token), { cache: "no-store" })
  .then((answer) => (answer.ok ? answer.json() : { data: [], streamFrom: "" }))
  .catch(() => ({ data: [], streamFrom: "" }))
  .then((history) => {
    for (const entry of history.data) {
      list.append(render(entry, true));
      if (entry.messageId) shownEarlier.add(entry.status + "|" + entry.messageId);
    }
    if (history.data.length) document.getElementById("empty").hidden = true;
    follow(history.streamFrom);
  });
</script></body></html>
"""
