"""The WaveSpeed client against its loopback fake: whole jobs through the bot, and its API edges.

Jobs run from ``/generate`` to a delivered video twice: woken by WaveSpeed's signed webhook (the
bot's polling pushed far out, so only the webhook can finish the job in time) and by polling
alone. The rest checks what a user or an operator would notice: forged webhooks refused, a busy
provider retried, a submit never sent twice, failover, and a bad key reported as such.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, cast

import httpx
import pytest

from adapters.providers.wavespeed import WaveSpeedProvider
from bot.errors import ProviderError, WebhookRejected
from bot.models import JobState, MediaKind
from bot.ports import Provider, TaskState
from tests.fakes.freepik import FakeFreepik
from tests.fakes.wavespeed import FakeWaveSpeed, Task, signed_headers
from tests.harness import NO_POLLING, bot_with, client_alone, provider_request, staged
from tests.media_factory import make_image, make_video


@pytest.fixture
async def fake(result_mp4: bytes) -> AsyncIterator[FakeWaveSpeed]:
    async with FakeWaveSpeed(result_mp4) as server:
        yield server


def direct(
    tmp_path: Path, fake: FakeWaveSpeed, **settings: Any
) -> AbstractAsyncContextManager[WaveSpeedProvider]:
    """The client alone, for API edges a chat command cannot reach (every status word)."""
    return client_alone(WaveSpeedProvider, tmp_path, fake, **settings)


# Whole jobs ------------------------------------------------------------------------------------


async def test_a_signed_webhook_finishes_the_job_with_the_documented_request(
    tmp_path: Path, fake: FakeWaveSpeed
) -> None:
    fake.complete_after_polls = None
    async with bot_with(tmp_path, fake, **NO_POLLING) as h:
        await h.character("alice", video=True)
        await h.character("bob", voice=True)
        job_id = await h.generate("@bob hands @alice a cup", resolution="1080p", seed=11)
        task = await fake.task()

        assert await fake.finish(task.id) == 202
        job = await h.delivered(job_id, within=10.0)
        assert h.delivered_bytes(job_id) == fake.result

    # The signing secret came from WaveSpeed itself: none was set.
    assert fake.requested("GET", "/api/v3/webhook/secret")
    [submit] = fake.submits
    assert submit.query["webhook"].startswith(f"{h.public_url}/hooks/wavespeed/{job_id}?t=")
    body = submit.body
    # Videos are numbered first, images continue the count (seed 004's label style).
    assert body["prompt"] == "Image 2 hands Video 1 a cup"
    assert body["resolution"] == "1080p"
    assert body["duration"] == 5
    assert body["seed"] == 11
    assert body["enable_prompt_expansion"] is False
    # WaveSpeed documents no voice input for this model: bob's voice is not sent anywhere.
    assert not {"audio", "reference_voice", "voice"} & set(body)
    # What was PUT is exactly what the bot stored for the characters, under the type's name.
    stored = {r.kind: r.blob for r in job.spec.references}
    uploaded = {hashlib.sha256(u.data or b"").hexdigest(): u for u in fake.uploads.values()}
    assert set(uploaded) == set(stored.values())
    video, image = uploaded[stored[MediaKind.VIDEO]], uploaded[stored[MediaKind.IMAGE]]
    assert body["videos"] == [f"{fake.url}/files/{video.token}/{video.filename}"]
    assert body["image"] == f"{fake.url}/files/{image.token}/{image.filename}"
    assert (video.content_type, video.filename[-4:]) == ("video/mp4", ".mp4")
    assert (image.content_type, image.filename[-4:]) == ("image/png", ".png")
    for upload in uploaded.values():
        assert "Authorization" not in upload.put_headers


async def test_polling_alone_finishes_the_job_without_a_public_address(
    tmp_path: Path, fake: FakeWaveSpeed
) -> None:
    fake.send_webhooks = False
    async with bot_with(tmp_path, fake, public=False) as h:
        await h.character("carol", video=True)
        job_id = await h.generate("@carol waves", negative="blurry", aspect="9:16")
        await h.delivered(job_id, within=10.0)
        assert h.delivered_bytes(job_id) == fake.result

    [submit] = fake.submits
    assert "webhook" not in submit.query and "webhook_url" not in submit.body
    body = submit.body
    assert body["prompt"] == "Video 1 waves"
    assert len(body["videos"]) == 1 and "image" not in body
    assert body["negative_prompt"] == "blurry"
    assert body["resolution"] == "720p"
    # the bot always picks a seed when none is given, so a result can be remade at 1080p
    assert isinstance(body["seed"], int) and 0 <= body["seed"] <= 2_147_483_647
    assert fake.status_reads >= 2


async def test_forged_replayed_and_altered_webhooks_are_refused_and_change_nothing(
    tmp_path: Path, fake: FakeWaveSpeed
) -> None:
    fake.complete_after_polls = None
    fake.send_webhooks = False
    async with bot_with(tmp_path, fake, **NO_POLLING) as h:
        await h.character("dave", video=True)
        job_id = await h.generate("@dave jumps")
        task = await fake.task()
        await fake.finish(task.id)  # done at WaveSpeed; only a good webhook may tell the bot
        assert task.webhook is not None
        body = fake.webhook_body(task)
        altered = body.replace(b'"completed"', b'"failed"')
        now = int(time.time())
        attempts = {
            "forged": (signed_headers("whsec_not-the-real-secret", body), body),
            "replayed": (signed_headers(fake.secret, body, timestamp=now - 600), body),
            "altered": (signed_headers(fake.secret, body), altered),
            "unsigned": ({"content-type": "application/json"}, body),
        }
        async with httpx.AsyncClient() as client:
            for name, (headers, content) in attempts.items():
                response = await client.post(task.webhook, content=content, headers=headers)
                assert response.status_code == 401, name
            await asyncio.sleep(0.3)
            job = await h.job(job_id)
            assert job.state is JobState.SUBMITTED
            assert fake.status_reads == 0
            assert h.chat.videos(job_id) == []
            rejected = h.app.metrics.exposition().decode()
            assert 'r2v_webhook_checks_failed_total{provider="wavespeed"} 4.0' in rejected

            good = await client.post(
                task.webhook, content=body, headers=signed_headers(fake.secret, body)
            )
            assert good.status_code == 202
        await h.delivered(job_id, within=10.0)


async def test_a_rate_limited_submit_is_retried_and_the_retry_counted(
    tmp_path: Path, fake: FakeWaveSpeed
) -> None:
    fake.fail_next(429, route="submit")
    async with bot_with(tmp_path, fake, public=False) as h:
        await h.character("erin", video=True)
        job_id = await h.generate("@erin smiles")
        await h.delivered(job_id, within=10.0)
        metrics = h.app.metrics.exposition().decode()
    assert len(fake.submits) == 2
    assert 'r2v_provider_retries_total{provider="wavespeed"} 1.0' in metrics


async def test_a_submit_that_times_out_is_not_sent_again_and_the_job_says_why(
    tmp_path: Path, fake: FakeWaveSpeed
) -> None:
    fake.hang_submit = True
    async with bot_with(tmp_path, fake, public=False) as h:
        # The same client the bot built, with a short timeout for the submit alone.
        providers = cast(dict[str, Provider], h.app.providers)
        built = providers["wavespeed"]
        assert isinstance(built, WaveSpeedProvider)
        providers["wavespeed"] = WaveSpeedProvider(built.context, submit_timeout=0.3)
        await h.character("frank", video=True)
        job_id = await h.generate("@frank runs")
        job = await h.finished(job_id, within=10.0)
        await asyncio.sleep(0.3)
    assert job.state is JobState.FAILED
    assert job.reason is not None
    assert "did not answer the request to start the video" in job.reason
    assert "not sent again" in job.reason
    assert len(fake.submits) == 1


async def test_server_errors_move_the_job_to_the_next_provider(
    tmp_path: Path, fake: FakeWaveSpeed, result_mp4: bytes
) -> None:
    fake.fail_next(500, 3, route="submit")
    async with (
        FakeFreepik(result_mp4, complete_after_polls=1, send_webhooks=False) as freepik,
        bot_with(tmp_path, fake, freepik) as h,
    ):
        await h.character("gina", video=True)
        job_id = await h.generate("@gina sings")
        job = await h.delivered(job_id, within=15.0)
        assert h.delivered_bytes(job_id) == freepik.result
    assert job.provider == "freepik"
    assert len(fake.submits) == 3
    [submit] = freepik.submits
    # Relabelled for Freepik's own label style on the way.
    assert submit["prompt"] == "Video 1 sings"


async def test_a_refused_key_fails_the_job_naming_the_variable_without_failover(
    tmp_path: Path, fake: FakeWaveSpeed, result_mp4: bytes
) -> None:
    fake.fail_next(401, route="submit")
    async with (
        FakeFreepik(result_mp4) as freepik,
        bot_with(tmp_path, fake, freepik) as h,
    ):
        await h.character("hank", video=True)
        job = await h.finished(await h.generate("@hank sleeps"), within=10.0)
    assert job.state is JobState.FAILED
    assert job.reason is not None and "WAVESPEED_API_KEY" in job.reason
    assert job.provider == "wavespeed"
    assert len(fake.submits) == 1
    assert freepik.submits == []


async def test_a_lost_result_fails_the_job_with_a_reason(
    tmp_path: Path, fake: FakeWaveSpeed
) -> None:
    fake.result_status = 404
    async with bot_with(tmp_path, fake, public=False) as h:
        await h.character("ivy", video=True)
        job = await h.finished(await h.generate("@ivy dances"), within=10.0)
    assert job.state is JobState.FAILED
    assert job.reason is not None and "no longer has this video" in job.reason


# The client alone -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("created", TaskState.PENDING),
        ("processing", TaskState.RUNNING),
        ("completed", TaskState.SUCCEEDED),
        ("failed", TaskState.FAILED),
        ("cancelled", TaskState.CANCELLED),
        ("timeout", TaskState.FAILED),
    ],
)
async def test_every_status_word_maps_to_a_task_state(
    tmp_path: Path, fake: FakeWaveSpeed, raw: str, state: TaskState
) -> None:
    fake.complete_after_polls = None
    fake.tasks["t1"] = Task("t1", {}, None, status=raw)
    async with direct(tmp_path, fake) as provider:
        status = await provider.status("t1")
    assert status.state is state
    if state is TaskState.SUCCEEDED:
        assert status.result_url == f"{fake.url}/results/t1.mp4"
    else:
        assert status.result_url is None
    if raw == "timeout":
        assert status.error is not None and "timeout" in status.error


async def test_a_moderation_failure_is_worded_as_a_content_refusal(
    tmp_path: Path, fake: FakeWaveSpeed
) -> None:
    fake.complete_after_polls = None
    fake.tasks["t1"] = Task("t1", {}, None, status="failed", error="Content flagged as NSFW")
    fake.tasks["t2"] = Task("t2", {}, None, status="failed", error="GPU out of memory")
    async with direct(tmp_path, fake) as provider:
        refused = await provider.status("t1")
        broken = await provider.status("t2")
    assert refused.error is not None
    assert "content rules" in refused.error and "Content flagged as NSFW" in refused.error
    assert broken.error == "GPU out of memory"


@pytest.mark.parametrize("shape", ["object", "bare"])
async def test_the_signing_secret_is_fetched_at_start_in_either_shape(
    tmp_path: Path, fake: FakeWaveSpeed, shape: Literal["object", "bare"]
) -> None:
    fake.secret_shape = shape
    body = json.dumps({"id": "t1", "status": "completed"}).encode()
    async with direct(tmp_path, fake) as provider:
        before = provider.capabilities.webhooks
        await provider.start()
        assert (before, provider.capabilities.webhooks) == (False, True)
        await provider.check_webhook(signed_headers(fake.secret, body), body)
        with pytest.raises(WebhookRejected):
            await provider.check_webhook(signed_headers("whsec_other", body), body)


async def test_a_set_secret_is_used_as_given_and_not_fetched(
    tmp_path: Path, fake: FakeWaveSpeed
) -> None:
    secret = "whsec_c2VjcmV0LWZyb20tc2V0dGluZ3M="
    body = b'{"id": "t1"}'
    async with direct(tmp_path, fake, wavespeed_webhook_secret=secret) as provider:
        await provider.start()
        # The key is the text after whsec_ as raw bytes: never base64-decoded.
        await provider.check_webhook(signed_headers(secret, body), body)
    assert not fake.requested("GET", "/api/v3/webhook/secret")


async def test_without_a_secret_jobs_are_polled_and_webhooks_refused(
    tmp_path: Path, fake: FakeWaveSpeed
) -> None:
    fake.fail_next(404, 3, route="secret")
    async with direct(tmp_path, fake) as provider:
        await provider.start()
        assert provider.capabilities.webhooks is False
        with pytest.raises(WebhookRejected):
            await provider.check_webhook(signed_headers(fake.secret, b"{}"), b"{}")


async def test_check_key_says_whether_webhooks_can_be_used(
    tmp_path: Path, fake: FakeWaveSpeed
) -> None:
    async with direct(tmp_path, fake, public_url="http://127.0.0.1:9") as provider:
        public = await provider.check_key()
    async with direct(tmp_path, fake) as provider:
        private = await provider.check_key()
    async with direct(tmp_path, fake, wavespeed_api_key="wrong") as provider:
        refused = await provider.check_key()
    assert public.ok and public.webhooks
    assert private.ok and not private.webhooks and "R2V_PUBLIC_URL" in private.detail
    assert not refused.ok and "WAVESPEED_API_KEY" in refused.detail


async def test_requests_it_cannot_express_are_refused_before_anything_is_sent(
    tmp_path: Path, fake: FakeWaveSpeed
) -> None:
    pictures = [make_image(tmp_path / f"p{n}.png") for n in (1, 2)]
    references = tuple(staged(path, f"Image {n}") for n, path in enumerate(pictures, start=1))
    request = provider_request(*references, prompt="Image 1 and Image 2")
    async with direct(tmp_path, fake) as provider:
        with pytest.raises(ProviderError) as two_images:
            await provider.submit(request)
        with pytest.raises(ProviderError) as odd_length:
            await provider.submit(replace(request, references=references[:1], duration=7))
        with pytest.raises(ProviderError) as no_video:
            await provider.submit(replace(request, references=references[:1]))
    assert no_video.value.code == "provider_cannot_take"
    assert two_images.value.code == "too_many_references"
    assert "at most 1 reference image" in two_images.value.message
    assert odd_length.value.code == "duration_out_of_range"
    assert "5, 10 or 15 s" in odd_length.value.message
    assert fake.submits == [] and fake.uploads == {}


async def test_the_webhook_can_go_in_the_body_and_video_only_requests_omit_the_image(
    tmp_path: Path, fake: FakeWaveSpeed
) -> None:
    clip = make_video(tmp_path / "clip.mp4", seconds=1.0)
    request = provider_request(
        staged(clip, "Video 1"),
        prompt="Video 1 spins",
        duration=10,
        seed=3,
        webhook_url="http://127.0.0.1:9/hooks/wavespeed/j1?t=x",
    )
    async with direct(tmp_path, fake) as provider:
        in_body = WaveSpeedProvider(provider.context, webhook_in="body")
        task_id = await in_body.submit(request)
    assert task_id in fake.tasks
    [submit] = fake.submits
    assert submit.query == {}
    assert submit.body["webhook_url"] == request.webhook_url
    assert "image" not in submit.body and len(submit.body["videos"]) == 1
    [upload] = fake.uploads.values()
    assert upload.data == clip.read_bytes() and upload.content_type == "video/mp4"


async def test_a_refused_storage_link_is_not_mistaken_for_a_rejected_key(
    tmp_path: Path, fake: FakeWaveSpeed
) -> None:
    """The PUT goes to a pre-signed link without our key: its 403 says nothing about the key."""
    fake.fail_next(403, route="put")
    async with bot_with(tmp_path, fake, public=False) as h:
        await h.character("jo", video=True)
        job = await h.finished(await h.generate("@jo waves"), within=10.0)
        again = await h.run("generate", prompt="@jo waves")
    assert job.state is JobState.FAILED and job.reason is not None
    assert "WAVESPEED_API_KEY" not in job.reason
    assert not again.is_error, again.text
