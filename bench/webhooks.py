"""Webhooks: how fast the HTTP server answers a storm of callbacks, and that none doubles a video.

Providers call back once or several times per job (progress, completion, retries of a callback
that timed out), in no particular order and many at once. The server must answer each quickly (a
provider that waits too long retries, adding to the storm) and the engine must deliver each video
exactly once however many wake-ups arrive.

The real engine, SQLite job store, blob store and aiohttp server run here on a free loopback
port; the provider is ``BenchProvider`` (its tasks finish when told, its result is a 1 s MP4 held
in memory) and the chat only counts deliveries. 200 jobs are created and submitted with polling
every 60 s, so webhooks do the work; every task is then marked finished and 1000 callbacks (5 per
job, shuffled) are POSTed with 32 in flight, over connections opened beforehand. Afterwards every
job must be delivered, each exactly once.

The POSTs come from a separate process, so the client's work is not charged to the server, and
they are sent with aiohttp's client rather than httpx: on this machine an ``httpx.AsyncClient``
with 32 requests in flight manages only about 250 POSTs a second against a server that does
nothing at all (p50 85 ms, p99 over 500 ms), which would make the figures describe httpx. The
same storm against a do-nothing server is run first and reported as the floor.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import time
from concurrent.futures import ProcessPoolExecutor
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from bench.common import (
    BenchProvider,
    Figure,
    Result,
    bench_bot,
    bytes_fetch,
    main,
    percentile,
    small_image,
    tiny_video,
    until,
)
from bot.jobs import EngineLimits
from bot.models import JobState

JOBS = 200
HOOKS_PER_JOB = 5
CALLBACKS = JOBS * HOOKS_PER_JOB
IN_FLIGHT = 32
POLL_SECONDS = 60.0
TIME_LIMIT = 300.0
SEED = 20_240_601


def post_all(urls: list[str], in_flight: int) -> list[tuple[int, float]]:
    """POST a completion callback to each URL, ``in_flight`` at a time; answer each POST's HTTP
    status and seconds from sending to the full answer. Runs in the client process."""
    return asyncio.run(_post_all(urls, in_flight))


async def _post_all(urls: list[str], in_flight: int) -> list[tuple[int, float]]:
    answers: list[tuple[int, float]] = [(0, 0.0)] * len(urls)
    pending = iter(enumerate(urls))
    connector = aiohttp.TCPConnector(limit=in_flight)
    timeout = aiohttp.ClientTimeout(total=30.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:

        async def worker() -> None:
            for index, url in pending:
                job_id = urlsplit(url).path.rsplit("/", 1)[-1]
                body = json.dumps({"type": "video.completed", "data": {"job": job_id}})
                started = time.perf_counter()
                try:
                    async with client.post(
                        url, data=body, headers={"content-type": "application/json"}
                    ) as response:
                        await response.read()
                except (aiohttp.ClientError, TimeoutError):
                    answers[index] = (0, time.perf_counter() - started)
                    continue
                answers[index] = (response.status, time.perf_counter() - started)

        # Every connection is opened before the storm: a provider pays connection set-up once
        # per keep-alive connection, and it is not the bot's answer time.
        health = urls[0].split("/hooks/")[0] + "/healthz"

        async def connect() -> None:
            async with client.get(health) as response:
                await response.read()

        await asyncio.gather(*(connect() for _ in range(in_flight)))
        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return answers


async def floor(pool: ProcessPoolExecutor) -> list[tuple[int, float]]:
    """The storm's answer times against a server that answers 202 and does nothing else."""

    async def nothing(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True}, status=202)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hooks/{provider}/{job_id}", nothing)
    app.router.add_get("/healthz", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        urls = [f"http://127.0.0.1:{port}/hooks/bench/j{n % JOBS}?t=x" for n in range(CALLBACKS)]
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(
            loop.run_in_executor(pool, post_all, urls, IN_FLIGHT), TIME_LIMIT
        )
    finally:
        await runner.cleanup()


async def run() -> Result:
    provider = BenchProvider(bytes_fetch(tiny_video().read_bytes()))
    limits = EngineLimits(
        user_open_jobs=JOBS,
        server_open_jobs=JOBS,
        poll_initial_seconds=POLL_SECONDS,
        poll_max_seconds=POLL_SECONDS,
    )
    context = multiprocessing.get_context("spawn")
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as client_process:
        baseline = [seconds * 1000 for _, seconds in await floor(client_process)]
        async with bench_bot(
            {"bench": provider}, limits, reference=small_image(), serve_http=True
        ) as bot:
            started = time.perf_counter()
            jobs = [await bot.create("bench") for _ in range(JOBS)]
            ids = [job.id for job in jobs]

            async def all_submitted() -> bool:
                return (await bot.states(ids))[JobState.SUBMITTED] == JOBS

            await until(lambda: len(provider.requests) == JOBS, TIME_LIMIT, "every submit")
            await until(all_submitted, TIME_LIMIT, "every job moving to submitted")
            created = time.perf_counter() - started
            for job in jobs:
                provider.complete(job.id)
            urls = []
            for job in jobs:
                url = provider.requests[job.id].webhook_url
                assert url is not None, "the engine gave no webhook URL"
                urls += [url] * HOOKS_PER_JOB
            random.Random(SEED).shuffle(urls)
            polls_before = provider.status_calls
            storm_started = time.perf_counter()
            answers = await asyncio.wait_for(
                loop.run_in_executor(client_process, post_all, urls, IN_FLIGHT), TIME_LIMIT
            )
            storm = time.perf_counter() - storm_started
            await until(
                lambda: all(bot.chat.ended(job_id) for job_id in ids),
                TIME_LIMIT,
                "every job ending",
            )
            await asyncio.wait_for(bot.engine.wait_idle(poll=0.1), TIME_LIMIT)
            all_delivered = time.perf_counter() - storm_started
            states = await bot.states(ids)
            look_ups = provider.status_calls - polls_before
    times_ms = [seconds * 1000 for _, seconds in answers]
    accepted = sum(1 for status, _ in answers if status == 202)
    doubled = {job: n for job, n in bot.chat.deliveries.items() if n != 1}
    delivered = states[JobState.DELIVERED]
    notes = [
        f"{len(answers)} POSTs ({HOOKS_PER_JOB} per job, shuffled, {IN_FLIGHT} in flight) took "
        f"{storm:.1f} s: {len(answers) / storm:.0f} per second; {accepted} answered 202.",
        f"{delivered} of {JOBS} jobs delivered; deliveries per job: "
        + (
            "exactly 1 each."
            if not doubled and len(bot.chat.deliveries) == JOBS
            else f"wrong for {len(doubled) + JOBS - len(bot.chat.deliveries)} jobs {doubled}."
        ),
        f"The webhooks caused {look_ups} status look-ups for {JOBS} jobs "
        "(wake-ups that arrive while a job is busy are merged).",
        f"Creating and submitting the {JOBS} jobs took {created:.1f} s "
        f"({created / JOBS * 1000:.0f} ms a job).",
        f"Floor (the same storm against a do-nothing aiohttp server): p50 "
        f"{percentile(baseline, 0.5):.1f} ms, p99 {percentile(baseline, 0.99):.1f} ms, max "
        f"{max(baseline):.1f} ms.",
    ]
    return Result(
        name="webhooks",
        title=f"Webhook storm: {JOBS} jobs, {len(answers)} callbacks",
        figures=(
            Figure("POST answer p50", percentile(times_ms, 0.50), "ms"),
            Figure("POST answer p99", percentile(times_ms, 0.99), "ms"),
            Figure("POST answer max", max(times_ms), "ms"),
            Figure("First callback to all delivered", all_delivered, "s"),
        ),
        notes=tuple(notes),
        checks_passed=(
            accepted == len(answers)
            and delivered == JOBS
            and not doubled
            and len(bot.chat.deliveries) == JOBS
        ),
    )


if __name__ == "__main__":
    main(run)
