"""Leases on both databases: one owner per job, limits counted in the claim, fenced writes."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from bot.errors import LeaseLost, Refusal
from bot.models import JobState
from bot.quotas import Admission, Usage
from storage.characters import SqlCharacterStore
from storage.jobs import SqlJobStore
from storage.sql import SqlDatabase
from tests.storage.test_jobs import SERVER, make_job


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def setup(database: SqlDatabase) -> tuple[SqlJobStore, Clock]:
    await SqlCharacterStore(database).ensure_server(SERVER, "discord")
    clock = Clock()
    return SqlJobStore(database, clock=clock), clock


def claim(store: SqlJobStore, owner: str, user_jobs: int = 2, server_jobs: int = 10):  # type: ignore[no-untyped-def]
    return store.claim(
        owner,
        30.0,
        platforms=["discord"],
        user_open_jobs=user_jobs,
        server_open_jobs=server_jobs,
    )


async def test_one_owner_per_job_and_limits_across_owners(
    setup: tuple[SqlJobStore, Clock],
) -> None:
    store, _ = setup
    created = itertools.count(100)
    for n in range(5):
        await store.create(make_job(f"j{n}", user="u1", created=float(next(created))), [])
    first = await claim(store, "a")
    second = await claim(store, "b")
    # u1 may run two at once, whichever instance counts: a took two, b none.
    assert [j.id for j in first.taken] == ["j0", "j1"]
    assert second.taken == ()
    assert [j.id for j in second.waiting] == ["j2", "j3", "j4"]


async def test_a_dead_owners_jobs_are_taken_over_after_the_lease(
    setup: tuple[SqlJobStore, Clock],
) -> None:
    store, clock = setup
    await store.create(make_job("j1"), [])
    assert [j.id for j in (await claim(store, "a")).taken] == ["j1"]
    await store.move("j1", JobState.SUBMITTED, lease="a")
    assert (await claim(store, "b")).taken == ()
    clock.now += 31
    assert [j.id for j in (await claim(store, "b")).taken] == ["j1"]
    # The stale owner wakes up: every write it tries is refused, and nothing changes.
    with pytest.raises(LeaseLost):
        await store.move("j1", JobState.RUNNING, lease="a")
    with pytest.raises(LeaseLost):
        await store.update("j1", lease="a", progress=0.5)
    job = await store.get("j1")
    assert job is not None and job.state is JobState.SUBMITTED and job.progress is None
    assert await store.renew("a", 30.0) == set()
    assert await store.renew("b", 30.0) == {"j1"}


async def test_released_jobs_are_free_at_once_and_final_jobs_hold_no_lease(
    setup: tuple[SqlJobStore, Clock],
) -> None:
    store, _ = setup
    await store.create(make_job("j1"), [])
    await store.create(make_job("j2", created=101.0), [])
    await claim(store, "a")
    assert await store.release("a") == 2
    assert [j.id for j in (await claim(store, "b")).taken] == ["j1", "j2"]
    await store.move("j1", JobState.FAILED, lease="b", reason="x")
    assert await store.renew("b", 30.0) == {"j2"}


async def test_the_quota_check_runs_on_what_the_database_counts_as_it_writes(
    setup: tuple[SqlJobStore, Clock],
) -> None:
    store, _ = setup
    seen: list[int] = []

    def at_most_two(usage: Usage) -> None:
        seen.append(usage.jobs)
        if usage.jobs >= 2:
            raise Refusal("two a day", code="quota_exceeded")

    # Three admissions at once (as from three instances): the third sees the other two.
    outcomes = await asyncio.gather(
        *(
            store.create(
                make_job(f"j{n}", created=100.0 + n), [], admit=Admission(0.0, at_most_two)
            )
            for n in range(3)
        ),
        return_exceptions=True,
    )
    refused = [o for o in outcomes if isinstance(o, Refusal)]
    assert len(refused) == 1 and sorted(seen) == [0, 1, 2]
    assert len(await store.open_jobs()) == 2
