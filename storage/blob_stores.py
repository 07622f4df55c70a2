"""Which blob store ``R2V_BLOB_URL`` names, opened: the composition root's one call for blobs.

Unset: files in the data folder (the embedded default, no service needed). ``file:///path`` (or
``file://relative/path``, from the working folder): files in that folder. ``s3://bucket/prefix``:
an S3-compatible object store, reached with the usual ``AWS_*`` variables (``AWS_ENDPOINT_URL``
for a store that is not AWS), with a bounded local cache in the data folder for media work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import unquote

from bot.errors import ConfigurationError
from bot.settings import Settings
from storage.blob_cache import BlobCache
from storage.blobs import FileBlobStore
from storage.s3 import BlobTrash, S3Access, S3BlobStore, S3Location


def blob_folder(settings: Settings) -> Path | None:
    """The folder of a local-files store, or ``None`` when ``R2V_BLOB_URL`` names an object
    store."""
    url = settings.blob_url
    if not url:
        return settings.blob_dir
    if url.startswith("s3://"):
        return None
    folder = unquote(url.removeprefix("file://"))
    if not url.startswith("file://") or not folder:
        raise ConfigurationError(
            f"R2V_BLOB_URL={url!r} is not accepted: expected file:///absolute/folder, "
            "file://relative/folder or s3://bucket/prefix."
        )
    return Path(folder).expanduser().absolute()


def s3_access(settings: Settings) -> S3Access:
    """The store's address and keys from the ``AWS_*`` settings."""
    secret = settings.aws_secret_access_key
    token = settings.aws_session_token
    return S3Access(
        endpoint_url=settings.aws_endpoint_url,
        region=settings.aws_region,
        access_key_id=settings.aws_access_key_id,
        secret_access_key=secret.get_secret_value() if secret else None,
        session_token=token.get_secret_value() if token else None,
    )


@asynccontextmanager
async def open_blob_store(
    settings: Settings,
    is_referenced: Callable[[str], Awaitable[bool]],
    trash: BlobTrash | None = None,
) -> AsyncIterator[FileBlobStore | S3BlobStore]:
    """The blob store the settings name, ready; closed when the block ends.

    ``ConfigurationError`` for a malformed URL, a missing bucket or keys the store refuses;
    ``StorageUnavailable`` when the store cannot be reached."""
    folder = blob_folder(settings)
    if folder is not None:
        files = FileBlobStore(folder, is_referenced)
        await files.cleanup_tmp(older_than=3600)
        yield files
        return
    assert settings.blob_url is not None
    location = S3Location.parse(settings.blob_url)
    cache = BlobCache(settings.data_dir / "blob-cache", settings.blob_cache_bytes)
    async with S3BlobStore.open(
        location, s3_access(settings), cache, is_referenced, trash
    ) as store:
        yield store
