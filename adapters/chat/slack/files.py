"""Files people share in Slack, as ``IncomingFile`` values streamed from Slack's file host.

A Slack file is private: downloading it takes the bot token. The token must never go anywhere but
Slack, and the URLs come from request bodies, so a file is accepted only when its URL is on
Slack's file host over https (``https://files.slack.com``). Tests widen that list to their
loopback fake; production never does.

Slack answers a download it will not serve (a token without ``files:read``, a file no longer
shared) with a redirect to its sign-in page or the page itself, not an error status; both are
refused with what to fix instead of being handed to the media check as a "file".
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from bot.errors import Refusal
from bot.models import IncomingFile

#: Where Slack serves private files from (scheme and host, no path).
SLACK_FILE_ORIGINS: tuple[str, ...] = ("https://files.slack.com",)

CHUNK_SIZE = 256 * 1024
_DEFAULT_PORTS = {"https": 443, "http": 80}


class SlackFiles:
    """Turns Slack file objects (from a form or a message) into streamed downloads."""

    def __init__(
        self,
        token: str,
        *,
        origins: Collection[str] = SLACK_FILE_ORIGINS,
        timeout: float = 60.0,
    ) -> None:
        self._token = token
        self._origins = frozenset(_normal_origin(o) for o in origins)
        self._timeout = timeout

    def incoming(self, file: Mapping[str, Any]) -> IncomingFile:
        """The file as the core takes it; refused at once unless it is on Slack's file host."""
        name = str(file.get("name") or file.get("title") or file.get("id") or "file")
        url = file.get("url_private_download") or file.get("url_private")
        if not isinstance(url, str) or not url:
            raise Refusal(
                f"Slack did not share “{name}” with the bot, so it cannot be saved. Upload the "
                "file again in the form.",
                code="download_failed",
            )
        self.check(url, name)
        size = file.get("size")

        def chunks() -> AsyncIterator[bytes]:
            return self._download(url, name)

        return IncomingFile(
            name=name, open=chunks, declared_size=size if isinstance(size, int) else None
        )

    def check(self, url: str, name: str) -> None:
        """Refuse a URL that is not on an allowed origin (the token would go there)."""
        host: str | None = None
        try:
            parts = urlsplit(url)
            host = parts.hostname
            origin = _origin(parts.scheme, host, parts.port)
            credentials = bool(parts.username or parts.password)
        except ValueError:
            origin, credentials = None, False
        if origin is None or credentials or origin not in self._origins:
            shown = host or "an unreadable address"
            raise Refusal(
                f"“{name}” is not a file uploaded to this Slack workspace (it points at {shown}). "
                f"Only files on Slack's file host ({', '.join(sorted(self._origins))}) are "
                "accepted: attach the file itself.",
                code="foreign_file",
            )

    async def _download(self, url: str, name: str) -> AsyncIterator[bytes]:
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            async with (
                httpx.AsyncClient(timeout=self._timeout) as client,
                client.stream("GET", url, headers=headers, follow_redirects=False) as response,
            ):
                _check_answer(response, name)
                async for chunk in response.aiter_bytes(CHUNK_SIZE):
                    yield chunk
        except httpx.HTTPError as exc:
            raise Refusal(
                f"The download of “{name}” from Slack broke off ({type(exc).__name__}). "
                "Please try again.",
                code="download_failed",
            ) from exc


def _check_answer(response: httpx.Response, name: str) -> None:
    status = response.status_code
    content_type = response.headers.get("content-type", "")
    if response.is_redirect or (status == 200 and content_type.startswith("text/html")):
        raise Refusal(
            f"Slack would not hand over “{name}” (it answered with its sign-in page): the app "
            "needs the files:read scope. Reinstall it from slack/manifest.yml.",
            code="download_failed",
        )
    if status in (404, 410):
        raise Refusal(
            f"“{name}” is no longer on Slack; it may have been deleted. Share it again.",
            code="download_failed",
        )
    if status != 200:
        raise Refusal(
            f"Slack answered {status} for “{name}”. Please try again in a moment.",
            code="download_failed",
        )


def _origin(scheme: str, host: str | None, port: int | None) -> str | None:
    if not host or scheme not in _DEFAULT_PORTS:
        return None
    shown_port = "" if port in (None, _DEFAULT_PORTS[scheme]) else f":{port}"
    return f"{scheme}://{host.lower()}{shown_port}"


def _normal_origin(origin: str) -> str:
    parts = urlsplit(origin)
    normal = _origin(parts.scheme, parts.hostname, parts.port)
    if normal is None:
        raise ValueError(f"not an http(s) origin: {origin!r}")
    return normal
