"""PostgreSQL through asyncpg: a connection pool, migrations under an advisory lock, and
``LISTEN/NOTIFY`` so that an instance that receives a webhook can wake the job's owner.

The stores' SQL uses ``?`` placeholders; ``numbered`` turns them into PostgreSQL's ``$1, $2…``.
Connection-level failures (server gone, network cut, too many connections) become
``StorageUnavailable``: the engine waits them out and commands answer ``storage_unavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from bot.errors import ConfigurationError, StorageUnavailable
from bot.wakeups import LocalWakeups
from storage.migrations import POSTGRES_MIGRATIONS
from storage.sql import Outcome, Params, Row
from storage.sql import blob_in_use as refers_to

log = logging.getLogger(__name__)

#: The channel every instance listens on: payloads are job ids, or ``*`` (look for work).
CHANNEL = "r2v_jobs"
#: The advisory lock that serialises migrations between instances starting together.
MIGRATION_LOCK = 7_202_611_001


@functools.lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """``?`` placeholders as ``$1, $2…``, leaving question marks inside quotes alone."""
    out: list[str] = []
    count = 0
    quote: str | None = None
    for char in sql:
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "?":
            count += 1
            out.append(f"${count}")
            continue
        out.append(char)
    return "".join(out)


def _rowcount(status: str) -> int:
    """asyncpg answers a command's tag (``UPDATE 3``, ``INSERT 0 1``): its last word counts."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _positional(params: Params) -> Sequence[Any]:
    if not isinstance(params, Sequence):
        raise TypeError("PostgreSQL statements take positional (?) parameters only")
    return params


_TRANSIENT = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.DiskFullError,
    # A connection whose server end was cut can be handed out once more in a broken state
    # ("another operation is in progress"); the pool replaces it after this failure.
    asyncpg.InternalClientError,
)


@contextmanager
def storage_errors(where: str) -> Iterator[None]:
    try:
        yield
    except _TRANSIENT as exc:
        raise StorageUnavailable(
            f"The database at {where} cannot be reached right now ({type(exc).__name__}: "
            f"{exc}). Jobs keep their state and carry on when it is back."
        ) from exc


_Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


class PostgresTx:
    def __init__(self, conn: _Conn, where: str) -> None:
        self._conn = conn
        self._where = where

    async def execute(self, sql: str, params: Params = ()) -> Outcome:
        with storage_errors(self._where):
            status = await self._conn.execute(numbered(sql), *_positional(params))
        return Outcome(rowcount=_rowcount(status))

    async def executemany(self, sql: str, rows: Iterable[Params]) -> Outcome:
        batch = [tuple(_positional(row)) for row in rows]
        if not batch:
            return Outcome(rowcount=0)
        with storage_errors(self._where):
            await self._conn.executemany(numbered(sql), batch)
        return Outcome(rowcount=len(batch))

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        with storage_errors(self._where):
            rows = await self._conn.fetch(numbered(sql), *_positional(params))
        return list(rows)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        with storage_errors(self._where):
            row: Row | None = await self._conn.fetchrow(numbered(sql), *_positional(params))
        return row


class PostgresDatabase:
    """A pool of connections to one PostgreSQL database (optionally one schema of it)."""

    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, dsn: str, where: str) -> None:
        self._pool = pool
        self.dsn = dsn
        self.schema: str | None = None
        self.where = where
        self._wakeups = LocalWakeups()
        self._listen_conn: asyncpg.Connection | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._server_settings: dict[str, str] = {}

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        schema: str | None = None,
        migrations: Sequence[str] = POSTGRES_MIGRATIONS,
        migrate: bool = True,
        min_size: int = 2,
        max_size: int = 10,
        application_name: str = "r2v-bot",
    ) -> PostgresDatabase:
        """Connect, and (unless ``migrate`` is false) bring the schema up to date.

        ``schema``: a PostgreSQL schema to keep every table in (tests give each their own).
        """
        where = _where(dsn)
        # The name shows in pg_stat_activity: which instance holds which connection.
        settings = {"application_name": application_name[:63]}
        if schema:
            settings["search_path"] = schema
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                server_settings=settings,
                command_timeout=60,
            )
        except (
            asyncpg.InvalidCatalogNameError,
            asyncpg.InvalidAuthorizationSpecificationError,
            asyncpg.InvalidPasswordError,
        ) as exc:
            raise ConfigurationError(
                f"R2V_DATABASE_URL: PostgreSQL at {where} refused the connection: {exc}"
            ) from exc
        except _TRANSIENT as exc:
            raise ConfigurationError(
                f"R2V_DATABASE_URL: PostgreSQL at {where} cannot be reached ({exc}). Start the "
                "server or correct the URL."
            ) from exc
        db = cls(pool, dsn, where)
        db._server_settings = settings
        db.schema = schema
        try:
            if schema:
                async with pool.acquire() as conn:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            if migrate:
                await db.migrate(migrations)
        except BaseException:
            await pool.close()
            raise
        return db

    async def close(self) -> None:
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listen_task
        if self._listen_conn is not None:
            with contextlib.suppress(Exception):
                await self._listen_conn.close()
        await self._pool.close()

    # -- migrations --------------------------------------------------------------------------

    async def schema_version(self) -> int:
        row = await self.fetchone("SELECT to_regclass('schema_version') IS NOT NULL AS present")
        if not row or not row["present"]:
            return 0
        version = await self.fetchone("SELECT version FROM schema_version")
        return int(version["version"]) if version else 0

    async def migrate(self, migrations: Sequence[str] = POSTGRES_MIGRATIONS) -> int:
        """Apply what is missing, one transaction a version, under an advisory lock so that
        instances starting together migrate once. Answers the version reached."""
        latest = len(migrations)
        with storage_errors(self.where):
            async with self._pool.acquire() as conn:
                await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
                try:
                    await conn.execute(
                        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
                    )
                    while True:
                        async with conn.transaction():
                            row = await conn.fetchrow("SELECT version FROM schema_version")
                            version = int(row["version"]) if row else 0
                            if version > latest:
                                raise ConfigurationError(
                                    f"The database at {self.where} has schema version {version}, "
                                    f"but this r2v-bot knows versions up to {latest} only. "
                                    "Upgrade r2v-bot."
                                )
                            if version == latest:
                                return version
                            target = version + 1
                            await conn.execute(migrations[target - 1])
                            if row:
                                await conn.execute("UPDATE schema_version SET version = $1", target)
                            else:
                                await conn.execute(
                                    "INSERT INTO schema_version (version) VALUES ($1)", target
                                )
                        log.info("Migrated %s to schema version %d", self.where, target)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)

    # -- statements --------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTx]:
        with storage_errors(self.where):
            async with self._pool.acquire() as conn, conn.transaction():
                yield PostgresTx(conn, self.where)

    async def execute(self, sql: str, params: Params = ()) -> Outcome:
        with storage_errors(self.where):
            async with self._pool.acquire() as conn:
                return await PostgresTx(conn, self.where).execute(sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        with storage_errors(self.where):
            async with self._pool.acquire() as conn:
                return await PostgresTx(conn, self.where).fetchall(sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        with storage_errors(self.where):
            async with self._pool.acquire() as conn:
                return await PostgresTx(conn, self.where).fetchone(sql, params)

    async def blob_in_use(self, blob: str) -> bool:
        return await refers_to(self, blob)

    # -- LISTEN / NOTIFY ---------------------------------------------------------------------

    async def notify(self, payload: str) -> None:
        await self.execute("SELECT pg_notify(?, ?)", (CHANNEL, payload))

    def listen(self) -> AsyncIterator[str]:
        if self._listen_task is None:
            self._listen_task = asyncio.create_task(self._keep_listening(), name="pg-listen")
        return self._wakeups.listen()

    def _deliver(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self._wakeups.publish(str(payload))

    async def _keep_listening(self) -> None:
        """One connection LISTENs for the process; when it is lost, reconnect with backoff and
        tell the listeners ``*`` (notifications may have been missed meanwhile)."""
        delay = 0.5
        while True:
            try:
                conn = await asyncpg.connect(self.dsn, server_settings=self._server_settings)
                self._listen_conn = conn
                await conn.add_listener(CHANNEL, self._deliver)
                delay = 0.5
                self._deliver(None, 0, CHANNEL, "*")
                while not conn.is_closed():
                    # A cut network does not close the socket by itself: ask, now and then.
                    await asyncio.sleep(5.0)
                    await asyncio.wait_for(conn.execute("SELECT 1"), timeout=5.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN connection to %s lost (%s); retrying", self.where, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


def _where(dsn: str) -> str:
    """The DSN fit for messages and logs: no password, and no query (``?password=``,
    ``sslpassword=`` may ride there)."""
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{parts.path}"
