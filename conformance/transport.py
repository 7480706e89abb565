"""The request stage: a rendered step → exact bytes on the wire → a recorded exchange.

Bodies are serialized by the kit (compact JSON) so sizes are exact; `gzip`/`deflate`
compress after serializing and `chunked` streams without Content-Length. Every request
carries X-Conformance-Run and X-Conformance-Case so a vendor can find the run in logs.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import shlex
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin

import httpx

from conformance.template import Renderer

PAYLOADS_DIR = Path(__file__).resolve().parent / "payloads"
BYTE = re.compile(r"\\x[0-9a-fA-F]{2}")
BYTE_SPLIT = re.compile(r"(\\x[0-9a-fA-F]{2})")
TRANSCRIPT_BODY_CHARS = 4000


@dataclass(frozen=True)
class Credentials:
    write_key: str
    token: str | None = None
    other_token: str | None = None
    quarantine_write_key: str | None = None  # a source that quarantines invalid messages
    strict_write_key: str | None = None  # a source that rejects quality violations


@dataclass
class Exchange:
    """One request and its answer, as the report shows them (credentials redacted)."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    encoding: str | None = None
    wire: bytes = b""  # the bytes sent (compressed when encoding says so)
    chunked: bool = False
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response_text: str = ""
    json: Any = None
    is_json: bool = False

    def transcript(self, secrets: dict[str, str]) -> dict[str, Any]:
        return {
            "request": {
                "method": self.method,
                "url": redact(self.url, secrets),
                "headers": {name: redact(value, secrets) for name, value in self.headers.items()},
                "body": redact(shorten(self.body.decode("utf-8", "replace")), secrets),
                "contentEncoding": self.encoding,
                "chunked": self.chunked,
            },
            "response": {
                "status": self.status,
                "headers": self.response_headers,
                "body": shorten(self.response_text),
            },
        }

    def curl(self, secrets: dict[str, str], body_file: str) -> tuple[str, bool]:
        """A shell line that sends the same request again (credentials as $WRITE_KEY, $TOKEN), and
        whether it reads the body from `body_file` (the exact bytes sent, saved beside the report):
        compressed, non-UTF-8, long or chunked bodies are replayed from the file, byte for byte."""
        words = ["curl", "-sS", "-i", "-X", self.method]
        for name, value in self.headers.items():
            if name.lower() in ("content-length", "transfer-encoding"):
                continue
            shown = redact(value, secrets)
            if name.lower() == "authorization" and shown.startswith("Basic $("):
                # The shell computes the base64 of the variable, so the line works with the real key.
                words += ["-H", f'"Authorization: {shown}"']  # quotes nest inside $( )
                continue
            words += ["-H", _quote(f"{name}: {shown}")]
        if self.chunked:
            words += ["-H", _quote("Transfer-Encoding: chunked")]  # curl then streams the file in chunks
        words.append(_quote(redact(self.url, secrets)))
        line = " ".join(words)
        if not self.wire:
            return line, False
        try:
            text = self.wire.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        inline = text is not None and not self.encoding and not self.chunked and len(text) <= 20000
        if inline and text is not None:
            return f"printf '%s' {_quote(redact(text, secrets))} | {line} --data-binary @-", False
        # Run from the report directory. A body holding a credential cannot be redacted byte for byte
        # inside gzip: such a file holds the run's (test) write key.
        return f"{line} --data-binary @{_quote(body_file)}", True


def _quote(part: str) -> str:
    # Keep $WRITE_KEY / $TOKEN expandable: double quotes when only a variable needs the shell.
    if "$" in part and not any(c in part for c in "'\"`\\!"):
        return f'"{part}"'
    return shlex.quote(part)


def shorten(text: str) -> str:
    if len(text) <= TRANSCRIPT_BODY_CHARS:
        return text
    return text[:TRANSCRIPT_BODY_CHARS] + f"… ({len(text)} characters)"


def redact(text: str, secrets: dict[str, str]) -> str:
    for secret, name in secrets.items():
        if secret:
            text = text.replace(secret, name)
    return text


def secrets_of(credentials: Credentials) -> dict[str, str]:
    found = {credentials.write_key: "$WRITE_KEY"}
    found[base64.b64encode(f"{credentials.write_key}:".encode()).decode()] = '$(printf %s "$WRITE_KEY:" | base64 -w0)'
    found[base64.b64encode(credentials.write_key.encode()).decode()] = '$(printf %s "$WRITE_KEY" | base64 -w0)'
    if credentials.token:
        found[credentials.token] = "$TOKEN"
    if credentials.other_token:
        found[credentials.other_token] = "$OTHER_TOKEN"
    if credentials.strict_write_key:
        key = credentials.strict_write_key
        found[key] = "$STRICT_WRITE_KEY"
        found[base64.b64encode(f"{key}:".encode()).decode()] = '$(printf %s "$STRICT_WRITE_KEY:" | base64 -w0)'
    if credentials.quarantine_write_key:
        key = credentials.quarantine_write_key
        found[key] = "$QUARANTINE_WRITE_KEY"
        found[base64.b64encode(f"{key}:".encode()).decode()] = '$(printf %s "$QUARANTINE_WRITE_KEY:" | base64 -w0)'
    return found


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def basic(user: str) -> str:
    return "Basic " + base64.b64encode(user.encode()).decode()


def body_value(spec: dict[str, Any], renderer: Renderer) -> Any:
    """The JSON body of a step (before auth), or None for raw/absent bodies."""
    if "body_file" in spec:
        text = (PAYLOADS_DIR / spec["body_file"]).read_text(encoding="utf-8")
        return renderer.render(json.loads(text))
    if "body" not in spec:
        return None
    body = renderer.render(spec["body"])
    if "batch_of" in spec:
        count, item = spec["batch_of"]["count"], renderer.render(spec["batch_of"]["item"])
        items = []
        for index in range(count):
            copy = json.loads(json.dumps(item))
            if isinstance(copy.get("messageId"), str):
                copy["messageId"] += f"-{index}"
            items.append(copy)
        body["batch"] = items
    return body


def pad_to(body: dict[str, Any], path: str, size: int) -> bytes:
    """Grow the string at dotted `path` so the compact body is exactly `size` bytes."""
    node = body
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = ""
    missing = size - len(compact(body))
    if missing < 0:
        raise ValueError(f"body is already {len(compact(body))} bytes, more than {size}")
    node[parts[-1]] = "x" * missing
    encoded = compact(body)
    assert len(encoded) == size
    return encoded


def build(
    spec: dict[str, Any], renderer: Renderer, credentials: Credentials, base_url: str
) -> tuple[Exchange, Iterator[bytes] | bytes]:
    """The request of a step: an Exchange to record, and the content to send."""
    headers = {str(name): str(value) for name, value in renderer.render(spec.get("headers", {})).items()}
    query = dict(renderer.render(spec.get("query", {})))
    body = body_value(spec, renderer)
    auth = spec.get("auth", "none")
    key = credentials.write_key
    unknown = f"cf-unknown-key-{renderer.run_id}"
    if auth == "basic":
        headers["Authorization"] = basic(f"{key}:")
    elif auth == "basic-no-colon":
        headers["Authorization"] = basic(key)
    elif auth == "basic-strict":
        headers["Authorization"] = basic(f"{credentials.strict_write_key}:")
    elif auth == "basic-quarantine":
        headers["Authorization"] = basic(f"{credentials.quarantine_write_key}:")
    elif auth == "basic-unknown":
        headers["Authorization"] = basic(f"{unknown}:")
    elif auth == "basic-malformed":
        headers["Authorization"] = "Basic %%%not-base64%%%"
    elif auth in ("body", "bearer-body", "body-unknown"):
        if isinstance(body, dict):
            body["writeKey"] = unknown if auth == "body-unknown" else key
        if auth == "bearer-body":
            headers["Authorization"] = f"Bearer cf-oauth-{renderer.run_id}"
    elif auth == "query":
        query["writeKey"] = key
    elif auth == "query-unknown":
        query["writeKey"] = unknown
    elif auth == "token":
        headers["Authorization"] = f"Bearer {credentials.token}"
    elif auth == "token-other":
        headers["Authorization"] = f"Bearer {credentials.other_token}"
    elif auth == "token-unknown":
        headers["Authorization"] = f"Bearer cf-unknown-token-{renderer.run_id}"
    if "body_raw" in spec:
        content = str(renderer.render(spec["body_raw"])).encode("utf-8")
    elif "body_bytes" in spec:  # \xNN stands for that byte, so a body can hold bytes that are not UTF-8
        text = str(renderer.render(spec["body_bytes"]))
        content = b"".join(
            bytes([int(part[2:], 16)]) if BYTE.fullmatch(part) else part.encode("utf-8")
            for part in BYTE_SPLIT.split(text)
        )
    elif body is None:
        content = b""
    elif "pad" in spec:
        content = pad_to(body, spec["pad"]["field"], int(spec["pad"]["bytes"]))
    else:
        content = compact(body)
    encoding = spec.get("encoding")
    wire = content
    if encoding == "gzip":
        wire = gzip.compress(content)
        headers["Content-Encoding"] = "gzip"
    elif encoding == "deflate":
        wire = zlib.compress(content)
        headers["Content-Encoding"] = "deflate"
    elif encoding == "corrupt-gzip":
        wire = gzip.compress(content)[:-12] + b"\x00" * 4
        headers["Content-Encoding"] = "gzip"
        encoding = None
    elif encoding == "unknown":
        headers["Content-Encoding"] = "x-cf-unknown"
        encoding = None
    path = str(renderer.render(spec.get("path", "/")))
    url = urljoin(base_url.rstrip("/") + "/", path.lstrip("/"))
    if query:
        url += ("&" if "?" in url else "?") + urlencode(query)
    exchange = Exchange(
        str(spec.get("method", "POST")), url, headers, content, encoding, wire, bool(spec.get("chunked"))
    )
    if spec.get("chunked"):

        def stream() -> Iterator[bytes]:
            for start in range(0, len(wire), 4096):
                yield wire[start : start + 4096]

        return exchange, stream()
    return exchange, wire


def send(client: httpx.Client, exchange: Exchange, content: Iterator[bytes] | bytes, meta: dict[str, str]) -> None:
    """Send and record the answer into the exchange (raises httpx.HTTPError)."""
    headers = {**exchange.headers, **meta}
    kwargs: dict[str, Any] = {"headers": headers}
    if exchange.method not in ("GET", "HEAD") or content:
        kwargs["content"] = content
    response = client.request(exchange.method, exchange.url, **kwargs)
    exchange.status = response.status_code
    exchange.response_headers = {name.lower(): value for name, value in response.headers.items()}
    exchange.response_text = response.text
    try:
        exchange.json = response.json()
        exchange.is_json = True
    except ValueError:
        exchange.json = None
