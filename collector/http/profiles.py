"""The Attuitive-compatible profile API: users with identifiers and traits, per workspace.

    POST   /identify                create   {"identifiers": {...}, "traits": {...}}
    GET    /identify/:userId        read
    GET    /identify?email=…        search on identifiers (AND, dotted paths), paginated
    POST   /identify/:userId        append & merge identifiers (and traits)
    DELETE /identify/:userId        delete
    POST   /track/:userId           append & merge traits   {"traits": {...}}

Every path is also served under /api/v1 (the prefix Attuitive's pagination examples use).
A bearer token opens exactly one workspace; a user of another workspace is a 404, exactly
as a missing one, so ids leak nothing across workspaces.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from collector.errors import BadRequest, InvalidJSON, NotFound, UnsupportedMediaType
from collector.http.responses import json_response
from collector.ids import is_user_id
from collector.pipeline import intake
from collector.pipeline.auth import authenticate_workspace
from collector.pipeline.enrichment import format_time
from collector.pipeline.runtime import Runtime
from collector.schema.dsl import pointer
from collector.settings import new_id
from collector.storage.base import ProfileStore

RESERVED_PARAMS = ("limit", "pageToken")
DEFAULT_LIMIT, MAX_LIMIT = 50, 100
MAX_POSITION = 2**63 - 1  # SQLite and PostgreSQL bigint


class InvalidUserId(BadRequest):
    code = "invalid_user_id"
    message = "Invalid user ID"
    more_info = "The provided user ID is not in the correct format of 'usr_[A-Za-z0-9]{16}'."


class UserNotFound(NotFound):
    code = "user_not_found"
    message = "User with ID not found"
    more_info = "A user with the provided ID does not exist."


class InvalidObject(BadRequest):
    code = "invalid_body"

    def __init__(self, field: str) -> None:
        super().__init__(
            f"Invalid {field}",
            f"The provided {field} should be a valid JSON object.",
            errors=[{"pointer": f"/{field}", "keyword": "type", "message": f"{field} must be an object"}],
        )


def now_text() -> str:
    return format_time(datetime.now(UTC))


def _context(request: Request) -> tuple[Runtime, ProfileStore, str]:
    runtime: Runtime = request.app.state.runtime
    workspace = authenticate_workspace(request.headers.get("authorization"), runtime.settings)
    return runtime, runtime.profiles, workspace.id


def _user_id(request: Request) -> str:
    user_id: str = request.path_params["user_id"]
    if not is_user_id(user_id):
        raise InvalidUserId()
    return user_id


async def _body(request: Request, runtime: Runtime, schema: str) -> dict[str, Any]:
    """The JSON body, checked against the generated schema for this endpoint."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(
            "Unsupported media type",
            f"Send the body as JSON with Content-Type: application/json (got {content_type or 'none'!r}).",
        )
    raw = await intake.read_body(request.receive, intake.Caller.of(request.scope), runtime.settings.max_request_bytes)
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(more_info=f"The body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise InvalidJSON("Body is not a JSON object", "The body must be a JSON object.")
    try:
        orjson.dumps(body)  # what cannot be encoded cannot be stored
    except orjson.JSONEncodeError:
        raise BadRequest("Invalid body", "The body is nested deeper than 255 levels.", code="too_deep") from None
    known = runtime.validators.schemas[schema].get("properties", {})
    unknown = sorted(key for key in body if key not in known)
    if unknown:  # `{"age": null}` or a typo like `trait` must not answer 200 and change nothing
        raise BadRequest(
            "Unknown field" + ("s" if len(unknown) > 1 else ""),
            f"The body may hold only {', '.join(sorted(known))}; unknown: {', '.join(unknown)}.",
            code="unknown_field",
            errors=[
                {"pointer": pointer([key]), "keyword": "additionalProperties", "message": f"unknown field {key!r}"}
                for key in unknown
            ],
        )
    errors = runtime.validators.errors_for(schema, body)
    if errors:
        field = errors[0]["pointer"].lstrip("/").split("/")[0]
        if field in ("identifiers", "traits"):
            raise InvalidObject(field)
        raise BadRequest("Invalid body", errors[0]["message"], errors=errors)
    return body


async def create_user(request: Request) -> Response:
    runtime, store, workspace_id = _context(request)
    body = await _body(request, runtime, "profile-create")
    # Keys sent as null mean "absent", as they do on update.
    identifiers = {k: v for k, v in (body.get("identifiers") or {}).items() if v is not None}
    traits = {k: v for k, v in (body.get("traits") or {}).items() if v is not None}
    user = await store.create_user(workspace_id, new_id("usr_"), identifiers, traits, now_text())
    return json_response(user)


async def get_user(request: Request) -> Response:
    _runtime, store, workspace_id = _context(request)
    user = await store.get_user(workspace_id, _user_id(request))
    if user is None:
        raise UserNotFound()
    return json_response(user)


async def update_user(request: Request) -> Response:
    runtime, store, workspace_id = _context(request)
    user_id = _user_id(request)
    body = await _body(request, runtime, "profile-update")
    user = await store.merge_user(workspace_id, user_id, body.get("identifiers"), body.get("traits"), now_text())
    if user is None:
        raise UserNotFound()
    return json_response(user)


async def track_user(request: Request) -> Response:
    runtime, store, workspace_id = _context(request)
    user_id = _user_id(request)
    body = await _body(request, runtime, "profile-track")
    user = await store.merge_user(workspace_id, user_id, None, body.get("traits"), now_text())
    if user is None:
        raise UserNotFound()
    return json_response(user)


async def delete_user(request: Request) -> Response:
    _runtime, store, workspace_id = _context(request)
    user_id = _user_id(request)
    if not await store.delete_user(workspace_id, user_id):
        raise UserNotFound()
    return json_response({"id": user_id, "deleted": True})


def _invalid(name: str, more: str) -> BadRequest:
    return BadRequest(f"Invalid {name}", more, code="invalid_parameter", parameter=name)


def _filters(request: Request) -> list[tuple[list[str], str]]:
    filters = []
    for name, value in request.query_params.multi_items():
        if name in RESERVED_PARAMS:
            continue
        path = name.split(".")
        if any(not part or '"' in part or "\\" in part for part in path):
            raise _invalid(name, f"`{name}` is not a valid identifier path (dotted keys, e.g. name.last).")
        filters.append((path, value))
    return filters


def _fingerprint(filters: list[tuple[list[str], str]]) -> str:
    return hashlib.sha256(orjson.dumps(sorted(filters))).hexdigest()[:16]


def _encode_token(direction: str, position: int, fingerprint: str) -> str:
    # Starts with "ey" like Attuitive's tokens: base64 of a JSON object.
    raw = orjson.dumps({direction: position, "q": fingerprint})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, fingerprint: str) -> tuple[int | None, int | None]:
    try:
        decoded = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(decoded, dict) or decoded.get("q") != fingerprint:
            raise ValueError
        after, before = decoded.get("after"), decoded.get("before")
        if (after is None) == (before is None):
            raise ValueError
        for value in (after, before):
            if value is not None and (type(value) is not int or not 0 <= value <= MAX_POSITION):
                raise ValueError
        return after, before
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise _invalid(
            "pageToken", "`pageToken` must be a token from meta.nextPageUrl or meta.previousPageUrl of the same search."
        ) from None


async def search_users(request: Request) -> Response:
    _runtime, store, workspace_id = _context(request)
    raw_limit = request.query_params.get("limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise _invalid("limit", f"`limit` must be an integer between 1 and {MAX_LIMIT}; got {raw_limit!r}.")
        limit = int(raw_limit)
    filters = _filters(request)
    fingerprint = _fingerprint(filters)
    after = before = None
    token = request.query_params.get("pageToken")
    if token is not None:
        after, before = _decode_token(token, fingerprint)
    page = await store.search_users(workspace_id, filters, limit, after, before)

    base = [(name, value) for name, value in request.query_params.multi_items() if name not in RESERVED_PARAMS]

    def link(direction: str, position: int | None) -> str | None:
        if position is None:
            return None
        query = [*base, ("limit", str(limit)), ("pageToken", _encode_token(direction, position, fingerprint))]
        return f"{request.url.path}?{urlencode(query)}"

    current = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return json_response(
        {
            "data": page.users,
            "meta": {
                "limit": limit,
                "nextPageUrl": link("after", page.next_after),
                "previousPageUrl": link("before", page.previous_before),
                "url": current,
            },
        }
    )


def routes() -> list[Route]:
    table = []
    for prefix in ("", "/api/v1"):
        table += [
            Route(f"{prefix}/identify", create_user, methods=["POST"]),
            Route(f"{prefix}/identify", search_users, methods=["GET"]),
            Route(f"{prefix}/identify/{{user_id}}", get_user, methods=["GET"]),
            Route(f"{prefix}/identify/{{user_id}}", update_user, methods=["POST"]),
            Route(f"{prefix}/identify/{{user_id}}", delete_user, methods=["DELETE"]),
            Route(f"{prefix}/track/{{user_id}}", track_user, methods=["POST"]),
        ]
    return table
