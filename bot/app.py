"""The composition root: the one place that wires adapters and storage to the core from settings.

Only this module (and ``bot.cli``, through it) may import ``adapters`` and ``storage``; the
import-linter contract in ``pyproject.toml`` checks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx

from adapters.chat.console import ConsoleChat, ConsoleOutput
from adapters.chat.console import run_console as console_session
from adapters.http import HttpServer, build_app
from adapters.providers.storyboard import StoryboardProvider
from adapters.webhooks import load_or_create_secret
from bot.core import Core
from bot.jobs import EngineLimits, JobEngine
from bot.models import Actor
from bot.ports import ChatPort, Provider
from bot.roster import Roster
from bot.settings import Settings
from storage.blobs import FileBlobStore
from storage.characters import SqliteCharacterStore
from storage.db import Database
from storage.jobs import SqliteJobStore

log = logging.getLogger(__name__)


@dataclass
class App:
    settings: Settings
    db: Database
    core: Core
    engine: JobEngine
    http: HttpServer
    providers: Mapping[str, Provider]
    _stack: AsyncExitStack

    async def close(self) -> None:
        await self._stack.aclose()


async def build(settings: Settings, chats: Mapping[str, ChatPort]) -> App:
    """Open storage, start the HTTP server and the providers, resume unfinished jobs."""
    stack = AsyncExitStack()
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = await Database.open(settings.database_path)
        stack.push_async_callback(db.close)
        blobs = FileBlobStore(settings.blob_dir, db.blob_in_use)
        await blobs.cleanup_tmp(older_than=3600)
        client = await stack.enter_async_context(
            httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0))
        )
        providers = await _providers(settings, client, stack)
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
        )
        stack.push_async_callback(engine.close)

        async def health() -> dict[str, Any]:
            try:
                open_jobs = len(await SqliteJobStore(db).unfinished())
            except Exception:
                return {"ok": False, "database": False}
            return {"ok": True, "database": True, "open_jobs": open_jobs}

        http = HttpServer(build_app(engine, health), settings.http_host, settings.http_port)
        await http.start()
        stack.push_async_callback(http.close)
        log.info("HTTP server listening on %s", http.local_url)

        workdir = settings.data_dir / "tmp"
        roster = Roster(
            SqliteCharacterStore(db),
            blobs,
            workdir,
            max_per_server=settings.max_characters_per_server,
        )
        core = Core(roster, engine, blobs, workdir=workdir, provider_order=settings.provider_order)
        await engine.start()
        return App(settings, db, core, engine, http, providers, stack)
    except BaseException:
        await stack.aclose()
        raise


async def _providers(
    settings: Settings, client: httpx.AsyncClient, stack: AsyncExitStack
) -> dict[str, Provider]:
    storyboard = StoryboardProvider(
        settings.data_dir / "storyboard",
        webhook_secret=load_or_create_secret(settings.data_dir / "secrets" / "storyboard.whsec"),
        client=client,
        label_style=settings.storyboard_labels,
        render_delay=settings.storyboard_render_seconds,
    )
    await storyboard.start()
    stack.push_async_callback(storyboard.close)
    return {"storyboard": storyboard}


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
