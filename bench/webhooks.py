"""Webhooks: how fast the HTTP server answers a storm of callbacks, and that none doubles a video.

Providers call back once or several times per job (progress, completion, retries of a callback
that timed out), in no particular order and many at once. The server must answer each quickly (a
provider that waits too long retries, adding to the storm) and the engine must deliver each video
exactly once however many wake-ups arrive.

The real engine, job store (SQLite, then PostgreSQL), blob store and aiohttp server run here on
a free loopback port; the provider is ``BenchProvider`` (its tasks run until told to finish, its
result is a 1 s MP4 held in memory) and the chat only counts deliveries. 50 jobs are created and
submitted with polling every 60 s, so webhooks do the work. While the 50 run, 1000 progress
callbacks (20 per job, shuffled) are POSTed from 100 connections opened beforehand: each wakes a
job, which looks its status up and writes it, so the answers compete with job transactions. Then
every task is marked finished and one more callback a job is sent; every job must be delivered,
each exactly once. The goal (issue 12): p99 under 20 ms on either database, which holds because a
webhook is checked with the shared secret alone and answered before the owner is woken.

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
    BENCH_DATABASE_URL,
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

JOBS = 50
HOOKS_PER_JOB = 20
CALLBACKS = JOBS * HOOKS_PER_JOB
IN_FLIGHT = 100
#: Callbacks a second during the storm: paced like a provider's (an open loop), not as fast as
#: answers come back, where queueing behind 100 outstanding requests would be all one measured.
RATE = 500.0
POLL_SECONDS = 60.0
TIME_LIMIT = 300.0
SEED = 20_240_601


def post_all(urls: list[str], in_flight: int, rate: float | None = None) -> list[tuple[int, float]]:
    """POST a callback to each URL over ``in_flight`` connections, at most ``rate`` a second
    (as fast as answers come when None); answer each POST's HTTP status and seconds from sending
    to the full answer. Runs in the client process."""
    return asyncio.run(_post_all(urls, in_flight, rate))


async def _post_all(urls: list[str], in_flight: int, rate: float | None) -> list[tuple[int, float]]:
    answers: list[tuple[int, float]] = [(0, 0.0)] * len(urls)
    pending = iter(enumerate(urls))
    connector = aiohttp.TCPConnector(limit=in_flight)
    timeout = aiohttp.ClientTimeout(total=30.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:

        async def worker() -> None:
            for index, url in pending:
                if rate is not None:
                    await asyncio.sleep(max(0.0, begun + index / rate - time.perf_counter()))
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
        begun = time.perf_counter()
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
            loop.run_in_executor(pool, post_all, urls, IN_FLIGHT, RATE), TIME_LIMIT
        )
    finally:
        await runner.cleanup()


async def storm(database_url: str | None, pool: ProcessPoolExecutor) -> Result:
    """The storm against the bot on one database (SQLite when ``database_url`` is None)."""
    label = "SQLite" if database_url is None else "PostgreSQL"
    provider = BenchProvider(bytes_fetch(tiny_video().read_bytes()))
    limits = EngineLimits(
        user_open_jobs=JOBS,
        server_open_jobs=JOBS,
        poll_initial_seconds=POLL_SECONDS,
        poll_max_seconds=POLL_SECONDS,
    )
    loop = asyncio.get_running_loop()
    async with bench_bot(
        {"bench": provider},
        limits,
        reference=small_image(),
        serve_http=True,
        database_url=database_url,
    ) as bot:
        started = time.perf_counter()
        jobs = [await bot.create("bench") for _ in range(JOBS)]
        ids = [job.id for job in jobs]

        async def all_submitted() -> bool:
            return (await bot.states(ids))[JobState.SUBMITTED] == JOBS

        await until(lambda: len(provider.requests) == JOBS, TIME_LIMIT, "every submit")
        await until(all_submitted, TIME_LIMIT, "every job moving to submitted")
        created = time.perf_counter() - started
        hooks: dict[str, str] = {}
        for job in jobs:
            url = provider.requests[job.id].webhook_url
            assert url is not None, "the engine gave no webhook URL"
            hooks[job.id] = url
        urls = [hooks[job_id] for job_id in ids for _ in range(HOOKS_PER_JOB)]
        random.Random(SEED).shuffle(urls)
        polls_before = provider.status_calls
        storm_started = time.perf_counter()
        answers = await asyncio.wait_for(
            loop.run_in_executor(pool, post_all, urls, IN_FLIGHT, RATE), TIME_LIMIT
        )
        storm_seconds = time.perf_counter() - storm_started
        look_ups = provider.status_calls - polls_before
        for job_id in ids:
            provider.complete(job_id)
        finishing = time.perf_counter()
        final = await asyncio.wait_for(
            loop.run_in_executor(pool, post_all, list(hooks.values()), IN_FLIGHT), TIME_LIMIT
        )
        await until(
            lambda: all(bot.chat.ended(job_id) for job_id in ids), TIME_LIMIT, "every job ending"
        )
        await asyncio.wait_for(bot.engine.wait_idle(poll=0.1), TIME_LIMIT)
        all_delivered = time.perf_counter() - finishing
        states = await bot.states(ids)
    times_ms = [seconds * 1000 for _, seconds in answers]
    accepted = sum(1 for status, _ in [*answers, *final] if status == 202)
    doubled = {job: n for job, n in bot.chat.deliveries.items() if n != 1}
    delivered = states[JobState.DELIVERED]
    notes = [
        f"{label}: {len(answers)} POSTs ({HOOKS_PER_JOB} per running job, shuffled, {IN_FLIGHT} "
        f"connections, paced at {RATE:.0f} a second) took {storm_seconds:.1f} s: "
        f"{len(answers) / storm_seconds:.0f} per second, causing {look_ups} status look-ups "
        "(wake-ups of a busy job are merged).",
        f"{label}: {delivered} of {JOBS} jobs delivered; deliveries per job: "
        + (
            "exactly 1 each."
            if not doubled and len(bot.chat.deliveries) == JOBS
            else f"wrong for {len(doubled) + JOBS - len(bot.chat.deliveries)} jobs {doubled}."
        ),
        f"{label}: creating and submitting the {JOBS} jobs took {created:.1f} s.",
    ]
    return Result(
        name="webhooks",
        title=label,
        figures=(
            Figure(f"{label}: POST answer p50", percentile(times_ms, 0.50), "ms"),
            Figure(f"{label}: POST answer p99", percentile(times_ms, 0.99), "ms", target=20.0),
            Figure(f"{label}: POST answer max", max(times_ms), "ms"),
            Figure(f"{label}: completion callbacks to all delivered", all_delivered, "s"),
        ),
        notes=tuple(notes),
        checks_passed=(
            accepted == len(answers) + len(final)
            and delivered == JOBS
            and not doubled
            and len(bot.chat.deliveries) == JOBS
        ),
    )


async def run() -> Result:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as client_process:
        baseline = [seconds * 1000 for _, seconds in await floor(client_process)]
        results = [await storm(None, client_process)]
        try:
            results.append(await storm(BENCH_DATABASE_URL, client_process))
        except Exception as exc:  # no PostgreSQL here: the SQLite figures still stand
            results.append(
                Result("webhooks", "PostgreSQL", (), (f"PostgreSQL not run: {exc}",), False)
            )
    notes = [note for result in results for note in result.notes]
    notes.append(
        f"Floor (the same storm against a do-nothing aiohttp server): p50 "
        f"{percentile(baseline, 0.5):.1f} ms, p99 {percentile(baseline, 0.99):.1f} ms, max "
        f"{max(baseline):.1f} ms."
    )
    return Result(
        name="webhooks",
        title=f"Webhook storm: {CALLBACKS} callbacks from {IN_FLIGHT} connections while {JOBS} "
        "jobs run",
        figures=tuple(figure for result in results for figure in result.figures),
        notes=tuple(notes),
        checks_passed=all(result.checks_passed for result in results),
    )


if __name__ == "__main__":
    main(run)
