"""The HTTP server: webhook answers (202, 401, 404, 413) and /healthz, over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from adapters.http import HttpServer, build_app
from bot.jobs import EngineLimits, JobEngine
from bot.models import Actor, Destination, JobReference, JobSpec, JobState, MediaKind
from bot.ports import TaskState
from storage.blobs import FileBlobStore
from storage.db import Database
from storage.jobs import SqlJobStore
from tests.fakes.scripted import GOOD_SIGNATURE, SIGNATURE_HEADER, RecordingChat, ScriptedProvider
from tests.media_factory import make_image, make_video

ALICE = Actor(platform="console", server_id="s1", user_id="alice")


class Bot:
    def __init__(
        self,
        engine: JobEngine,
        store: SqlJobStore,
        provider: ScriptedProvider,
        client: httpx.AsyncClient,
        chat: RecordingChat,
    ) -> None:
        self.engine, self.store, self.provider, self.client, self.chat = (
            engine,
            store,
            provider,
            client,
            chat,
        )

    async def submitted_job(self, reference: str) -> tuple[str, str]:
        spec = JobSpec(
            prompt="Image 1 waves",
            original_prompt="@a waves",
            duration=2,
            resolution="720p",
            aspect_ratio="16:9",
            references=(JobReference("Image 1", MediaKind.IMAGE, reference, "image/png", "@a"),),
        )
        job = await self.engine.create(
            ALICE, Destination("console", "s1", "c", "alice"), spec, "scripted"
        )
        for _ in range(200):
            current = await self.store.get(job.id)
            if current and current.state is JobState.SUBMITTED:
                break
            await asyncio.sleep(0.01)
        url = self.provider.submitted[-1].webhook_url
        assert url is not None
        return job.id, url.split("t=")[1]


@pytest.fixture
async def bot(tmp_path: Path) -> AsyncIterator[tuple[Bot, str]]:
    db = await Database.open(tmp_path / "db.sqlite3")
    blobs = FileBlobStore(tmp_path / "blobs", db.blob_in_use)
    reference = await blobs.put_file(make_image(tmp_path / "a.png"))
    store = SqlJobStore(db)
    provider = ScriptedProvider(make_video(tmp_path / "out.mp4", seconds=1.0))
    chat = RecordingChat()
    engine = JobEngine(
        store,
        blobs,
        {"scripted": provider},
        {"console": chat},
        secret=b"test-secret",
        limits=EngineLimits(poll_initial_seconds=30, poll_max_seconds=30),
        webhook_base=lambda p: "http://unused",
    )

    async def health() -> dict[str, object]:
        return {"ok": True, "database": True, "open_jobs": len(await store.unfinished())}

    server = HttpServer(build_app(engine, health), "127.0.0.1", 0)
    await server.start()
    async with httpx.AsyncClient(base_url=server.local_url) as client:
        yield Bot(engine, store, provider, client, chat), reference
    await engine.close()
    await server.close()
    await db.close()


async def test_a_good_webhook_is_answered_at_once_and_wakes_the_job(
    bot: tuple[Bot, str],
) -> None:
    b, reference = bot
    job_id, token = await b.submitted_job(reference)
    b.provider.set("task-1", TaskState.SUCCEEDED)
    answer = await b.client.post(
        f"/hooks/scripted/{job_id}",
        params={"t": token},
        headers={SIGNATURE_HEADER: GOOD_SIGNATURE},
        content=b"{}",
    )
    assert answer.status_code == 202
    for _ in range(300):
        job = await b.store.get(job_id)
        if job and job.state is JobState.DELIVERED:
            break
        await asyncio.sleep(0.01)
    assert job is not None and job.state is JobState.DELIVERED
    assert len(b.chat.videos(job_id)) == 1


@pytest.mark.parametrize(
    ("path", "token", "signature", "status"),
    [
        ("/hooks/scripted/{job}", "forged", GOOD_SIGNATURE, 401),
        ("/hooks/scripted/{job}", None, GOOD_SIGNATURE, 401),
        ("/hooks/scripted/{job}", "{token}", "bad", 401),
        ("/hooks/scripted/jdoesnotexist", "{token}", GOOD_SIGNATURE, 404),
        ("/hooks/otherprovider/{job}", "{token}", GOOD_SIGNATURE, 404),
    ],
)
async def test_bad_webhooks_are_refused_and_change_nothing(
    bot: tuple[Bot, str], path: str, token: str | None, signature: str, status: int
) -> None:
    b, reference = bot
    job_id, good_token = await b.submitted_job(reference)
    b.provider.set("task-1", TaskState.SUCCEEDED)
    calls = b.provider.status_calls
    params = {"t": token.format(token=good_token)} if token else {}
    answer = await b.client.post(
        path.format(job=job_id), params=params, headers={SIGNATURE_HEADER: signature}, content=b"{}"
    )
    assert answer.status_code == status
    await asyncio.sleep(0.1)
    job = await b.store.get(job_id)
    assert job is not None and job.state is JobState.SUBMITTED
    assert b.provider.status_calls == calls


async def test_a_webhook_body_over_one_megabyte_gets_413(bot: tuple[Bot, str]) -> None:
    b, reference = bot
    job_id, token = await b.submitted_job(reference)
    answer = await b.client.post(
        f"/hooks/scripted/{job_id}",
        params={"t": token},
        headers={SIGNATURE_HEADER: GOOD_SIGNATURE},
        content=b"x" * (1024 * 1024 + 1),
    )
    assert answer.status_code == 413
    job = await b.store.get(job_id)
    assert job is not None and job.state is JobState.SUBMITTED


async def test_healthz_reports_database_open_jobs_and_version(bot: tuple[Bot, str]) -> None:
    b, reference = bot
    await b.submitted_job(reference)
    answer = await b.client.get("/healthz")
    assert answer.status_code == 200
    body = answer.json()
    assert body["ok"] is True and body["database"] is True
    assert body["open_jobs"] == 1
    assert body["version"]
