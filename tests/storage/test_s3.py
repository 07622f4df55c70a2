"""Blobs in an S3-compatible store, against moto's server over real HTTP with real signatures.

What a user of several instances would notice: a result video goes up and comes back whole
without the bot holding it in memory, identical content is stored once, a blob a character still
uses is never removed, a copy fetched from the store is checked against its name, providers can
fetch a presigned link, a wrong bucket or wrong keys stop the start with a sentence naming them,
and a store that goes down is a transient fault the engine can wait out.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.http.media import MediaLinks, media_route
from bot.doctor import _blob_check
from bot.errors import ConfigurationError, StorageUnavailable
from bot.ports import BlobStore
from storage.blob_cache import BlobCache
from storage.blob_stores import open_blob_store
from storage.blobs import FileBlobStore
from storage.s3 import PART_BYTES, S3BlobStore, S3Location
from tests.fakes.s3 import MotoServer, moto_with_bucket

BUCKET = "r2v-blobs"
MiB = 1024 * 1024


class References:
    """The blob store's question "is this blob in use?", answered from a plain set."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    async def __call__(self, blob: str) -> bool:
        return blob in self.used


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_with_bucket(BUCKET) as server:
        yield server


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """Each test its own prefix in the shared bucket, so that none sees another's blobs."""
    return f"t/{request.node.name}"


@pytest.fixture
def refs() -> References:
    return References()


@asynccontextmanager
async def open_store(
    moto: MotoServer,
    cache_dir: Path,
    refs: References,
    prefix: str,
    *,
    cache_bytes: int = 1 << 40,
    bucket: str = BUCKET,
) -> AsyncIterator[S3BlobStore]:
    location = S3Location(bucket, prefix)
    cache = BlobCache(cache_dir, cache_bytes)
    async with S3BlobStore.open(location, moto.access(), cache, refs) as store:
        yield store


@pytest.fixture
async def store(
    moto: MotoServer, tmp_path: Path, refs: References, prefix: str
) -> AsyncIterator[S3BlobStore]:
    async with open_store(moto, tmp_path / "cache", refs, prefix) as opened:
        yield opened


@pytest.fixture
async def other_instance(
    moto: MotoServer, tmp_path: Path, refs: References, prefix: str
) -> AsyncIterator[S3BlobStore]:
    """A second store on the same bucket and prefix with a cache of its own (empty)."""
    async with open_store(moto, tmp_path / "other-cache", refs, prefix) as opened:
        yield opened


def keys_in_bucket(moto: MotoServer, prefix: str) -> list[str]:
    listed = moto.admin().list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")
    return sorted(item["Key"] for item in listed.get("Contents", []))


def object_bytes(moto: MotoServer, key: str) -> bytes:
    return moto.admin().get_object(Bucket=BUCKET, Key=key)["Body"].read()


# -- round trip and memory --------------------------------------------------------------------


async def test_a_large_result_goes_up_in_parts_and_comes_back_without_being_held_in_memory(
    store: S3BlobStore, other_instance: S3BlobStore, moto: MotoServer, prefix: str
) -> None:
    chunk_size, count = 256 * 1024, 160  # 40 MiB: eight parts, more than the bound below
    pattern = [os.urandom(chunk_size) for _ in range(4)]
    expected = hashlib.sha256()
    for i in range(count):
        expected.update(pattern[i % 4])
    bound = 30 * MiB

    tracemalloc.start()
    try:
        async with store.writer(max_bytes=chunk_size * count) as writer:
            for i in range(count):
                await writer.write(pattern[i % 4])
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        fetched = await other_instance.local_path(expected.hexdigest())
        _, fetch_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    blob = expected.hexdigest()
    assert writer.sha256 == blob
    assert chunk_size * count > 4 * PART_BYTES
    assert keys_in_bucket(moto, prefix) == [f"{prefix}/{blob[:2]}/{blob[2:]}"]
    assert fetched == other_instance.cache.path(blob)
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == blob
    assert upload_peak < bound, f"upload peak {upload_peak / MiB:.1f} MiB"
    assert fetch_peak < bound, f"fetch peak {fetch_peak / MiB:.1f} MiB"


async def test_a_small_file_round_trips_between_instances(
    store: S3BlobStore, other_instance: S3BlobStore, tmp_path: Path
) -> None:
    source = tmp_path / "face.png"
    source.write_bytes(b"a small face")

    blob = await store.put_file(source)

    assert blob == sha(b"a small face")
    assert source.read_bytes() == b"a small face"  # the source is left as it was
    assert (await other_instance.local_path(blob)).read_bytes() == b"a small face"


# -- content addressing ----------------------------------------------------------------------


async def test_same_content_is_stored_once_and_uploaded_once(
    store: S3BlobStore, other_instance: S3BlobStore, moto: MotoServer, prefix: str, tmp_path: Path
) -> None:
    data = os.urandom(100_000)
    (tmp_path / "a").write_bytes(data)
    first = await store.put_file(tmp_path / "a")
    key = keys_in_bucket(moto, prefix)[0]
    stored_at = moto.admin().head_object(Bucket=BUCKET, Key=key)["LastModified"]
    await asyncio.sleep(1.1)  # S3 times have whole seconds: a second upload would show

    async with other_instance.writer(max_bytes=len(data)) as writer:
        await writer.write(data)

    assert writer.sha256 == first
    assert keys_in_bucket(moto, prefix) == [key]
    assert moto.admin().head_object(Bucket=BUCKET, Key=key)["LastModified"] == stored_at


async def test_discard_removes_only_what_nothing_uses(
    store: S3BlobStore, refs: References, moto: MotoServer, prefix: str, tmp_path: Path
) -> None:
    (tmp_path / "a").write_bytes(b"kept")
    (tmp_path / "b").write_bytes(b"dropped")
    kept = await store.put_file(tmp_path / "a")
    dropped = await store.put_file(tmp_path / "b")
    refs.used.add(kept)

    await store.discard_unused([kept, dropped, dropped])

    assert keys_in_bucket(moto, prefix) == [store.location.key(kept)]
    assert store.cache.path(kept).exists()
    assert not store.cache.path(dropped).exists()
    with pytest.raises(FileNotFoundError):
        await store.local_path(dropped)
    await store.discard_unused([dropped])  # already gone: no error


# -- the local copy ----------------------------------------------------------------------------


async def test_a_fetched_copy_is_served_from_the_cache_afterwards(
    store: S3BlobStore, other_instance: S3BlobStore, moto: MotoServer, tmp_path: Path
) -> None:
    (tmp_path / "a").write_bytes(b"fetched once")
    blob = await store.put_file(tmp_path / "a")
    first = await other_instance.local_path(blob)
    moto.admin().delete_object(Bucket=BUCKET, Key=store.location.key(blob))

    assert await other_instance.local_path(blob) == first
    assert first.read_bytes() == b"fetched once"


async def test_bytes_that_do_not_match_the_name_are_refused_and_not_cached(
    store: S3BlobStore, other_instance: S3BlobStore, moto: MotoServer, tmp_path: Path
) -> None:
    (tmp_path / "a").write_bytes(b"the real bytes")
    blob = await store.put_file(tmp_path / "a")
    moto.admin().put_object(Bucket=BUCKET, Key=store.location.key(blob), Body=b"tampered")

    with pytest.raises(StorageUnavailable) as refused:
        await other_instance.local_path(blob)

    assert "do not match" in refused.value.message
    assert refused.value.code == "storage_unavailable"
    assert not other_instance.cache.path(blob).exists()
    assert not other_instance.cache.path(sha(b"tampered")).exists()


async def test_concurrent_requests_for_one_blob_fetch_it_once(
    store: S3BlobStore, other_instance: S3BlobStore, tmp_path: Path
) -> None:
    (tmp_path / "a").write_bytes(os.urandom(3 * MiB))
    blob = await store.put_file(tmp_path / "a")

    paths = await asyncio.gather(*(other_instance.local_path(blob) for _ in range(5)))

    assert set(paths) == {other_instance.cache.path(blob)}
    assert list((other_instance.cache.files.root / "tmp").iterdir()) == []


async def test_the_cache_forgets_the_least_recently_used_past_its_size(
    moto: MotoServer, store: S3BlobStore, refs: References, prefix: str, tmp_path: Path
) -> None:
    blobs = []
    for name in "abc":
        (tmp_path / name).write_bytes(name.encode() * 1000)
        blobs.append(await store.put_file(tmp_path / name))
    cache = BlobCache(tmp_path / "small-cache", 2500, keep_recent=0)
    async with S3BlobStore.open(S3Location(BUCKET, prefix), moto.access(), cache, refs) as small:
        for i, blob in enumerate(blobs):
            path = await small.local_path(blob)
            os.utime(path, (1000.0 + i, 1000.0 + i))  # fetched in this order, a second apart
        await small.local_path(blobs[1])  # used again: now the most recent
        await small.local_path(blobs[2])

    assert not small.cache.path(blobs[0]).exists()
    assert small.cache.path(blobs[1]).exists()
    assert small.cache.path(blobs[2]).exists()


# -- links for providers and the /media route -------------------------------------------------


async def test_a_presigned_link_gives_anyone_the_bytes_with_the_type(
    store: S3BlobStore, tmp_path: Path
) -> None:
    (tmp_path / "clip").write_bytes(b"reference video bytes")
    blob = await store.put_file(tmp_path / "clip")
    links = MediaLinks(b"s" * 32, None, ttl_seconds=600, presign=store.presigned_url)

    url = await links.fetch_url(blob, "video/mp4")

    assert url is not None and "X-Amz-Signature=" in url and "X-Amz-Expires=600" in url
    async with httpx.AsyncClient() as client:  # no keys: the link alone
        response = await client.get(url)
    assert response.status_code == 200
    assert response.content == b"reference video bytes"
    assert response.headers["Content-Type"] == "video/mp4"


@pytest.mark.parametrize("copy", ["streamed from the store", "served from the local copy"])
async def test_the_media_route_serves_a_blob_of_the_store_with_ranges(
    store: S3BlobStore, other_instance: S3BlobStore, tmp_path: Path, copy: str
) -> None:
    data = os.urandom(3 * MiB + 5)  # several chunks
    (tmp_path / "v").write_bytes(data)
    blob = await store.put_file(tmp_path / "v")  # the storing instance keeps a copy
    serving = other_instance if copy == "streamed from the store" else store
    links = MediaLinks(b"s" * 32, "https://bot.example", ttl_seconds=600)
    app = web.Application()
    app.add_routes([media_route(links, serving.local_path, serving)])
    async with TestServer(app, port=0) as server, httpx.AsyncClient() as client:
        url = str(server.make_url(f"/media/{links.token(blob, 'video/mp4')}"))
        whole = await client.get(url)
        part = await client.get(url, headers={"Range": "bytes=100-199"})
        tail = await client.get(url, headers={"Range": "bytes=-10"})
        past = await client.get(url, headers={"Range": f"bytes={len(data) + 10}-"})
        head = await client.head(url)
        missing = await client.get(
            str(server.make_url(f"/media/{links.token('0' * 64, 'video/mp4')}"))
        )

    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["Content-Type"] == "video/mp4"
    assert whole.headers["Content-Length"] == str(len(data))
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert part.headers["Content-Length"] == "100"
    assert tail.status_code == 206 and tail.content == data[-10:]
    assert past.status_code == 416
    assert past.headers["Content-Range"] == f"bytes */{len(data)}"
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(data))
    assert missing.status_code == 404
    if serving is other_instance:  # a link served from the store leaves nothing on disk
        assert not other_instance.cache.path(blob).exists()


async def test_the_media_route_answers_503_while_the_store_is_down(
    tmp_path: Path, refs: References
) -> None:
    server = MotoServer().start()
    server.create_bucket(BUCKET)
    links = MediaLinks(b"s" * 32, "https://bot.example", ttl_seconds=600)
    async with open_store(server, tmp_path / "cache", refs, "p") as store:
        app = web.Application()
        app.add_routes([media_route(links, store.local_path, store)])
        server.stop()
        async with TestServer(app, port=0) as site, httpx.AsyncClient() as client:
            answer = await client.get(
                str(site.make_url(f"/media/{links.token('a' * 64, 'image/png')}"))
            )

    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "30"
    assert "cannot be used right now" in answer.text


# -- set-up mistakes and faults ---------------------------------------------------------------


async def test_a_missing_bucket_stops_the_start_naming_it(
    moto: MotoServer, tmp_path: Path, refs: References
) -> None:
    with pytest.raises(ConfigurationError) as stopped:
        async with open_store(moto, tmp_path / "c", refs, "p", bucket="no-such-bucket"):
            pass

    assert "'no-such-bucket' does not exist" in stopped.value.message
    assert moto.url in stopped.value.message
    assert "R2V_BLOB_URL" in stopped.value.message


async def test_keys_the_store_refuses_stop_the_start_naming_the_variables(
    tmp_path: Path, refs: References
) -> None:
    locked = MotoServer(locked=True).start()
    try:
        locked.create_bucket(BUCKET)
        cache = BlobCache(tmp_path / "c", MiB)
        good_key, good_secret = locked.keys
        async with S3BlobStore.open(S3Location(BUCKET), locked.access(), cache, refs):
            pass  # the keys it issued are accepted
        for keys in [("AKIAUNKNOWNKEY000000", good_secret), (good_key, "not-the-secret")]:
            with pytest.raises(ConfigurationError) as stopped:
                async with S3BlobStore.open(
                    S3Location(BUCKET), locked.access(keys=keys), cache, refs
                ):
                    pass
            assert "refuses these keys" in stopped.value.message
            assert "AWS_ACCESS_KEY_ID" in stopped.value.message
            assert "AWS_SECRET_ACCESS_KEY" in stopped.value.message
    finally:
        locked.stop()


async def test_a_store_that_goes_down_is_a_transient_fault(
    tmp_path: Path, refs: References
) -> None:
    server = MotoServer().start()
    server.create_bucket(BUCKET)
    (tmp_path / "a").write_bytes(b"stored before the outage")
    (tmp_path / "b").write_bytes(b"stored during the outage")
    async with open_store(server, tmp_path / "cache", refs, "p") as store:
        blob = await store.put_file(tmp_path / "a")
        await store.cache.remove(blob)  # only the store has it now
        server.stop()

        with pytest.raises(StorageUnavailable) as fetching:
            await store.local_path(blob)
        with pytest.raises(StorageUnavailable) as storing:
            await store.put_file(tmp_path / "b")
        with pytest.raises(StorageUnavailable):
            await store.discard_unused([blob])

        assert fetching.value.code == "storage_unavailable"
        assert server.url in fetching.value.message
        assert "retry" in storing.value.message
        assert not store.cache.path(blob).exists()


async def test_a_bucket_removed_while_running_is_a_fault_not_a_missing_blob(
    moto: MotoServer, tmp_path: Path, refs: References
) -> None:
    moto.create_bucket("short-lived")
    (tmp_path / "a").write_bytes(b"no bucket to go to")
    async with open_store(moto, tmp_path / "c", refs, "p", bucket="short-lived") as store:
        moto.admin().delete_bucket(Bucket="short-lived")

        with pytest.raises(StorageUnavailable) as storing:
            await store.put_file(tmp_path / "a")
        with pytest.raises(StorageUnavailable):
            await store.local_path(sha(b"something stored before"))

    assert "NoSuchBucket" in storing.value.message


async def test_a_store_down_at_start_says_where_it_looked(tmp_path: Path, refs: References) -> None:
    server = MotoServer().start()
    server.stop()  # nothing listens there any more
    with pytest.raises(StorageUnavailable) as stopped:
        async with open_store(server, tmp_path / "c", refs, "p"):
            pass
    assert server.url in stopped.value.message
    assert "AWS_ENDPOINT_URL" in stopped.value.message


# -- choosing the store from settings ---------------------------------------------------------


async def test_r2v_blob_url_chooses_the_store(
    moto: MotoServer, tmp_path: Path, refs: References, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_bucket = moto.settings(tmp_path / "data", f"s3://{BUCKET}/from-settings")
    async with open_blob_store(in_bucket, refs) as store:
        assert isinstance(store, S3BlobStore)
        assert store.location == S3Location(BUCKET, "from-settings")
        assert store.cache.files.root == tmp_path / "data" / "blob-cache"

    folder = tmp_path / "elsewhere"
    as_files = moto.settings(tmp_path / "data", f"file://{folder}")
    async with open_blob_store(as_files, refs) as files:
        assert isinstance(files, FileBlobStore) and files.root == folder

    monkeypatch.chdir(tmp_path)
    relative = moto.settings(tmp_path / "data", "file://kept/blobs")
    async with open_blob_store(relative, refs) as files:
        assert isinstance(files, FileBlobStore) and files.root == tmp_path / "kept" / "blobs"

    default = moto.settings(tmp_path / "data", "")
    async with open_blob_store(default, refs) as files:
        assert isinstance(files, FileBlobStore) and files.root == tmp_path / "data" / "blobs"


@pytest.mark.parametrize("url", ["s3://", "s3://UPPER/x", "s3://a/x"])
async def test_a_malformed_bucket_url_is_refused_with_what_is_accepted(
    moto: MotoServer, tmp_path: Path, refs: References, url: str
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        async with open_blob_store(moto.settings(tmp_path, url), refs):
            pass
    assert "R2V_BLOB_URL" in refused.value.message
    assert "s3://bucket/prefix" in refused.value.message


@pytest.mark.parametrize("url", ["http://x/y", "file:relative", "s3:/bucket"])
def test_settings_refuse_a_blob_url_of_another_kind(moto: MotoServer, url: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        moto.settings(Path("/tmp"), url)
    assert "R2V_BLOB_URL" in refused.value.message


async def test_doctor_checks_the_bucket(moto: MotoServer, tmp_path: Path) -> None:
    good = await _blob_check(moto.settings(tmp_path, f"s3://{BUCKET}/doctor"))
    missing = await _blob_check(moto.settings(tmp_path, "s3://not-made-yet/doctor"))

    assert good.ok and "written, read and removed" in good.text
    assert not missing.ok and "'not-made-yet' does not exist" in missing.text
    assert keys_in_bucket(moto, "doctor") == []  # the test object is gone again


# -- the port, on both stores -----------------------------------------------------------------


@pytest.fixture(params=["files", "s3"])
async def any_store(
    request: pytest.FixtureRequest, tmp_path: Path, refs: References, prefix: str
) -> AsyncIterator[BlobStore]:
    if request.param == "files":
        yield FileBlobStore(tmp_path / "blobs", refs)
        return
    moto: MotoServer = request.getfixturevalue("moto")
    async with open_store(moto, tmp_path / "cache", refs, prefix) as opened:
        yield opened


async def test_port_a_blob_streams_in_and_reads_back(any_store: BlobStore) -> None:
    async with any_store.writer(max_bytes=10 * MiB) as writer:
        for i in range(20):
            await writer.write(bytes([i]) * 100_000)
        name_inside_block = writer.sha256

    assert name_inside_block is None  # not a blob until the block ends
    data = b"".join(bytes([i]) * 100_000 for i in range(20))
    assert writer.sha256 == sha(data) and writer.size == len(data)
    assert (await any_store.local_path(writer.sha256)).read_bytes() == data


async def test_port_a_writer_refuses_the_byte_past_its_limit(any_store: BlobStore) -> None:
    from storage.blobs import BlobTooLarge

    with pytest.raises(BlobTooLarge):
        async with any_store.writer(max_bytes=1000) as writer:
            await writer.write(b"x" * 1001)
    assert writer.sha256 is None
    with pytest.raises(FileNotFoundError):
        (await any_store.local_path(sha(b"x" * 1001))).read_bytes()


async def test_port_a_failure_inside_the_writer_leaves_no_blob(any_store: BlobStore) -> None:
    with pytest.raises(ConnectionError):
        async with any_store.writer(max_bytes=1000) as writer:
            await writer.write(b"half a video")
            raise ConnectionError("download cut off")  # the caller's fault, passed on as it is
    with pytest.raises(FileNotFoundError):
        (await any_store.local_path(sha(b"half a video"))).read_bytes()


async def test_port_discard_keeps_what_is_referenced(
    any_store: BlobStore, refs: References, tmp_path: Path
) -> None:
    (tmp_path / "k").write_bytes(b"kept")
    (tmp_path / "d").write_bytes(b"dropped")
    kept, dropped = (
        await any_store.put_file(tmp_path / "k"),
        await any_store.put_file(tmp_path / "d"),
    )
    refs.used.add(kept)

    await any_store.discard_unused([kept, dropped])

    assert (await any_store.local_path(kept)).read_bytes() == b"kept"
    with pytest.raises(FileNotFoundError):
        (await any_store.local_path(dropped)).read_bytes()


async def test_port_same_content_gets_one_name_and_the_source_stays(
    any_store: BlobStore, tmp_path: Path
) -> None:
    data = os.urandom(200_000)
    (tmp_path / "a").write_bytes(data)
    (tmp_path / "b").write_bytes(data)

    one = await any_store.put_file(tmp_path / "a")
    async with any_store.writer(max_bytes=len(data)) as writer:
        await writer.write(data)
    two = await any_store.put_file(tmp_path / "b")

    assert one == writer.sha256 == two == sha(data)
    assert (tmp_path / "a").read_bytes() == data
    assert (await any_store.local_path(one)).read_bytes() == data
