"""What the stores need of a database, whichever it is: SQLite (one process, the default) or
PostgreSQL (several instances).

The stores write one SQL text for both. It uses ``?`` placeholders (PostgreSQL's backend numbers
them) and only what both dialects share: ``ON CONFLICT … DO NOTHING``, ``RETURNING``,
``IS DISTINCT FROM``, partial indexes. ``FOR UPDATE SKIP LOCKED`` is written where a row lock
matters; SQLite, which locks the whole database for a write transaction, drops the clause.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

Params: TypeAlias = Sequence[Any] | Mapping[str, Any]

#: Job states that are not final, as SQL; the partial index on unfinished jobs is worded the same.
UNFINISHED_STATES = "('queued', 'submitted', 'running', 'delivering')"
UNFINISHED_CONDITION = f"state IN {UNFINISHED_STATES}"


class Row(Protocol):
    """A result row: columns by name or position (``sqlite3.Row`` and ``asyncpg.Record``)."""

    def __getitem__(self, key: Any, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a data-changing statement did."""

    rowcount: int


class Tx(Protocol):
    """The statements of one open transaction."""

    async def execute(self, sql: str, params: Params = ()) -> Outcome: ...

    async def executemany(self, sql: str, rows: Iterable[Params]) -> Outcome: ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...


class SqlDatabase(Protocol):
    """A database the stores run on. Lone statements commit at once; ``transaction`` groups."""

    #: ``sqlite`` or ``postgresql``: for messages and the few places a dialect shows.
    dialect: str

    def transaction(self) -> AbstractAsyncContextManager[Tx]: ...

    async def execute(self, sql: str, params: Params = ()) -> Outcome: ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    async def schema_version(self) -> int: ...

    async def migrate(self, migrations: Sequence[str]) -> int:
        """Apply the missing migrations under a lock; answers the version reached."""
        ...

    async def close(self) -> None: ...

    async def blob_in_use(self, blob: str) -> bool: ...

    def listen(self) -> AsyncIterator[str]:
        """Job ids other instances wake (``notify``); ``*`` asks every instance to look for
        jobs to take over. On SQLite only this process's own notifications arrive."""
        ...

    async def notify(self, payload: str) -> None: ...


#: Whether anything refers to a blob; ``{blob}`` is the SQL that names it (``?``, a column).
IN_USE = (
    "(EXISTS (SELECT 1 FROM character_media WHERE character_media.blob = {blob})"
    " OR EXISTS (SELECT 1 FROM job_blobs WHERE job_blobs.blob = {blob}))"
)


class _Reads(Protocol):
    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...


async def blob_in_use(reader: _Reads, blob: str) -> bool:
    """Whether a character's media or a job still refers to the blob (the blob store asks)."""
    row = await reader.fetchone("SELECT " + IN_USE.format(blob="?"), (blob, blob))
    return bool(row and row[0])
