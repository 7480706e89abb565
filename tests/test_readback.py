"""The read-back API: filters, cursors, wait=, quarantine, admin auth; and storage failure → 503."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import orjson
import pytest
from helpers import ADMIN, QUARANTINE_KEY, TOKEN, WRITE_KEY, basic, bearer, make_client
from starlette.testclient import TestClient

ADMIN_AUTH = bearer(ADMIN)


def send(client: TestClient, *messages: dict[str, object]) -> None:
    batch = {"batch": [{"type": "track", "userId": "u", "event": "E"} | m for m in messages]}
    assert client.post("/v1/batch", content=orjson.dumps(batch), headers=basic(WRITE_KEY)).status_code == 200


def ids(client: TestClient, **params: object) -> list[str]:
    answer = client.get("/v1/events", params=params, headers=ADMIN_AUTH)
    assert answer.status_code == 200, answer.text
    return [item["event"]["messageId"] for item in answer.json()["data"]]


def test_filters(client: TestClient) -> None:
    send(
        client,
        {"messageId": "a", "event": "Signed Up"},
        {"messageId": "b", "event": "Paid", "userId": "v"},
        {"messageId": "c", "type": "identify", "anonymousId": "anon"},
    )
    assert ids(client, event="Paid") == ["b"]
    assert ids(client, userId="u") == ["a", "c"]
    assert ids(client, type="identify") == ["c"]
    assert ids(client, anonymousId="anon") == ["c"]
    assert ids(client, messageId="a") == ["a"]
    assert ids(client, workspaceId="ws_OtherWorkspace02") == []
    assert ids(client, sourceId="src_web") == ["a", "b", "c"]
    assert ids(client, since="2000-01-01T00:00:00Z", until="2999-01-01T00:00:00+00:00") == ["a", "b", "c"]
    assert ids(client, since="2999-01-01T00:00:00Z") == []
    item = client.get("/v1/events/b", headers=ADMIN_AUTH).json()
    assert item["event"]["event"] == "Paid" and item["workspaceId"] == "ws_TestWorkspace001"
    assert item["sourceId"] == "src_web"


def test_cursor_pages_through_everything_once(client: TestClient) -> None:
    send(client, *({"messageId": f"m{i:03d}"} for i in range(25)))
    seen, cursor = [], None
    while True:
        params = {"limit": 10} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/events", params=params, headers=ADMIN_AUTH).json()
        seen += [item["event"]["messageId"] for item in page["data"]]
        cursor = page["meta"]["nextCursor"]
        if not cursor:
            break
    assert seen == [f"m{i:03d}" for i in range(25)]


def test_wait_holds_the_answer_until_the_event_arrives(client: TestClient) -> None:
    def later() -> None:
        time.sleep(0.3)
        send(client, {"messageId": "late"})

    thread = threading.Thread(target=later)
    thread.start()
    began = time.monotonic()
    answer = client.get("/v1/events/late", params={"wait": 5}, headers=ADMIN_AUTH)
    thread.join()
    assert answer.status_code == 200 and answer.json()["event"]["messageId"] == "late"
    assert time.monotonic() - began >= 0.25
    assert client.get("/v1/events/never", params={"wait": 0.2}, headers=ADMIN_AUTH).status_code == 404


def test_quarantine_by_message_id_with_wait(client: TestClient) -> None:
    """What the conformance kit's quarantine cases read: one message by id, waiting for it."""
    for message_id in ("q-one", "q-two"):
        invalid = {"type": "track", "userId": "u", "messageId": message_id}  # no event
        assert client.post("/v1/track", json=invalid, headers=basic(QUARANTINE_KEY)).status_code == 200
    answer = client.get("/v1/quarantine", params={"messageId": "q-two", "wait": 1}, headers=ADMIN_AUTH)
    (kept,) = answer.json()["data"]
    assert kept["messageId"] == "q-two" and kept["errors"][0]["pointer"] == "/event"
    began = time.monotonic()
    missing = client.get("/v1/quarantine", params={"messageId": "never", "wait": 0.3}, headers=ADMIN_AUTH)
    assert missing.json()["data"] == [] and time.monotonic() - began >= 0.25


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"cursor": "zzz"}, "cursor"),
        ({"wait": 99}, "wait"),
        ({"since": "yesterday"}, "since"),
    ],
)
def test_bad_parameters_are_400_naming_them(client: TestClient, params: dict[str, object], name: str) -> None:
    answer = client.get("/v1/events", params=params, headers=ADMIN_AUTH)
    assert answer.status_code == 400 and answer.json()["parameter"] == name


@pytest.mark.parametrize("headers", [{}, bearer(TOKEN), basic(WRITE_KEY), bearer("nope")])
def test_read_back_needs_the_admin_token(client: TestClient, headers: dict[str, str]) -> None:
    for path in ("/v1/events", "/v1/events/x", "/v1/quarantine"):
        assert client.get(path, headers=headers).status_code == 401


def test_storage_lock_is_503_with_retry_after_then_recovers(tmp_path: Path, config_path: Path) -> None:
    db = tmp_path / "locked.db"
    env = {"COLLECTOR_SQLITE_BUSY_TIMEOUT_MS": "200", "COLLECTOR_RETRY_AFTER_SECONDS": "7"}
    with make_client(config_path, f"sqlite:///{db}", **env) as client:
        send(client, {"messageId": "before"})
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        try:
            body = orjson.dumps({"event": "E", "userId": "u", "messageId": "during"})
            answer = client.post("/v1/track", content=body, headers=basic(WRITE_KEY))
            assert answer.status_code == 503
            assert answer.headers["retry-after"] == "7"
            assert answer.json()["code"] == "storage_unavailable"
            profile = client.post("/identify", json={"identifiers": {"e": 1}}, headers=bearer(TOKEN))
            assert profile.status_code == 503
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        answer = client.post("/v1/track", content=body, headers=basic(WRITE_KEY))
        assert answer.status_code == 200
        assert ids(client) == ["before", "during"]
