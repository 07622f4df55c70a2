"""The bot's ``local`` provider against a real worker on loopback (tiny model on the CPU): the
whole bot from ``/generate`` to a delivered console video, and the client's own answers."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import av
import httpx
import pytest

from adapters import webhooks
from adapters.http.media import MediaLinks
from adapters.providers.base import ProviderContext
from adapters.providers.local import LocalProvider
from bot.errors import ProviderError, WebhookRejected
from bot.jobs import fit_spec
from bot.models import JobReference, JobSpec, JobState, MediaKind
from bot.ports import LabelStyle
from bot.settings import load_settings
from tests.harness import running_bot, until
from tests.worker.test_api import AUTH, submit
from tests.worker.tiny import TOKEN, make_reference, tiny_model, tiny_settings
from worker.protocol import webhook_secret
from worker.server import WorkerServer
from worker.service import Worker

pytest.importorskip("torch")
pytest.importorskip("diffusers")

#: Polling so slow that only the worker's webhook can finish a job within a test's patience.
NO_POLLING = {"poll_initial_seconds": 60.0, "poll_max_seconds": 60.0}


@asynccontextmanager
async def running_worker(tmp_path: Path, steps: int, **more: object) -> AsyncIterator[WorkerServer]:
    settings = tiny_settings(tmp_path / "worker", tiny_model(), steps=steps, **more)
    async with WorkerServer(Worker(settings), "127.0.0.1", 0) as server:
        yield server


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[WorkerServer]:
    async with running_worker(tmp_path, steps=4) as server:
        yield server


def bot_settings(worker: WorkerServer, **more: object) -> dict[str, object]:
    return {"local_url": worker.url, "worker_token": TOKEN, "provider": "local", **more}


def frames_and_size(path: Path) -> tuple[int, tuple[int, int]]:
    with av.open(io.BytesIO(path.read_bytes()), "r") as container:
        frames = list(container.decode(video=0))
    return len(frames), (frames[0].width, frames[0].height)


async def test_generate_is_made_on_the_worker_and_delivered_when_its_webhook_arrives(
    tmp_path: Path, worker: WorkerServer
) -> None:
    async with running_bot(tmp_path, public=True, **bot_settings(worker, **NO_POLLING)) as h:
        await h.character("alice", voice=True)
        await h.character("bob", video=True)
        reply = await h.run("generate", prompt="@alice waves at @bob", duration=2, seed=11)
        assert reply.job_id is not None, reply.text
        job = await h.delivered(reply.job_id, within=30)  # polling would take 60 s

    (post,) = h.chat.videos(job.id)
    assert post.path is not None
    assert frames_and_size(post.path) == (33, (64, 32))
    assert "voices dropped" in reply.text  # VACE makes silent video
    (record,) = worker.worker.store.records()
    assert record.request.prompt == "character1 waves at character2"
    assert record.references == 2 and record.seed == 11
    assert record.request.webhook_url is not None
    assert record.request.webhook_url.startswith(f"{h.public_url}/hooks/local/{job.id}?t=")
    assert job.task_id == record.id


async def test_polling_shows_the_workers_progress_in_the_status_message(
    tmp_path: Path,
) -> None:
    async with (
        running_worker(tmp_path, steps=40) as worker,  # long enough to be seen running
        running_bot(tmp_path, public=False, **bot_settings(worker)) as h,
    ):
        await h.character("alice")
        job_id = await h.generate("@alice dances on a rooftop at dusk", duration=2)
        await h.delivered(job_id, within=60)

    states = h.chat.states(job_id)
    assert states[-2:] == [JobState.DELIVERING, JobState.DELIVERED]
    shown = [
        int(match.group(1))
        for post in h.chat.posts
        if post.job == job_id and (match := re.search(r"Rendering (\d+)%", post.text))
    ]
    assert any(0 < percent < 90 for percent in shown), shown  # seen between denoising steps
    assert shown == sorted(shown)


async def test_the_workers_limits_reach_the_bots_checks(
    tmp_path: Path, worker: WorkerServer
) -> None:
    async with running_bot(tmp_path, public=False, **bot_settings(worker)) as h:
        provider = h.app.providers["local"]
        caps = provider.capabilities
        for name in ("alice", "bob", "carol", "dave"):
            await h.character(name)
        four = await h.run("generate", prompt="@alice @bob @carol and @dave wave", duration=2)
        too_long = await h.run("generate", prompt="@alice waves", duration=9)
        too_big = await h.run("generate", prompt="@alice waves", duration=2, resolution="1080p")

    assert (caps.max_references, caps.resolutions, caps.voice) == (3, ("720p",), False)
    assert caps.label_style is LabelStyle.CHARACTER
    assert caps.durations_for(False) == (1, 5)
    assert four.code == "too_many_references" and "at most 3" in four.text
    assert too_long.code == "duration_out_of_range" and "1–5 s" in too_long.text
    assert too_big.code == "invalid_option" and "choose 720p" in too_big.text
    assert not worker.worker.store.records()  # nothing reached the worker


async def client(tmp_path: Path, worker: WorkerServer, token: str = TOKEN) -> LocalProvider:
    settings = load_settings(
        data_dir=tmp_path / "data", _env_file=None, **bot_settings(worker, worker_token=token)
    )
    context = ProviderContext(settings, httpx.AsyncClient(), MediaLinks(b"k" * 32, None))
    return LocalProvider(context)


async def test_the_client_checks_the_workers_signature_and_reports_on_the_worker(
    tmp_path: Path, worker: WorkerServer
) -> None:
    local = await client(tmp_path, worker)
    wrong = await client(tmp_path, worker, token="not-the-worker-token-at-all")
    try:
        check = await local.check_key()
        refused = await wrong.check_key()
        body = b'{"type": "task.succeeded", "data": {"id": "task_1", "state": "succeeded"}}'
        await local.check_webhook(webhooks.signed_headers(webhook_secret(TOKEN), body), body)
        forged = webhooks.signed_headers(webhooks.new_secret(), body)
        with pytest.raises(WebhookRejected):
            await local.check_webhook(forged, body)
        with pytest.raises(WebhookRejected):  # signed by the worker, altered on the way
            await local.check_webhook(
                webhooks.signed_headers(webhook_secret(TOKEN), body), body.replace(b"1", b"2")
            )
        with pytest.raises(ProviderError, match="no longer knows task task_gone") as gone:
            await local.status("task_gone")
    finally:
        await local.close()
        await wrong.close()

    assert check.ok and "worker reachable, token accepted" in check.detail
    assert "on cpu" in check.detail and not check.webhooks
    assert not refused.ok and "R2V_WORKER_TOKEN" in refused.detail
    assert gone.value.code == "task_unknown" and not gone.value.retryable


async def test_the_frame_cap_refuses_a_10_s_clip_before_it_reaches_the_worker(
    tmp_path: Path,
) -> None:
    async with (
        running_worker(tmp_path, steps=2, max_frames=49) as worker,  # 3 s at 16 fps
        running_bot(tmp_path, public=False, **bot_settings(worker)) as h,
    ):
        await h.character("alice")
        announced = h.app.providers["local"].capabilities.durations_for(False)
        ten = await h.run("generate", prompt="@alice waves", duration=10)
        four = await h.run("generate", prompt="@alice waves", duration=4)
    async with (
        running_worker(tmp_path / "second", steps=2) as worker_81,
        running_bot(
            tmp_path / "second", public=False, **bot_settings(worker_81, worker_max_frames=33)
        ) as h,
    ):
        capped_by_bot = h.app.providers["local"].capabilities.durations_for(False)

    assert announced == (1, 3)
    assert ten.code == "duration_out_of_range" and "local makes 1–3 s" in ten.text, ten.text
    assert four.code == "duration_out_of_range"
    assert not worker.worker.store.records()
    # The bot's own R2V_WORKER_MAX_FRAMES holds even where the worker announces more.
    assert capped_by_bot == (1, 2)


async def test_the_place_in_the_workers_queue_reaches_the_status_message(
    tmp_path: Path,
) -> None:
    image = make_reference(tmp_path / "a.png", (320, 320), (10, 200, 10))
    async with (
        running_worker(tmp_path, steps=200) as worker,
        httpx.AsyncClient(base_url=worker.url, headers=AUTH, timeout=30) as direct,
        running_bot(tmp_path, public=False, **bot_settings(worker)) as h,
    ):
        ahead = [(await submit(direct, [image])).json() for _ in range(2)]
        await h.character("alice")
        job_id = await h.generate("@alice waves at the camera", duration=2)
        await until(lambda: any("2nd in its queue" in p.text for p in h.chat.posts), within=20)
        await h.run("cancel", job=job_id)
        for task in ahead:
            await direct.post(f"/v1/tasks/{task['id']}/cancel")

    shown = [post.text for post in h.chat.posts if post.job == job_id]
    assert any("📨 Sent to local — 2nd in its queue." in text for text in shown), shown


@pytest.mark.parametrize(("max_frames", "longest"), [(81, 5), (49, 3)])
def test_the_frame_cap_makes_the_engine_pass_a_longer_job_to_the_next_provider(
    tmp_path: Path, max_frames: int, longest: int
) -> None:
    settings = load_settings(
        data_dir=tmp_path / "data",
        _env_file=None,
        local_url="http://127.0.0.1:9",  # never asked: the limits are the assumed ones
        worker_token=TOKEN,
        worker_max_frames=max_frames,
    )
    local = LocalProvider(
        ProviderContext(settings, httpx.AsyncClient(), MediaLinks(b"k" * 32, None))
    )
    reference = JobReference(
        label="character1", kind=MediaKind.IMAGE, blob="b" * 64, mime="image/png", source="@a"
    )
    spec = JobSpec(
        prompt="character1 waves",
        original_prompt="@a waves",
        references=(reference,),
        duration=10,
        resolution="480p",
        aspect_ratio="16:9",
    )

    assert local.capabilities.durations_for(False) == (1, longest)
    # ``fit_spec`` is where the engine decides to move down the failover list.
    assert fit_spec(spec, local.capabilities) is None
    assert fit_spec(replace(spec, duration=longest + 1), local.capabilities) is None
    assert fit_spec(replace(spec, duration=longest), local.capabilities) is not None
