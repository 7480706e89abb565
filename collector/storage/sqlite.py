"""sqlite:///relative/path.db or sqlite:////absolute/path.db — the embedded default.

WAL mode; one writer thread per process owns the write connection and does group commit:
whatever requests are waiting when a transaction starts share it, and each one's future
resolves only after COMMIT returned. Transactions start with BEGIN IMMEDIATE so several
processes (`--workers N`) serialise on SQLite's lock and profile merges stay atomic; before it,
the writers of those processes take turns on a lock file beside the database (`<db>-writelock`),
which hands the turn over at once where SQLite's busy handler would sleep.
Reads run on their own connections in a small thread pool.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from collector import jsonio
from collector.errors import StorageUnavailable
from collector.storage.base import (
    IDENTITY_COLUMNS,
    Erased,
    EventPage,
    EventQuery,
    IdentityKind,
    PrivacyRecord,
    QuarantinedEvent,
    Receipt,
    StoredEvent,
    UserPage,
    WriteResult,
    arrival,
    arrival_detail,
    merge_top_level,
    user_object,
)

SCHEMA_VERSION = 5
MIGRATIONS = {
    1: """
    CREATE TABLE IF NOT EXISTS events (
        position INTEGER PRIMARY KEY,
        workspace_id TEXT NOT NULL,
        source_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        type TEXT NOT NULL,
        event TEXT,
        user_id TEXT,
        anonymous_id TEXT,
        received_at TEXT NOT NULL,
        timestamp TEXT NOT NULL,
        body BLOB NOT NULL,
        UNIQUE (workspace_id, message_id)
    );
    CREATE INDEX IF NOT EXISTS events_message_id ON events (message_id);
    CREATE INDEX IF NOT EXISTS events_user ON events (workspace_id, user_id);
    CREATE TABLE IF NOT EXISTS quarantine (
        position INTEGER PRIMARY KEY,
        workspace_id TEXT NOT NULL,
        source_id TEXT NOT NULL,
        message_id TEXT,
        received_at TEXT NOT NULL,
        body BLOB NOT NULL,
        errors BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS profiles (
        position INTEGER PRIMARY KEY,
        workspace_id TEXT NOT NULL,
        id TEXT NOT NULL UNIQUE,
        identifiers BLOB NOT NULL,
        traits BLOB NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT
    );
    CREATE INDEX IF NOT EXISTS profiles_workspace ON profiles (workspace_id, position);
    """,
    2: """
    DELETE FROM quarantine WHERE message_id IS NOT NULL AND position NOT IN (
        SELECT MIN(position) FROM quarantine WHERE message_id IS NOT NULL GROUP BY workspace_id, message_id
    );
    CREATE UNIQUE INDEX IF NOT EXISTS quarantine_message ON quarantine (workspace_id, message_id)
        WHERE message_id IS NOT NULL;
    """,
    # One index on message ids instead of two: (message_id, workspace_id) both dedupes and finds
    # an event by messageId alone. Each index on a random key cost ~1/3 of an insert. The table is
    # rebuilt because the old UNIQUE constraint's index cannot be dropped (one-off, at upgrade).
    3: """
    CREATE TABLE events_v3 (
        position INTEGER PRIMARY KEY,
        workspace_id TEXT NOT NULL,
        source_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        type TEXT NOT NULL,
        event TEXT,
        user_id TEXT,
        anonymous_id TEXT,
        received_at TEXT NOT NULL,
        timestamp TEXT NOT NULL,
        body BLOB NOT NULL
    );
    INSERT INTO events_v3 SELECT position, workspace_id, source_id, message_id, type, event, user_id,
        anonymous_id, received_at, timestamp, body FROM events ORDER BY position;
    DROP TABLE events;
    ALTER TABLE events_v3 RENAME TO events;
    CREATE UNIQUE INDEX events_message ON events (message_id, workspace_id);
    CREATE INDEX events_user ON events (workspace_id, user_id);
    """,
    4: """
    CREATE TABLE IF NOT EXISTS privacy_records (
        position INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        workspace_id TEXT NOT NULL,
        action TEXT NOT NULL,
        identity_kind TEXT NOT NULL,
        identity_digest TEXT NOT NULL,
        actor TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        status TEXT NOT NULL,
        details BLOB NOT NULL
    );
    """,
    # Only messages that were not stored get a row; stored and quarantined ones are found in their tables.
    5: """
    CREATE TABLE IF NOT EXISTS receipts (
        position INTEGER PRIMARY KEY,
        workspace_id TEXT NOT NULL,
        source_id TEXT NOT NULL,
        message_id TEXT,
        status TEXT NOT NULL,
        at TEXT NOT NULL,
        detail BLOB NOT NULL
    );
    CREATE INDEX IF NOT EXISTS receipts_message ON receipts (message_id) WHERE message_id IS NOT NULL;
    """,
}
ERASE_CHUNK = 500  # rows deleted per transaction: ingestion's group commits run between them
# Quarantined messages are kept as sent, so their identity is read from the JSON (kept as text in a BLOB).
_QUARANTINE_IDENTITY = "CAST(json_extract(CAST(body AS TEXT), ?) AS TEXT)"
MAX_GROUP = 512  # operations (requests) per transaction
_INSERT_EVENTS = (
    "INSERT OR IGNORE INTO events (workspace_id, source_id, message_id, type, event, user_id,"
    " anonymous_id, received_at, timestamp, body) VALUES "
)
_EVENT_ROW = "(?,?,?,?,?,?,?,?,?,?)"
ROWS_PER_STATEMENT = 256  # the largest INSERT (statement_sizes says why)
_INSERT_QUARANTINE = (
    "INSERT OR IGNORE INTO quarantine (workspace_id, source_id, message_id, received_at, body, errors)"
    " VALUES (?,?,?,?,?,?)"
)


@functools.lru_cache(maxsize=256)
def _insert_events_sql(rows: int) -> str:
    return _INSERT_EVENTS + ",".join([_EVENT_ROW] * rows)


Operation = Callable[[sqlite3.Connection], Any]
EventRow = StoredEvent  # (workspace_id, source_id, message_id, type, event, user_id, anonymous_id, …, body)


class EventWrite:
    """One request's events (and quarantined messages), as an operation for the writer thread.
    The writer runs every EventWrite of a group commit as one INSERT (run_together)."""

    def __init__(self, rows: list[EventRow], quarantined: list[QuarantinedEvent]) -> None:
        self.rows = rows
        self.quarantined = quarantined

    def __call__(self, conn: sqlite3.Connection) -> WriteResult:
        return EventWrite.run_together(conn, [self])[0]

    @staticmethod
    def run_together(conn: sqlite3.Connection, writes: list[EventWrite]) -> list[WriteResult]:
        rows = writes[0].rows if len(writes) == 1 else [row for write in writes for row in write.rows]
        new = _insert_events(conn, rows)
        results = []
        for write in writes:
            if new is None:  # the usual case: nothing was a duplicate
                stored = [row[2] for row in write.rows]
            else:  # the first copy of a (workspace, messageId) in the group is the one stored
                stored = []
                for row in write.rows:
                    if (row[0], row[2]) in new:
                        new.discard((row[0], row[2]))
                        stored.append(row[2])
            kept_aside = 0
            if write.quarantined:
                before = conn.total_changes
                conn.executemany(_INSERT_QUARANTINE, write.quarantined)  # a re-sent invalid message is kept once
                kept_aside = conn.total_changes - before
            results.append(
                WriteResult(
                    stored=len(stored),
                    duplicates=len(write.rows) - len(stored),
                    quarantined=kept_aside,
                    inserted_ids=frozenset(stored),
                )
            )
        return results


def _insert_events(conn: sqlite3.Connection, rows: list[EventRow]) -> set[tuple[str, str]] | None:
    """Inserts what is new; None when every row was, else the (workspace, messageId) keys inserted.
    No RETURNING (it costs about a quarter of the insert): the change count tells whether all rows
    were new, and new rows take consecutive positions, so only a partial insert is looked up."""
    new: set[tuple[str, str]] | None = None
    start = 0
    for size in statement_sizes(len(rows)):
        chunk = rows[start : start + size]
        start += size
        before = conn.total_changes
        cursor = conn.execute(_insert_events_sql(len(chunk)), [value for row in chunk for value in row])
        added = conn.total_changes - before
        if added == len(chunk) and new is None:
            continue
        if new is None:  # earlier chunks were wholly new
            new = {(row[0], row[2]) for row in rows[: start - size]}
        if added == len(chunk):
            new.update((row[0], row[2]) for row in chunk)
        elif added:
            first = cursor.lastrowid - added  # type: ignore[operator]
            found = conn.execute("SELECT workspace_id, message_id FROM events WHERE position > ?", (first,))
            new.update(found.fetchall())
    return new


def statement_sizes(rows: int) -> list[int]:
    """The row counts of the INSERTs that store `rows` rows: full statements, then the rest in powers
    of two. sqlite3 keeps each statement it compiled (128 a connection) and a compiled INSERT takes
    about 2 KB a row, so one statement per group size held 36 MB under batch load; these few sizes
    hold about 1 MB, for a statement or two more per group."""
    sizes = [ROWS_PER_STATEMENT] * (rows // ROWS_PER_STATEMENT)
    rest = rows % ROWS_PER_STATEMENT
    while rest:
        power = 1 << (rest.bit_length() - 1)
        sizes.append(power)
        rest -= power
    return sizes


def path_from_url(url: str) -> str:
    parts = urlsplit(url)
    path = unquote(parts.netloc + parts.path)
    if path.startswith("/") and not parts.netloc:
        path = path[1:]  # sqlite:///rel.db → rel.db; sqlite:////abs.db → /abs.db
    if not path:
        raise ValueError(f"no database path in {url!r}")
    return path


class WriteTurn:
    """The writers of the processes sharing one database take turns: a blocking flock on a file
    beside it, held from before BEGIN IMMEDIATE to after COMMIT. SQLite's busy handler retries
    after sleeps of 1, 2, 5, 10… ms, so a writer that finds the lock taken waits well past the
    other's commit; flock wakes it the moment the turn is released, and the requests that queued
    meanwhile join its group. A process that dies holding it releases it (the kernel closes the file)."""

    def __init__(self, database: str) -> None:
        self._fd = os.open(database + "-writelock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


def _rewrite_user_version(conn: sqlite3.Connection) -> None:
    """A write that changes nothing (the readiness probe); read and set in the writer's transaction."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    conn.execute(f"PRAGMA user_version={version}")


def _connect(path: str, synchronous: str, busy_timeout_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


class SQLiteStorage:
    def __init__(self, url: str, synchronous: str = "FULL", busy_timeout_ms: int = 5000) -> None:
        self.path = path_from_url(url)
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self._queue: queue.SimpleQueue[tuple[Operation, asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sqlite-read")
        self._local = threading.local()
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.path!r})"

    # --- life cycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return
        self._loop = asyncio.get_running_loop()
        parent = Path(self.path).parent
        parent.mkdir(parents=True, exist_ok=True)
        conn = await asyncio.to_thread(self._open_and_migrate)
        turn = WriteTurn(self.path)
        self._writer = threading.Thread(target=self._write_loop, args=(conn, turn), name="sqlite-writer", daemon=True)
        self._writer.start()

    def _open_and_migrate(self) -> sqlite3.Connection:
        conn = _connect(self.path, self.synchronous, self.busy_timeout_ms)
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return conn

    async def close(self) -> None:
        if self._writer is None:
            return
        self._queue.put(None)
        await asyncio.to_thread(self._writer.join)
        self._writer = None
        self._readers.shutdown(wait=True)

    async def ping(self) -> bool:
        """A durable write probe through the writer thread: the schema version rewritten as it is, under
        the write lock (BEGIN IMMEDIATE), and committed. A stuck writer or a held lock makes it slow."""
        if self._writer is None or not self._writer.is_alive():
            return False
        try:
            await self._submit(_rewrite_user_version)
        except Exception:
            return False
        return True

    # --- the writer ---------------------------------------------------------------------------

    async def _submit(self, operation: Operation) -> Any:
        if self._writer is None or self._loop is None:
            raise StorageUnavailable("Storage is not open")
        future = self._loop.create_future()  # get_running_loop() makes a getpid() system call each time
        self._queue.put((operation, future))
        return await future

    def _write_loop(self, conn: sqlite3.Connection, turn: WriteTurn) -> None:
        assert self._loop is not None
        loop = self._loop
        while True:
            first = self._queue.get()
            if first is None:
                break
            group = [first]
            stop = False
            with turn:  # the group is gathered once the turn is ours: what queued while waiting joins it
                while len(group) < MAX_GROUP:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    group.append(item)
                outcomes = self._run_group(conn, group)
            loop.call_soon_threadsafe(_settle, outcomes)
            if stop:
                break
        conn.close()
        turn.close()

    def _run_group(
        self, conn: sqlite3.Connection, group: list[tuple[Operation, asyncio.Future[Any]]]
    ) -> list[tuple[asyncio.Future[Any], bool, Any]]:
        try:
            return [
                (future, True, result)
                for future, result in zip(
                    [f for _, f in group], self._transaction(conn, [op for op, _ in group]), strict=True
                )
            ]
        except Exception as exc:
            if len(group) == 1 or _is_lock_error(exc):
                # Another process holds the lock (busy timeout spent): retrying each operation
                # alone would wait the timeout once per operation. Fail the group now.
                return [(future, False, _unavailable(exc)) for _, future in group]
        # One operation spoiled the shared transaction: run each alone so the others still land.
        outcomes = []
        for operation, future in group:
            try:
                outcomes.append((future, True, self._transaction(conn, [operation])[0]))
            except Exception as exc:
                outcomes.append((future, False, _unavailable(exc)))
        return outcomes

    def _transaction(self, conn: sqlite3.Connection, operations: list[Operation]) -> list[Any]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            writes = [op for op in operations if isinstance(op, EventWrite)]
            if len(writes) > 1:  # every request's events in one INSERT: statements cost more than rows
                written = dict(zip(map(id, writes), EventWrite.run_together(conn, writes), strict=True))
                results = [written[id(op)] if isinstance(op, EventWrite) else op(conn) for op in operations]
            else:
                results = [operation(conn) for operation in operations]
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    # --- events --------------------------------------------------------------------------------

    async def write(self, events: list[StoredEvent], quarantined: list[QuarantinedEvent] | None = None) -> WriteResult:
        # StoredEvent and QuarantinedEvent are tuples in column order: they are the rows.
        result: WriteResult = await self._submit(EventWrite(events, list(quarantined or ())))
        return result

    async def _read(self, query: Callable[[sqlite3.Connection], Any]) -> Any:
        def run() -> Any:
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = _connect(self.path, self.synchronous, self.busy_timeout_ms)
            return query(conn)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._readers, run)
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc

    async def read_events(self, query: EventQuery) -> EventPage:
        condition, params = query.where("?")
        sql = (
            "SELECT position, workspace_id, source_id, body FROM events WHERE "
            + condition
            + " ORDER BY position LIMIT ?"
        )
        rows = await self._read(lambda conn: conn.execute(sql, [*params, query.limit + 1]).fetchall())
        return _page(rows, query.limit, lambda r: {"event": jsonio.loads(r[3])})

    async def read_quarantine(
        self, workspace_id: str | None, after: int, limit: int, message_id: str | None = None
    ) -> EventPage:
        sql = "SELECT position, workspace_id, source_id, body, errors, message_id, received_at FROM quarantine"
        sql += " WHERE position > ?" + (" AND workspace_id = ?" if workspace_id else "")
        sql += (" AND message_id = ?" if message_id is not None else "") + " ORDER BY position LIMIT ?"
        params: list[Any] = [after, *([workspace_id] if workspace_id else [])]
        params += [*([message_id] if message_id is not None else []), limit + 1]
        rows = await self._read(lambda conn: conn.execute(sql, params).fetchall())
        return _page(
            rows,
            limit,
            lambda r: {
                "messageId": r[5],
                "receivedAt": r[6],
                "errors": orjson.loads(r[4]),
                "event": jsonio.loads(r[3]),
            },
        )

    # --- receipts -------------------------------------------------------------------------------

    async def write_receipts(self, receipts: list[Receipt]) -> None:
        sql = "INSERT INTO receipts (workspace_id, source_id, message_id, status, at, detail) VALUES (?,?,?,?,?,?)"
        await self._submit(lambda conn: conn.executemany(sql, receipts))

    async def read_receipts(self, message_id: str, workspace_id: str | None, limit: int) -> list[dict[str, Any]]:
        sql = "SELECT status, workspace_id, source_id, message_id, at, detail FROM receipts WHERE message_id = ?"
        params = [message_id]
        if workspace_id is not None:
            sql, params = sql + " AND workspace_id = ?", [*params, workspace_id]
        rows = await self._read(_fetch_all(sql + " ORDER BY position LIMIT ?", [*params, limit]))
        return [arrival(row[0], row[1], row[2], row[3], row[4], orjson.loads(row[5])) for row in rows]

    async def recent_arrivals(self, source_id: str | None, limit: int) -> list[dict[str, Any]]:
        where = " WHERE source_id = ?" if source_id is not None else ""
        scope = [source_id] if source_id is not None else []
        tail = where + " ORDER BY position DESC LIMIT ?"
        queries = (
            "SELECT 'stored', workspace_id, source_id, message_id, received_at, body, NULL FROM events" + tail,
            "SELECT 'quarantined', workspace_id, source_id, message_id, received_at, body, errors FROM quarantine"
            + tail,
            "SELECT status, workspace_id, source_id, message_id, at, NULL, detail FROM receipts" + tail,
        )

        def run(conn: sqlite3.Connection) -> list[Any]:
            return [row for sql in queries for row in conn.execute(sql, [*scope, limit]).fetchall()]

        rows = sorted(await self._read(run), key=lambda row: row[4], reverse=True)[:limit]
        return [arrival(row[0], row[1], row[2], row[3], row[4], arrival_detail(row[5], row[6])) for row in rows]

    async def expire_receipts(self, before: str) -> int:
        sql = "SELECT position FROM receipts WHERE at < ? ORDER BY position LIMIT ?"
        deleted = 0
        while rows := await self._read(_fetch_all(sql, (before, ERASE_CHUNK))):
            deleted += await self._delete_positions("receipts", [row[0] for row in rows])
        return deleted

    # --- privacy: erasure and the ledger -----------------------------------------------------------

    async def erase_identity(self, workspace_id: str, kind: IdentityKind, value: str) -> Erased:
        """Found on a reader connection (no index on anonymous_id: a scan, but off the writer), then
        deleted by position in chunks through the writer."""
        column = IDENTITY_COLUMNS[kind]
        events = await self._read(
            lambda conn: conn.execute(
                f"SELECT position FROM events WHERE workspace_id = ? AND {column} = ?", (workspace_id, value)
            ).fetchall()
        )
        quarantined = await self._read(
            lambda conn: conn.execute(
                "SELECT position FROM quarantine WHERE workspace_id = ? AND json_valid(CAST(body AS TEXT))"
                f" AND {_QUARANTINE_IDENTITY} = ?",
                (workspace_id, "$." + kind, value),
            ).fetchall()
        )
        receipts = await self._read(
            lambda conn: conn.execute(
                "SELECT position FROM receipts WHERE workspace_id = ? AND json_valid(CAST(detail AS TEXT))"
                " AND CAST(json_extract(CAST(detail AS TEXT), ?) AS TEXT) = ?",
                (workspace_id, "$.message." + kind, value),
            ).fetchall()
        )
        return Erased(
            await self._delete_positions("events", [row[0] for row in events]),
            await self._delete_positions("quarantine", [row[0] for row in quarantined]),
            await self._delete_positions("receipts", [row[0] for row in receipts]),
        )

    async def erase_expired(self, workspace_id: str, source_id: str, before: str) -> Erased:
        counts = []
        for table, column in (("events", "received_at"), ("quarantine", "received_at"), ("receipts", "at")):
            sql = (
                f"SELECT position FROM {table} WHERE workspace_id = ? AND source_id = ? AND {column} < ?"
                " ORDER BY position LIMIT ?"
            )
            params = (workspace_id, source_id, before, ERASE_CHUNK)
            deleted = 0
            while True:
                rows = await self._read(_fetch_all(sql, params))
                if not rows:
                    break
                deleted += await self._delete_positions(table, [row[0] for row in rows])
            counts.append(deleted)
        return Erased(*counts)

    async def _delete_positions(self, table: str, positions: list[int]) -> int:
        deleted = 0
        for start in range(0, len(positions), ERASE_CHUNK):
            chunk = positions[start : start + ERASE_CHUNK]
            sql = f"DELETE FROM {table} WHERE position IN ({','.join('?' * len(chunk))})"
            count: int = await self._submit(_row_count(sql, chunk))
            deleted += count
        return deleted

    async def save_privacy_record(self, record: PrivacyRecord) -> None:
        row = (*record[:9], orjson.dumps(record.details))
        await self._submit(
            lambda conn: conn.execute(
                "INSERT INTO privacy_records (id, workspace_id, action, identity_kind, identity_digest, actor,"
                " created_at, updated_at, status, details) VALUES (?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (id) DO UPDATE SET updated_at = excluded.updated_at, status = excluded.status,"
                " details = excluded.details",
                row,
            )
        )

    async def privacy_records(self, workspace_id: str | None = None, action: str | None = None) -> list[PrivacyRecord]:
        sql = "SELECT id, workspace_id, action, identity_kind, identity_digest, actor, created_at, updated_at, status,"
        sql += " details FROM privacy_records WHERE 1 = 1"
        params: list[str] = []
        if workspace_id is not None:
            sql, params = sql + " AND workspace_id = ?", [*params, workspace_id]
        if action is not None:
            sql, params = sql + " AND action = ?", [*params, action]
        rows = await self._read(lambda conn: conn.execute(sql + " ORDER BY position", params).fetchall())
        return [PrivacyRecord._make([*row[:9], orjson.loads(row[9])]) for row in rows]

    # --- profiles -----------------------------------------------------------------------------

    async def create_user(
        self, workspace_id: str, user_id: str, identifiers: dict[str, Any], traits: dict[str, Any], now: str
    ) -> dict[str, Any]:
        identifiers_json, traits_json = orjson.dumps(identifiers), orjson.dumps(traits)

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO profiles (workspace_id, id, identifiers, traits, created_at, updated_at)"
                " VALUES (?,?,?,?,?,NULL)",
                (workspace_id, user_id, identifiers_json, traits_json, now),
            )

        await self._submit(insert)
        return user_object(user_id, workspace_id, identifiers, traits, now, None)

    async def get_user(self, workspace_id: str, user_id: str) -> dict[str, Any] | None:
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT identifiers, traits, created_at, updated_at FROM profiles WHERE workspace_id=? AND id=?",
                (workspace_id, user_id),
            ).fetchone()
        )
        if row is None:
            return None
        return user_object(user_id, workspace_id, orjson.loads(row[0]), orjson.loads(row[1]), row[2], row[3])

    async def merge_user(
        self,
        workspace_id: str,
        user_id: str,
        identifiers: dict[str, Any] | None,
        traits: dict[str, Any] | None,
        now: str,
    ) -> dict[str, Any] | None:
        def merge(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                "SELECT identifiers, traits, created_at FROM profiles WHERE workspace_id=? AND id=?",
                (workspace_id, user_id),
            ).fetchone()
            if row is None:
                return None
            new_identifiers = merge_top_level(orjson.loads(row[0]), identifiers or {})
            new_traits = merge_top_level(orjson.loads(row[1]), traits or {})
            conn.execute(
                "UPDATE profiles SET identifiers=?, traits=?, updated_at=? WHERE workspace_id=? AND id=?",
                (orjson.dumps(new_identifiers), orjson.dumps(new_traits), now, workspace_id, user_id),
            )
            return user_object(user_id, workspace_id, new_identifiers, new_traits, row[2], now)

        result: dict[str, Any] | None = await self._submit(merge)
        return result

    async def delete_user(self, workspace_id: str, user_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM profiles WHERE workspace_id=? AND id=?", (workspace_id, user_id))
            return cursor.rowcount > 0

        result: bool = await self._submit(delete)
        return result

    async def search_users(
        self,
        workspace_id: str,
        filters: list[tuple[list[str], str]],
        limit: int,
        after: int | None,
        before: int | None,
    ) -> UserPage:
        where, params = ["workspace_id = ?"], [workspace_id]
        for path, value in filters:
            json_path = "$" + "".join('."' + key + '"' for key in path)
            # Query values are text; an identifier matches when it is that string, or a number or
            # boolean whose JSON form is that text (?age=34, ?vip=true). Objects and null never match.
            where.append(
                "CASE json_type(identifiers, ?) WHEN 'text' THEN identifiers ->> ? = ?"
                " WHEN 'integer' THEN identifiers -> ? = ? WHEN 'real' THEN identifiers -> ? = ?"
                " WHEN 'true' THEN ? = 'true' WHEN 'false' THEN ? = 'false' ELSE 0 END"
            )
            params += [json_path, json_path, value, json_path, value, json_path, value, value, value]
        filters_sql = " AND ".join(where)

        def run(conn: sqlite3.Connection) -> UserPage:
            if before is not None:
                rows = conn.execute(
                    f"SELECT position, id, identifiers, traits, created_at, updated_at FROM profiles"
                    f" WHERE {filters_sql} AND position < ? ORDER BY position DESC LIMIT ?",
                    [*params, before, limit + 1],
                ).fetchall()
                more_before = len(rows) > limit
                rows = list(reversed(rows[:limit]))
                more_after = bool(rows) and _exists(conn, filters_sql, params, "position > ?", rows[-1][0])
            else:
                start = after or 0
                rows = conn.execute(
                    f"SELECT position, id, identifiers, traits, created_at, updated_at FROM profiles"
                    f" WHERE {filters_sql} AND position > ? ORDER BY position LIMIT ?",
                    [*params, start, limit + 1],
                ).fetchall()
                more_after = len(rows) > limit
                rows = rows[:limit]
                more_before = bool(rows) and _exists(conn, filters_sql, params, "position < ?", rows[0][0])
            return UserPage(
                users=[
                    user_object(r[1], workspace_id, orjson.loads(r[2]), orjson.loads(r[3]), r[4], r[5]) for r in rows
                ],
                next_after=rows[-1][0] if rows and more_after else None,
                previous_before=rows[0][0] if rows and more_before else None,
                positions=[r[0] for r in rows],
            )

        result: UserPage = await self._read(run)
        return result


def _fetch_all(sql: str, params: Sequence[Any]) -> Callable[[sqlite3.Connection], list[Any]]:
    return lambda conn: conn.execute(sql, params).fetchall()


def _row_count(sql: str, params: Sequence[Any]) -> Callable[[sqlite3.Connection], int]:
    return lambda conn: conn.execute(sql, params).rowcount


def _exists(conn: sqlite3.Connection, filters_sql: str, params: list[Any], bound: str, position: int) -> bool:
    sql = f"SELECT 1 FROM profiles WHERE {filters_sql} AND {bound} LIMIT 1"
    return conn.execute(sql, [*params, position]).fetchone() is not None


def _page(rows: list[Any], limit: int, render: Callable[[Any], dict[str, Any]]) -> EventPage:
    more = len(rows) > limit
    rows = rows[:limit]
    items = [{"position": r[0], "workspaceId": r[1], "sourceId": r[2]} | render(r) for r in rows]
    return EventPage(items=items, next_after=rows[-1][0] if more and rows else None)


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def _unavailable(exc: BaseException) -> Exception:
    if isinstance(exc, StorageUnavailable):
        return exc
    return StorageUnavailable(more_info=f"SQLite error: {exc}. Nothing from this request was stored; retry.")


def _settle(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in outcomes:
        if future.done():  # the request was cancelled (client gone); the data is stored anyway
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
