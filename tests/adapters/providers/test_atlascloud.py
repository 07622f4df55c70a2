"""The AtlasCloud client: the whole bot against a loopback AtlasCloud (uploads, jobs, signed
webhooks), and the client alone where the bot adds nothing (status words, retries, key check)."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adapters.providers.atlascloud import AtlasCloudProvider
from bot.errors import ProviderError, WebhookRejected
from bot.models import JobState
from bot.ports import LabelStyle, ProviderRequest, TaskState
from tests.fakes.atlascloud import (
    JWKS_PATH,
    KEY,
    MODEL,
    SUBMIT_PATH,
    FakeAtlasCloud,
    signed_headers,
)
from tests.harness import (
    NO_POLLING,
    bot_with,
    client_alone,
    post_hook,
    provider_request,
    staged,
    until,
)
from tests.media_factory import make_image, make_wav


@pytest.fixture
async def atlas(result_mp4: bytes) -> AsyncIterator[FakeAtlasCloud]:
    async with FakeAtlasCloud(result_mp4) as fake:
        yield fake


# End to end --------------------------------------------------------------------------------------


async def test_a_signed_webhook_finishes_the_job_and_the_video_is_delivered(
    tmp_path: Path, atlas: FakeAtlasCloud
) -> None:
    atlas.complete_after_polls = None
    async with bot_with(tmp_path, atlas, public=True, **NO_POLLING) as h:
        assert atlas.jwks_fetches == 1  # fetched at start, since webhooks can reach the bot
        await h.character("alice", voice=True)
        job_id = await h.generate("@alice waves at the camera")
        await until(lambda: atlas.tasks)
        task = atlas.only_task()

        atlas.complete(task.id)
        job = await h.delivered(job_id, within=10)

        assert h.delivered_bytes(job_id) == atlas.result
        assert atlas.webhook_answers == [202]
        assert job.task_id == task.id
    # Only the webhook's wake-up looked at the status: polling alone would have taken 30 s.
    assert task.polls == 1
    (submit,) = atlas.submits()
    assert submit.headers["Authorization"] == f"Bearer {KEY}"
    body = submit.json()
    assert h.public_url is not None
    assert body.pop("webhook_url").startswith(f"{h.public_url}/hooks/atlascloud/{job_id}?t=")
    image_upload, voice_upload = atlas.uploads.values()
    assert body == {
        "model": MODEL,
        "prompt": "character1 waves at the camera",  # the default label style: character
        "images": [body["images"][0]],
        "audio": body["audio"],
        "resolution": "720P",
        "ratio": "16:9",
        "duration": 5,
        "seed": body["seed"],
    }
    # The picture and the voice went up with uploadMedia (field "file", with the key).
    assert body["images"][0].startswith(f"{atlas.url}/media/")
    assert body["audio"].startswith(f"{atlas.url}/media/")
    assert (image_upload.content_type, voice_upload.content_type) == ("image/png", "audio/wav")
    assert image_upload.data.startswith(b"\x89PNG") and voice_upload.data.startswith(b"RIFF")
    assert image_upload.request_headers["Authorization"] == f"Bearer {KEY}"


async def test_polling_alone_delivers_through_early_404s_with_every_option(
    tmp_path: Path, atlas: FakeAtlasCloud
) -> None:
    atlas.not_found_polls = 2  # as right after creation: "not yet", not a failure
    async with bot_with(tmp_path, atlas, public=False, atlascloud_labels="separate") as h:
        await h.character("alice", voice=True)
        await h.character("bob", video=True)
        job_id = await h.generate(
            "@alice hugs @bob in the rain",
            duration=4,
            resolution="1080p",
            aspect="9:16",
            seed=7,
            negative="blurry, text",
        )
        await h.delivered(job_id, within=15)
        assert h.delivered_bytes(job_id) == atlas.result
        assert JobState.FAILED not in h.chat.states(job_id)

    task = atlas.only_task()
    assert task.polls >= 4  # two 404s, then processing and completed
    (submit,) = atlas.submits()
    body = submit.json()
    assert body == {
        "model": MODEL,
        "prompt": "Image 1 hugs Video 1 in the rain",  # R2V_ATLASCLOUD_LABELS=separate
        "negative_prompt": "blurry, text",
        "images": [body["images"][0]],
        "videos": [body["videos"][0]],
        "audio": body["audio"],
        "resolution": "1080P",
        "ratio": "9:16",
        "duration": 4,
        "seed": 7,
    }
    kinds = sorted(u.content_type for u in atlas.uploads.values())
    assert kinds == ["audio/wav", "image/png", "video/mp4"]
    assert atlas.webhook_answers == [] and atlas.jwks_fetches == 0


async def test_a_job_failed_by_moderation_with_http_200_ends_with_a_moderation_message(
    tmp_path: Path, atlas: FakeAtlasCloud
) -> None:
    atlas.complete_after_polls = None
    async with bot_with(tmp_path, atlas, public=False) as h:
        await h.character("alice")
        job_id = await h.generate("@alice waves")
        await until(lambda: atlas.tasks)
        atlas.fail(atlas.only_task().id, error_code=1039, error="The output was blocked.")
        job = await h.finished(job_id, within=10)

    assert job.state is JobState.FAILED
    assert job.reason is not None
    assert "atlascloud refused the prompt or the references under its content rules" in job.reason
    assert "error code 1039" in job.reason
    assert h.chat.videos(job_id) == []


async def test_a_server_error_to_the_submit_is_never_sent_again(
    tmp_path: Path, atlas: FakeAtlasCloud
) -> None:
    atlas.fail_next(502, route=SUBMIT_PATH)
    async with bot_with(tmp_path, atlas, public=False) as h:
        await h.character("alice")
        job = await h.finished(await h.generate("@alice waves"), within=10)

    assert job.state is JobState.FAILED
    assert job.reason is not None
    assert "HTTP 502" in job.reason and "not sent again" in job.reason
    assert len(atlas.submits()) == 1 and atlas.tasks == {}


async def test_a_result_link_answering_404_fails_the_job_saying_the_video_is_gone(
    tmp_path: Path, atlas: FakeAtlasCloud
) -> None:
    atlas.result_status = 404
    async with bot_with(tmp_path, atlas, public=False) as h:
        await h.character("alice")
        job = await h.finished(await h.generate("@alice waves"), within=10)
    assert job.state is JobState.FAILED
    assert job.reason is not None and "no longer has this video" in job.reason


async def test_forged_stale_and_altered_webhooks_get_401_and_change_nothing(
    tmp_path: Path, atlas: FakeAtlasCloud
) -> None:
    atlas.complete_after_polls = None
    atlas.send_webhooks = False
    async with bot_with(tmp_path, atlas, public=True, **NO_POLLING) as h:
        await h.character("alice")
        job_id = await h.generate("@alice waves")
        await until(lambda: atlas.tasks)
        task = atlas.only_task()
        webhook = task.webhook
        assert webhook is not None
        await until(lambda: h.chat.states(job_id)[-1:] == [JobState.SUBMITTED])
        before = await h.job(job_id)
        body = atlas.webhook_body(task)
        altered = body.replace(b'"OK"', b'"ERROR"')
        assert altered != body
        stale = int(time.time()) - 301
        attempts = {
            "forged": (body, signed_headers(Ed25519PrivateKey.generate(), body)),
            "stale": (body, signed_headers(atlas.signing_key, body, timestamp=stale)),
            "altered": (altered, signed_headers(atlas.signing_key, body)),
            "unsigned": (body, {"Content-Type": "application/json"}),
        }
        answers = {name: await post_hook(webhook, b, hd) for name, (b, hd) in attempts.items()}

        assert answers == dict.fromkeys(attempts, 401)
        assert await h.job(job_id) == before
        assert task.polls == 0  # a refused webhook does not even cause a status look-up
        # Fetched at start, then once more for the forged signature's unknown key id; the
        # altered body names a key id already held, so it caused no fetch.
        assert atlas.jwks_fetches == 2

        # The genuine one (its signature in hex this time) is taken and the job completes.
        atlas.complete(task.id)
        body = atlas.webhook_body(task)
        good = signed_headers(atlas.signing_key, body, encoding="hex")
        assert await post_hook(webhook, body, good) == 202
        await h.delivered(job_id, within=10)


# The client on its own ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def direct(
    tmp_path: Path,
    fake: FakeAtlasCloud,
    *,
    clock: Callable[[], float] = time.time,
    **settings: Any,
) -> AbstractAsyncContextManager[AtlasCloudProvider]:
    """The client alone; retries do not wait."""
    return client_alone(
        lambda context: AtlasCloudProvider(context, clock=clock), tmp_path, fake, **settings
    )


def image_request(tmp_path: Path, *, voices: int = 0) -> ProviderRequest:
    references = []
    for index in range(1, max(voices, 1) + 1):
        image = make_image(tmp_path / f"p{index}.png")
        voice = make_wav(tmp_path / f"v{index}.wav", seconds=1.0) if index <= voices else None
        references.append(staged(image, f"character{index}", voice=voice))
    return provider_request(*references, prompt="character1 waves")


async def test_every_documented_status_is_mapped_and_a_task_unknown_too_long_is_lost(
    tmp_path: Path, atlas: FakeAtlasCloud
) -> None:
    atlas.complete_after_polls = None
    clock = Clock()
    async with direct(tmp_path, atlas, clock=clock) as client:
        task_id = await client.submit(image_request(tmp_path))
        task = atlas.tasks[task_id]
        body = atlas.submits()[0].json()
        assert "seed" not in body and "negative_prompt" not in body
        assert "webhook_url" not in body and "audio" not in body

        assert (await client.status(task_id)).state is TaskState.RUNNING  # "processing"
        for word in ("completed", "succeeded"):
            task.status = word
            done = await client.status(task_id)
            assert done.state is TaskState.SUCCEEDED
            assert done.result_url == f"{atlas.url}/outputs/{task_id}.mp4"
        task.status, task.error_code, task.error = "failed", 1002, "Reference video too long"
        failed = await client.status(task_id)
        assert failed.state is TaskState.FAILED
        assert failed.error == "Reference video too long (error code 1002)"
        task.error_code = 1039
        refused = await client.status(task_id)
        assert refused.error is not None and refused.error.startswith(
            "atlascloud refused the prompt or the references under its content rules"
        )

        # A task AtlasCloud does not know yet: "not yet" for 30 s from its creation, then lost.
        young = await client.submit(image_request(tmp_path))
        atlas.not_found_polls = 99
        clock.now += 29
        assert (await client.status(young)).state is TaskState.PENDING
        clock.now += 2
        lost = await client.status(young)
        assert lost.state is TaskState.FAILED
        assert lost.error is not None and "still answers HTTP 404 for this job" in lost.error

    # After a restart the creation time is unknown: the grace starts at the first 404.
    async with direct(tmp_path, atlas, clock=clock) as restarted:
        assert (await restarted.status(young)).state is TaskState.PENDING
        clock.now += 31
        assert (await restarted.status(young)).state is TaskState.FAILED


async def test_a_rate_limited_submit_is_sent_again_and_makes_one_job(
    tmp_path: Path, atlas: FakeAtlasCloud
) -> None:
    atlas.fail_next(429, route=SUBMIT_PATH)
    async with direct(tmp_path, atlas) as client:
        await client.submit(image_request(tmp_path))
    assert len(atlas.submits()) == 2 and len(atlas.tasks) == 1


async def test_a_submit_that_times_out_is_not_sent_again(
    tmp_path: Path, atlas: FakeAtlasCloud
) -> None:
    atlas.hang_submit = True
    async with direct(tmp_path, atlas, client_timeout=0.5) as client:
        with pytest.raises(ProviderError) as caught:
            await client.submit(image_request(tmp_path))
    assert caught.value.code == "submit_unknown" and not caught.value.retryable
    assert len(atlas.submits()) == 1


async def test_one_voice_clip_is_sent_the_first_voiced_references(
    tmp_path: Path, atlas: FakeAtlasCloud
) -> None:
    async with direct(tmp_path, atlas) as client:
        await client.submit(image_request(tmp_path, voices=2))
    body = atlas.submits()[0].json()
    assert len(body["images"]) == 2
    first_voice = next(u for u in atlas.uploads.values() if u.content_type == "audio/wav")
    (voice_id,) = [k for k, u in atlas.uploads.items() if u is first_voice]
    assert body["audio"] == f"{atlas.url}/media/{voice_id}"
    assert "reference_voice" not in body


async def test_check_key_judges_the_key_and_says_whether_webhooks_work(
    tmp_path: Path, atlas: FakeAtlasCloud
) -> None:
    async with direct(tmp_path, atlas, public_url="https://bot.example") as client:
        good = await client.check_key()
    assert good.ok and good.webhooks

    async with direct(tmp_path, atlas) as client:
        polled = await client.check_key()
    assert polled.ok and not polled.webhooks and "R2V_PUBLIC_URL" in polled.detail

    async with direct(
        tmp_path,
        atlas,
        public_url="https://bot.example",
        atlascloud_jwks_url=f"{atlas.url}/no/such/jwks.json",
    ) as client:
        keyless = await client.check_key()
    assert keyless.ok and not keyless.webhooks and "HTTP 404" in keyless.detail

    async with direct(tmp_path, atlas, atlascloud_api_key="wrong") as client:
        bad = await client.check_key()
    assert not bad.ok and "ATLASCLOUD_API_KEY" in bad.detail


async def test_capabilities_prices_jwks_url_and_no_cancel(
    tmp_path: Path, atlas: FakeAtlasCloud
) -> None:
    async with direct(tmp_path, atlas) as client:
        listed = client.capabilities
        assert client.jwks.url == f"{atlas.url}{JWKS_PATH}"
        assert await client.cancel("atlas-1") is False  # AtlasCloud documents no cancel
    assert atlas.requests == []  # and nothing was asked
    assert (listed.voice, listed.webhooks, listed.needs_public_media) == (True, True, False)
    assert listed.label_style is LabelStyle.CHARACTER
    assert listed.accepts_duration(10, has_video=False)
    assert not listed.accepts_duration(11, has_video=False)
    assert listed.estimate("720p", 5) == 0.5
    assert listed.estimate("1080p", 5, reference_video_seconds=2.0) == 0.7
    async with direct(tmp_path, atlas, prices={"atlascloud": {"1080p": 0.2}}) as client:
        priced = client.capabilities
    assert priced.estimate("1080p", 5) == 1.0


async def test_a_timeout_status_fails_the_job_at_once_with_the_providers_reason(
    tmp_path: Path, atlas: FakeAtlasCloud
) -> None:
    atlas.complete_after_polls = None
    atlas.send_webhooks = False
    async with bot_with(tmp_path, atlas, public=False, job_timeout_seconds=600) as h:
        await h.character("alice")
        job_id = await h.generate("@alice waves")
        await until(lambda: atlas.tasks)
        atlas.fail(atlas.only_task().id, error_code=None, error="Task timed out", status="timeout")
        job = await h.finished(job_id, within=10.0)
    assert job.state is JobState.FAILED
    assert job.reason is not None and "Task timed out" in job.reason


@pytest.mark.parametrize("status", ["timeout", "cancelled"])
async def test_timeout_and_cancelled_are_final_failures(
    tmp_path: Path, atlas: FakeAtlasCloud, status: str
) -> None:
    atlas.complete_after_polls = None
    async with direct(tmp_path, atlas) as provider:
        task_id = await provider.submit(image_request(tmp_path))
        atlas.fail(task_id, error_code=None, error=None, status=status)
        answer = await provider.status(task_id)
    assert answer.state is TaskState.FAILED
    assert answer.error == f"AtlasCloud ended the job with status “{status}”"


async def test_an_error_webhook_fails_the_job_after_the_status_read(
    tmp_path: Path, atlas: FakeAtlasCloud
) -> None:
    """The webhook says ERROR while the status call still answers processing: the job fails
    with the webhook's reason once the status has been read, without waiting for its timeout."""
    atlas.complete_after_polls = None
    atlas.send_webhooks = False
    async with bot_with(tmp_path, atlas, public=True, **NO_POLLING) as h:
        await h.character("alice")
        job_id = await h.generate("@alice waves")
        await until(lambda: atlas.tasks)
        task = atlas.only_task()
        await until(lambda: h.chat.states(job_id)[-1:] == [JobState.SUBMITTED])
        task.status, task.error, task.error_code = "failed", "GPU lost", 5001
        body = atlas.webhook_body(task)
        task.status = "processing"  # the status call lags behind the webhook
        polls = task.polls
        assert task.webhook is not None
        answer = await post_hook(task.webhook, body, signed_headers(atlas.signing_key, body))
        job = await h.finished(job_id, within=10.0)
    assert answer == 202
    assert b'"status": "ERROR"' in body
    assert task.polls == polls + 1  # the usual status read came first
    assert job.state is JobState.FAILED
    assert job.reason is not None and "GPU lost (error code 5001)" in job.reason


async def test_the_signature_is_taken_from_the_bare_header_as_ed25519_only(
    tmp_path: Path, atlas: FakeAtlasCloud
) -> None:
    body = b'{"session_id": "atlas-9", "status": "OK", "payload": {"outputs": []}}'
    bare = signed_headers(atlas.signing_key, body, bare=True)
    assert "X-AtlasCloud-Webhook-Signature-Ed25519" not in bare
    hmac_headers = {
        **bare,
        "X-AtlasCloud-Webhook-Signature": hmac.new(b"secret", body, hashlib.sha256).hexdigest(),
    }
    async with direct(tmp_path, atlas, public_url="http://127.0.0.1:9") as provider:
        await provider.check_webhook(bare, body)
        with pytest.raises(WebhookRejected):
            await provider.check_webhook(hmac_headers, body)
