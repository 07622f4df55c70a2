"""The engine's part in running several instances: webhook tokens checked without the
database, posting exactly once across a crash, waiting out storage faults, draining."""

from __future__ import annotations

import asyncio
import errno
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from bot.errors import Refusal, StorageUnavailable, WebhookRejected
from bot.jobs import hash_token, webhook_token
from bot.models import Job, JobState
from bot.ports import TaskState
from storage.blobs import FileBlobStore, FileBlobWriter
from storage.jobs import SqlJobStore
from storage.postgres import PostgresDatabase
from tests.bot.test_jobs import TEST_SECRET, World, state_is
from tests.fakes.scripted import GOOD_SIGNATURE, SIGNATURE_HEADER, RecordingChat
from tests.harness import until
from tests.postgres import drop_schema, new_schema, require_postgres

SIGNED = {SIGNATURE_HEADER: GOOD_SIGNATURE}


async def test_a_webhook_is_checked_without_the_database(world: World) -> None:
    engine = world.engine()
    token = webhook_token(TEST_SECRET, "scripted", "j0123456789")
    await world.db.close()  # no database at all: the HMAC alone vouches for the job
    await engine.on_webhook("scripted", "j0123456789", token, SIGNED, b"{}")
    with pytest.raises(WebhookRejected):
        await engine.on_webhook("scripted", "j0123456789", token, {}, b"{}")


async def test_a_token_from_before_the_shared_secret_still_works(world: World) -> None:
    engine = world.engine()
    job = await world.create(engine)
    await world.store.update(job.id, token_hash=hash_token("old-per-job-token"))
    await engine.on_webhook("scripted", job.id, "old-per-job-token", SIGNED, b"{}")
    with pytest.raises(WebhookRejected):
        await engine.on_webhook("scripted", job.id, "guessed", SIGNED, b"{}")


class PostsThenDies(RecordingChat):
    """Posts the video, then hangs as a process would that is killed before recording it."""

    async def deliver_video(self, job: Job, video: Path, text: str) -> None:
        await super().deliver_video(job, video, text)
        await asyncio.Event().wait()


async def test_a_video_posted_before_a_crash_is_not_posted_again(world: World) -> None:
    chat = PostsThenDies()
    first = world.engine(chat=chat, instance_id="first")
    await first.start()
    job = await world.create(first)
    await until(lambda: state_is(world, job.id, JobState.SUBMITTED))
    world.provider.set("task-1", TaskState.SUCCEEDED)
    await until(lambda: len(chat.delivered) == 1)
    await first.close()  # "killed": the post was made, its outcome never recorded
    assert (await world.store.get(job.id)).state is JobState.DELIVERING  # type: ignore[union-attr]
    await world.store.release("first")

    second = world.engine(chat=chat, instance_id="second")
    await second.start()
    await until(lambda: state_is(world, job.id, JobState.DELIVERED))
    assert len(chat.delivered) == 1


class FlakyDisk(FileBlobStore):
    """The blob store with a full disk until ``fail`` is turned off (the store's write seam)."""

    fail = True

    @asynccontextmanager
    async def writer(self, max_bytes: int) -> AsyncIterator[FileBlobWriter]:
        if self.fail:
            raise OSError(errno.ENOSPC, "No space left on device")
        async with super().writer(max_bytes) as writer:
            yield writer


async def test_a_full_disk_is_waited_out_and_the_job_finishes(world: World) -> None:
    disk = FlakyDisk(world.tmp / "blobs", world.db.blob_in_use)
    engine = world.engine(blobs=disk)
    await engine.start()
    job = await world.create(engine)
    await until(lambda: state_is(world, job.id, JobState.SUBMITTED))
    world.provider.set("task-1", TaskState.SUCCEEDED)
    await asyncio.sleep(1.5)  # the fetch fails and is retried; the job keeps its state
    stuck = await world.store.get(job.id)
    assert stuck is not None and stuck.state is JobState.SUBMITTED and stuck.reason is None
    disk.fail = False
    await until(lambda: state_is(world, job.id, JobState.DELIVERED), within=10.0)
    assert len(world.chat.delivered) == 1


async def test_drain_hands_jobs_over_at_once(world: World) -> None:
    leaving = world.engine()
    await leaving.start()
    job = await world.create(leaving)
    await until(lambda: state_is(world, job.id, JobState.SUBMITTED))
    await leaving.drain(5.0)
    assert leaving.draining
    other = SqlJobStore(world.db)
    claim = await other.claim(
        "other", 30.0, platforms=["console"], user_open_jobs=2, server_open_jobs=10
    )
    assert [j.id for j in claim.taken] == [job.id]  # no wait for the lease to run out


async def test_a_draining_instance_takes_no_new_command(world: World) -> None:
    engine = world.engine()
    await engine.start()
    await engine.drain(1.0)
    with pytest.raises(Refusal) as refused:
        await world.create(engine)
    assert refused.value.code == "shutting_down"


async def test_a_lost_postgresql_connection_is_waited_out(world: World) -> None:
    """Every connection of the pool is cut mid-job (a restarted server, a network cut): the
    job keeps its state and finishes once the pool reconnects."""
    name = "r2v-test-" + secrets.token_hex(4)
    url = await require_postgres()
    schema = await new_schema(url)
    pg = await PostgresDatabase.open(url, schema=schema, application_name=name)
    try:
        store = SqlJobStore(pg)
        engine = world.engine(store=store, wakeups=pg)
        await engine.start()
        job = await world.create(engine)

        async def stored_state(state: JobState) -> bool:
            try:
                found = await store.get(job.id)
            except StorageUnavailable:  # this test's own reads see the cut too
                return False
            return found is not None and found.state is state

        await until(lambda: stored_state(JobState.SUBMITTED))
        admin = await asyncpg.connect(url)
        try:
            cut = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = $1",
                name,
            )
        finally:
            await admin.close()
        assert cut >= 1
        world.provider.set("task-1", TaskState.SUCCEEDED)
        await until(lambda: stored_state(JobState.DELIVERED), within=20.0)
        assert len(world.chat.delivered) == 1
    finally:
        await engine.close()
        await pg.close()
        await drop_schema(url, schema)
