"""The hostile-input suite (issue 16): cases as data in tests/hostile/*.yaml, each checked against
tests/hostile/case.schema.json, all sent over raw sockets to ONE real `collector serve` process.

For every case: the status (or class), the one JSON error shape for every 4xx/5xx the app writes
(`layer: http` marks the few answers the HTTP layer writes itself), what was stored under the
case's tag (`{{tag}}`, in a messageId or userId) read from the SQLite file, and afterwards that
the server still answers GET /health. At the end: no 5xx in the run, every stored event belongs
to a case that expected it, the server's peak RSS bounded, and a summary by status class.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import sqlite3
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jsonschema
import pytest
import yaml
from helpers import Server, start_server
from starlette.routing import Route

from collector.app import routes as app_routes
from collector.paths import EVENT_PATHS, PIXEL_PATHS
from collector.settings import SETTINGS

HERE = Path(__file__).resolve().parent / "hostile"
SCHEMA = json.loads((HERE / "case.schema.json").read_text(encoding="utf-8"))
SERVER = yaml.safe_load((HERE / "server.yaml").read_text(encoding="utf-8"))
GUARD = any(setting.name == "max_header_bytes" for setting in SETTINGS)  # the protocol guard has landed
READ_TIMEOUT = 10.0  # a case with no complete answer by then is a hang
# Peak RSS may grow this much over the process's size once warmed up. The largest legitimate
# buffer is one maxRequestBytes body (512,000 bytes) parsed into Python objects (~10x) plus a
# 2,500-event batch in flight: a few MiB, and allocator slack. A gzip bomb inflated whole
# (100 MB) or a 10 MiB header kept per request would each cross it.
RSS_GROWTH_BOUND = 64 * 1024 * 1024


# --- the cases ----------------------------------------------------------------------------------


def matrix_cases(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every path × method, from the app's own route table (collector.app.routes and
    collector.paths), with what the data says each accepted pair answers without credentials."""
    table: dict[str, set[str]] = {}
    for route in app_routes():
        assert isinstance(route, Route)
        table.setdefault(route.path, set()).update(route.methods or ())
    for path in EVENT_PATHS:
        table.setdefault(path, set()).add("POST")
    pixel = {path for paths in PIXEL_PATHS.values() for path in paths}
    listed = set(doc["routes"]) | pixel | set(EVENT_PATHS)
    missing = sorted(set(table) - listed)
    assert not missing, f"tests/hostile/routes.yaml: classify the new routes {missing}"
    stale = sorted(set(doc["routes"]) - set(table))
    assert not stale, f"tests/hostile/routes.yaml lists routes the app no longer has: {stale}"
    cases = []
    for path in sorted(table):
        accepted = dict(doc["routes"].get(path, {}))
        if path in pixel:
            accepted.setdefault("GET", doc["pixel"])
        if path in EVENT_PATHS:
            accepted.setdefault("POST", doc["event"])
        concrete = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: doc["params"][m.group(1)], path)
        for method in doc["methods"]:
            if method == "HEAD" and "GET" in accepted:
                expect = {"status": accepted["GET"]["status"]}
            elif method in accepted:
                expect = dict(accepted[method])
            else:
                expect = dict(doc["other_methods"])
            case: dict[str, Any] = {
                "id": f"route:{method}:{path}",
                "about": f"{method} {path} with no credentials and no body",
                "request": {"method": method, "path": concrete},
                "expect": expect,
            }
            cases.append(case)
    for path in doc["unknown_paths"]:
        for method in doc["methods"]:
            cases.append(
                {
                    "id": f"route:{method}:{path}",
                    "about": f"{method} on a path the app does not serve",
                    "request": {"method": method, "path": path},
                    "expect": dict(doc["unknown"]) if method != "HEAD" else {"status": doc["unknown"]["status"]},
                }
            )
    return cases


def load_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for path in sorted(HERE.glob("*.yaml")):
        if path.name == "server.yaml":
            continue
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        cases += doc.get("cases", [])
        if "matrix" in doc:
            cases += matrix_cases(doc["matrix"])
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for case in cases:
        problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(case)]
        assert not problems, f"case {case.get('id')}: {problems}"
    ids = Counter(case["id"] for case in cases)
    assert not [i for i, n in ids.items() if n > 1], [i for i, n in ids.items() if n > 1]
    return cases


CASES = load_cases()


def params() -> list[Any]:
    out = []
    for case in CASES:
        marks = []
        if case.get("needs") == "guard" and not GUARD:
            marks.append(pytest.mark.skip(reason="the server guard (header limits, timeouts) has not landed"))
        if case.get("xfail"):
            marks.append(pytest.mark.xfail(strict=True, reason=case["xfail"]))
        out.append(pytest.param(case, id=case["id"], marks=marks))
    return out


# --- one server ---------------------------------------------------------------------------------


@dataclass
class Suite:
    server: Server
    port: int
    db: Path
    user: str
    rss_start: int
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    expected_stored: int = 0
    ran: int = 0
    began: float = field(default_factory=time.monotonic)


def rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in bytes: now and at its peak."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    root = tmp_path_factory.mktemp("hostile")
    config = root / "hostile.yaml"
    config.write_text(yaml.safe_dump(SERVER["config"]), encoding="utf-8")
    db = root / "hostile.db"
    server = start_server(root, config, f"sqlite:///{db}", env=SERVER["env"], name="hostile")
    try:
        port = int(server.url.rsplit(":", 1)[1])
        created = exchange(port, http_bytes({"method": "POST", "path": "/identify"}, port, body=b'{"traits":{}}',
                                            extra=[("Authorization", "Bearer tok_hostile"),
                                                   ("Content-Type", "application/json")]))  # fmt: skip
        assert created.responses and created.responses[0].status == 200, created
        user = json.loads(created.responses[0].body)["id"]
        for _ in range(20):  # warm up before the RSS baseline: first requests import and compile
            exchange(port, http_bytes({"method": "POST", "path": "/v1/t"}, port, body=b'{"event":"w","userId":"w"}',
                                      extra=[("Authorization", "Basic V0tfT1BFTjo=")]))  # fmt: skip
        with closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("DELETE FROM events")
        yield Suite(server, port, db, user, rss(server.process.pid)[0])
    finally:
        server.stop()


# --- requests -----------------------------------------------------------------------------------


def substitute(value: Any, ctx: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, text in ctx.items():
            value = value.replace("{{" + name + "}}", text)
        return value
    if isinstance(value, list):
        return [substitute(item, ctx) for item in value]
    if isinstance(value, dict):
        return {key: substitute(item, ctx) for key, item in value.items()}
    return value


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def bomb(size: int, wbits: int, prefix: bytes, suffix: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    parts = [compressor.compress(prefix)]
    chunk = b"a" * 1_000_000
    for offset in range(0, size, len(chunk)):
        parts.append(compressor.compress(chunk[: size - offset]))
    parts += [compressor.compress(suffix), compressor.flush()]
    return b"".join(parts)


def padded(build: Any, target: int) -> bytes:
    """build(pad_length) → bytes, with the pad chosen so the result is exactly `target` long."""
    base = len(build(0))
    assert target >= base, f"pad_to {target} is shorter than the body without padding ({base})"
    body: bytes = build(target - base)
    assert len(body) == target
    return body


def body_bytes(spec: dict[str, Any]) -> bytes:
    prefix, suffix = spec.get("prefix", "").encode(), spec.get("suffix", "").encode()
    if "text" in spec:
        raw = spec["text"].encode("utf-8")
    elif "latin1" in spec:
        raw = spec["latin1"].encode("latin-1")
    elif "base64" in spec:
        raw = base64.b64decode(spec["base64"])
    elif "json" in spec:
        if "pad_to" in spec:
            return compress(padded(lambda n: compact(substitute(spec["json"], {"pad": "x" * n})), spec["pad_to"]), spec)
        raw = compact(spec["json"])
    elif "repeat" in spec:
        raw = prefix + spec["repeat"].encode() * spec["times"] + suffix
    elif "gzip_bomb" in spec:
        return bomb(spec["gzip_bomb"], 16 + zlib.MAX_WBITS, prefix, suffix)
    elif "deflate_bomb" in spec:
        return bomb(spec["deflate_bomb"], zlib.MAX_WBITS, prefix, suffix)
    elif "raw_deflate_bomb" in spec:
        return bomb(spec["raw_deflate_bomb"], -zlib.MAX_WBITS, prefix, suffix)
    elif "nest" in spec:
        depth = spec["nest"]
        if spec.get("kind", "array") == "array":
            raw = prefix + b"[" * depth + b"]" * depth + suffix
        else:
            raw = prefix + b'{"a":' * depth + b"1" + b"}" * depth + suffix
    else:
        count, item = spec["batch"]["count"], spec["batch"]["item"]

        def build(extra: int) -> bytes:
            share, rest = divmod(extra, max(count, 1))
            items = [
                substitute(item, {"i": str(i), "pad": "x" * (share + (1 if i < rest else 0))}) for i in range(count)
            ]
            return compact({"batch": items})

        raw = padded(build, spec["pad_to"]) if "pad_to" in spec else build(0)
    return compress(raw, spec)


def compress(raw: bytes, spec: dict[str, Any]) -> bytes:
    how = spec.get("compress")
    if how is None:
        return raw
    if how == "zlib":
        return zlib.compress(raw)
    if how == "raw-deflate":
        squeezer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return squeezer.compress(raw) + squeezer.flush()
    gzipped = gzip_of(raw)
    if how == "gzip-twice":
        return gzip_of(gzipped)
    if how == "gzip-truncated":
        return gzipped[: len(gzipped) // 2]
    return gzipped


def gzip_of(raw: bytes) -> bytes:
    squeezer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return squeezer.compress(raw) + squeezer.flush()


def header_value(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if "latin1" in value:
        return bytes(value["latin1"].encode("latin-1"))
    return value.get("prefix", "").encode() + value["repeat"].encode() * value["times"]


def http_bytes(
    req: dict[str, Any], port: int, body: bytes | None = None, extra: list[tuple[str, str]] | None = None
) -> bytes:
    """The request as bytes on the wire: exactly the headers the case says, plus Host,
    Content-Length (or chunked framing) and Connection: close unless the case says otherwise."""
    target = req["path"]
    query = [f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in req.get("query", {}).items()]
    if req.get("query_raw") is not None:
        query.append(req["query_raw"])
    if query:
        target += "?" + "&".join(query)
    if "target_pad_to" in req:
        joiner = "&" if "?" in target else "?"
        target += joiner + "pad="
        target += "a" * (req["target_pad_to"] - len(target))
        assert len(target) == req["target_pad_to"]
    if body is None and "body" in req:
        body = body_bytes(req["body"])
    headers: list[tuple[bytes, bytes]] = []
    host = req.get("host", f"127.0.0.1:{port}")
    if host is not None:
        headers.append((b"Host", host.encode("utf-8")))
    if req.get("auth"):
        headers.append((b"Authorization", b"Basic " + base64.b64encode(req["auth"].encode() + b":")))
    if req.get("bearer"):
        headers.append((b"Authorization", b"Bearer " + req["bearer"].encode()))
    headers += [(name.encode(), header_value(value)) for name, value in req.get("headers", [])]
    headers += [(name.encode(), value.encode()) for name, value in extra or []]
    names = {name.lower() for name, _ in headers}
    chunk = req.get("chunked")
    if chunk:
        headers.append((b"Transfer-Encoding", b"chunked"))
    elif body is not None and b"content-length" not in names and req.get("content_length", "auto") == "auto":
        headers.append((b"Content-Length", str(len(body)).encode()))
    if not req.get("keep_alive") and b"connection" not in names:
        headers.append((b"Connection", b"close"))
    line = f"{req.get('method', 'GET')} {target} {req.get('version', 'HTTP/1.1')}".encode()
    if "headers_total" in req:
        filler = 0
        while len(headers) < req["headers_total"]:
            headers.append((f"X-Filler-{filler}".encode(), b"v"))
            filler += 1
        assert len(headers) == req["headers_total"]

    def head_of(pairs: list[tuple[bytes, bytes]]) -> bytes:
        return line + b"\r\n" + b"".join(name + b": " + value + b"\r\n" for name, value in pairs) + b"\r\n"

    if "head_pad_to" in req:  # filler headers of up to 8,000 bytes each until the head has the length
        target_size, filler = req["head_pad_to"], 0
        while len(head_of(headers)) < target_size:
            room = target_size - len(head_of(headers))
            name = f"X-Pad-{filler}".encode()
            size = min(8000, room - len(name) - 4)
            if size < 1:  # too little room for one more header: widen the previous one
                name, value = headers[-1]
                headers[-1] = (name, value + b"a" * room)
            else:
                headers.append((name, b"a" * size))
            filler += 1
        assert len(head_of(headers)) == target_size
    head = head_of(headers)
    if body is None:
        return head
    if chunk:
        framed = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + chunk]), body[i : i + chunk]) for i in range(0, len(body), chunk)
        )
        return head + framed + b"0\r\n\r\n"
    return head + body


# --- the wire -----------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)


@dataclass
class Exchange:
    responses: list[Response]
    closed: bool  # the server ended the connection (EOF or reset)
    elapsed: float
    leftover: bytes  # bytes after the last complete answer


def parse_responses(data: bytes, head_only: bool, eof: bool) -> tuple[list[Response], bytes]:
    responses = []
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return responses, data
        lines = data[:end].decode("latin-1").split("\r\n")
        match = re.match(r"HTTP/\d\.\d (\d{3})", lines[0])
        if not match:
            return responses, data
        status = int(match.group(1))
        headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
        rest = data[end + 4 :]
        length = next((int(v) for k, v in headers if k == "content-length"), None)
        chunked = any(k == "transfer-encoding" and "chunked" in v.lower() for k, v in headers)
        if head_only or status in (204, 304) or 100 <= status < 200:
            body, data = b"", rest
        elif length is not None:
            if len(rest) < length:
                return responses, data
            body, data = rest[:length], rest[length:]
        elif chunked:
            parts, cursor = [], 0
            while True:
                line_end = rest.find(b"\r\n", cursor)
                if line_end < 0:
                    return responses, data
                size = int(rest[cursor:line_end].split(b";")[0], 16)
                if len(rest) < line_end + 2 + size + 2:
                    return responses, data
                parts.append(rest[line_end + 2 : line_end + 2 + size])
                cursor = line_end + 2 + size + 2
                if size == 0:
                    break
            body, data = b"".join(parts), rest[cursor:]
        elif eof:
            body, data = rest, b""
        else:
            return responses, data
        responses.append(Response(status, headers, body))


def exchange(
    port: int,
    payload: bytes | list[dict[str, Any]],
    want: int | None = None,
    timeout: float = READ_TIMEOUT,
    head_only: bool = False,
) -> Exchange:
    """Send (in a thread, so an early answer to a huge body is read at once) and read until the
    server closes, `want` answers are complete, or `timeout`."""
    steps = [{"send": payload}] if isinstance(payload, bytes) else payload
    began = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    with closing(sock):
        stop = threading.Event()

        def sender() -> None:
            try:
                for step in steps:
                    if stop.is_set():
                        return
                    if "send" in step:
                        data = step["send"]
                        sock.sendall(data if isinstance(data, bytes) else data.encode("latin-1"))
                    if "sleep" in step:
                        stop.wait(step["sleep"])
            except OSError:
                pass  # the server answered and closed before taking everything: what we read decides

        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        data, closed = b"", False
        deadline = began + timeout
        responses: list[Response] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                break
            except OSError:  # reset
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
            responses, _ = parse_responses(data, head_only, eof=False)
            if want is not None and len(responses) >= want:
                break
        responses, leftover = parse_responses(data, head_only, eof=closed)
        elapsed = time.monotonic() - began
        stop.set()
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        thread.join(timeout=5)
    return Exchange(responses, closed, elapsed, leftover)


# --- storage --------------------------------------------------------------------------------------


def stored_events(db: Path, tag: str) -> list[tuple[str, dict[str, Any]]]:
    """(source id, event) of every event stored under the tag: messageId starting with it, or
    userId / anonymousId equal to it."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        rows = conn.execute(
            "SELECT source_id, body FROM events WHERE message_id = ? OR message_id LIKE ? OR user_id = ?"
            " OR anonymous_id = ?",
            (tag, tag + "-%", tag, tag),
        ).fetchall()
    return [(source, json.loads(body)) for source, body in rows]


def total_stored(db: Path) -> tuple[int, int]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        held = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    return int(events), int(held)


def at_pointer(document: Any, pointer: str) -> Any:
    for part in pointer.lstrip("/").split("/") if pointer else []:
        part = part.replace("~1", "/").replace("~0", "~")
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document


# --- the runner -----------------------------------------------------------------------------------


def status_class(status: int | None) -> str:
    return "no answer" if status is None else f"{status // 100}xx"


def check_error_shape(answer: Response) -> dict[str, Any]:
    """The one error shape: {status (== the HTTP status), code, message, moreInfo, ...}."""
    assert (answer.header("content-type") or "").startswith("application/json"), answer
    body = json.loads(answer.body)
    assert isinstance(body, dict), body
    assert body.get("status") == answer.status, body
    for key in ("code", "message", "moreInfo"):
        assert isinstance(body.get(key), str) and body[key], (key, body)
    return body


def check_answer(answer: Response, expect: dict[str, Any], head_only: bool) -> None:
    if "status" in expect:
        assert answer.status == expect["status"], f"status {answer.status}: {answer.body[:600]!r}"
    if "status_in" in expect:
        assert answer.status in expect["status_in"], f"status {answer.status}: {answer.body[:600]!r}"
    if "status_class" in expect:
        assert status_class(answer.status) == expect["status_class"], f"{answer.status}: {answer.body[:600]!r}"
    layer = expect.get("layer", "app")
    body: Any = None
    if answer.status >= 400 and not head_only and layer == "app":
        body = check_error_shape(answer)
        if "code" in expect:
            assert body["code"] == expect["code"], body
        if "code_in" in expect:
            assert body["code"] in expect["code_in"], body
    if "body_json" in expect or "error_keywords" in expect:
        body = json.loads(answer.body) if body is None else body
        for key, value in expect.get("body_json", {}).items():
            assert body.get(key) == value, (key, body)
        keywords = {error.get("keyword") for error in body.get("errors") or []}
        assert set(expect.get("error_keywords", [])) <= keywords, (keywords, body)
    if "max_body_bytes" in expect:
        assert len(answer.body) <= expect["max_body_bytes"], (len(answer.body), answer.body[:300])
    text = answer.body.decode("utf-8", "replace")
    for needle in expect.get("body_includes", []):
        assert needle in text, (needle, text[:600])
    for needle in expect.get("body_excludes", []):
        assert needle not in text and needle not in str(answer.headers), (needle, text[:600], answer.headers)
    for name, value in expect.get("headers", {}).items():
        assert answer.header(name) == value, (name, answer.headers)
    for name in expect.get("headers_absent", []):
        assert answer.header(name) is None, (name, answer.headers)


def check_stored(suite: Suite, tag: str, expect: dict[str, Any]) -> None:
    events = stored_events(suite.db, tag)
    suite.expected_stored += len(events)
    assert len(events) == expect.get("stored", 0), f"{len(events)} stored under {tag}: {events[:2]}"
    for source, event in events:
        if "source" in expect:
            assert source == expect["source"], (source, event)
        violations = ((event.get("context") or {}).get("protocols") or {}).get("violations") or []
        if "flagged" in expect:
            assert bool(violations) == expect["flagged"], violations
        rules = {violation.get("rule") for violation in violations}
        assert set(expect.get("rules", [])) <= rules, (rules, violations)
        for pointer, value in expect.get("stored_equal", {}).items():
            assert at_pointer(event, pointer) == value, (pointer, at_pointer(event, pointer))


def health(port: int) -> int | None:
    answer = exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", want=1, timeout=10)
    return answer.responses[0].status if answer.responses else None


@pytest.mark.parametrize("case", params())
def test_hostile(case: dict[str, Any], suite: Suite) -> None:
    suite.ran += 1
    tag = f"hx{suite.ran}z"
    ctx = {"tag": tag, "user": suite.user, "port": str(suite.port)}
    expect = substitute(case["expect"], ctx)
    idle = [
        socket.create_connection(("127.0.0.1", suite.port)) for _ in range(case.get("connections", {}).get("idle", 0))
    ]
    try:
        head_only = False
        if "request" in case:
            req = substitute(case["request"], ctx)
            head_only = req.get("method") == "HEAD"
            payload: bytes | list[dict[str, Any]] = http_bytes(req, suite.port)
            timeout = READ_TIMEOUT
        else:
            raw = substitute(case["raw"], ctx)
            if "text" in raw:
                payload = raw["text"].encode("latin-1")
            elif "hex" in raw:
                payload = bytes.fromhex(raw["hex"])
            else:
                payload = raw["steps"]
            timeout = raw.get("read_timeout", READ_TIMEOUT)
        want = len(expect["responses"]) if "responses" in expect else None
        result = exchange(suite.port, payload, want=want, timeout=timeout, head_only=head_only)
    finally:
        for sock in idle:
            sock.close()
    first = result.responses[0].status if result.responses else None
    suite.statuses[status_class(first)] += 1
    known = "xfail " if case.get("xfail") else ""  # a 5xx of a known bug is listed, not counted again
    designed = expect.get("status") if expect.get("code") == "too_many_connections" else None  # the cap's 503
    suite.server_errors += [
        f"{known}{case['id']}: {r.status}" for r in result.responses if r.status >= 500 and r.status != designed
    ]

    if "responses" in expect:
        assert [r.status for r in result.responses] == expect["responses"], result
    else:
        assert result.responses, f"no answer within {timeout} s (closed={result.closed}, got {result.leftover[:200]!r})"
    for answer in result.responses:
        if "responses" not in expect or answer is result.responses[0]:
            check_answer(answer, expect, head_only)
        elif answer.status >= 400 and expect.get("layer", "app") == "app":
            check_error_shape(answer)
    if "closed" in expect:
        assert result.closed == expect["closed"], result
    if "elapsed_min" in expect:
        assert result.elapsed >= expect["elapsed_min"], result.elapsed
    if "elapsed_max" in expect:
        assert result.elapsed <= expect["elapsed_max"], result.elapsed
    check_stored(suite, tag, expect)
    assert health(suite.port) == 200, "the server stopped answering GET /health"


def test_the_run_as_a_whole(suite: Suite, capsys: pytest.CaptureFixture[str]) -> None:
    """Runs after every case (pytest keeps file order): no 5xx, nothing stored that no case
    expected, peak RSS bounded; prints the counts the closing note needs."""
    assert suite.ran, "run the cases too: this checks the run as a whole"
    events, held = total_stored(suite.db)
    now, peak = rss(suite.server.process.pid)
    mib = 1024 * 1024
    lines = [
        f"hostile suite: {suite.ran} cases run ({len(CASES)} defined) in {time.monotonic() - suite.began:.1f} s",
        "  by status class of the first answer: "
        + ", ".join(f"{name} {count}" for name, count in sorted(suite.statuses.items())),
        f"  5xx answers: {len(suite.server_errors)} {suite.server_errors}",
        f"  stored: {events} events (every one expected by its case: {suite.expected_stored}), quarantined {held}",
        f"  server RSS: {suite.rss_start / mib:.1f} MiB after warm-up, {now / mib:.1f} MiB now,"
        f" peak {peak / mib:.1f} MiB (bound: +{RSS_GROWTH_BOUND // mib} MiB)",
    ]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert not [error for error in suite.server_errors if not error.startswith("xfail ")], suite.server_errors
    assert events == suite.expected_stored and held == 0, (events, suite.expected_stored, held)
    assert peak <= suite.rss_start + RSS_GROWTH_BOUND, lines[-1]
