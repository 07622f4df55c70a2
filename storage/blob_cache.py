"""A bounded local copy of an object store's blobs, for the media work that needs files.

Fitting a reference, checking a result and uploading a video to chat all read local files, so an
object store's blobs are copied to disk when first needed and kept while there is room. The copy
is a ``FileBlobStore``: a file appears under a blob's name only complete and only under the sha256
of its bytes, so a cached file can be trusted without checking it again, and a download that
answers other bytes than asked for can never take the name it was meant to have.

Past ``max_bytes`` the least recently used files go first; files used within ``keep_recent``
seconds stay even then, because a caller may be about to open the path it was just handed.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, suppress
from pathlib import Path

from storage.blobs import FileBlobStore, FileBlobWriter, never_referenced

#: How long a file handed out (or just written) is spared by eviction, in seconds.
KEEP_RECENT_SECONDS = 600.0


class BlobCache:
    """Blobs under ``root``, at most about ``max_bytes`` of them (see the module's note)."""

    def __init__(
        self,
        root: Path,
        max_bytes: int,
        *,
        keep_recent: float = KEEP_RECENT_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.files = FileBlobStore(root, never_referenced)
        self._max_bytes = max_bytes
        self._keep_recent = keep_recent
        self._clock = clock
        self._size: int | None = None  # measured at the first eviction check

    def path(self, blob: str) -> Path:
        return self.files.path(blob)

    async def start(self) -> None:
        """Remove what a previous process left half-written; trim to size."""
        await self.files.cleanup_tmp(older_than=3600)
        await self.trim()

    async def get(self, blob: str) -> Path | None:
        """The cached copy, marked as just used; ``None`` when it is not here."""
        path = self.files.path(blob)
        return path if await asyncio.to_thread(_touch, path) else None

    def writer(self, max_bytes: int) -> AbstractAsyncContextManager[FileBlobWriter]:
        return self.files.writer(max_bytes)

    async def put_file(self, source: Path) -> str:
        return await self.files.put_file(source)

    async def remove(self, blob: str) -> None:
        path = self.files.path(blob)
        size = await asyncio.to_thread(_unlink, path)
        if self._size is not None:
            self._size -= size

    async def added(self, size: int) -> None:
        """Count a new file in; trim when the cache has grown past its size."""
        if self._size is not None:
            self._size += size
        if self._size is None or self._size > self._max_bytes:
            await self.trim()

    async def trim(self) -> None:
        self._size = await asyncio.to_thread(self._trim)

    def _trim(self) -> int:
        """Remove the least recently used files until the rest fit; answer the size kept."""
        entries = sorted(_entries(self.files.root))
        total = sum(size for _, size, _ in entries)
        spare_after = self._clock() - self._keep_recent
        for used, _, path in entries:
            if total <= self._max_bytes or used > spare_after:
                break
            total -= _unlink(path)
        return total


def _touch(path: Path) -> bool:
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


def _unlink(path: Path) -> int:
    """Remove a file; answer how many bytes that freed."""
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size


def _entries(root: Path) -> list[tuple[float, int, Path]]:
    """Every cached file as (last used, size, path)."""
    found: list[tuple[float, int, Path]] = []
    for folder in root.iterdir():
        if folder.name == "tmp" or not folder.is_dir():
            continue
        for path in folder.iterdir():
            with suppress(FileNotFoundError):
                stat = path.stat()
                found.append((stat.st_mtime, stat.st_size, path))
    return found
