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
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

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
        self._secret = secret
        self.public_url = public_url.rstrip("/") if public_url else None
        self._ttl = ttl_seconds
        self._clock = clock
        self._presign = presign

    def token(self, blob: str, mime: str) -> str:
        if not _BLOB.fullmatch(blob) or not _MIME.fullmatch(mime):
            raise ValueError("a media link names a blob (sha256 hex) and a content type")
        expires = int(self._clock()) + self._ttl
        payload = f"{blob}:{mime}:{expires}".encode("ascii")
        signature = hmac.new(self._secret, payload, hashlib.sha256).digest()
        return f"{_b64(payload)}.{_b64(signature)}"

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
        encoded, _, signature = token.partition(".")
        try:
            payload = _unb64(encoded)
            given = _unb64(signature)
        except (ValueError, UnicodeError):
            return None
        expected = hmac.new(self._secret, payload, hashlib.sha256).digest()
        if not hmac.compare_digest(given, expected):
            return None
        try:
            blob, mime, expires = payload.decode("ascii").split(":")
            if int(expires) < self._clock():
                return None
        except ValueError:
            return None
        return blob, mime


def media_route(links: MediaLinks, local_path: Callable[[str], Awaitable[Path]]) -> web.RouteDef:
    """``GET /media/{token}``: the blob's exact bytes with its type, length and Range support.

    ``local_path`` is the blob store's: the blob itself for local files, the cached copy (fetched
    first when missing) for an object store. A store that is down answers 503 with a retry hint.
    """

    async def serve(request: web.Request) -> web.StreamResponse:
        named = links.check(request.match_info["token"])
        if named is None:
            raise web.HTTPNotFound()
        blob, mime = named
        try:
            path = await local_path(blob)
        except FileNotFoundError:
            raise web.HTTPNotFound() from None
        except StorageUnavailable as exc:
            raise web.HTTPServiceUnavailable(
                text=exc.message, headers={"Retry-After": "30"}
            ) from None
        if not await asyncio.to_thread(path.is_file):
            raise web.HTTPNotFound()
        return web.FileResponse(
            path, headers={"Content-Type": mime, "Cache-Control": "private, max-age=300"}
        )

    return web.get("/media/{token}", serve)
