"""The Together AI client: whole jobs through the bot against a loopback Together, and its edges.

Together has no webhooks and no upload API: every job is polled, and the bot runs with a public
URL because Together fetches each reference from our signed ``/media`` links. Narrower tests call
the client itself where the bot adds nothing (every status word, the key check, a hung submit).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from adapters.providers.together import TogetherProvider
from bot.errors import ProviderError
from bot.models import JobState
from bot.ports import LabelStyle, TaskState
from tests.fakes.together import KEY, MODEL, FakeTogether
from tests.harness import bot_with, client_alone, image_request, until


@pytest.fixture
async def together(result_mp4: bytes) -> AsyncIterator[FakeTogether]:
    async with FakeTogether(result_mp4) as fake:
        yield fake


# End to end --------------------------------------------------------------------------------------


async def test_a_polled_job_follows_the_redirecting_result_link_and_delivers_the_video(
    tmp_path: Path, together: FakeTogether
) -> None:
    async with bot_with(tmp_path, together) as h:
        await h.character("alice", voice=True)
        await h.character("bob", video=True)
        reply = await h.run(
            "generate",
            prompt="@alice waves at @bob",
            duration=4,
            resolution="1080p",
            aspect="9:16",
            seed=7,
            negative="blurry",
        )
        assert reply.job_id is not None, reply.text
        job = await h.delivered(reply.job_id, within=15)

        assert h.delivered_bytes(reply.job_id) == together.result
        provider = h.app.providers["together"]
        assert isinstance(provider, TogetherProvider)
        assert job.task_id is not None and provider.charge(job.task_id) == 0.42
    # The short link redirected once and the MP4 came from where it pointed.
    assert (together.short_link_hits, together.result_downloads) == (1, 1)
    # Together takes no voice: alice's was dropped, and the user was told so.
    assert "voices dropped: together takes no voice (@alice will be silent)" in reply.text
    (submit,) = together.submits()
    assert submit.headers["Authorization"] == f"Bearer {KEY}"
    body = submit.json()
    (image_url,) = body["media"]["reference_images"]
    (video_item,) = body["media"]["reference_videos"]
    assert body == {
        "model": MODEL,
        "prompt": "Image 1 waves at Video 1",  # the default label style: separate
        "negative_prompt": "blurry",
        "seconds": "4",  # a string, as Together wants it
        "resolution": "1080P",
        "ratio": "9:16",
        "seed": 7,
        "media": {"reference_images": [image_url], "reference_videos": [video_item]},
    }
    assert set(video_item) == {"video"}
    assert image_url.startswith(f"{h.public_url}/media/")
    # Together fetched the picture and the video from our signed links, and no voice.
    assert sorted(f.content_type for f in together.fetched) == ["image/png", "video/mp4"]
    assert all(f.status == 200 and f.size > 0 for f in together.fetched)


async def test_a_public_url_brings_no_webhook_and_the_label_style_is_a_setting(
    tmp_path: Path, together: FakeTogether
) -> None:
    """The "with webhooks" run: Together documents no callback, so even with a public URL the
    request names none and the job finishes by polling alone."""
    async with bot_with(tmp_path, together, together_labels="character") as h:
        assert h.public_url is not None
        assert h.app.providers["together"].capabilities.webhooks is False
        await h.character("alice")
        job_id = await h.generate("@alice waves")
        await h.delivered(job_id)
        assert h.delivered_bytes(job_id) == together.result
    (submit,) = together.submits()
    assert submit.json()["prompt"] == "character1 waves"
    assert "/hooks/" not in submit.body.decode()
    assert together.only_video().polls >= 2


async def test_without_a_public_url_the_job_is_refused_naming_the_setting(
    tmp_path: Path, together: FakeTogether
) -> None:
    async with bot_with(tmp_path, together, public=False) as h:
        await h.character("alice")
        reply = await h.run("generate", prompt="@alice waves")
    assert reply.code == "configuration_error"
    assert "together" in reply.text and "R2V_PUBLIC_URL" in reply.text
    assert together.submits() == []


async def test_a_content_policy_failure_ends_the_job_with_a_moderation_message(
    tmp_path: Path, result_mp4: bytes
) -> None:
    async with (
        FakeTogether(result_mp4, complete_after_polls=None) as together,
        bot_with(tmp_path, together) as h,
    ):
        await h.character("alice")
        job_id = await h.generate("@alice waves")
        await until(lambda: together.videos)
        together.set_status(
            together.only_video().id,
            "failed",
            error={"code": "content_policy_violation", "message": "The prompt was flagged."},
        )
        job = await h.finished(job_id)
    assert job.state is JobState.FAILED
    assert job.reason is not None
    assert "together refused the prompt or the references under its content rules" in job.reason
    assert "The prompt was flagged." in job.reason
    assert h.chat.videos(job_id) == []


async def test_a_result_link_answering_404_fails_the_job_saying_the_video_is_gone(
    tmp_path: Path, together: FakeTogether
) -> None:
    together.result_status = 404
    async with bot_with(tmp_path, together) as h:
        await h.character("alice")
        job = await h.finished(await h.generate("@alice waves"))
    assert job.state is JobState.FAILED
    assert job.reason is not None and "no longer has this video" in job.reason
    assert together.short_link_hits == 1


# The client on its own ---------------------------------------------------------------------------


def direct(
    tmp_path: Path,
    fake: FakeTogether,
    *,
    public_url: str | None = "http://127.0.0.1:9",
    **settings: Any,
) -> AbstractAsyncContextManager[TogetherProvider]:
    """The client alone; retries do not wait. Its references are links nobody serves, so the
    fake is told not to fetch them."""
    fake.fetch_references = False
    return client_alone(TogetherProvider, tmp_path, fake, public_url=public_url, **settings)


async def test_every_documented_status_is_mapped(tmp_path: Path, result_mp4: bytes) -> None:
    async with (
        FakeTogether(result_mp4, complete_after_polls=None) as together,
        direct(tmp_path, together) as client,
    ):
        task_id = await client.submit(image_request(tmp_path))
        body = together.submits()[0].json()
        assert "seed" not in body and "negative_prompt" not in body
        assert body["seconds"] == "5" and body["resolution"] == "720P"

        together.set_status(task_id, "queued")
        assert (await client.status(task_id)).state is TaskState.PENDING
        together.set_status(task_id, "in_progress")
        assert (await client.status(task_id)).state is TaskState.RUNNING
        together.set_status(task_id, "cancelled")
        assert (await client.status(task_id)).state is TaskState.CANCELLED

        together.set_status(task_id, "completed")
        done = await client.status(task_id)
        assert done.state is TaskState.SUCCEEDED
        assert done.result_url == f"{together.url}/s/{task_id}"

        together.set_status(
            task_id, "failed", error={"code": "invalid_media", "message": "Video too short"}
        )
        failed = await client.status(task_id)
        assert failed.state is TaskState.FAILED
        assert failed.error == "invalid_media: Video too short"

        together.set_status(task_id, "archived")  # not documented: still waiting
        assert (await client.status(task_id)).state is TaskState.PENDING


async def test_rate_limits_and_server_errors_are_retried_and_one_video_is_made(
    tmp_path: Path, together: FakeTogether
) -> None:
    async with direct(tmp_path, together) as client:
        together.fail_next(429)
        task_id = await client.submit(image_request(tmp_path))
        together.fail_next(500)
        status = await client.status(task_id)

    assert len(together.submits()) == 2 and len(together.videos) == 1
    assert status.state is TaskState.RUNNING


async def test_a_submit_that_times_out_is_not_sent_again(
    tmp_path: Path, together: FakeTogether
) -> None:
    together.hang_submit = True
    async with direct(tmp_path, together, client_timeout=0.5) as client:
        with pytest.raises(ProviderError) as caught:
            await client.submit(image_request(tmp_path))

    assert caught.value.code == "submit_unknown"
    assert not caught.value.retryable
    assert len(together.submits()) == 1


async def test_check_key_judges_the_key_and_says_jobs_are_polled(
    tmp_path: Path, together: FakeTogether
) -> None:
    async with direct(tmp_path, together) as client:
        good = await client.check_key()
    assert good.ok and not good.webhooks and "polled" in good.detail

    async with direct(tmp_path, together, public_url=None) as client:
        unpublished = await client.check_key()
    assert unpublished.ok and "R2V_PUBLIC_URL" in unpublished.detail

    async with direct(tmp_path, together, together_api_key="wrong") as client:
        bad = await client.check_key()
    assert not bad.ok and "TOGETHER_API_KEY" in bad.detail


async def test_capabilities_prices_and_cancel(tmp_path: Path, together: FakeTogether) -> None:
    async with direct(tmp_path, together) as client:
        listed = client.capabilities
        assert await client.cancel("video-1") is False  # Together documents no cancel
    assert (listed.voice, listed.webhooks, listed.needs_public_media) == (False, False, True)
    assert listed.label_style is LabelStyle.SEPARATE
    assert listed.accepts_duration(10, has_video=False)
    assert not listed.accepts_duration(11, has_video=False)
    # No published price: unknown until R2V_PRICES gives one (reference video counted too).
    assert listed.estimate("720p", 5) is None
    async with direct(tmp_path, together, prices={"together": {"720p": 0.1}}) as client:
        priced = client.capabilities
    assert priced.estimate("720p", 5) == 0.5
    assert priced.estimate("720p", 5, reference_video_seconds=2.0) == 0.7
    assert together.requests == []  # cancel asked nothing
