"""Download memory: the bot's peak RSS while the engine fetches a 200 MiB result.

Hosted providers hand back videos of tens to hundreds of megabytes (a 15 s 1080p clip at a high
bitrate), and a bot on a small VM fetches several at once. The fetch must stream: bytes go from
the socket through ``stream_download`` into the blob store a chunk at a time, so memory stays
flat whatever the size. Target: peak RSS under 30 MB above the idle bot.

The result is served by a loopback aiohttp server in another process (so its buffers are not
counted) that makes the bytes as it sends them and never holds the file. The job goes the
engine's whole way: ``BenchProvider.download`` is ``stream_download`` as a hosted provider would
call it, the engine streams into the real ``FileBlobStore`` under the 500 MiB cap, runs
``media.inspect_result`` on the file, and delivers it.

For the result check to pass, the served file is a real MP4: a 1 s H.264 clip followed by a
top-level ``free`` box padding it to 200 MiB. MP4 readers skip ``free`` boxes, and appending one
after the clip leaves its sample offsets valid, so the job ends ``delivered`` and the figures
cover the full path (download, sha256, fsync, check) rather than a download that fails its check.
Making a genuine 200 MiB encode instead would take minutes here and measure the same streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import multiprocessing.connection
import os
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from aiohttp import web

from adapters.providers.download import stream_download
from bench.common import (
    BenchProvider,
    Figure,
    MiB,
    Result,
    RssSampler,
    bench_bot,
    main,
    memory_kib,
    reset_peak_rss,
    small_image,
    tiny_video,
    until,
)
from bot.jobs import EngineLimits
from bot.models import JobState
from bot.ports import TaskStatus

RESULT_BYTES = 200 * MiB
RESULT_CAP = 500 * MiB
TARGET_MB = 30.0
SEND_BLOCK = 256 * 1024
TIME_LIMIT = 300.0


# --- the result server (runs in its own process) ---------------------------------------------


def serve_result(clip: bytes, total: int, pipe: multiprocessing.connection.Connection) -> None:
    """Serve ``GET /result.mp4``: ``clip`` padded with a ``free`` box to ``total`` bytes.

    Sends its port through ``pipe``, then serves until the parent closes its end.
    """
    asyncio.run(_serve(clip, total, pipe))


async def _serve(clip: bytes, total: int, pipe: multiprocessing.connection.Connection) -> None:
    padding = total - len(clip)
    filler = os.urandom(SEND_BLOCK)

    async def result(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "video/mp4", "Content-Length": str(total)}
        )
        await response.prepare(request)
        await response.write(clip + struct.pack(">I4s", padding, b"free"))
        left = padding - 8
        while left > 0:
            block = filler if left >= len(filler) else filler[:left]
            await response.write(block)
            left -= len(block)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/result.mp4", result)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    pipe.send(port)
    try:
        # Serves until the parent closes the pipe (or dies): recv then raises EOFError.
        await asyncio.to_thread(_wait_for_close, pipe)
    finally:
        await runner.cleanup()


def _wait_for_close(pipe: multiprocessing.connection.Connection) -> None:
    with contextlib.suppress(EOFError):
        pipe.recv()


# --- the bot ---------------------------------------------------------------------------------


@dataclass
class FetchTimes:
    """When the provider's download started and ended, and how many bytes it passed on."""

    started: float = 0.0
    ended: float = 0.0
    received: int = 0


@contextlib.asynccontextmanager
async def result_server(total: int) -> AsyncIterator[str]:
    """A loopback server, in its own process, of a ``total``-byte result MP4: its URL."""
    clip = tiny_video().read_bytes()
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    server = context.Process(target=serve_result, args=(clip, total, theirs), name="result-server")
    server.start()
    theirs.close()
    try:
        if not await asyncio.to_thread(ours.poll, 60):
            raise TimeoutError("the result server did not start within 60 s")
        port: int = ours.recv()
        yield f"http://127.0.0.1:{port}/result.mp4"
    finally:
        ours.close()
        await asyncio.to_thread(server.join, 10)
        if server.is_alive():
            server.kill()


async def run() -> Result:
    async with result_server(RESULT_BYTES) as url:
        return await _measure(url)


async def _measure(url: str) -> Result:
    times = FetchTimes()
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0)) as client:

        async def download(status: TaskStatus) -> AsyncIterator[bytes]:
            """A hosted provider's ``download``: the shared streaming download of its link."""
            times.started = time.perf_counter()
            async for chunk in stream_download(client, url, max_bytes=RESULT_CAP):
                times.received += len(chunk)
                yield chunk
            times.ended = time.perf_counter()

        provider = BenchProvider(download, webhooks=False)
        limits = EngineLimits(
            poll_initial_seconds=0.05, poll_max_seconds=0.2, max_result_bytes=RESULT_CAP
        )
        async with bench_bot({"bench": provider}, limits, reference=small_image()) as bot:
            job = await bot.create("bench")
            await until(lambda: job.id in provider.tasks, 60, "the submit")
            await asyncio.sleep(0.5)
            gc.collect()
            idle_kib = memory_kib()
            hwm_reset = reset_peak_rss()
            with RssSampler() as sampler:
                completed = time.perf_counter()
                provider.complete(job.id)
                await until(lambda: bot.chat.ended(job.id), TIME_LIMIT, "the job ending")
                ended = time.perf_counter()
                await asyncio.wait_for(bot.engine.wait_idle(poll=0.1), TIME_LIMIT)
            peak_kib = max(sampler.peak_kib, memory_kib("VmHWM") if hwm_reset else 0)
            final = await bot.store.get(job.id)
            stored = (
                bot.blobs.path(final.result_blob).stat().st_size
                if final is not None and final.result_blob
                else 0
            )
    fetch_seconds = max(times.ended - times.started, 1e-9)
    growth_mb = (peak_kib - idle_kib) / 1024
    state = final.state if final is not None else None
    notes = [
        f"The job ended {state}; the stored blob is {stored / MiB:.1f} MiB "
        f"of the {RESULT_BYTES / MiB:.0f} MiB served.",
        f"Fetch: {times.received / MiB:.0f} MiB in {fetch_seconds:.1f} s; from the task's "
        "completion to the job's end (poll, fetch, fsync, result check, delivery): "
        f"{ended - completed:.1f} s.",
        f"Peak from {sampler.samples} VmRSS samples (10 ms apart)"
        + (" and VmHWM, reset before the fetch." if hwm_reset else "; VmHWM could not be reset."),
    ]
    return Result(
        name="download_rss",
        title=f"Memory while fetching a {RESULT_BYTES // MiB} MiB result",
        figures=(
            Figure("Idle RSS", idle_kib / 1024, "MiB"),
            Figure("Peak RSS", peak_kib / 1024, "MiB"),
            Figure("Peak above idle", growth_mb, "MiB", target=TARGET_MB),
            Figure("Fetch throughput", times.received / MiB / fetch_seconds, "MiB/s"),
        ),
        notes=tuple(notes),
        checks_passed=state is JobState.DELIVERED and stored == RESULT_BYTES,
    )


if __name__ == "__main__":
    main(run)
