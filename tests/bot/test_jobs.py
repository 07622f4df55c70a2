"""The job engine against real storage, a scripted provider and a recording chat."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from bot.errors import ProviderError, Refusal, WebhookRejected
from bot.jobs import EngineLimits, JobEngine, UnknownJob
from bot.models import Actor, Destination, Job, JobReference, JobSpec, JobState, MediaKind
from bot.ports import BlobStore, JobStore, LabelStyle, TaskState
from storage.blobs import FileBlobStore
from storage.db import Database
from storage.jobs import SqlJobStore
from tests.fakes.scripted import GOOD_SIGNATURE, SIGNATURE_HEADER, RecordingChat, ScriptedProvider
from tests.harness import until
from tests.media_factory import make_image, make_video

ALICE = Actor(platform="console", server_id="s1", user_id="alice")
BOB = Actor(platform="console", server_id="s1", user_id="bob")
ADMIN = Actor(platform="console", server_id="s1", user_id="root", is_admin=True)
FAST = EngineLimits(poll_initial_seconds=0.02, poll_max_seconds=0.05)

TEST_SECRET = b"test-secret"


@dataclass
class World:
    tmp: Path
    db: Database
    store: SqlJobStore
    blobs: FileBlobStore
    provider: ScriptedProvider
    chat: RecordingChat
    reference: str
    engines: list[JobEngine]

    def engine(
        self,
        limits: EngineLimits = FAST,
        *,
        chat: RecordingChat | None = None,
        blobs: BlobStore | None = None,
        store: JobStore | None = None,
        **options: Any,
    ) -> JobEngine:
        """An engine on this world (its store, blobs, provider and chat unless others are
        given); ``options`` are the engine's (``instance_id``, ``wakeups``…)."""
        engine = JobEngine(
            store or self.store,
            blobs or self.blobs,
            {"scripted": self.provider},
            {"console": chat or self.chat},
            secret=TEST_SECRET,
            limits=limits,
            webhook_base=lambda provider: "http://bot.test",
            **options,
        )
        self.engines.append(engine)
        return engine

    def spec(self, prompt: str = "Image 1 waves") -> JobSpec:
        ref = JobReference(
            label="Image 1",
            kind=MediaKind.IMAGE,
            blob=self.reference,
            mime="image/png",
            source="@alice",
        )
        return JobSpec(
            prompt=prompt,
            original_prompt=prompt.replace("Image 1", "@alice"),
            references=(ref,),
            duration=3,
            resolution="720p",
            aspect_ratio="16:9",
        )

    async def create(self, engine: JobEngine, actor: Actor = ALICE) -> Job:
        destination = Destination(
            platform="console", server_id=actor.server_id, channel_id="c", user_id=actor.user_id
        )
        return await engine.create(actor, destination, self.spec(), "scripted")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    db = await Database.open(tmp_path / "db.sqlite3")
    blobs = FileBlobStore(tmp_path / "blobs", db.blob_in_use)
    image = make_image(tmp_path / "ref.png")
    reference = await blobs.put_file(image)
    video = make_video(tmp_path / "result.mp4", seconds=1.0)
    w = World(
        tmp_path,
        db,
        SqlJobStore(db),
        blobs,
        ScriptedProvider(video),
        RecordingChat(),
        reference,
        [],
    )
    yield w
    for engine in w.engines:
        await engine.close()
    await db.close()


async def failing_over(world: World, backup: ScriptedProvider, **spec: Any) -> Job:
    """Alice's job for "scripted", which may fall back to ``backup``, on an engine with both."""
    engine = JobEngine(
        world.store,
        world.blobs,
        {"scripted": world.provider, "backup": backup},
        {"console": world.chat},
        secret=TEST_SECRET,
        limits=FAST,
    )
    world.engines.append(engine)
    with_fallback = replace(world.spec(), fallbacks=("backup",), **spec)
    return await engine.create(
        ALICE, Destination("console", "s1", "c", "alice"), with_fallback, "scripted"
    )


async def state_is(world: World, job_id: str, state: JobState) -> bool:
    job = await world.store.get(job_id)
    return job is not None and job.state is state


async def test_a_job_goes_through_every_state_and_is_delivered_once(world: World) -> None:
    engine = world.engine()
    job = await world.create(engine)
    assert job.state is JobState.QUEUED
    assert job.cost_estimate == pytest.approx(0.3)
    await until(lambda: state_is(world, job.id, JobState.SUBMITTED))
    request = world.provider.submitted[0]
    assert request.webhook_url is not None
    assert request.webhook_url.startswith(f"http://bot.test/hooks/scripted/{job.id}?t=")
    assert request.references[0].path == world.blobs.path(world.reference)

    world.provider.set("task-1", TaskState.RUNNING, progress=0.4)
    await until(lambda: state_is(world, job.id, JobState.RUNNING))
    world.provider.set("task-1", TaskState.SUCCEEDED)
    await until(lambda: state_is(world, job.id, JobState.DELIVERED))

    assert world.chat.states(job.id) == [
        JobState.QUEUED,
        JobState.SUBMITTED,
        JobState.RUNNING,
        JobState.DELIVERING,
        JobState.DELIVERED,
    ]
    videos = world.chat.videos(job.id)
    assert len(videos) == 1
    assert (
        videos[0].path is not None
        and videos[0].path.read_bytes() == world.provider.result.read_bytes()
    )
    done = await world.store.get(job.id)
    assert done is not None and done.result_duration == pytest.approx(1.0, abs=0.1)
    events = await world.store.events(job.id)
    assert [e[2] for e in events] == ["queued", "submitted", "running", "delivering", "delivered"]
    # a late webhook for a finished job changes nothing
    token = request.webhook_url.split("t=")[1]
    before = len(world.chat.posts)
    await engine.on_webhook("scripted", job.id, token, {SIGNATURE_HEADER: GOOD_SIGNATURE}, b"{}")
    await asyncio.sleep(0.1)
    assert len(world.chat.posts) == before
    assert len(await world.store.events(job.id)) == 5


async def test_webhooks_wake_the_job_and_duplicates_deliver_once(world: World) -> None:
    slow = EngineLimits(poll_initial_seconds=30, poll_max_seconds=30)
    engine = world.engine(slow)
    job = await world.create(engine)
    await until(lambda: state_is(world, job.id, JobState.SUBMITTED))
    url = world.provider.submitted[0].webhook_url
    assert url is not None
    token = url.split("t=")[1]
    headers = {SIGNATURE_HEADER: GOOD_SIGNATURE}
    world.provider.set("task-1", TaskState.SUCCEEDED)
    # out of order and repeated: many wake-ups at once, polling far away
    await asyncio.gather(
        *(engine.on_webhook("scripted", job.id, token, headers, b"{}") for _ in range(20))
    )
    await until(lambda: state_is(world, job.id, JobState.DELIVERED))
    assert len(world.chat.videos(job.id)) == 1


async def test_bad_token_signature_or_job_change_nothing(world: World) -> None:
    engine = world.engine(EngineLimits(poll_initial_seconds=30, poll_max_seconds=30))
    job = await world.create(engine)
    await until(lambda: state_is(world, job.id, JobState.SUBMITTED))
    url = world.provider.submitted[0].webhook_url
    assert url is not None
    token = url.split("t=")[1]
    world.provider.set("task-1", TaskState.SUCCEEDED)
    calls = world.provider.status_calls
    with pytest.raises(WebhookRejected):
        await engine.on_webhook(
            "scripted", job.id, "forged", {SIGNATURE_HEADER: GOOD_SIGNATURE}, b"{}"
        )
    with pytest.raises(WebhookRejected):
        await engine.on_webhook("scripted", job.id, token, {SIGNATURE_HEADER: "bad"}, b"{}")
    with pytest.raises(UnknownJob):
        await engine.on_webhook("scripted", "jnope", token, {}, b"{}")
    with pytest.raises(UnknownJob):
        await engine.on_webhook("other", job.id, token, {}, b"{}")
    await asyncio.sleep(0.1)
    assert world.provider.status_calls == calls
    assert await state_is(world, job.id, JobState.SUBMITTED)


async def test_polling_alone_finishes_a_job_without_webhooks(world: World) -> None:
    world.provider.capabilities = world.provider.capabilities.__class__(
        name="scripted", webhooks=False
    )
    engine = world.engine()
    job = await world.create(engine)
    await until(lambda: state_is(world, job.id, JobState.SUBMITTED))
    assert world.provider.submitted[0].webhook_url is None
    world.provider.set("task-1", TaskState.SUCCEEDED)
    await until(lambda: state_is(world, job.id, JobState.DELIVERED))


async def test_a_provider_failure_ends_in_failed_with_its_reason(world: World) -> None:
    engine = world.engine()
    job = await world.create(engine)
    await until(lambda: state_is(world, job.id, JobState.SUBMITTED))
    world.provider.set("task-1", TaskState.FAILED, error="content refused")
    await until(lambda: state_is(world, job.id, JobState.FAILED))
    failed = await world.store.get(job.id)
    assert failed is not None and failed.reason is not None and "content refused" in failed.reason
    assert "❌ Failed" in world.chat.posts[-1].text


async def test_a_refused_submit_fails_the_job(world: World) -> None:
    world.provider.submit_error = ProviderError("the prompt was refused", retryable=False)
    engine = world.engine()
    job = await world.create(engine)
    await until(lambda: state_is(world, job.id, JobState.FAILED))
    failed = await world.store.get(job.id)
    assert failed is not None and failed.reason == "the prompt was refused"


async def test_a_result_over_the_cap_is_refused_without_reading_it_all(world: World) -> None:
    assert world.provider.result.stat().st_size > 4 * 1024
    engine = world.engine(
        EngineLimits(poll_initial_seconds=0.02, poll_max_seconds=0.05, max_result_bytes=1024)
    )
    job = await world.create(engine)
    await until(lambda: state_is(world, job.id, JobState.SUBMITTED))
    world.provider.set("task-1", TaskState.SUCCEEDED)
    await until(lambda: state_is(world, job.id, JobState.FAILED))
    failed = await world.store.get(job.id)
    assert failed is not None and failed.reason is not None and "larger than" in failed.reason
    assert failed.result_blob is None
    assert not list((world.tmp / "blobs").glob("??/*"))[1:], "only the reference blob is stored"


async def test_a_third_job_of_one_user_waits_with_its_queue_position(world: World) -> None:
    engine = world.engine()
    first, second = await world.create(engine), await world.create(engine)
    third = await world.create(engine)
    await until(lambda: state_is(world, second.id, JobState.SUBMITTED))
    await asyncio.sleep(0.1)
    assert await state_is(world, third.id, JobState.QUEUED)
    assert len(world.provider.submitted) == 2
    waiting = [p.text for p in world.chat.posts if p.job == third.id]
    assert any("number 1 in this server's queue" in text for text in waiting)
    # another user is not held back by alice's limit
    other = await world.create(engine, BOB)
    await until(lambda: state_is(world, other.id, JobState.SUBMITTED))
    # when alice's first job ends, the third runs
    world.provider.set("task-1", TaskState.SUCCEEDED)
    await until(lambda: state_is(world, first.id, JobState.DELIVERED))
    await until(lambda: state_is(world, third.id, JobState.SUBMITTED))


async def test_cancel_by_owner_or_admin_only(world: World) -> None:
    engine = world.engine(EngineLimits(poll_initial_seconds=30, poll_max_seconds=30))
    job = await world.create(engine)
    await until(lambda: state_is(world, job.id, JobState.SUBMITTED))
    with pytest.raises(Refusal) as caught:
        await engine.cancel(BOB, job.id)
    assert caught.value.code == "not_allowed"
    other_server = Actor(platform="console", server_id="s2", user_id="alice")
    with pytest.raises(Refusal) as caught:
        await engine.cancel(other_server, job.id)
    assert caught.value.code == "unknown_job"
    cancelled = await engine.cancel(ADMIN, job.id)
    assert cancelled.state is JobState.CANCELLED
    assert world.provider.cancelled == ["task-1"]
    with pytest.raises(Refusal) as caught:
        await engine.cancel(ALICE, job.id)
    assert caught.value.code == "job_finished"


async def test_unfinished_jobs_resume_after_a_restart(world: World) -> None:
    first_life = world.engine(EngineLimits(poll_initial_seconds=30, poll_max_seconds=30))
    submitted = await world.create(first_life)
    await until(lambda: state_is(world, submitted.id, JobState.SUBMITTED))
    await first_life.close()
    # a job written but never submitted, as if the process died right after writing it
    never = Job(
        id="jnever00001",
        server_id=BOB.server_key,
        user_id="bob",
        provider="scripted",
        state=JobState.QUEUED,
        spec=world.spec(),
        created_at=1.0,
        updated_at=1.0,
        destination=Destination("console", "s1", "c", "bob"),
    )
    await world.store.create(never, [world.reference])

    world.provider.set("task-1", TaskState.SUCCEEDED)
    second_life = world.engine()
    await second_life.start()
    await until(lambda: state_is(world, submitted.id, JobState.DELIVERED))
    await until(lambda: state_is(world, never.id, JobState.SUBMITTED))
    assert len(world.chat.videos(submitted.id)) == 1
    assert len(world.provider.submitted) == 2


async def test_a_job_caught_delivering_is_delivered_once_on_restart(world: World) -> None:
    engine = world.engine(EngineLimits(poll_initial_seconds=30, poll_max_seconds=30))
    job = await world.create(engine)
    await until(lambda: state_is(world, job.id, JobState.SUBMITTED))
    await engine.close()
    result = await world.blobs.put_file(world.provider.result)
    await world.store.add_blob(job.id, result, "result")
    assert await world.store.move(job.id, JobState.RUNNING) is not None
    assert await world.store.move(job.id, JobState.DELIVERING, result_blob=result) is not None
    again = world.engine()
    await again.start()
    await until(lambda: state_is(world, job.id, JobState.DELIVERED))
    await again.wait_idle()
    assert len(world.chat.videos(job.id)) == 1


async def test_capacity_errors_fail_over_and_relabel_for_the_next_provider(world: World) -> None:
    backup = ScriptedProvider(world.provider.result)
    backup.capabilities = replace(
        backup.capabilities, name="backup", label_style=LabelStyle.CHARACTER
    )
    world.provider.submit_error = ProviderError("busy", retryable=True)
    job = await failing_over(world, backup, template="{0} waves")
    await until(lambda: state_is(world, job.id, JobState.SUBMITTED))
    moved = await world.store.get(job.id)
    assert moved is not None and moved.provider == "backup"
    assert backup.submitted[0].prompt == "character1 waves"
    assert backup.submitted[0].references[0].label == "character1"
    backup.set("task-1", TaskState.SUCCEEDED)
    await until(lambda: state_is(world, job.id, JobState.DELIVERED))


async def test_an_authentication_error_never_fails_over(world: World) -> None:
    backup = ScriptedProvider(world.provider.result)
    world.provider.submit_error = ProviderError(
        "scripted refused the bot's key; check SCRIPTED_KEY", auth=True
    )
    job = await failing_over(world, backup)
    await until(lambda: state_is(world, job.id, JobState.FAILED))
    failed = await world.store.get(job.id)
    assert failed is not None and failed.reason is not None and "SCRIPTED_KEY" in failed.reason
    assert backup.submitted == []


async def test_when_every_provider_is_busy_the_job_fails_saying_so(world: World) -> None:
    world.provider.submit_error = ProviderError("scripted is busy", retryable=True)
    engine = world.engine()
    job = await world.create(engine)
    await until(lambda: state_is(world, job.id, JobState.FAILED))
    failed = await world.store.get(job.id)
    assert (
        failed is not None and failed.reason == "no provider could take the job: scripted is busy"
    )
