"""Signed, expiring links to our blobs (``GET /media/{token}``) for providers that fetch by URL.

A token names one blob and its content type until a moment, signed with HMAC-SHA256 under a
secret kept in the data folder. Altered or expired tokens answer 404, exactly like a blob that
does not exist, so a link says nothing to anyone who guesses at it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

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
    answers ``None``), and providers that fetch by URL refuse jobs and say why.
    """

    def __init__(
        self,
        secret: bytes,
        public_url: str | None,
        *,
        ttl_seconds: int = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self.public_url = public_url.rstrip("/") if public_url else None
        self._ttl = ttl_seconds
        self._clock = clock

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
        if not _BLOB.fullmatch(blob) or not _MIME.fullmatch(mime):
            return None  # signed with our secret, yet not a name we make: a 404 all the same
        return blob, mime


def media_route(links: MediaLinks, blob_path: Callable[[str], Path]) -> web.RouteDef:
    """``GET /media/{token}``: the blob's exact bytes with its type, length and Range support."""

    async def serve(request: web.Request) -> web.StreamResponse:
        named = links.check(request.match_info["token"])
        if named is None:
            raise web.HTTPNotFound()
        blob, mime = named
        path = blob_path(blob)
        if not await asyncio.to_thread(path.is_file):
            raise web.HTTPNotFound()
        response = web.FileResponse(
            path, headers={"Content-Type": mime, "Cache-Control": "private, max-age=300"}
        )
        return await prepared_for_ranges(response, request)

    return web.get("/media/{token}", serve)


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
