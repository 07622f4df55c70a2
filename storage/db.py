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
import functools
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path

import aiosqlite

from bot.errors import ConfigurationError, StorageUnavailable
from bot.wakeups import LocalWakeups
from storage.migrations import SQLITE_MIGRATIONS
from storage.sql import Outcome, Params, Row
from storage.sql import blob_in_use as refers_to

log = logging.getLogger(__name__)

MIGRATIONS = SQLITE_MIGRATIONS

_SKIP_LOCKED = re.compile(r"\s+FOR\s+UPDATE(\s+SKIP\s+LOCKED)?", re.IGNORECASE)

#: SQLite errors that mean "the disk or the file system said no", not "this SQL is wrong":
#: they pass when the fault clears (space freed, permissions restored).
_TRANSIENT_MESSAGES = (
    "disk i/o error",
    "database or disk is full",
    "attempt to write a readonly database",
    "unable to open database file",
    "database is locked",
)


@functools.lru_cache(maxsize=512)
def _sqlite_sql(sql: str) -> str:
    """SQLite locks the whole database for a write transaction: row locks are moot there."""
    return _SKIP_LOCKED.sub("", sql)


@contextmanager
def storage_errors(where: Path) -> Iterator[None]:
    """Turn a file-system fault under SQLite into ``StorageUnavailable`` (transient)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc).lower()
        if any(message in text for message in _TRANSIENT_MESSAGES):
            raise StorageUnavailable(
                f"The database {where} cannot be written right now ({exc}). Jobs keep their "
                "state and carry on when it can; free disk space or fix the folder's permissions."
            ) from exc
        raise
    except OSError as exc:
        raise StorageUnavailable(
            f"The database {where} cannot be reached right now ({exc.strerror or exc})."
        ) from exc


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


class SqliteTx:
    """The statements of one open transaction (or of one lone statement under the lock).

    It stops working when its block ends, so a statement cannot be sent outside the lock by
    holding on to it.
    """

    def __init__(self, conn: aiosqlite.Connection, where: Path) -> None:
        self._conn = conn
        self._where = where
        self._open = True

    def _check(self) -> None:
        if not self._open:
            raise RuntimeError("this transaction has ended; open a new one")

    def _end(self) -> None:
        self._open = False

    async def execute(self, sql: str, params: Params = ()) -> Outcome:
        self._check()
        with storage_errors(self._where):
            cursor = await self._conn.execute(_sqlite_sql(sql), params)
        return Outcome(rowcount=cursor.rowcount)

    async def executemany(self, sql: str, rows: Iterable[Params]) -> Outcome:
        self._check()
        with storage_errors(self._where):
            cursor = await self._conn.executemany(_sqlite_sql(sql), rows)
        return Outcome(rowcount=cursor.rowcount)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        self._check()
        with storage_errors(self._where):
            rows = await self._conn.execute_fetchall(_sqlite_sql(sql), params)
        return list(rows)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


class Database:
    """The bot's SQLite database. Build it with ``await Database.open(path)``."""

    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self.path = path
        self._wakeups = LocalWakeups()

    @classmethod
    async def open(cls, path: Path, migrations: Sequence[str] | None = MIGRATIONS) -> Database:
        """Open (or create) the database at ``path`` and bring its schema up to date.

        ``migrations`` is the list of schema scripts, migration N being ``migrations[N - 1]``;
        tests pass their own to check how a failing one is handled.
        """
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; this module says BEGIN and COMMIT.
        with storage_errors(path):
            conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            db = cls(conn, path)
            await db._configure()
            if migrations is not None:
                await db.migrate(migrations)
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

    async def migrate(self, migrations: Sequence[str] = MIGRATIONS) -> int:
        """Apply what is missing; answers the version reached. ``BEGIN IMMEDIATE`` is the lock
        that keeps two processes from migrating at once."""
        latest = len(migrations)
        if await self.schema_version() == latest:
            return latest  # the usual case, settled without taking the write lock
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
                    return version
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
    async def transaction(self) -> AsyncIterator[SqliteTx]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` when the block raises.

        No other statement of this process runs until the block ends, so keep it short and
        await nothing slow inside it (no network, no file copies).
        """
        async with self._lock:
            tx = SqliteTx(self._conn, self.path)
            with storage_errors(self.path):
                await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield tx
                tx._end()
                with storage_errors(self.path):
                    await self._conn.execute("COMMIT")
            except BaseException:
                tx._end()
                # A failed COMMIT may have ended the transaction already; then there is
                # nothing to roll back and the original error is the one worth raising.
                with suppress(sqlite3.Error):
                    await self._conn.execute("ROLLBACK")
                raise

    @asynccontextmanager
    async def _statement(self) -> AsyncIterator[SqliteTx]:
        async with self._lock:
            tx = SqliteTx(self._conn, self.path)
            try:
                yield tx
            finally:
                tx._end()

    async def execute(self, sql: str, params: Params = ()) -> Outcome:
        """Run one statement on its own (committed at once); inside a transaction use its Tx."""
        async with self._statement() as tx:
            return await tx.execute(sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._statement() as tx:
            return await tx.fetchall(sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        async with self._statement() as tx:
            return await tx.fetchone(sql, params)

    async def blob_in_use(self, blob: str) -> bool:
        """Whether a character's media or a job still refers to the blob (the blob store asks)."""
        return await refers_to(self, blob)

    async def notify(self, payload: str) -> None:
        """One process per SQLite database: a notification goes to this process's listeners."""
        await self._wakeups.notify(payload)

    def listen(self) -> AsyncIterator[str]:
        return self._wakeups.listen()
