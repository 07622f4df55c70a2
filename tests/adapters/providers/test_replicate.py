"""The Replicate client: the whole bot against a loopback Replicate (predictions, files,
Standard Webhooks), and the client on its own where the bot adds nothing."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from adapters import webhooks
from adapters.providers.replicate import ReplicateProvider
from bot.errors import ProviderError, WebhookRejected
from bot.models import JobState
from bot.ports import TaskState
from tests.fakes.replicate import FakeReplicate
from tests.harness import NO_POLLING, bot_with, image_request, post_hook, provider_context, until

# The test vector of the Standard Webhooks specification (PROVIDERS.md).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.fixture
async def replicate(result_mp4: bytes) -> AsyncIterator[FakeReplicate]:
    async with FakeReplicate(result_mp4) as fake:
        yield fake


# End to end --------------------------------------------------------------------------------------


async def test_webhooks_finish_the_job_with_the_secret_fetched_at_start(
    tmp_path: Path, replicate: FakeReplicate
) -> None:
    replicate.complete_after_polls = None
    async with bot_with(tmp_path, replicate, public=True, **NO_POLLING) as h:
        assert replicate.secret_fetches == 1
        await h.character("alice")
        job_id = await h.generate("@alice waves at the camera")
        await until(lambda: replicate.predictions)
        prediction = replicate.only_prediction()
        await until(lambda: replicate.webhook_answers)

        replicate.set_status(prediction.id, "succeeded")
        job = await h.delivered(job_id, within=10)

        assert h.delivered_bytes(job_id) == replicate.result
        assert replicate.webhook_answers == [("start", 202), ("completed", 202)]
        assert job.task_id == prediction.id
        assert prediction.polls == 2  # one look-up per webhook: polling alone would take 30 s
    (submit,) = replicate.submits()
    body = submit.json()
    assert h.public_url is not None
    assert body["webhook"].startswith(f"{h.public_url}/hooks/replicate/{job_id}?t=")
    assert body["webhook_events_filter"] == ["start", "completed"]
    assert body["input"]["prompt"] == "Image 1 waves at the camera"
    (image_url,) = body["input"]["reference_images"]
    assert "reference_videos" not in body["input"]
    # The reference was uploaded as a Replicate file and passed by its urls.get link.
    (uploaded,) = replicate.files.values()
    assert image_url == f"{replicate.url}/v1/files/{uploaded.id}"
    assert uploaded.content_type == "image/png" and uploaded.name.endswith(".png")
    assert uploaded.data.startswith(b"\x89PNG")
    assert uploaded.headers["Content-Length"] == str(
        len(next(r.body for r in replicate.requests if r.path == "/v1/files"))
    )


async def test_polling_alone_delivers_with_every_option_and_another_label_style(
    tmp_path: Path, replicate: FakeReplicate
) -> None:
    async with bot_with(tmp_path, replicate, public=False, replicate_labels="character") as h:
        await h.character("alice", voice=True)
        await h.character("bob", video=True)
        reply = await h.run(
            "generate",
            prompt="@bob chases @alice",
            duration=4,
            resolution="720p",
            aspect="1:1",
            seed=42,
            negative="watermark",
        )
        assert reply.job_id is not None, reply.text
        await h.delivered(reply.job_id, within=15)

        assert h.delivered_bytes(reply.job_id) == replicate.result
    assert replicate.secret_fetches == 0  # no public address: webhooks are not asked for
    assert "voices dropped" in reply.text
    (submit,) = replicate.submits()
    body = submit.json()
    assert set(body) == {"input"}
    inputs = body["input"]
    assert inputs == {
        "prompt": "character1 chases character2",
        "reference_images": [inputs["reference_images"][0]],
        "reference_videos": [inputs["reference_videos"][0]],
        "negative_prompt": "watermark",
        "resolution": "720p",
        "aspect_ratio": "1:1",
        "duration": 4,
        "seed": 42,
    }
    kinds = sorted(f.content_type for f in replicate.files.values())
    assert kinds == ["image/png", "video/mp4"]


async def test_an_nsfw_failure_is_worded_as_a_content_refusal(
    tmp_path: Path, replicate: FakeReplicate
) -> None:
    replicate.complete_after_polls = None
    async with bot_with(tmp_path, replicate, public=False) as h:
        await h.character("alice")
        job_id = await h.generate("@alice jumps")
        await until(lambda: replicate.predictions)
        replicate.set_status(
            replicate.only_prediction().id,
            "failed",
            error="NSFW content detected. Try running it again, or try a different prompt.",
        )
        job = await h.finished(job_id, within=10)

    assert job.state is JobState.FAILED
    assert job.reason is not None
    assert "replicate refused the prompt or the references under its content rules" in job.reason
    assert "NSFW content detected" in job.reason


async def test_server_errors_on_every_try_fail_the_job_after_three_submits(
    tmp_path: Path, replicate: FakeReplicate
) -> None:
    replicate.fail_next(500, 3)
    async with bot_with(tmp_path, replicate, public=False) as h:
        await h.character("alice")
        job_id = await h.generate("@alice jumps")
        job = await h.finished(job_id, within=15)

    assert job.state is JobState.FAILED
    assert job.reason is not None and "out of service" in job.reason
    assert len(replicate.submits()) == 3
    assert replicate.predictions == {}


async def test_a_result_link_answering_404_fails_the_job_saying_the_video_is_gone(
    tmp_path: Path, replicate: FakeReplicate
) -> None:
    replicate.result_status = 404  # Replicate deletes outputs after an hour
    async with bot_with(tmp_path, replicate, public=False) as h:
        await h.character("alice")
        job_id = await h.generate("@alice jumps")
        job = await h.finished(job_id, within=10)

    assert job.state is JobState.FAILED
    assert job.reason is not None and "no longer has this video" in job.reason


async def test_a_result_over_the_limit_is_refused_without_reading_it_whole(
    tmp_path: Path, replicate: FakeReplicate
) -> None:
    replicate.result = os.urandom(1_000_000)
    replicate.declare_length = False  # no Content-Length: the bytes are counted as they come
    replicate.stall_after = 256 * 1024  # and the rest never comes: reading on would hang
    async with bot_with(tmp_path, replicate, public=False, max_result_bytes=200_000) as h:
        await h.character("alice")
        job_id = await h.generate("@alice jumps")
        job = await h.finished(job_id, within=10)

    assert job.state is JobState.FAILED
    assert job.reason is not None and "larger than" in job.reason
    assert replicate.bytes_sent == 256 * 1024


async def test_cancel_stops_the_prediction(tmp_path: Path, replicate: FakeReplicate) -> None:
    replicate.complete_after_polls = None
    async with bot_with(tmp_path, replicate, public=False) as h:
        await h.character("alice")
        job_id = await h.generate("@alice jumps")
        await until(lambda: h.chat.states(job_id)[-1:] == [JobState.SUBMITTED])

        reply = await h.run("cancel", job=job_id)

        assert not reply.is_error, reply.text
        assert replicate.only_prediction().status == "canceled"
        assert (await h.job(job_id)).state is JobState.CANCELLED


# Webhook signatures ------------------------------------------------------------------------------


async def test_forged_replayed_and_altered_webhooks_get_401_and_change_nothing(
    tmp_path: Path, replicate: FakeReplicate
) -> None:
    replicate.complete_after_polls = None
    replicate.send_webhooks = False
    async with bot_with(tmp_path, replicate, public=True, **NO_POLLING) as h:
        await h.character("alice")
        job_id = await h.generate("@alice waves")
        await until(lambda: replicate.predictions)
        prediction = replicate.only_prediction()
        assert prediction.webhook is not None
        await until(lambda: h.chat.states(job_id)[-1:] == [JobState.SUBMITTED])
        before = await h.job(job_id)
        body = json.dumps(replicate.document(prediction)).encode()
        signed = webhooks.signed_headers(replicate.secret, body)
        old = webhooks.signed_headers(replicate.secret, body, timestamp=int(time.time()) - 600)
        altered = body.replace(b'"starting"', b'"succeeded"')
        assert altered != body
        attempts = {
            "forged": (body, webhooks.signed_headers(webhooks.new_secret(), body)),
            "replayed": (body, old),
            "altered": (altered, signed),
            "unsigned": (body, {"Content-Type": "application/json"}),
        }
        answers = {
            name: await post_hook(prediction.webhook, b, hd) for name, (b, hd) in attempts.items()
        }

        assert answers == dict.fromkeys(attempts, 401)
        assert await h.job(job_id) == before
        assert prediction.polls == 0  # a refused webhook does not even cause a status look-up
        assert await post_hook(prediction.webhook, body, signed) == 202
        await until(lambda: prediction.polls == 1)


# The client on its own ---------------------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.5)) as http:
        yield http


def provider(
    tmp_path: Path,
    fake: FakeReplicate,
    client: httpx.AsyncClient,
    *,
    clock: Callable[[], float] = time.time,
    **settings: object,
) -> ReplicateProvider:
    return ReplicateProvider(provider_context(tmp_path, fake, client, **settings), clock=clock)


async def test_the_standard_webhooks_test_vector_passes_replicates_check(
    tmp_path: Path, replicate: FakeReplicate, client: httpx.AsyncClient
) -> None:
    checker = provider(
        tmp_path,
        replicate,
        client,
        clock=lambda: VECTOR_TIMESTAMP + 10,
        replicate_webhook_secret=VECTOR_SECRET,
    )
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }

    await checker.check_webhook(headers, VECTOR_BODY)

    with pytest.raises(WebhookRejected):
        await checker.check_webhook(headers, VECTOR_BODY.replace(b"2432", b"2433"))
    late = provider(
        tmp_path,
        replicate,
        client,
        clock=lambda: VECTOR_TIMESTAMP + 301,
        replicate_webhook_secret=VECTOR_SECRET,
    )
    with pytest.raises(WebhookRejected):
        await late.check_webhook(headers, VECTOR_BODY)
    assert replicate.secret_fetches == 0  # the secret set in settings is used as it is


async def test_every_documented_state_is_mapped(
    tmp_path: Path, replicate: FakeReplicate, client: httpx.AsyncClient
) -> None:
    replicate.complete_after_polls = None
    replicate_client = provider(tmp_path, replicate, client)
    prediction_id = await replicate_client.submit(image_request(tmp_path, resolution="1080p"))
    body = replicate.submits()[0].json()
    assert set(body) == {"input"}  # no webhook asked for when the request has no URL
    assert "seed" not in body["input"] and "negative_prompt" not in body["input"]

    expected = {
        "starting": TaskState.PENDING,
        "processing": TaskState.RUNNING,
        "canceled": TaskState.CANCELLED,
    }
    for raw, state in expected.items():
        replicate.set_status(prediction_id, raw)
        assert (await replicate_client.status(prediction_id)).state is state

    replicate.set_status(prediction_id, "failed", error="CUDA out of memory")
    failed = await replicate_client.status(prediction_id)
    assert (failed.state, failed.error) == (TaskState.FAILED, "CUDA out of memory")

    replicate.set_status(prediction_id, "succeeded")
    done = await replicate_client.status(prediction_id)
    assert done.state is TaskState.SUCCEEDED
    assert done.result_url == f"{replicate.url}/results/{prediction_id}.mp4"


async def test_a_submit_that_times_out_is_not_sent_again(
    tmp_path: Path, replicate: FakeReplicate, client: httpx.AsyncClient
) -> None:
    replicate.hang_submit = True

    with pytest.raises(ProviderError) as caught:
        await provider(tmp_path, replicate, client).submit(
            image_request(tmp_path, resolution="1080p")
        )

    assert caught.value.code == "submit_unknown"
    assert len(replicate.submits()) == 1


async def test_check_key_judges_the_token_and_says_whether_webhooks_work(
    tmp_path: Path, replicate: FakeReplicate, client: httpx.AsyncClient
) -> None:
    public = "https://bot.example"
    good = await provider(tmp_path, replicate, client, public_url=public).check_key()
    assert good.ok and good.webhooks

    polled = await provider(tmp_path, replicate, client).check_key()
    assert polled.ok and not polled.webhooks and "R2V_PUBLIC_URL" in polled.detail

    bad = await provider(
        tmp_path, replicate, client, public_url=public, replicate_api_token="wrong"
    ).check_key()
    assert not bad.ok and "REPLICATE_API_TOKEN" in bad.detail


async def test_prices_are_unknown_until_set(
    tmp_path: Path, replicate: FakeReplicate, client: httpx.AsyncClient
) -> None:
    assert provider(tmp_path, replicate, client).capabilities.estimate("720p", 5) is None
    priced = provider(tmp_path, replicate, client, prices={"replicate": {"720p": 0.12}})
    assert priced.capabilities.estimate("720p", 5) == 0.6
