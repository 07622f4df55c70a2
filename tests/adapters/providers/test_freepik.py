"""The Freepik client against its loopback fake: whole jobs through the bot, and its API edges.

Freepik fetches every reference from our signed ``/media`` links, so the fake really GETs them
and the tests compare what it received with what the bot stored. Its webhooks are unsigned: the
tests show that the URL token and the status re-fetch are what keep a forged call harmless.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.providers.freepik import FreepikProvider
from bot.models import JobState, MediaKind
from bot.ports import TaskState
from tests.fakes.freepik import FakeFreepik, Task
from tests.harness import NO_POLLING, bot_with, client_alone


@pytest.fixture
async def fake(result_mp4: bytes) -> AsyncIterator[FakeFreepik]:
    async with FakeFreepik(result_mp4) as server:
        yield server


def direct(
    tmp_path: Path, fake: FakeFreepik, **settings: Any
) -> AbstractAsyncContextManager[FreepikProvider]:
    """The client alone, for API edges a chat command cannot reach (every status word)."""
    return client_alone(FreepikProvider, tmp_path, fake, **settings)


# Whole jobs ------------------------------------------------------------------------------------


async def test_webhooks_finish_the_job_and_the_fake_fetched_every_signed_link(
    tmp_path: Path, fake: FakeFreepik
) -> None:
    fake.complete_after_polls = None
    async with bot_with(tmp_path, fake, **NO_POLLING) as h:
        await h.character("alice", voice=True)
        await h.character("bob", video=True, voice=True)
        job_id = await h.generate("@bob bows to @alice", aspect="9:16", seed=5)
        task = await fake.task()
        await fake.finish(task.task_id)
        job = await h.delivered(job_id, within=10.0)
        assert h.delivered_bytes(job_id) == fake.result

    # One webhook per status change, each accepted by the bot.
    assert fake.webhooks == [("IN_PROGRESS", 202), ("COMPLETED", 202)]
    [body] = fake.submits
    assert body["webhook_url"].startswith(f"{h.public_url}/hooks/freepik/{job_id}?t=")
    # Images and videos are counted apart (label style ``separate``).
    assert body["prompt"] == "Video 1 bows to Image 1"
    assert body["aspect_ratio"] == "9:16"
    assert body["resolution"] == "720P"
    assert body["duration"] == 5
    assert body["seed"] == 5
    assert body["additional_settings"] == {"prompt_extend": False}
    [image] = body["image_urls"]
    [video] = body["video_urls"]
    for item in (image, video):
        assert set(item) == {"url", "reference_voice"}
        assert item["url"].startswith(f"{h.public_url}/media/")
        assert item["reference_voice"].startswith(f"{h.public_url}/media/")

    # Every link answered, with the exact bytes the bot stored and their real type.
    fetched = {f.url: f for f in fake.fetched}
    assert all(f.status == 200 for f in fetched.values())
    alice = next(r for r in job.spec.references if r.kind is MediaKind.IMAGE)
    bob = next(r for r in job.spec.references if r.kind is MediaKind.VIDEO)
    expected = {
        image["url"]: (alice.blob, "image/png"),
        image["reference_voice"]: (alice.voice_blob, "audio/wav"),
        video["url"]: (bob.blob, "video/mp4"),
        video["reference_voice"]: (bob.voice_blob, "audio/wav"),
    }
    assert set(fetched) == set(expected)
    for url, (blob, mime) in expected.items():
        assert hashlib.sha256(fetched[url].data).hexdigest() == blob
        assert fetched[url].content_type == mime


async def test_polling_alone_finishes_the_job(tmp_path: Path, fake: FakeFreepik) -> None:
    fake.send_webhooks = False
    async with bot_with(tmp_path, fake) as h:
        await h.character("carol")
        job_id = await h.generate(
            "@carol waves", resolution="1080p", negative="blurry", duration=10
        )
        await h.delivered(job_id, within=10.0)
        assert h.delivered_bytes(job_id) == fake.result
    assert fake.webhooks == []
    assert fake.status_reads >= 2
    [body] = fake.submits
    assert body["prompt"] == "Image 1 waves"
    assert "video_urls" not in body and "reference_voice" not in body["image_urls"][0]
    assert (body["resolution"], body["negative_prompt"], body["duration"]) == (
        "1080P",
        "blurry",
        10,
    )
    # the bot always picks a seed when none is given, so a result can be remade at 1080p
    assert isinstance(body["seed"], int) and 0 <= body["seed"] <= 2_147_483_647


async def test_an_unsigned_webhook_claiming_success_only_causes_a_status_check(
    tmp_path: Path, fake: FakeFreepik
) -> None:
    fake.complete_after_polls = None
    async with bot_with(tmp_path, fake, **NO_POLLING) as h:
        await h.character("dave")
        job_id = await h.generate("@dave jumps")
        task = await fake.task()
        webhook = task.body["webhook_url"]
        forged = {"task_id": task.task_id, "status": "COMPLETED", "generated": ["http://x/y.mp4"]}
        async with httpx.AsyncClient() as client:
            wrong_token = await client.post(webhook.split("?t=")[0] + "?t=guess", json=forged)
            assert wrong_token.status_code == 401
            accepted = await client.post(webhook, json=forged)
            assert accepted.status_code == 202
            await asyncio.sleep(0.3)
        job = await h.job(job_id)
        # The bot asked Freepik itself, learnt the task had not even started, and waits on.
        assert fake.status_reads == 1
        assert job.state is JobState.SUBMITTED
        assert h.chat.videos(job_id) == []


async def test_a_503_is_retried_and_the_job_delivered(tmp_path: Path, fake: FakeFreepik) -> None:
    fake.fail_next(503, route="submit")
    fake.send_webhooks = False
    async with bot_with(tmp_path, fake) as h:
        await h.character("erin")
        job_id = await h.generate("@erin smiles")
        await h.delivered(job_id, within=10.0)
        metrics = h.app.metrics.exposition().decode()
    assert len(fake.submits) == 2
    assert 'r2v_provider_retries_total{provider="freepik"} 1.0' in metrics


async def test_without_a_public_address_the_command_is_refused_before_anything_is_sent(
    tmp_path: Path, fake: FakeFreepik
) -> None:
    async with bot_with(tmp_path, fake, public=False) as h:
        await h.character("frank")
        reply = await h.run("generate", prompt="@frank runs")
    assert reply.code == "configuration_error"
    assert "R2V_PUBLIC_URL" in reply.text
    assert fake.submits == []


async def test_a_failed_task_ends_the_job_with_the_providers_reason(
    tmp_path: Path, fake: FakeFreepik
) -> None:
    fake.complete_after_polls = None
    fake.send_webhooks = False
    async with bot_with(tmp_path, fake) as h:
        await h.character("gina")
        job_id = await h.generate("@gina sings")
        task = await fake.task()
        await fake.move(task.task_id, "FAILED", error="Prompt rejected by the moderation filter")
        job = await h.finished(job_id, within=10.0)
    assert job.state is JobState.FAILED
    assert job.reason is not None
    assert "content rules" in job.reason and "moderation filter" in job.reason


# The client alone -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("CREATED", TaskState.PENDING),
        ("IN_PROGRESS", TaskState.RUNNING),
        ("COMPLETED", TaskState.SUCCEEDED),
        ("FAILED", TaskState.FAILED),
    ],
)
async def test_every_status_word_maps_to_a_task_state(
    tmp_path: Path, fake: FakeFreepik, raw: str, state: TaskState
) -> None:
    fake.complete_after_polls = None
    fake.tasks["t1"] = Task("t1", {}, status=raw, error="broke" if raw == "FAILED" else None)
    async with direct(tmp_path, fake) as provider:
        status = await provider.status("t1")
    assert status.state is state
    if state is TaskState.SUCCEEDED:
        assert status.result_url == f"{fake.url}/results/t1.mp4"
    else:
        assert status.result_url is None
    assert status.error == ("broke" if state is TaskState.FAILED else None)


async def test_check_key_says_whether_jobs_and_webhooks_can_work(
    tmp_path: Path, fake: FakeFreepik
) -> None:
    async with direct(tmp_path, fake, public_url="http://127.0.0.1:9") as provider:
        public = await provider.check_key()
    async with direct(tmp_path, fake) as provider:
        private = await provider.check_key()
    async with direct(tmp_path, fake, freepik_api_key="wrong") as provider:
        refused = await provider.check_key()
    assert public.ok and public.webhooks
    assert private.ok and not private.webhooks and "R2V_PUBLIC_URL" in private.detail
    assert not refused.ok and "FREEPIK_API_KEY" in refused.detail
