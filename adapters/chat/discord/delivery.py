"""Posting a finished video: fitted to the server's upload limit, and posted once.

The limit is read from the guild (its boost tier sets it: 10 MiB, 50 MiB at tier 2, 100 MiB at
tier 3), never assumed. A larger video is re-encoded to fit (``bot.fitting.shrink_video``); one
that cannot fit at a watchable quality is posted as a link to our signed ``/media`` route.

A delivery may be repeated: after a crash the engine delivers a job again. Every send carries a
nonce made from the job id with ``enforce_nonce``, and Discord answers a repeated send (within a
few minutes) with the first message instead of posting a second one. Past that window the engine
asks ``find_delivery`` first, which reads the places a video may have gone since the job was made
and looks for the bot's message whose embed footer names the job (GET answers carry no nonce).

A video is never lost to a place that went away: when the job's thread is deleted (10003) or the
bot may no longer post there (50013, 50001), it goes to the parent channel, mentioning its owner,
and when that fails too, to the owner's direct messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import discord

from adapters.chat.base import POSTS_CLOCK_SLACK_SECONDS
from adapters.chat.discord.context import fit_content, in_discords_words
from adapters.chat.discord.views import result_view
from bot.errors import InvalidMedia
from bot.fitting import shrink_video
from bot.media import describe_amount
from bot.models import Job

log = logging.getLogger(__name__)

#: ``link_for(blob, mime)``: a signed, expiring URL of our ``/media`` route, or ``None`` when the
#: bot has no public address (``adapters.http.media.MediaLinks.url_for`` fits).
LinkFor = Callable[[str, str], str | None]

_MP4: Final = "video/mp4"
#: HTTP 413: the upload was larger than Discord takes (the guild's tier fell meanwhile).
_TOO_LARGE: Final = 413
_EMBED_MAX: Final = 4096
#: Discord's codes for a place the bot cannot post in: gone, no access, no permission.
UNKNOWN_CHANNEL: Final = 10003
MISSING_ACCESS: Final = 50001
MISSING_PERMISSIONS: Final = 50013
_UNREACHABLE: Final = frozenset({UNKNOWN_CHANNEL, MISSING_ACCESS, MISSING_PERMISSIONS})
#: How many messages ``find_delivery`` reads in each place, oldest first from the job's birth,
#: and how far before it it starts (clocks differ).
SCAN_MESSAGES: Final = 500
_PAGE: Final = 100


def nonce_for(job: Job) -> str:
    """The nonce of a job's video message: the same on every attempt (Discord: ≤ 25 chars)."""
    return f"r2v{job.id}"[:25]


def marker_for(job: Job) -> str:
    """The video message's embed footer: how a later process recognises the post."""
    return f"Job {job.id}"


def places_for(job: Job) -> list[int]:
    """Where the job's video may go, in order: its thread, then the thread's parent channel."""
    d = job.destination
    places = [int(d.thread_id)] if d.thread_id and d.thread_id != d.channel_id else []
    return [*places, int(d.channel_id)]


def unreachable(error: discord.HTTPException) -> bool:
    """A place the bot cannot post in (deleted, hidden or forbidden), as opposed to a fault."""
    return error.code in _UNREACHABLE


def capped(limit: int, max_upload: int | None) -> int:
    """A server's upload limit under the adapter's own cap, when it has one."""
    return min(limit, max_upload) if max_upload is not None else limit


class Delivery:
    """Posts videos with the bot's token into the job's thread, or its channel."""

    def __init__(
        self,
        client: discord.Client,
        workdir: Path,
        *,
        link_for: LinkFor | None = None,
        max_upload_bytes: int | None = None,
    ) -> None:
        self._client = client
        self._workdir = workdir
        self._link_for = link_for
        self._max_upload = max_upload_bytes

    async def deliver(self, job: Job, video: Path, text: str) -> None:
        """Post ``video`` mentioning its owner, ``text`` (the core's words) in an embed, and the
        result buttons under it."""
        limit = await self.upload_limit(job)
        size = (await asyncio.to_thread(video.stat)).st_size
        upload: Path | None = video
        fitted = None
        if size > limit:
            try:
                fitted = await shrink_video(video, limit, self._workdir)
            except InvalidMedia as exc:
                log.info("job %s: %s; posting a link", job.id, exc.message)
                upload = None
            else:
                upload = fitted.path if fitted is not None else video
        note = ""
        if fitted is not None:
            note = f"(re-encoded to fit this server's {describe_amount(limit)} upload limit)"
        try:
            if upload is not None:
                try:
                    await self._send(job, text, upload=upload, note=note)
                    return
                except discord.HTTPException as exc:
                    if exc.status != _TOO_LARGE:
                        raise
                    log.warning("job %s: Discord refused the upload as too large", job.id)
            await self._send(job, text, note=self._link_note(job, size, limit))
        finally:
            if fitted is not None:
                await asyncio.to_thread(fitted.path.unlink, missing_ok=True)

    async def find_delivery(self, job: Job) -> bool:
        """Whether the job's video message is already in one of its places (or the owner's
        direct messages): a message by the bot whose embed footer is the job's marker."""
        assert self._client.user is not None  # logged in
        me = str(self._client.user.id)
        born = datetime.fromtimestamp(max(job.created_at - POSTS_CLOCK_SLACK_SECONDS, 0.0), tz=UTC)
        start = max(discord.utils.time_snowflake(born), 0)
        places: list[int] = places_for(job)
        with contextlib.suppress(discord.HTTPException):
            places.append(await self._dm_channel(job))
        for place in places:
            try:
                if await self._posted_in(place, start, me, marker_for(job)):
                    return True
            except discord.HTTPException as exc:
                if not unreachable(exc):
                    raise
                log.info("job %s: cannot read %s to look for its video (%s)", job.id, place, exc)
        return False

    async def _posted_in(self, place: int, after: int, author: str, marker: str) -> bool:
        read = 0
        while read < SCAN_MESSAGES:
            page = await self._client.http.logs_from(place, _PAGE, after=after)
            if not page:
                return False
            for message in page:
                footers = [embed.get("footer", {}).get("text") for embed in message["embeds"]]
                if message["author"]["id"] == author and marker in footers:
                    return True
            read += len(page)
            # Discord answers newest first, whichever way it pages.
            after = max(int(m["id"]) for m in page)
            if len(page) < _PAGE:
                return False
        return False

    async def _dm_channel(self, job: Job) -> int:
        """The owner's direct-message channel (the same one every time it is asked for)."""
        channel = await self._client.http.start_private_message(int(job.destination.user_id))
        return int(channel["id"])

    async def upload_limit(self, job: Job) -> int:
        """The most bytes one file may have in the job's server (its boost tier decides).

        When the guild cannot be read, the smallest limit any server has is used, so the video
        is still posted rather than the finished job failing.
        """
        try:
            guild = await self._client.fetch_guild(
                int(job.destination.server_id), with_counts=False
            )
            limit = guild.filesize_limit
        except discord.HTTPException:
            log.warning("job %s: could not read the server's upload limit", job.id, exc_info=True)
            limit = discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES
        return capped(limit, self._max_upload)

    async def _send(
        self, job: Job, text: str, *, upload: Path | None = None, note: str = ""
    ) -> None:
        """Post in the first place that takes it: the thread, its channel, the owner's DMs."""
        failed: discord.HTTPException | None = None
        for place in places_for(job):
            try:
                await self._send_to(place, job, text, upload=upload, note=note)
                return
            except discord.HTTPException as exc:
                if not unreachable(exc):
                    raise
                log.warning("job %s: cannot post its video in %s (%s)", job.id, place, exc)
                failed = exc
        assert failed is not None
        try:
            await self._send_to(await self._dm_channel(job), job, text, upload=upload, note=note)
        except discord.HTTPException:
            log.warning("job %s: its owner's direct messages refused it too", job.id)
            raise failed from None

    async def _send_to(
        self, place: int, job: Job, text: str, *, upload: Path | None, note: str
    ) -> None:
        target = self._client.get_partial_messageable(place)
        user = int(job.destination.user_id)
        options: dict[str, Any] = {
            "content": fit_content(f"<@{user}> {note}".strip()),
            "embed": discord.Embed(description=in_discords_words(text)[:_EMBED_MAX]).set_footer(
                text=marker_for(job)
            ),
            "view": result_view(job),
            "nonce": nonce_for(job),
            # The prompt may say @everyone: only the video's owner is pinged.
            "allowed_mentions": discord.AllowedMentions(
                everyone=False, roles=False, users=[discord.Object(user)]
            ),
        }
        if upload is None:
            await target.send(**options)
            return
        handle = await asyncio.to_thread(upload.open, "rb")
        try:
            await target.send(file=discord.File(handle, filename=f"{job.id}.mp4"), **options)
        finally:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(handle.close)

    def _link_note(self, job: Job, size: int, limit: int) -> str:
        link = None
        if self._link_for is not None and job.result_blob:
            link = self._link_for(job.result_blob, _MP4)
        too_large = (
            f"The video ({describe_amount(size)}) is larger than this server's "
            f"{describe_amount(limit)} upload limit, even re-encoded at a watchable quality"
        )
        if link is None:
            return (
                f"{too_large}, and this bot has no public address to link it from; ask its "
                "operator to set R2V_PUBLIC_URL."
            )
        return f"{too_large}; watch or download it here: {link}"
