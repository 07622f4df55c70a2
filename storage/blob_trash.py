"""Deferred removal of an object store's blobs, decided in the database.

Instances share one bucket. Instance A may find content already in the bucket and skip the
upload, a moment before it writes its reference; instance B, seeing no reference yet, would
delete the object under it. So removal goes through the database, which orders both:

- ``discard`` puts unused blobs in ``blob_trash`` instead of deleting them;
- a store of the same content first ``rescue``s it (deletes its trash row; on PostgreSQL this
  waits for a sweep that holds the row), then checks the bucket;
- ``sweeping`` takes rows older than the grace period with ``FOR UPDATE SKIP LOCKED``, re-checks
  the references in the same transaction, and yields the blobs to remove while it holds their
  rows; the rows go when the removal succeeded.

A blob rescued before the sweep is never removed; one removed before the rescue is uploaded
again by the store that rescued it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from storage.sql import IN_USE, SqlDatabase


class SqlBlobTrash:
    def __init__(self, db: SqlDatabase, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    async def discard(self, blobs: Sequence[str]) -> None:
        if not blobs:
            return
        now = self._clock()
        async with self._db.transaction() as tx:
            await tx.executemany(
                "INSERT INTO blob_trash (blob, since) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(blob, now) for blob in dict.fromkeys(blobs)],
            )

    async def rescue(self, blob: str) -> None:
        await self._db.execute("DELETE FROM blob_trash WHERE blob = ?", (blob,))

    @asynccontextmanager
    async def sweeping(self, grace_seconds: float, limit: int = 20) -> AsyncIterator[list[str]]:
        """The blobs to remove now: in the trash longer than ``grace_seconds`` and still
        unused. Their rows stay locked until the block ends, and go only if it ends cleanly."""
        async with self._db.transaction() as tx:
            rows = await tx.fetchall(
                f"SELECT blob, {IN_USE.format(blob='blob_trash.blob')} AS used FROM blob_trash"
                " WHERE since < ? ORDER BY since LIMIT ? FOR UPDATE SKIP LOCKED",
                (self._clock() - grace_seconds, limit),
            )
            taken = [row["blob"] for row in rows]
            unused = [row["blob"] for row in rows if not row["used"]]
            yield unused
            await tx.executemany(
                "DELETE FROM blob_trash WHERE blob = ?", [(blob,) for blob in taken]
            )
