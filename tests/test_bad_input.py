"""Bad input: a 4xx with a JSON error naming the problem, nothing stored, the server still answering."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import STRICT_KEY, WRITE_KEY, basic, make_client, stored
from starlette.testclient import TestClient

from collector.errors import PayloadTooLarge
from collector.pipeline.intake import Caller, ClientDisconnected, read_body

OK = {"event": "A", "userId": "u"}
BIG = "x" * 40_000


def gzip_bomb() -> bytes:
    # 50 MB of zeros inside a ~50 KB gzip stream; the cap stops inflation after 512 kB.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"0" * 1_000_000
    return b"".join([compressor.compress(chunk) for _ in range(50)]) + compressor.flush()


# (id, path, raw body, extra headers, status, code, text expected in message/moreInfo/errors).
# Contract violations are refused with any key. The QUALITY cases are stored and flagged by
# default (tests/test_quirks.py); they are sent with the key of a source whose
# qualityEnforcement is `reject`, which must still refuse them exactly as before.
CASES: list[tuple[str, str, bytes, dict[str, str], int, str, str]] = [
    ("empty-body", "/v1/track", b"", {}, 400, "invalid_json", "empty"),
    ("malformed-json", "/v1/track", b'{"event": "A",', {}, 400, "invalid_json", "not valid JSON"),
    ("trailing-garbage", "/v1/track", b'{"event": "A", "userId": "u"} x', {}, 400, "invalid_json", "not valid JSON"),
    ("top-level-array", "/v1/track", b"[1, 2]", {}, 400, "invalid_json", "list"),
    ("top-level-string", "/v1/track", b'"track"', {}, 400, "invalid_json", "str"),
    ("top-level-number", "/v1/track", b"42", {}, 400, "invalid_json", "int"),
    ("top-level-null", "/v1/track", b"null", {}, 400, "invalid_json", "NoneType"),
    ("invalid-utf8", "/v1/track", b'{"event": "\xff\xfe", "userId": "u"}', {}, 400, "invalid_json", "UTF-8"),
    ("lone-surrogate", "/v1/track", b'{"event": "\\ud800", "userId": "u"}', {}, 400, "invalid_message", "surrogate"),
    (
        "nesting-10000",
        "/v1/track",
        b'{"event":"A","userId":"u","properties":' + b'{"a":' * 10000 + b"1" + b"}" * 10001,
        {},
        400,
        "invalid_json",
        "depth",
    ),
    ("nan", "/v1/track", b'{"event": "A", "userId": "u", "properties": {"x": NaN}}', {}, 400, "invalid_message", "NaN"),
    (
        "infinity",
        "/v1/track",
        b'{"event": "A", "userId": "u", "properties": {"x": Infinity}}',
        {},
        400,
        "invalid_message",
        "Infinity",
    ),
    (
        "huge-number",
        "/v1/track",
        b'{"event": "A", "userId": "u", "properties": {"x": 1e400}}',
        {},
        400,
        "invalid_message",
        "beyond a double",
    ),
    ("missing-event", "/v1/track", b'{"userId": "u"}', {}, 400, "invalid_message", "/event"),
    ("event-not-string", "/v1/track", b'{"event": 5, "userId": "u"}', {}, 400, "invalid_message", "/event"),
    ("event-empty", "/v1/track", b'{"event": "", "userId": "u"}', {}, 400, "invalid_message", "/event"),
    ("missing-ids", "/v1/track", b'{"event": "A"}', {}, 400, "invalid_message", "userId or anonymousId"),
    (
        "null-ids",
        "/v1/track",
        b'{"event": "A", "userId": null, "anonymousId": null}',
        {},
        400,
        "invalid_message",
        "userId or anonymousId",
    ),
    ("empty-user-id", "/v1/track", b'{"event": "A", "userId": ""}', {}, 400, "invalid_message", "userId"),
    ("user-id-object", "/v1/track", b'{"event": "A", "userId": {"id": 1}}', {}, 400, "invalid_message", "/userId"),
    ("user-id-bool", "/v1/identify", b'{"userId": true}', {}, 400, "invalid_message", "/userId"),
    (
        "properties-array",
        "/v1/track",
        b'{"event": "A", "userId": "u", "properties": [1]}',
        {},
        400,
        "invalid_message",
        "/properties",
    ),
    (
        "revenue-string",
        "/v1/track",
        b'{"event": "A", "userId": "u", "properties": {"revenue": "19.99"}}',
        {},
        400,
        "invalid_message",
        "/properties/revenue",
    ),
    (
        "currency-lowercase",
        "/v1/track",
        b'{"event": "A", "userId": "u", "properties": {"currency": "usd"}}',
        {},
        400,
        "invalid_message",
        "/properties/currency",
    ),
    (
        "currency-4-letters",
        "/v1/track",
        b'{"event": "A", "userId": "u", "properties": {"currency": "EURO"}}',
        {},
        400,
        "invalid_message",
        "/properties/currency",
    ),
    (
        "value-bool",
        "/v1/track",
        b'{"event": "A", "userId": "u", "properties": {"value": true}}',
        {},
        400,
        "invalid_message",
        "/properties/value",
    ),
    (
        "context-string",
        "/v1/track",
        b'{"event": "A", "userId": "u", "context": "x"}',
        {},
        400,
        "invalid_message",
        "/context",
    ),
    (
        "context-ip-number",
        "/v1/track",
        b'{"event": "A", "userId": "u", "context": {"ip": 1}}',
        {},
        400,
        "invalid_message",
        "/context/ip",
    ),
    (
        "message-id-too-long",
        "/v1/track",
        orjson.dumps(OK | {"messageId": "m" * 101}),
        {},
        400,
        "invalid_message",
        "/messageId",
    ),
    ("traits-string", "/v1/identify", b'{"userId": "u", "traits": "x"}', {}, 400, "invalid_message", "/traits"),
    (
        "trait-age-string",
        "/v1/identify",
        b'{"userId": "u", "traits": {"age": "34"}}',
        {},
        400,
        "invalid_message",
        "/traits/age",
    ),
    ("group-missing-group-id", "/v1/group", b'{"userId": "u"}', {}, 400, "invalid_message", "/groupId"),
    ("alias-missing-previous-id", "/v1/alias", b'{"userId": "u"}', {}, 400, "invalid_message", "/previousId"),
    (
        "page-keywords-string",
        "/v1/page",
        b'{"userId": "u", "properties": {"keywords": "a"}}',
        {},
        400,
        "invalid_message",
        "/properties/keywords",
    ),
    (
        "type-mismatch",
        "/v1/track",
        b'{"type": "page", "event": "A", "userId": "u"}',
        {},
        400,
        "invalid_message",
        "/type",
    ),
    ("batch-not-array", "/v1/batch", b'{"batch": {"type": "track"}}', {}, 400, "invalid_batch", "/batch"),
    ("batch-missing", "/v1/batch", b'{"events": []}', {}, 400, "invalid_batch", "/batch"),
    ("batch-empty", "/v1/batch", b'{"batch": []}', {}, 400, "invalid_batch", "/batch"),
    (
        "batch-item-no-type",
        "/v1/batch",
        b'{"batch": [{"event": "A", "userId": "u"}]}',
        {},
        400,
        "invalid_message",
        "/type",
    ),
    (
        "batch-item-unknown-type",
        "/v1/batch",
        b'{"batch": [{"type": "click", "userId": "u"}]}',
        {},
        400,
        "invalid_message",
        "click",
    ),
    (
        "batch-item-type-object",
        "/v1/batch",
        b'{"batch": [{"type": {}, "userId": "u"}]}',
        {},
        400,
        "invalid_message",
        "unknown message type",
    ),
    ("batch-item-not-object", "/v1/batch", b'{"batch": ["track"]}', {}, 400, "invalid_message", "object"),
    (
        "batch-envelope-context-string",
        "/v1/batch",
        b'{"batch": [{"type": "track", "event": "A", "userId": "u"}], "context": "x"}',
        {},
        400,
        "invalid_message",
        "/context",
    ),
    (
        "event-over-32k",
        "/v1/track",
        orjson.dumps(OK | {"properties": {"blob": BIG}}),
        {},
        413,
        "payload_too_large",
        "maxEventBytes",
    ),
    (
        "batch-item-over-32k",
        "/v1/batch",
        orjson.dumps({"batch": [{"type": "track", "event": "A", "userId": "u", "properties": {"b": BIG}}]}),
        {},
        400,
        "invalid_message",
        "maxEventBytes",
    ),
    (
        "request-over-512k",
        "/v1/batch",
        orjson.dumps(
            {"batch": [{"type": "track", "event": "A", "userId": "u", "properties": {"b": "y" * 30_000}}] * 20}
        ),
        {},
        413,
        "payload_too_large",
        "maxRequestBytes",
    ),
    (
        "too-many-events",
        "/v1/batch",
        orjson.dumps({"batch": [{"type": "track", "event": "A", "userId": "u"}] * 2501}),
        {},
        413,
        "payload_too_large",
        "maxBatchEvents",
    ),
    ("gzip-bomb", "/v1/batch", gzip_bomb(), {"Content-Encoding": "gzip"}, 413, "payload_too_large", "maxRequestBytes"),
    (
        "gzip-over-limit",
        "/v1/track",
        gzip.compress(orjson.dumps(OK | {"properties": {"b": "z" * 600_000}})),
        {"Content-Encoding": "gzip"},
        413,
        "payload_too_large",
        "maxRequestBytes",
    ),
    ("not-gzip", "/v1/track", orjson.dumps(OK), {"Content-Encoding": "gzip"}, 400, "invalid_encoding", "gzip"),
    (
        "truncated-gzip",
        "/v1/track",
        gzip.compress(orjson.dumps(OK))[:-12],
        {"Content-Encoding": "gzip"},
        400,
        "invalid_encoding",
        "truncated",
    ),
    ("unknown-encoding", "/v1/track", orjson.dumps(OK), {"Content-Encoding": "br"}, 415, "unsupported_encoding", "br"),
    (
        "unknown-write-key",
        "/v1/track",
        orjson.dumps(OK | {"writeKey": "nope"}),
        {"Authorization": ""},
        401,
        "unauthorized",
        "Unknown write key",
    ),
]


QUALITY = {
    "lone-surrogate",
    "nan",
    "infinity",
    "huge-number",
    "event-empty",
    "empty-user-id",
    "revenue-string",
    "currency-lowercase",
    "currency-4-letters",
    "value-bool",
    "context-ip-number",
    "message-id-too-long",
    "trait-age-string",
    "page-keywords-string",
    "batch-empty",
    "batch-envelope-context-string",
}


@pytest.fixture(scope="module")
def shared_client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from helpers import write_config

    tmp: Path = tmp_path_factory.mktemp("bad")
    with make_client(write_config(tmp / "c.yaml"), f"sqlite:///{tmp / 'e.db'}") as client:
        yield client


def test_there_are_at_least_forty_bad_inputs() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize(
    ("case", "path", "body", "headers", "status", "code", "text"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_is_a_clear_4xx_and_stores_nothing(
    shared_client: TestClient,
    case: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
    text: str,
) -> None:
    all_headers = basic(STRICT_KEY if case in QUALITY else WRITE_KEY) | headers
    if all_headers.get("Authorization") == "":
        del all_headers["Authorization"]
    answer = shared_client.post(path, content=body, headers=all_headers)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert error["status"] == status and error["code"] == code
    assert error["message"] and error["moreInfo"]
    assert text.lower() in answer.text.lower()
    assert stored(shared_client) == []
    # the server is still answering, and still storing good events
    good = shared_client.post("/v1/track", content=orjson.dumps(OK | {"messageId": "probe"}), headers=basic(WRITE_KEY))
    assert good.status_code == 200
    assert len(stored(shared_client, messageId="probe")) == 1
    _purge_probe(shared_client)


def _purge_probe(client: TestClient) -> None:
    import sqlite3

    storage = client.app.state.runtime.storage  # type: ignore[attr-defined]
    with sqlite3.connect(storage.path) as conn:
        conn.execute("DELETE FROM events WHERE message_id = 'probe'")


def test_unknown_path_and_wrong_method_are_json_errors(shared_client: TestClient) -> None:
    missing = shared_client.post("/v1/trak", content=b"{}")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    wrong = shared_client.put("/v1/track", content=b"{}")  # GET is the pixel beacon
    assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"


def test_body_read_joins_chunks_caps_them_and_notices_a_disconnect() -> None:
    caller = Caller.of({"type": "http", "headers": [], "query_string": b"", "client": None})

    def receiving(*messages: dict[str, Any]) -> Any:
        queue = list(messages)

        async def receive() -> dict[str, Any]:
            return queue.pop(0)

        return receive

    chunked = receiving(
        {"type": "http.request", "body": b'{"a":', "more_body": True},
        {"type": "http.request", "body": b"1}", "more_body": False},
    )
    assert asyncio.run(read_body(chunked, caller, 100)) == b'{"a":1}'
    too_big = receiving(*({"type": "http.request", "body": b"x" * 60, "more_body": True} for _ in range(3)))
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_body(too_big, caller, 100))
    gone = receiving({"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"})
    with pytest.raises(ClientDisconnected):
        asyncio.run(read_body(gone, caller, 100))
