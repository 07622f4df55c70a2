"""The Segmind client against its loopback fake: whole jobs through the bot, and its API edges.

Segmind documents no webhooks, so its end-to-end job is the polling one; the bot still runs with
a public URL because Segmind fetches every reference from our signed ``/media`` links.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from adapters.providers.segmind import SegmindProvider
from bot.ports import TaskState
from tests.fakes.segmind import FakeSegmind
from tests.harness import bot_with, client_alone


@pytest.fixture
async def fake(result_mp4: bytes) -> AsyncIterator[FakeSegmind]:
    async with FakeSegmind(result_mp4) as server:
        yield server


def direct(
    tmp_path: Path, fake: FakeSegmind, **settings: Any
) -> AbstractAsyncContextManager[SegmindProvider]:
    """The client alone, for API edges a chat command cannot reach (every status word)."""
    return client_alone(
        SegmindProvider, tmp_path, fake, public_url="http://127.0.0.1:9", **settings
    )


async def test_a_polled_job_delivers_the_video_and_names_references_compactly(
    tmp_path: Path, fake: FakeSegmind, result_mp4: bytes
) -> None:
    async with bot_with(tmp_path, fake) as h:
        await h.character("alice", voice=True)
        await h.character("bob", video=True)
        job_id = await h.generate(
            "@alice meets @bob", duration=4, resolution="1080p", seed=11, negative="fog"
        )
        await h.delivered(job_id)
        assert h.delivered_bytes(job_id) == result_mp4

    [body] = fake.submits
    assert body["prompt"] == "Image1 meets Video1"
    assert isinstance(body["reference_images"], str)
    assert isinstance(body["reference_videos"], str)
    assert isinstance(body["reference_voice"], str)
    assert (body["duration"], body["resolution"], body["seed"], body["negative_prompt"]) == (
        4,
        "1080P",
        11,
        "fog",
    )
    assert sorted(f.content_type for f in fake.fetched) == ["audio/wav", "image/png", "video/mp4"]
    assert all(f.status == 200 and f.size > 0 for f in fake.fetched)


async def test_a_public_url_brings_no_webhook_because_segmind_has_none(
    tmp_path: Path, fake: FakeSegmind
) -> None:
    """The "with webhooks" run: Segmind documents no callback, so even with a public URL the
    request names none and the job finishes by polling alone."""
    async with bot_with(tmp_path, fake) as h:
        assert h.public_url is not None
        assert h.app.providers["segmind"].capabilities.webhooks is False
        await h.character("alice")
        await h.delivered(await h.generate("@alice waves"))
    assert "/hooks/" not in json.dumps(fake.submits)
    assert next(iter(fake.jobs.values())).polls >= 2


async def test_without_a_public_url_the_job_is_refused_naming_the_setting(
    tmp_path: Path, fake: FakeSegmind
) -> None:
    async with bot_with(tmp_path, fake, public=False) as h:
        await h.character("alice")
        reply = await h.run("generate", prompt="@alice waves")
    assert reply.code == "configuration_error"
    assert "R2V_PUBLIC_URL" in reply.text
    assert fake.submits == []


async def test_two_images_are_refused_because_segmind_takes_one_of_each(
    tmp_path: Path, fake: FakeSegmind
) -> None:
    async with bot_with(tmp_path, fake) as h:
        await h.character("alice")
        await h.character("carol")
        await h.character("bob", video=True)
        three = await h.run("generate", prompt="@alice, @carol and @bob")
        two_images = await h.run("generate", prompt="@alice and @carol")
        one_of_each = await h.generate("@alice and @bob", duration=5)
        await h.delivered(one_of_each)
    assert three.code == "too_many_references"
    assert two_images.code == "too_many_references"
    assert "segmind takes at most 1" in two_images.text
    assert len(fake.submits) == 1


async def test_an_aspect_ratio_segmind_cannot_make_is_refused(
    tmp_path: Path, fake: FakeSegmind
) -> None:
    async with bot_with(tmp_path, fake) as h:
        await h.character("alice")
        reply = await h.run("generate", prompt="@alice waves", aspect="9:16")
    assert reply.is_error and "16:9" in reply.text
    assert fake.submits == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("QUEUED", TaskState.PENDING),
        ("PROCESSING", TaskState.RUNNING),
        ("COMPLETED", TaskState.SUCCEEDED),
        ("FAILED", TaskState.FAILED),
        ("CANCELLED", TaskState.CANCELLED),
    ],
)
async def test_every_status_maps_to_our_state(
    tmp_path: Path, fake: FakeSegmind, raw: str, expected: TaskState
) -> None:
    fake.complete_after_polls = None
    async with direct(tmp_path, fake) as provider:
        request_id = fake.add_request(raw, error="out of GPUs")
        status = await provider.status(request_id)
    assert status.state is expected
    if raw == "COMPLETED":
        assert status.result_url == f"{fake.url}/outputs/{request_id}.mp4"
    if raw == "FAILED":
        assert status.error == "out of GPUs"


async def test_a_moderation_failure_is_worded_as_a_content_refusal(
    tmp_path: Path, fake: FakeSegmind
) -> None:
    fake.complete_after_polls = None
    async with direct(tmp_path, fake) as provider:
        request_id = fake.add_request("FAILED", error="Input flagged by content moderation")
        status = await provider.status(request_id)
    assert status.error is not None
    assert "refused the prompt or the references under its content rules" in status.error


async def test_check_key_accepts_the_key_and_says_jobs_are_polled(
    tmp_path: Path, fake: FakeSegmind
) -> None:
    async with direct(tmp_path, fake) as provider:
        good = await provider.check_key()
    async with direct(tmp_path, fake, segmind_api_key="wrong") as provider:
        bad = await provider.check_key()
    assert good.ok and not good.webhooks and "polled" in good.detail
    assert not bad.ok and "SEGMIND_API_KEY" in bad.detail
    assert all(r.headers.get("x-api-key") for r in fake.requests)


async def test_the_status_url_is_polled_and_the_response_url_read_once_completed(
    tmp_path: Path, fake: FakeSegmind
) -> None:
    """Segmind's async inference: the submit answers both URLs; the status one is polled, and
    the result is read at the response one only after COMPLETED (before, it is undocumented)."""
    async with bot_with(tmp_path, fake) as h:
        await h.character("alice")
        job = await h.delivered(await h.generate("@alice waves"))
    [request] = fake.jobs.values()
    assert request.polls >= 2
    assert (request.response_reads, request.early_reads) == (1, 0)
    status_reads = fake.requested("GET", f"/v2/requests/{request.request_id}/status")
    assert len(status_reads) == request.polls
    # The URLs are kept with the job, as Segmind answered them.
    assert job.task_id is not None and f"{fake.url}/v2/requests/" in job.task_id
    # Segmind's published price per generation is the estimate: $0.625 at 720p.
    assert job.cost_estimate == 0.625
