"""The moment a provider's client sends the request that may bill a task is announced to the
engine (``BEFORE_BILLABLE_REQUEST``) after the references are uploaded, and only once, so an
attempt is recorded exactly when its outcome could become unknown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from adapters.providers.replicate import ReplicateProvider
from bot.ports import BEFORE_BILLABLE_REQUEST
from tests.fakes.replicate import FakeReplicate
from tests.harness import client_alone, image_request


@asynccontextmanager
async def announcing(announce: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    """``announce`` is what the engine would record the attempt with."""
    token = BEFORE_BILLABLE_REQUEST.set(announce)
    try:
        yield
    finally:
        BEFORE_BILLABLE_REQUEST.reset(token)


@pytest.fixture
async def fake(result_mp4: bytes) -> AsyncIterator[FakeReplicate]:
    async with FakeReplicate(result_mp4, send_webhooks=False) as server:
        yield server


async def test_uploads_come_before_the_announcement_and_the_submit_after(
    tmp_path: Path, fake: FakeReplicate
) -> None:
    seen: list[tuple[int, int]] = []

    async def announce() -> None:
        uploads = len(fake.requested("POST", "/v1/files"))
        submits = sum(1 for r in fake.requests if r.path.endswith("/predictions"))
        seen.append((uploads, submits))

    async with client_alone(ReplicateProvider, tmp_path, fake) as client, announcing(announce):
        await client.submit(image_request(tmp_path))
    assert seen == [(1, 0)]
    assert sum(1 for r in fake.requests if r.path.endswith("/predictions")) == 1


async def test_a_submit_that_fails_after_the_announcement_is_not_sent_twice(
    tmp_path: Path, fake: FakeReplicate
) -> None:
    announced = 0

    async def announce() -> None:
        nonlocal announced
        announced += 1

    fake.fail_next(503, times=1, route="submit")
    async with client_alone(ReplicateProvider, tmp_path, fake) as client, announcing(announce):
        await client.submit(image_request(tmp_path))
    assert announced == 1
