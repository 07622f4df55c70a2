"""Jobs: stored whole, moved forward only, every move recorded, one winner when moves race."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import replace

import pytest

from bot.models import Destination, Job, JobReference, JobSpec, JobState, MediaKind
from bot.ports import JobStore
from storage.characters import SqlCharacterStore
from storage.jobs import SqlJobStore, spec_from_dict, spec_to_dict
from storage.sql import SqlDatabase
from tests.storage.conftest import another_connection

SERVER = "discord:1"

#: A way to reach each state moving forward from queued.
PATHS: dict[JobState, list[JobState]] = {
    JobState.QUEUED: [],
    JobState.SUBMITTED: [JobState.SUBMITTED],
    JobState.RUNNING: [JobState.SUBMITTED, JobState.RUNNING],
    JobState.DELIVERING: [JobState.SUBMITTED, JobState.RUNNING, JobState.DELIVERING],
    JobState.DELIVERED: [
        JobState.SUBMITTED,
        JobState.RUNNING,
        JobState.DELIVERING,
        JobState.DELIVERED,
    ],
    JobState.FAILED: [JobState.FAILED],
    JobState.CANCELLED: [JobState.SUBMITTED, JobState.CANCELLED],
}


def ticking() -> Callable[[], float]:
    counter = itertools.count(5000)
    return lambda: float(next(counter))


@pytest.fixture
async def db(database: SqlDatabase) -> SqlDatabase:
    await SqlCharacterStore(database).ensure_server(SERVER, "discord")
    return database


@pytest.fixture
def store(db: SqlDatabase) -> SqlJobStore:
    return SqlJobStore(db, clock=ticking())


def make_job(job_id: str = "j1", *, user: str = "u1", created: float = 100.0) -> Job:
    references = (
        JobReference(
            label="Image 1",
            kind=MediaKind.IMAGE,
            blob="a" * 64,
            mime="image/png",
            source="@alice",
            voice_blob="b" * 64,
            voice_mime="audio/wav",
        ),
        JobReference(
            label="Video 1",
            kind=MediaKind.VIDEO,
            blob="c" * 64,
            mime="video/mp4",
            source="@ref1",
            duration=4.5,
        ),
    )
    spec = JobSpec(
        prompt="Image 1 waves to Video 1 — at dusk, «quoted»",
        original_prompt="@alice waves to @ref1 — at dusk, «quoted»",
        references=references,
        duration=5,
        resolution="720p",
        aspect_ratio="16:9",
        seed=42,
        negative_prompt="blur",
    )
    return Job(
        id=job_id,
        server_id=SERVER,
        user_id=user,
        provider="storyboard",
        state=JobState.QUEUED,
        spec=spec,
        destination=Destination("discord", "1", "chan", user, thread_id=None),
        created_at=created,
        updated_at=created,
        token_hash="hash",
        cost_estimate=0.5,
    )


async def job_in(store: SqlJobStore, state: JobState, job_id: str) -> Job:
    await store.create(make_job(job_id), [])
    job = await store.get(job_id)
    for step in PATHS[state]:
        job = await store.move(job_id, step)
    assert job is not None and job.state is state
    return job


def test_the_store_fits_the_port(db: SqlDatabase) -> None:
    port: JobStore = SqlJobStore(db)
    assert port is not None


def test_a_spec_survives_its_dict_form() -> None:
    spec = make_job().spec
    assert spec_from_dict(spec_to_dict(spec)) == spec


async def test_a_created_job_reads_back_whole(db: SqlDatabase, store: SqlJobStore) -> None:
    job = make_job()
    await store.create(job, ["a" * 64, "c" * 64, "a" * 64])

    assert await store.get("j1") == job
    assert await store.events("j1") == [(100.0, None, "queued", "")]
    assert await db.blob_in_use("a" * 64)
    assert await db.blob_in_use("c" * 64)
    assert await store.get("nope") is None


async def test_only_queued_jobs_can_be_created(store: SqlJobStore) -> None:
    with pytest.raises(ValueError):
        await store.create(replace(make_job(), state=JobState.RUNNING), [])
    assert await store.get("j1") is None


async def test_a_job_moves_forward_and_every_move_is_recorded(store: SqlJobStore) -> None:
    await store.create(make_job(), [])

    submitted = await store.move("j1", JobState.SUBMITTED, detail="sent", task_id="t-1")
    assert submitted is not None
    assert submitted.state is JobState.SUBMITTED
    assert submitted.task_id == "t-1"
    assert submitted.submitted_at == submitted.updated_at
    assert submitted.finished_at is None

    running = await store.move("j1", JobState.RUNNING, progress=0.25)
    assert running is not None and running.progress == 0.25
    delivering = await store.move("j1", JobState.DELIVERING, result_blob="d" * 64)
    assert delivering is not None and delivering.finished_at is None
    delivered = await store.move("j1", JobState.DELIVERED, detail="posted")
    assert delivered is not None
    assert delivered.finished_at is not None and delivered.finished_at == delivered.updated_at
    assert delivered.result_blob == "d" * 64
    assert delivered.submitted_at == submitted.submitted_at
    assert await store.get("j1") == delivered

    events = await store.events("j1")
    assert [(e[1], e[2], e[3]) for e in events] == [
        (None, "queued", ""),
        ("queued", "submitted", "sent"),
        ("submitted", "running", ""),
        ("running", "delivering", ""),
        ("delivering", "delivered", "posted"),
    ]
    times = [e[0] for e in events]
    assert times == sorted(times)


async def test_a_failed_job_records_its_reason_and_finish(store: SqlJobStore) -> None:
    await store.create(make_job(), [])
    failed = await store.move("j1", JobState.FAILED, detail="refused", reason="the prompt")

    assert failed is not None
    assert failed.reason == "the prompt"
    assert failed.finished_at is not None
    assert failed.submitted_at is None


@pytest.mark.parametrize("state", list(JobState))
async def test_moves_that_are_not_forward_change_nothing(
    store: SqlJobStore, state: JobState
) -> None:
    job = await job_in(store, state, "j1")
    history = await store.events("j1")
    refused = [new for new in JobState if not state.can_move_to(new)]
    assert state in refused  # a repeated event is refused too

    for new in refused:
        assert await store.move("j1", new, detail="late", reason="should not stick") is None

    assert await store.get("j1") == job
    assert await store.events("j1") == history


async def test_moving_an_unknown_job_answers_none(store: SqlJobStore) -> None:
    assert await store.move("ghost", JobState.SUBMITTED) is None


async def test_unknown_fields_are_refused_before_anything_changes(store: SqlJobStore) -> None:
    await store.create(make_job(), [])

    with pytest.raises(ValueError, match="colour"):
        await store.move("j1", JobState.SUBMITTED, colour="red")
    with pytest.raises(ValueError, match="state"):
        await store.update("j1", state="delivered")
    with pytest.raises(ValueError):
        await store.update("j1", spec="{}")

    assert await store.get("j1") == make_job()
    assert len(await store.events("j1")) == 1


async def test_update_sets_fields_without_moving(store: SqlJobStore) -> None:
    await store.create(make_job(), [])

    job = await store.update(
        "j1", progress=0.5, next_poll_at=200.0, poll_count=3, thread_id="th", status_message_id="m"
    )

    assert job.state is JobState.QUEUED
    assert (job.progress, job.next_poll_at, job.poll_count) == (0.5, 200.0, 3)
    assert job.destination.thread_id == "th"
    assert job.destination.status_message_id == "m"
    assert job.updated_at > make_job().updated_at
    assert await store.get("j1") == job
    assert len(await store.events("j1")) == 1
    with pytest.raises(LookupError):
        await store.update("ghost", progress=1.0)


async def test_unfinished_jobs_oldest_first(store: SqlJobStore) -> None:
    for job_id, created in [("late", 30.0), ("early", 10.0), ("middle", 20.0), ("done", 5.0)]:
        await store.create(make_job(job_id, created=created), [])
    await store.move("done", JobState.FAILED)
    await store.move("middle", JobState.SUBMITTED)

    assert [job.id for job in await store.unfinished()] == ["early", "middle", "late"]
    light = await store.open_jobs()
    assert [(j.id, j.state) for j in light] == [
        ("early", JobState.QUEUED),
        ("middle", JobState.SUBMITTED),
        ("late", JobState.QUEUED),
    ]
    assert {(j.server_id, j.user_id, j.platform) for j in light} == {
        (job.server_id, job.user_id, job.destination.platform) for job in await store.unfinished()
    }


async def test_recent_jobs_of_a_user_newest_first(store: SqlJobStore) -> None:
    for n in range(4):
        await store.create(make_job(f"mine-{n}", created=float(n)), [])
    await store.create(make_job("theirs", user="u2", created=9.0), [])

    recent = await store.recent_for_user(SERVER, "u1", limit=3)

    assert [job.id for job in recent] == ["mine-3", "mine-2", "mine-1"]
    assert await store.recent_for_user("discord:other", "u1", limit=3) == []


async def test_add_blob_holds_on_to_a_result_once(db: SqlDatabase, store: SqlJobStore) -> None:
    await store.create(make_job(), [])
    result = "e" * 64
    assert not await db.blob_in_use(result)

    await store.add_blob("j1", result, "result")
    await store.add_blob("j1", result, "result")

    assert await db.blob_in_use(result)
    rows = await db.fetchall("SELECT role FROM job_blobs WHERE blob = ?", (result,))
    assert [row["role"] for row in rows] == ["result"]


async def test_two_tasks_moving_one_job_at_once_have_one_winner(store: SqlJobStore) -> None:
    await store.create(make_job(), [])

    outcomes = await asyncio.gather(
        store.move("j1", JobState.SUBMITTED, detail="webhook", task_id="from-webhook"),
        store.move("j1", JobState.SUBMITTED, detail="poll", task_id="from-poll"),
    )

    winners = [job for job in outcomes if job is not None]
    assert len(winners) == 1
    assert await store.get("j1") == winners[0]
    assert len(await store.events("j1")) == 2


async def test_a_cancel_and_a_failure_racing_from_two_processes_have_one_winner(
    db: SqlDatabase, store: SqlJobStore
) -> None:
    await store.create(make_job(), [])
    other_process = await another_connection(db)
    try:
        elsewhere = SqlJobStore(other_process)
        outcomes = await asyncio.gather(
            store.move("j1", JobState.CANCELLED, detail="user"),
            elsewhere.move("j1", JobState.FAILED, detail="timeout"),
        )
    finally:
        await other_process.close()

    winners = [job for job in outcomes if job is not None]
    assert len(winners) == 1
    final = await store.get("j1")
    assert final is not None and final.state is winners[0].state
    assert [e[2] for e in await store.events("j1")] == ["queued", final.state.value]


async def test_delivered_jobs_for_the_gallery_newest_first_with_their_video(
    db: SqlDatabase, store: SqlJobStore
) -> None:
    result = "f" * 64
    for n, created in enumerate((100.0, 300.0, 200.0)):
        await store.create(make_job(f"j{n}", created=created), [])
        for state in PATHS[JobState.DELIVERED]:
            fields = {"result_blob": result} if state is JobState.DELIVERING else {}
            await store.move(f"j{n}", state, **fields)
    await store.create(make_job("unfinished", created=400.0), [])

    assert [job.id for job in await store.delivered(SERVER, 10)] == ["j1", "j2", "j0"]
    assert [job.id for job in await store.delivered(SERVER, 1)] == ["j1"]
    found = await store.delivered_result(SERVER, result)
    assert found is not None and found.id == "j1"
    assert await store.delivered_result("discord:other", result) is None
