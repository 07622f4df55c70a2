"""The composition root: the one place that wires adapters and storage to the core from settings.

Only this module (and ``bot.cli``, through it) may import ``adapters`` and ``storage``; the
import-linter contract in ``pyproject.toml`` checks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
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
from adapters.http.gallery import export_links, gallery_links, gallery_routes
from adapters.http.media import MediaLinks, Presign, media_route
from adapters.metrics import CONTENT_TYPE, PrometheusMetrics
from adapters.providers.base import ProviderContext
from adapters.providers.registry import hosted_providers
from adapters.providers.storyboard import StoryboardProvider
from adapters.webhooks import load_or_create_secret
from bot.archive import Archive
from bot.core import Core
from bot.errors import ConfigurationError
from bot.gallery import Gallery
from bot.jobs import EngineLimits, JobEngine
from bot.media import MediaLimits, remove_leftovers
from bot.memory import MemoryBudget, return_decoded_memory
from bot.models import Actor
from bot.ports import ChatPort, Provider
from bot.prompt_filter import PromptFilter
from bot.roster import Roster
from bot.settings import Settings
from bot.thumbnails import Thumbnails
from storage.blob_stores import open_blob_store
from storage.blob_trash import SqlBlobTrash
from storage.characters import SqlCharacterStore
from storage.database import DataFolderLock, migrations_for, open_database, sqlite_path
from storage.jobs import SqlJobStore
from storage.people import SqlPeopleStore
from storage.s3 import S3BlobStore
from storage.servers import SqlServerStore
from storage.sql import SqlDatabase

log = logging.getLogger(__name__)


@dataclass
class App:
    settings: Settings
    db: SqlDatabase
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
        workdir = settings.data_dir / "tmp"
        # One budget for every decode in this process (R2V_MEDIA_MEMORY_MB), and decoded
        # images' memory returned when they are closed.
        return_decoded_memory()
        limits = MediaLimits(memory=MemoryBudget(settings.media_memory_mb * 1024 * 1024))
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        alone = sqlite_path(settings.database_url, settings.data_dir) is not None
        if alone:  # SQLite: one process per data folder
            lock = DataFolderLock(settings.data_dir)
            lock.acquire()
            stack.callback(lock.release)
        instance_id = settings.instance_id or default_instance_id()
        db = await open_database(
            settings.database_url, settings.data_dir, application_name=f"r2v-bot {instance_id}"
        )
        stack.push_async_callback(db.close)
        secret = shared_secret(settings, db.dialect)
        blobs = await stack.enter_async_context(
            open_blob_store(settings, db.blob_in_use, SqlBlobTrash(db))
        )
        # Another instance may share a data folder on PostgreSQL: only a folder's one process
        # may take what is in its temp folder for leftovers.
        if alone and (left := await asyncio.to_thread(remove_leftovers, workdir)):
            log.info("removed %d temp files a stopped save left behind", len(left))
        client = await stack.enter_async_context(
            httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0))
        )
        metrics = PrometheusMetrics()
        remote = blobs if isinstance(blobs, S3BlobStore) else None
        presign = remote.presigned_url if remote is not None else None
        links = media_links(settings, settings.media_link_seconds, presign=presign)
        context = ProviderContext(settings, client, links, metrics)
        providers = await _providers(context, stack)
        http: HttpServer | None = None

        def webhook_base(provider: str) -> str | None:
            if settings.public_url:
                return settings.public_url
            # Our own storyboard calls back over loopback, public URL or not.
            return http.local_url if http is not None and provider == "storyboard" else None

        jobs = SqlJobStore(db)
        if alone:
            await jobs.forget_leases()  # the folder lock says no other process is alive
        engine = JobEngine(
            jobs,
            blobs,
            providers,
            chats,
            secret=secret,
            wakeups=db,
            instance_id=instance_id,
            lease_seconds=settings.lease_seconds,
            limits=EngineLimits(
                user_open_jobs=settings.user_open_jobs,
                server_open_jobs=settings.server_open_jobs,
                poll_initial_seconds=settings.poll_initial_seconds,
                poll_max_seconds=settings.poll_max_seconds,
                job_timeout_seconds=settings.job_timeout_seconds,
                max_result_bytes=settings.max_result_bytes,
            ),
            webhook_base=webhook_base,
            workdir=workdir,
            memory=limits.memory,
            metrics=metrics,
        )
        stack.push_async_callback(engine.close)

        async def health() -> dict[str, Any]:
            if engine.draining:
                # A load balancer stops sending here while the instance hands its jobs over.
                return {"ok": False, "draining": True, "instance": engine.instance_id}
            try:
                open_jobs = len(await jobs.open_jobs())
            except Exception:
                return {"ok": False, "database": False}
            return {
                "ok": True,
                "database": True,
                "open_jobs": open_jobs,
                "instance": engine.instance_id,
            }

        def page_base() -> str | None:
            # Without a public address, links work only where the bot runs: the console.
            if settings.public_url or set(chats) != {"console"}:
                return settings.public_url
            return http.local_url if http is not None else None

        hours = settings.gallery_link_hours
        people = SqlPeopleStore(db)
        characters = SqlCharacterStore(db)
        gallery = gallery_links(links.signer, page_base, hours)
        exports = export_links(links.signer, page_base, hours)
        pages = gallery_routes(
            Gallery(characters, jobs, display_names=people.names),
            gallery,
            blobs,
            Thumbnails(settings.data_dir / "thumbnails", memory=limits.memory),
            exports,
            settings.outbox_dir,
            remote,
        )
        web_app = build_app(
            engine,
            health,
            routes=[media_route(links, blobs.local_path, remote), *pages, *routes],
            metrics=metrics.exposition,
            metrics_type=CONTENT_TYPE,
        )
        http = HttpServer(web_app, settings.http_host, settings.http_port, sock=http_socket)
        await http.start()
        stack.push_async_callback(http.close)
        log.info("HTTP server listening on %s", http.local_url)

        roster = Roster(
            characters,
            blobs,
            workdir,
            max_per_server=settings.max_characters_per_server,
            limits=limits,
        )
        core = Core(
            roster,
            engine,
            blobs,
            SqlServerStore(db),
            workdir=workdir,
            provider_order=settings.provider_order,
            public_url=settings.public_url,
            media_by_url=presign is not None,
            prompt_filter=PromptFilter.from_file(settings.prompt_blocklist),
            archive=Archive(
                characters,
                blobs,
                workdir,
                settings.outbox_dir,
                limits=limits,
                max_per_server=settings.max_characters_per_server,
                keep_exports_seconds=hours * 3600,
            ),
            gallery_link=gallery.url_for,
            export_link=exports.url_for,
            limits=limits,
            people=people,
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
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    stopped_by_signal = False
    try:
        actor = Actor(
            platform="console",
            server_id=server,
            user_id=user,
            is_admin=admin,
            display_name=user,
            name=user,
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
            stopped_by_signal = True
            session.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session
    finally:
        if stopped_by_signal:
            await app.engine.drain(settings.shutdown_seconds)
        await app.close()
    return 0


#: Links posted in chat (a video too large to upload) are kept by people: they last a week.
CHAT_LINK_SECONDS = 7 * 24 * 3600


def media_links(settings: Settings, ttl_seconds: int, presign: Presign | None = None) -> MediaLinks:
    """Signed ``/media`` links: under ``R2V_SECRET`` when set (any instance checks them), else
    under the key kept in the data folder; with ``presign``, an object store's own links for
    providers."""
    secret = _secret(settings, "media.key")
    return MediaLinks(secret, settings.public_url, ttl_seconds=ttl_seconds, presign=presign)


def shared_secret(settings: Settings, dialect: str) -> bytes:
    """The secret every instance shares (webhook tokens): ``R2V_SECRET``, or on SQLite (one
    instance) one made and kept in the data folder."""
    if settings.secret is None and dialect != "sqlite":
        raise ConfigurationError(
            "R2V_SECRET is not set: with PostgreSQL every instance must share one secret (it "
            "signs webhook tokens). Set it to the same long random string on every instance, "
            "e.g. the output of: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return _secret(settings, "instance.key")


def _secret(settings: Settings, file_name: str) -> bytes:
    """``R2V_SECRET``, else the key kept under that name in the data folder (made once)."""
    if settings.secret is not None:
        return settings.secret.get_secret_value().encode()
    return load_or_create_secret(settings.data_dir / "secrets" / file_name).encode()


def default_instance_id() -> str:
    """The host name and pid: unique among live instances, readable in logs and leases."""
    return f"{socket.gethostname()}-{os.getpid()}"


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
        log.info(
            "stopping: finishing what is in hand (at most %.0f s), then handing jobs over",
            settings.shutdown_seconds,
        )
        # New commands are refused from here on and /healthz answers 503; the posts and
        # writes in hand finish, and the leases go back for another instance to take at once.
        await app.engine.drain(settings.shutdown_seconds)
    finally:
        await app.close()  # the engine stops before the platforms it posts to
        for adapter in adapters.values():
            with contextlib.suppress(Exception):
                await adapter.close()
    return 0


async def run_db(settings: Settings, action: str) -> int:
    """``r2v db migrate`` / ``r2v db status``: what a deploy runs before starting instances
    (instances also migrate at start, under a lock, so this is optional)."""
    db = await open_database(settings.database_url, settings.data_dir, migrate=False)
    try:
        latest = len(migrations_for(db.dialect))
        before = await db.schema_version()
        if action == "migrate":
            reached = await db.migrate(migrations_for(db.dialect))
            print(f"{db.dialect}: schema version {before} -> {reached} (latest {latest})")
            return 0
        state = "up to date" if before == latest else f"{latest - before} migration(s) missing"
        if before > latest:
            state = "newer than this r2v-bot: upgrade it"
        print(f"{db.dialect}: schema version {before} of {latest}: {state}")
        return 0 if before == latest else 1
    finally:
        await db.close()


async def discord_invite(settings: Settings) -> str:
    """The invite URL of the bot's Discord application (``r2v discord invite``)."""
    from adapters.chat.discord import fetch_application_id, invite_url

    return invite_url(await fetch_application_id(settings))
