"""Loop lag: how late a 10 ms asyncio ticker fires while renders and media checks run.

Everything the bot does happens on one event loop: webhooks are answered, status messages edited
and chat events acknowledged there (Discord and Slack give three seconds). Heavy work (encoding a
storyboard, decoding and re-saving a photo, probing a video) is meant to run in threads, so the
loop keeps turning. This benchmark checks that it does: a ticker asks to wake every 10 ms and
records how late each wake-up comes, first with the bot idle, then while the real storyboard
provider renders 4 clips (3 s, 720p, an image and a video reference each, two at a time as the
app runs it) and ``bot.media.check_file`` checks 20 attachments (2000×2000 JPEGs and PNGs, short
720p MP4s), all at once. Target: no tick more than 50 ms late.

Lateness has two sources the figures cannot tell apart: work done on the loop itself, and
threads holding Python's GIL (a C extension that does not release it keeps the loop waiting too).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from statistics import fmean

import httpx
from PIL import Image

from adapters.providers.storyboard import StoryboardProvider
from adapters.webhooks import new_secret
from bench.common import Figure, Result, cached, main, percentile, until
from bot import media
from bot.models import MediaKind
from bot.ports import ProviderRequest, StagedReference, TaskState
from tests.media_factory import local_file, make_video

TICK = 0.010
TARGET_MS = 50.0
IDLE_SECONDS = 1.0
RENDERS = 4
CHECKS = 20
TIME_LIMIT = 300.0
PHOTO_SIDE = 2000


class LagMeter:
    """A ticker that sleeps ``interval`` again and again and records how late each wake-up is."""

    def __init__(self, interval: float = TICK) -> None:
        self.interval = interval
        self.lags: list[float] = []

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            asked = loop.time()
            await asyncio.sleep(self.interval)
            self.lags.append(loop.time() - asked - self.interval)

    async def measure(self, work: Awaitable[object] | None, seconds: float = 0.0) -> None:
        """Tick until ``work`` ends (or for ``seconds`` when there is none)."""
        stop = asyncio.Event()
        ticker = asyncio.create_task(self.run(stop))
        try:
            if work is None:
                await asyncio.sleep(seconds)
            else:
                await work
        finally:
            stop.set()
            await ticker


@dataclass(frozen=True)
class Attachments:
    """The files the checks are run on, and the references the renders use."""

    photos: tuple[Path, ...]
    videos: tuple[Path, ...]

    def for_checks(self, count: int) -> list[Path]:
        """``count`` files taken in turn from the photos and clips (20: 7 JPEG, 7 PNG, 6 MP4)."""
        pool = [*self.photos, *self.videos]
        return [pool[i % len(pool)] for i in range(count)]


def _photo(path: Path, seed: int, fmt: str) -> None:
    """A photo-like 2000×2000 picture: gradients under grain, so it compresses like a photo."""
    side = PHOTO_SIDE
    grain = Image.effect_noise((side, side), 40 + seed)
    ramp = Image.linear_gradient("L").resize((side, side))
    channels = (
        Image.blend(ramp, grain, 0.5),
        Image.blend(ramp.rotate(90), grain, 0.4),
        Image.blend(ramp.rotate(180), grain, 0.3),
    )
    picture = Image.merge("RGB", channels)
    picture.save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def prepare() -> Attachments:
    """Make (or reuse from the cache) two photos of each format and two 720p clips."""
    photos = [
        cached(f"photo-{seed}.{fmt.lower()}", partial(_photo, seed=seed, fmt=fmt))
        for seed in range(2)
        for fmt in ("JPEG", "PNG")
    ]
    videos = tuple(
        cached(
            f"clip-{seconds}s-720p.mp4",
            partial(make_video, seconds=seconds, size=(1280, 720), fps=24),
        )
        for seconds in (3, 4)
    )
    return Attachments(tuple(photos), videos)


async def renders(
    files: Attachments, workdir: Path, client: httpx.AsyncClient
) -> tuple[int, list[str]]:
    """Render ``RENDERS`` storyboards with the real provider; answer how many succeeded, and why
    the others did not."""
    photo = next(p for p in files.photos if p.suffix == ".jpeg")
    references = (
        StagedReference("Image 1", MediaKind.IMAGE, photo, "image/jpeg"),
        StagedReference("Video 1", MediaKind.VIDEO, files.videos[0], "video/mp4"),
    )
    provider = StoryboardProvider(workdir, webhook_secret=new_secret(), client=client)
    await provider.start()
    try:
        tasks = [
            await provider.submit(
                ProviderRequest(
                    job_id=f"lag-{index}",
                    prompt="Image 1 and Video 1 dance on a rooftop at dusk",
                    references=references,
                    duration=3,
                    resolution="720p",
                    aspect_ratio="16:9",
                    seed=index,
                    negative_prompt="",
                    webhook_url=None,
                )
            )
            for index in range(RENDERS)
        ]
        ended = {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED}
        statuses = {}

        async def all_ended() -> bool:
            for task in tasks:
                statuses[task] = await provider.status(task)
            return all(s.state in ended for s in statuses.values())

        # Asked four times a second: often enough to end promptly, rarely enough that the
        # asking (a task file read in a thread per task) adds little to the load measured.
        await until(all_ended, TIME_LIMIT, "the storyboard renders", every=0.25)
    finally:
        await provider.close()
    problems = [
        s.error or str(s.state) for s in statuses.values() if s.state is not TaskState.SUCCEEDED
    ]
    return RENDERS - len(problems), problems


async def checks(paths: list[Path], workdir: Path) -> tuple[int, list[str]]:
    """Check every file as an attachment; answer how many were accepted, and the refusals."""
    outcomes = await asyncio.gather(
        *(media.check_file(local_file(path), workdir) for path in paths), return_exceptions=True
    )
    refusals = [
        f"{path.name}: {o}"
        for path, o in zip(paths, outcomes, strict=True)
        if isinstance(o, BaseException)
    ]
    return len(paths) - len(refusals), refusals


async def run() -> Result:
    files = await asyncio.to_thread(prepare)
    idle = LagMeter()
    loaded = LagMeter()
    # The client is made before measuring, as the app makes its one client at start: building
    # one loads the CA certificates on the loop (tens of milliseconds).
    async with httpx.AsyncClient() as client:
        await idle.measure(None, IDLE_SECONDS)
        with tempfile.TemporaryDirectory(prefix="r2v-bench-lag-") as name:
            workdir = Path(name)
            workload = asyncio.gather(
                renders(files, workdir / "storyboard", client),
                checks(files.for_checks(CHECKS), workdir / "incoming"),
            )
            started = time.perf_counter()
            work = asyncio.ensure_future(asyncio.wait_for(workload, TIME_LIMIT))
            await loaded.measure(work)
            busy = time.perf_counter() - started
            (rendered, render_problems), (accepted, refusals) = work.result()
    lags_ms = [lag * 1000 for lag in loaded.lags]
    worst = max(lags_ms)
    notes = [
        f"{len(lags_ms)} ticks over {busy:.1f} s of load; {rendered} of {RENDERS} renders "
        f"finished, {accepted} of {CHECKS} attachments accepted.",
        f"Idle loop for comparison: max {max(idle.lags) * 1000:.1f} ms, "
        f"mean {fmean(idle.lags) * 1000:.2f} ms over {len(idle.lags)} ticks.",
        *(f"Render failed: {p}" for p in render_problems),
        *(f"Attachment refused: {r}" for r in refusals),
    ]
    return Result(
        name="loop_lag",
        title="Event-loop lag under renders and media checks",
        figures=(
            Figure("Max tick lag", worst, "ms", target=TARGET_MS),
            Figure("p99 tick lag", percentile(lags_ms, 0.99), "ms"),
            Figure("Mean tick lag", fmean(lags_ms), "ms", decimals=2),
            Figure("Load duration", busy, "s"),
        ),
        notes=tuple(notes),
        checks_passed=rendered == RENDERS and accepted == CHECKS,
    )


if __name__ == "__main__":
    main(run)
