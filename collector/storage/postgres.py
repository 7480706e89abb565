"""postgresql://user:password@host:5432/dbname?pool_max=8&pool_timeout=5 (or postgres://…).

Events and profiles in one PostgreSQL database, shared by any number of collector nodes.
Query options of our own (the rest go to libpq): `pool_min` (1), `pool_max` (8) connections
per process, `pool_timeout` seconds to wait for a connection before answering 503 (5).

Events use group commit like sqlite.py: one writer task per process inserts whatever requests
are waiting in one transaction (`INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING`) and
resolves each request only after COMMIT. Each such transaction holds an advisory lock, so
positions become visible in order across all nodes and a read-back cursor never skips a row
committed late. Profiles merge in one UPDATE each (jsonb `||` then `-`), so concurrent merges
from any node never lose a key. The schema is created or migrated on open, under a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool
from psycopg_pool.base import AttemptWithBackoff

from collector import jsonio
from collector.errors import BadRequest, ConfigError, StorageUnavailable
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
    user_object,
)

SCHEMA_VERSION = 3
MIGRATIONS = {
    1: [
        """CREATE TABLE IF NOT EXISTS events (
            position bigserial PRIMARY KEY,
            workspace_id text NOT NULL,
            source_id text NOT NULL,
            message_id text NOT NULL,
            type text NOT NULL,
            event text,
            user_id text,
            anonymous_id text,
            received_at text NOT NULL,
            timestamp text NOT NULL,
            body json NOT NULL,
            UNIQUE (workspace_id, message_id)
        )""",
        "CREATE INDEX IF NOT EXISTS events_message_id ON events (message_id)",
        "CREATE INDEX IF NOT EXISTS events_user ON events (workspace_id, user_id)",
        """CREATE TABLE IF NOT EXISTS quarantine (
            position bigserial PRIMARY KEY,
            workspace_id text NOT NULL,
            source_id text NOT NULL,
            message_id text,
            received_at text NOT NULL,
            body json NOT NULL,
            errors json NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS profiles (
            position bigserial PRIMARY KEY,
            workspace_id text NOT NULL,
            id text NOT NULL UNIQUE,
            identifiers jsonb NOT NULL,
            traits jsonb NOT NULL,
            created_at text NOT NULL,
            updated_at text
        )""",
        "CREATE INDEX IF NOT EXISTS profiles_workspace ON profiles (workspace_id, position)",
    ],
    2: [
        """CREATE TABLE IF NOT EXISTS privacy_records (
            position bigserial PRIMARY KEY,
            id text NOT NULL UNIQUE,
            workspace_id text NOT NULL,
            action text NOT NULL,
            identity_kind text NOT NULL,
            identity_digest text NOT NULL,
            actor text NOT NULL,
            created_at text NOT NULL,
            updated_at text NOT NULL,
            status text NOT NULL,
            details jsonb NOT NULL
        )""",
    ],
    # Only messages that were not stored get a row; stored and quarantined ones are found in their tables.
    3: [
        """CREATE TABLE IF NOT EXISTS receipts (
            position bigserial PRIMARY KEY,
            workspace_id text NOT NULL,
            source_id text NOT NULL,
            message_id text,
            status text NOT NULL,
            at text NOT NULL,
            detail json NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS receipts_message ON receipts (message_id) WHERE message_id IS NOT NULL",
    ],
}
ERASE_CHUNK = 1000  # rows a DELETE takes at a time: row locks only, ingestion goes on beside it
# Advisory lock keys (arbitrary constants): schema migration, and ordered event commits.
MIGRATION_LOCK = 0x636F6C6C
EVENTS_LOCK = 0x636F6C6D
MAX_GROUP_EVENTS = 10_000  # rows per group-commit transaction
OPTIONS = {"pool_min": 1, "pool_max": 8, "pool_timeout": 5.0}
RECONNECT_DELAY_MAX = 1.0  # seconds between the pool's attempts to reconnect (psycopg_pool doubles without end)

# Bodies travel as `json` (kept verbatim, as sqlite keeps the bytes), not jsonb (which reorders keys).
# %b: arrays go in binary form; the text form escapes every quote of every body with a regex.
_EVENTS_INTO = """INSERT INTO events (workspace_id, source_id, message_id, type, event, user_id, anonymous_id,
                    received_at, timestamp, body)"""
_EVENT_ROWS = """unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
              %b::text[], %b::text[], %b::json[])"""
_ONLY_NEW = "ON CONFLICT (workspace_id, message_id) DO NOTHING RETURNING workspace_id, message_id"
_INSERT_EVENTS = f"{_EVENTS_INTO} SELECT * FROM {_EVENT_ROWS} {_ONLY_NEW}"
# The same insert as one statement, its own transaction (autocommit): the lock is taken in the
# CTE, which the join reads before any row reaches the insert, so before any position is drawn.
_INSERT_EVENTS_IN_TURN = (
    "WITH turn AS MATERIALIZED (SELECT pg_advisory_xact_lock(%s::bigint)) "
    f"{_EVENTS_INTO} SELECT e.* FROM turn, {_EVENT_ROWS} AS e {_ONLY_NEW}"
)
_INSERT_QUARANTINE = """
INSERT INTO quarantine (workspace_id, source_id, message_id, received_at, body, errors)
SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::json[], %b::json[])
"""
# Top-level merge in one statement: sent keys override (||), keys sent as null are removed (-).
_MERGE = """
UPDATE profiles SET
    identifiers = (identifiers || %s::jsonb) - %s::text[],
    traits = (traits || %s::jsonb) - %s::text[],
    updated_at = %s
WHERE workspace_id = %s AND id = %s
RETURNING identifiers, traits, created_at, updated_at
"""

Pending = tuple[list[StoredEvent], list[QuarantinedEvent], "asyncio.Future[WriteResult]"]


def split_url(url: str) -> tuple[str, dict[str, float]]:
    """(libpq conninfo URL, our options): our query options are removed before libpq sees them."""
    parts = urlsplit(url)
    scheme = "postgresql" if parts.scheme.startswith("postgres") else parts.scheme
    options: dict[str, float] = dict(OPTIONS)
    passed = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in OPTIONS:
            try:
                options[key] = type(OPTIONS[key])(value)
            except ValueError:
                raise ConfigError(f"PostgreSQL storage option {key} must be a number, got {value!r}") from None
        else:
            passed.append((key, value))
    conninfo = urlunsplit((scheme, parts.netloc, parts.path, urlencode(passed), parts.fragment))
    return conninfo, options


def masked(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class _SteadyAttempt(AttemptWithBackoff):
    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, RECONNECT_DELAY_MAX)


class _Pool(AsyncConnectionPool):
    """psycopg_pool waits 1, 2, 4, 8 … s between attempts to reconnect, so after a 30 s outage the
    pool may wait another 16 s once the server is back, answering 503 meanwhile. We retry every
    second (a refused connection costs little) and are writable again within about a second."""

    async def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        await super()._add_connection(attempt or _SteadyAttempt(timeout=self.reconnect_timeout), growing)


class PostgresStorage:
    def __init__(self, url: str) -> None:
        self.url = url
        self.conninfo, options = split_url(url)
        self.pool = _Pool(
            self.conninfo,
            min_size=int(options["pool_min"]),
            max_size=max(int(options["pool_max"]), int(options["pool_min"])),
            timeout=options["pool_timeout"],
            kwargs={"autocommit": True},
            # After a server restart every pooled connection is dead: check before lending one.
            check=AsyncConnectionPool.check_connection,
            reconnect_timeout=60,
            open=False,
            name="collector",
        )
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        # Group commits in flight at once, each on a connection of its own: half the pool, so reads
        # and profile merges keep connections. They still commit one at a time (EVENTS_LOCK), but the
        # next group is encoded, sent and waiting on the lock while the one before is flushed.
        self._commit_slots = max(1, self.pool.max_size // 2)
        self._commits: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"PostgresStorage({masked(self.url)!r})"

    # --- life cycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return
        try:
            await self.pool.open(wait=True, timeout=max(self.pool.timeout, 5.0))
            async with self.pool.connection() as conn:
                await migrate(conn)
        except Exception as exc:
            await self.pool.close()
            raise StorageUnavailable(f"Cannot open {self!r}: {type(exc).__name__}: {exc}") from exc
        self._writer = asyncio.create_task(self._write_loop(), name="postgres-writer")

    async def close(self) -> None:
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        await asyncio.gather(*self._commits, return_exceptions=True)  # their requests get an answer
        await self.pool.close()

    async def ping(self) -> bool:
        """A durable write probe: txid_current() gives the statement a transaction id, so its commit is
        flushed to the WAL (a read-only or recovering server refuses it; SELECT 1 would not)."""
        try:
            async with self.pool.connection(timeout=min(self.pool.timeout, 1.0)) as conn:
                await conn.execute("SELECT txid_current()")
        except Exception:
            return False
        return True

    # --- events --------------------------------------------------------------------------------

    async def write(self, events: list[StoredEvent], quarantined: list[QuarantinedEvent] | None = None) -> WriteResult:
        if self._writer is None:
            raise StorageUnavailable("Storage is not open")
        future: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((events, quarantined or [], future))
        return await future

    async def _write_loop(self) -> None:
        """Up to `_commit_slots` group commits in flight; a group takes whatever requests wait when
        a slot frees (alone when the queue was empty: no added latency at low load)."""
        slots = asyncio.Semaphore(self._commit_slots)
        while True:
            await slots.acquire()
            group = [await self._queue.get()]
            rows = len(group[0][0])
            while not self._queue.empty() and rows < MAX_GROUP_EVENTS:
                group.append(self._queue.get_nowait())
                rows += len(group[-1][0])
            group = [item for item in group if not item[2].done()]  # drop requests already cancelled
            if not group:
                slots.release()
                continue
            commit = asyncio.create_task(self._commit_in_slot(group, slots), name="postgres-commit")
            self._commits.add(commit)
            commit.add_done_callback(self._commits.discard)

    async def _commit_in_slot(self, group: list[Pending], slots: asyncio.Semaphore) -> None:
        try:
            await self._commit_group(group)
        except Exception as exc:  # never leave a request waiting forever
            for _, _, future in group:
                _settle(future, exception=_unavailable(exc))
        finally:
            slots.release()

    async def _commit_group(self, group: list[Pending]) -> None:
        try:
            results = await self._insert(group)
        except Exception as exc:
            if len(group) == 1 or _is_connection_error(exc):
                for _, _, future in group:
                    _settle(future, exception=_unavailable(exc))
                return
            # One request spoiled the shared transaction (bad data): run each alone so the others land.
            for item in group:
                await self._commit_group([item])
            return
        for (_, _, future), result in zip(group, results, strict=True):
            _settle(future, result=result)

    async def _insert(self, group: list[Pending]) -> list[WriteResult]:
        events = [event for item in group for event in item[0]]
        bad = [q for item in group for q in item[1]]
        # One round trip: BEGIN, the lock, the inserts and COMMIT go out as one pipeline, and the
        # pipeline's sync returns only after COMMIT (or raises the first error: then nothing commits).
        cursor: psycopg.AsyncCursor[Any] | None
        async with self.pool.connection() as conn:
            if events and not bad:  # the usual case: one statement, one transaction
                cursor = await conn.execute(_INSERT_EVENTS_IN_TURN, [EVENTS_LOCK, *_event_columns(events)])
            else:
                async with conn.pipeline(), conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (EVENTS_LOCK,))
                    cursor = await conn.execute(_INSERT_EVENTS, _event_columns(events)) if events else None
                    if bad:
                        await conn.execute(_INSERT_QUARANTINE, _quarantine_columns(bad))
            inserted = {(row[0], row[1]) for row in await cursor.fetchall()} if cursor else set()
        # A key inserted now counts as stored for the first request that sent it; any other
        # copy (same batch, or another request in the group) is a duplicate.
        results = []
        for item_events, item_bad, _ in group:
            stored = []
            for event in item_events:
                key = (event.workspace_id, _text(event.message_id))
                if key in inserted:
                    inserted.discard(key)
                    stored.append(event.message_id)
            results.append(
                WriteResult(
                    stored=len(stored),
                    duplicates=len(item_events) - len(stored),
                    quarantined=len(item_bad),
                    inserted_ids=frozenset(stored),
                )
            )
        return results

    async def read_events(self, query: EventQuery) -> EventPage:
        condition, params = query.where("%s", _text)
        sql = (
            "SELECT position, workspace_id, source_id, body::text FROM events WHERE "
            + condition
            + " ORDER BY position LIMIT %s"
        )
        rows = await self._fetch(sql, [*params, query.limit + 1])
        return _page(rows, query.limit, lambda r: {"event": jsonio.loads(r[3])})

    async def read_quarantine(
        self, workspace_id: str | None, after: int, limit: int, message_id: str | None = None
    ) -> EventPage:
        sql = "SELECT position, workspace_id, source_id, body::text, errors::text, message_id, received_at"
        sql += " FROM quarantine WHERE position > %s" + (" AND workspace_id = %s" if workspace_id else "")
        sql += (" AND message_id = %s" if message_id is not None else "") + " ORDER BY position LIMIT %s"
        params: list[Any] = [after, *([workspace_id] if workspace_id else [])]
        rows = await self._fetch(sql, [*params, *([message_id] if message_id is not None else []), limit + 1])
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

    async def _fetch(self, sql: str, params: list[Any]) -> list[Any]:
        try:
            async with self.pool.connection() as conn:
                cursor = await conn.execute(sql, params)
                return await cursor.fetchall()
        except psycopg.DataError as exc:
            # A value PostgreSQL cannot hold (e.g. \u0000 in a jsonb string): a retry would fail
            # the same way, so this is the client's 400, not a 503.
            raise BadRequest(
                "Value cannot be stored",
                f"PostgreSQL rejected a value of this request: {exc}. Remove it (\\u0000 in strings, typically).",
                code="unstorable_value",
            ) from exc
        except Exception as exc:
            raise _unavailable(exc) from exc

    # --- receipts -------------------------------------------------------------------------------

    async def write_receipts(self, receipts: list[Receipt]) -> None:
        columns = [list(column) for column in zip(*receipts, strict=True)]
        columns[2] = [_text(value) for value in columns[2]]
        columns[5] = [bytes(value).decode() for value in columns[5]]
        await self._fetch(
            "INSERT INTO receipts (workspace_id, source_id, message_id, status, at, detail)"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::json[])"
            " RETURNING position",
            columns,
        )

    async def read_receipts(self, message_id: str, workspace_id: str | None, limit: int) -> list[dict[str, Any]]:
        sql = "SELECT status, workspace_id, source_id, message_id, at, detail::text FROM receipts WHERE message_id = %s"
        params = [_text(message_id)]
        if workspace_id is not None:
            sql, params = sql + " AND workspace_id = %s", [*params, workspace_id]
        rows = await self._fetch(sql + " ORDER BY position LIMIT %s", [*params, limit])
        return [arrival(row[0], row[1], row[2], row[3], row[4], orjson.loads(row[5])) for row in rows]

    async def recent_arrivals(self, source_id: str | None, limit: int) -> list[dict[str, Any]]:
        where = " WHERE source_id = %s" if source_id is not None else ""
        scope = [source_id] if source_id is not None else []
        tail = where + " ORDER BY position DESC LIMIT %s"
        rows = []
        for sql in (
            "SELECT 'stored', workspace_id, source_id, message_id, received_at, body::text, NULL FROM events" + tail,
            "SELECT 'quarantined', workspace_id, source_id, message_id, received_at, body::text, errors::text"
            " FROM quarantine" + tail,
            "SELECT status, workspace_id, source_id, message_id, at, NULL, detail::text FROM receipts" + tail,
        ):
            rows += await self._fetch(sql, [*scope, limit])
        rows = sorted(rows, key=lambda row: row[4], reverse=True)[:limit]
        return [arrival(row[0], row[1], row[2], row[3], row[4], arrival_detail(row[5], row[6])) for row in rows]

    async def expire_receipts(self, before: str) -> int:
        return await self._delete_all("at < %s", "receipts", [before])

    # --- privacy: erasure and the ledger -----------------------------------------------------------

    async def erase_identity(self, workspace_id: str, kind: IdentityKind, value: str) -> Erased:
        column = IDENTITY_COLUMNS[kind]
        events = await self._delete_all(f"workspace_id = %s AND {column} = %s", "events", [workspace_id, _text(value)])
        quarantined = await self._delete_all(
            "workspace_id = %s AND json_typeof(body) = 'object' AND body ->> %s = %s",
            "quarantine",
            [workspace_id, kind, value],
        )
        receipts = await self._delete_all(
            "workspace_id = %s AND json_typeof(detail -> 'message') = 'object' AND detail -> 'message' ->> %s = %s",
            "receipts",
            [workspace_id, kind, value],
        )
        return Erased(events, quarantined, receipts)

    async def erase_expired(self, workspace_id: str, source_id: str, before: str) -> Erased:
        condition = "workspace_id = %s AND source_id = %s AND received_at < %s"
        params = [workspace_id, source_id, before]
        return Erased(
            await self._delete_all(condition, "events", params),
            await self._delete_all(condition, "quarantine", params),
            await self._delete_all(condition.replace("received_at", "at"), "receipts", params),
        )

    async def _delete_all(self, condition: str, table: str, params: list[Any]) -> int:
        deleted = 0
        while True:
            rows = await self._fetch(
                f"DELETE FROM {table} WHERE position IN"
                f" (SELECT position FROM {table} WHERE {condition} LIMIT {ERASE_CHUNK}) RETURNING position",
                params,
            )
            deleted += len(rows)
            if len(rows) < ERASE_CHUNK:
                return deleted

    async def save_privacy_record(self, record: PrivacyRecord) -> None:
        await self._fetch(
            "INSERT INTO privacy_records (id, workspace_id, action, identity_kind, identity_digest, actor,"
            " created_at, updated_at, status, details) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s::jsonb)"
            " ON CONFLICT (id) DO UPDATE SET updated_at = excluded.updated_at, status = excluded.status,"
            " details = excluded.details RETURNING position",
            [*record[:9], _json(record.details)],
        )

    async def privacy_records(self, workspace_id: str | None = None, action: str | None = None) -> list[PrivacyRecord]:
        sql = "SELECT id, workspace_id, action, identity_kind, identity_digest, actor, created_at, updated_at, status,"
        sql += " details FROM privacy_records WHERE true"
        params: list[Any] = []
        if workspace_id is not None:
            sql, params = sql + " AND workspace_id = %s", [*params, workspace_id]
        if action is not None:
            sql, params = sql + " AND action = %s", [*params, action]
        rows = await self._fetch(sql + " ORDER BY position", params)
        return [PrivacyRecord._make(row) for row in rows]

    # --- profiles -----------------------------------------------------------------------------

    async def create_user(
        self, workspace_id: str, user_id: str, identifiers: dict[str, Any], traits: dict[str, Any], now: str
    ) -> dict[str, Any]:
        await self._fetch(
            "INSERT INTO profiles (workspace_id, id, identifiers, traits, created_at)"
            " VALUES (%s, %s, %s::jsonb, %s::jsonb, %s) RETURNING position",
            [workspace_id, user_id, _json(identifiers), _json(traits), now],
        )
        return user_object(user_id, workspace_id, identifiers, traits, now, None)

    async def get_user(self, workspace_id: str, user_id: str) -> dict[str, Any] | None:
        rows = await self._fetch(
            "SELECT identifiers, traits, created_at, updated_at FROM profiles WHERE workspace_id = %s AND id = %s",
            [workspace_id, user_id],
        )
        if not rows:
            return None
        identifiers, traits, created_at, updated_at = rows[0]
        return user_object(user_id, workspace_id, identifiers, traits, created_at, updated_at)

    async def merge_user(
        self,
        workspace_id: str,
        user_id: str,
        identifiers: dict[str, Any] | None,
        traits: dict[str, Any] | None,
        now: str,
    ) -> dict[str, Any] | None:
        id_set, id_removed = _patch(identifiers)
        traits_set, traits_removed = _patch(traits)
        rows = await self._fetch(_MERGE, [id_set, id_removed, traits_set, traits_removed, now, workspace_id, user_id])
        if not rows:
            return None
        new_identifiers, new_traits, created_at, updated_at = rows[0]
        return user_object(user_id, workspace_id, new_identifiers, new_traits, created_at, updated_at)

    async def delete_user(self, workspace_id: str, user_id: str) -> bool:
        rows = await self._fetch(
            "DELETE FROM profiles WHERE workspace_id = %s AND id = %s RETURNING id", [workspace_id, user_id]
        )
        return bool(rows)

    async def search_users(
        self,
        workspace_id: str,
        filters: list[tuple[list[str], str]],
        limit: int,
        after: int | None,
        before: int | None,
    ) -> UserPage:
        where: list[str] = ["workspace_id = %s"]
        params: list[Any] = [workspace_id]
        for path, value in filters:
            # As in sqlite.py: a query value (text) matches a string identifier equal to it, or a
            # number or boolean whose JSON form is that text (?age=34, ?vip=true); objects and null never.
            where.append(
                "CASE jsonb_typeof(identifiers #> %s::text[]) WHEN 'string' THEN identifiers #>> %s::text[] = %s"
                " WHEN 'number' THEN (identifiers #> %s::text[])::text = %s"
                " WHEN 'boolean' THEN (identifiers #> %s::text[])::text = %s ELSE false END"
            )
            params += [path, path, value, path, value, path, value]
        filters_sql = " AND ".join(where)
        columns = "position, id, identifiers, traits, created_at, updated_at"
        if before is not None:
            rows = await self._fetch(
                f"SELECT {columns} FROM profiles WHERE {filters_sql} AND position < %s ORDER BY position DESC LIMIT %s",
                [*params, before, limit + 1],
            )
            more_before = len(rows) > limit
            rows = list(reversed(rows[:limit]))
            more_after = bool(rows) and await self._exists(filters_sql, params, "position > %s", rows[-1][0])
        else:
            rows = await self._fetch(
                f"SELECT {columns} FROM profiles WHERE {filters_sql} AND position > %s ORDER BY position LIMIT %s",
                [*params, after or 0, limit + 1],
            )
            more_after = len(rows) > limit
            rows = rows[:limit]
            more_before = bool(rows) and await self._exists(filters_sql, params, "position < %s", rows[0][0])
        return UserPage(
            users=[user_object(r[1], workspace_id, r[2], r[3], r[4], r[5]) for r in rows],
            next_after=rows[-1][0] if rows and more_after else None,
            previous_before=rows[0][0] if rows and more_before else None,
            positions=[r[0] for r in rows],
        )

    async def _exists(self, filters_sql: str, params: list[Any], bound: str, position: int) -> bool:
        rows = await self._fetch(f"SELECT 1 FROM profiles WHERE {filters_sql} AND {bound} LIMIT 1", [*params, position])
        return bool(rows)


async def migrate(conn: psycopg.AsyncConnection[Any]) -> None:
    """Create or upgrade the schema; several nodes starting at once serialise on a lock."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS collector_schema (version integer NOT NULL)")
        cursor = await conn.execute("SELECT max(version) FROM collector_schema")
        row = await cursor.fetchone()
        current = (row[0] if row else None) or 0
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version]:
                await conn.execute(statement)
            await conn.execute("INSERT INTO collector_schema (version) VALUES (%s)", (version,))


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL, which JSON strings can: it becomes U+FFFD in the indexed
    columns (and in filters alike); the body keeps the exact value as its JSON escape."""
    if value is not None and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


def _event_columns(events: list[StoredEvent]) -> list[list[Any]]:
    return [
        [e.workspace_id for e in events],
        [e.source_id for e in events],
        [_text(e.message_id) for e in events],
        [e.type for e in events],
        [_text(e.event) for e in events],
        [_text(e.user_id) for e in events],
        [_text(e.anonymous_id) for e in events],
        [e.received_at for e in events],
        [e.timestamp for e in events],
        [e.body.decode() for e in events],
    ]


def _quarantine_columns(bad: list[QuarantinedEvent]) -> list[list[Any]]:
    return [
        [q.workspace_id for q in bad],
        [q.source_id for q in bad],
        [_text(q.message_id) for q in bad],
        [q.received_at for q in bad],
        [q.body.decode() for q in bad],
        [q.errors.decode() for q in bad],
    ]


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _patch(patch: dict[str, Any] | None) -> tuple[str, list[str]]:
    """(keys to set, as a JSON object; keys to remove) of a top-level merge patch."""
    patch = patch or {}
    return _json({k: v for k, v in patch.items() if v is not None}), [k for k, v in patch.items() if v is None]


def _page(rows: list[Any], limit: int, render: Callable[[Any], dict[str, Any]]) -> EventPage:
    more = len(rows) > limit
    rows = rows[:limit]
    items = [{"position": r[0], "workspaceId": r[1], "sourceId": r[2]} | render(r) for r in rows]
    return EventPage(items=items, next_after=rows[-1][0] if more and rows else None)


def _is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) or not isinstance(exc, psycopg.Error)


def _unavailable(exc: BaseException) -> StorageUnavailable:
    if isinstance(exc, StorageUnavailable):
        return exc
    return StorageUnavailable(
        more_info=f"PostgreSQL error: {type(exc).__name__}: {exc}. Nothing from this request was acknowledged; retry."
    )


def _settle(
    future: asyncio.Future[WriteResult], result: WriteResult | None = None, exception: Exception | None = None
) -> None:
    if future.done():  # the request was cancelled (client gone); a commit stands anyway
        return
    if exception is not None:
        future.set_exception(exception)
    elif result is not None:
        future.set_result(result)
