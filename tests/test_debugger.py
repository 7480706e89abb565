"""The live debugger's stream (Server-Sent Events) and page; the page in Chromium is in test_browser.py."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from collector import debugger
from tests.conftest import ADMIN, OTHER_KEY, QUARANTINE_KEY, TOKEN, WRITE_KEY, Server, basic, bearer


def arrivals(body: str) -> list[tuple[int, dict[str, Any]]]:
    """(id, entry) of each `arrival` frame in an SSE body."""
    found = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if fields.get("event") == "arrival":
            found.append((int(fields["id"]), orjson.loads(fields["data"])))
    return found


@pytest.fixture
def short_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    # In-process (TestClient) a stream is read to its end, so make the end come quickly.
    monkeypatch.setattr(debugger, "STREAM_SECONDS", 0.2)


def test_stream_and_page_need_the_admin_token(client: TestClient) -> None:
    for path in ("/debugger", "/debugger/stream"):
        assert client.get(path).status_code == 401
        assert client.get(path, params={"token": "wrong"}).status_code == 401
        assert client.get(path, headers=bearer(TOKEN)).status_code == 401  # a workspace token is not enough
        assert client.get(path).json()["code"] == "unauthorized"


def test_page_lists_sources_and_escapes_nothing_unsafe(client: TestClient) -> None:
    page = client.get("/debugger", params={"token": ADMIN})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'value="src_web"' in page.text and 'value="src_other"' in page.text
    assert "innerHTML" not in page.text  # entries are untrusted: textContent only
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"


def test_reconnect_replays_what_was_missed_with_errors_and_source(client: TestClient, short_streams: None) -> None:
    assert client.post("/v1/track", json={"event": "Seen", "userId": "u1"}, headers=basic(WRITE_KEY)).status_code == 200
    assert client.post("/v1/track", json={"userId": "u1"}, headers=basic(WRITE_KEY)).status_code == 400
    assert client.post("/v1/track", json={"userId": "u2"}, headers=basic(QUARANTINE_KEY)).status_code == 200
    assert client.post("/v1/page", json={"anonymousId": "a"}, headers=basic(OTHER_KEY)).status_code == 200

    answer = client.get("/debugger/stream", params={"token": ADMIN}, headers={"Last-Event-ID": "0"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    assert answer.text.startswith("retry: ")
    entries = arrivals(answer.text)
    assert [i for i, _ in entries] == [1, 2, 3, 4]
    valid, rejected, quarantined, other = (entry for _, entry in entries)
    assert valid["kind"] == "event" and valid["sourceId"] == "src_web"
    assert valid["message"]["event"] == "Seen" and valid["message"]["receivedAt"]  # as stored, enriched
    assert rejected["kind"] == "invalid" and rejected["outcome"] == "rejected"
    assert rejected["errors"][0]["pointer"] == "/event"
    assert quarantined["outcome"] == "quarantined" and quarantined["sourceId"] == "src_q"
    assert other["sourceId"] == "src_other" and other["message"]["type"] == "page"

    only_other = client.get("/debugger/stream", params={"token": ADMIN, "sourceId": "src_other", "lastEventId": "0"})
    assert [entry["sourceId"] for _, entry in arrivals(only_other.text)] == ["src_other"]
    after_two = client.get("/debugger/stream", headers={**bearer(ADMIN), "Last-Event-ID": "2"})
    assert [i for i, _ in arrivals(after_two.text)] == [3, 4]
    fresh = client.get("/debugger/stream", headers=bearer(ADMIN))  # no id: only what arrives from now on
    assert arrivals(fresh.text) == []


def test_hub_drops_entries_for_a_stalled_subscriber_instead_of_blocking() -> None:
    import asyncio

    hub = debugger.DebugHub()
    stalled: asyncio.Queue[debugger.Entry] = asyncio.Queue(2)
    hub.subscribers.add(stalled)
    for n in range(5):
        hub.publish("src", b'{"n":%d}' % n)
    assert stalled.qsize() == 2 and [item[0] for item in hub.since(0)] == [1, 2, 3, 4, 5]


def test_live_stream_from_a_real_process(server: Server) -> None:
    url = server.url
    with httpx.Client(timeout=httpx.Timeout(5.0)) as http:
        with http.stream("GET", f"{url}/debugger/stream", params={"token": ADMIN}) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            assert next(lines).startswith("retry:")  # connected (and subscribed) before we send
            sent = http.post(
                f"{url}/v1/identify", json={"userId": "live-1", "traits": {"a": 1}}, headers=basic(WRITE_KEY)
            )
            assert sent.status_code == 200
            data = next(line for line in lines if line.startswith("data: "))
    entry = orjson.loads(data[len("data: ") :])
    assert entry["kind"] == "event" and entry["message"]["userId"] == "live-1"
    assert entry["message"]["traits"] == {"a": 1}
