"""Content-addressed files on disk: a blob's name is the sha256 of its bytes.

Identical content is stored once, whoever saved it, so a blob may be shared by several characters
and jobs; it is removed only when the database says nothing refers to it any more.

A blob appears under its real name (``root/ab/cdef…``) only complete: bytes are written to a
temporary file in ``root/tmp/``, synced, then renamed into place. A crash part-way leaves at most
a temporary file, which ``cleanup_tmp`` removes at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from bot.errors import R2VError, StorageUnavailable

#: Read and write size for copies, and how much a writer gathers before one write to disk.
CHUNK_BYTES = 1024 * 1024
#: Written bytes synced to disk while a blob streams in (the final fsync then waits less).
SYNC_EVERY_BYTES = 8 * 1024 * 1024
_BLOB_NAME = re.compile(r"[0-9a-f]{64}")


class BlobTooLarge(R2VError):
    """A streamed file went past the size its caller accepts."""

    code = "too_large"

    def __init__(self, max_bytes: int) -> None:
        limit = _human_size(max_bytes)
        super().__init__(f"The file is larger than {limit}; files up to {limit} are accepted.")
        self.max_bytes = max_bytes


def _human_size(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):g} MB"
    if size >= 1024:
        return f"{size / 1024:g} KB"
    return f"{size} bytes"


#: What the disk says when it is full, read-only or refuses us: faults that pass.
_DISK_FAULTS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)


@contextmanager
def disk_faults(where: Path) -> Iterator[None]:
    """A full, read-only or refusing disk as ``StorageUnavailable``: commands answer
    ``storage_unavailable`` and jobs wait for the fault to clear."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _DISK_FAULTS:
            raise
        raise StorageUnavailable(
            f"The blob store at {where} cannot be written right now ({exc.strerror}). Free disk "
            "space or fix the folder's permissions; waiting jobs carry on by themselves."
        ) from exc


def _remove_temp(file: BinaryIO, temp: Path) -> None:
    file.close()
    temp.unlink(missing_ok=True)


class FileBlobWriter:
    """An open blob being streamed in. Chunks are gathered up to ``CHUNK_BYTES`` and then hashed
    and written in a worker thread while the next batch arrives, so the event loop never blocks
    on the disk, the download is not paused by it, and at most two batches are in memory."""

    def __init__(self, max_bytes: int, file: BinaryIO, where: Path) -> None:
        self._max_bytes = max_bytes
        self._file = file
        self._where = where
        self._hash = hashlib.sha256()
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._size = 0
        self._sha256: str | None = None
        self._open = True
        self._writing: asyncio.Future[None] | None = None
        self._unsynced = 0

    @property
    def size(self) -> int:
        """Bytes received so far."""
        return self._size

    @property
    def sha256(self) -> str | None:
        """The blob's name, once its ``writer`` block has exited cleanly; ``None`` before."""
        return self._sha256

    async def write(self, chunk: bytes) -> None:
        if not self._open:
            raise RuntimeError("this blob writer is closed")
        self._size += len(chunk)
        if self._size > self._max_bytes:
            raise BlobTooLarge(self._max_bytes)
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= CHUNK_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        """Hand the gathered batch to a thread, once the one before it is written."""
        batch, self._pending, self._pending_size = self._pending, [], 0
        await self._written()
        if batch:
            self._writing = asyncio.ensure_future(asyncio.to_thread(self._write_batch, batch))

    async def _written(self) -> None:
        """Wait for the batch in hand; a disk that refused it is ``StorageUnavailable``."""
        writing, self._writing = self._writing, None
        if writing is not None:
            with disk_faults(self._where):
                await writing

    def _write_batch(self, batch: list[bytes]) -> None:
        for chunk in batch:
            self._hash.update(chunk)
            self._file.write(chunk)
        self._unsynced += sum(len(chunk) for chunk in batch)
        if self._unsynced >= SYNC_EVERY_BYTES:
            # Sync as the bytes arrive, so the final fsync has little left to wait for.
            self._file.flush()
            os.fdatasync(self._file.fileno())
            self._unsynced = 0

    async def _finish(self) -> str:
        """Write what is left, sync and close the file; answer the content's sha256."""
        self._open = False
        await self._flush()
        await self._written()
        await asyncio.to_thread(self._sync_and_close)
        return self._hash.hexdigest()

    def _sync_and_close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


async def never_referenced(blob: str) -> bool:
    """For a store whose blobs are copies (a cache) or a trial (doctor): nothing holds them."""
    return False


class FileBlobStore:
    """Blobs under ``root``. ``is_referenced`` answers whether a blob is still in use (the
    database's ``blob_in_use``); it is asked before any blob is removed.

    An ``asyncio.Lock`` covers moving a new blob into place and each check-then-remove of
    ``discard_unused``, so a discard cannot remove a blob between a concurrent store of the same
    content finding it present and answering its name.
    """

    def __init__(self, root: Path, is_referenced: Callable[[str], Awaitable[bool]]) -> None:
        self.root = root
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._is_referenced = is_referenced
        self._lock = asyncio.Lock()

    def path(self, blob: str) -> Path:
        """Where a blob lives. The name must be 64 lowercase hex digits (never a path)."""
        if not _BLOB_NAME.fullmatch(blob):
            raise ValueError(f"not a blob name (64 lowercase hex digits): {blob!r}")
        return self.root / blob[:2] / blob[2:]

    async def local_path(self, blob: str) -> Path:
        """Local files are their own local copy."""
        return self.path(blob)

    async def cleanup_tmp(self, older_than: float = 0.0) -> int:
        """Remove temporary files left by an earlier process (call once at start); answer how
        many. ``older_than`` (seconds) spares files another live process may still be writing."""
        return await asyncio.to_thread(self._cleanup_tmp, older_than)

    def _cleanup_tmp(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        removed = 0
        for entry in self._tmp.iterdir():
            with suppress(FileNotFoundError):
                if entry.is_file() and entry.stat().st_mtime <= cutoff:
                    entry.unlink()
                    removed += 1
        return removed

    async def put_file(self, source: Path) -> str:
        """Store a file's content and answer its sha256; the source is left as it was."""
        with disk_faults(self.root):
            temp, digest = await asyncio.to_thread(self._copy_to_temp, source)
            await self._install(temp, digest)
        return digest

    def _copy_to_temp(self, source: Path) -> tuple[Path, str]:
        fd, name = tempfile.mkstemp(dir=self._tmp, suffix=".part")
        temp = Path(name)
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                while chunk := src.read(CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return temp, digest.hexdigest()

    @asynccontextmanager
    async def writer(self, max_bytes: int) -> AsyncIterator[FileBlobWriter]:
        """Stream bytes into a new blob, refusing more than ``max_bytes`` (``BlobTooLarge``).

        The blob exists under its real name only once the block exits cleanly; then the
        writer's ``sha256`` is set. On any exception the temporary file is removed.
        """
        with disk_faults(self.root):
            fd, name = await asyncio.to_thread(tempfile.mkstemp, dir=self._tmp, suffix=".part")
        temp = Path(name)
        file = os.fdopen(fd, "wb")
        writer = FileBlobWriter(max_bytes, file, self.root)
        try:
            yield writer
            with disk_faults(self.root):
                digest = await writer._finish()
                await self._install(temp, digest)
        except BaseException:
            writer._open = False
            try:
                with contextlib.suppress(Exception):
                    await writer._written()  # no thread may still be writing to the file
            finally:
                await asyncio.to_thread(_remove_temp, file, temp)
            raise
        writer._sha256 = digest

    async def _install(self, temp: Path, digest: str) -> None:
        async with self._lock:
            await asyncio.to_thread(self._move_into_place, temp, self.path(digest))

    @staticmethod
    def _move_into_place(temp: Path, final: Path) -> None:
        try:
            if final.exists():
                temp.unlink()  # the same content is stored already
                return
            final.parent.mkdir(exist_ok=True)
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    async def discard_unused(self, blobs: Sequence[str]) -> None:
        """Remove those of the blobs that nothing refers to any more.

        Callers remove their references first (a deleted character, a finished job), then call
        this; a blob another character or job shares stays.
        """
        for blob in dict.fromkeys(blobs):
            path = self.path(blob)
            async with self._lock:
                if not await self._is_referenced(blob):
                    await asyncio.to_thread(path.unlink, missing_ok=True)
