"""Signed, expiring links to our blobs (``GET /media/{token}``) for providers that fetch by URL.

A token names one blob and its content type until a moment, signed with HMAC-SHA256 under a
secret kept in the data folder. Altered or expired tokens answer 404, exactly like a blob that
does not exist, so a link says nothing to anyone who guesses at it.

When blobs live in an object store, providers are handed the store's own presigned links instead
(``fetch_url``): the bytes then go from the store to the provider without passing through us.
The ``/media`` route still serves every blob (links in chat last longer than a presigned one may).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol

from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

from bot.errors import StorageUnavailable

#: Makes a link straight to a blob in an object store: (blob, seconds valid, content type).
Presign = Callable[[str, int, str], Awaitable[str]]

_BLOB = re.compile(r"[0-9a-f]{64}")
_MIME = re.compile(r"[a-z]+/[a-z0-9.+-]+")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Decode unpadded URL-safe base64, refusing every spelling but the one ``_b64`` writes.

    The decoder alone is lenient: it skips characters outside the alphabet, takes ``+`` and ``/``
    too, and ignores the spare low bits of the last character, so one token would have many
    spellings, each of them accepted.
    """
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not a canonical URL-safe base64 text")
    return data


class Signer:
    """HMAC-SHA256 tokens: ``<payload>.<signature>``, both unpadded URL-safe base64.

    ``derive`` answers a signer under a key of its own for another purpose (the gallery's links),
    so a token made for one purpose is never accepted for another, whatever its payload says.
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def derive(self, purpose: str) -> Signer:
        return Signer(hmac.new(self._secret, purpose.encode("utf-8"), hashlib.sha256).digest())

    def sign(self, payload: bytes) -> str:
        signature = hmac.new(self._secret, payload, hashlib.sha256).digest()
        return f"{_b64(payload)}.{_b64(signature)}"

    def verify(self, token: str) -> bytes | None:
        """The payload a token carries, or ``None`` when it was not made by this signer."""
        encoded, _, signature = token.partition(".")
        try:
            payload = _unb64(encoded)
            given = _unb64(signature)
        except (ValueError, UnicodeError):
            return None
        expected = hmac.new(self._secret, payload, hashlib.sha256).digest()
        return payload if hmac.compare_digest(given, expected) else None


class MediaLinks:
    """Makes and checks signed ``/media`` links.

    ``public_url`` is where providers reach us; without it no link can be made (``url_for``
    answers ``None``), and providers that fetch by URL refuse jobs and say why. ``presign``,
    given when blobs live in an object store, makes the links ``fetch_url`` hands providers.
    """

    def __init__(
        self,
        secret: bytes,
        public_url: str | None,
        *,
        ttl_seconds: int = 3600,
        clock: Callable[[], float] = time.time,
        presign: Presign | None = None,
    ) -> None:
        self.signer = Signer(secret)
        self.public_url = public_url.rstrip("/") if public_url else None
        self._ttl = ttl_seconds
        self._clock = clock
        self._presign = presign

    def token(self, blob: str, mime: str) -> str:
        if not _BLOB.fullmatch(blob) or not _MIME.fullmatch(mime):
            raise ValueError("a media link names a blob (sha256 hex) and a content type")
        expires = int(self._clock()) + self._ttl
        return self.signer.sign(f"{blob}:{mime}:{expires}".encode("ascii"))

    def url_for(self, blob: str, mime: str) -> str | None:
        if self.public_url is None:
            return None
        return f"{self.public_url}/media/{self.token(blob, mime)}"

    async def fetch_url(self, blob: str, mime: str) -> str | None:
        """The link a provider fetches a reference from: the object store's presigned link
        when there is one, else our signed ``/media`` link (``None`` without a public URL)."""
        if self._presign is not None:
            return await self._presign(blob, self._ttl, mime)
        return self.url_for(blob, mime)

    def check(self, token: str) -> tuple[str, str] | None:
        """The blob and content type a token names, or ``None`` if altered or expired."""
        payload = self.signer.verify(token)
        if payload is None:
            return None
        try:
            blob, mime, expires = payload.decode("ascii").split(":")
            if int(expires) < self._clock():
                return None
        except ValueError:
            return None
        if not _BLOB.fullmatch(blob) or not _MIME.fullmatch(mime):
            return None  # signed with our secret, yet not a name we make: a 404 all the same
        return blob, mime


class StreamedBlob(Protocol):
    """A blob's bytes (or a range of them) as an object store answers them."""

    @property
    def status(self) -> int: ...

    @property
    def length(self) -> int: ...

    @property
    def content_range(self) -> str | None: ...

    @property
    def chunks(self) -> AsyncIterator[bytes]: ...


class RemoteBlobs(Protocol):
    """An object store as the ``/media`` route reads it: its local copy when this instance has
    one, else the bytes straight from the store (HTTP Range passed through)."""

    async def cached_path(self, blob: str) -> Path | None: ...

    def open_range(
        self, blob: str, byte_range: str | None, *, head: bool = False
    ) -> AbstractAsyncContextManager[StreamedBlob]: ...


def media_route(
    links: MediaLinks,
    local_path: Callable[[str], Awaitable[Path]],
    remote: RemoteBlobs | None = None,
) -> web.RouteDef:
    """``GET /media/{token}``: the blob's exact bytes with its type, length and Range support.

    ``local_path`` is the blob store's. With ``remote`` (an object store), a blob this instance
    has no copy of is streamed from the store as it comes, so the first byte does not wait for
    the whole file and serving a link fills no disk. A store that is down answers 503.
    """

    async def serve(request: web.Request) -> web.StreamResponse:
        named = links.check(request.match_info["token"])
        if named is None:
            raise web.HTTPNotFound()
        blob, mime = named
        headers = {"Content-Type": mime, "Cache-Control": "private, max-age=300"}
        return await serve_blob(request, blob, headers, local_path, remote)

    return web.get("/media/{token}", serve)


async def serve_blob(
    request: web.Request,
    blob: str,
    headers: dict[str, str],
    local_path: Callable[[str], Awaitable[Path]],
    remote: RemoteBlobs | None = None,
) -> web.StreamResponse:
    """A blob's bytes with ``headers`` and Range support: this instance's copy, else (an
    object store) streamed from the store as it comes. 404 when gone, 503 when the store is
    down."""
    try:
        if remote is not None:
            path = await remote.cached_path(blob)
            if path is None:
                return await _stream(request, remote, blob, headers)
        else:
            path = await local_path(blob)
    except FileNotFoundError:
        raise web.HTTPNotFound() from None
    except StorageUnavailable as exc:
        raise web.HTTPServiceUnavailable(text=exc.message, headers={"Retry-After": "30"}) from None
    if not await asyncio.to_thread(path.is_file):
        raise web.HTTPNotFound()
    return await prepared_for_ranges(web.FileResponse(path, headers=headers), request)


async def _stream(
    request: web.Request, remote: RemoteBlobs, blob: str, headers: dict[str, str]
) -> web.StreamResponse:
    """The store's answer passed on: status, length and range as it gave them, then the bytes
    a chunk at a time. A fault once bytes have gone out cuts the response short (its length
    then tells the client)."""
    head = request.method == "HEAD"
    wanted = request.headers.get(hdrs.RANGE)
    byte_range = wanted if usable_range(wanted) else None  # others are ignored (RFC 9110)
    async with remote.open_range(blob, byte_range, head=head) as answer:
        response = web.StreamResponse(status=answer.status, headers=headers)
        response.content_length = answer.length
        response.headers["Accept-Ranges"] = "bytes"
        if answer.content_range:
            response.headers["Content-Range"] = answer.content_range
        await response.prepare(request)
        async for chunk in answer.chunks:
            await response.write(chunk)
        await response.write_eof()
        return response


# -- Range (RFC 9110 §14) ---------------------------------------------------------------------

#: The one Range form served as a part: a single byte range (``bytes=10-99``, ``bytes=10-``,
#: ``bytes=-500``). aiohttp answers anything else 416, where RFC 9110 §14.2 says a Range the
#: server does not support is ignored.
_ONE_BYTE_RANGE = re.compile(r"bytes=[ \t]*(\d+-\d*|-\d+)[ \t]*", re.IGNORECASE)


def usable_range(header: str | None) -> bool:
    """Whether a Range header is one this route serves as a part (206 or 416)."""
    return header is not None and _ONE_BYTE_RANGE.fullmatch(header) is not None


def ignoring_range(request: web.Request) -> web.Request:
    """``request`` as the file response must see it: without a Range it will not serve as a
    part (an unknown unit, several ranges, a malformed value), so the whole body goes out
    with 200. Several ranges could be a ``multipart/byteranges``; a whole body is as correct
    and what every client of this route (providers fetching a reference) wants."""
    header = request.headers.get(hdrs.RANGE)
    if header is None or usable_range(header):
        return request
    headers = CIMultiDict(request.headers)
    del headers[hdrs.RANGE]
    return request.clone(headers=CIMultiDictProxy(headers))


async def prepared_for_ranges(
    response: web.StreamResponse, request: web.Request
) -> web.StreamResponse:
    """``response`` (a file response) under the Range rules above: prepared here, for the
    request without its Range, when that Range is to be ignored; else as it is."""
    plain = ignoring_range(request)
    if plain is not request:
        await response.prepare(plain)
    return response
