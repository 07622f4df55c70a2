"""The blob store: content-addressed, stored once, never half-written under a real name."""

from __future__ import annotations

import hashlib
import os
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.models import (
    CharacterMedia,
    Destination,
    Job,
    JobSpec,
    JobState,
    MediaInfo,
    MediaKind,
    Visibility,
)
from bot.ports import BlobStore, BlobWriter
from storage.blobs import BlobTooLarge, FileBlobStore
from storage.characters import SqlCharacterStore
from storage.db import Database
from storage.jobs import SqlJobStore


class References:
    """The blob store's question "is this blob in use?", answered from a plain set."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    async def __call__(self, blob: str) -> bool:
        return blob in self.used


@pytest.fixture
def refs() -> References:
    return References()


@pytest.fixture
def store(tmp_path: Path, refs: References) -> FileBlobStore:
    return FileBlobStore(tmp_path / "blobs", refs)


def stored_files(store: FileBlobStore) -> list[Path]:
    """Every file under a blob's real name (the temporary folder left out)."""
    return sorted(
        p for p in store.root.rglob("*") if p.is_file() and p.parent != store.root / "tmp"
    )


def temp_files(store: FileBlobStore) -> list[Path]:
    return sorted((store.root / "tmp").iterdir())


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_the_store_fits_the_port(store: FileBlobStore) -> None:
    port: BlobStore = store
    assert await port.local_path("0" * 64) == store.root / "00" / ("0" * 62)


async def test_same_content_is_stored_once(store: FileBlobStore, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)  # more than one copy chunk
    first = write(tmp_path / "a.png", data)
    second = write(tmp_path / "b.png", data)

    one = await store.put_file(first)
    two = await store.put_file(second)

    assert one == two == sha(data)
    assert stored_files(store) == [store.path(one)]
    assert store.path(one).read_bytes() == data
    assert first.read_bytes() == data  # the source is left as it was
    assert temp_files(store) == []


async def test_different_content_gets_different_blobs(store: FileBlobStore, tmp_path: Path) -> None:
    one = await store.put_file(write(tmp_path / "a", b"alice"))
    two = await store.put_file(write(tmp_path / "b", b"bob"))

    assert one != two
    assert store.path(one).read_bytes() == b"alice"
    assert store.path(two).read_bytes() == b"bob"


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "A" * 64, "a" * 63, "a" * 65, "g" * 64, "ab/" + "c" * 61, ""],
)
def test_a_blob_name_is_never_a_path(store: FileBlobStore, name: str) -> None:
    with pytest.raises(ValueError):
        store.path(name)


async def test_a_writer_streams_into_a_blob(store: FileBlobStore) -> None:
    chunks = [os.urandom(64 * 1024) for _ in range(40)] + [b"tail"]
    async with store.writer(max_bytes=10 * 1024 * 1024) as writer:
        for chunk in chunks:
            await writer.write(chunk)
        name_inside_block = writer.sha256
        assert not any(stored_files(store))

    assert name_inside_block is None  # not a blob until the block ends

    data = b"".join(chunks)
    assert writer.size == len(data)
    assert writer.sha256 == sha(data)
    assert store.path(writer.sha256).read_bytes() == data
    assert temp_files(store) == []


async def test_a_writer_of_known_content_adds_no_file(store: FileBlobStore, tmp_path: Path) -> None:
    blob = await store.put_file(write(tmp_path / "v.mp4", b"video bytes"))
    async with store.writer(max_bytes=100) as writer:
        await writer.write(b"video ")
        await writer.write(b"bytes")

    assert writer.sha256 == blob
    assert stored_files(store) == [store.path(blob)]
    assert temp_files(store) == []


async def test_a_writer_refuses_the_byte_past_its_limit(store: FileBlobStore) -> None:
    with pytest.raises(BlobTooLarge) as refused:
        async with store.writer(max_bytes=1000) as writer:
            await writer.write(b"x" * 600)
            await writer.write(b"x" * 400)  # exactly the limit is accepted
            assert writer.size == 1000
            await writer.write(b"x")

    assert refused.value.code == "too_large"
    assert "1000 bytes" in refused.value.message
    assert writer.sha256 is None
    assert stored_files(store) == []
    assert temp_files(store) == []


async def test_a_failure_inside_the_writer_leaves_no_blob(store: FileBlobStore) -> None:
    data = b"half a video"
    with pytest.raises(ConnectionError):
        async with store.writer(max_bytes=1000) as writer:
            await writer.write(data)
            raise ConnectionError("download cut off")

    assert not store.path(sha(data)).exists()
    assert stored_files(store) == []
    assert temp_files(store) == []
    with pytest.raises(RuntimeError):
        await writer.write(b"more")


async def test_a_crash_before_the_rename_leaves_only_a_temp_file_cleaned_at_start(
    tmp_path: Path, refs: References
) -> None:
    root = tmp_path / "blobs"
    crashed = FileBlobStore(root, refs)
    data = b"written and synced, never renamed"
    leftover = write(root / "tmp" / "previous-process.part", data)
    old = time.time() - 3600
    os.utime(leftover, (old, old))
    recent = write(root / "tmp" / "another-live-process.part", b"still being written")

    restarted = FileBlobStore(root, refs)
    assert await restarted.cleanup_tmp(older_than=60) == 1
    assert temp_files(restarted) == [recent]
    assert await restarted.cleanup_tmp() == 1
    assert temp_files(restarted) == []
    assert not crashed.path(sha(data)).exists()
    assert stored_files(restarted) == []


async def test_memory_stays_flat_while_a_large_result_streams_in(store: FileBlobStore) -> None:
    chunk_size, count = 64 * 1024, 512  # 32 MiB
    tracemalloc.start()
    try:
        async with store.writer(max_bytes=chunk_size * count) as writer:
            for i in range(count):
                await writer.write(bytes([i % 256]) * chunk_size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert writer.size == chunk_size * count
    assert peak < 8 * 1024 * 1024, f"peak {peak / 1024 / 1024:.1f} MiB"


async def test_discard_removes_only_what_nothing_uses(
    store: FileBlobStore, refs: References, tmp_path: Path
) -> None:
    kept = await store.put_file(write(tmp_path / "a", b"kept"))
    dropped = await store.put_file(write(tmp_path / "b", b"dropped"))
    refs.used.add(kept)

    await store.discard_unused([kept, dropped, dropped])

    assert store.path(kept).exists()
    assert not store.path(dropped).exists()
    await store.discard_unused([dropped])  # already gone: no error


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "r2v.sqlite3")
    yield database
    await database.close()


def _media(blob: str) -> CharacterMedia:
    info = MediaInfo(MediaKind.IMAGE, "image/png", 10, 256, 256)
    return CharacterMedia(MediaKind.IMAGE, blob, info)


async def test_discard_keeps_blobs_another_character_or_a_job_still_uses(
    db: Database, tmp_path: Path
) -> None:
    store = FileBlobStore(tmp_path / "blobs", db.blob_in_use)
    characters = SqlCharacterStore(db)
    jobs = SqlJobStore(db)
    await characters.ensure_server("console:x", "console")
    shared = await store.put_file(write(tmp_path / "face.png", b"a shared face"))
    result = await store.put_file(write(tmp_path / "out.mp4", b"a job's result"))
    alice = await characters.create(
        "console:x", "alice", "u", "", Visibility.PUBLIC, [_media(shared)]
    )
    bob = await characters.create("console:x", "bob", "u", "", Visibility.PUBLIC, [_media(shared)])
    spec = JobSpec("p", "p", (), 5, "720p", "16:9")
    job = Job(
        "j1",
        "console:x",
        "u",
        "storyboard",
        JobState.QUEUED,
        spec,
        Destination("console", "x", "c", "u"),
        1.0,
        1.0,
    )
    await jobs.create(job, [])
    await jobs.add_blob("j1", result, "result")

    await characters.delete(alice.id)
    await store.discard_unused([shared, result])
    assert store.path(shared).exists()  # bob still has it
    assert store.path(result).exists()  # the job still has it

    await characters.delete(bob.id)
    await store.discard_unused([shared])
    assert not store.path(shared).exists()


async def test_the_writer_fits_the_port(store: FileBlobStore) -> None:
    async with store.writer(max_bytes=10) as writer:
        port: BlobWriter = writer
        await port.write(b"ok")
    assert port.sha256 == sha(b"ok")
