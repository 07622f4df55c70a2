"""Removing an object store's blobs through the database's trash, on SQLite and PostgreSQL:
nothing is removed before its grace period, a referenced or re-stored blob never is, and a
store racing a sweep on another instance always ends with the blob in the bucket."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from bot.models import CharacterMedia, MediaInfo, MediaKind, Visibility
from storage.blob_cache import BlobCache
from storage.blob_trash import SqlBlobTrash
from storage.characters import SqlCharacterStore
from storage.s3 import S3BlobStore, S3Location
from storage.sql import SqlDatabase
from tests.fakes.s3 import MotoServer, moto_with_bucket

BUCKET = "trash-blobs"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_with_bucket(BUCKET) as server:
        yield server


class Instances:
    """Two instances' stores on one bucket, prefix and database."""

    def __init__(self, first: S3BlobStore, second: S3BlobStore, moto: MotoServer) -> None:
        self.first, self.second, self._moto = first, second, moto

    def in_bucket(self, blob: str) -> bool:
        key = self.first.location.key(blob)
        listed = self._moto.admin().list_objects_v2(Bucket=BUCKET, Prefix=key)
        return any(item["Key"] == key for item in listed.get("Contents", []))


@pytest.fixture
async def stores(
    database: SqlDatabase, moto: MotoServer, tmp_path: Path
) -> AsyncIterator[Instances]:
    location = S3Location(BUCKET, "t" + secrets.token_hex(4))
    async with AsyncExitStack() as stack:
        made = [
            await stack.enter_async_context(
                S3BlobStore.open(
                    location,
                    moto.access(),
                    BlobCache(tmp_path / name, 1 << 30),
                    database.blob_in_use,
                    SqlBlobTrash(database),
                )
            )
            for name in ("first", "second")
        ]
        yield Instances(made[0], made[1], moto)


async def put(store: S3BlobStore, tmp_path: Path, content: bytes) -> str:
    source = tmp_path / secrets.token_hex(4)
    source.write_bytes(content)
    return await store.put_file(source)


async def test_an_unused_blob_waits_out_its_grace_then_goes(
    stores: Instances, tmp_path: Path
) -> None:
    blob = await put(stores.first, tmp_path, b"unused")
    await stores.first.discard_unused([blob])
    assert stores.in_bucket(blob)  # in the trash, not gone
    assert await stores.second.sweep(grace_seconds=3600) == 0
    assert stores.in_bucket(blob)
    assert await stores.second.sweep(grace_seconds=0) == 1
    assert not stores.in_bucket(blob)
    assert await stores.first.sweep(grace_seconds=0) == 0


async def test_a_blob_used_again_or_stored_again_is_never_removed(
    stores: Instances, tmp_path: Path, database: SqlDatabase
) -> None:
    used = await put(stores.first, tmp_path, b"used later")
    again = await put(stores.first, tmp_path, b"stored again")
    await stores.first.discard_unused([used, again])
    characters = SqlCharacterStore(database)
    await characters.ensure_server("console:s", "console")
    info = MediaInfo(MediaKind.IMAGE, "image/png", 10, 300, 300)
    media = CharacterMedia(MediaKind.IMAGE, used, info)
    await characters.create("console:s", "alice", "u", "", Visibility.PUBLIC, [media])
    assert await put(stores.second, tmp_path, b"stored again") == again  # rescues it
    assert await stores.first.sweep(grace_seconds=0) == 0
    assert stores.in_bucket(used) and stores.in_bucket(again)


async def test_a_store_racing_a_sweep_on_another_instance_keeps_the_blob(
    stores: Instances, tmp_path: Path, database: SqlDatabase
) -> None:
    content = b"raced"
    blob = await put(stores.first, tmp_path, content)
    await stores.first.discard_unused([blob])
    # The second instance's sweep holds the blob's trash row and is about to delete it …
    async with SqlBlobTrash(database).sweeping(grace_seconds=0) as doomed:
        assert doomed == [blob]
        # … when the first stores the same content again: it waits for the sweep …
        storing = asyncio.create_task(put(stores.first, tmp_path, content))
        await asyncio.sleep(0.5)
        assert not storing.done()
        await stores.second._remove(blob)
    # … and, finding the bucket without it, uploads it again.
    assert await storing == blob
    assert stores.in_bucket(blob)
    assert await stores.second.sweep(grace_seconds=0) == 0  # and it left the trash
