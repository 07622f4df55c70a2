"""The fal.ai client: the whole bot against a loopback fal (queue, uploads, JWKS, webhooks).

End-to-end tests drive ``/generate`` through the real bot (``bot_with``) with ``FAL_KEY`` and
``R2V_FAL_BASE_URL`` pointing at the fake; narrower ones call the client itself against the same
fake where the bot adds nothing (status mapping, key check, a submit that hangs).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adapters.providers.fal import FalProvider, FalTask
from bot.errors import ProviderError
from bot.models import JobState
from bot.ports import TaskState
from tests.fakes.fal import MODEL, FakeFal, signed_headers
from tests.harness import (
    NO_POLLING,
    Harness,
    bot_with,
    image_request,
    post_hook,
    provider_context,
    until,
)


@pytest.fixture
async def fal(result_mp4: bytes) -> AsyncIterator[FakeFal]:
    async with FakeFal(result_mp4) as fake:
        yield fake


# End to end --------------------------------------------------------------------------------------


async def test_a_webhook_finishes_the_job_and_the_video_is_delivered(
    tmp_path: Path, fal: FakeFal
) -> None:
    fal.complete_after_polls = None
    async with bot_with(tmp_path, fal, public=True, **NO_POLLING) as h:
        await h.character("alice")
        job_id = await h.generate("@alice waves at the camera")
        await until(lambda: fal.tasks)
        task = fal.only_task()

        fal.complete(task.request_id)
        job = await h.delivered(job_id, within=10)

        assert h.delivered_bytes(job_id) == fal.result
        assert fal.webhook_answers == [202]
        assert job.task_id is not None and task.request_id in job.task_id
    # The webhook URL rode in the fal_webhook query parameter, pointing at this job's hook.
    (submit,) = fal.submits()
    assert h.public_url is not None
    assert submit.query["fal_webhook"].startswith(f"{h.public_url}/hooks/fal/{job_id}?t=")
    body = submit.json()
    assert body["prompt"] == "Image 1 waves at the camera"  # the default label style: separate
    (image_url,) = body["reference_image_urls"]
    assert "reference_video_urls" not in body
    # The reference went to fal's CDN: initiate with the key, then a PUT without it.
    (upload_id, upload), *_ = fal.uploads.items()
    assert image_url == f"{fal.url}/files/{upload_id}"
    assert upload.content_type == "image/png" and upload.file_name.endswith(".png")
    assert upload.data.startswith(b"\x89PNG")
    assert "Authorization" not in upload.put_headers
    assert upload.put_headers["Content-Length"] == str(len(upload.data))
    # Only the webhook's wake-up looked at the status: polling alone would have taken 30 s.
    assert task.polls == 1


async def test_polling_alone_delivers_with_every_option_and_another_label_style(
    tmp_path: Path, fal: FakeFal
) -> None:
    async with bot_with(tmp_path, fal, public=False, fal_labels="videos_first") as h:
        await h.character("alice", voice=True)
        await h.character("bob", video=True)
        reply = await h.run(
            "generate",
            prompt="@alice hugs @bob in the rain",
            duration=5,
            resolution="1080p",
            aspect="9:16",
            seed=7,
            negative="blurry, text",
        )
        assert reply.job_id is not None, reply.text
        await h.delivered(reply.job_id, within=15)

        assert h.delivered_bytes(reply.job_id) == fal.result
    # fal takes no voice: the user was told, and no voice went out.
    assert "voices dropped" in reply.text
    (submit,) = fal.submits()
    assert "fal_webhook" not in submit.query
    body = submit.json()
    assert body == {
        "prompt": "Image 2 hugs Video 1 in the rain",  # videos counted first, images go on
        "reference_image_urls": [body["reference_image_urls"][0]],
        "reference_video_urls": [body["reference_video_urls"][0]],
        "negative_prompt": "blurry, text",
        "aspect_ratio": "9:16",
        "resolution": "1080p",
        "duration": 5,
        "seed": 7,
    }
    kinds = sorted(u.content_type for u in fal.uploads.values())
    assert kinds == ["image/png", "video/mp4"]
    assert fal.webhook_answers == []


async def test_a_rate_limited_submit_is_sent_again_and_the_job_still_succeeds(
    tmp_path: Path, fal: FakeFal
) -> None:
    fal.fail_next(429)
    async with bot_with(tmp_path, fal, public=False) as h:
        await h.character("alice")
        job_id = await h.generate("@alice jumps")
        await h.delivered(job_id, within=15)

    assert len(fal.submits()) == 2
    assert len(fal.tasks) == 1


async def test_a_result_link_answering_404_fails_the_job_saying_the_video_is_gone(
    tmp_path: Path, fal: FakeFal
) -> None:
    fal.result_status = 404
    async with bot_with(tmp_path, fal, public=False) as h:
        await h.character("alice")
        job_id = await h.generate("@alice jumps")
        job = await h.finished(job_id, within=10)

    assert job.state is JobState.FAILED
    assert job.reason is not None and "no longer has this video" in job.reason
    assert h.chat.videos(job_id) == []


async def test_a_result_declared_larger_than_the_limit_is_refused_before_its_body(
    tmp_path: Path, fal: FakeFal
) -> None:
    fal.result = os.urandom(1_000_000)
    fal.stall_after = 0  # the body would never come: reading it would hang the job
    async with bot_with(tmp_path, fal, public=False, max_result_bytes=200_000) as h:
        await h.character("alice")
        job_id = await h.generate("@alice jumps")
        job = await h.finished(job_id, within=10)

    assert job.state is JobState.FAILED
    assert job.reason is not None and "larger than" in job.reason
    assert fal.bytes_sent == 0


async def test_a_content_policy_failure_is_worded_as_a_content_refusal(
    tmp_path: Path, fal: FakeFal
) -> None:
    fal.complete_after_polls = None
    async with bot_with(tmp_path, fal, public=False) as h:
        await h.character("alice")
        job_id = await h.generate("@alice jumps")
        await until(lambda: fal.tasks)
        detail = [{"type": "content_policy_violation", "msg": "The prompt was flagged."}]
        fal.fail(fal.only_task().request_id, detail)
        job = await h.finished(job_id, within=10)

    assert job.state is JobState.FAILED
    assert job.reason is not None
    assert "fal refused the prompt or the references under its content rules" in job.reason


# Webhook signatures ------------------------------------------------------------------------------


async def submitted_job(h: Harness, fal: FakeFal) -> tuple[str, str]:
    """A job waiting at fal, and the webhook URL fal was given for it."""
    await h.character("alice")
    job_id = await h.generate("@alice waves")
    await until(lambda: fal.tasks)
    webhook = fal.only_task().webhook
    assert webhook is not None
    await until(lambda: h.chat.states(job_id)[-1:] == [JobState.SUBMITTED])
    return job_id, webhook


async def test_forged_replayed_and_altered_webhooks_get_401_and_change_nothing(
    tmp_path: Path, fal: FakeFal
) -> None:
    fal.complete_after_polls = None
    fal.send_webhooks = False
    async with bot_with(tmp_path, fal, public=True, **NO_POLLING) as h:
        job_id, webhook = await submitted_job(h, fal)
        task = fal.only_task()
        before = await h.job(job_id)
        body = fal.webhook_body(task)
        rid = task.request_id
        stranger = Ed25519PrivateKey.generate()
        old = int(time.time()) - 600
        altered = body.replace(b'"OK"', b'"ERROR"')
        assert altered != body
        attempts = {
            "forged": (body, signed_headers(stranger, body, request_id=rid)),
            "replayed": (
                body,
                signed_headers(fal.signing_key, body, request_id=rid, timestamp=old),
            ),
            "altered": (altered, signed_headers(fal.signing_key, body, request_id=rid)),
            "unsigned": (body, {"Content-Type": "application/json"}),
        }
        answers = {name: await post_hook(webhook, b, hd) for name, (b, hd) in attempts.items()}

        assert answers == dict.fromkeys(attempts, 401)
        assert await h.job(job_id) == before
        assert task.polls == 0  # a refused webhook does not even cause a status look-up

        # The genuine webhook, once fal has finished, is taken and the job completes.
        fal.complete(rid)
        good = signed_headers(fal.signing_key, fal.webhook_body(task), request_id=rid)
        assert await post_hook(webhook, fal.webhook_body(task), good) == 202
        await h.delivered(job_id, within=10)


async def test_a_webhook_signed_by_a_rotated_key_is_accepted_after_one_key_set_fetch(
    tmp_path: Path, fal: FakeFal
) -> None:
    fal.complete_after_polls = None
    fal.send_webhooks = False
    async with bot_with(tmp_path, fal, public=True, **NO_POLLING) as h:
        job_id, webhook = await submitted_job(h, fal)
        task = fal.only_task()
        body = fal.webhook_body(task)
        rid = task.request_id
        assert fal.jwks_fetches == 1  # fetched at start, since webhooks can reach the bot

        first = signed_headers(fal.signing_key, body, request_id=rid)
        assert await post_hook(webhook, body, first) == 202
        assert fal.jwks_fetches == 1  # the cached key served

        new_key = fal.rotate_key()
        rotated = signed_headers(new_key, body, request_id=rid)
        assert await post_hook(webhook, body, rotated) == 202
        assert fal.jwks_fetches == 2  # one fetch found the new key
        assert await post_hook(webhook, body, rotated) == 202
        assert fal.jwks_fetches == 2  # and it is cached now

        # The retired key is no longer trusted, after one more fetch to be sure.
        stale = signed_headers(Ed25519PrivateKey.generate(), body, request_id=rid)
        assert await post_hook(webhook, body, stale) == 401
        assert fal.jwks_fetches == 3
        assert (await h.job(job_id)).state is not JobState.FAILED


# The client on its own ---------------------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.5)) as http:
        yield http


def provider(
    tmp_path: Path, fake: FakeFal, client: httpx.AsyncClient, **settings: object
) -> FalProvider:
    return FalProvider(provider_context(tmp_path, fake, client, **settings))


async def test_every_documented_state_is_mapped(
    tmp_path: Path, fal: FakeFal, client: httpx.AsyncClient
) -> None:
    fal.complete_after_polls = None
    fal_client = provider(tmp_path, fal, client)
    task_id = await fal_client.submit(image_request(tmp_path))
    task = fal.only_task()
    body = fal.submits()[0].json()
    assert "seed" not in body and "negative_prompt" not in body

    task.queue_position = 3
    queued = await fal_client.status(task_id)
    assert (queued.state, queued.queue_position) == (TaskState.PENDING, 3)

    task.status = "IN_PROGRESS"
    assert (await fal_client.status(task_id)).state is TaskState.RUNNING

    fal.complete(task.request_id)
    done = await fal_client.status(task_id)
    assert done.state is TaskState.SUCCEEDED
    assert done.result_url == f"{fal.url}/results/{task.request_id}.mp4"

    fal.fail(task.request_id, "Video duration exceeds the limit")
    failed = await fal_client.status(task_id)
    assert failed.state is TaskState.FAILED
    assert failed.error == "Video duration exceeds the limit"


async def test_the_result_path_is_a_setting_and_a_missing_video_is_reported(
    tmp_path: Path, fal: FakeFal, client: httpx.AsyncClient
) -> None:
    context = provider(tmp_path, fal, client).context
    fal_client = FalProvider(context, video_path=("output", "video", "url"))
    task_id = await fal_client.submit(image_request(tmp_path))
    fal.complete(fal.only_task().request_id)

    status = await fal_client.status(task_id)

    assert status.state is TaskState.FAILED
    assert status.error is not None and "output.video.url" in status.error


async def test_cancel_is_taken_while_queued_and_refused_once_finished(
    tmp_path: Path, fal: FakeFal, client: httpx.AsyncClient
) -> None:
    fal.complete_after_polls = None
    fal_client = provider(tmp_path, fal, client)
    task_id = await fal_client.submit(image_request(tmp_path))

    assert await fal_client.cancel(task_id) is True
    assert fal.only_task().cancelled
    assert await fal_client.cancel(task_id) is False
    assert (await fal_client.status(task_id)).state is TaskState.FAILED


async def test_a_submit_that_times_out_is_not_sent_again(
    tmp_path: Path, fal: FakeFal, client: httpx.AsyncClient
) -> None:
    fal.hang_submit = True
    fal_client = provider(tmp_path, fal, client)

    with pytest.raises(ProviderError) as caught:
        await fal_client.submit(image_request(tmp_path))

    assert caught.value.code == "submit_unknown"
    assert not caught.value.retryable
    assert len(fal.submits()) == 1


async def test_check_key_judges_the_key_and_says_whether_webhooks_work(
    tmp_path: Path, fal: FakeFal, client: httpx.AsyncClient
) -> None:
    good = await provider(tmp_path, fal, client, public_url="https://bot.example").check_key()
    assert good.ok and good.webhooks

    polled = await provider(tmp_path, fal, client).check_key()
    assert polled.ok and not polled.webhooks and "R2V_PUBLIC_URL" in polled.detail

    bad = await provider(tmp_path, fal, client, fal_key="wrong").check_key()
    assert not bad.ok and "FAL_KEY" in bad.detail


async def test_hosts_have_their_own_settings_and_fal_base_url_stands_in(
    tmp_path: Path, fal: FakeFal, client: httpx.AsyncClient
) -> None:
    split = provider(
        tmp_path,
        fal,
        client,
        fal_queue_url="https://queue.example",
        fal_rest_url="https://rest.example",
    )
    assert (split.queue_url, split.rest_url) == ("https://queue.example", "https://rest.example")
    assert split.jwks.url == "https://rest.example/.well-known/jwks.json"
    joined = provider(tmp_path, fal, client, fal_jwks_url="https://keys.example/jwks")
    assert (joined.queue_url, joined.rest_url) == (fal.url, fal.url)
    assert joined.jwks.url == "https://keys.example/jwks"
    # A task id survives a restart: it carries the URLs the submit answered.
    request_id = json.loads(await joined.submit(image_request(tmp_path)))["id"]
    assert request_id in fal.tasks
    assert MODEL in {r.path.lstrip("/") for r in fal.submits()}
    # A bare request id (no URLs kept) gets the documented shape: the model's sub-path dropped.
    bare = FalTask.from_id("r1", "https://queue.example", MODEL)
    assert bare.status_url == "https://queue.example/fal-ai/wan/requests/r1/status"
    assert bare.response_url == "https://queue.example/fal-ai/wan/requests/r1"


async def test_prices_default_to_ten_cents_a_second_with_reference_video_and_can_be_set(
    tmp_path: Path, fal: FakeFal, client: httpx.AsyncClient
) -> None:
    listed = provider(tmp_path, fal, client).capabilities
    assert listed.estimate("720p", 5) == 0.5
    assert listed.estimate("1080p", 10, reference_video_seconds=3.0) == 1.3
    priced = provider(tmp_path, fal, client, prices={"fal": {"1080p": 0.2}}).capabilities
    assert priced.estimate("1080p", 5) == 1.0
    assert priced.estimate("720p", 5) == 0.5
