"""The Discord adapter: the job engine's ChatPort, and the bot's life on Discord.

It logs in (REST) and syncs the catalog's commands when started, then holds the gateway
connection that brings interactions. Status messages and videos are posted with the bot's token,
not through interactions, so any process can post them and a job may outlive the 15 minutes an
interaction token lasts. In a generation channel each job gets a public thread named from its
prompt, and its status message and video go there; elsewhere they go to the channel itself, or
to the thread a command was sent from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import discord
import httpx
from aiohttp import web

from adapters.chat.discord.client import REFUSED_TOKEN, R2VClient, point_at, restore
from adapters.chat.discord.commands import CommandSet
from adapters.chat.discord.context import PLATFORM, fit_content
from adapters.chat.discord.delivery import Delivery, LinkFor, unreachable
from adapters.chat.discord.interactions import Interactions
from bot.core import Core
from bot.errors import ConfigurationError, Refusal
from bot.models import Actor, Job
from bot.ports import PostedStatus
from bot.settings import Settings

log = logging.getLogger(__name__)

#: Threads of jobs archive after a day without messages (60, 1440, 4320 or 10080 minutes).
THREAD_ARCHIVE_MINUTES: Final = 1440
_THREAD_NAME_MAX: Final = 100
_DOWNLOAD_TIMEOUT: Final = httpx.Timeout(60.0, connect=10.0)


class DiscordAdapter:
    """``DiscordAdapter(settings)``: build it before the core (the engine needs its ChatPort),
    then ``await start(core)``.

    ``link_for`` makes links to videos too large to upload (``MediaLinks.url_for``).
    ``downloads``: the HTTP client attachments are fetched with; tests hand in one whose
    transport serves the CDN's hosts from a loopback fake. The host check does not depend on it.
    ``max_upload_bytes`` caps uploads below the guild's own limit (a REST proxy's body limit).
    ``gateway=False`` logs in for REST alone: a process that only delivers needs no gateway.
    """

    platform = PLATFORM

    def __init__(
        self,
        settings: Settings,
        *,
        link_for: LinkFor | None = None,
        downloads: httpx.AsyncClient | None = None,
        max_upload_bytes: int | None = None,
        gateway: bool = True,
    ) -> None:
        if settings.discord_token is None:
            raise ConfigurationError(
                "DISCORD_TOKEN is not set: set it to the bot token from the Discord developer "
                "portal (Bot → Reset Token)."
            )
        self._settings = settings
        self._token = settings.discord_token.get_secret_value()
        self._gateway = gateway
        self._own_downloads = downloads is None
        self._downloads = downloads or httpx.AsyncClient(
            timeout=_DOWNLOAD_TIMEOUT, follow_redirects=False
        )
        self._commands = CommandSet()
        self._max_upload = max_upload_bytes
        self._client = R2VClient(settings.discord_shard_plan)
        self._delivery = Delivery(
            self._client,
            settings.data_dir / "tmp",
            link_for=link_for,
            max_upload_bytes=max_upload_bytes,
        )
        self._core: Core | None = None
        self._ready = asyncio.Event()
        self._connection: asyncio.Task[None] | None = None
        self._previous_base: str | None = None
        self._started = False

    @property
    def client(self) -> discord.AutoShardedClient:
        """The discord.py client (logged in once ``start`` returns)."""
        return self._client

    def routes(self) -> Sequence[web.RouteDef]:
        return ()

    async def start(self, core: Core) -> None:
        """Log in, sync the commands (to ``R2V_DISCORD_GUILD`` alone when set), then connect."""
        self._core = core
        self._previous_base = point_at(self._settings.discord_api_base)
        self._client.r2v_actions = Interactions(
            core,
            self._commands,
            self._downloads,
            file_hosts=self._settings.discord_file_host_names,
            max_upload_bytes=self._max_upload,
        )
        self._started = True
        try:
            await self._client.login(self._token)
        except discord.LoginFailure as exc:
            raise ConfigurationError(REFUSED_TOKEN) from exc
        await self._sync()
        self._ready.set()
        if self._gateway:
            self._connection = asyncio.create_task(self._client.connect(), name="discord-gateway")
            self._connection.add_done_callback(_gateway_ended)

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._connection
        if self._started:
            # An AutoShardedClient that never logged in fails to close (no event queue yet).
            await self._client.close()
        if self._own_downloads:
            await self._downloads.aclose()
        restore(self._previous_base)
        self._previous_base = None

    async def _sync(self) -> None:
        """Overwrite the application's commands with the catalog's; a failure leaves the last
        sync in place, so it is logged rather than fatal."""
        application_id = self._client.application_id
        assert application_id is not None  # known once logged in
        payloads = self._commands.payloads()
        guild = self._settings.discord_guild
        try:
            if guild is not None:
                await self._client.http.bulk_upsert_guild_commands(application_id, guild, payloads)
            else:
                await self._client.http.bulk_upsert_global_commands(application_id, payloads)
        except discord.HTTPException:
            log.exception("could not sync the Discord commands; the last synced ones stay")
            return
        log.info(
            "synced %d Discord commands %s",
            len(payloads),
            f"to guild {guild}" if guild else "globally",
        )

    # -- ChatPort --------------------------------------------------------------------------

    async def post_status(self, job: Job, text: str) -> PostedStatus:
        await self._ready.wait()
        d = job.destination
        if d.thread_id is None and await self._in_generation_channel(job):
            thread = await self._open_thread(job)
            if thread is not None:
                with contextlib.suppress(discord.Forbidden):
                    message = await thread.send(fit_content(text))
                    return PostedStatus(str(message.id), str(thread.id))
        place = d.thread_id or d.channel_id
        try:
            message = await self._client.get_partial_messageable(int(place)).send(fit_content(text))
        except discord.HTTPException as exc:
            if not unreachable(exc):
                raise
            raise missing_permissions(place, thread=d.thread_id is not None) from exc
        return PostedStatus(str(message.id), d.thread_id)

    async def edit_status(self, job: Job, text: str) -> None:
        await self._ready.wait()
        d = job.destination
        if d.status_message_id is None:
            return
        channel = self._client.get_partial_messageable(int(d.thread_id or d.channel_id))
        await channel.get_partial_message(int(d.status_message_id)).edit(content=fit_content(text))

    async def deliver_video(self, job: Job, video: Path, text: str) -> None:
        await self._ready.wait()
        await self._delivery.deliver(job, video, text)

    async def find_delivery(self, job: Job) -> bool:
        await self._ready.wait()
        return await self._delivery.find_delivery(job)

    async def _in_generation_channel(self, job: Job) -> bool:
        assert self._core is not None
        d = job.destination
        actor = Actor(platform=PLATFORM, server_id=d.server_id, user_id=d.user_id)
        return d.channel_id in (await self._core.server_settings(actor)).channels

    async def _open_thread(self, job: Job) -> discord.Thread | None:
        """A public thread for the job in its channel; ``None`` (status in the channel) when
        Discord refuses one, e.g. when the bot may not create threads there."""
        try:
            channel = await self._client.fetch_channel(int(job.destination.channel_id))
            if not isinstance(channel, discord.TextChannel):
                return None
            return await channel.create_thread(
                name=thread_name(job),
                type=discord.ChannelType.public_thread,
                auto_archive_duration=THREAD_ARCHIVE_MINUTES,
            )
        except discord.HTTPException:
            log.warning(
                "job %s: could not open a thread; posting in the channel", job.id, exc_info=True
            )
            return None


def _gateway_ended(task: asyncio.Task[None]) -> None:
    """discord.py reconnects by itself; an error that ends the connection must not pass
    unseen (a revoked token, intents the portal does not grant)."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("the Discord gateway connection ended: %s", error, exc_info=error)


#: What the bot needs where it posts; Discord's 403 does not say which one is missing.
_POSTING = ("View Channel", "Send Messages", "Embed Links", "Attach Files")
_IN_THREADS = ("Send Messages in Threads",)


def missing_permissions(place: str, *, thread: bool) -> Refusal:
    """The refusal for a place the bot may not post in, naming it and what the bot needs."""
    needed = ", ".join((*_POSTING, *(_IN_THREADS if thread else ())))
    return Refusal(
        f"The bot may not post in <#{place}>, so it cannot run a job there. A server admin can "
        f"give the bot these permissions in that channel: {needed}.",
        code="missing_permissions",
    )


def thread_name(job: Job) -> str:
    """The job's prompt on one line, cut to Discord's 100 characters."""
    name = " ".join(job.spec.original_prompt.split())
    if len(name) > _THREAD_NAME_MAX:
        name = name[: _THREAD_NAME_MAX - 1] + "…"
    return name or f"Job {job.id}"
