"""Attachments, downloaded from Discord's CDN only, after the interaction was deferred.

An attachment is a URL a user's client put into the interaction, so the URL is checked before a
byte is fetched: https, and one of Discord's CDN hosts, nothing else (a crafted payload cannot make
the bot fetch an internal address). The size Discord declares is checked before the download and
the bytes are counted while they stream, so a file that is larger than it said is cut off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from bot.errors import Refusal
from bot.media import DEFAULT_LIMITS, describe_amount
from bot.models import IncomingFile

#: The only hosts attachments are downloaded from, unless ``R2V_DISCORD_FILE_HOSTS`` says others.
CDN_HOSTS: Final = frozenset({"cdn.discordapp.com", "media.discordapp.net"})
CHUNK: Final = 64 * 1024
#: No file larger than the largest accepted medium is fetched at all.
MAX_BYTES: Final = DEFAULT_LIMITS.max_bytes(None)


@dataclass(frozen=True, slots=True)
class Attachment:
    """What an interaction says about an attached file (the ``resolved`` attachment object)."""

    url: str
    filename: str
    size: int | None = None
    content_type: str | None = None

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> Attachment:
        size = data.get("size")
        return cls(
            url=str(data.get("url", "")),
            filename=str(data.get("filename", "file")),
            size=size if isinstance(size, int) else None,
            content_type=data.get("content_type"),
        )


def check_url(url: str, filename: str, hosts: Collection[str] = CDN_HOSTS) -> None:
    """Refuse a URL that is not https on one of ``hosts`` (no port, no user name)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    trusted = (
        parts is not None
        and parts.scheme == "https"
        and (parts.hostname or "") in hosts
        and port in (None, 443)
        and not parts.username
        and not parts.password
    )
    if not trusted:
        raise Refusal(
            f"{filename} is not a file uploaded to Discord (only https links on "
            f"{' or '.join(sorted(hosts))} are fetched), so it was not downloaded. "
            "Attach the file itself to the command.",
            code="untrusted_attachment",
        )


def attachment_file(
    client: httpx.AsyncClient,
    attachment: Attachment,
    *,
    max_bytes: int = MAX_BYTES,
    hosts: Collection[str] = CDN_HOSTS,
) -> IncomingFile:
    """An ``IncomingFile`` that streams ``attachment`` from Discord's CDN when it is read.

    Raises ``Refusal`` at once for a URL off the CDN, or a declared size over ``max_bytes``;
    reading raises ``Refusal`` when the download fails or brings more bytes than allowed.
    """
    name = attachment.filename
    check_url(attachment.url, name, hosts)
    declared = attachment.size
    if declared is not None and declared > max_bytes:
        raise _too_large(name, describe_amount(declared), max_bytes)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async with client.stream("GET", attachment.url, follow_redirects=False) as response:
                if response.status_code != 200:
                    raise Refusal(
                        f"Discord did not hand over {name} (HTTP {response.status_code}); "
                        "attachment links expire, so attach the file again.",
                        code="download_failed",
                    )
                length = response.headers.get("content-length", "")
                if length.isdigit():
                    _check_count(name, int(length), declared, max_bytes)
                received = 0
                async for chunk in response.aiter_bytes(CHUNK):
                    received += len(chunk)
                    _check_count(name, received, declared, max_bytes)
                    yield chunk
        except httpx.HTTPError as exc:
            raise Refusal(
                f"{name} could not be downloaded from Discord ({type(exc).__name__}); "
                "please try again.",
                code="download_failed",
            ) from exc

    return IncomingFile(name=name, open=chunks, declared_size=declared)


def _check_count(name: str, count: int, declared: int | None, max_bytes: int) -> None:
    """Refuse once more bytes arrive than allowed, or than Discord declared for the file."""
    if count > max_bytes:
        raise _too_large(name, f"over {describe_amount(max_bytes)}", max_bytes)
    if declared is not None and count > declared:
        raise Refusal(
            f"{name} brought more bytes than the {describe_amount(declared)} Discord declared "
            "for it, so it was not used. Attach the file again.",
            code="too_large",
        )


def _too_large(name: str, amount: str, max_bytes: int) -> Refusal:
    return Refusal(
        f"{name} is {amount}; files may be at most {describe_amount(max_bytes)}.",
        code="too_large",
    )
