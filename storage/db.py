"""The SQLite database: one connection, serialised transactions, and schema migrations.

Every coroutine of the process shares one aiosqlite connection. SQLite has one transaction per
connection, so a statement sent by one coroutine while another holds a transaction open would
silently become part of that transaction (and be rolled back with it). An ``asyncio.Lock``
therefore covers each transaction from ``BEGIN`` to ``COMMIT`` and each lone statement; inside a
transaction, statements go through the ``Tx`` it yields, never through the ``Database`` (the lock
is not re-entrant). ``BEGIN IMMEDIATE`` takes SQLite's write lock at once, so other processes on
the same file are serialised too (they wait up to ``busy_timeout``).

The schema version is ``PRAGMA user_version``. Each migration runs in one transaction together
with the version bump, so a failed migration leaves the database exactly as it was.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import aiosqlite

from bot.errors import ConfigurationError

log = logging.getLogger(__name__)

Params: TypeAlias = Sequence[Any] | Mapping[str, Any]

_UNFINISHED = "('queued', 'submitted', 'running', 'delivering')"

MIGRATIONS: tuple[str, ...] = (
    # 1: servers, characters and their media, jobs with their events and blobs.
    f"""
    CREATE TABLE servers (
        id TEXT PRIMARY KEY,
        platform TEXT NOT NULL,
        settings TEXT NOT NULL DEFAULT '{{}}',
        created_at REAL NOT NULL
    );
    CREATE TABLE characters (
        id INTEGER PRIMARY KEY,
        server_id TEXT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        name_key TEXT NOT NULL,
        owner_id TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        visibility TEXT NOT NULL CHECK (visibility IN ('public', 'private')),
        created_at REAL,
        updated_at REAL,
        UNIQUE (server_id, name_key)
    );
    CREATE TABLE character_media (
        id INTEGER PRIMARY KEY,
        character_id INTEGER NOT NULL REFERENCES characters(id) ON DELETE CASCADE,
        kind TEXT NOT NULL CHECK (kind IN ('image', 'video', 'voice')),
        position INTEGER NOT NULL,
        blob TEXT NOT NULL,
        mime TEXT NOT NULL,
        size INTEGER NOT NULL,
        width INTEGER,
        height INTEGER,
        duration REAL,
        created_at REAL
    );
    CREATE INDEX character_media_character ON character_media (character_id, position);
    CREATE INDEX character_media_blob ON character_media (blob);
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        server_id TEXT NOT NULL REFERENCES servers(id),
        user_id TEXT NOT NULL,
        provider TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN
            ('queued', 'submitted', 'running', 'delivering', 'delivered', 'failed', 'cancelled')),
        spec TEXT NOT NULL,
        platform TEXT NOT NULL,
        dest_server_id TEXT NOT NULL,
        dest_user_id TEXT NOT NULL,
        channel_id TEXT NOT NULL,
        thread_id TEXT,
        status_message_id TEXT,
        task_id TEXT,
        token_hash TEXT,
        reason TEXT,
        progress REAL,
        result_blob TEXT,
        result_size INTEGER,
        result_duration REAL,
        cost_estimate REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        submitted_at REAL,
        finished_at REAL,
        next_poll_at REAL,
        poll_count INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_unfinished ON jobs (created_at) WHERE state IN {_UNFINISHED};
    CREATE INDEX jobs_by_user ON jobs (server_id, user_id, created_at);
    CREATE TABLE job_events (
        id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        at REAL NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX job_events_job ON job_events (job_id);
    CREATE TABLE job_blobs (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        blob TEXT NOT NULL,
        role TEXT NOT NULL,
        PRIMARY KEY (job_id, blob, role)
    );
    CREATE INDEX job_blobs_blob ON job_blobs (blob);
    """,
)

#: The ``WHERE`` condition matching unfinished jobs, worded exactly as the partial index is, so
#: SQLite's planner can use that index.
UNFINISHED_CONDITION = f"state IN {_UNFINISHED}"


def split_statements(script: str) -> list[str]:
    """Cut a migration script into single statements.

    ``executescript`` would commit the open transaction first, and ``execute`` takes one
    statement, so the script is split here; ``sqlite3.complete_statement`` keeps semicolons inside
    strings, comments and trigger bodies where they belong.
    """
    statements: list[str] = []
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            statement = buffer.strip()
            if statement.strip(";").strip():
                statements.append(statement)
            buffer = ""
    # The loop appended one ';' too many after the last piece: what is left is the script's tail.
    tail = buffer[:-1].strip()
    if tail:
        statements.append(tail)
    return statements


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a data-changing statement did."""

    rowcount: int
    lastrowid: int | None


class Tx:
    """The statements of one open transaction (or of one lone statement under the lock).

    It stops working when its block ends, so a statement cannot be sent outside the lock by
    holding on to it.
    """

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._open = True

    def _check(self) -> None:
        if not self._open:
            raise RuntimeError("this transaction has ended; open a new one")

    def _end(self) -> None:
        self._open = False

    async def execute(self, sql: str, params: Params = ()) -> Outcome:
        self._check()
        cursor = await self._conn.execute(sql, params)
        return Outcome(rowcount=cursor.rowcount, lastrowid=cursor.lastrowid)

    async def executemany(self, sql: str, rows: Iterable[Params]) -> Outcome:
        self._check()
        cursor = await self._conn.executemany(sql, rows)
        return Outcome(rowcount=cursor.rowcount, lastrowid=cursor.lastrowid)

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        self._check()
        rows = await self._conn.execute_fetchall(sql, params)
        return list(rows)

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


class Database:
    """The bot's SQLite database. Build it with ``await Database.open(path)``."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self.path = path

    @classmethod
    async def open(cls, path: Path, migrations: Sequence[str] = MIGRATIONS) -> Database:
        """Open (or create) the database at ``path`` and bring its schema up to date.

        ``migrations`` is the list of schema scripts, migration N being ``migrations[N - 1]``;
        tests pass their own to check how a failing one is handled.
        """
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; this module says BEGIN and COMMIT.
        conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            db = cls(conn, path)
            await db._configure()
            await db._migrate(migrations)
        except BaseException:
            await conn.close()
            raise
        return db

    async def close(self) -> None:
        async with self._lock:
            await self._conn.close()

    async def _configure(self) -> None:
        row = await self.fetchone("PRAGMA journal_mode=WAL")
        if row is None or str(row[0]).lower() != "wal":
            # Some file systems (network shares) cannot hold a WAL; SQLite then keeps working
            # with its rollback journal, only with less concurrency between readers and writers.
            log.warning("SQLite kept journal mode %s for %s", row and row[0], self.path)
        await self.execute("PRAGMA foreign_keys=ON")
        await self.execute("PRAGMA busy_timeout=5000")
        await self.execute("PRAGMA synchronous=NORMAL")

    async def schema_version(self) -> int:
        row = await self.fetchone("PRAGMA user_version")
        return int(row[0]) if row else 0

    async def _migrate(self, migrations: Sequence[str]) -> None:
        latest = len(migrations)
        if await self.schema_version() == latest:
            return  # the usual case, settled without taking the write lock
        while True:
            async with self.transaction() as tx:
                # Read inside the write transaction: another process may have migrated meanwhile.
                row = await tx.fetchone("PRAGMA user_version")
                version = int(row[0]) if row else 0
                if version > latest:
                    raise ConfigurationError(
                        f"The database {self.path} has schema version {version}, but this "
                        f"r2v-bot knows versions up to {latest} only. Upgrade r2v-bot, or set "
                        "R2V_DATA_DIR to another folder."
                    )
                if version == latest:
                    return
                target = version + 1
                try:
                    for statement in split_statements(migrations[target - 1]):
                        await tx.execute(statement)
                    # PRAGMA takes no parameters; target is an int we computed.
                    await tx.execute(f"PRAGMA user_version = {target}")
                except sqlite3.Error as exc:
                    exc.add_note(f"while migrating {self.path} to schema version {target}")
                    raise
            log.info("Migrated %s to schema version %d", self.path, target)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` when the block raises.

        No other statement of this process runs until the block ends, so keep it short and
        await nothing slow inside it (no network, no file copies).
        """
        async with self._lock:
            tx = Tx(self._conn)
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield tx
                tx._end()
                await self._conn.execute("COMMIT")
            except BaseException:
                tx._end()
                # A failed COMMIT may have ended the transaction already; then there is
                # nothing to roll back and the original error is the one worth raising.
                with suppress(sqlite3.Error):
                    await self._conn.execute("ROLLBACK")
                raise

    @asynccontextmanager
    async def _statement(self) -> AsyncIterator[Tx]:
        async with self._lock:
            tx = Tx(self._conn)
            try:
                yield tx
            finally:
                tx._end()

    async def execute(self, sql: str, params: Params = ()) -> Outcome:
        """Run one statement on its own (committed at once); inside a transaction use its Tx."""
        async with self._statement() as tx:
            return await tx.execute(sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        async with self._statement() as tx:
            return await tx.fetchall(sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        async with self._statement() as tx:
            return await tx.fetchone(sql, params)

    async def blob_in_use(self, blob: str) -> bool:
        """Whether a character's media or a job still refers to the blob (the blob store asks)."""
        row = await self.fetchone(
            "SELECT EXISTS (SELECT 1 FROM character_media WHERE blob = ?)"
            " OR EXISTS (SELECT 1 FROM job_blobs WHERE blob = ?)",
            (blob, blob),
        )
        return bool(row and row[0])
