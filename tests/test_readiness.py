"""/ready answers from background write probes: at once, even while PostgreSQL is down, and truthfully."""

from __future__ import annotations

import json
import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import WRITE_KEY, basic, make_client, start_server
from servers import Postgres, start_postgres


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    server = start_postgres()
    yield server
    server.remove()


def timed_ready(client: httpx.Client, url: str) -> tuple[int, float, dict[str, object]]:
    began = time.perf_counter()
    answer = client.get(url + "/ready")
    return answer.status_code, time.perf_counter() - began, answer.json()


def wait_status(client: httpx.Client, url: str, status: int, within: float) -> float:
    """When /ready first answered `status` (time.monotonic())."""
    began = time.monotonic()
    while time.monotonic() - began < within:
        if timed_ready(client, url)[0] == status:
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"/ready never answered {status} within {within} s")


def test_ready_answers_at_once_during_a_postgresql_outage_and_recovers_within_seconds(
    tmp_path: Path, config_path: Path, postgres: Postgres
) -> None:
    server = start_server(tmp_path, config_path, postgres.url(), name="ready-pg")  # the default pool_timeout (5 s)
    try:
        with httpx.Client(timeout=5) as client:
            assert timed_ready(client, server.url)[0] == 200

            killed = time.monotonic()
            postgres.stop(signal.SIGKILL)
            to_unready = wait_status(client, server.url, 503, within=10) - killed
            answers = [timed_ready(client, server.url) for _ in range(30)]
            body = answers[0][2]
            assert body["code"] == "storage_unavailable" and body["storage"] is False and body["profiles"] is False
            write = client.post(
                server.url + "/v1/t", json={"event": "E", "userId": "u"}, headers=basic(WRITE_KEY), timeout=15
            )
            assert write.status_code == 503
            # Down long enough that psycopg_pool's own backoff (1, 2, 4, 8 s) would keep it away for seconds.
            while time.monotonic() - killed < 8:
                answers.append(timed_ready(client, server.url))
                time.sleep(0.1)
            statuses = {status for status, _, _ in answers}
            latencies = sorted(seconds for _, seconds, _ in answers)
            assert statuses == {503}

            restarting = time.monotonic()
            postgres.start()  # returns once PostgreSQL accepts connections
            accepting = time.monotonic()
            ready_at = wait_status(client, server.url, 200, within=15)
            to_ready, after_accepting = ready_at - restarting, max(ready_at - accepting, 0.0)
            # Ready means writable: a write right away is stored.
            written = client.post(server.url + "/v1/t", json={"event": "E", "userId": "u"}, headers=basic(WRITE_KEY))
            assert written.status_code == 200, written.text
    finally:
        server.stop()
    print(
        f"\n/ready during the outage: median {statistics.median(latencies) * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms over {len(latencies)}; unready {to_unready:.2f} s after the kill; "
        f"ready {to_ready:.2f} s after the restart began ({after_accepting:.2f} s after it accepted connections)"
    )
    assert latencies[-1] < 0.5  # < 100 ms on a quiet machine; generous for a shared VM
    assert to_unready < 5 and after_accepting < 4
    # psycopg's pool complained while the server was down: through the same JSON formatter.
    lines = [
        line for line in server.log().splitlines() if line.strip() and not line.startswith(("collector: ", "  source "))
    ]
    entries = [json.loads(line) for line in lines]
    assert any(entry["logger"].startswith("psycopg") for entry in entries), lines


def test_sqlite_is_unready_while_another_process_holds_the_write_lock(config_path: Path, tmp_path: Path) -> None:
    """A read (the old probe) still works then; a write would wait out its busy timeout and answer 503."""
    import sqlite3

    database = tmp_path / "locked.db"
    with make_client(config_path, f"sqlite:///{database}") as client:
        assert client.get("/ready").status_code == 200
        holder = sqlite3.connect(database, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            deadline = time.monotonic() + 5
            while client.get("/ready").status_code != 503:
                assert time.monotonic() < deadline, "/ready stayed 200 while no write could commit"
                time.sleep(0.05)
            began = time.perf_counter()
            answer = client.get("/ready")
            assert answer.status_code == 503 and time.perf_counter() - began < 0.5
            assert answer.json()["storage"] is False
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        deadline = time.monotonic() + 10
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "/ready did not come back once the lock was released"
            time.sleep(0.05)


def test_a_hung_probe_makes_the_store_unready_without_piling_probes_up() -> None:
    import asyncio

    from collector.pipeline.readiness import Readiness

    class Store:
        def __init__(self) -> None:
            self.hang = asyncio.Event()
            self.hang.set()  # set: answers at once
            self.calls = self.running = self.most = 0

        async def ping(self) -> bool:
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
            try:
                await self.hang.wait()
                return True
            finally:
                self.running -= 1

    async def scenario() -> None:
        store = Store()
        readiness = Readiness(store, store, interval=0.02, timeout=0.1)
        await readiness.start()
        assert readiness.storage and readiness.profiles
        store.hang.clear()  # the backend stops answering
        await asyncio.sleep(0.5)
        assert not readiness.storage and not readiness.profiles
        calls = store.calls
        await asyncio.sleep(0.3)
        assert store.calls == calls and store.most == 1  # one probe waits; no new ones meanwhile
        store.hang.set()
        await asyncio.sleep(0.1)
        assert readiness.storage and store.calls > calls
        await readiness.stop()
        assert not readiness.storage

    asyncio.run(scenario())


def test_every_503_says_the_configured_retry_after(config_path: Path, db_url: str) -> None:
    """/ready (a Starlette route) renders errors as the event fast path does (errors.render);
    it used to say a hard-coded 5."""
    test_client = make_client(config_path, db_url, COLLECTOR_RETRY_AFTER_SECONDS="9")  # not entered: unready
    answer = test_client.get("/ready")
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "9"
    assert answer.json()["code"] == "storage_unavailable"
    assert int(answer.headers["content-length"]) == len(answer.content)


def test_a_nats_profile_store_is_refused_at_start_up(config_path: Path, db_url: str) -> None:
    """NATS keeps no profiles: starting with it as the profile store would answer every profile
    call with a 500, so start-up refuses it with a sentence."""
    from collector.app import create_app
    from collector.errors import ConfigError
    from collector.settings import load

    environ = {"COLLECTOR_STORAGE": db_url, "COLLECTOR_PROFILES": "nats://127.0.0.1:4222"}
    with pytest.raises(ConfigError, match="NATS stores events only"):
        create_app(load(config_path, environ=environ))
