"""Many collector processes on shared backends, and what happens when a backend fails.

Every test runs real `python -m collector serve` processes against real PostgreSQL / NATS
servers on loopback. Senders behave like the SDKs: a batch is re-sent (to any node) until it
is answered 200, so at the end every event must be stored exactly once, and every event
acknowledged with a 200 must be in storage, whatever failed in between.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import ADMIN, TOKEN, WRITE_KEY, Server, basic, bearer, start_server, write_config
from servers import Nats, NatsNode, Postgres, start_nats, start_postgres

RETRY_PAUSE = 0.05


@pytest.fixture(scope="module")
def pg_server() -> Iterator[Postgres]:
    server = start_postgres()
    yield server
    server.remove()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "collector.yaml")


def fresh_database(server: Postgres, **options: str) -> str:
    name = "t_" + os.urandom(6).hex()
    server.create_database(name)
    return server.url(name, **options)


@dataclass
class Senders:
    """Threads sending unique events in batches, SDK-style (re-sent until 200), to several nodes."""

    urls: list[str]
    batch_size: int = 10
    acked: set[str] = field(default_factory=set)
    answers: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, status; 0 = no answer)
    unavailable: list[httpx.Response] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def next_ids(self, prefix: str = "m") -> list[str]:
        with self._lock:
            return [f"{prefix}-{next(self._ids):06d}" for _ in range(self.batch_size)]

    def post(self, client: httpx.Client, url: str, ids: list[str]) -> int:
        body = {"batch": [{"type": "track", "event": "Load", "userId": "u1", "messageId": i} for i in ids]}
        try:
            answer = client.post(url + "/v1/batch", json=body, headers=basic(WRITE_KEY), timeout=15)
            status = answer.status_code
        except httpx.HTTPError:
            answer, status = None, 0
        with self._lock:
            self.answers.append((time.monotonic(), status))
            if status == 200:
                self.acked.update(ids)
            elif status == 503 and answer is not None:
                self.unavailable.append(answer)
        return status

    def deliver(self, client: httpx.Client, ids: list[str], start: int = 0, within: float = 90) -> None:
        """Send to the nodes in turn until one answers 200."""
        deadline = time.monotonic() + within
        for url in itertools.islice(itertools.cycle(self.urls), start, None):
            if self.post(client, url, ids) == 200:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"batch {ids[0]}… never acknowledged")
            time.sleep(RETRY_PAUSE)

    def start(self, threads: int) -> None:
        def loop(index: int) -> None:
            with httpx.Client() as client:
                while not self._stop.is_set():
                    self.deliver(client, self.next_ids(), start=index)

        self._threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
            assert not thread.is_alive(), "a sender never got its batch acknowledged"

    def sent(self) -> set[str]:
        with self._lock:
            return set(self.acked)

    def statuses(self, since: float = 0.0) -> Counter[int]:
        with self._lock:
            return Counter(status for moment, status in self.answers if moment >= since)


def stored_ids(node: Server, prefix: str = "") -> list[str]:
    """Every stored messageId, through the read-back API (duplicates would show twice)."""
    ids: list[str] = []
    cursor = None
    deadline = time.monotonic() + 60
    with httpx.Client(timeout=60) as client:
        while True:
            params = {"limit": "1000"} | ({"cursor": cursor} if cursor else {})
            answer = client.get(node.url + "/v1/events", params=params, headers=bearer(ADMIN))
            if answer.status_code == 503 and time.monotonic() < deadline:
                # Storage says "retry" (e.g. a JetStream read right after a leader election): as a client would.
                time.sleep(1)
                continue
            assert answer.status_code == 200, answer.text
            page = answer.json()
            ids += [item["event"]["messageId"] for item in page["data"]]
            cursor = page["meta"]["nextCursor"]
            if not cursor:
                return [i for i in ids if i.startswith(prefix)]


def wait_ready(node: Server, expected: int, within: float = 30) -> httpx.Response:
    deadline = time.monotonic() + within
    while True:
        try:
            answer = httpx.get(node.url + "/ready", timeout=5)
            if answer.status_code == expected:
                return answer
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"/ready never answered {expected}"
        time.sleep(0.1)


def wait_for(condition: Any, what: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def assert_unavailable_answers_are_503_with_retry_after(senders: Senders) -> None:
    assert senders.unavailable, "no 503 was seen while storage was down"
    for answer in senders.unavailable:
        assert answer.headers.get("retry-after", "").isdigit(), answer.headers
        assert answer.json()["code"] == "storage_unavailable"


# --- many nodes, one backend ------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql", "nats"])
def test_two_collectors_share_one_backend_and_store_each_event_once(
    backend: str, tmp_path: Path, config: Path, pg_server: Postgres
) -> None:
    profiles = fresh_database(pg_server)
    nats: Nats | None = None
    if backend == "nats":
        nats = start_nats()
        storage, extra = nats.url(), ["--profiles", profiles]
    else:
        storage, extra = profiles, []
    nodes = [start_server(tmp_path, config, storage, *extra, name=name) for name in ("a", "b")]
    try:
        senders = Senders([node.url for node in nodes], batch_size=20)
        batches = [senders.next_ids() for _ in range(20)]

        def send_everywhere(index_and_ids: tuple[int, list[str]]) -> None:
            index, ids = index_and_ids
            with httpx.Client() as client:
                # Sent to one node, then re-sent to the other (as after a timeout behind a load balancer).
                assert senders.post(client, nodes[index % 2].url, ids) == 200
                assert senders.post(client, nodes[(index + 1) % 2].url, ids) == 200
                assert senders.post(client, nodes[index % 2].url, ids[:3]) == 200

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(send_everywhere, enumerate(batches)))
        expected = sorted(i for batch in batches for i in batch)
        for node in nodes:
            assert sorted(stored_ids(node)) == expected  # each once, seen alike from both nodes

        # Profiles are shared too: created on one node, merged on the other, read on the first.
        created = httpx.post(nodes[0].url + "/identify", json={"traits": {"a": 1}}, headers=bearer(TOKEN)).json()
        merged = httpx.post(nodes[1].url + f"/track/{created['id']}", json={"traits": {"b": 2}}, headers=bearer(TOKEN))
        assert merged.status_code == 200, merged.text
        read = httpx.get(nodes[0].url + f"/identify/{created['id']}", headers=bearer(TOKEN)).json()
        assert read["traits"] == {"a": 1, "b": 2}
    finally:
        for node in nodes:
            node.stop()
        if nats is not None:
            nats.remove()


def test_workers_2_on_sqlite_keep_every_event(tmp_path: Path, config: Path) -> None:
    node = start_server(tmp_path, config, f"sqlite:///{tmp_path / 'events.db'}", "--workers", "2")
    try:
        senders = Senders([node.url], batch_size=10)
        batches = [senders.next_ids() for _ in range(60)]

        def send(ids: list[str]) -> None:
            with httpx.Client() as client:
                assert senders.post(client, node.url, ids) == 200
                for one in ids[:2]:  # single calls too, and a re-send
                    answer = client.post(
                        node.url + "/v1/track",
                        json={"event": "Again", "userId": "u1", "messageId": one},
                        headers=basic(WRITE_KEY),
                    )
                    assert answer.status_code == 200

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(send, batches))
        assert sorted(stored_ids(node)) == sorted(i for batch in batches for i in batch)
    finally:
        node.stop()


# --- a backend fails under traffic --------------------------------------------------------------


def test_nats_down_gives_503_and_unready_then_recovers_with_every_acked_event(
    tmp_path: Path, config: Path, pg_server: Postgres
) -> None:
    nats = start_nats()
    node = start_server(tmp_path, config, nats.url(timeout=1), "--profiles", fresh_database(pg_server))
    try:
        senders = Senders([node.url], batch_size=5)
        senders.start(threads=4)
        wait_for(lambda: len(senders.sent()) >= 200, "traffic before the outage")

        nats.nodes[0].stop(signal.SIGKILL)
        down = time.monotonic()
        unready = wait_ready(node, 503, within=15)
        assert unready.json()["storage"] is False and unready.headers.get("retry-after")
        wait_for(lambda: senders.statuses(since=down)[503] >= 5, "503s while NATS is down")
        acked_at_outage = senders.sent()
        assert senders.statuses(since=time.monotonic())[200] == 0

        nats.nodes[0].start()
        wait_ready(node, 200, within=30)  # no restart of the collector: it reconnects by itself
        back = time.monotonic()
        wait_for(lambda: senders.statuses(since=back)[200] >= 20, "200s after NATS came back")
        senders.stop()

        assert_unavailable_answers_are_503_with_retry_after(senders)
        assert senders.statuses()[500] == 0
        stored = stored_ids(node)
        assert acked_at_outage <= set(stored)  # acknowledged before the crash: survived it
        assert sorted(stored) == sorted(senders.sent())  # every acked event, each exactly once
    finally:
        node.stop()
        nats.remove()


def test_postgresql_restart_gives_503_then_recovers_and_loses_no_merge(tmp_path: Path, config: Path) -> None:
    postgres = start_postgres()
    node = start_server(tmp_path, config, postgres.url(pool_timeout="1"))
    try:
        user = httpx.post(node.url + "/identify", json={"traits": {"start": True}}, headers=bearer(TOKEN)).json()
        merges: Counter[int] = Counter()
        acked_keys: set[str] = set()
        merge_stop = threading.Event()
        keys = itertools.count()
        keys_lock = threading.Lock()

        def merge_loop() -> None:
            with httpx.Client(timeout=15) as client:
                while not merge_stop.is_set():
                    with keys_lock:
                        key = next(keys)
                    while True:  # re-sent until acknowledged, like any client
                        try:
                            status = client.post(
                                node.url + f"/track/{user['id']}",
                                json={"traits": {f"k{key}": key}},
                                headers=bearer(TOKEN),
                            ).status_code
                        except httpx.HTTPError:
                            status = 0
                        merges[status] += 1
                        if status == 200:
                            acked_keys.add(f"k{key}")
                            break
                        time.sleep(RETRY_PAUSE)

        senders = Senders([node.url], batch_size=5)
        senders.start(threads=2)
        mergers = [threading.Thread(target=merge_loop, daemon=True) for _ in range(2)]
        for thread in mergers:
            thread.start()
        wait_for(lambda: len(senders.sent()) >= 100 and merges[200] >= 20, "traffic before the restart")

        postgres.stop(signal.SIGKILL)  # a crash, then a restart on the same data
        down = time.monotonic()
        wait_ready(node, 503, within=15)
        wait_for(lambda: senders.statuses(since=down)[503] >= 3, "503s while PostgreSQL is down")
        acked_at_outage = senders.sent()
        postgres.start()
        wait_ready(node, 200, within=30)
        back = time.monotonic()
        wait_for(lambda: senders.statuses(since=back)[200] >= 20, "200s after the restart")
        merge_stop.set()
        for thread in mergers:
            thread.join(timeout=60)
        senders.stop()

        assert_unavailable_answers_are_503_with_retry_after(senders)
        assert merges[503] > 0 and merges[500] == 0 and senders.statuses()[500] == 0
        profile = httpx.get(node.url + f"/identify/{user['id']}", headers=bearer(TOKEN)).json()
        merged = {key for key in profile["traits"] if key.startswith("k")}
        assert merged == acked_keys and len(acked_keys) == merges[200]  # every acknowledged merge is there
        stored = stored_ids(node)
        assert acked_at_outage <= set(stored)
        assert sorted(stored) == sorted(senders.sent())
    finally:
        node.stop()
        postgres.remove()


def stream_leader(nats: Nats, stream: str) -> str:
    for node in nats.nodes:
        try:
            info = httpx.get(f"http://127.0.0.1:{node.monitor_port}/jsz", params={"streams": "true"}, timeout=2).json()
        except (httpx.HTTPError, ValueError):
            continue
        for account in info.get("account_details", []):
            for detail in account.get("stream_detail", []):
                if detail["name"] == stream and detail.get("cluster", {}).get("leader"):
                    return str(detail["cluster"]["leader"])
    raise AssertionError(f"stream {stream} has no leader")


def test_jetstream_cluster_r3_keeps_answering_200_through_sigkill_of_a_node(
    tmp_path: Path, config: Path, pg_server: Postgres
) -> None:
    cluster = start_nats(3)
    # timeout=20: a request may wait that long for its acks, through a stream leader election (4–9 s
    # here, longer on a loaded 2-core CI machine).
    node = start_server(tmp_path, config, cluster.url(replicas=3, timeout=20), "--profiles", fresh_database(pg_server))
    try:
        senders = Senders([node.url], batch_size=10)
        senders.start(threads=4)
        wait_for(lambda: len(senders.sent()) >= 300, "traffic before the first kill")

        # 1. A follower of the stream dies: the leader and the other follower are a quorum.
        leader = stream_leader(cluster, "EVENTS")
        follower = next(n for n in cluster.nodes if n.name != leader)
        acked_before = senders.sent()
        follower.stop(signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: senders.statuses(since=killed + 0.5)[200] >= 100, "200s after a follower died")
        follower.start()  # back, catching up from the others
        wait_for(lambda: follower_is_current(cluster, follower), "the restarted node to catch up", 60)

        # 2. The stream leader dies: the two others elect a new one; requests wait, then succeed.
        leader_node = next(n for n in cluster.nodes if n.name == stream_leader(cluster, "EVENTS"))
        leader_node.stop(signal.SIGKILL)
        killed_leader = time.monotonic()
        wait_for(lambda: senders.statuses(since=killed_leader + 1)[200] >= 100, "200s after the leader died", 60)
        senders.stop()

        print(f"answers after the follower kill: {dict(senders.statuses(since=killed))}")
        print(f"answers after the leader kill: {dict(senders.statuses(since=killed_leader))}")
        answers = senders.statuses(since=killed)
        assert set(answers) == {200}, answers  # a quorum remained all along: only 200s
        stored = stored_ids(node)
        assert acked_before <= set(stored)
        assert sorted(stored) == sorted(senders.sent())  # zero acked events missing, none twice
    finally:
        node.stop()
        cluster.remove()


def follower_is_current(cluster: Nats, node: NatsNode) -> bool:
    """True when `node` is back in the stream's replica set and current, as the stream leader sees it
    (only the leader tracks how far each replica is; another follower's view may never say current)."""
    try:
        leader = stream_leader(cluster, "EVENTS")
    except AssertionError:
        return False
    other = next((n for n in cluster.nodes if n.name == leader and n is not node), None)
    if other is None:
        return False
    try:
        info = httpx.get(f"http://127.0.0.1:{other.monitor_port}/jsz", params={"streams": "true"}, timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False
    for account in info.get("account_details", []):
        for detail in account.get("stream_detail", []):
            if detail["name"] == "EVENTS":
                for replica in detail.get("cluster", {}).get("replicas", []):
                    if replica["name"] == node.name:
                        return bool(replica.get("current"))
    return False
