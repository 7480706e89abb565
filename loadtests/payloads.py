"""Request shapes of real analytics clients, as small fixture data for the load tests.

The shapes (key order, headers, id and time formats, envelope fields) are copied from the wire
captures in shared/reference/captures/ (analytics-next 1.84.3 in Chromium, analytics-node 3.1.0,
segment-analytics-python 2.4.0). Nothing here reads those files at run time, so the load tests
work in a clean clone. Every builder returns a fresh message with a new messageId, so a load
run stores every request instead of deduplicating it away.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

BROWSER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0.0.0 Safari/537.36"
)
BROWSER_LIBRARY = {"name": "analytics.js", "version": "next-1.84.3"}
USER_AGENT_DATA = {
    "brands": [{"brand": "Not:A-Brand", "version": "8"}, {"brand": "Chromium", "version": "156"}],
    "mobile": False,
    "platform": "Linux",
}
SITE = "https://shop.example.com"
PAGES = [
    ("/", "Shop: home"),
    ("/courses", "All courses"),
    ("/courses/intro-to-analytics", "Intro to Analytics"),
    ("/pricing", "Pricing"),
    ("/checkout", "Checkout"),
]
# The shop events follow the sample tracking plan (spec/plans/shop.yaml); tests/test_plans.py checks it.
TRACK_EVENTS = [
    ("Course Clicked", {"title": "Intro to Analytics", "revenue": 19.99, "currency": "USD"}),
    ("Order Completed", {"order_id": "ord_78", "revenue": 49.98, "currency": "USD", "total": 54.97}),
    ("Product Viewed", {"product_id": "sku_1234", "name": "Analytics Handbook", "price": 29.0}),
    ("Video Played", {"video_id": "vid_42", "position": 0, "quality": "hd"}),
    ("Checkout Started", {"order_id": "ord_77", "value": 49.98, "currency": "USD"}),
]
METRICS_BODY = orjson.dumps(
    {
        "series": [
            {
                "type": "Counter",
                "metric": "analytics_js.invoke",
                "value": 1,
                "tags": {"library": "analytics.js", "library_version": "next-1.84.3"},
            }
        ]
        * 5
    }
)


def basic_auth(write_key: str) -> str:
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


def browser_headers(write_key: str) -> dict[str, str]:
    """analytics-next's event POST headers (wire order kept; Host/Content-Length come from the client)."""
    return {
        "sec-ch-ua-platform": '"Linux"',
        "Authorization": basic_auth(write_key),
        "User-Agent": BROWSER_UA,
        "sec-ch-ua": '"Not:A-Brand";v="8", "Chromium";v="156"',
        "Content-Type": "text/plain",
        "sec-ch-ua-mobile": "?0",
        "Accept": "*/*",
        "Origin": SITE,
        "Sec-Fetch-Site": "cross-site",
        "Sec-Fetch-Mode": "cors",
        "Sec-Fetch-Dest": "empty",
        "Referer": SITE + "/",
        "Accept-Encoding": "gzip, deflate, br, zstd",
        "Accept-Language": "en-US,en;q=0.9",
    }


def metrics_headers() -> dict[str, str]:
    """/v1/m goes without Authorization (so the browser sends it without a preflight)."""
    headers = browser_headers("")
    del headers["Authorization"]
    return headers


def node_headers(write_key: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "analytics-node-next/latest",
        "Authorization": basic_auth(write_key),
        "accept": "*/*",
        "accept-language": "*",
        "sec-fetch-mode": "cors",
        "accept-encoding": "gzip, deflate",
    }


def python_headers(write_key: str, gzipped: bool) -> dict[str, str]:
    headers = {
        "User-Agent": "analytics-python/2.4.0",
        "Accept-Encoding": "gzip, deflate",
        "Accept": "*/*",
        "Content-Type": "application/json",
        "Authorization": basic_auth(write_key),
    }
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    return headers


def profile_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": "application/json"}


# --- ids and clocks, in each client's own format ----------------------------------------------


def iso_ms(moment: datetime | None = None) -> str:
    """analytics.js / analytics-node: `2026-11-23T09:38:50.605Z`."""
    moment = moment or datetime.now(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def iso_python_ms(moment: datetime | None = None) -> str:
    """segment-python's event timestamp: milliseconds with `+00:00`."""
    return (moment or datetime.now(UTC)).isoformat(timespec="milliseconds")


def iso_python_us(moment: datetime | None = None) -> str:
    """segment-python's sentAt: microseconds with `+00:00`."""
    return (moment or datetime.now(UTC)).isoformat(timespec="microseconds")


def browser_message_id() -> str:
    return f"ajs-next-{int(time.time() * 1000)}-{uuid.uuid4()}"


def node_message_id() -> str:
    return f"node-next-{int(time.time() * 1000)}-{uuid.uuid4()}"


def random_user_id() -> str:
    """Ids like the captures' `AiUGstSDIg`: ten letters and digits."""
    return "".join(random.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", k=10))


# --- analytics-next (browser) -----------------------------------------------------------------


def browser_context(path: str, title: str) -> dict[str, Any]:
    page = {"path": path, "referrer": "", "search": "", "title": title, "url": SITE + path}
    return {
        "page": page,
        "userAgent": BROWSER_UA,
        "userAgentData": USER_AGENT_DATA,
        "locale": "en-US",
        "library": BROWSER_LIBRARY,
        "timezone": "UTC",
    }


def _browser_tail(
    message: dict[str, Any], anonymous_id: str, user_id: str | None, write_key: str, sent_at: bool
) -> dict[str, Any]:
    """The keys analytics-next appends after the type fields, in its order."""
    message["messageId"] = browser_message_id()
    message["anonymousId"] = anonymous_id
    message["writeKey"] = write_key
    if user_id is not None:
        message["userId"] = user_id
    if sent_at:  # default delivery stamps each event; batching puts sentAt on the envelope only
        message["sentAt"] = iso_ms()
    message["_metadata"] = {"bundled": ["Segment.io"], "unbundled": [], "bundledIds": []}
    return message


def browser_page(
    anonymous_id: str, user_id: str | None, write_key: str, path: str = "/", title: str = "Shop", sent_at: bool = True
) -> dict[str, Any]:
    context = browser_context(path, title)
    message: dict[str, Any] = {
        "timestamp": iso_ms(),
        "integrations": {"Segment.io": True},
        "type": "page",
        "properties": dict(context["page"]),
        "context": context,
    }
    return _browser_tail(message, anonymous_id, user_id, write_key, sent_at)


def browser_track(
    anonymous_id: str,
    user_id: str | None,
    write_key: str,
    event: str = "Course Clicked",
    properties: dict[str, Any] | None = None,
    path: str = "/",
    title: str = "Shop",
    sent_at: bool = True,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "timestamp": iso_ms(),
        "integrations": {"Segment.io": True},
        "event": event,
        "type": "track",
        "properties": properties if properties is not None else dict(TRACK_EVENTS[0][1]),
        "context": browser_context(path, title),
    }
    return _browser_tail(message, anonymous_id, user_id, write_key, sent_at)


def browser_identify(
    anonymous_id: str,
    user_id: str,
    write_key: str,
    traits: dict[str, Any] | None = None,
    path: str = "/",
    title: str = "Shop",
    sent_at: bool = True,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "timestamp": iso_ms(),
        "integrations": {"Segment.io": True},
        "type": "identify",
        "userId": user_id,
        "traits": traits if traits is not None else {"email": f"{user_id.lower()}@example.com", "plan": "pro"},
        "context": browser_context(path, title),
    }
    message = _browser_tail(message, anonymous_id, None, write_key, sent_at)
    return message


def browser_batch(events: list[dict[str, Any]], write_key: str) -> dict[str, Any]:
    """analytics-next batching delivery: `{writeKey, batch, sentAt}` to /v1/b."""
    return {"writeKey": write_key, "batch": events, "sentAt": iso_ms()}


# --- server SDKs ------------------------------------------------------------------------------


def node_event(user_id: str, index: int) -> dict[str, Any]:
    """An analytics-node track event (no anonymousId when only userId is given)."""
    name, properties = TRACK_EVENTS[index % len(TRACK_EVENTS)]
    return {
        "timestamp": iso_ms(),
        "integrations": {},
        "event": name,
        "type": "track",
        "properties": properties,
        "context": {"library": {"name": "@segment/analytics-node", "version": "3.1.0"}},
        "userId": user_id,
        "messageId": node_message_id(),
        "_metadata": {"nodeVersion": "v20.20.2", "jsRuntime": "node"},
    }


def node_batch(user_ids: list[str], size: int, write_key: str) -> dict[str, Any]:
    batch = [node_event(user_ids[i % len(user_ids)], i) for i in range(size)]
    return {"batch": batch, "writeKey": write_key, "sentAt": iso_ms()}


def python_event(user_id: str, index: int) -> dict[str, Any]:
    """A segment-python track event: explicit `anonymousId: null`, uuid4 messageId, `+00:00` times."""
    name, properties = TRACK_EVENTS[index % len(TRACK_EVENTS)]
    return {
        "integrations": {},
        "anonymousId": None,
        "properties": properties,
        "timestamp": iso_python_ms(),
        "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
        "userId": user_id,
        "type": "track",
        "event": name,
        "messageId": str(uuid.uuid4()),
    }


def python_batch(user_ids: list[str], size: int, write_key: str) -> dict[str, Any]:
    batch = [python_event(user_ids[i % len(user_ids)], i) for i in range(size)]
    return {"batch": batch, "sentAt": iso_python_us(), "writeKey": write_key}


def python_body(envelope: dict[str, Any], gzipped: bool) -> bytes:
    """segment-python serialises with `json.dumps` spacing (`", "`, `": "`), optionally gzipped."""
    body = json.dumps(envelope).encode()
    return gzip.compress(body) if gzipped else body


# --- the profile API --------------------------------------------------------------------------


def profile_create_body(serial: int) -> dict[str, Any]:
    return {
        "identifiers": {"email": f"user{serial}@example.com", "externalId": f"ext-{serial}"},
        "traits": {"name": f"User {serial}", "plan": "free", "visits": 0},
    }


def profile_track_body(visits: int) -> dict[str, Any]:
    return {"traits": {"visits": visits, "lastSeen": iso_ms(), "plan": random.choice(["free", "pro", "team"])}}


# --- templates for the benchmark's load generators ---------------------------------------------

MESSAGE_ID_SLOT = "@@MID@@"


def track_event_template(
    write_key: str, event: str = "Course Clicked", properties: dict[str, Any] | None = None, sent_at: bool = True
) -> str:
    """A ~1 KB analytics-next track event whose messageId is MESSAGE_ID_SLOT, for string splicing
    by a load generator that cannot run Python per request (wrk's Lua). `sent_at=False`: the item
    of a batching-delivery batch, whose sentAt is on the envelope."""
    message = browser_track(
        "8f27e314-49a0-49bc-9d12-05cf7f9f5ead", "AiUGstSDIg", write_key, event, properties, sent_at=sent_at
    )
    message["messageId"] = MESSAGE_ID_SLOT
    return orjson.dumps(message).decode()


def planned_order_template(write_key: str) -> str:
    """The same event as an "Order Completed" of the sample tracking plan (spec/plans/shop.yaml),
    so a source with the plan active checks every property."""
    order = {
        "order_id": "o-1001",
        "total": 27.5,
        "revenue": 25.0,
        "shipping": 2.5,
        "currency": "EUR",
        "products": [{"product_id": "p-1", "sku": "SKU-1", "name": "Mug", "price": 12.5, "quantity": 2}],
    }
    return track_event_template(write_key, "Order Completed", order)
