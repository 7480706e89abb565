"""NATS JetStream under partitions (issue 21): the write probe behind /ready, the client's ping
options, and fail-over to a server that can write when the one we are on is cut off.

Real nats-server processes on loopback. The partition scenarios run a 3-node R3 cluster whose
route links (and the collector's client links) go through TCP proxies (servers.Proxy) that can
blackhole a link: the TCP connections stay up and every byte is dropped, as with a pulled cable.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from helpers import ADMIN, WRITE_KEY, Server, basic, bearer, start_server, write_config
from nats.js import api
from servers import Nats, ProxiedNats, start_nats, start_proxied_nats

from collector.errors import StorageUnavailable
from collector.storage.base import EventQuery, StoredEvent
from collector.storage.nats import NATSStorage

WS = "ws_AAAAAAAAAAAAAAAA"


@pytest.fixture(scope="module")
def single() -> Iterator[Nats]:
    server = start_nats()
    yield server
    server.remove()


def stored_event(message_id: str) -> StoredEvent:
    body = f'{{"type":"track","event":"E","messageId":"{message_id}","receivedAt":"2026-01-01T00:00:00.000Z"}}'
    at = "2026-01-01T00:00:00.000Z"
    return StoredEvent(WS, "src_web", message_id, "track", "E", "u1", None, at, at, body.encode())


def stream_leader(cluster: Nats, stream: str) -> str | None:
    for node in cluster.nodes:
        try:
            info = httpx.get(f"http://127.0.0.1:{node.monitor_port}/jsz", params={"streams": "true"}, timeout=2).json()
        except (httpx.HTTPError, ValueError):
            continue
        for account in info.get("account_details", []):
            for detail in account.get("stream_detail", []):
                if detail["name"] == stream and detail.get("cluster", {}).get("leader"):
                    return str(detail["cluster"]["leader"])
    return None


def test_client_options_come_from_the_url() -> None:
    store = NATSStorage("nats://a:4222,b:4222?ping_interval=1.5&max_outstanding_pings=3&failover=0")
    assert (store.ping_interval, store.max_outstanding_pings, store.failover) == (1.5, 3, 0.0)
    default = NATSStorage("nats://a:4222")
    assert (default.ping_interval, default.max_outstanding_pings, default.failover) == (2.0, 2, 3.0)


def test_a_reconnect_goes_to_the_server_left_longest_ago_and_the_one_just_left_last() -> None:
    from urllib.parse import urlparse

    from nats.aio.client import Server

    store = NATSStorage("nats://a:1,b:2,c:3")
    servers = [Server(urlparse(f"nats://{host}")) for host in ("a:1", "b:2", "c:3")]
    store._current = "a:1"  # connected to a, which cannot write
    picks = [store._next_server(servers, {}) for _ in range(4)]  # b, then c, then a fail to connect too
    assert [(server.uri.netloc if server else None, delay) for server, delay in picks] == [
        ("b:2", 0.0),
        ("c:3", 0.0),
        ("a:1", 0.25),  # every server failed a moment ago: pause between attempts
        ("b:2", 0.25),
    ]


def test_ping_is_a_write_to_a_probe_stream_that_keeps_one_message_and_never_shows_in_read_back(
    single: Nats,
) -> None:
    tag = os.urandom(4).hex()

    async def main() -> None:
        store = NATSStorage(single.url(stream=f"P{tag}", prefix=f"p{tag}"))
        await store.open()
        try:
            assert store.nc is not None and store.js is not None
            assert store.nc.options["ping_interval"] == 2.0 and store.nc.options["max_outstanding_pings"] == 2
            await store.write([stored_event("e1")])
            for _ in range(20):
                assert await store.ping() is True
            info = await store.js.stream_info(f"P{tag}_PROBE")
            assert info.config.subjects == [f"p{tag}_probe.>"]
            assert info.config.max_msgs_per_subject == 1 and info.config.num_replicas == 1
            assert info.state.messages == 1  # it never grows
            page = await store.read_events(EventQuery(limit=100))
            assert [item["event"]["messageId"] for item in page.items] == ["e1"]
            assert (await store.js.stream_info(f"P{tag}")).state.messages == 1
        finally:
            await store.close()

    asyncio.run(main())


def test_a_write_awaits_every_pub_ack_and_refusals_fail_it_without_leaking_in_flight_slots(single: Nats) -> None:
    """Publishes await their PubAck on the storage's own inbox: an error reply (a full `discard: new`
    stream), no responders (no stream), or no reply at all (a plain subscriber) is a failed write
    once `timeout` is spent; a timed-out or cancelled write frees its slots, and `inflight` caps them."""
    tag = os.urandom(4).hex()

    def settled(store: NATSStorage) -> bool:
        return not store._awaiting and not store._rounds and store._free == store.inflight

    async def failure(store: NATSStorage, events: list[StoredEvent]) -> str:
        with pytest.raises(StorageUnavailable) as failed:
            await store.write(events)
        return str(failed.value.more_info)

    async def main() -> None:
        nc = await nats.connect(single.url())
        js = nc.jetstream()
        store = NATSStorage(single.url(stream=f"A{tag}", prefix=f"a{tag}", timeout=1, inflight=3, failover=0))
        await store.open()
        try:
            # Within one write the slots come back as acks arrive; duplicates are told apart.
            first = await store.write([stored_event(f"e{i}") for i in range(10)])
            assert (first.stored, first.duplicates) == (10, 0)
            again = await store.write([stored_event("e3"), stored_event("new")])
            assert again.inserted_ids == frozenset({"new"}) and again.duplicates == 1
            assert settled(store)

            # A JetStream error reply ({"error": {"code": 503, …}}) is a failure, published again until timeout.
            await js.delete_stream(f"A{tag}")
            full = api.StreamConfig(name=f"A{tag}", subjects=[f"a{tag}.>"], max_msgs=1, discard=api.DiscardPolicy.NEW)
            await js.add_stream(full)
            await store.write([stored_event("fills-it")])
            assert "maximum messages" in await failure(store, [stored_event("refused")])
            assert settled(store)

            # No stream: the server answers "no responders" at once.
            await js.delete_stream(f"A{tag}")
            assert "NoStreamResponseError" in await failure(store, [stored_event("lost")])
            assert settled(store)

            # A subscriber that never answers: no ack. At most `inflight` publishes wait at a time.
            heard: list[str] = []

            async def hear(msg: Any) -> None:
                heard.append(msg.subject)

            await nc.subscribe(f"a{tag}.>", cb=hear)
            await nc.flush()
            started = time.monotonic()
            assert "no acknowledgement in time" in await failure(store, [stored_event(f"m{i}") for i in range(5)])
            assert 0.9 < time.monotonic() - started < 2.0
            assert settled(store)
            assert len(heard) == 3  # the other two never got a slot before the timeout

            heard.clear()
            writing = asyncio.ensure_future(store.write([stored_event("cancelled")]))
            while not heard:
                await asyncio.sleep(0.01)
            writing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await writing
            assert settled(store)
        finally:
            await store.close()
            await nc.close()

    asyncio.run(main())


def test_ping_is_false_on_a_stream_leader_cut_off_from_its_quorum_though_stream_info_still_answers() -> None:
    """The old probe (stream info) asked the stream leader, which answers while it still believes it
    leads; the write probe needs a quorum. The two other nodes are frozen (SIGSTOP): their TCP
    connections stay open and silent, as in a partition."""
    cluster = start_nats(3)
    frozen: list[Any] = []
    try:

        async def main() -> dict[str, float]:
            opener = NATSStorage(cluster.url(replicas=3))
            await opener.open()  # creates the streams
            await opener.close()
            leader = stream_leader(cluster, "EVENTS_PROBE")
            assert leader is not None
            node = next(n for n in cluster.nodes if n.name == leader)
            store = NATSStorage(f"nats://127.0.0.1:{node.port}?replicas=3&failover=0")
            await store.open()
            try:
                assert await store.ping() is True
                for other in cluster.nodes:
                    if other is not node and other.process is not None:
                        other.process.send_signal(signal.SIGSTOP)
                        frozen.append(other.process)
                cut = time.monotonic()
                while await store.ping():
                    assert time.monotonic() - cut < 5, "ping() stayed true without a quorum"
                unready = time.monotonic() - cut
                assert store.js is not None
                info_answers = 0
                for _ in range(3):  # what the old probe saw meanwhile
                    try:
                        await store.js.stream_info("EVENTS_PROBE")
                        info_answers += 1
                    except Exception:
                        pass
                for process in frozen:
                    process.send_signal(signal.SIGCONT)
                frozen.clear()
                healed = time.monotonic()
                while not await store.ping():
                    assert time.monotonic() - healed < 30, "ping() did not come back after the heal"
                    await asyncio.sleep(0.2)
                return {"unready": unready, "info": info_answers, "ready": time.monotonic() - healed}
            finally:
                await store.close()

        figures = asyncio.run(main())
    finally:
        for process in frozen:
            process.send_signal(signal.SIGCONT)
        cluster.remove()
    print(
        f"\nprobe false {figures['unready']:.2f} s after the cut; stream info answered {figures['info']:.0f}/3 "
        f"meanwhile; probe true {figures['ready']:.2f} s after the heal"
    )
    assert figures["unready"] < 2.5


# --- partitions under load -----------------------------------------------------------------------

RATE = 25.0  # single track calls per second
STREAMS = ("EVENTS", "EVENTS_PROBE")


@dataclass
class Load:
    """Unique single track calls at a steady rate (each in its own worker, so a slow answer does not
    slow the rate), and /ready polled every 0.1 s; every answer is kept with its times."""

    url: str
    rate: float = RATE
    answers: list[tuple[float, float, int, str]] = field(default_factory=list)  # sent, answered, status, id
    ready: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._send, daemon=True), threading.Thread(target=self._poll)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _send(self) -> None:
        ids = itertools.count()
        with httpx.Client(timeout=30) as client, ThreadPoolExecutor(64) as pool:
            began = time.monotonic()
            for n in ids:
                if self._stop.is_set():
                    break
                pool.submit(self._post, client, f"p-{n:06d}")
                time.sleep(max(0.0, began + (n + 1) / self.rate - time.monotonic()))

    def _post(self, client: httpx.Client, message_id: str) -> None:
        sent = time.monotonic()
        try:
            answer = client.post(
                self.url + "/v1/track",
                json={"event": "Load", "userId": "u1", "messageId": message_id},
                headers=basic(WRITE_KEY),
            )
            status = answer.status_code
        except httpx.HTTPError:
            status = 0
        self.answers.append((sent, time.monotonic(), status, message_id))

    def _poll(self) -> None:
        with httpx.Client(timeout=2) as client:
            while not self._stop.is_set():
                try:
                    status = client.get(self.url + "/ready").status_code
                except httpx.HTTPError:
                    status = 0
                self.ready.append((time.monotonic(), status))
                time.sleep(0.1)


def stored_ids(node: Server) -> list[str]:
    ids: list[str] = []
    cursor = None
    deadline = time.monotonic() + 60
    with httpx.Client(timeout=60) as client:
        while True:
            params = {"limit": "1000"} | ({"cursor": cursor} if cursor else {})
            answer = client.get(node.url + "/v1/events", params=params, headers=bearer(ADMIN))
            if answer.status_code == 503 and time.monotonic() < deadline:
                time.sleep(1)
                continue
            assert answer.status_code == 200, answer.text
            page = answer.json()
            ids += [item["event"]["messageId"] for item in page["data"]]
            cursor = page["meta"]["nextCursor"]
            if not cursor:
                return ids


def collector_node(cluster: ProxiedNats) -> str:
    """The node the collector's connection is on (its client name is `collector`)."""
    for node in cluster.nats.nodes:
        answer = httpx.get(f"http://127.0.0.1:{node.monitor_port}/connz", timeout=2).json()
        if any(connection.get("name") == "collector" for connection in answer.get("connections") or []):
            return node.name
    raise AssertionError("the collector is connected to no node")


def place_leaders(cluster: ProxiedNats, on: str) -> None:
    """Move the stream leaders of EVENTS and EVENTS_PROBE to node `on` (a step-down with a preferred
    placement, asked of a node directly: not through the proxies)."""

    async def main() -> None:
        nc = await nats.connect(cluster.node(on).url)
        try:
            for stream in STREAMS:
                deadline = time.monotonic() + 30
                while stream_leader(cluster.nats, stream) != on:
                    assert time.monotonic() < deadline, f"{stream}'s leader never moved to {on}"
                    request = json.dumps({"placement": {"preferred": on}}).encode()
                    try:
                        await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", request, timeout=5)
                    except nats.errors.Error:
                        pass
                    await asyncio.sleep(1)
        finally:
            await nc.close()

    asyncio.run(main())


def first(moments: list[tuple[float, int]], since: float, until: float, match: Callable[[int], bool]) -> float | None:
    return next((at - since for at, status in moments if since <= at <= until and match(status)), None)


def run_partition(
    tmp_path: Path,
    name: str,
    cut: Callable[[ProxiedNats, str], None],
    leaders: Callable[[ProxiedNats, str], str | None],
    partition: float,
    warmup: float = 4.0,
    after: float = 8.0,
    **options: object,
) -> dict[str, Any]:
    """Load before, during and after a partition of `partition` seconds; the figures of the issue."""
    cluster = start_proxied_nats()
    collector: Server | None = None
    try:
        config = write_config(tmp_path / "collector.yaml")
        profiles = f"sqlite:///{tmp_path / 'profiles.db'}"
        storage = cluster.client_url(replicas=3, **options)
        collector = start_server(tmp_path, config, storage, "--profiles", profiles, name=name)
        node = collector_node(cluster)
        leader = leaders(cluster, node)
        if leader is not None:
            place_leaders(cluster, leader)
        load = Load(collector.url)
        load.start()
        time.sleep(warmup)
        cut_at = time.monotonic()
        cut(cluster, node)
        time.sleep(partition)
        healed_at = time.monotonic()
        logged = {n.name: len(n.log()) for n in cluster.nats.nodes}
        cluster.heal()
        time.sleep(after)
        load.stop()
        elections = sum(n.log()[logged[n.name] :].count("new stream leader") for n in cluster.nats.nodes)
        stored = Counter(stored_ids(collector))
        moved_to = collector_node(cluster)
        failovers = collector.log().count("reconnecting elsewhere")
    finally:
        if collector is not None:
            collector.stop()
        cluster.remove()

    answers = sorted(load.answers)
    acked = {message_id for _, _, status, message_id in answers if status == 200}
    during = [(sent, answered, status) for sent, answered, status, _ in answers if cut_at <= sent < healed_at]
    failing = [sent for sent, _, status in during if status != 200]
    recovered = max(failing, default=cut_at) - cut_at if failing else 0.0
    recovered_ok = not during or during[-1][2] == 200
    afterwards = [(answered - sent, status) for sent, answered, status, _ in answers if sent >= healed_at]
    unready = first(load.ready, cut_at, healed_at, lambda status: status != 200)
    ready_again = (
        first(load.ready, cut_at + unready, healed_at, lambda status: status == 200) if unready is not None else None
    )
    if ready_again is not None and unready is not None:
        ready_again += unready
    return {
        "node": node,
        "moved_to": moved_to,
        "failovers": failovers,
        "sent": len(answers),
        "acked": len(acked),
        "lost": len(acked - set(stored)),
        "doubled": sum(1 for count in stored.values() if count > 1),
        "non200_in_partition": len(failing),
        "non200_for_s": round(recovered, 2),
        "writable_before_heal": recovered_ok,
        "slowest_200_in_partition_s": round(max((a - s for s, a, st in during if st == 200), default=0.0), 2),
        "ready_503_after_s": None if unready is None else round(unready, 2),
        "ready_200_again_after_s": None if ready_again is None else round(ready_again, 2),
        "non200_after_heal": sum(1 for _, status in afterwards if status != 200),
        "slowest_after_heal_s": round(max((seconds for seconds, _ in afterwards), default=0.0), 2),
        "leader_elections_after_heal": elections,
    }


def report(name: str, figures: dict[str, Any]) -> None:
    print(f"\n{name}: " + ", ".join(f"{key}={value}" for key, value in figures.items()))


def check(figures: dict[str, Any]) -> None:
    assert figures["lost"] == 0 and figures["doubled"] == 0, figures
    assert figures["writable_before_heal"], figures  # failed over: 200s again while still partitioned
    assert figures["non200_for_s"] < 15, figures
    if figures["non200_for_s"] > 2:  # writes failed for a while: /ready said so, then came back
        assert figures["ready_503_after_s"] is not None and figures["ready_200_again_after_s"] is not None, figures


def test_the_collectors_client_link_blackholed(tmp_path: Path) -> None:
    """(b) The link between the collector and its node drops every byte: its pings (every 2 s, 2
    outstanding) or its failing publishes (3 s) make it reconnect to another node."""
    figures = run_partition(
        tmp_path,
        "client-link",
        cut=lambda cluster, node: cluster.clients[node].blackhole(),
        leaders=lambda cluster, node: None,
        partition=12,
    )
    report("client link blackholed", figures)
    check(figures)
    assert figures["moved_to"] != figures["node"]


@pytest.mark.slow
def test_the_collectors_node_cut_off_from_the_other_two(tmp_path: Path) -> None:
    """(a) The collector's node loses both its routes; the stream leaders are elsewhere, with the quorum."""
    figures = run_partition(
        tmp_path,
        "node-cut-off",
        cut=lambda cluster, node: cluster.isolate(node),
        leaders=lambda cluster, node: next(n.name for n in cluster.nats.nodes if n.name != node),
        partition=20,
    )
    report("own node cut off", figures)
    check(figures)
    assert figures["moved_to"] != figures["node"]


@pytest.mark.slow
@pytest.mark.parametrize("budget", [5, 12])
def test_the_stream_leader_cut_off_with_the_collector_on_it(tmp_path: Path, budget: int) -> None:
    """(c) The node that leads both streams, the collector's, loses both its routes: it leads on for a
    while without a quorum; the other two elect new leaders 4-9 s after its last heartbeat. With the
    default budget (timeout=5) the requests of the first seconds run out of time; with 12 they all
    wait for the election and are answered 200."""
    figures = run_partition(
        tmp_path,
        f"leader-cut-off-{budget}",
        cut=lambda cluster, node: cluster.isolate(node),
        leaders=lambda cluster, node: node,
        partition=20,
        timeout=budget,
    )
    report(f"stream leader cut off, collector on it, timeout={budget}", figures)
    check(figures)
    assert figures["moved_to"] != figures["node"]
    if budget >= 12:
        assert figures["non200_in_partition"] == 0, figures
