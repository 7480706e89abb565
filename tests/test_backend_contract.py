"""One contract every storage backend meets, run against sqlite, postgresql and nats alike:
write, dedupe, read-back (filters and cursor positions), quarantine, profile merge and search
(the profile stores: sqlite and postgresql), and failure → StorageUnavailable, then recovery."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from servers import Nats, Postgres, start_nats, start_postgres

from collector.errors import BadRequest, StorageUnavailable
from collector.storage import open_event_store
from collector.storage.base import EventQuery, QuarantinedEvent, StoredEvent

WS, WS2 = "ws_AAAAAAAAAAAAAAAA", "ws_BBBBBBBBBBBBBBBB"


@pytest.fixture(scope="module")
def pg_server() -> Iterator[Postgres]:
    server = start_postgres()
    yield server
    server.remove()


@pytest.fixture(scope="module")
def nats_server() -> Iterator[Nats]:
    server = start_nats()
    yield server
    server.remove()


def fresh_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    tag = os.urandom(4).hex()
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    if kind == "postgresql":
        server: Postgres = request.getfixturevalue("pg_server")
        return server.create_database(f"t_{tag}")
    server_: Nats = request.getfixturevalue("nats_server")
    return server_.url(stream=f"T{tag}", prefix=f"t{tag}", duplicate_window=60)


@pytest.fixture(params=["sqlite", "postgresql", "nats"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return fresh_url(request.param, tmp_path, request)


@pytest.fixture(params=["sqlite", "postgresql"])
def profile_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return fresh_url(request.param, tmp_path, request)


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[Any]:
    store = open_event_store(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def run(url: str, scenario: Callable[[Any], Awaitable[None]]) -> None:
    async def main() -> None:
        async with opened(url) as store:
            await scenario(store)

    asyncio.run(main())


def event(
    message_id: str, workspace: str = WS, kind: str = "track", source: str = "src_web", **fields: Any
) -> StoredEvent:
    received_at = fields.pop("receivedAt", "2026-01-01T00:00:00.000Z")
    body = {"type": kind, "messageId": message_id, "receivedAt": received_at, "timestamp": received_at, **fields}
    name = body.get("event") if kind == "track" else body.get("name")
    return StoredEvent(
        workspace_id=workspace,
        source_id=source,
        message_id=message_id,
        type=kind,
        event=name,
        user_id=body.get("userId"),
        anonymous_id=body.get("anonymousId"),
        received_at=received_at,
        timestamp=received_at,
        body=orjson.dumps(body),
    )


async def all_events(store: Any, **filters: Any) -> list[dict[str, Any]]:
    page = await store.read_events(EventQuery(limit=1000, **filters))
    return page.items


def test_write_then_read_back_with_filters_and_cursor(url: str) -> None:
    async def scenario(store: Any) -> None:
        result = await store.write(
            [
                event("m1", event="Signed Up", userId="u1", receivedAt="2026-01-01T00:00:01.000Z"),
                event("m2", kind="page", name="Home", anonymousId="a1", receivedAt="2026-01-01T00:00:02.000Z"),
                event("m3", workspace=WS2, event="Signed Up", userId="u1", receivedAt="2026-01-01T00:00:03.000Z"),
            ]
        )
        assert (result.stored, result.duplicates) == (3, 0)
        items = await all_events(store)
        assert [i["event"]["messageId"] for i in items] == ["m1", "m2", "m3"]
        assert [i["workspaceId"] for i in items] == [WS, WS, WS2]
        assert items[0]["sourceId"] == "src_web"
        assert items[1]["event"] == {
            "type": "page",
            "messageId": "m2",
            "receivedAt": "2026-01-01T00:00:02.000Z",
            "timestamp": "2026-01-01T00:00:02.000Z",
            "name": "Home",
            "anonymousId": "a1",
        }
        positions = [i["position"] for i in items]
        assert positions == sorted(positions) and len(set(positions)) == 3

        def ids(found: list[dict[str, Any]]) -> list[str]:
            return [i["event"]["messageId"] for i in found]

        assert ids(await all_events(store, message_id="m2")) == ["m2"]
        assert ids(await all_events(store, type="page")) == ["m2"]
        assert ids(await all_events(store, event="Signed Up")) == ["m1", "m3"]
        assert ids(await all_events(store, event="Home")) == ["m2"]
        assert ids(await all_events(store, user_id="u1", workspace_id=WS2)) == ["m3"]
        assert ids(await all_events(store, anonymous_id="a1")) == ["m2"]
        assert ids(await all_events(store, source_id="src_other")) == []
        assert ids(await all_events(store, since="2026-01-01T00:00:02.000Z")) == ["m2", "m3"]
        assert ids(await all_events(store, until="2026-01-01T00:00:02.000Z")) == ["m1"]

        first = await store.read_events(EventQuery(limit=2))
        assert ids(first.items) == ["m1", "m2"] and first.next_after == positions[1]
        rest = await store.read_events(EventQuery(limit=2, after=first.next_after))
        assert ids(rest.items) == ["m3"] and rest.next_after is None

    run(url, scenario)


def test_duplicates_are_stored_once_and_counted(url: str) -> None:
    async def scenario(store: Any) -> None:
        first = await store.write([event("d1"), event("d2"), event("d1")])
        assert (first.stored, first.duplicates) == (2, 1)
        # Which ones were new: an identify's traits reach its profile only from the new copy.
        assert first.inserted_ids == frozenset({"d1", "d2"})
        again = await store.write([event("d2"), event("d3")])
        assert again.inserted_ids == frozenset({"d3"})
        # The same messageId in another workspace is another event.
        other = await store.write([event("d1", workspace=WS2)])
        assert (other.stored, other.duplicates) == (1, 0)
        # Concurrent re-sends (as from two nodes or a retrying client) are stored once in total.
        batches = [[event(f"c{i}") for i in range(j, j + 20)] for j in (0, 10, 0, 5)]
        results = await asyncio.gather(*(store.write(batch) for batch in batches))
        assert sum(r.stored for r in results) == 30
        assert sum(r.duplicates for r in results) == 50
        ids = [i["event"]["messageId"] for i in await all_events(store, workspace_id=WS)]
        assert sorted(ids) == sorted(["d1", "d2", "d3", *(f"c{i}" for i in range(30))])

    run(url, scenario)


def test_concurrent_writers_report_each_new_message_id_inserted_exactly_once(url: str) -> None:
    """Two instances (as two nodes) writing overlapping batches, spread out in time so that many
    commits are in flight at once: each messageId is in the inserted_ids of exactly one write (an
    identify's traits reach its profile once), and stored once."""

    async def later(store: Any, batch: list[StoredEvent], delay: float) -> Any:
        await asyncio.sleep(delay)
        return await store.write(batch)

    async def main() -> None:
        async with opened(url) as a, opened(url) as b:
            batches = [[event(f"k{i}") for i in range(j, j + 10)] for j in range(0, 200, 5)]  # ids 0..204
            writes = [
                later(store, batch, 0.002 * (n % 25))
                for n, batch in enumerate(batches)
                for store in ((a, b) if n % 2 else (b, a))
            ]
            results = await asyncio.gather(*writes)
            counts = Counter(message_id for result in results for message_id in result.inserted_ids)
            assert set(counts) == {f"k{i}" for i in range(205)} and set(counts.values()) == {1}, counts
            assert sum(r.stored for r in results) == 205 and all(r.stored == len(r.inserted_ids) for r in results)
            assert sum(r.duplicates for r in results) == 2 * 10 * len(batches) - 205
            stored = [i["event"]["messageId"] for i in await all_events(a, workspace_id=WS)]
            assert sorted(stored) == sorted(counts)

    asyncio.run(main())


def test_quarantine_is_kept_apart(url: str) -> None:
    async def scenario(store: Any) -> None:
        bad = QuarantinedEvent(
            workspace_id=WS,
            source_id="src_q",
            message_id="q1",
            received_at="2026-01-01T00:00:00.000Z",
            body=b'{"type":"track","messageId":"q1"}',
            errors=b'[{"pointer":"/event","keyword":"required","message":"event is required"}]',
        )
        result = await store.write([event("ok1")], [bad])
        assert (result.stored, result.quarantined) == (1, 1)
        page = await store.read_quarantine(WS, 0, 10)
        assert len(page.items) == 1
        kept = page.items[0]
        assert (kept["workspaceId"], kept["sourceId"], kept["messageId"]) == (WS, "src_q", "q1")
        assert kept["errors"][0]["pointer"] == "/event"
        assert kept["event"] == {"type": "track", "messageId": "q1"}
        assert (await store.read_quarantine(WS2, 0, 10)).items == []
        await store.write([], [bad._replace(message_id="q2", body=b'{"type":"track","messageId":"q2"}')])
        by_id = await store.read_quarantine(None, 0, 10, message_id="q2")  # what `GET /v1/quarantine?messageId=` reads
        assert [kept["event"]["messageId"] for kept in by_id.items] == ["q2"]
        assert (await store.read_quarantine(WS, 0, 10, message_id="absent")).items == []
        assert [i["event"]["messageId"] for i in await all_events(store)] == ["ok1"]

    run(url, scenario)


def test_odd_message_ids_are_stored_deduped_and_found(url: str) -> None:
    # NUL, newlines and long ids: legal JSON strings, awkward for SQL text and NATS headers.
    odd = ["a\x00b", "line\r\nbreak", "x" * 300, "ünï cødé"]

    async def scenario(store: Any) -> None:
        assert (await store.write([event(i) for i in odd])).stored == 4
        again = await store.write([event(i) for i in odd])
        assert (again.stored, again.duplicates) == (0, 4)
        for message_id in odd:
            found = await all_events(store, message_id=message_id)
            assert [i["event"]["messageId"] for i in found] == [message_id]

    run(url, scenario)


def test_profile_merge_is_top_level_and_atomic(profile_url: str) -> None:
    async def scenario(store: Any) -> None:
        created = await store.create_user(
            WS, "usr_AAAAAAAAAAAAAAA1", {"email": "a@x.io"}, {"plan": "free", "address": {"city": "Lyon"}}, "t0"
        )
        assert created["updatedAt"] is None
        merged = await store.merge_user(
            WS, "usr_AAAAAAAAAAAAAAA1", {"phone": "+33"}, {"plan": None, "address": {"zip": "69001"}}, "t1"
        )
        assert merged["identifiers"] == {"email": "a@x.io", "phone": "+33"}
        assert merged["traits"] == {"address": {"zip": "69001"}}  # null removes; an object replaces whole
        assert (merged["createdAt"], merged["updatedAt"]) == ("t0", "t1")
        # Many concurrent merges, each adding its own key: none may be lost.
        await asyncio.gather(
            *(store.merge_user(WS, "usr_AAAAAAAAAAAAAAA1", None, {f"k{i}": i}, f"t{i}") for i in range(40))
        )
        user = await store.get_user(WS, "usr_AAAAAAAAAAAAAAA1")
        assert user["traits"] == {"address": {"zip": "69001"}, **{f"k{i}": i for i in range(40)}}
        assert user["identifiers"] == {"email": "a@x.io", "phone": "+33"}
        assert await store.get_user(WS2, "usr_AAAAAAAAAAAAAAA1") is None  # other workspace
        assert await store.merge_user(WS, "usr_AAAAAAAAAAAAAAA2", None, {"a": 1}, "t") is None
        assert await store.delete_user(WS, "usr_AAAAAAAAAAAAAAA1") is True
        assert await store.delete_user(WS, "usr_AAAAAAAAAAAAAAA1") is False
        assert await store.get_user(WS, "usr_AAAAAAAAAAAAAAA1") is None

    run(profile_url, scenario)


def test_profile_search_matches_and_paginates(profile_url: str) -> None:
    async def scenario(store: Any) -> None:
        for i in range(5):
            identifiers = {"email": f"u{i}@x.io", "age": 30 + i % 2, "vip": i % 2 == 0, "name": {"last": "Doe"}}
            await store.create_user(WS, f"usr_AAAAAAAAAAAAAAB{i}", identifiers, {}, f"t{i}")
        await store.create_user(WS2, "usr_AAAAAAAAAAAAAAC0", {"name": {"last": "Doe"}}, {}, "t")
        await store.create_user(WS, "usr_AAAAAAAAAAAAAAD0", {"age": "30"}, {}, "t")

        async def ids(filters: list[tuple[list[str], str]], limit: int = 50, **page: Any) -> list[str]:
            found = await store.search_users(WS, filters, limit, page.get("after"), page.get("before"))
            return [u["id"][-2:] for u in found.users]

        assert await ids([(["email"], "u3@x.io")]) == ["B3"]
        assert await ids([(["age"], "30")]) == ["B0", "B2", "B4", "D0"]  # number 30 and string "30"
        assert await ids([(["vip"], "true"), (["age"], "30")]) == ["B0", "B2", "B4"]
        assert await ids([(["name", "last"], "Doe")]) == ["B0", "B1", "B2", "B3", "B4"]
        assert await ids([(["name", "last"], "doe")]) == []  # exact and case-sensitive
        assert await ids([(["email"], "nobody")]) == []

        first = await store.search_users(WS, [(["name", "last"], "Doe")], 2, None, None)
        assert [u["id"][-2:] for u in first.users] == ["B0", "B1"]
        assert first.previous_before is None and first.next_after == first.positions[-1]
        second = await store.search_users(WS, [(["name", "last"], "Doe")], 2, first.next_after, None)
        assert [u["id"][-2:] for u in second.users] == ["B2", "B3"]
        assert second.previous_before == second.positions[0]
        back = await store.search_users(WS, [(["name", "last"], "Doe")], 2, None, second.previous_before)
        assert [u["id"][-2:] for u in back.users] == ["B0", "B1"] and back.previous_before is None
        assert back.next_after == back.positions[-1]

    run(profile_url, scenario)


def test_postgresql_refuses_unstorable_profile_values_as_bad_request(request: pytest.FixtureRequest) -> None:
    async def scenario(store: Any) -> None:
        with pytest.raises(BadRequest) as caught:
            await store.create_user(WS, "usr_AAAAAAAAAAAAAAA1", {"email": "a\x00b"}, {}, "t0")
        assert caught.value.status == 400 and "PostgreSQL" in caught.value.more_info

    run(fresh_url("postgresql", Path("."), request), scenario)


# --- failure → StorageUnavailable, and recovery ---------------------------------------------


async def eventually(write: Callable[[], Awaitable[Any]], within: float = 20.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        try:
            return await write()
        except StorageUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def test_sqlite_failure_raises_storage_unavailable(tmp_path: Path) -> None:
    async def main() -> None:
        store = open_event_store(f"sqlite:///{tmp_path / 'events.db'}")
        await store.open()
        await store.close()
        with pytest.raises(StorageUnavailable):
            await store.write([event("x1")])
        assert await store.ping() is False

    asyncio.run(main())


def test_postgresql_down_raises_storage_unavailable_then_recovers() -> None:
    server = start_postgres()
    try:

        async def main() -> None:
            async with opened(server.url(pool_timeout="1")) as store:
                assert (await store.write([event("p1")])).stored == 1
                await asyncio.to_thread(server.stop, signal.SIGKILL)
                with pytest.raises(StorageUnavailable):
                    await store.write([event("p2")])
                with pytest.raises(StorageUnavailable):
                    await store.merge_user(WS, "usr_AAAAAAAAAAAAAAA1", None, {"a": 1}, "t")
                assert await store.ping() is False
                await asyncio.to_thread(server.start)
                result = await eventually(lambda: store.write([event("p2"), event("p1")]))
                assert (result.stored, result.duplicates) == (1, 1)
                assert await store.ping() is True
                assert [i["event"]["messageId"] for i in await all_events(store)] == ["p1", "p2"]

        asyncio.run(main())
    finally:
        server.remove()


def test_nats_down_raises_storage_unavailable_then_recovers() -> None:
    server = start_nats()
    try:

        async def main() -> None:
            async with opened(server.url(timeout=1)) as store:
                assert (await store.write([event("n1")])).stored == 1
                await asyncio.to_thread(server.nodes[0].stop, signal.SIGKILL)
                with pytest.raises(StorageUnavailable):
                    await store.write([event("n2")])
                assert await store.ping() is False
                await asyncio.to_thread(server.nodes[0].start)
                result = await eventually(lambda: store.write([event("n2"), event("n1")]))
                # The failed write may still have landed (a 503 promises nothing either way); the
                # re-send is then a duplicate. Either way each event is stored once.
                assert result.stored + result.duplicates == 2 and result.duplicates >= 1
                assert await store.ping() is True
                assert [i["event"]["messageId"] for i in await all_events(store)] == ["n1", "n2"]

        asyncio.run(main())
    finally:
        server.remove()


# --- URLs ------------------------------------------------------------------------------------


def test_storage_urls_take_their_options_and_refuse_unknown_ones() -> None:
    from collector.errors import ConfigError
    from collector.storage.nats import NATSStorage
    from collector.storage.postgres import PostgresStorage

    nats = NATSStorage("nats://u:p@10.0.0.1:4222,10.0.0.2:4222?replicas=3&duplicate_window=600&stream=S")
    assert nats.servers == ["nats://u:p@10.0.0.1:4222", "nats://u:p@10.0.0.2:4222"]  # one account, every node
    assert (nats.replicas, nats.duplicate_window, nats.stream) == (3, 600.0, "S")
    with pytest.raises(ConfigError, match="replicaz"):
        NATSStorage("nats://127.0.0.1:4222?replicaz=3")
    with pytest.raises(ConfigError, match="replicas"):
        NATSStorage("nats://127.0.0.1:4222?replicas=three")

    pg = PostgresStorage("postgres://app:secret@db:5432/events?pool_max=20&sslmode=require")
    assert pg.conninfo == "postgresql://app:secret@db:5432/events?sslmode=require"  # our options stripped
    assert pg.pool.max_size == 20
    assert "secret" not in repr(pg)
    with pytest.raises(ConfigError, match="pool_timeout"):
        PostgresStorage("postgresql://db/events?pool_timeout=soon")


def test_postgresql_schema_is_created_once_by_nodes_starting_together(request: pytest.FixtureRequest) -> None:
    from collector.storage.postgres import SCHEMA_VERSION

    url = fresh_url("postgresql", Path("."), request)
    every_version = [(version,) for version in range(1, SCHEMA_VERSION + 1)]

    async def main() -> None:
        stores = [open_event_store(url) for _ in range(3)]
        await asyncio.gather(*(store.open() for store in stores))  # three nodes migrating at once
        try:
            rows = await stores[0]._fetch("SELECT version FROM collector_schema ORDER BY version", [])
            assert rows == every_version  # each migration once
        finally:
            for store in stores:
                await store.close()
        async with opened(url) as again:  # a restart finds the schema current and changes nothing
            assert await again._fetch("SELECT version FROM collector_schema ORDER BY version", []) == every_version

    asyncio.run(main())


def test_nats_stream_is_created_with_the_url_settings(request: pytest.FixtureRequest) -> None:
    server: Nats = request.getfixturevalue("nats_server")
    tag = os.urandom(4).hex()

    async def main() -> None:
        url = server.url(stream=f"S{tag}", prefix=f"s{tag}", duplicate_window=30, max_age=3600)
        async with opened(url) as store:
            info = await store.js.stream_info(f"S{tag}")
            assert info.config.subjects == [f"s{tag}.>"]
            assert (info.config.num_replicas, info.config.duplicate_window, info.config.max_age) == (1, 30, 3600)
            quarantine = await store.js.stream_info(f"S{tag}_QUARANTINE")
            assert quarantine.config.subjects == [f"s{tag}_quarantine.>"]
        async with opened(url.replace("max_age=3600", "max_age=60")) as store:
            # An existing stream is used as it is (an operator may have tuned it).
            assert (await store.js.stream_info(f"S{tag}")).config.max_age == 3600

    asyncio.run(main())
