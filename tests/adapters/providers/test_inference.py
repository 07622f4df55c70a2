"""The inference.sh client against its loopback fake: whole jobs through the bot (woken by its
unsigned webhook, and by polling alone), uploads, both status tables and both answer shapes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from adapters.providers.inference import LEGACY_STATUS_CODES, InferenceProvider
from bot.ports import ProviderRequest, TaskState
from tests.fakes.inference import CURRENT_CODES, LEGACY_CODES, FakeInference
from tests.harness import (
    NO_POLLING,
    bot_with,
    client_alone,
    provider_request,
    staged,
    until,
)
from tests.media_factory import make_image, make_wav


@pytest.fixture
async def fake(result_mp4: bytes) -> AsyncIterator[FakeInference]:
    async with FakeInference(result_mp4) as server:
        yield server


def direct(
    tmp_path: Path, fake: FakeInference, *, key: str | None = None, **options: Any
) -> AbstractAsyncContextManager[InferenceProvider]:
    """The client alone, for API edges a chat command cannot reach (every status number)."""
    return client_alone(
        lambda context: InferenceProvider(context, **options),
        tmp_path,
        fake,
        inference_api_key=key or fake.key,
        public_url="http://127.0.0.1:9",
    )


async def test_a_webhook_wakes_the_job_which_delivers_the_video(
    tmp_path: Path, fake: FakeInference, result_mp4: bytes
) -> None:
    fake.complete_after_polls = None
    async with bot_with(tmp_path, fake, **NO_POLLING) as h:
        await h.character("alice", voice=True)
        await h.character("bob", video=True)
        job_id = await h.generate("@alice greets @bob", resolution="1080p", seed=3)
        await until(lambda: fake.tasks)
        await fake.finish(next(iter(fake.tasks)))
        await h.delivered(job_id, within=10)
        assert h.delivered_bytes(job_id) == result_mp4
        public_url = h.public_url

    [run] = fake.runs
    assert run["app"] == "alibaba/wan-2-7-r2v"
    assert run["webhook"].startswith(f"{public_url}/hooks/inference/{job_id}?t=")
    assert [status for status, _ in fake.webhooks_sent] == [202]
    uploads = {u.content_type: u for u in fake.uploads.values()}
    assert set(uploads) == {"image/png", "video/mp4", "audio/wav"}
    for upload in uploads.values():
        assert len(upload.data) == upload.size > 0
        assert "Authorization" not in upload.put_headers
    inputs = run["input"]
    assert inputs["prompt"] == "Image 1 greets Video 1"
    assert inputs["reference_images"] == [_uri(fake, uploads["image/png"].file_id)]
    assert inputs["reference_videos"] == [_uri(fake, uploads["video/mp4"].file_id)]
    assert inputs["reference_voice"] == _uri(fake, uploads["audio/wav"].file_id)
    assert (inputs["resolution"], inputs["ratio"], inputs["duration"], inputs["seed"]) == (
        "1080P",
        "16:9",
        5,
        3,
    )


async def test_polling_alone_delivers_the_video_from_bare_answers(
    tmp_path: Path, fake: FakeInference, result_mp4: bytes
) -> None:
    fake.wrap, fake.send_webhooks = False, False
    async with bot_with(tmp_path, fake, public=False) as h:
        await h.character("alice")
        job_id = await h.generate("@alice waves")
        await h.delivered(job_id)
        assert h.delivered_bytes(job_id) == result_mp4
    [run] = fake.runs
    assert "webhook" not in run
    assert fake.webhooks_sent == []


@pytest.mark.parametrize(("name", "number"), sorted(CURRENT_CODES.items()))
@pytest.mark.parametrize("as_names", [False, True], ids=["numbers", "names"])
async def test_every_status_maps_to_our_state(
    tmp_path: Path, fake: FakeInference, name: str, number: int, as_names: bool
) -> None:
    expected = {
        "received": TaskState.PENDING,
        "queued": TaskState.PENDING,
        "running": TaskState.RUNNING,
        "cancelling": TaskState.RUNNING,
        "uploading": TaskState.RUNNING,
        "completed": TaskState.SUCCEEDED,
        "failed": TaskState.FAILED,
        "cancelled": TaskState.CANCELLED,
    }[name]
    fake.codes = None if as_names else CURRENT_CODES
    fake.complete_after_polls = None
    async with direct(tmp_path, fake) as provider:
        task_id = fake.add_task(name, error="GPU fell over" if name == "failed" else None)
        if name == "completed":
            await fake.finish(task_id)
        status = await provider.status(task_id)
    assert status.state is expected
    if name == "completed":
        assert status.result_url == f"{fake.url}/results/{task_id}.mp4"
    if name == "failed":
        assert status.error == "GPU fell over"


@pytest.mark.parametrize(
    ("fake_codes", "table", "expected"),
    [
        (CURRENT_CODES, None, TaskState.RUNNING),  # 9 read as uploading
        (LEGACY_CODES, LEGACY_STATUS_CODES, TaskState.SUCCEEDED),  # 9 read as completed
    ],
    ids=["current", "legacy"],
)
async def test_status_nine_means_what_the_status_table_says(
    tmp_path: Path,
    fake: FakeInference,
    fake_codes: dict[str, int],
    table: dict[int, str] | None,
    expected: TaskState,
) -> None:
    fake.codes, fake.complete_after_polls = fake_codes, None
    task_id = fake.add_task("uploading" if table is None else "received")
    if table is not None:
        await fake.finish(task_id)
    assert fake.view(fake.tasks[task_id])["status"] == 9
    options: dict[str, Any] = {} if table is None else {"status_codes": table}
    async with direct(tmp_path, fake, **options) as provider:
        status = await provider.status(task_id)
    assert status.state is expected
    assert (status.result_url is not None) == (expected is TaskState.SUCCEEDED)


@pytest.mark.parametrize("wrap", [True, False], ids=["wrapped", "bare"])
async def test_wrapped_and_bare_answers_are_read_alike(
    tmp_path: Path, fake: FakeInference, wrap: bool
) -> None:
    fake.wrap, fake.complete_after_polls = wrap, 1
    async with direct(tmp_path, fake) as provider:
        task_id = await provider.submit(_request(tmp_path))
        status = await provider.status(task_id)
    assert task_id in fake.tasks
    assert status.state is TaskState.SUCCEEDED
    assert status.result_url == f"{fake.url}/results/{task_id}.mp4"


async def test_only_the_first_voice_goes_out_because_the_app_takes_one(
    tmp_path: Path, fake: FakeInference
) -> None:
    async with direct(tmp_path, fake) as provider:
        await provider.submit(_request(tmp_path, voices=2))
    voice_uploads = [u.file_id for u in fake.uploads.values() if u.content_type == "audio/wav"]
    assert len(voice_uploads) == 2
    assert fake.runs[0]["input"]["reference_voice"] == _uri(fake, voice_uploads[0])


async def test_a_moderation_failure_is_worded_as_a_content_refusal(
    tmp_path: Path, fake: FakeInference
) -> None:
    fake.complete_after_polls = None
    async with direct(tmp_path, fake) as provider:
        task_id = fake.add_task("failed", error="Output flagged as NSFW by the safety checker")
        status = await provider.status(task_id)
    assert status.state is TaskState.FAILED
    assert status.error is not None
    assert "refused the prompt or the references under its content rules" in status.error


async def test_cancel_stops_a_running_task_and_declines_a_finished_one(
    tmp_path: Path, fake: FakeInference
) -> None:
    fake.complete_after_polls = None
    async with direct(tmp_path, fake) as provider:
        running, done = fake.add_task("running"), fake.add_task("completed")
        assert await provider.cancel(running) is True
        assert await provider.cancel(done) is False
        assert (await provider.status(running)).state is TaskState.CANCELLED


async def test_check_key_says_webhooks_work_with_a_public_url(
    tmp_path: Path, fake: FakeInference
) -> None:
    async with direct(tmp_path, fake) as provider:
        good = await provider.check_key()
    async with direct(tmp_path, fake, key="wrong") as provider:
        bad = await provider.check_key()
    assert good.ok and good.webhooks
    assert not bad.ok and "INFERENCE_API_KEY" in bad.detail


def _uri(fake: FakeInference, file_id: str) -> str:
    return f"{fake.url}/storage/{file_id}"


def _request(tmp_path: Path, *, voices: int = 0) -> ProviderRequest:
    """A request of two images, the first ``voices`` of them with a voice clip."""
    references = []
    for index in range(2):
        image = make_image(tmp_path / f"ref{index}.png", color=(index * 90, 80, 40))
        voice = make_wav(tmp_path / f"voice{index}.wav", seconds=1.0) if index < voices else None
        references.append(staged(image, f"Image {index + 1}", voice=voice))
    return provider_request(*references, prompt="Image 1 and Image 2 wave")
