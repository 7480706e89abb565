"""NATS JetStream under partitions (issue 21): the write probe behind /ready, the client's ping
options, and fail-over to a server that can write when the one we are on is cut off.

Real nats-server processes on loopback. The partition scenarios run a 3-node R3 cluster whose
route links (and the collector's client links) go through TCP proxies (servers.Proxy) that can
blackhole a link: the TCP connections stay up and every byte is dropped, as with a pulled cable.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from servers import Nats, start_nats

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
