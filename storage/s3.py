"""Blobs in an S3-compatible object store (AWS S3, MinIO, Cloudflare R2, …), for several instances.

The same content-addressed names as local files (``prefix/ab/cdef…``, the sha256 of the bytes), so
identical content is stored once whichever instance saved it. Nothing is ever read whole into
memory: new blobs are streamed to a local file while they are hashed, then uploaded from it (in
5 MiB parts past that size); blobs are fetched in chunks into ``BlobCache``, the bounded local
copy that media work reads. Providers that fetch references by URL get presigned GET links
straight from the store.

Faults: a missing bucket or keys the store refuses are set-up mistakes, found when the store is
opened (``ConfigurationError`` naming the bucket or the variables). A store that cannot be
reached or answers with a server error is transient: ``StorageUnavailable``, and the job engine
retries later.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from bot.errors import ConfigurationError, StorageUnavailable
from storage.blob_cache import BlobCache
from storage.blobs import CHUNK_BYTES, FileBlobWriter

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

#: Blobs up to this size go up in one request; larger ones in parts of this size, S3's smallest
#: (10,000 parts make 48 GiB, far past any result). One part is in memory at a time, and the
#: socket's send buffer may briefly hold a second copy of it.
PART_BYTES = 5 * 1024 * 1024
#: The longest a presigned link may last (SigV4's limit: seven days).
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
#: What a fetch into the cache accepts: blobs were size-checked when they were stored.
_ANY_SIZE = 1 << 62
_BLOB_NAME = re.compile(r"[0-9a-f]{64}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
#: A missing object (HEAD answers a bare 404). A bucket gone while running is a fault instead.
_NO_OBJECT = {"404", "NoSuchKey", "NotFound"}
_NO_BUCKET = {"404", "NoSuchBucket"}
_REFUSED = {
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
}


@dataclass(frozen=True, slots=True)
class S3Location:
    """Where blobs live: a bucket, and a key prefix inside it (may be empty)."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """``s3://bucket/optional/prefix``, or ``ConfigurationError`` saying what is accepted."""
        rest = url.removeprefix("s3://")
        bucket, _, prefix = rest.partition("/")
        if not url.startswith("s3://") or not _BUCKET.fullmatch(bucket):
            raise ConfigurationError(
                f"R2V_BLOB_URL={url!r} is not accepted: expected s3://bucket/prefix with a "
                "bucket name of 3–63 lowercase letters, digits, dots and hyphens."
            )
        return cls(bucket, prefix.strip("/"))

    def key(self, blob: str) -> str:
        if not _BLOB_NAME.fullmatch(blob):
            raise ValueError(f"not a blob name (64 lowercase hex digits): {blob!r}")
        name = f"{blob[:2]}/{blob[2:]}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


@dataclass(frozen=True, slots=True)
class S3Access:
    """How to reach the store. Unset keys and region fall back to botocore's usual chain
    (environment, ``~/.aws``, instance roles)."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    #: Attempts per request, botocore's "standard" retries with backoff between them.
    max_attempts: int = 3
    connect_timeout: float = 5.0
    read_timeout: float = 60.0

    @property
    def where(self) -> str:
        return self.endpoint_url or "AWS S3"

    def config(self) -> AioConfig:
        # Stores other than AWS are usually reached by address (no bucket subdomains), and some
        # refuse the checksum trailers newer botocore sends unasked.
        custom = self.endpoint_url is not None
        return AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path" if custom else "auto"},
            retries={"max_attempts": self.max_attempts, "mode": "standard"},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            request_checksum_calculation="when_required" if custom else "when_supported",
            response_checksum_validation="when_required" if custom else "when_supported",
        )


@dataclass(frozen=True, slots=True)
class BlobRange:
    """A blob's bytes, or a range of them, as the store answers a GET: the HTTP status (200,
    206, or 416 for a range past the end), how many bytes follow, and for 206 and 416 the
    ``Content-Range`` to answer with."""

    status: int
    length: int
    content_range: str | None
    chunks: AsyncIterator[bytes]


async def _no_chunks() -> AsyncIterator[bytes]:
    empty: tuple[bytes, ...] = ()
    for chunk in empty:
        yield chunk


class KeyedLock:
    """One ``asyncio.Lock`` per name, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def __call__(self, name: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(name, (asyncio.Lock(), 0))
        self._locks[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[name]
            if users == 1:
                del self._locks[name]
            else:
                self._locks[name] = (lock, users - 1)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class BlobTrash(Protocol):
    """Deferred removal, ordered by the database (``storage.blob_trash``)."""

    async def discard(self, blobs: Sequence[str]) -> None: ...

    async def rescue(self, blob: str) -> None: ...

    def sweeping(
        self, grace_seconds: float, limit: int = ...
    ) -> AbstractAsyncContextManager[list[str]]: ...


#: How long an unused blob waits in the trash before it is removed from the bucket.
TRASH_GRACE_SECONDS = 600.0
#: How often each instance sweeps the trash.
SWEEP_EVERY_SECONDS = 300.0


class S3BlobStore:
    """The ``BlobStore`` port on an S3 bucket; open it with ``S3BlobStore.open``.

    A lock per blob name covers storing a blob and each check-then-remove of ``discard_unused``
    in this process, as ``FileBlobStore``'s lock does. Across instances (given ``trash``) unused
    blobs are not deleted at once but put in the database's trash and removed by a later sweep,
    so a blob one instance stores again while another finds it unused is never lost.
    """

    def __init__(
        self,
        client: S3Client,
        location: S3Location,
        access: S3Access,
        cache: BlobCache,
        is_referenced: Callable[[str], Awaitable[bool]],
        trash: BlobTrash | None = None,
    ) -> None:
        self._client = client
        self._trash = trash
        self.location = location
        self._access = access
        self.cache = cache
        self._is_referenced = is_referenced
        self._locks = KeyedLock()
        self._fetches: dict[str, asyncio.Task[Path]] = {}

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        location: S3Location,
        access: S3Access,
        cache: BlobCache,
        is_referenced: Callable[[str], Awaitable[bool]],
        trash: BlobTrash | None = None,
    ) -> AsyncIterator[S3BlobStore]:
        """Connect, check that the bucket is there and takes our keys, and close at the end.

        With ``trash``, a background task sweeps it every ``SWEEP_EVERY_SECONDS``."""
        session = get_session()
        async with session.create_client(
            "s3",
            endpoint_url=access.endpoint_url,
            region_name=access.region,
            aws_access_key_id=access.access_key_id,
            aws_secret_access_key=access.secret_access_key,
            aws_session_token=access.session_token,
            config=access.config(),
        ) as client:
            store = cls(client, location, access, cache, is_referenced, trash)
            await store.check_bucket()
            await cache.start()
            sweeper = asyncio.create_task(store._keep_sweeping()) if trash is not None else None
            try:
                yield store
            finally:
                if sweeper is not None:
                    sweeper.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sweeper
                await store._stop_fetches()

    async def check_bucket(self) -> None:
        """``ConfigurationError`` for a missing bucket or refused keys; ``StorageUnavailable``
        when the store cannot be reached."""
        bucket = self.location.bucket
        try:
            await self._client.head_bucket(Bucket=bucket)
        except NoCredentialsError:
            raise ConfigurationError(
                f"No keys for the object store {self.location}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY."
            ) from None
        except ClientError as exc:
            code = _error_code(exc)
            if code in _NO_BUCKET:
                raise ConfigurationError(
                    f"The bucket {bucket!r} does not exist at {self._access.where}: create it, "
                    "or set R2V_BLOB_URL to a bucket that does."
                ) from None
            if code in _REFUSED:
                raise ConfigurationError(
                    f"{self._access.where} refuses these keys for the bucket {bucket!r}: check "
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and that they may read and "
                    "write the bucket."
                ) from None
            raise StorageUnavailable(self._unreachable(exc)) from exc
        except (BotoCoreError, TimeoutError) as exc:
            raise StorageUnavailable(self._unreachable(exc)) from exc

    async def probe(self) -> None:
        """Write, read back and remove a small object: proof the keys may do all three
        (``r2v doctor``)."""
        key = f"{self.location.prefix}/.r2v-doctor" if self.location.prefix else ".r2v-doctor"
        bucket, body = self.location.bucket, b"r2v doctor"
        async with self._faults("writing a test object"):
            await self._client.put_object(Bucket=bucket, Key=key, Body=body)
            answer = await self._client.get_object(Bucket=bucket, Key=key)
            async with answer["Body"] as stream:
                read = await stream.read()
            await self._client.delete_object(Bucket=bucket, Key=key)
        if read != body:
            raise StorageUnavailable(f"{self.location} answered other bytes than were written.")

    # -- the BlobStore port ---------------------------------------------------------------------

    async def local_path(self, blob: str) -> Path:
        """The cached copy, fetched in chunks when missing (one fetch per blob at a time);
        ``FileNotFoundError`` when the bucket has no such blob."""
        self.location.key(blob)  # a blob name, never a path
        cached = await self.cache.get(blob)
        if cached is not None:
            return cached
        fetch = self._fetches.get(blob)
        if fetch is None:
            fetch = asyncio.create_task(self._fetch(blob))
            self._fetches[blob] = fetch
            fetch.add_done_callback(self._fetched)
        # Shielded: one caller giving up does not cancel the fetch others wait for.
        return await asyncio.shield(fetch)

    def _fetched(self, fetch: asyncio.Task[Path]) -> None:
        for blob, running in list(self._fetches.items()):
            if running is fetch:
                del self._fetches[blob]
        if not fetch.cancelled():
            fetch.exception()  # seen here too, in case every caller gave up waiting

    async def put_file(self, source: Path) -> str:
        """Copy into the cache while hashing, then upload; the source is left as it was."""
        blob = await self.cache.put_file(source)
        await self._upload(blob)
        return blob

    @asynccontextmanager
    async def writer(self, max_bytes: int) -> AsyncIterator[FileBlobWriter]:
        """Stream into the cache while hashing (a full or read-only cache disk is the file
        store's ``StorageUnavailable``), then upload; the blob exists (and the writer's
        ``sha256`` is set) once the block exits cleanly."""
        async with self.cache.writer(max_bytes) as writer:
            yield writer
        assert writer.sha256 is not None
        await self._upload(writer.sha256)

    async def discard_unused(self, blobs: Sequence[str]) -> None:
        """Remove those of the blobs that nothing refers to any more. Callers remove their
        references first, then call this. With a trash the removal waits for a sweep."""
        unused = []
        for blob in dict.fromkeys(blobs):
            async with self._locks(blob):
                if await self._is_referenced(blob):
                    continue
                if self._trash is None:
                    await self._remove(blob)
                else:
                    unused.append(blob)
        if self._trash is not None:
            await self._trash.discard(unused)

    async def sweep(self, grace_seconds: float = TRASH_GRACE_SECONDS) -> int:
        """Remove from the bucket (and the cache) the trash's blobs that have waited out
        ``grace_seconds`` unused; answer how many. Several instances may sweep at once."""
        if self._trash is None:
            return 0
        async with self._trash.sweeping(grace_seconds) as doomed:
            for blob in doomed:
                await self._remove(blob)
        return len(doomed)

    async def _keep_sweeping(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_SECONDS)
            try:
                while await self.sweep():
                    pass
            except Exception as exc:
                log.warning("could not sweep the blob trash, will retry: %s", exc)

    async def _remove(self, blob: str) -> None:
        async with self._faults("removing a blob"):
            await self._client.delete_object(
                Bucket=self.location.bucket, Key=self.location.key(blob)
            )
        await self.cache.remove(blob)

    async def cached_path(self, blob: str) -> Path | None:
        """The cached copy when this instance has one (nothing is fetched)."""
        self.location.key(blob)
        return await self.cache.get(blob)

    @asynccontextmanager
    async def open_range(
        self, blob: str, byte_range: str | None, *, head: bool = False
    ) -> AsyncIterator[BlobRange]:
        """Stream the blob, or the part an HTTP ``Range`` header asks for, straight from the
        store without a local copy (the ``/media`` route on an instance that has none);
        ``head``: its length alone. ``FileNotFoundError`` when the bucket has no such blob."""
        bucket, key = self.location.bucket, self.location.key(blob)
        async with self._faults("reading a blob"):
            try:
                if head:
                    about = await self._client.head_object(Bucket=bucket, Key=key)
                    yield BlobRange(200, about["ContentLength"], None, _no_chunks())
                    return
                if byte_range:
                    answer = await self._client.get_object(Bucket=bucket, Key=key, Range=byte_range)
                else:
                    answer = await self._client.get_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                code = _error_code(exc)
                if code in _NO_OBJECT:
                    raise FileNotFoundError(f"no blob {blob} in {self.location}") from None
                if code != "InvalidRange":
                    raise
                size = (await self._client.head_object(Bucket=bucket, Key=key))["ContentLength"]
                yield BlobRange(416, 0, f"bytes */{size}", _no_chunks())
                return
            status = answer["ResponseMetadata"]["HTTPStatusCode"]
            async with answer["Body"] as body:
                yield BlobRange(
                    status,
                    answer["ContentLength"],
                    answer.get("ContentRange") if status == 206 else None,
                    body.iter_chunks(CHUNK_BYTES),
                )

    async def presigned_url(
        self, blob: str, ttl_seconds: int, content_type: str | None = None
    ) -> str:
        """A GET link to the blob that works without our keys until ``ttl_seconds`` from now
        (at most seven days), answering ``content_type`` when given."""
        params: dict[str, Any] = {"Bucket": self.location.bucket, "Key": self.location.key(blob)}
        if content_type:
            params["ResponseContentType"] = content_type
        async with self._faults("signing a link"):
            return await self._client.generate_presigned_url(
                "get_object",
                Params=params,
                ExpiresIn=max(1, min(ttl_seconds, MAX_PRESIGN_SECONDS)),
            )

    # -- mechanics ------------------------------------------------------------------------------

    async def _exists(self, blob: str) -> bool:
        try:
            await self._client.head_object(Bucket=self.location.bucket, Key=self.location.key(blob))
        except ClientError as exc:
            if _error_code(exc) in _NO_OBJECT:
                return False
            raise
        return True

    async def _upload(self, blob: str) -> None:
        """Put the cached file of ``blob`` in the bucket, unless the bucket has it already."""
        path = self.cache.path(blob)
        size = (await asyncio.to_thread(path.stat)).st_size
        if self._trash is not None:
            # Before looking in the bucket: a sweep removing this blob finishes first (the
            # upload below then puts it back), or never takes it.
            await self._trash.rescue(blob)
        async with self._locks(blob), self._faults("storing a blob"):
            if await self._exists(blob):
                await self.cache.added(size)
                return
            if size <= PART_BYTES:
                body = await asyncio.to_thread(path.read_bytes)
                # The blob's name is its sha256: the store checks the bytes it receives.
                checksum = base64.b64encode(bytes.fromhex(blob)).decode("ascii")
                await self._client.put_object(
                    Bucket=self.location.bucket,
                    Key=self.location.key(blob),
                    Body=body,
                    ChecksumSHA256=checksum,
                )
            else:
                await self._upload_parts(path, self.location.key(blob), size)
        await self.cache.added(size)

    async def _upload_parts(self, path: Path, key: str, size: int) -> None:
        """A multipart upload, one ``PART_BYTES`` part in memory at a time; aborted on failure
        so the store keeps no orphaned parts."""
        bucket = self.location.bucket
        started = await self._client.create_multipart_upload(Bucket=bucket, Key=key)
        upload_id = started["UploadId"]
        try:
            parts: list[CompletedPartTypeDef] = []
            for number, offset in enumerate(range(0, size, PART_BYTES), start=1):
                data = await asyncio.to_thread(_read_part, path, offset, PART_BYTES)
                answer = await self._client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
                )
                del data
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
            await self._client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                )
            raise

    async def _fetch(self, blob: str) -> Path:
        """Stream the blob into the cache; its bytes must hash to its name."""
        async with self._faults("fetching a blob"):
            try:
                answer = await self._client.get_object(
                    Bucket=self.location.bucket, Key=self.location.key(blob)
                )
            except ClientError as exc:
                if _error_code(exc) in _NO_OBJECT:
                    raise FileNotFoundError(f"no blob {blob} in {self.location}") from None
                raise
            async with self.cache.writer(_ANY_SIZE) as writer, answer["Body"] as body:
                async for chunk in body.iter_chunks(CHUNK_BYTES):
                    await writer.write(chunk)
        if writer.sha256 != blob:
            assert writer.sha256 is not None
            await self.cache.remove(writer.sha256)
            raise StorageUnavailable(
                f"{self.location} answered bytes for blob {blob} that do not match its name; "
                "it will be fetched again."
            )
        await self.cache.added(writer.size)
        return self.cache.path(blob)

    async def _stop_fetches(self) -> None:
        fetches = list(self._fetches.values())
        for fetch in fetches:
            fetch.cancel()
        await asyncio.gather(*fetches, return_exceptions=True)

    @asynccontextmanager
    async def _faults(self, doing: str) -> AsyncIterator[None]:
        """Turn the store's failures into ``StorageUnavailable`` with a sentence: the store is
        down, overloaded or refuses us for now, and the job engine retries. A missing object
        (``ClientError`` 404) is left for the caller to decide."""
        try:
            yield
        except ClientError as exc:
            if _error_code(exc) in _NO_OBJECT:
                raise
            raise StorageUnavailable(self._unavailable(doing, exc)) from exc
        except (BotoCoreError, TimeoutError) as exc:
            raise StorageUnavailable(self._unavailable(doing, exc)) from exc

    def _unavailable(self, doing: str, exc: Exception) -> str:
        return (
            f"The object store {self.location} at {self._access.where} cannot be used right "
            f"now ({doing}: {exc}); jobs keep their state and retry."
        )

    def _unreachable(self, exc: Exception) -> str:
        return (
            f"The object store {self.location} at {self._access.where} cannot be used ({exc}): "
            "start again once it answers, or check AWS_ENDPOINT_URL if the address is wrong."
        )


def _read_part(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as file:
        file.seek(offset)
        return file.read(size)
