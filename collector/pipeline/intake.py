"""The intake stage: ASGI request → who sent it (Caller) and its body → decoded JSON → messages.

A body is one JSON object whatever its Content-Type (text/plain and no type at all are what a
browser sends without a preflight), or a form (`application/x-www-form-urlencoded`, as PostHog's
snippet sends it) whose `data` field holds the JSON or its base64.

Limits are measured after decompression. A body is read in chunks so a chunked upload
without Content-Length cannot exceed the cap, and inflation stops one byte past the cap so
a gzip bomb costs at most `max_bytes` of memory.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import parse_qs

from collector import jsonio
from collector.errors import BadRequest, InvalidJSON, PayloadTooLarge, UnsupportedEncoding

# The ASGI shapes this stage reads (the same as starlette.types; the pipeline imports no web framework).
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

_NUL_ESCAPE = b"\\u0000"  # PostgreSQL cannot store it; raw NUL bytes are not JSON at all
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def too_large(limit: str, value: int, what: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        "Payload too large",
        f"{what} is larger than {limit} ({value} bytes, measured after decompression). Send smaller requests.",
        limit=limit,
        limitValue=value,
    )


class ClientDisconnected(BadRequest):
    code = "client_disconnected"
    message = "Client disconnected"
    more_info = "The connection closed before the whole body arrived; nothing was stored."


@dataclass(slots=True)
class Caller:
    """What the pipeline needs to know of an HTTP request, read once from its ASGI scope."""

    authorization: str | None
    query_write_key: str | None  # ?writeKey=
    peer: str | None  # the socket's address
    user_agent: str | None
    forwarded_for: str  # every X-Forwarded-For line, joined with commas ("" when none)
    content_encoding: str  # lower case, "" when absent
    content_length: str | None
    origin: str | None = None  # the Origin header: a browser's web page sent it
    gpc: bool = False  # Sec-GPC: 1 (Global Privacy Control)
    dnt: bool = False  # DNT: 1 (Do Not Track)
    content_type: bytes | None = None  # as sent; only a body that is not JSON looks at it

    @classmethod
    def of(cls, scope: Scope, headers: dict[bytes, bytes] | None = None) -> Caller:
        """`headers`: dict(scope["headers"]) when the caller already built it."""
        if headers is None:
            headers = dict(scope["headers"])
        get = headers.get
        authorization, user_agent = get(b"authorization"), get(b"user-agent")
        encoding, length, origin = get(b"content-encoding"), get(b"content-length"), get(b"origin")
        content_type = get(b"content-type")
        query_key = None
        if scope.get("query_string"):
            query_key = (parse_qs(scope["query_string"].decode("latin-1")).get("writeKey") or [None])[0]
        forwarded = ""
        if b"x-forwarded-for" in headers:  # a dict keeps one line; every line counts
            forwarded = ",".join(v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for")
        client = scope.get("client")
        return cls(
            authorization=authorization.decode("latin-1") if authorization is not None else None,
            query_write_key=query_key,
            peer=client[0] if client else None,
            user_agent=header_text(user_agent) if user_agent is not None else None,
            forwarded_for=forwarded,
            content_encoding=encoding.decode("latin-1").strip().lower() if encoding is not None else "",
            content_length=length.decode("latin-1") if length is not None else None,
            origin=origin.decode("latin-1") if origin is not None else None,
            gpc=get(b"sec-gpc", b"").strip() == b"1",
            dnt=get(b"dnt", b"").strip() == b"1",
            content_type=content_type,
        )


def header_text(raw: bytes) -> str:
    """A header value as text: UTF-8 when it is (browsers and SDKs send UTF-8 product names),
    else Latin-1, HTTP's historical charset, which decodes any byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


async def read_body(receive: Receive, caller: Caller, max_bytes: int) -> bytes:
    """The request body, decompressed; 413 past `max_bytes`, 415 for unknown encodings."""
    encoding = caller.content_encoding
    if encoding not in ("", "identity") and encoding not in _WBITS:
        raise UnsupportedEncoding(more_info=f"Content-Encoding {encoding!r} is not supported; use gzip or deflate.")
    declared = caller.content_length
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large("maxRequestBytes", max_bytes, "The request body")
    message = await receive()
    if message["type"] != "http.request":
        raise ClientDisconnected()
    raw: bytes = message.get("body", b"")
    if len(raw) > max_bytes:
        raise too_large("maxRequestBytes", max_bytes, "The request body")
    if message.get("more_body", False):  # several chunks: count as they come, stop at the cap
        chunks = [raw]
        size = len(raw)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] != "http.request":
                raise ClientDisconnected()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_bytes:
                raise too_large("maxRequestBytes", max_bytes, "The request body")
            chunks.append(chunk)
        raw = b"".join(chunks)
    if encoding in ("", "identity"):
        return raw
    return inflate(raw, encoding, max_bytes)


def inflate(raw: bytes, encoding: str, max_bytes: int) -> bytes:
    if encoding == "deflate" and raw[:1] != b"\x78":
        wbits = -zlib.MAX_WBITS  # raw deflate: some clients omit the zlib header
    else:
        wbits = _WBITS[encoding]
    parts: list[bytes] = []
    size = 0
    remaining = raw
    while True:  # gzip allows several members one after another (RFC 1952)
        inflater = zlib.decompressobj(wbits)
        try:
            part = inflater.decompress(remaining, max_bytes + 1 - size)
        except zlib.error as exc:
            raise BadRequest(
                f"Body is not valid {encoding}",
                f"Decompression failed: {exc}. Send the body compressed as Content-Encoding says, or drop the header.",
                code="invalid_encoding",
            ) from None
        size += len(part)
        parts.append(part)
        if size > max_bytes or inflater.unconsumed_tail:
            raise too_large("maxRequestBytes", max_bytes, "The decompressed request body")
        if not inflater.eof:
            raise BadRequest(
                f"Body is truncated {encoding}",
                "The compressed stream ended early; send the whole body.",
                code="invalid_encoding",
            )
        remaining = inflater.unused_data
        if not remaining or wbits != _WBITS["gzip"]:
            return parts[0] if len(parts) == 1 else b"".join(parts)


class Parsed(NamedTuple):
    payload: dict[str, Any]
    needs_scrub: bool  # it may hold what repair.scrub must mend (lone surrogates, NUL, NaN)


def parse_json(body: bytes) -> Parsed:
    """One JSON object, whatever the Content-Type (browsers send text/plain). Integers keep their
    exact digits (jsonio). A body the parser refuses only for what a real client writes and storage
    can be given mended (a lone surrogate escape, Python's NaN/Infinity) is taken by the lenient
    parser, to be repaired item by item rather than lose the whole request."""
    if not body:
        raise InvalidJSON("Empty body", "The body must be one JSON object; it was empty.")
    # Only an escape can hold a NUL or a surrogate, and a backslash is found with memchr: the
    # six-byte search alone cost ~0.45 ns a byte (the body's many zeros defeat its skip table).
    needs_scrub = b"\\" in body and _NUL_ESCAPE in body
    try:
        payload = jsonio.loads(body)
    except ValueError as exc:
        try:
            payload = jsonio.exact_loads(body, lenient=True)
        except ValueError:
            raise InvalidJSON(more_info=f"The body is not valid JSON: {exc}.") from None
        needs_scrub = True
    if not isinstance(payload, dict):
        raise InvalidJSON(
            "Body is not a JSON object",
            f"The top level must be a JSON object, got {type(payload).__name__}.",
        )
    return Parsed(payload, needs_scrub)


def parse_body(body: bytes, content_type: bytes | None, max_bytes: int) -> tuple[Parsed, int]:
    """(the body's JSON object, its size in bytes): the body itself, or a form's `data` field."""
    if body[:1] == b"{" or not is_form(content_type) or body.lstrip()[:1] == b"{":  # JSON: one byte compared
        return parse_json(body), len(body)
    return parse_form(body, max_bytes)


def is_form(content_type: bytes | None) -> bool:
    return content_type is not None and content_type[: len(FORM)].lower() == FORM


FORM = b"application/x-www-form-urlencoded"


def parse_form(body: bytes, max_bytes: int) -> tuple[Parsed, int]:
    """`data=<JSON or base64 JSON>` (and optionally `writeKey=`, a body key like the JSON's own)."""
    text = body.decode("utf-8", "surrogateescape")  # with the same for %-escapes: bytes reach the JSON parser as sent
    try:
        fields = parse_qs(text, keep_blank_values=True, errors="surrogateescape", max_num_fields=64)
    except ValueError:
        raise BadRequest("Invalid form body", "A form body has at most 64 fields.", code="invalid_form") from None
    data = fields["data"][0] if "data" in fields else None
    if data is not None and data.lstrip()[:1] == "{":
        decoded = data.encode("utf-8", "surrogateescape")
        parsed, size = parse_json(decoded), len(decoded)
    else:
        parsed, size = decode_data(data, max_bytes, FORM_DATA_HINT)
    if "writeKey" in fields and "writeKey" not in parsed.payload:
        parsed.payload["writeKey"] = fields["writeKey"][0]
    return parsed, size


FORM_DATA_HINT = (
    "A form body (application/x-www-form-urlencoded) carries the message in its `data` field: "
    "the JSON object, or its base64."
)
PIXEL_DATA_HINT = "A pixel request carries the message as base64-encoded JSON in the `data` query parameter."


def decode_data(raw: str | None, max_bytes: int, hint: str = PIXEL_DATA_HINT) -> tuple[Parsed, int]:
    """The message in a `data` field (a pixel's query, a form body): base64 (standard or URL-safe,
    padding optional) of a JSON object. `hint` says where `data` belongs when it is missing."""
    if not raw:
        raise BadRequest("Missing data", hint, code="invalid_parameter", parameter="data")
    # An unescaped `+` arrives as a space after query decoding.
    text = raw.strip().replace(" ", "+").replace("-", "+").replace("_", "/")
    if len(text) * 3 // 4 > max_bytes:
        raise too_large("maxEventBytes", max_bytes, "The event")
    try:
        decoded = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(
            "Invalid data",
            "`data` must be base64 (standard or URL-safe) of a JSON object.",
            code="invalid_parameter",
            parameter="data",
        ) from None
    return parse_json(decoded), len(decoded)


def split_batch(payload: dict[str, Any], max_events: int, reject_empty: bool = False) -> list[Any]:
    """The `batch` array of an envelope; 400 if absent, 413 past the count limit. An empty batch
    loses nothing: it is answered 200 unless the source rejects quality problems."""
    batch = payload.get("batch")
    if not isinstance(batch, list):
        raise BadRequest(
            "Invalid batch",
            'A batch body is {"batch": [message, ...]}; `batch` must be an array.',
            code="invalid_batch",
            errors=[{"pointer": "/batch", "keyword": "type", "message": "batch must be an array of messages"}],
        )
    if not batch and reject_empty:
        raise BadRequest(
            "Empty batch",
            "`batch` must hold at least one message.",
            code="invalid_batch",
            errors=[{"pointer": "/batch", "keyword": "minItems", "message": "batch is empty"}],
        )
    if len(batch) > max_events:
        raise PayloadTooLarge(
            "Payload too large",
            f"The batch has {len(batch)} events, more than maxBatchEvents ({max_events}). Split the batch.",
            limit="maxBatchEvents",
            limitValue=max_events,
        )
    return batch
