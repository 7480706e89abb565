"""The intake stage: HTTP body → decoded JSON → (envelope, messages).

Limits are measured after decompression. A body is read in chunks so a chunked upload
without Content-Length cannot exceed the cap, and inflation stops one byte past the cap so
a gzip bomb costs at most `max_bytes` of memory.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from starlette.requests import Request

from collector.errors import BadRequest, InvalidJSON, PayloadTooLarge, UnsupportedEncoding

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def too_large(limit: str, value: int, what: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        "Payload too large",
        f"{what} is larger than {limit} ({value} bytes, measured after decompression). Send smaller requests.",
        limit=limit,
        limitValue=value,
    )


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, decompressed; 413 past `max_bytes`, 415 for unknown encodings."""
    headers = request.headers
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity") and encoding not in _WBITS:
        raise UnsupportedEncoding(more_info=f"Content-Encoding {encoding!r} is not supported; use gzip or deflate.")
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large("maxRequestBytes", max_bytes, "The request body")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large("maxRequestBytes", max_bytes, "The request body")
        chunks.append(chunk)
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
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


def parse_json(body: bytes) -> dict[str, Any]:
    """One JSON object, whatever the Content-Type (browsers send text/plain)."""
    if not body:
        raise InvalidJSON("Empty body", "The body must be one JSON object; it was empty.")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(more_info=f"The body is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise InvalidJSON(
            "Body is not a JSON object",
            f"The top level must be a JSON object, got {type(payload).__name__}.",
        )
    return payload


def split_batch(payload: dict[str, Any], max_events: int) -> list[Any]:
    """The `batch` array of an envelope; 400 if absent, 413 past the count limit."""
    batch = payload.get("batch")
    if not isinstance(batch, list):
        raise BadRequest(
            "Invalid batch",
            'A batch body is {"batch": [message, ...]}; `batch` must be an array.',
            code="invalid_batch",
            errors=[{"pointer": "/batch", "keyword": "type", "message": "batch must be an array of messages"}],
        )
    if not batch:
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
