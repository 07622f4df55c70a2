"""The whole bot in-process, wired exactly as ``r2v run`` wires it, with a recording chat.

Provider tests point a provider's base URL at its loopback fake through settings
(``bot_with``) and drive the bot with the same plain requests a chat adapter sends:
``/character create``, ``/generate``. The HTTP server listens on a socket bound here first, so
the public URL (the webhooks' address) is known before the bot starts. Narrower tests build a
provider's client alone against its fake (``client_alone``) and hand it requests built here.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from adapters.http.media import MediaLinks
from adapters.local_files import local_file
from adapters.providers.base import ProviderContext
from bot.app import App, build
from bot.models import Actor, CommandRequest, Job, JobState, MediaKind, Reply
from bot.ports import ProviderRequest, StagedReference
from bot.settings import Settings, load_settings
from tests.fakes.base import FakeProvider
from tests.fakes.scripted import RecordingChat
from tests.media_factory import make_image, make_video, make_wav

USER = Actor(platform="console", server_id="test", user_id="tester", is_admin=True)

#: Polling pushed out of the way: with it, only a webhook can wake a job within a test's patience.
NO_POLLING: dict[str, Any] = {"poll_initial_seconds": 30.0, "poll_max_seconds": 60.0}

Client = TypeVar("Client")


async def until(check: Callable[[], object], within: float = 5.0) -> None:
    """Wait until ``check()`` is true; a check that is a coroutine function is awaited."""
    deadline = time.monotonic() + within
    while True:
        answer = check()
        if inspect.isawaitable(answer):
            answer = await answer
        if answer:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def post_hook(url: str, body: bytes, headers: dict[str, str]) -> int:
    """POST a webhook as a provider would; the bot's answer."""
    async with httpx.AsyncClient() as client:
        return (await client.post(url, content=body, headers=headers)).status_code


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

    def delivered_bytes(self, job_id: str) -> bytes:
        """The one video posted for the job, as the chat received it."""
        (post,) = self.chat.videos(job_id)
        assert post.path is not None
        return post.path.read_bytes()


def bot_socket() -> tuple[socket.socket, str]:
    """A socket bound on 127.0.0.1 for the bot's HTTP server, and the address it answers at."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def bot_settings(tmp: Path, public_url: str | None, **settings: Any) -> Settings:
    """The bot's settings for a test: its data under ``tmp/data``, quick polling, no ``.env``;
    ``settings`` (Settings field names) go on top."""
    values: dict[str, Any] = {
        "data_dir": tmp / "data",
        "public_url": public_url,
        "poll_initial_seconds": 0.05,
        "poll_max_seconds": 0.2,
        "_env_file": None,
        **settings,
    }
    return load_settings(**values)


@asynccontextmanager
async def running_bot(tmp: Path, *, public: bool = True, **settings: Any) -> AsyncIterator[Harness]:
    """The bot with ``settings`` (Settings field names) over a fresh data folder.

    ``public``: whether providers can reach us (``R2V_PUBLIC_URL`` set to our loopback address),
    which turns on webhooks and signed ``/media`` links.
    """
    sock, address = bot_socket()
    public_url = address if public else None
    chat = RecordingChat()
    app = await build(
        bot_settings(tmp, public_url, **settings), {"console": chat}, http_socket=sock
    )
    try:
        yield Harness(app, chat, tmp, public_url)
    finally:
        await app.close()


def bot_with(
    tmp: Path, *fakes: FakeProvider, public: bool = True, **settings: Any
) -> AbstractAsyncContextManager[Harness]:
    """``running_bot`` whose providers are these fakes, tried in this order."""
    values: dict[str, Any] = {"provider": ",".join(fake.name for fake in fakes)}
    for fake in fakes:
        values.update(fake.settings())
    return running_bot(tmp, public=public, **values, **settings)


# A provider's client alone -----------------------------------------------------------------------


async def no_sleep(seconds: float) -> None:
    """Retries that do not wait."""


def provider_context(
    tmp: Path, fake: FakeProvider, client: httpx.AsyncClient, **settings: Any
) -> ProviderContext:
    """What the bot hands a provider's client, pointed at ``fake``; retries do not wait."""
    values: dict[str, Any] = {
        "_env_file": None,
        "data_dir": tmp / "direct",
        **fake.settings(),
        **settings,
    }
    loaded = load_settings(**values)
    links = MediaLinks(b"k" * 32, loaded.public_url)
    return ProviderContext(loaded, client, links, sleep=no_sleep)


@asynccontextmanager
async def client_alone(
    make: Callable[[ProviderContext], Client],
    tmp: Path,
    fake: FakeProvider,
    *,
    client_timeout: float = 5.0,
    **settings: Any,
) -> AsyncIterator[Client]:
    """A provider's client (``make`` builds it) against ``fake``, for API edges a chat command
    cannot reach; ``settings`` are the bot's."""
    async with httpx.AsyncClient(timeout=client_timeout) as client:
        yield make(provider_context(tmp, fake, client, **settings))


def staged(path: Path, label: str = "Image 1", *, voice: Path | None = None) -> StagedReference:
    """A reference as the bot stages it for a provider: a PNG image or an MP4 video, with a
    WAV voice riding along when given."""
    kind, mime = (
        (MediaKind.VIDEO, "video/mp4") if path.suffix == ".mp4" else (MediaKind.IMAGE, "image/png")
    )
    return StagedReference(
        label,
        kind,
        path,
        mime,
        voice_path=voice,
        voice_mime="audio/wav" if voice else None,
        blob=_sha256(path),
        voice_blob=_sha256(voice) if voice else None,
    )


def provider_request(*references: StagedReference, **fields: Any) -> ProviderRequest:
    """A request as the bot hands a provider: 5 s of 720p 16:9, no seed, no webhook."""
    values: dict[str, Any] = {
        "job_id": "j1",
        "prompt": "Image 1 waves",
        "references": references,
        "duration": 5,
        "resolution": "720p",
        "aspect_ratio": "16:9",
        "seed": None,
        "negative_prompt": "",
        "webhook_url": None,
        **fields,
    }
    return ProviderRequest(**values)


def image_request(tmp: Path, **fields: Any) -> ProviderRequest:
    """A one-image request, "Image 1 waves"."""
    return provider_request(staged(make_image(tmp / "alice.png")), **fields)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
