"""Deliberately broken variants of the reference collector, to prove the conformance kit bites.

Each mutant is the real app (`create_app(settings)`, real SQLite file) with one fault put in
front of it (an ASGI wrapper) or behind it (a wrapped event or profile store). Each declares
the case ids (globs) it must fail; tests/test_conformance_mutants.py runs the kit against
every mutant and fails when one survives, and checks that every case is caught by some mutant.

`MutantFarm` serves all mutants from one background thread: one asyncio loop, one uvicorn
server per mutant on its own free loopback port.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from collector.app import create_app
from collector.paths import BATCH_PATHS as SPEC_BATCH_PATHS
from collector.paths import CALL_PATHS
from collector.pipeline.runtime import Runtime
from collector.settings import load
from collector.storage.base import EventPage, EventQuery, StoredEvent, WriteResult

SINGLE_PATHS = {path for paths in CALL_PATHS.values() for path in paths}
BATCH_PATHS = set(SPEC_BATCH_PATHS)
READ_BACK = ("/v1/events", "/v1/quarantine")
SUCCESS = b'{"success":true}'
# Top-level fields a naive server might hard-code (common fields plus each call's own).
KNOWN_FIELDS = {
    "type", "anonymousId", "userId", "context", "integrations", "messageId", "timestamp", "originalTimestamp",
    "sentAt", "receivedAt", "version", "channel", "writeKey", "_metadata", "event", "properties", "traits",
    "name", "category", "groupId", "previousId",
}  # fmt: skip

# The raw messages of the request being handled, for storage faults that need what was sent.
RAW_MESSAGES: contextvars.ContextVar[dict[str, dict[str, Any]] | None] = contextvars.ContextVar("raw", default=None)


# --- ASGI helpers -----------------------------------------------------------------------------


def is_event_path(scope: Scope) -> bool:
    path = scope["path"]
    return path.startswith("/v1/") and not path.startswith(READ_BACK)


def is_profile_path(scope: Scope) -> bool:
    path = scope["path"].removeprefix("/api/v1")
    return path == "/identify" or path.startswith(("/identify/", "/track/"))


def header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


def with_header(scope: Scope, name: bytes, value: str | None) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k != name]
    if value is not None:
        headers.append((name, value.encode("latin-1")))
    return {**scope, "headers": headers}


async def read_all(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def respond(send: Send, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"status": status, "code": "mutant", "message": message, "moreInfo": "mutant"})


def plain_json(scope: Scope, body: bytes) -> Any:
    """The parsed body when it is plain (uncompressed) JSON, else None."""
    if header(scope, b"content-encoding") not in ("", "identity"):
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def messages_of(payload: Any) -> list[Any]:
    if isinstance(payload, dict) and isinstance(payload.get("batch"), list):
        return list(payload["batch"])
    return [payload] if isinstance(payload, dict) else []


Transform = Callable[[int, list[tuple[bytes, bytes]], bytes], tuple[int, list[tuple[bytes, bytes]], bytes]]


async def call_transformed(app: ASGIApp, scope: Scope, receive: Receive, send: Send, transform: Transform) -> None:
    """Run the app, buffer its answer, and send what `transform` makes of it."""
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def capture(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        else:
            chunks.append(message.get("body", b""))

    await app(scope, receive, capture)
    status, headers, body = transform(start["status"], list(start.get("headers", [])), b"".join(chunks))
    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


Handler = Callable[[Scope, Receive, Send, ASGIApp], Awaitable[None]]


class Fault:
    """ASGI wrapper: `handler` sees every HTTP request and may call the real app or not."""

    def __init__(self, app: ASGIApp, handler: Handler) -> None:
        self.app = app
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handler(scope, receive, send, self.app)


# --- store wrappers ---------------------------------------------------------------------------


class StoreProxy:
    """Delegates everything to the real backend; subclasses override the faulty method."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def rewrite_bodies(events: list[StoredEvent], change: Callable[[dict[str, Any]], None]) -> list[StoredEvent]:
    rewritten = []
    for event in events:
        body = orjson.loads(event.body)
        change(body)
        rewritten.append(event._replace(body=orjson.dumps(body), received_at=body.get("receivedAt", event.received_at)))
    return rewritten


class BodyRewritingStore(StoreProxy):
    def __init__(self, inner: Any, change: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(inner)
        self.change = change

    async def write(self, events: list[StoredEvent], quarantined: Any = None) -> WriteResult:
        return await self.inner.write(rewrite_bodies(events, self.change), quarantined)


class LateStore(StoreProxy):
    """Answers at once and writes 1.5 s later: a 200 before the data is durable."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.pending: set[asyncio.Task[Any]] = set()

    async def write(self, events: list[StoredEvent], quarantined: Any = None) -> WriteResult:
        async def later() -> None:
            await asyncio.sleep(1.5)
            await self.inner.write(events, quarantined)

        task = asyncio.ensure_future(later())
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        return WriteResult(stored=len(events), duplicates=0, quarantined=len(quarantined or ()))


class QuarantineLosingStore(StoreProxy):
    """Answers a quarantine source's invalid messages 200 but keeps nothing aside."""

    async def write(self, events: list[StoredEvent], quarantined: Any = None) -> WriteResult:
        result = await self.inner.write(events, [])
        return result._replace(quarantined=len(quarantined or ()))


class NoDedupeStore(StoreProxy):
    """Stores a re-sent messageId again (under a shadow key, so the table allows it)."""

    async def write(self, events: list[StoredEvent], quarantined: Any = None) -> WriteResult:
        seen: set[tuple[str, str]] = set()
        kept = []
        for event in events:
            key = (event.workspace_id, event.message_id)
            query = EventQuery(workspace_id=event.workspace_id, message_id=event.message_id, limit=1)
            if key in seen or (await self.inner.read_events(query)).items:
                event = event._replace(message_id=f"{event.message_id}~dup{os.urandom(4).hex()}")
            seen.add(key)
            kept.append(event)
        return await self.inner.write(kept, quarantined)


class LastCopyWinsStore(StoreProxy):
    """A duplicate overwrites the stored event (what an upsert on messageId would do)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.latest: dict[tuple[str, str], bytes] = {}

    async def write(self, events: list[StoredEvent], quarantined: Any = None) -> WriteResult:
        for event in events:
            query = EventQuery(workspace_id=event.workspace_id, message_id=event.message_id, limit=1)
            if (await self.inner.read_events(query)).items:
                self.latest[(event.workspace_id, event.message_id)] = event.body
        return await self.inner.write(events, quarantined)

    async def read_events(self, query: EventQuery) -> EventPage:
        page: EventPage = await self.inner.read_events(query)
        for item in page.items:
            newer = self.latest.get((item["workspaceId"], item["event"].get("messageId")))
            if newer is not None:
                item["event"] = orjson.loads(newer)
        return page


class ProfileProxy(StoreProxy):
    pass


class ReplacingProfiles(ProfileProxy):
    """Updates replace identifiers and traits instead of merging them (unsent keys are lost)."""

    async def merge_user(self, workspace_id: str, user_id: str, identifiers: Any, traits: Any, now: str) -> Any:
        current = await self.inner.get_user(workspace_id, user_id)
        if current is None:
            return None
        clear_ids = dict.fromkeys(current["identifiers"]) | (identifiers or {})
        clear_traits = dict.fromkeys(current["traits"]) | (traits or {})
        return await self.inner.merge_user(workspace_id, user_id, clear_ids, clear_traits, now)


class NullKeepingProfiles(ProfileProxy):
    """A key sent as null is ignored instead of removed."""

    async def merge_user(self, workspace_id: str, user_id: str, identifiers: Any, traits: Any, now: str) -> Any:
        def strip(patch: Any) -> Any:
            return {k: v for k, v in patch.items() if v is not None} if isinstance(patch, dict) else patch

        return await self.inner.merge_user(workspace_id, user_id, strip(identifiers), strip(traits), now)


class LeakyProfiles(ProfileProxy):
    """Looks users up in every workspace: a token of one workspace reaches another's users."""

    def __init__(self, inner: Any, workspaces: list[str]) -> None:
        super().__init__(inner)
        self.workspaces = workspaces

    def order(self, own: str) -> list[str]:
        return [own] + [w for w in self.workspaces if w != own]

    async def get_user(self, workspace_id: str, user_id: str) -> Any:
        for workspace in self.order(workspace_id):
            found = await self.inner.get_user(workspace, user_id)
            if found is not None:
                return found
        return None

    async def merge_user(self, workspace_id: str, user_id: str, identifiers: Any, traits: Any, now: str) -> Any:
        for workspace in self.order(workspace_id):
            found = await self.inner.merge_user(workspace, user_id, identifiers, traits, now)
            if found is not None:
                return found
        return None

    async def delete_user(self, workspace_id: str, user_id: str) -> bool:
        for workspace in self.order(workspace_id):
            if await self.inner.delete_user(workspace, user_id):
                return True
        return False

    async def search_users(self, workspace_id: str, filters: Any, limit: int, after: Any, before: Any) -> Any:
        for workspace in self.order(workspace_id):
            page = await self.inner.search_users(workspace, filters, limit, after, before)
            if page.users:
                return page
        return page


# --- the faults -------------------------------------------------------------------------------

Build = Callable[[ASGIApp, Runtime, "Secrets"], ASGIApp]


@dataclass(frozen=True)
class Secrets:
    write_key: str
    token: str


@dataclass(frozen=True)
class Mutant:
    name: str
    breaks: str
    must_fail: tuple[str, ...]
    build: Build
    env: dict[str, str] = field(default_factory=dict)


def fault(handler: Handler) -> Build:
    return lambda app, runtime, secrets: Fault(app, handler)


async def store_nothing(scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
    if is_event_path(scope):
        await read_all(receive)
        await respond(send, 200, SUCCESS)
    else:
        await app(scope, receive, send)


async def reject_all(scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
    if is_event_path(scope) or is_profile_path(scope):
        await read_all(receive)
        await respond(send, 400, error_body(400, "Rejected"))
    else:
        await app(scope, receive, send)


def ignore_auth(app: ASGIApp, runtime: Runtime, secrets: Secrets) -> ASGIApp:
    async def handler(scope: Scope, receive: Receive, send: Send, inner: ASGIApp) -> None:
        if is_event_path(scope):
            user = base64.b64encode(f"{secrets.write_key}:".encode()).decode()
            scope = with_header(scope, b"authorization", f"Basic {user}")
        elif is_profile_path(scope):
            token = header(scope, b"authorization").removeprefix("Bearer ").strip()
            if runtime.settings.workspace_for_token(token) is None:
                scope = with_header(scope, b"authorization", f"Bearer {secrets.token}")
        await inner(scope, receive, send)

    return Fault(app, handler)


async def error_on_unknown_fields(scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
    if scope["path"] in SINGLE_PATHS | BATCH_PATHS:
        body = await read_all(receive)
        payload = plain_json(scope, body)
        if any(isinstance(m, dict) and set(m) - KNOWN_FIELDS for m in messages_of(payload)):
            await respond(send, 500, error_body(500, "Internal error"))
            return
        receive = replay(body)
    await app(scope, receive, send)


def all_or_nothing(app: ASGIApp, runtime: Runtime, secrets: Secrets) -> ASGIApp:
    async def handler(scope: Scope, receive: Receive, send: Send, inner: ASGIApp) -> None:
        if scope["path"] in BATCH_PATHS:
            body = await read_all(receive)
            payload = plain_json(scope, body)
            items = messages_of(payload)
            if any(not isinstance(m, dict) or runtime.validators.errors(m) for m in items):
                await respond(send, 400, error_body(400, "Invalid batch: nothing stored"))
                return
            receive = replay(body)
        await inner(scope, receive, send)

    return Fault(app, handler)


CALL_TYPES = {name[0]: name for name in ("track", "identify", "page", "screen", "group", "alias")}


def stand_in(message: dict[str, Any], kind: str) -> dict[str, Any]:
    """A valid message of `kind` with the invalid one's messageId: what a lenient server that fills
    in defaults instead of refusing would store."""
    stand = {"type": kind, "userId": "lenient-stand-in", "event": "Lenient", "groupId": "lenient-group"}
    stand["previousId"] = "lenient-previous"
    if isinstance(message.get("messageId"), str):
        stand["messageId"] = message["messageId"]
    return stand


def stores_invalid(app: ASGIApp, runtime: Runtime, secrets: Secrets) -> ASGIApp:
    """Answers 200 to invalid messages and stores a repaired stand-in (same messageId): what Segment's
    answer allows, but storing what should have been dropped."""

    async def handler(scope: Scope, receive: Receive, send: Send, inner: ASGIApp) -> None:
        path = scope["path"]
        if path not in SINGLE_PATHS | BATCH_PATHS:
            await inner(scope, receive, send)
            return
        body = await read_all(receive)
        payload = plain_json(scope, body)
        if payload is not None:
            kind = CALL_TYPES.get(path.removeprefix("/v1/")[:1], "track")
            if isinstance(payload, list):  # a bare array of messages: take them as a batch
                payload, path = {"batch": payload}, "/v1/batch"
            if path in BATCH_PATHS and isinstance(payload, dict) and isinstance(payload.get("batch"), dict):
                payload["batch"] = list(payload["batch"].values())  # {"0": …} as PHP encodes a sparse array
            if path in BATCH_PATHS and isinstance(payload, dict) and isinstance(payload.get("batch"), list):
                payload["batch"] = [
                    stand_in(m, str(m.get("type", "track")))
                    if not isinstance(m, dict) or runtime.validators.errors(m)
                    else m
                    for m in payload["batch"]
                    if isinstance(m, dict)
                ]
            elif isinstance(payload, dict) and runtime.validators.errors({**payload, "type": kind}):
                payload = {**stand_in(payload, kind), **{k: payload[k] for k in ("writeKey",) if k in payload}}
                payload.pop("type")
            body = orjson.dumps(payload)
            scope = with_header({**scope, "path": path, "raw_path": path.encode()}, b"content-length", str(len(body)))
        await inner(scope, replay(body), send)

    return Fault(app, handler)


async def trust_forwarded_for(scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
    forwarded = header(scope, b"x-forwarded-for")
    if forwarded:
        scope = {**scope, "client": (forwarded.split(",")[0].strip(), 0)}
    await app(scope, receive, send)


def transformed(applies: Callable[[Scope], bool], transform: Transform) -> Handler:
    async def handler(scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        if applies(scope):
            await call_transformed(app, scope, receive, send, transform)
        else:
            await app(scope, receive, send)

    return handler


def accepted_202(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, Any, bytes]:
    return (202 if status == 200 else status), headers, body


def other_success_body(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, Any, bytes]:
    if status == 200:
        return 200, [(b"content-type", b"text/plain")], b"OK"
    return status, headers, body


def drop_error_details(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, Any, bytes]:
    if status >= 400:
        document = orjson.loads(body)
        for key in ("errors", "limit", "limitValue", "parameter"):
            document.pop(key, None)
        body = orjson.dumps(document)
    return status, headers, body


def vague_profile_errors(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, Any, bytes]:
    if status >= 400:
        return 400, [(b"content-type", b"application/json")], error_body(400, "Bad request")
    return status, headers, body


def no_request_id(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, Any, bytes]:
    return status, [(k, v) for k, v in headers if k.lower() != b"x-request-id"], body


async def json_only(scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
    if is_event_path(scope) and not header(scope, b"content-type").startswith("application/json"):
        await read_all(receive)
        await respond(send, 415, error_body(415, "Send application/json"))
    else:
        await app(scope, receive, send)


async def no_compression(scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
    if is_event_path(scope) and header(scope, b"content-encoding") not in ("", "identity"):
        await read_all(receive)
        await respond(send, 415, error_body(415, "Compression is not supported"))
    else:
        await app(scope, receive, send)


async def null_ids_rejected(scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
    if scope["path"] in SINGLE_PATHS | BATCH_PATHS:
        body = await read_all(receive)
        for message in messages_of(plain_json(scope, body)):
            if isinstance(message, dict) and any(
                k in message and message[k] is None for k in ("userId", "anonymousId")
            ):
                await respond(send, 400, error_body(400, "userId must be a string"))
                return
        receive = replay(body)
    await app(scope, receive, send)


async def no_envelope_merge(scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
    if scope["path"] in BATCH_PATHS:
        body = await read_all(receive)
        payload = plain_json(scope, body)
        if isinstance(payload, dict):
            for key in ("context", "integrations", "sentAt"):
                payload.pop(key, None)
            body = orjson.dumps(payload)
            scope = with_header(scope, b"content-length", str(len(body)))
        receive = replay(body)
    await app(scope, receive, send)


async def lenient_profile_bodies(scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
    if is_profile_path(scope) and scope["method"] == "POST":
        body = await read_all(receive)
        try:
            payload = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        payload = {k: v for k, v in payload.items() if k not in ("identifiers", "traits") or isinstance(v, dict)}
        body = orjson.dumps(payload)
        scope = with_header(scope, b"content-type", "application/json")
        scope = with_header(scope, b"content-length", str(len(body)))
        receive = replay(body)
    await app(scope, receive, send)


def query_rewrite(keep: Callable[[str], bool]) -> Handler:
    async def handler(scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        if scope["method"] == "GET" and scope["path"].removeprefix("/api/v1") == "/identify":
            pairs = parse_qsl(scope["query_string"].decode(), keep_blank_values=True)
            scope = {**scope, "query_string": urlencode([(k, v) for k, v in pairs if keep(k)]).encode()}
        await app(scope, receive, send)

    return handler


async def delete_noop(scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
    path = scope["path"].removeprefix("/api/v1")
    if scope["method"] == "DELETE" and path.startswith("/identify/"):
        await respond(send, 200, orjson.dumps({"id": path.rsplit("/", 1)[1], "deleted": True}))
    else:
        await app(scope, receive, send)


def remember_raw(app: ASGIApp) -> ASGIApp:
    """Keeps the messages as sent (by messageId) for storage faults that store them raw."""

    async def handler(scope: Scope, receive: Receive, send: Send, inner: ASGIApp) -> None:
        if is_event_path(scope):
            body = await read_all(receive)
            raw = {
                m["messageId"]: m
                for m in messages_of(plain_json(scope, body))
                if isinstance(m, dict) and isinstance(m.get("messageId"), str)
            }
            RAW_MESSAGES.set(raw)
            receive = replay(body)
        await inner(scope, receive, send)

    return Fault(app, handler)


def storage_fault(change: Callable[[dict[str, Any]], None]) -> Build:
    def build(app: ASGIApp, runtime: Runtime, secrets: Secrets) -> ASGIApp:
        runtime.storage = BodyRewritingStore(runtime.storage, change)
        return remember_raw(app)

    return build


def unenriched(body: dict[str, Any]) -> None:
    """Store the message as the client sent it: no ip/userAgent, no clock fixes, no id normalising."""
    raw = (RAW_MESSAGES.get() or {}).get(body.get("messageId", ""), {})
    context = body.get("context") or {}
    for key in ("ip", "userAgent"):
        if key not in (raw.get("context") or {}):
            context.pop(key, None)
    for key in ("userId", "groupId", "writeKey", "timestamp", "originalTimestamp"):
        if key in raw:
            body[key] = raw[key]
        elif key in ("timestamp", "originalTimestamp"):
            body.pop(key, None)
    if body.get("messageId", "").startswith("api-"):
        body["messageId"] = f"{os.urandom(8).hex()}-generated"


def client_clock(body: dict[str, Any]) -> None:
    raw = (RAW_MESSAGES.get() or {}).get(body.get("messageId", ""), {})
    clock = raw.get("sentAt") or raw.get("timestamp") or raw.get("receivedAt")
    if isinstance(clock, str):
        body["receivedAt"] = clock


def drop_violations(body: dict[str, Any]) -> None:
    protocols = (body.get("context") or {}).get("protocols")
    if isinstance(protocols, dict):
        protocols.pop("violations", None)


def drop_properties(body: dict[str, Any]) -> None:
    body.pop("properties", None)


def wrap_storage(kind: Callable[[Any], Any]) -> Build:
    def build(app: ASGIApp, runtime: Runtime, secrets: Secrets) -> ASGIApp:
        runtime.storage = kind(runtime.storage)
        return app

    return build


def wrap_profiles(kind: Callable[[Any, Runtime], Any]) -> Build:
    def build(app: ASGIApp, runtime: Runtime, secrets: Secrets) -> ASGIApp:
        runtime.profiles = kind(runtime.profiles, runtime)
        return app

    return build


def positives(*suites: str) -> tuple[str, ...]:
    return tuple(f"{suite}.accept.*" for suite in suites)


EVENT_SUITES = (
    "track",
    "identify",
    "page",
    "screen",
    "group",
    "alias",
    "paths",
    "auth",
    "content",
    "batch",
    "captures",
)

MUTANTS: list[Mutant] = [
    Mutant(
        "store_nothing",
        "answers 200 to every event request and stores nothing",
        (
            "track.reject.*",
            "identify.reject.*",
            "page.reject.*",
            "screen.reject.*",
            "group.reject.*",
            "alias.reject.*",
            "paths.reject.*",
            "auth.reject.*",
            "content.reject.*",
            "batch.reject.*",
            "limits.reject.*",
            "response.error-shape",
            "track.accept.minimal",
            "store.*",
            "enrich.*",
            "auth.inspect.write-key-not-stored",
            "batch.inspect.*",
        ),
        fault(store_nothing),
    ),  # fmt: skip
    Mutant(
        "reject_all",
        "answers 400 to every event and profile request",
        (
            *positives(*EVENT_SUITES, "limits"),
            "response.success-exact",
            "response.success-exact-batch",
            "response.request-id",
            "response.cors-preflight",
            "profiles.create.minimal",
            "profiles.create.empty-body",
            "profiles.get.existing",
            "profiles.get.api-v1-prefix",
            "profiles.update.*",
            "profiles.track.*",
            "profiles.delete.existing",
            "profiles.delete.twice",
            "profiles.search.by-email",
            "profiles.search.nested-path",
            "profiles.search.number-and-boolean",
            "profiles.search.pagination",
            "profiles.search.limit-100",
            "profiles.isolation.*",
            "profiles.link.*",
            "profiles.search.token-other-filters",
        ),
        fault(reject_all),
    ),  # fmt: skip
    Mutant(
        "ack_before_persist",
        "answers 200 before the events are written (written 1.5 s later)",
        ("store.readable-after-2xx", "track.accept.minimal", "enrich.context-ip-added", "paths.accept.track"),
        wrap_storage(LateStore),
    ),
    Mutant(
        "quarantine_lost",
        "a quarantine source answers invalid messages 200 and keeps nothing aside",
        ("quarantine.*",),
        wrap_storage(QuarantineLosingStore),
    ),
    Mutant(
        "no_enrichment",
        "stores messages as sent: no context.ip/userAgent, no skew correction, ids as sent",
        (
            "enrich.context-ip-added",
            "enrich.user-agent-added",
            "enrich.timestamp-*",
            "enrich.message-id-generated",
            "enrich.original-timestamp-overwritten",
            "track.accept.integer-user-id",
            "group.accept.integer-group-id",
            "auth.inspect.write-key-not-stored",
            "batch.inspect.envelope-sent-at",
        ),
        storage_fault(unenriched),
    ),  # fmt: skip
    Mutant(
        "client_clock",
        "uses the client's clock (sentAt/timestamp/receivedAt) as receivedAt",
        ("enrich.received-at-server-clock", "enrich.received-at-overwritten"),
        storage_fault(client_clock),
    ),
    Mutant(
        "drops_properties",
        "stores events without their properties",
        ("track.accept.revenue-number", "track.accept.properties-roundtrip", "page.accept.minimal"),
        storage_fault(drop_properties),
    ),
    Mutant(
        "unflagged_quality",
        "stores quality violations without recording them in context.protocols.violations",
        ("store.quality-flagged",),
        storage_fault(drop_violations),
    ),
    Mutant(
        "ignores_auth",
        "accepts any or no write key, and any or no profile token",
        (
            "auth.reject.*",
            "profiles.*.no-token",
            "profiles.create.reject.unknown-token",
            "profiles.create.reject.write-key",
        ),
        ignore_auth,
    ),
    Mutant(
        "error_500_on_unknown_fields",
        "answers 500 when a message has a top-level field it does not know",
        ("track.accept.unknown-top-level-field",),
        fault(error_on_unknown_fields),
    ),
    Mutant(
        "all_or_nothing_batch",
        "rejects a whole batch when one item is invalid",
        (
            "batch.reject.one-invalid-of-three",
            "batch.reject.first-invalid",
            "batch.reject.item-missing-type",
            "batch.reject.item-unknown-type",
            "batch.reject.item-not-object",
        ),
        all_or_nothing,
    ),  # fmt: skip
    Mutant(
        "no_dedupe",
        "stores a re-sent messageId again",
        ("store.dedupe-resend", "store.dedupe-within-batch", "store.dedupe-across-paths"),
        wrap_storage(NoDedupeStore),
    ),
    Mutant(
        "last_copy_wins",
        "a duplicate overwrites the stored event",
        ("store.first-copy-wins",),
        wrap_storage(LastCopyWinsStore),
    ),
    Mutant(
        "stores_invalid",
        "answers 200 to invalid messages and stores a repaired stand-in under their messageId",
        (
            "track.reject.missing-event",
            "track.reject.event-not-string",
            "track.reject.no-identity",
            "track.reject.both-ids-null",
            "track.reject.user-id-object",
            "track.reject.properties-array",
            "track.reject.context-string",
            "track.reject.integrations-array",
            "identify.reject.no-identity",
            "identify.reject.traits-string",
            "page.reject.no-identity",
            "screen.reject.no-identity",
            "group.reject.missing-group-id",
            "group.reject.group-id-object",
            "group.reject.no-identity",
            "alias.reject.*",
            "batch.reject.batch-not-array",
            "content.reject.json-array",
        ),
        stores_invalid,
    ),  # fmt: skip
    Mutant(
        "trusts_any_forwarded_for",
        "takes context.ip from X-Forwarded-For whoever sent it",
        ("enrich.x-forwarded-for-untrusted",),
        fault(trust_forwarded_for),
    ),
    Mutant(
        "answers_202",
        "answers 202 instead of 200",
        ("track.accept.minimal", "paths.accept.*", "response.success-exact", "response.success-exact-batch"),
        fault(transformed(is_event_path, accepted_202)),
    ),
    Mutant(
        "other_success_body",
        'answers 200 with a text body instead of {"success": true}',
        ("response.success-exact", "response.success-exact-batch", "paths.accept.*", "content.accept.json"),
        fault(transformed(is_event_path, other_success_body)),
    ),
    Mutant(
        "errors_without_field",
        "error bodies do not name the field, index or limit",
        (
            "track.reject.missing-event",
            "track.reject.no-identity",
            "identify.reject.age-string",
            "batch.reject.one-invalid-of-three",
            "limits.reject.event-over-max",
            "response.error-shape",
            "group.reject.missing-group-id",
            "alias.reject.missing-previous-id",
        ),
        fault(transformed(is_event_path, drop_error_details)),
    ),  # fmt: skip
    Mutant(
        "no_size_limits",
        "limits ten times larger than the spec's",
        ("limits.reject.*",),
        lambda app, runtime, secrets: app,
        {
            "COLLECTOR_MAX_EVENT_BYTES": "327680",
            "COLLECTOR_MAX_REQUEST_BYTES": "5120000",
            "COLLECTOR_MAX_BATCH_EVENTS": "25000",
        },
    ),
    Mutant(
        "json_content_type_only",
        "answers 415 unless Content-Type is application/json",
        (
            "content.accept.text-plain",
            "content.accept.text-plain-charset",
            "content.accept.no-content-type",
            "content.accept.form-urlencoded",
            "captures.accept.next-*",
        ),
        fault(json_only),
    ),  # fmt: skip
    Mutant(
        "no_compression",
        "answers 415 to gzip and deflate bodies",
        (
            "content.accept.gzip",
            "content.accept.deflate",
            "content.accept.gzip-chunked",
            "limits.accept.gzip-*",
            "content.reject.corrupt-gzip",
        ),
        fault(no_compression),
    ),  # fmt: skip
    Mutant(
        "null_ids_rejected",
        "treats userId/anonymousId null as an invalid value, not as absent",
        (
            "track.accept.user-null-with-anonymous",
            "track.accept.anonymous-null-with-user",
            "batch.accept.null-ids",
            "captures.accept.python-batch",
        ),
        fault(null_ids_rejected),
    ),  # fmt: skip
    Mutant(
        "no_envelope_merge",
        "ignores the batch envelope's context, integrations and sentAt",
        ("batch.accept.envelope-merge", "batch.inspect.envelope-sent-at"),
        fault(no_envelope_merge),
    ),
    Mutant(
        "track_replaces_traits",
        "profile updates replace identifiers/traits instead of merging them",
        (
            "profiles.track.merge-traits",
            "profiles.track.nested-object-replaced",
            "profiles.track.keeps-identifiers",
            "profiles.track.null-unknown-key",
            "profiles.update.merge-identifiers",
            "profiles.update.keeps-traits",
            "profiles.update.override-identifier",
            "profiles.update.merge-traits",
            "profiles.link.identify-event-merges",
            "profiles.track.override-trait",
        ),
        wrap_profiles(lambda inner, runtime: ReplacingProfiles(inner)),
    ),  # fmt: skip
    Mutant(
        "null_does_not_remove",
        "a key sent as null is kept instead of removed",
        ("profiles.track.null-removes-trait", "profiles.update.null-removes-identifier"),
        wrap_profiles(lambda inner, runtime: NullKeepingProfiles(inner)),
    ),
    Mutant(
        "leaky_workspaces",
        "a profile token reaches users of other workspaces",
        ("profiles.isolation.*",),
        wrap_profiles(lambda inner, runtime: LeakyProfiles(inner, list(runtime.settings.workspaces))),
    ),
    Mutant(
        "vague_profile_errors",
        "every profile-API error is a 400 'Bad request'",
        (
            "profiles.get.unknown",
            "profiles.get.invalid-id",
            "profiles.update.unknown-user",
            "profiles.track.unknown-user",
            "profiles.delete.unknown",
            "profiles.delete.invalid-id",
            "profiles.create.reject.identifiers-string",
            "profiles.create.reject.traits-array",
            "profiles.create.reject.no-token",
            "profiles.create.reject.unknown-token",
            "profiles.update.invalid-id",
            "profiles.track.invalid-id",
            "profiles.*.reject.text-plain",
            "profiles.*.reject.not-object",
            "profiles.get.no-token",
            "profiles.search.no-token",
            "profiles.delete.existing",
            "profiles.delete.twice",
        ),
        fault(transformed(is_profile_path, vague_profile_errors)),
    ),  # fmt: skip
    Mutant(
        "lenient_profile_bodies",
        "coerces any profile body into {} (wrong JSON, wrong types, any Content-Type)",
        (
            "profiles.create.reject.identifiers-string",
            "profiles.create.reject.traits-array",
            "profiles.create.reject.text-plain",
            "profiles.create.reject.malformed-json",
            "profiles.*.reject.not-object",
            "profiles.*.reject.text-plain",
        ),
        fault(lenient_profile_bodies),
    ),  # fmt: skip
    Mutant(
        "ignores_paging",
        "search ignores limit and pageToken",
        (
            "profiles.search.pagination",
            "profiles.search.limit-*",
            "profiles.search.bad-page-token",
            "profiles.search.token-other-filters",
        ),
        fault(query_rewrite(lambda name: name not in ("limit", "pageToken"))),
    ),  # fmt: skip
    Mutant(
        "search_ignores_filters",
        "search returns every user of the workspace",
        (
            "profiles.search.by-email",
            "profiles.search.nested-path",
            "profiles.search.number-and-boolean",
            "profiles.search.every-parameter-must-match",
            "profiles.search.case-sensitive",
            "profiles.search.traits-not-searched",
            "profiles.search.pagination",
        ),
        fault(query_rewrite(lambda name: name in ("limit", "pageToken"))),
    ),  # fmt: skip
    Mutant(
        "delete_does_nothing",
        "DELETE answers deleted: true and keeps the user",
        ("profiles.delete.existing", "profiles.delete.twice", "profiles.delete.unknown", "profiles.delete.invalid-id"),
        fault(delete_noop),
    ),
    Mutant(
        "no_request_id",
        "answers without X-Request-Id",
        ("response.request-id",),
        fault(transformed(lambda scope: True, no_request_id)),
    ),
]


# --- serving ----------------------------------------------------------------------------------


class MutantFarm:
    """Every mutant on its own port, served from one background thread and event loop."""

    def __init__(self, directory: Path, config: Path, secrets: Secrets) -> None:
        self.urls: dict[str, str] = {}
        self.servers: list[uvicorn.Server] = []
        # Bound here and handed to uvicorn, so no two mutants can race for the same free port.
        self.sockets: list[socket.socket] = []
        for mutant in MUTANTS:
            environ = {"COLLECTOR_STORAGE": f"sqlite:///{directory / (mutant.name + '.db')}", **mutant.env}
            app = create_app(load(config, environ=environ))
            asgi = mutant.build(app, app.state.runtime, secrets)
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            self.sockets.append(listener)
            self.servers.append(uvicorn.Server(uvicorn.Config(asgi, log_level="warning", lifespan="on")))
            self.urls[mutant.name] = f"http://127.0.0.1:{listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, name="mutant-farm", daemon=True)

    def _serve(self) -> None:
        async def all_servers() -> None:
            await asyncio.gather(
                *(server.serve(sockets=[listener]) for server, listener in zip(self.servers, self.sockets, strict=True))
            )

        asyncio.run(all_servers())

    def start(self) -> MutantFarm:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not all(server.started for server in self.servers):
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("mutant servers did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.should_exit = True
        self.thread.join(timeout=20)
        for listener in self.sockets:
            listener.close()
