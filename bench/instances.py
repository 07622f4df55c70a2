"""Several instances: jobs completed per minute (1 instance vs 3 on PostgreSQL, SQLite vs
PostgreSQL with one), and how long a job waits after its owner is killed.

Each instance is a real ``r2v console --json`` process; they share the database, the data folder
and a fake provider (Replicate's API on loopback, in this process) whose tasks finish at their
fourth status look-up, polled every 0.5 s: about 2 s of fixed latency a job. Jobs are sent evenly
to the instances; the per-user and per-server limits are raised out of the way, so what is
measured is how many jobs the instances carry through, not the limits. The throughput goal
(issue 12) is 3 instances ≥ 2.5× one.

Take-over: two instances, a lease of ``LEASE`` seconds; a job is submitted on the first, the first
is SIGKILLed, and the time until the second has taken the lease over and delivered the video is
measured (goal: within the lease + 5 s).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from bench.common import BENCH_DATABASE_URL, Figure, Result, main, tiny_video
from tests.e2e.console import Console
from tests.fakes.replicate import FakeReplicate
from tests.media_factory import make_image
from tests.postgres import drop_schema, new_schema

JOBS = 240
LEASE = 5.0
TIME_LIMIT = 300.0


class Run:
    """Instances sharing one database (a schema of the bench PostgreSQL, or SQLite)."""

    def __init__(self, workdir: Path, fake: FakeReplicate, schema: str | None) -> None:
        self.workdir = workdir
        self.fake = fake
        self.schema = schema
        self.consoles: list[Console] = []

    def env(self, name: str) -> dict[str, str]:
        env = {
            "R2V_INSTANCE_ID": name,
            "R2V_LEASE_SECONDS": str(LEASE),
            "R2V_USER_OPEN_JOBS": "1000",
            "R2V_SERVER_OPEN_JOBS": "1000",
            "R2V_POLL_INITIAL_SECONDS": "0.5",
            "R2V_POLL_MAX_SECONDS": "0.5",
            "R2V_PROVIDER": "replicate",
            "REPLICATE_API_TOKEN": self.fake.key,
            "R2V_REPLICATE_BASE_URL": self.fake.url,
            "R2V_SECRET": "bench-secret-0123456789",
        }
        if self.schema is not None:
            env["R2V_DATABASE_URL"] = f"{BENCH_DATABASE_URL}?search_path={self.schema}"
        return env

    def start(self, name: str) -> Console:
        console = Console(self.workdir, "--server", "bench", "--user", name, env=self.env(name))
        self.consoles.append(console)
        return console

    def stop(self) -> None:
        for console in self.consoles:
            if console.process.poll() is None:
                console.kill()


def videos(consoles: list[Console]) -> set[str]:
    return {e["job"] for c in consoles for e in c.events if e.get("type") == "video"}


async def throughput(instances: int, postgres: bool, result: bytes) -> float:
    """Jobs completed per minute by ``instances`` instances."""
    with tempfile.TemporaryDirectory(prefix="r2v-bench-") as name:
        workdir = Path(name)
        make_image(workdir / "alice.png")
        schema = await new_schema(BENCH_DATABASE_URL) if postgres else None
        async with FakeReplicate(result, complete_after_polls=4, send_webhooks=False) as fake:
            run = Run(workdir, fake, schema)
            try:
                first = run.start("i0")
                first.send("/character create name:alice image:alice.png")
                await asyncio.to_thread(first.wait_for, 60.0, type="reply")
                for n in range(1, instances):
                    run.start(f"i{n}")
                for console in run.consoles[1:]:  # timing starts once every instance is up
                    console.send("/jobs")
                    await asyncio.to_thread(console.wait_for, 60.0, type="reply")
                started = time.perf_counter()
                for n in range(JOBS):
                    run.consoles[n % instances].send(
                        f'/generate prompt:"@alice runs, take {n}" duration:2'
                    )
                deadline = time.monotonic() + TIME_LIMIT
                while len(videos(run.consoles)) < JOBS:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the jobs did not all finish in time")
                    for console in run.consoles:
                        console.read_available()
                    await asyncio.sleep(0.1)
                return JOBS / ((time.perf_counter() - started) / 60.0)
            finally:
                run.stop()
                if schema is not None:
                    await drop_schema(BENCH_DATABASE_URL, schema)


async def take_over(result: bytes) -> float:
    """Seconds from SIGKILL of a job's owner until another instance delivered it."""
    with tempfile.TemporaryDirectory(prefix="r2v-bench-") as name:
        workdir = Path(name)
        make_image(workdir / "alice.png")
        schema = await new_schema(BENCH_DATABASE_URL)
        async with FakeReplicate(result, complete_after_polls=6, send_webhooks=False) as fake:
            run = Run(workdir, fake, schema)
            try:
                owner = run.start("owner")
                owner.send("/character create name:alice image:alice.png")
                await asyncio.to_thread(owner.wait_for, 60.0, type="reply")
                heir = run.start("heir")
                owner.send('/generate prompt:"@alice jumps" duration:2')
                status = await asyncio.to_thread(
                    owner.wait_for, 60.0, type="status", state="submitted"
                )
                owner.kill()
                killed = time.perf_counter()
                await asyncio.to_thread(heir.wait_for, 60.0, type="video", job=status["job"])
                return time.perf_counter() - killed
            finally:
                run.stop()
                await drop_schema(BENCH_DATABASE_URL, schema)


async def run() -> Result:
    result = tiny_video().read_bytes()
    sqlite_one = await throughput(1, postgres=False, result=result)
    pg_one = await throughput(1, postgres=True, result=result)
    pg_three = await throughput(3, postgres=True, result=result)
    takeover = await take_over(result)
    ratio = pg_three / pg_one
    return Result(
        name="instances",
        title=f"Several instances: {JOBS} jobs, ~2 s provider latency; take-over after SIGKILL",
        figures=(
            Figure("SQLite, 1 instance", sqlite_one, "jobs/min"),
            Figure("PostgreSQL, 1 instance", pg_one, "jobs/min"),
            Figure("PostgreSQL, 3 instances", pg_three, "jobs/min"),
            Figure("3 instances ÷ 1 (goal ≥ 2.5)", ratio, "×", decimals=2),
            Figure("Take-over: kill to delivered", takeover, "s", target=LEASE + 5.0),
        ),
        notes=(
            f"The lease is {LEASE:.0f} s; another instance looks for expired leases every "
            f"{LEASE / 3:.1f} s, so a take-over starts within {LEASE * 4 / 3:.1f} s; the job "
            "then needs its remaining status polls (0.5 s apart) and the delivery.",
        ),
        checks_passed=True,
    )


if __name__ == "__main__":
    main(run)
