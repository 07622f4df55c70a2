"""The offline storyboard: the MP4s it renders, and how it behaves as a provider.

Renders are real (libx264 through PyAV) but small: 720p, mostly 2 s, and the square or upright
frame sizes where the test does not care about 16:9. Webhooks go to a loopback aiohttp server.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image, ImageChops, ImageStat

from adapters.providers.render import (
    RenderCancelled,
    RenderFailed,
    RenderSpec,
    render_storyboard,
)
from adapters.providers.storyboard import StoryboardProvider
from adapters.webhooks import new_secret
from bot.errors import ProviderError, WebhookRejected
from bot.models import MediaKind
from bot.ports import (
    LabelStyle,
    Provider,
    ProviderRequest,
    StagedReference,
    TaskState,
    TaskStatus,
)
from tests.media_factory import make_image, make_video, make_wav

# Media -------------------------------------------------------------------------------------------


def gradient_image(path: Path) -> Path:
    """A picture that changes everywhere, so any pan or zoom changes every part of a frame."""
    ramp = Image.linear_gradient("L").resize((640, 480))
    Image.merge(
        "RGB",
        (ramp, ramp.rotate(90, expand=False), ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
    ).save(path)
    return path


def top_level_boxes(path: Path) -> list[str]:
    """The MP4's top-level box types in file order (enough to see where moov lies)."""
    boxes = []
    with path.open("rb") as file:
        while header := file.read(8):
            size, kind = struct.unpack(">I4s", header)
            skip = size - 8
            if size == 1:
                skip = struct.unpack(">Q", file.read(8))[0] - 16
            boxes.append(kind.decode("latin-1"))
            file.seek(skip, 1)
    return boxes


def frames(path: Path) -> Iterator[Image.Image]:
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_image()  # type: ignore[no-untyped-call]


def band_top(picture: Image.Image) -> int:
    """The first row from the top whose median brightness is dark: where the caption band starts."""
    gray = picture.convert("L")
    for row in range(gray.height):
        if ImageStat.Stat(gray.crop((0, row, gray.width, row + 1))).median[0] < 150:
            return row
    return gray.height


# Rendering ---------------------------------------------------------------------------------------


def test_three_second_clip_is_a_faststart_h264_mp4_with_voice(tmp_path: Path) -> None:
    image = gradient_image(tmp_path / "alice.png")
    video = make_video(tmp_path / "bob.mp4", seconds=1.0)
    voice = make_wav(tmp_path / "alice.wav", seconds=1.0)
    out = tmp_path / "out" / "clip.mp4"
    progress: list[float] = []
    spec = RenderSpec(
        references=(("Image 1", MediaKind.IMAGE, image), ("Video 1", MediaKind.VIDEO, video)),
        caption="Image 1 and Video 1 dance on a rooftop at dusk",
        duration=3,
        resolution="720p",
        aspect_ratio="16:9",
        voices=(voice,),
        seed=7,
    )

    render_storyboard(spec, out, on_progress=progress.append)

    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == 24
        assert (stream.width, stream.height) == (1280, 720)
        assert container.duration is not None
        assert abs(container.duration / av.time_base - 3.0) <= 0.1
        assert len(container.streams.audio) == 1
        audio = container.streams.audio[0]
        assert audio.codec_context.name == "aac"
        assert audio.duration is not None and audio.time_base is not None
        assert abs(float(audio.duration * audio.time_base) - 3.0) <= 0.1
    pictures = list(frames(out))
    assert len(pictures) == 72
    boxes = top_level_boxes(out)
    assert boxes.index("moov") < boxes.index("mdat")
    # The first reference is panned and zoomed: the middle of the picture moves over its share.
    middle = (320, 160, 960, 480)
    moved = ImageChops.difference(pictures[1].crop(middle), pictures[30].crop(middle))
    assert max(ImageStat.Stat(moved).mean) > 3
    assert progress[-1] == 1.0 and progress == sorted(progress)
    assert [p.name for p in out.parent.iterdir()] == ["clip.mp4"]


def test_upright_clip_without_voice_has_no_audio_and_a_three_line_caption(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.png", size=(400, 640), color=(230, 230, 230))
    out = tmp_path / "clip.mp4"
    spec = RenderSpec(
        references=(("Image 1", MediaKind.IMAGE, image),),
        caption="Image 1 walks along a very long beach at sunrise " * 20,
        duration=2,
        resolution="720p",
        aspect_ratio="9:16",
    )

    render_storyboard(spec, out)

    with av.open(str(out)) as container:
        assert len(container.streams.audio) == 0
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (720, 1280)
    first = next(frames(out))
    top = band_top(first)
    # A long caption is cut to three lines on a band at the bottom, not spread over the picture.
    assert 1280 - 260 < top < 1280 - 80
    band = first.convert("L").crop((0, top, 720, 1280))
    assert ImageStat.Stat(band).extrema[0][1] > 200  # white text on the dark band


def test_reference_video_plays_in_real_time_and_loops(tmp_path: Path) -> None:
    # One second at 12 fps whose red rises frame by frame: frame k has red ≈ 21 k.
    video = make_video(tmp_path / "v.mp4", seconds=1.0, size=(320, 240), fps=12)
    out = tmp_path / "clip.mp4"
    spec = RenderSpec(
        references=(("Video 1", MediaKind.VIDEO, video),),
        caption="",
        duration=2,
        resolution="720p",
        aspect_ratio="1:1",
    )

    render_storyboard(spec, out)

    reds = [picture.getpixel((360, 360))[0] for picture in frames(out)]  # type: ignore[index]
    assert len(reds) == 48
    assert reds[0] < 40  # 0.00 s: source frame 0
    assert 100 < reds[12] < 160  # 0.50 s: source frame 6
    assert reds[21] > 180  # 0.875 s: source frame 10
    assert reds[25] < 40  # 1.04 s: back to source frame 0


def test_a_stopped_render_leaves_no_file(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.png")
    out = tmp_path / "clip.mp4"
    done: list[float] = []
    spec = RenderSpec(
        references=(("Image 1", MediaKind.IMAGE, image),),
        caption="x",
        duration=15,
        resolution="720p",
        aspect_ratio="1:1",
    )

    with pytest.raises(RenderCancelled):
        render_storyboard(spec, out, should_stop=lambda: len(done) >= 5, on_progress=done.append)

    assert len(done) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_an_unreadable_reference_fails_with_its_label(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    spec = RenderSpec(
        references=(("Image 2", MediaKind.IMAGE, broken),),
        caption="x",
        duration=2,
        resolution="720p",
        aspect_ratio="1:1",
    )
    with pytest.raises(RenderFailed, match="Image 2"):
        render_storyboard(spec, tmp_path / "clip.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png"]


# The provider ------------------------------------------------------------------------------------


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    state_on_arrival: str


@dataclass
class HookReceiver:
    """A loopback webhook endpoint that records what arrives and answers as told."""

    workdir: Path
    answers: list[int] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    arrived: asyncio.Queue[Delivery] = field(default_factory=asyncio.Queue)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        task_id = json.loads(body)["data"]["task_id"]
        task_file = json.loads((self.workdir / "tasks" / f"{task_id}.json").read_text())
        delivery = Delivery(dict(request.headers), body, task_file["state"])
        self.deliveries.append(delivery)
        await self.arrived.put(delivery)
        return web.Response(status=self.answers.pop(0) if self.answers else 204)

    async def next(self) -> Delivery:
        async with asyncio.timeout(30):
            return await self.arrived.get()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "storyboard"


@pytest.fixture
async def hooks(workdir: Path) -> AsyncIterator[HookReceiver]:
    receiver = HookReceiver(workdir)
    app = web.Application()
    app.router.add_post("/hooks/storyboard/job1", receiver.handle)
    server = TestServer(app)
    await server.start_server()
    receiver.url = str(server.make_url("/hooks/storyboard/job1")) + "?t=secret-token"
    yield receiver
    await server.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


@pytest.fixture
async def make_provider(workdir: Path, client: httpx.AsyncClient) -> AsyncIterator[Any]:
    """Build providers on the shared workdir (as a restarted bot would); all closed at the end."""
    made: list[StoryboardProvider] = []
    secret = new_secret()

    def build(**options: Any) -> StoryboardProvider:
        provider = StoryboardProvider(workdir, webhook_secret=secret, client=client, **options)
        _: Provider = provider  # mypy checks that it fits the port the job engine talks through
        made.append(provider)
        return provider

    yield build
    for provider in made:
        await provider.close()


def staged(path: Path, kind: MediaKind, label: str, voice: Path | None = None) -> StagedReference:
    mime = {MediaKind.IMAGE: "image/png", MediaKind.VIDEO: "video/mp4"}[kind]
    return StagedReference(
        label=label,
        kind=kind,
        path=path,
        mime=mime,
        voice_path=voice,
        voice_mime="audio/wav" if voice else None,
    )


def request(
    *references: StagedReference,
    duration: int = 2,
    resolution: str = "720p",
    aspect_ratio: str = "1:1",
    prompt: str = "Image 1 waves at the camera",
    negative_prompt: str = "",
    webhook_url: str | None = None,
) -> ProviderRequest:
    return ProviderRequest(
        job_id="job1",
        prompt=prompt,
        references=references,
        duration=duration,
        resolution=resolution,
        aspect_ratio=aspect_ratio,
        seed=None,
        negative_prompt=negative_prompt,
        webhook_url=webhook_url,
    )


async def poll(
    provider: StoryboardProvider, task_id: str, until: Callable[[TaskStatus], bool]
) -> TaskStatus:
    """Ask for the task's status, as the job engine does, until ``until`` holds (30 s at most)."""
    async with asyncio.timeout(30):
        while not until(status := await provider.status(task_id)):
            if status.state not in {TaskState.PENDING, TaskState.RUNNING}:
                pytest.fail(f"task {task_id} ended {status.state}: {status.error}")
            await asyncio.sleep(0.02)
    return status


async def wait_for(provider: StoryboardProvider, task_id: str, state: TaskState) -> TaskStatus:
    return await poll(provider, task_id, lambda status: status.state is state)


def task_file(workdir: Path, task_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((workdir / "tasks" / f"{task_id}.json").read_text())
    return data


async def test_submit_answers_at_once_and_the_finished_clip_is_announced_and_served(
    tmp_path: Path, workdir: Path, hooks: HookReceiver, make_provider: Any
) -> None:
    image = make_image(tmp_path / "alice.png")
    voice = make_wav(tmp_path / "alice.wav", seconds=1.0)
    provider: StoryboardProvider = make_provider()
    assert provider.capabilities.name == "storyboard"
    assert provider.capabilities.estimate("1080p", 10) == 0.0

    task_id = await provider.submit(
        request(staged(image, MediaKind.IMAGE, "Image 1", voice), webhook_url=hooks.url)
    )

    assert task_id.startswith("sb_") and len(task_id) == 19
    written = task_file(workdir, task_id)
    assert written["state"] in {"pending", "running"}
    assert written["request"]["prompt"] == "Image 1 waves at the camera"
    assert (await provider.status(task_id)).state in {TaskState.PENDING, TaskState.RUNNING}

    delivery = await hooks.next()
    assert json.loads(delivery.body) == {
        "type": "video.completed",
        "data": {"task_id": task_id, "status": "succeeded"},
    }
    assert delivery.state_on_arrival == "succeeded"  # written before the webhook was sent
    await provider.check_webhook(delivery.headers, delivery.body)
    with pytest.raises(WebhookRejected):
        await provider.check_webhook(
            delivery.headers, delivery.body.replace(b"succeeded", b"failed")
        )

    status = await provider.status(task_id)
    assert status.state is TaskState.SUCCEEDED
    assert status.result_url is not None and status.result_url.startswith("file://")
    chunks = [chunk async for chunk in provider.download(status)]
    assert all(len(chunk) <= 64 * 1024 for chunk in chunks)
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(b"".join(chunks))
    with av.open(str(copy)) as container:
        assert (container.streams.video[0].width, container.streams.video[0].height) == (720, 720)
        assert len(container.streams.audio) == 1
    assert await provider.cancel(task_id) is False  # already finished


async def test_a_failed_render_is_announced_and_the_webhook_retried(
    tmp_path: Path, hooks: HookReceiver, make_provider: Any
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    hooks.answers = [503]
    provider: StoryboardProvider = make_provider()

    task_id = await provider.submit(
        request(staged(broken, MediaKind.IMAGE, "Image 1"), webhook_url=hooks.url)
    )

    first, second = await hooks.next(), await hooks.next()
    assert json.loads(second.body) == {
        "type": "video.failed",
        "data": {"task_id": task_id, "status": "failed"},
    }
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    await provider.check_webhook(second.headers, second.body)
    status = await provider.status(task_id)
    assert status.state is TaskState.FAILED
    assert status.error is not None and "Image 1" in status.error


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ({"references": 6}, "6 references"),
        ({"references": 0}, "0 references"),
        ({"video": True, "duration": 12}, "12 s clip cannot be made with a reference video"),
        ({"duration": 16}, "2–15 s with images only"),
        ({"duration": 1}, "1 s clip"),
        ({"resolution": "480p"}, "Resolution “480p”"),
        ({"aspect_ratio": "21:9"}, "Aspect ratio “21:9”"),
        ({"prompt": "x" * 5001}, "5001 characters"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"negative_prompt": "n" * 501}, "negative prompt has 501"),
        ({"missing": True}, "gone.png"),
    ],
    ids=lambda value: (
        "-".join(f"{k}={str(v)[:8]}" for k, v in value.items()) if isinstance(value, dict) else ""
    ),
)
async def test_refuses_what_wan_refuses(
    tmp_path: Path, workdir: Path, make_provider: Any, shape: dict[str, Any], message: str
) -> None:
    image = make_image(tmp_path / "a.png")
    video = make_video(tmp_path / "v.mp4", seconds=0.5, size=(64, 64), fps=4)
    count = shape.get("references", 1)
    references = [staged(image, MediaKind.IMAGE, f"Image {n + 1}") for n in range(count)]
    if shape.get("video"):
        references.append(staged(video, MediaKind.VIDEO, "Video 1"))
    if shape.get("missing"):
        references.append(staged(tmp_path / "gone.png", MediaKind.IMAGE, "Image 2"))
    options = {k: v for k, v in shape.items() if k not in {"references", "video", "missing"}}
    provider: StoryboardProvider = make_provider()

    with pytest.raises(ProviderError, match=message) as caught:
        await provider.submit(request(*references, **options))

    assert caught.value.code == "provider_refused" and not caught.value.retryable
    assert not (workdir / "tasks").exists()


async def test_cancel_stops_a_running_render(
    tmp_path: Path, workdir: Path, make_provider: Any
) -> None:
    image = make_image(tmp_path / "a.png")
    provider: StoryboardProvider = make_provider()
    # A whole 15 s 1080p render takes far longer than the two seconds cancel is given.
    task_id = await provider.submit(
        request(
            staged(image, MediaKind.IMAGE, "Image 1"),
            duration=15,
            resolution="1080p",
            aspect_ratio="16:9",
        )
    )
    await poll(provider, task_id, lambda status: bool(status.progress))

    async with asyncio.timeout(2):
        assert await provider.cancel(task_id) is True

    status = await provider.status(task_id)
    assert status.state is TaskState.CANCELLED
    assert task_file(workdir, task_id)["state"] == "cancelled"
    results = workdir / "results"
    assert not results.exists() or not any(results.iterdir())  # no clip, no half-written file
    assert await provider.cancel(task_id) is False


async def test_a_task_left_running_resumes_when_a_new_provider_starts(
    tmp_path: Path, workdir: Path, hooks: HookReceiver, make_provider: Any
) -> None:
    image = make_image(tmp_path / "a.png")
    before: StoryboardProvider = make_provider(render_delay=60.0)
    task_id = await before.submit(
        request(staged(image, MediaKind.IMAGE, "Image 1"), webhook_url=hooks.url)
    )
    await wait_for(before, task_id, TaskState.RUNNING)
    await before.close()  # the bot stops mid-render
    assert task_file(workdir, task_id)["state"] == "running"

    after: StoryboardProvider = make_provider()
    await after.start()

    delivery = await hooks.next()
    assert json.loads(delivery.body)["type"] == "video.completed"
    status = await after.status(task_id)
    assert status.state is TaskState.SUCCEEDED
    assert status.result_url is not None


async def test_asking_about_an_orphaned_task_resumes_it(
    tmp_path: Path, workdir: Path, make_provider: Any
) -> None:
    image = make_image(tmp_path / "a.png")
    before: StoryboardProvider = make_provider(render_delay=60.0)
    task_id = await before.submit(request(staged(image, MediaKind.IMAGE, "Image 1")))
    await before.close()
    assert task_file(workdir, task_id)["state"] in {"pending", "running"}

    after: StoryboardProvider = make_provider(label_style=LabelStyle.COMPACT)
    assert after.capabilities.label_style is LabelStyle.COMPACT

    status = await wait_for(after, task_id, TaskState.SUCCEEDED)
    assert status.result_url is not None


@pytest.mark.parametrize("task_id", ["sb_0123456789abcdef", "../../etc/passwd", "sb_zz"])
async def test_unknown_tasks_are_named_as_such(make_provider: Any, task_id: str) -> None:
    provider: StoryboardProvider = make_provider()
    for call in (provider.status, provider.cancel):
        with pytest.raises(ProviderError) as caught:
            await call(task_id)
        assert caught.value.code == "unknown_task"


async def test_download_serves_only_its_own_results(make_provider: Any, tmp_path: Path) -> None:
    provider: StoryboardProvider = make_provider()
    secret = tmp_path / "private.txt"
    secret.write_text("not for download")
    forged = TaskStatus(TaskState.SUCCEEDED, result_url=secret.as_uri())
    with pytest.raises(ProviderError) as caught:
        async for _ in provider.download(forged):
            pass
    assert caught.value.code == "no_result"


def test_a_portrait_in_a_landscape_frame_is_shown_whole_not_cropped(tmp_path: Path) -> None:
    # A tall picture whose top tenth (the head) is pure red: cropping it to 16:9 would cut it.
    portrait = Image.new("RGB", (300, 600), (40, 160, 40))
    portrait.paste((255, 0, 0), (0, 0, 300, 60))
    path = tmp_path / "tall.png"
    portrait.save(path)
    out = tmp_path / "clip.mp4"
    spec = RenderSpec(
        references=(("Image 1", MediaKind.IMAGE, path),),
        caption="",
        duration=2,
        resolution="720p",
        aspect_ratio="16:9",
    )

    render_storyboard(spec, out)

    for picture in (next(frames(out)), list(frames(out))[-1]):
        rgb = picture.convert("RGB")
        pixels = [rgb.getpixel((x, y)) for x in range(0, 1280, 8) for y in range(0, 720, 8)]
        reds = sum(1 for p in pixels if isinstance(p, tuple) and p[0] > 200 and p[1] < 60)
        assert reds > 40, "the head of the picture is in the frame"
