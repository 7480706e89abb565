"""The authentication stage: which source sent this request, or which workspace a token opens.

One resolver (`write_key_of`) for every use, CORS included. Write keys are looked for in this
order: HTTP Basic (key as user, with or without the colon), the body's `writeKey` (event or
batch envelope), then `?writeKey=`. A Bearer header on the event API is an OAuth token that
accompanies a body key, so it is skipped there. The first key found decides; an unknown key is
401, never silently dropped.

Then the web origin is checked against the source the request is authenticated as (403):
- a `server` key is refused whenever the request carries an Origin header, so a server key
  leaked into a web page stops working at once;
- any other key (`browser`, or a key without a kind) is accepted from the source's
  `allowedOrigins`, and without an Origin (server SDKs, pixels).
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Iterable, Mapping
from typing import Any

from collector.errors import CollectorError, Unauthorized
from collector.pipeline.intake import Caller
from collector.settings import Settings, Source, Workspace


@functools.lru_cache(maxsize=1024)  # a site sends one header value on every request: decode it once
def write_key_from_basic(authorization: str | None) -> str | None:
    if not authorization or authorization[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized(
            "Malformed Basic credentials",
            "Send Authorization: Basic base64(writeKey + ':').",
        ) from None
    return decoded.partition(":")[0] or None


def write_key_of(authorization: str | None, body_key: Any, query_key: str | None) -> str | None:
    """The request's write key: HTTP Basic, else the body's `writeKey`, else `?writeKey=`."""
    key = write_key_from_basic(authorization)
    if key is None:
        key = body_key if isinstance(body_key, str) and body_key else query_key
    return key or None


def visible_write_key(caller: Caller) -> str | None:
    """The key as far as it can be known before the body is read (for CORS answers)."""
    try:
        return write_key_of(caller.authorization, None, caller.query_write_key)
    except Unauthorized:
        return None  # the endpoint answers the malformed header with its own 401


def authenticate_source(caller: Caller, payload: Mapping[str, Any], settings: Settings) -> Source:
    """The source that sent the request (401), allowed from the request's web origin (403)."""
    key = write_key_of(caller.authorization, payload.get("writeKey"), caller.query_write_key)
    if not key:
        raise Unauthorized(
            "Missing write key",
            "Send the write key as the HTTP Basic user, as `writeKey` in the body, or as ?writeKey=.",
        )
    source = settings.write_keys.get(key)
    if source is None:
        raise Unauthorized("Unknown write key", "No source has this write key. Check the key in your SDK set-up.")
    if caller.origin is not None:
        check_origin(source, settings.key_kinds.get(key), caller.origin)
    return source


def check_origin(source: Source, kind: str | None, origin: str) -> None:
    if kind == "server":
        raise ServerKeyInBrowser(
            more_info=f"This write key of source {source.id} is a server key: it is refused from web pages "
            "(the request has an Origin header). Use one of the source's browser keys there."
        )
    if not origin_allowed(origin, source.allowed_origins):
        raise OriginNotAllowed(more_info=f"Source {source.id} does not accept events from {origin}.")


def origin_allowed(origin: str, allowed: Iterable[str]) -> bool:
    """`*`, an exact origin, or `scheme://*.domain` for any subdomain of domain."""
    for pattern in allowed:
        if pattern == "*" or pattern == origin:
            return True
        scheme, sep, host = pattern.partition("://*.")
        if sep and origin.startswith(scheme + "://") and origin.endswith("." + host):
            return True
    return False


class OriginNotAllowed(CollectorError):
    status = 403
    code = "origin_not_allowed"
    message = "Origin not allowed"
    more_info = "This source does not accept events from that web origin (allowedOrigins in the config)."


class ServerKeyInBrowser(OriginNotAllowed):
    code = "server_key_in_browser"
    message = "Server key used from a web page"


def bearer_token(authorization: str | None) -> str | None:
    if not authorization or authorization[:7].lower() != "bearer ":
        return None
    return authorization[7:].strip() or None


def authenticate_workspace(authorization: str | None, settings: Settings) -> Workspace:
    """The workspace of a profile-API bearer token; 401 when missing or unknown."""
    token = bearer_token(authorization)
    if token is None:
        raise Unauthorized("Missing token", "Send Authorization: Bearer <token>.")
    workspace = settings.workspace_for_token(token)
    if workspace is None:
        raise Unauthorized("Invalid token", "The bearer token is not valid for any workspace.")
    return workspace


def require_admin(authorization: str | None, settings: Settings) -> None:
    token = bearer_token(authorization)
    if token is None or not settings.is_admin_token(token):
        raise AdminRequired()


class AdminRequired(CollectorError):
    status = 401
    code = "unauthorized"
    message = "Admin token required"
    more_info = "The read-back API needs Authorization: Bearer <admin token> (adminTokens in the config)."
