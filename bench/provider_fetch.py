"""Provider fetch: from a provider's completion webhook to the delivered file, against plain
httpx downloading the same 50 MiB file in the same run. Target: at most 1.3 times as long.

A hosted provider ends a job by calling our webhook; the bot then asks the provider for the
status, streams the result into the blob store (hashing it and syncing it to disk), checks that
it is a video, and delivers it. The floor for all of that is the download itself, so each round
times both on the same loopback server: a plain ``httpx`` GET written to a file, and the whole
webhook-to-delivered path through the real HTTP server, engine, ``stream_download`` and
``FileBlobStore``. The ratio compares their medians over the rounds. The bot's peak RSS above its
idle level during the engine's fetches is reported too.

The result is ``download_rss``'s: a real 1 s MP4 padded with a ``free`` box, served by another
process that makes the bytes as it sends them.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

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
    until,
)
from bench.download_rss import result_server
from bot.jobs import EngineLimits
from bot.models import JobState
from bot.ports import TaskStatus

RESULT_BYTES = 50 * MiB
ROUNDS = 5
TARGET_RATIO = 1.3
CHUNK = 256 * 1024
TIME_LIMIT = 120.0


async def plain_download(client: httpx.AsyncClient, url: str, target: Path) -> float:
    """Seconds for plain httpx to fetch ``url`` into ``target``, as a script would."""
    started = time.perf_counter()
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        with target.open("wb") as file:
            async for chunk in response.aiter_bytes(CHUNK):
                file.write(chunk)
    return time.perf_counter() - started


async def run() -> Result:
    async with result_server(RESULT_BYTES) as url:
        return await _measure(url)


async def _measure(url: str) -> Result:
    plain: list[float] = []
    engine: list[float] = []
    growth_mib: list[float] = []
    delivered = 0
    timeout = httpx.Timeout(30.0, connect=10.0)
    async with (
        httpx.AsyncClient(timeout=timeout) as client,
        httpx.AsyncClient(timeout=timeout) as hooks,
    ):

        def download(status: TaskStatus) -> AsyncIterator[bytes]:
            return stream_download(client, url, max_bytes=500 * MiB)

        provider = BenchProvider(download, webhooks=True)
        # Polls far apart: the webhook is what wakes the job, as with a hosted provider.
        limits = EngineLimits(poll_initial_seconds=60, poll_max_seconds=60)
        async with bench_bot(
            {"bench": provider}, limits, reference=small_image(), serve_http=True
        ) as bot:
            for _ in range(ROUNDS):
                plain.append(await plain_download(client, url, bot.folder / "plain.mp4"))
                (bot.folder / "plain.mp4").unlink()
                job = await bot.create("bench")
                await until(lambda: job.id in provider.tasks, 30, "the submit")  # noqa: B023
                webhook = provider.requests[job.id].webhook_url
                assert webhook is not None
                gc.collect()
                idle = memory_kib()
                hwm = reset_peak_rss()
                with RssSampler() as sampler:
                    provider.complete(job.id)
                    started = time.perf_counter()
                    answer = await hooks.post(webhook, content=b'{"status": "completed"}')
                    answer.raise_for_status()
                    await until(lambda: bot.chat.ended(job.id), TIME_LIMIT, "the delivery")  # noqa: B023
                    engine.append(time.perf_counter() - started)
                peak = max(sampler.peak_kib, memory_kib("VmHWM") if hwm else 0)
                growth_mib.append((peak - idle) / 1024)
                final = await bot.store.get(job.id)
                delivered += final is not None and final.state is JobState.DELIVERED
                if final is not None and final.result_blob:
                    bot.blobs.path(final.result_blob).unlink()  # the next round stores it anew
    ratio = statistics.median(engine) / statistics.median(plain)
    notes = (
        f"{ROUNDS} rounds of {RESULT_BYTES // MiB} MiB; {delivered} of {ROUNDS} jobs delivered.",
        "Plain httpx, each round (s): " + ", ".join(f"{t:.2f}" for t in plain),
        "Webhook to delivered, each round (s): " + ", ".join(f"{t:.2f}" for t in engine),
        "The engine's time includes the status look-up, sha256 and fsync of the blob, the "
        "result check (the MP4 is opened and decoded) and the delivery.",
    )
    return Result(
        name="provider_fetch",
        title=f"Webhook to delivered file, {RESULT_BYTES // MiB} MiB, against plain httpx",
        figures=(
            Figure("Plain httpx download (median)", statistics.median(plain), "s", decimals=2),
            Figure("Webhook to delivered (median)", statistics.median(engine), "s", decimals=2),
            Figure("Ratio", ratio, "×", target=TARGET_RATIO, decimals=2),
            Figure("Peak RSS above idle (largest round)", max(growth_mib), "MiB"),
        ),
        notes=notes,
        checks_passed=delivered == ROUNDS,
    )


if __name__ == "__main__":
    main(run)
