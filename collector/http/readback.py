"""The read-back API (admin token), Snowplow-Micro style: what was stored, exactly as stored.

GET /v1/events?messageId=&type=&event=&userId=&anonymousId=&workspaceId=&sourceId=
               &since=&until=&limit=&cursor=&wait=
GET /v1/events/{messageId}?workspaceId=&wait=
GET /v1/quarantine?workspaceId=&limit=&cursor=
GET /v1/receipts/{messageId}?workspaceId=&wait=   what became of each message with that id

`wait` (seconds, ≤ 30) holds the answer until a match is stored, for "send, then read" tests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from collector.errors import InvalidParameter, NotFound
from collector.http.responses import json_response
from collector.pipeline.auth import require_admin
from collector.pipeline.enrichment import format_time, parse_time
from collector.pipeline.runtime import Runtime
from collector.storage.base import EventPage, EventQuery

MAX_WAIT_SECONDS = 30.0
POLL_SECONDS = 0.02


def encode_cursor(position: int | None) -> str | None:
    if position is None:
        return None
    return base64.urlsafe_b64encode(orjson.dumps({"after": position})).decode().rstrip("=")


def decode_cursor(token: str | None, name: str = "cursor") -> int:
    if not token:
        return 0
    try:
        decoded = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        after = decoded["after"]
        if type(after) is not int or not 0 <= after <= 2**63 - 1:
            raise ValueError
        return after
    except (ValueError, KeyError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise InvalidParameter(
            f"Invalid {name}", f"`{name}` must be a value returned in meta; got {token!r}.", parameter=name
        ) from None


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidParameter(
            f"Invalid {name}", f"`{name}` must be an integer from {low} to {high}; got {raw!r}.", parameter=name
        )
    return value


def wait_param(request: Request) -> float:
    raw = request.query_params.get("wait")
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_WAIT_SECONDS:
        raise InvalidParameter(
            "Invalid wait", f"`wait` must be 0 to {MAX_WAIT_SECONDS:g} seconds; got {raw!r}.", parameter="wait"
        )
    return value


def time_param(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    moment = parse_time(raw)
    try:
        if moment is not None:
            return format_time(moment)
    except (OverflowError, ValueError):
        pass
    raise InvalidParameter(f"Invalid {name}", f"`{name}` must be an ISO-8601 time; got {raw!r}.", parameter=name)


async def _poll(fetch: Any, wait: float) -> EventPage:
    deadline = time.monotonic() + wait
    while True:
        page: EventPage = await fetch()
        if page.items or time.monotonic() >= deadline:
            return page
        await asyncio.sleep(POLL_SECONDS)


async def list_events(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    require_admin(request.headers.get("authorization"), runtime.settings)
    params = request.query_params
    limit = int_param(request, "limit", 100, 1, 1000)
    query = EventQuery(
        workspace_id=params.get("workspaceId"),
        source_id=params.get("sourceId"),
        message_id=params.get("messageId"),
        type=params.get("type"),
        event=params.get("event"),
        user_id=params.get("userId"),
        anonymous_id=params.get("anonymousId"),
        since=time_param(request, "since"),
        until=time_param(request, "until"),
        after=decode_cursor(params.get("cursor")),
        limit=limit,
    )
    page = await _poll(lambda: runtime.storage.read_events(query), wait_param(request))
    return json_response({"data": page.items, "meta": {"limit": limit, "nextCursor": encode_cursor(page.next_after)}})


async def get_event(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    require_admin(request.headers.get("authorization"), runtime.settings)
    message_id = request.path_params["message_id"]
    query = EventQuery(message_id=message_id, workspace_id=request.query_params.get("workspaceId"), limit=1)
    page = await _poll(lambda: runtime.storage.read_events(query), wait_param(request))
    if not page.items:
        raise NotFound("Event not found", f"No stored event has messageId {message_id!r}.")
    return json_response(page.items[0])


async def list_quarantine(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    require_admin(request.headers.get("authorization"), runtime.settings)
    limit = int_param(request, "limit", 100, 1, 1000)
    params = request.query_params
    workspace_id, message_id = params.get("workspaceId"), params.get("messageId")
    after = decode_cursor(params.get("cursor"))
    page = await _poll(
        lambda: runtime.storage.read_quarantine(workspace_id, after, limit, message_id), wait_param(request)
    )
    return json_response({"data": page.items, "meta": {"limit": limit, "nextCursor": encode_cursor(page.next_after)}})


async def get_receipts(request: Request) -> Response:
    """Every outcome of the messages with that messageId: stored, quarantined, and the receipts of
    those not stored (duplicate, rejected, suppressed, dropped) within receiptRetention."""
    runtime: Runtime = request.app.state.runtime
    require_admin(request.headers.get("authorization"), runtime.settings)
    message_id = request.path_params["message_id"]
    workspace_id = request.query_params.get("workspaceId")
    wait = wait_param(request)
    deadline = time.monotonic() + wait
    while not (found := await runtime.receipts.lookup(message_id, workspace_id)) and time.monotonic() < deadline:
        await asyncio.sleep(POLL_SECONDS)
    if not found:
        retention = runtime.settings.receipt_retention
        kept = f"the last {_duration(retention)}" if retention is not None else "ever"
        raise NotFound(
            "No receipt",
            f"No message with messageId {message_id!r} arrived in {kept} (receiptRetention), or it was refused"
            " before it was read as a message (authentication, rate limit, a body that is not JSON).",
        )
    return json_response({"messageId": message_id, "receipts": found})


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
