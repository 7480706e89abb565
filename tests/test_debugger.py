"""The live debugger's stream (Server-Sent Events) and page; the page in Chromium is in test_browser.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from helpers import ADMIN, OTHER_KEY, QUARANTINE_KEY, TOKEN, WRITE_KEY, Server, basic, bearer, start_server
from starlette.testclient import TestClient

from collector.http import debugger
from collector.pipeline import debug_hub
from collector.pipeline.metrics import Pool


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
    ids = [i for i, _ in entries]
    assert len(ids) == 4 and ids == sorted(set(ids))  # in order of arrival, each its own id
    valid, rejected, quarantined, other = (entry for _, entry in entries)
    assert valid["kind"] == "event" and valid["sourceId"] == "src_web"
    assert valid["message"]["event"] == "Seen" and valid["message"]["receivedAt"]  # as stored, enriched
    assert rejected["kind"] == "invalid" and rejected["outcome"] == "rejected"
    assert rejected["errors"][0]["pointer"] == "/event"
    assert quarantined["outcome"] == "quarantined" and quarantined["sourceId"] == "src_q"
    assert other["sourceId"] == "src_other" and other["message"]["type"] == "page"

    only_other = client.get("/debugger/stream", params={"token": ADMIN, "sourceId": "src_other", "lastEventId": "0"})
    assert [entry["sourceId"] for _, entry in arrivals(only_other.text)] == ["src_other"]
    after_two = client.get("/debugger/stream", headers={**bearer(ADMIN), "Last-Event-ID": str(ids[1])})
    assert [i for i, _ in arrivals(after_two.text)] == ids[2:]
    fresh = client.get("/debugger/stream", headers=bearer(ADMIN))  # no id: only what arrives from now on
    assert arrivals(fresh.text) == []


def test_a_flagged_event_shows_its_quality_violations(client: TestClient, short_streams: None) -> None:
    flagged = {"event": "Paid", "userId": "u1", "properties": {"currency": "usd"}, "timestamp": 1700000000000}
    assert client.post("/v1/track", json=flagged, headers=basic(WRITE_KEY)).status_code == 200
    answer = client.get("/debugger/stream", params={"token": ADMIN}, headers={"Last-Event-ID": "0"})
    [(_, entry)] = arrivals(answer.text)
    assert entry["kind"] == "event"  # stored, not refused
    violations = entry["message"]["context"]["protocols"]["violations"]
    assert sorted(v["rule"] for v in violations) == ["properties.currency:pattern", "timestamp:numericTimestamp"]
    page = client.get("/debugger", params={"token": ADMIN}).text
    assert "flagged ${quality.length}" in page  # the page badges such events and lists their rules


def test_an_invalid_message_with_a_big_integer_is_shown_exactly(client: TestClient, short_streams: None) -> None:
    body = b'{"userId": "u", "n": 123456789012345678901234567890}'  # no event: refused
    assert client.post("/v1/track", content=body, headers=basic(WRITE_KEY)).status_code == 400
    answer = client.get("/debugger/stream", params={"token": ADMIN}, headers={"Last-Event-ID": "0"})
    assert '"n":123456789012345678901234567890' in answer.text  # orjson alone cannot encode it


def test_a_too_deep_invalid_message_does_not_cost_the_later_ones_their_entries(
    client: TestClient, short_streams: None, caplog: pytest.LogCaptureFixture
) -> None:
    deep: object = "x"
    for _ in range(400):  # deeper than orjson encodes (255), within what the parser takes
        deep = {"d": deep}
    batch = {"batch": [{"type": "track", "userId": "u", "deep": deep}, {"type": "track", "userId": "u"}]}
    assert client.post("/v1/batch", json=batch, headers=basic(WRITE_KEY)).status_code == 400  # no event: refused
    answer = client.get("/debugger/stream", params={"token": ADMIN}, headers={"Last-Event-ID": "0"})
    entries = [entry for _, entry in arrivals(answer.text)]
    assert [entry["index"] for entry in entries] == [0, 1]
    assert entries[0]["message"]["tooDeep"] is True and entries[1]["message"]["type"] == "track"
    assert "Traceback" not in caplog.text and "listener" not in caplog.text


def test_hub_drops_entries_for_a_stalled_subscriber_instead_of_blocking() -> None:
    import asyncio

    hub = debug_hub.DebugHub()
    stalled: asyncio.Queue[debug_hub.Entry] = asyncio.Queue(2)
    hub.subscribers.add(stalled)
    for n in range(5):
        hub.publish("src", b'{"n":%d}' % n)
    recent = [item[0] for item in hub.since(0)]
    assert stalled.qsize() == 2 and len(recent) == 5 and recent == sorted(set(recent))


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


def next_arrivals(lines: Iterator[str], wanted: int) -> list[tuple[int, dict[str, Any]]]:
    """Arrivals read off a stream's lines until `wanted` came or the stream ended."""
    found: list[tuple[int, dict[str, Any]]] = []
    block: list[str] = []
    for line in lines:
        if line:
            block.append(line)
            continue
        found += arrivals("\n".join(block))
        block = []
        if len(found) >= wanted:
            break
    return found


def read_arrivals(url: str, wanted: int, headers: dict[str, str]) -> list[tuple[int, dict[str, Any]]]:
    """Arrivals from a stream on a new connection."""
    with httpx.Client(timeout=httpx.Timeout(15.0)) as http:
        with http.stream("GET", f"{url}/debugger/stream", params={"token": ADMIN}, headers=headers) as stream:
            assert stream.status_code == 200
            return next_arrivals(stream.iter_lines(), wanted)


def test_with_workers_every_stream_shows_every_workers_arrivals(tmp_path: Path, config_path: Path) -> None:
    """A stream is served by one worker; the others' arrivals reach it through the workers directory,
    and a reconnect replays what it missed whichever worker it lands on."""
    pool = tmp_path / "pool"
    storage = f"sqlite:///{tmp_path / 'events.db'}"
    node = start_server(tmp_path, config_path, storage, "--workers", "2", env={"COLLECTOR_WORKERS_DIR": str(pool)})
    sent = [f"live-{number}" for number in range(30)]
    try:
        deadline = time.monotonic() + 10
        while len(list(pool.glob("debug-*.sock"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(list(pool.glob("debug-*.sock"))) == 2, "each worker listens for its peers"
        with httpx.Client(timeout=httpx.Timeout(15.0)) as http:
            with http.stream("GET", f"{node.url}/debugger/stream", params={"token": ADMIN}) as stream:
                lines = stream.iter_lines()
                assert next(lines).startswith("retry:")  # subscribed before anything is sent
                for message_id in sent:
                    with httpx.Client() as client:  # a connection each: the kernel spreads them over the workers
                        event = {"event": "Live", "userId": "u", "messageId": message_id}
                        answer = client.post(f"{node.url}/v1/track", json=event, headers=basic(WRITE_KEY))
                        assert answer.status_code == 200
                seen = next_arrivals(lines, len(sent))
        assert sorted(entry["message"]["messageId"] for _, entry in seen) == sorted(sent)  # each once
        time.sleep(Pool.PUBLISH_SECONDS + 0.5)
        per_worker = [
            sum(entry[-1] for entry in orjson.loads(p.read_bytes())["tallies"]["collector_events"])
            for p in pool.glob("*.json")
        ]
        assert all(0 < count < len(sent) for count in per_worker), f"one worker took every event: {per_worker}"

        ids = sorted(entry_id for entry_id, _ in seen)
        for _ in range(6):  # a new connection each time: the reconnect lands on either worker
            replayed = read_arrivals(node.url, len(sent) - 10, {"Last-Event-ID": str(ids[9])})
            assert sorted(entry_id for entry_id, _ in replayed) == ids[10:]
    finally:
        node.stop()


def test_a_stream_reaching_further_back_than_the_followed_one_gets_the_peers_older_entries(tmp_path: Path) -> None:
    """Two workers' hubs in one process. A already follows B for a fresh stream when a second
    stream on A asks for older entries (another tab, a late reconnect): B's are replayed to it."""
    import asyncio

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        hub_a, hub_b = debug_hub.DebugHub(), debug_hub.DebugHub()
        peers_a = debug_hub.DebugPeers(hub_a, tmp_path, name="a")
        peers_b = debug_hub.DebugPeers(hub_b, tmp_path, name="b")
        await peers_a.start()
        await peers_b.start()
        try:
            for n in range(3):  # no stream open anywhere: B keeps these to itself
                hub_b.publish("src", b'{"n":%d}' % n)
            await asyncio.sleep(0.01)
            fresh: asyncio.Queue[debug_hub.Entry] = asyncio.Queue()
            hub_a.subscribers.add(fresh)
            peers_a.watch(hub_a.now_id())  # the first stream: from now on
            older: asyncio.Queue[debug_hub.Entry] = asyncio.Queue()
            hub_a.subscribers.add(older)
            peers_a.watch(0)  # the second stream: everything
            hub_b.publish("src", b'{"n":"live"}')
            got: list[bytes] = []
            while len(got) < 4:
                got.append(b"".join((await asyncio.wait_for(older.get(), 5))[2]))
            await asyncio.sleep(0.2)
            live = []
            while not fresh.empty():  # the first stream gets live entries (frames() drops those older than it)
                live.append(b"".join(fresh.get_nowait()[2]))
            await peers_a.unwatch()
            await peers_a.unwatch()
            return got, live
        finally:
            await peers_a.stop()
            await peers_b.stop()

    got, live = asyncio.run(scenario())
    assert sorted(got) == sorted([b'{"n":0}', b'{"n":1}', b'{"n":2}', b'{"n":"live"}'])
    assert b'{"n":"live"}' in live
