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

from aiohttp import web

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
        self.signer = Signer(secret)
        self.public_url = public_url.rstrip("/") if public_url else None
        self._ttl = ttl_seconds
        self._clock = clock

    def token(self, blob: str, mime: str) -> str:
        if not _BLOB.fullmatch(blob) or not _MIME.fullmatch(mime):
            raise ValueError("a media link names a blob (sha256 hex) and a content type")
        expires = int(self._clock()) + self._ttl
        return self.signer.sign(f"{blob}:{mime}:{expires}".encode("ascii"))

    def url_for(self, blob: str, mime: str) -> str | None:
        if self.public_url is None:
            return None
        return f"{self.public_url}/media/{self.token(blob, mime)}"

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
        return web.FileResponse(
            path, headers={"Content-Type": mime, "Cache-Control": "private, max-age=300"}
        )

    return web.get("/media/{token}", serve)
