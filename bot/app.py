"""The composition root: the one place that wires adapters and storage to the core from settings.

Only this module (and ``bot.cli``, through it) may import ``adapters`` and ``storage``; the
import-linter contract in ``pyproject.toml`` checks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx
from aiohttp.web import RouteDef

from adapters.chat.base import ChatAdapter
from adapters.chat.console import ConsoleChat, ConsoleOutput
from adapters.chat.console import run_console as console_session
from adapters.http import HttpServer, build_app
from adapters.http.media import MediaLinks, media_route
from adapters.metrics import CONTENT_TYPE, PrometheusMetrics
from adapters.providers.base import ProviderContext
from adapters.providers.registry import hosted_providers
from adapters.providers.storyboard import StoryboardProvider
from adapters.webhooks import load_or_create_secret
from bot.core import Core
from bot.jobs import EngineLimits, JobEngine
from bot.media import MediaLimits, remove_leftovers
from bot.memory import MemoryBudget, return_decoded_memory
from bot.models import Actor
from bot.ports import ChatPort, Provider
from bot.prompt_filter import PromptFilter
from bot.roster import Roster
from bot.settings import Settings
from storage.blobs import FileBlobStore
from storage.characters import SqliteCharacterStore
from storage.db import Database
from storage.jobs import SqliteJobStore
from storage.servers import SqliteServerStore

log = logging.getLogger(__name__)


@dataclass
class App:
    settings: Settings
    db: Database
    core: Core
    engine: JobEngine
    http: HttpServer
    providers: Mapping[str, Provider]
    metrics: PrometheusMetrics
    _stack: AsyncExitStack

    async def close(self) -> None:
        await self._stack.aclose()


async def build(
    settings: Settings,
    chats: Mapping[str, ChatPort],
    *,
    http_socket: socket.socket | None = None,
    routes: Sequence[RouteDef] = (),
) -> App:
    """Open storage, start the HTTP server and the providers, resume unfinished jobs.

    ``http_socket``: an already bound socket to serve on (tests bind port 0 themselves, so they
    know the public URL before the bot starts).
    """
    stack = AsyncExitStack()
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = await Database.open(settings.database_path)
        stack.push_async_callback(db.close)
        blobs = FileBlobStore(settings.blob_dir, db.blob_in_use)
        await blobs.cleanup_tmp(older_than=3600)
        if left := await asyncio.to_thread(remove_leftovers, settings.data_dir / "tmp"):
            log.info("removed %d temp files a stopped save left behind", len(left))
        client = await stack.enter_async_context(
            httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0))
        )
        metrics = PrometheusMetrics()
        links = media_links(settings, settings.media_link_seconds)
        context = ProviderContext(settings, client, links, metrics)
        providers = await _providers(context, stack)
        http: HttpServer | None = None

        def webhook_base(provider: str) -> str | None:
            if settings.public_url:
                return settings.public_url
            # Our own storyboard calls back over loopback, public URL or not.
            return http.local_url if http is not None and provider == "storyboard" else None

        engine = JobEngine(
            SqliteJobStore(db),
            blobs,
            providers,
            chats,
            limits=EngineLimits(
                user_open_jobs=settings.user_open_jobs,
                server_open_jobs=settings.server_open_jobs,
                poll_initial_seconds=settings.poll_initial_seconds,
                poll_max_seconds=settings.poll_max_seconds,
                job_timeout_seconds=settings.job_timeout_seconds,
                max_result_bytes=settings.max_result_bytes,
            ),
            webhook_base=webhook_base,
            workdir=settings.data_dir / "tmp",
            metrics=metrics,
        )
        stack.push_async_callback(engine.close)

        async def health() -> dict[str, Any]:
            try:
                open_jobs = len(await SqliteJobStore(db).open_jobs())
            except Exception:
                return {"ok": False, "database": False}
            return {"ok": True, "database": True, "open_jobs": open_jobs}

        web_app = build_app(
            engine,
            health,
            routes=[media_route(links, blobs.path), *routes],
            metrics=metrics.exposition,
            metrics_type=CONTENT_TYPE,
        )
        http = HttpServer(web_app, settings.http_host, settings.http_port, sock=http_socket)
        await http.start()
        stack.push_async_callback(http.close)
        log.info("HTTP server listening on %s", http.local_url)

        workdir = settings.data_dir / "tmp"
        # One budget for every decode in this process (R2V_MEDIA_MEMORY_MB), and decoded
        # images' memory returned when they are closed.
        return_decoded_memory()
        limits = MediaLimits(memory=MemoryBudget(settings.media_memory_mb * 1024 * 1024))
        roster = Roster(
            SqliteCharacterStore(db),
            blobs,
            workdir,
            max_per_server=settings.max_characters_per_server,
            limits=limits,
        )
        core = Core(
            roster,
            engine,
            blobs,
            SqliteServerStore(db),
            workdir=workdir,
            provider_order=settings.provider_order,
            public_url=settings.public_url,
            prompt_filter=PromptFilter.from_file(settings.prompt_blocklist),
            limits=limits,
        )
        await engine.start()
        return App(settings, db, core, engine, http, providers, metrics, stack)
    except BaseException:
        await stack.aclose()
        raise


async def _providers(context: ProviderContext, stack: AsyncExitStack) -> dict[str, Provider]:
    """The storyboard (always) and every hosted provider whose key is set, all started."""
    settings = context.settings
    providers: dict[str, Provider] = dict(hosted_providers(context))
    providers["storyboard"] = StoryboardProvider(
        settings.data_dir / "storyboard",
        webhook_secret=load_or_create_secret(settings.data_dir / "secrets" / "storyboard.whsec"),
        client=context.client,
        label_style=settings.storyboard_labels,
        render_delay=settings.storyboard_render_seconds,
    )
    for name, provider in providers.items():
        await provider.start()
        stack.push_async_callback(provider.close)
        log.info("provider %s ready", name)
    return providers


async def run_console(
    settings: Settings,
    *,
    server: str = "default",
    user: str = "you",
    admin: bool = False,
    as_json: bool = False,
    wait: bool = True,
) -> int:
    """``r2v console``: the whole bot with the terminal as its only chat platform."""
    output = ConsoleOutput(as_json=as_json)
    chat = ConsoleChat(
        output, settings.outbox_dir, delivery_delay=settings.console_delivery_delay_seconds
    )
    app = await build(settings, {"console": chat})
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        actor = Actor(
            platform="console", server_id=server, user_id=user, is_admin=admin, display_name=user
        )
        interactive = sys.stdin.isatty() and not as_json
        session = asyncio.create_task(
            console_session(app.core, output, actor, interactive=interactive, wait=wait)
        )
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({session, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if session.done():
            session.result()
        else:
            session.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session
    finally:
        await app.close()
    return 0


#: Links posted in chat (a video too large to upload) are kept by people: they last a week.
CHAT_LINK_SECONDS = 7 * 24 * 3600


def media_links(settings: Settings, ttl_seconds: int) -> MediaLinks:
    """Signed ``/media`` links under the secret kept in the data folder."""
    secret = load_or_create_secret(settings.data_dir / "secrets" / "media.key").encode()
    return MediaLinks(secret, settings.public_url, ttl_seconds=ttl_seconds)


def chat_adapters(settings: Settings) -> dict[str, ChatAdapter]:
    """An adapter for every chat platform whose tokens are set."""
    adapters: dict[str, ChatAdapter] = {}
    if "discord" in settings.chat_platforms:
        from adapters.chat.discord import DiscordAdapter

        links = media_links(settings, CHAT_LINK_SECONDS)
        adapters["discord"] = DiscordAdapter(settings, link_for=links.url_for)
    if "slack" in settings.chat_platforms:
        from adapters.chat.slack import SlackAdapter

        adapters["slack"] = SlackAdapter(settings)
    return adapters


async def run_bot(settings: Settings) -> int:
    """``r2v run`` with chat tokens set: every configured platform, until SIGTERM or Ctrl-C."""
    adapters = chat_adapters(settings)
    routes = [route for adapter in adapters.values() for route in adapter.routes()]
    app = await build(settings, adapters, routes=routes)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        for name, adapter in adapters.items():
            await adapter.start(app.core)
            log.info("%s connected", name)
        await stop.wait()
        log.info("stopping")
    finally:
        await app.close()  # the engine stops before the platforms it posts to
        for adapter in adapters.values():
            with contextlib.suppress(Exception):
                await adapter.close()
    return 0


async def discord_invite(settings: Settings) -> str:
    """The invite URL of the bot's Discord application (``r2v discord invite``)."""
    from adapters.chat.discord import fetch_application_id, invite_url

    return invite_url(await fetch_application_id(settings))
