"""The authentication stage: which source sent this request, or which workspace a token opens.

Write keys are looked for in this order: HTTP Basic (key as user, with or without the
colon), the body's `writeKey` (event or batch envelope), then `?writeKey=`. A Bearer
header on the event API is an OAuth token that accompanies a body key, so it is skipped
there. The first key found decides; an unknown key is 401, never silently dropped.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Mapping
from typing import Any

from collector.errors import CollectorError, Unauthorized
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


def authenticate_source(
    authorization: str | None,
    payload: Mapping[str, Any],
    query_key: str | None,
    write_keys: Mapping[str, Source],
) -> Source:
    key = write_key_from_basic(authorization)
    if key is None:
        body_key = payload.get("writeKey")
        key = body_key if isinstance(body_key, str) and body_key else query_key
    if not key:
        raise Unauthorized(
            "Missing write key",
            "Send the write key as the HTTP Basic user, as `writeKey` in the body, or as ?writeKey=.",
        )
    source = write_keys.get(key)
    if source is None:
        raise Unauthorized("Unknown write key", "No source has this write key. Check the key in your SDK set-up.")
    return source


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
