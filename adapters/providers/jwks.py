"""Ed25519 webhook keys published as a JWKS, fetched and cached: shared by fal and AtlasCloud.

Both sign their webhooks with Ed25519 and publish the public keys at a URL. A signature is good
when any published key (or the one its key id names) checks it. The key set is fetched on first
need and kept for a while; a signature that no cached key checks makes one fresh fetch, because
the provider may have rotated its keys since, and concurrent fetches are shared.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bot.errors import ProviderError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Ed25519Jwk:
    """One published key: the public key and its ``kid`` (``None`` when the set names none)."""

    key: Ed25519PublicKey
    kid: str | None = None


class JwksCache:
    """A provider's published webhook keys: fetched on first need, kept for ``ttl`` seconds.

    ``owner`` names the provider in messages. ``refresh`` fetches the set again at once (a key
    unknown to us means the provider rotated its keys); concurrent refreshes share one fetch.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        owner: str,
        ttl: float,
        clock: Callable[[], float],
    ) -> None:
        self._client = client
        self.url = url
        self.owner = owner
        self._ttl = ttl
        self._clock = clock
        self._keys: tuple[Ed25519Jwk, ...] = ()
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def keys(self) -> tuple[Ed25519Jwk, ...]:
        fetched = self._fetched_at
        if fetched is not None and self._clock() - fetched < self._ttl:
            return self._keys
        return await self.refresh(since=fetched)

    async def refresh(self, *, since: float | None = None) -> tuple[Ed25519Jwk, ...]:
        """Fetch the key set, unless another caller fetched it after ``since`` meanwhile."""
        async with self._lock:
            if self._fetched_at is not None and self._fetched_at != since:
                return self._keys
            self._keys = await self._fetch()
            self._fetched_at = self._clock()
            return self._keys

    @property
    def fetched_at(self) -> float | None:
        return self._fetched_at

    async def verify(self, signature: bytes, message: bytes, *, kid: str | None = None) -> bool:
        """Whether a published key signed ``message``: the cached keys first, then (when none
        did) the key set fetched once more. Raises ``ProviderError`` when it cannot be read.

        With ``kid``, only keys of that id (or keys without one) are tried, and a key id we
        already hold is not fetched again: a rotated key comes with a new id.
        """
        keys = await self.keys()
        since = self._fetched_at
        if _signed_by_any(keys, signature, message, kid):
            return True
        if kid is not None and any(jwk.kid == kid for jwk in keys):
            return False
        return _signed_by_any(await self.refresh(since=since), signature, message, kid)

    async def _fetch(self) -> tuple[Ed25519Jwk, ...]:
        try:
            # The key set is public: no Authorization header goes to it.
            response = await self._client.get(self.url)
        except httpx.HTTPError as exc:
            raise ProviderError(
                f"{self.owner}'s webhook key set could not be fetched ({type(exc).__name__}).",
                code="provider_unavailable",
                retryable=True,
            ) from exc
        if not response.is_success:
            raise ProviderError(
                f"{self.owner}'s webhook key set answered HTTP {response.status_code}.",
                code="provider_unavailable",
                retryable=True,
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        keys = ed25519_keys(body, owner=self.owner)
        if not keys:
            raise ProviderError(
                f"{self.owner}'s webhook key set holds no Ed25519 key (JWK kty OKP, crv Ed25519).",
                code="provider_error",
                retryable=True,
            )
        return keys


def ed25519_keys(body: object, *, owner: str = "provider") -> tuple[Ed25519Jwk, ...]:
    """The Ed25519 keys of a JWKS document (``{"keys": [...]}``); others are skipped."""
    entries = body.get("keys") if isinstance(body, dict) else None
    keys: list[Ed25519Jwk] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("kty") != "OKP":
            continue
        if entry.get("crv") != "Ed25519" or not isinstance(entry.get("x"), str):
            continue
        kid = entry.get("kid")
        try:
            raw = base64.urlsafe_b64decode(entry["x"] + "=" * (-len(entry["x"]) % 4))
            key = Ed25519PublicKey.from_public_bytes(raw)
        except (ValueError, binascii.Error):
            log.warning("%s: skipping a malformed key of its JWKS", owner)
            continue
        keys.append(Ed25519Jwk(key, kid if isinstance(kid, str) and kid else None))
    return tuple(keys)


def _signed_by_any(
    keys: Sequence[Ed25519Jwk], signature: bytes, message: bytes, kid: str | None
) -> bool:
    for jwk in keys:
        if kid is not None and jwk.kid is not None and jwk.kid != kid:
            continue
        try:
            jwk.key.verify(signature, message)
        except InvalidSignature:
            continue
        return True
    return False
