"""Real collector processes: the real segment-analytics-python SDK, and crash durability under SIGKILL."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import ADMIN, STRICT_KEY, WRITE_KEY, Server, basic, bearer, start_server
from segment.analytics.client import Client


def read_all(server: Server, **params: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {"limit": "1000", **params} | ({"cursor": cursor} if cursor else {})
        page = httpx.get(server.url + "/v1/events", params=query, headers=bearer(ADMIN), timeout=30).json()
        events += [item["event"] for item in page["data"]]
        cursor = page["meta"]["nextCursor"]
        if not cursor:
            return events


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_segment_python_sdk_every_call_is_stored(server: Server, gzip: bool) -> None:
    errors: list[Any] = []
    sdk = Client(
        WRITE_KEY,
        host=server.url,
        gzip=gzip,
        sync_mode=True,
        max_retries=0,
        on_error=lambda error, batch: errors.append(error),
    )
    sdk.identify("user-1", {"email": "a@example.com", "plan": "pro"})
    sdk.track("user-1", "Course Clicked", {"title": "Intro", "revenue": 19.99, "currency": "USD"})
    sdk.page("user-1", name="Home", properties={"path": "/", "url": "https://example.com/"})
    sdk.screen("user-1", name="Dashboard", properties={"section": "main"})
    sdk.group("user-1", "grp_1", {"name": "Acme"})
    sdk.alias("user-1", "user-2")
    sdk.flush()
    assert errors == []
    events = read_all(server)
    by_type = {e["type"]: e for e in events}
    assert sorted(by_type) == ["alias", "group", "identify", "page", "screen", "track"]
    assert len(events) == 6
    assert by_type["track"]["properties"]["revenue"] == 19.99
    assert by_type["identify"]["traits"] == {"email": "a@example.com", "plan": "pro"}
    assert by_type["alias"]["previousId"] == "user-1" and by_type["alias"]["userId"] == "user-2"
    assert by_type["page"]["name"] == "Home" and by_type["group"]["groupId"] == "grp_1"
    for event in events:
        assert "anonymousId" not in event  # the SDK sends null: absent
        assert event["context"]["library"]["name"] == "analytics-python"
        assert event["context"]["ip"] == "127.0.0.1"
        assert event["originalTimestamp"] and event["receivedAt"] and event["sentAt"]


def test_segment_python_sdk_reads_our_400_as_a_final_api_error(server: Server) -> None:
    # The SDK retries anything that is not an APIError (a KeyError on a body without `code`
    # included); our error body parses into an APIError with status 400, which it gives up on.
    from segment.analytics.request import APIError

    # A source that rejects quality problems (by default they are stored and flagged).
    sdk = Client(STRICT_KEY, host=server.url, sync_mode=True, max_retries=3)
    with pytest.raises(APIError) as raised:
        sdk.track("user-1", "X", {"revenue": "not a number"})
    assert raised.value.status == 400 and raised.value.code == "invalid_message"
    assert "/properties/revenue" in raised.value.message
    assert read_all(server) == []


class Traffic:
    """Eight senders posting batches of 1 or 10 events until stopped; `acked` holds every
    messageId of a 200. A refused or broken connection is tried again (a worker may be gone)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.acked: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, args=(worker,)) for worker in range(8)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def wait_for(self, count: int, seconds: float = 10) -> None:
        deadline = time.monotonic() + seconds
        while len(self.acked) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def _send(self, worker: int) -> None:
        with httpx.Client(base_url=self.server.url, headers=basic(WRITE_KEY), timeout=5) as client:
            for n in range(100_000):
                if self._stop.is_set():
                    return
                ids = [f"w{worker}-{n}-{i}" for i in range(random.choice([1, 1, 10]))]
                batch = {"batch": [{"type": "track", "event": "Load", "userId": "u", "messageId": m} for m in ids]}
                try:
                    answer = client.post("/v1/batch", json=batch)
                except httpx.HTTPError:
                    time.sleep(0.01)
                    continue
                if answer.status_code == 200:
                    with self._lock:
                        self.acked.extend(ids)


def test_every_acknowledged_event_survives_sigkill(tmp_path: Path, config_path: Path) -> None:
    """Concurrent senders; SIGKILL mid-traffic; after a restart every 200'd messageId is there."""
    db = f"sqlite:///{tmp_path / 'crash.db'}"
    server = start_server(tmp_path, config_path, db, name="crash")
    with Traffic(server) as traffic:
        traffic.wait_for(1500)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
    acked = traffic.acked
    assert len(acked) >= 200, "too little traffic before the kill to prove anything"

    restarted = start_server(tmp_path, config_path, db, port=int(server.url.rsplit(":", 1)[1]), name="restart")
    try:
        stored = [e["messageId"] for e in read_all(restarted)]
    finally:
        restarted.stop()
    missing = set(acked) - set(stored)
    print(f"SIGKILL: acked {len(acked)}, stored {len(stored)}, missing {len(missing)}, doubled {duplicates(stored)}")
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}"
    assert duplicates(stored) == 0


def test_a_worker_killed_mid_write_loses_nothing_and_stalls_no_other(tmp_path: Path, config_path: Path) -> None:
    """--workers 2 on one SQLite file: SIGKILL one worker under load (it may hold the write turn,
    `<db>-writelock`); the other keeps answering 200s, and every acknowledged event is stored once."""
    server = start_server(tmp_path, config_path, f"sqlite:///{tmp_path / 'shared.db'}", "--workers", "2")
    try:
        with Traffic(server) as traffic:
            traffic.wait_for(1500)
            workers = worker_pids(server.process.pid)
            assert len(workers) == 2, workers
            os.kill(workers[0], signal.SIGKILL)
            at_kill = len(traffic.acked)
            traffic.wait_for(at_kill + 1500)
            assert len(traffic.acked) >= at_kill + 1500, "the surviving worker stopped answering 200s"
        stored = [event["messageId"] for event in read_all(server)]
    finally:
        server.stop()
    missing = set(traffic.acked) - set(stored)
    print(
        f"a worker killed: acked {len(traffic.acked)} ({at_kill} before the kill), stored {len(stored)},"
        f" missing {len(missing)}, doubled {duplicates(stored)}"
    )
    assert duplicates(stored) == 0, "an event was stored twice"
    assert not missing, f"{len(missing)} of {len(traffic.acked)} acknowledged events lost, e.g. {sorted(missing)[:5]}"


def duplicates(message_ids: list[str]) -> int:
    return len(message_ids) - len(set(message_ids))


def worker_pids(supervisor: int) -> list[int]:
    """uvicorn's worker processes: the supervisor's children started by multiprocessing's spawn."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parent = int(Path(entry, "stat").read_text().rpartition(")")[2].split()[1])
                if parent == supervisor and b"spawn_main" in Path(entry, "cmdline").read_bytes():
                    found.append(int(entry.name))
    return sorted(found)


def test_access_log_lines_carry_the_request_id(tmp_path: Path, config_path: Path) -> None:
    import json

    server = start_server(tmp_path, config_path, f"sqlite:///{tmp_path / 'log.db'}", "--access-log", name="logs")
    try:
        answer = httpx.get(
            server.url + "/identify/usr_AAAAAAAAAAAAAAAA",
            headers=bearer("tok_test_workspace") | {"X-Request-Id": "trace-42"},
        )
        assert answer.status_code == 404 and answer.headers["x-request-id"] == "trace-42"
        time.sleep(0.2)
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    [entry] = [line for line in lines if line.get("request_id") == "trace-42"]
    assert entry["status"] == 404 and entry["path"] == "/identify/usr_AAAAAAAAAAAAAAAA" and entry["method"] == "GET"


def test_workers_log_json_lines_with_request_ids_like_one_process(tmp_path: Path, config_path: Path) -> None:
    import json
    import sqlite3

    database = tmp_path / "workers.db"
    server = start_server(
        tmp_path,
        config_path,
        f"sqlite:///{database}",
        "--workers",
        "2",
        "--access-log",
        env={"COLLECTOR_SQLITE_BUSY_TIMEOUT_MS": "200"},
        name="workers",
    )
    try:
        with httpx.Client(timeout=10) as client:
            for index in range(20):  # spread over both workers by the kernel
                answer = client.get(server.url + "/health", headers={"X-Request-Id": f"access-{index}"})
                assert answer.status_code == 200
            # Another process holds SQLite's write lock: the write waits its busy timeout, then a 503.
            holder = sqlite3.connect(database, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            try:
                failed = client.post(
                    server.url + "/v1/t",
                    json={"event": "E", "userId": "u"},
                    headers={**basic(WRITE_KEY), "X-Request-Id": "locked-1"},
                )
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            assert failed.status_code == 503
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and '"locked-1"' not in server.log():
            time.sleep(0.05)
    finally:
        server.stop()
    lines = [line for line in server.log().splitlines() if line.strip()]
    # Everything but `serve`'s own start-up lines (print) is a JSON object.
    entries = [json.loads(line) for line in lines if not line.startswith(("collector: ", "  source "))]
    by_id = {entry.get("request_id"): entry for entry in entries}
    for index in range(20):
        entry = by_id[f"access-{index}"]
        assert (entry["logger"], entry["method"], entry["path"], entry["status"]) == (
            "collector.access",
            "GET",
            "/health",
            200,
        )
    errors = [e for e in entries if e.get("request_id") == "locked-1" and e["logger"] != "collector.access"]
    assert errors and errors[0]["level"] == "warning" and "storage_unavailable" in errors[0]["message"]
