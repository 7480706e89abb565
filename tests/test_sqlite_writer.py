"""The SQLite writer's group insert: every request of a group commit shares one INSERT, and each
still learns exactly which of its events were new (the first copy of a messageId in the group)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from collector.storage import sqlite as sqlite_backend
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
