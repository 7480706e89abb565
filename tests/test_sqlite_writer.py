"""The SQLite writer's group insert: every request of a group commit shares one INSERT, and each
still learns exactly which of its events were new (the first copy of a messageId in the group);
and its turns with the writers of other processes sharing the database."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from collector.storage import sqlite as sqlite_backend
from collector.storage.base import StoredEvent
from collector.storage.sqlite import EventWrite, SQLiteStorage

WS, WS2 = "ws_AAAAAAAAAAAAAAAA", "ws_BBBBBBBBBBBBBBBB"


def row(message_id: str, workspace: str = WS) -> sqlite_backend.EventRow:
    return (workspace, "src", message_id, "track", "E", None, "anon", "2026-01-01T00:00:00.000Z", "t", b"{}")


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    store = SQLiteStorage(f"sqlite:///{tmp_path / 'events.db'}")
    connection = store._open_and_migrate()
    connection.executemany(sqlite_backend._insert_events_sql(1), [row("old-1"), row("old-2")])
    return connection


@pytest.mark.parametrize("rows_per_statement", [3000, 2])  # one statement, and several
def test_each_write_learns_which_of_its_events_were_new(
    conn: sqlite3.Connection, rows_per_statement: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "ROWS_PER_STATEMENT", rows_per_statement)
    writes = [
        EventWrite([row("a"), row("old-1"), row("b")], []),
        EventWrite([row("b"), row("c"), row("a", WS2)], []),  # b: a copy of the first write's
        EventWrite([row("c"), row("c"), row("d")], []),
    ]
    results = EventWrite.run_together(conn, writes)
    assert [(r.stored, r.duplicates) for r in results] == [(2, 1), (2, 1), (1, 2)]
    assert [r.inserted_ids for r in results] == [frozenset({"a", "b"}), frozenset({"c", "a"}), frozenset({"d"})]
    stored = conn.execute("SELECT workspace_id, message_id FROM events ORDER BY position").fetchall()
    assert stored == [(WS, "old-1"), (WS, "old-2"), (WS, "a"), (WS, "b"), (WS, "c"), (WS2, "a"), (WS, "d")]


def test_groups_of_every_size_share_a_few_compiled_inserts(conn: sqlite3.Connection) -> None:
    """sqlite3 keeps each statement it compiled, ~2 KB a row for a multi-row INSERT: groups of any
    size must be stored through a handful of statement sizes, or the cache grows by tens of MB."""
    sizes: set[int] = set()
    for rows in range(1, 3 * sqlite_backend.ROWS_PER_STATEMENT + 2):
        split = sqlite_backend.statement_sizes(rows)
        assert sum(split) == rows and max(split) <= sqlite_backend.ROWS_PER_STATEMENT
        sizes.update(split)
    assert len(sizes) <= sqlite_backend.ROWS_PER_STATEMENT.bit_length()
    sqlite_backend._insert_events_sql.cache_clear()
    for group in range(1, 600, 7):  # groups of 86 sizes, each stored whole
        written = EventWrite.run_together(conn, [EventWrite([row(f"g{group}-{i}") for i in range(group)], [])])
        assert written[0].stored == group
    assert sqlite_backend._insert_events_sql.cache_info().currsize <= sqlite_backend.ROWS_PER_STATEMENT.bit_length()


def test_an_all_new_group_reports_every_event(conn: sqlite3.Connection) -> None:
    writes = [EventWrite([row(f"n{i}-{j}") for j in range(3)], []) for i in range(4)]
    results = EventWrite.run_together(conn, writes)
    assert [(r.stored, r.duplicates) for r in results] == [(3, 0)] * 4
    assert results[2].inserted_ids == frozenset({"n2-0", "n2-1", "n2-2"})
    again = EventWrite.run_together(conn, [EventWrite([row("n0-0"), row("n1-1")], [])])
    assert (again[0].stored, again[0].duplicates, again[0].inserted_ids) == (0, 2, frozenset())


def test_a_version_2_database_is_upgraded_with_its_events_and_dedupe_intact(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path, isolation_level=None)
    for version in (1, 2):  # the schema as releases before version 3 left it
        old.executescript(sqlite_backend.MIGRATIONS[version])
    old.execute("PRAGMA user_version=2")
    old.executemany(sqlite_backend._insert_events_sql(1), [row("kept-1"), row("kept-2", WS2)])
    old.close()

    conn = SQLiteStorage(f"sqlite:///{path}")._open_and_migrate()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_backend.SCHEMA_VERSION
    indexes = {r[1] for r in conn.execute("PRAGMA index_list(events)")}
    assert indexes == {"events_message", "events_user"}  # one index on message ids, not two
    assert conn.execute("SELECT position, workspace_id, message_id FROM events ORDER BY position").fetchall() == [
        (1, WS, "kept-1"),
        (2, WS2, "kept-2"),
    ]
    [again] = EventWrite.run_together(conn, [EventWrite([row("kept-1"), row("kept-2"), row("new")], [])])
    assert (again.stored, again.duplicates, again.inserted_ids) == (2, 1, frozenset({"kept-2", "new"}))
    plan = " ".join(str(r) for r in conn.execute("EXPLAIN QUERY PLAN SELECT * FROM events WHERE message_id = 'x'"))
    assert "events_message" in plan  # a lookup by messageId alone still uses an index


HOLD_TURN = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


def test_writers_sharing_a_database_take_turns_on_its_lock_file(tmp_path: Path) -> None:
    """While another process (a --workers sibling) has the write turn, this writer neither begins
    nor commits; once the turn is released, every write that queued meanwhile is stored."""
    database = tmp_path / "events.db"
    command = [sys.executable, "-c", HOLD_TURN, f"{database}-writelock"]

    def stored_count() -> int:
        with closing(sqlite3.connect(database)) as reader:
            return int(reader.execute("SELECT count(*) FROM events").fetchone()[0])

    async def scenario(holder: subprocess.Popen[bytes]) -> list[int]:
        assert holder.stdin is not None and holder.stdout is not None
        store = SQLiteStorage(f"sqlite:///{database}")
        await store.open()
        try:
            assert holder.stdout.readline() == b"held\n"
            writes = [asyncio.ensure_future(store.write([event(f"m{i}")])) for i in range(3)]
            await asyncio.sleep(0.5)
            assert not any(write.done() for write in writes)
            assert stored_count() == 0
            holder.stdin.write(b"\n")
            holder.stdin.flush()
            results = await asyncio.wait_for(asyncio.gather(*writes), timeout=10)
            return [result.stored for result in results]
        finally:
            await store.close()

    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as holder:
        try:
            assert asyncio.run(scenario(holder)) == [1, 1, 1]
        finally:
            holder.kill()
    assert stored_count() == 3


def event(message_id: str) -> StoredEvent:
    return StoredEvent(WS, "src", message_id, "track", "E", None, "anon", "2026-01-01T00:00:00.000Z", "t", b"{}")
