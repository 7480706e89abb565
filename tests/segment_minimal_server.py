"""A minimal Segment-compatible HTTP API, written from Segment's documented behaviour only
(../shared/reference/segment-protocol.md, section numbers below), to keep the conformance kit's
`segment` profile honest: a server like this must reach the Segment-compatible level.

It never imports `collector`, and it stores nothing: it answers as Segment's edge does and drops
what Segment drops. Standard library only (http.server).

    python tests/segment_minimal_server.py --port 8099 --write-key WK_TEST
    python tests/segment_minimal_server.py --port 8099 --black-hole   # 200 {"success": true} to everything
"""

from __future__ import annotations

import argparse
import base64
import binascii
import gzip
import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SUCCESS = b'{"success": true}'
CALLS = ("identify", "track", "page", "screen", "group", "alias")
SINGLE = {f"/v1/{call}": call for call in CALLS} | {f"/v1/{call[0]}": call for call in CALLS}  # §1, short paths
BATCH = ("/v1/batch", "/v1/import", "/v1/b")  # §1: /v1/import is an alias of /v1/batch; /v1/b from client SDKs
METRICS = "/v1/m"  # §1: SDK telemetry
MAX_EVENT = 32 * 1024  # §4: 32 KB per event (and per single-event request), measured after gunzip
MAX_BATCH = 500 * 1024  # §4: 500 KB per batch request
MAX_EVENTS = 2500  # §4: over the limit → 200, but the events are rejected


class BadRequest(Exception):
    """§5: only invalid JSON and oversize payloads are answered 400."""


def write_key(headers: Any, payload: Any) -> str | None:
    """§2: HTTP Basic (username = writeKey, the colon optional) or writeKey in the body."""
    authorization = headers.get("Authorization", "")
    if authorization.startswith("Basic "):
        try:
            return base64.b64decode(authorization[6:], validate=True).decode().split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            return None
    if isinstance(payload, dict) and isinstance(payload.get("writeKey"), str):
        return str(payload["writeKey"])  # also with Authorization: Bearer <token> (OAuth) beside it
    return None


def valid(message: Any, kind: str | None) -> bool:
    """§7: an identity (null is absent), event on track, groupId on group, previousId + userId on alias."""
    if not isinstance(message, dict):
        return False
    kind = kind or message.get("type")
    if kind not in CALLS:
        return False  # batch items must have a type
    present = {key for key in ("userId", "anonymousId", "previousId") if message.get(key) is not None}
    if kind == "alias":
        return {"userId", "previousId"} <= present
    if not present & {"userId", "anonymousId"}:
        return False
    if kind == "track" and not isinstance(message.get("event"), str):
        return False
    return kind != "group" or message.get("groupId") is not None


class SegmentHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    write_keys: frozenset[str] = frozenset()

    def log_message(self, format: str, *args: Any) -> None:  # quiet in tests
        pass

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # §3: Kotlin streams chunked
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, status: int, body: bytes = SUCCESS, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def refuse(self, status: int, message: str) -> None:
        # §6: JSON error bodies carry both code and message (analytics-python reads both).
        self.answer(status, json.dumps({"code": "bad_request", "message": message}).encode())

    def do_OPTIONS(self) -> None:  # §3: browsers ≥1.84 preflight their Basic-authenticated requests
        headers = {
            "Access-Control-Allow-Origin": self.headers.get("Origin", "*"),
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type, X-Retry-Count",
        }
        self.answer(204, b"", headers)

    def do_GET(self) -> None:
        self.refuse(404, "not found")

    def do_POST(self) -> None:
        raw = self.read_body()
        path = self.path.split("?", 1)[0]
        if path not in SINGLE and path not in BATCH and path != METRICS:
            self.refuse(404, "not found")
            return
        try:
            payload = self.parse(raw, MAX_EVENT if path in SINGLE else MAX_BATCH)
        except BadRequest as exc:
            self.refuse(400, str(exc))
            return
        if path in BATCH and isinstance(payload, dict) and isinstance(payload.get("batch"), list):
            items = payload["batch"]
            if any(len(json.dumps(item)) > MAX_EVENT for item in items):
                self.refuse(400, "an event is larger than 32 KB")
                return
            accepted = [m for m in items if valid(m, None)] if len(items) <= MAX_EVENTS else []
        elif path in SINGLE:
            accepted = [payload] if valid(payload, SINGLE[path]) else []
        else:
            accepted = []
        # §2, §14: an unknown key, like an invalid message, is answered 200 and dropped.
        known = write_key(self.headers, payload) in self.write_keys
        self.store(accepted if known else [])
        self.answer(200)

    def parse(self, raw: bytes, limit: int) -> Any:
        encoding = self.headers.get("Content-Encoding", "identity").lower()
        if encoding == "gzip":  # §3: the server must inflate gzip
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error):
                raise BadRequest("the gzip body cannot be read") from None
        elif encoding != "identity":
            raise BadRequest(f"unsupported Content-Encoding {encoding}")
        if len(raw) > limit:
            raise BadRequest(f"the request is larger than {limit} bytes")
        try:
            return json.loads(raw.decode("utf-8"))  # §3: JSON whatever the Content-Type says
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("invalid JSON") from None

    def store(self, messages: list[Any]) -> None:
        """Stores nothing: a real server would queue the messages here."""


class BlackHoleHandler(SegmentHandler):
    """Answers 200 {"success": true} to everything and keeps nothing (but which connection each case used)."""

    seen: list[tuple[str, int]] = []  # (X-Conformance-Case, client port)

    def do_POST(self) -> None:
        self.read_body()
        self.seen.append((self.headers.get("X-Conformance-Case", ""), self.client_address[1]))
        self.answer(200)

    do_GET = do_OPTIONS = do_PUT = do_POST


def serve(port: int, keys: list[str], black_hole: bool = False) -> ThreadingHTTPServer:
    """A started server (in a daemon thread) on 127.0.0.1:`port` (0: a free port)."""
    handler = type("Handler", (BlackHoleHandler if black_hole else SegmentHandler,), {"write_keys": frozenset(keys)})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("--port", type=int, default=8099)
    arguments.add_argument("--write-key", action="append", default=[])
    arguments.add_argument("--black-hole", action="store_true")
    options = arguments.parse_args()
    server = serve(options.port, options.write_key, options.black_hole)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
