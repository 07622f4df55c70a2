"""The DashScope client against its loopback fake: whole jobs through the bot, and its API edges.

DashScope has no webhooks, so its end-to-end job is the polling one; the bot still runs with a
public URL because DashScope fetches every reference from our signed ``/media`` links.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from adapters.providers.dashscope import DashScopeProvider, VideoUsage
from bot.errors import ConfigurationError, ProviderError
from bot.models import JobState
from bot.ports import TaskState
from tests.fakes.dashscope import SUBMIT_PATH, FakeDashScope
from tests.harness import bot_with, client_alone, image_request, until


@pytest.fixture
async def fake(result_mp4: bytes) -> AsyncIterator[FakeDashScope]:
    async with FakeDashScope(result_mp4) as server:
        yield server


def direct(
    tmp_path: Path, fake: FakeDashScope, **settings: Any
) -> AbstractAsyncContextManager[DashScopeProvider]:
    """The client alone, for API edges a chat command cannot reach (every status word)."""
    return client_alone(
        DashScopeProvider, tmp_path, fake, public_url="http://127.0.0.1:9", **settings
    )


async def test_a_polled_job_delivers_the_video_and_sends_the_documented_request(
    tmp_path: Path, fake: FakeDashScope, result_mp4: bytes
) -> None:
    async with bot_with(tmp_path, fake) as h:
        await h.character("alice", voice=True)
        await h.character("bob", video=True)
        job_id = await h.generate(
            "@alice waves at @bob",
            duration=4,
            resolution="1080p",
            aspect="9:16",
            seed=7,
            negative="blurry",
        )
        job = await h.delivered(job_id)
        assert h.delivered_bytes(job_id) == result_mp4
        assert job.task_id is not None
        provider = h.app.providers["dashscope"]
        assert isinstance(provider, DashScopeProvider)
        assert provider.usage(job.task_id) == VideoUsage(input_seconds=1.5, output_seconds=1.0)

    [submit] = [r for r in fake.requests if r.method == "POST"]
    assert submit.headers["X-DashScope-Async"] == "enable"
    body = submit.json()
    assert body["model"] == "wan2.7-r2v"
    assert body["input"]["prompt"] == "Image 1 waves at Video 1"
    assert body["input"]["negative_prompt"] == "blurry"
    image, video = body["input"]["media"]
    assert image["type"] == "reference_image" and "reference_voice" in image
    assert video["type"] == "reference_video" and "reference_voice" not in video
    assert body["parameters"] == {
        "resolution": "1080P",
        "ratio": "9:16",
        "duration": 4,
        "seed": 7,
        "watermark": False,
    }
    # DashScope really fetched the image, the voice and the video from our signed links.
    assert sorted(f.content_type for f in fake.fetched) == ["audio/wav", "image/png", "video/mp4"]
    assert all(f.status == 200 and f.size > 0 for f in fake.fetched)


async def test_a_public_url_brings_no_webhook_because_dashscope_has_none(
    tmp_path: Path, fake: FakeDashScope
) -> None:
    """The "with webhooks" run: DashScope documents no callback, so even with a public URL the
    request names none and the job finishes by polling alone."""
    async with bot_with(tmp_path, fake) as h:
        assert h.public_url is not None
        assert h.app.providers["dashscope"].capabilities.webhooks is False
        await h.character("alice")
        await h.delivered(await h.generate("@alice waves"))
    assert "/hooks/" not in json.dumps(fake.submits)
    assert fake.tasks[next(iter(fake.tasks))].polls >= 2


async def test_without_a_public_url_the_job_is_refused_naming_the_setting(
    tmp_path: Path, fake: FakeDashScope
) -> None:
    async with bot_with(tmp_path, fake, public=False) as h:
        await h.character("alice")
        reply = await h.run("generate", prompt="@alice waves")
    assert reply.code == "configuration_error"
    assert "R2V_PUBLIC_URL" in reply.text
    assert fake.submits == []


async def test_a_content_inspection_failure_is_reported_as_a_refusal(
    tmp_path: Path, fake: FakeDashScope
) -> None:
    fake.complete_after_polls = None
    async with bot_with(tmp_path, fake) as h:
        await h.character("alice")
        job_id = await h.generate("@alice waves")
        await until(lambda: fake.tasks)
        task_id = next(iter(fake.tasks))
        fake.set_state(
            task_id,
            "FAILED",
            code="DataInspectionFailed",
            message="Output data may contain inappropriate content.",
        )
        job = await h.finished(job_id)
    assert job.state is JobState.FAILED
    assert job.reason is not None
    assert "refused the prompt or the references under its content rules" in job.reason
    assert "DataInspectionFailed" in job.reason
    assert "refused the prompt" in h.chat.posts[-1].text


async def test_a_task_the_provider_forgot_fails_with_that_reason(
    tmp_path: Path, fake: FakeDashScope
) -> None:
    fake.complete_after_polls = None
    async with bot_with(tmp_path, fake) as h:
        await h.character("alice")
        job_id = await h.generate("@alice waves")
        await until(lambda: fake.tasks)
        del fake.tasks[next(iter(fake.tasks))]  # expired: DashScope answers UNKNOWN
        job = await h.finished(job_id)
    assert job.state is JobState.FAILED
    assert job.reason is not None and "the provider no longer knows this task" in job.reason


async def test_a_result_link_that_answers_404_fails_the_job(
    tmp_path: Path, fake: FakeDashScope
) -> None:
    fake.result_status = 404
    async with bot_with(tmp_path, fake) as h:
        await h.character("alice")
        job = await h.finished(await h.generate("@alice waves"))
    assert job.state is JobState.FAILED
    assert job.reason is not None and "no longer has this video" in job.reason
    assert fake.result_downloads == 1


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("PENDING", TaskState.PENDING),
        ("RUNNING", TaskState.RUNNING),
        ("SUCCEEDED", TaskState.SUCCEEDED),
        ("FAILED", TaskState.FAILED),
        ("CANCELED", TaskState.CANCELLED),
        ("UNKNOWN", TaskState.FAILED),
    ],
)
async def test_every_documented_status_maps_to_our_state(
    tmp_path: Path, fake: FakeDashScope, raw: str, expected: TaskState
) -> None:
    fake.complete_after_polls = None
    async with direct(tmp_path, fake) as provider:
        task_id = fake.add_task(raw, code="InternalError.Timeout", message="took too long")
        status = await provider.status(task_id)
    assert status.state is expected
    assert (status.result_url is not None) == (raw == "SUCCEEDED")
    if raw == "FAILED":
        assert status.error == "InternalError.Timeout: took too long"
    if raw == "UNKNOWN":
        assert status.error is not None and "no longer knows this task" in status.error


async def test_cancel_stops_a_waiting_task_and_declines_a_running_one(
    tmp_path: Path, fake: FakeDashScope
) -> None:
    fake.complete_after_polls = None
    async with direct(tmp_path, fake) as provider:
        waiting, running = fake.add_task("PENDING"), fake.add_task("RUNNING")
        assert await provider.cancel(waiting) is True
        assert await provider.cancel(running) is False
        assert (await provider.status(waiting)).state is TaskState.CANCELLED


async def test_check_key_accepts_the_key_and_says_jobs_are_polled(
    tmp_path: Path, fake: FakeDashScope
) -> None:
    async with direct(tmp_path, fake) as provider:
        good = await provider.check_key()
    async with direct(tmp_path, fake, dashscope_api_key="sk-wrong") as provider:
        bad = await provider.check_key()
    assert good.ok and not good.webhooks and "polled" in good.detail
    assert not bad.ok
    assert "DASHSCOPE_API_KEY" in bad.detail and "R2V_DASHSCOPE_REGION" in bad.detail


async def test_a_server_error_on_submit_is_retried_and_the_job_goes_on(
    tmp_path: Path, fake: FakeDashScope
) -> None:
    async with direct(tmp_path, fake) as provider:
        fake.fail_next(500)
        task_id = await provider.submit(image_request(tmp_path))
    assert task_id in fake.tasks
    assert len(fake.submits) == 2


async def test_a_submit_that_hangs_is_not_sent_again(tmp_path: Path, fake: FakeDashScope) -> None:
    fake.hang_submit = True
    async with direct(tmp_path, fake, client_timeout=0.3) as provider:
        with pytest.raises(ProviderError) as caught:
            await provider.submit(image_request(tmp_path))
    assert caught.value.code == "submit_unknown"
    assert len(fake.submits) == 1


@pytest.mark.parametrize(
    ("base_url", "region", "expected_base", "expected_region"),
    [
        (None, None, "https://dashscope-intl.aliyuncs.com", "singapore"),
        (None, "virginia", "https://dashscope-us.aliyuncs.com", "virginia"),
        (None, "Beijing", "https://dashscope.aliyuncs.com", "beijing"),
        (
            "https://ws-1a2b3c.ap-southeast-1.maas.aliyuncs.com",
            None,
            "https://ws-1a2b3c.ap-southeast-1.maas.aliyuncs.com",
            "singapore",
        ),
        (
            "https://ws-9z.cn-beijing.maas.aliyuncs.com",
            "beijing",
            "https://ws-9z.cn-beijing.maas.aliyuncs.com",
            "beijing",
        ),
    ],
)
async def test_the_region_picks_the_base_and_workspace_domains_are_accepted(
    tmp_path: Path,
    fake: FakeDashScope,
    base_url: str | None,
    region: str | None,
    expected_base: str,
    expected_region: str,
) -> None:
    settings = {"dashscope_base_url": base_url, "dashscope_region": region}
    async with direct(tmp_path, fake, **settings) as provider:
        assert (provider.api.base_url, provider.region) == (expected_base, expected_region)


async def test_a_region_that_contradicts_the_base_url_is_refused_at_start(
    tmp_path: Path, fake: FakeDashScope
) -> None:
    base = "https://ws-1.us-east-1.maas.aliyuncs.com"
    with pytest.raises(ConfigurationError) as refused:
        async with direct(tmp_path, fake, dashscope_base_url=base, dashscope_region="singapore"):
            pass
    assert "R2V_DASHSCOPE_REGION=singapore" in refused.value.message
    assert "virginia region" in refused.value.message


async def test_a_key_of_another_region_fails_the_job_naming_the_region_setting(
    tmp_path: Path, fake: FakeDashScope
) -> None:
    async with bot_with(tmp_path, fake) as h:
        fake.key = "sk-of-another-region"  # the fake answers 401 InvalidApiKey, as DashScope does
        await h.character("alice")
        job = await h.finished(await h.generate("@alice waves"))
        again = await h.run("generate", prompt="@alice waves")
    assert job.state is JobState.FAILED and job.task_id is None
    assert job.reason is not None
    assert job.reason.startswith("DASHSCOPE_API_KEY is rejected by DashScope (HTTP 401")
    assert "set R2V_DASHSCOPE_REGION to your key's region" in job.reason
    # Refused once (not retried), and no task exists at DashScope.
    assert len(fake.requested("POST", SUBMIT_PATH)) == 1 and fake.tasks == {}
    assert again.code == "configuration_error"
