"""The whole bot in-process, wired exactly as ``r2v run`` wires it, with a recording chat.

Provider tests point a provider's base URL at its loopback fake through settings and drive the
bot with the same plain requests a chat adapter sends: ``/character create``, ``/generate``.
The HTTP server listens on a socket bound here first, so the public URL (the webhooks' address)
is known before the bot starts.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.local_files import local_file
from bot.app import App, build
from bot.models import Actor, CommandRequest, Job, JobState, Reply
from bot.settings import load_settings
from tests.fakes.scripted import RecordingChat
from tests.media_factory import make_image, make_video, make_wav

USER = Actor(platform="console", server_id="test", user_id="tester", is_admin=True)


@dataclass
class Harness:
    app: App
    chat: RecordingChat
    tmp: Path
    public_url: str | None

    async def run(self, command: str, actor: Actor = USER, **options: Any) -> Reply:
        files = {k: local_file(v) if isinstance(v, Path) else v for k, v in options.items()}
        request = CommandRequest(actor=actor, command=command, options=files, channel_id="c")
        return await self.app.core.dispatch(request)

    async def character(self, name: str, *, voice: bool = False, video: bool = False) -> None:
        options: dict[str, Any] = {"name": name}
        if video:
            options["video"] = make_video(self.tmp / f"{name}.mp4", seconds=1.5)
        else:
            options["image"] = make_image(self.tmp / f"{name}.png", size=(320, 400))
        if voice:
            options["voice"] = make_wav(self.tmp / f"{name}.wav", seconds=1.5)
        reply = await self.run("character create", **options)
        assert not reply.is_error, reply.text

    async def generate(self, prompt: str, **options: Any) -> str:
        reply = await self.run("generate", prompt=prompt, **options)
        assert not reply.is_error and reply.job_id, reply.text
        return reply.job_id

    async def job(self, job_id: str) -> Job:
        job = await self.app.engine.job(job_id)
        assert job is not None
        return job

    async def finished(self, job_id: str, within: float = 30.0) -> Job:
        """Wait until the job ends (delivered, failed or cancelled) and answer it."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            job = await self.job(job_id)
            if job.state.is_final:
                return job
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"job {job_id} still {job.state} after {within} s")
            await asyncio.sleep(0.02)

    async def delivered(self, job_id: str, within: float = 30.0) -> Job:
        job = await self.finished(job_id, within)
        assert job.state is JobState.DELIVERED, f"{job.state}: {job.reason}"
        assert len(self.chat.videos(job_id)) == 1
        return job


@asynccontextmanager
async def running_bot(tmp: Path, *, public: bool = True, **settings: Any) -> AsyncIterator[Harness]:
    """The bot with ``settings`` (Settings field names) over a fresh data folder.

    ``public``: whether providers can reach us (``R2V_PUBLIC_URL`` set to our loopback address),
    which turns on webhooks and signed ``/media`` links.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    public_url = f"http://127.0.0.1:{sock.getsockname()[1]}" if public else None
    values: dict[str, Any] = {
        "data_dir": tmp / "data",
        "public_url": public_url,
        "poll_initial_seconds": 0.05,
        "poll_max_seconds": 0.2,
        "_env_file": None,
    }
    values.update(settings)
    chat = RecordingChat()
    app = await build(load_settings(**values), {"console": chat}, http_socket=sock)
    try:
        yield Harness(app, chat, tmp, public_url)
    finally:
        await app.close()
