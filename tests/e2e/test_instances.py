"""Several instances on one PostgreSQL and one S3 store: one owner per job, take-over after
SIGKILL, exactly-once submission and posting, per-user limits held across instances, and a
graceful SIGTERM.

Each instance is a real ``r2v console --json`` process (the console is the chat platform ``r2v
run`` uses without tokens). They share the database, the bucket (moto's server), the data folder
(for the console's outbox, where a delivered video is found) and one fake provider (Replicate's
API, polled) served by this test on loopback. The kills come at random moments; the seed is
printed, and ``R2V_KILL_SEED`` replays a run.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.console import Console
from tests.fakes.replicate import FakeReplicate
from tests.fakes.s3 import REGION, MotoServer, moto_with_bucket
from tests.media_factory import make_image, make_video
from tests.postgres import drop_schema, new_schema, require_postgres

pytestmark = pytest.mark.slow

LEASE_SECONDS = 3.0
USERS = [f"u{n}" for n in range(10)]
USER_OPEN_JOBS = 2
BUCKET = "cluster-blobs"


@dataclass
class Cluster:
    workdir: Path
    database_url: str
    schema: str
    fake: FakeReplicate
    store: MotoServer
    instances: dict[str, Console] = field(default_factory=dict)
    generation: int = 0

    def env(self, name: str) -> dict[str, str]:
        return {
            "R2V_DATABASE_URL": f"{self.database_url}?search_path={self.schema}",
            "R2V_SECRET": "cluster-secret-0123456789",
            "R2V_INSTANCE_ID": name,
            "R2V_LEASE_SECONDS": str(LEASE_SECONDS),
            "R2V_USER_OPEN_JOBS": str(USER_OPEN_JOBS),
            "R2V_SERVER_OPEN_JOBS": "100",
            "R2V_POLL_INITIAL_SECONDS": "0.2",
            "R2V_POLL_MAX_SECONDS": "0.5",
            "R2V_PROVIDER": "replicate",
            "REPLICATE_API_TOKEN": self.fake.key,
            "R2V_REPLICATE_BASE_URL": self.fake.url,
            "R2V_SHUTDOWN_SECONDS": "10",
            "R2V_BLOB_URL": f"s3://{BUCKET}/{self.schema}",
            "AWS_ENDPOINT_URL": self.store.url,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": self.store.keys[0],
            "AWS_SECRET_ACCESS_KEY": self.store.keys[1],
        }

    def start(self, name: str, user: str) -> Console:
        self.generation += 1
        console = Console(self.workdir, "--server", "crew", "--user", user, env=self.env(name))
        self.instances[name] = console
        return console

    async def query(self, sql: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(
            self.database_url, server_settings={"search_path": self.schema}
        )
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()


@pytest.fixture(scope="module")
def store() -> Iterator[MotoServer]:
    with moto_with_bucket(BUCKET) as server:
        yield server


@pytest.fixture
async def cluster(tmp_path: Path, store: MotoServer) -> AsyncIterator[Cluster]:
    url = await require_postgres()
    schema = await new_schema(url)
    result = make_video(tmp_path / "result.mp4", seconds=1.0).read_bytes()
    make_image(tmp_path / "alice.png")
    async with FakeReplicate(result, complete_after_polls=2, send_webhooks=False) as fake:
        made = Cluster(tmp_path, url, schema, fake, store)
        try:
            yield made
        finally:
            for console in made.instances.values():
                if console.process.poll() is None:
                    console.kill()
            await drop_schema(url, schema)


def submissions_by_prompt(fake: FakeReplicate) -> Counter[str]:
    import json

    counts: Counter[str] = Counter()
    for request in fake.requests:
        if request.method == "POST" and request.path.endswith("/predictions"):
            counts[json.loads(request.body)["input"]["prompt"]] += 1
    return counts


async def wait(predicate, within: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"{what} did not happen within {within:.0f} s")


async def test_three_instances_survive_ten_sigkills(cluster: Cluster) -> None:
    seed = int(os.environ.get("R2V_KILL_SEED") or random.randrange(1_000_000))
    print(f"R2V_KILL_SEED={seed}")
    rng = random.Random(seed)
    names = ["a", "b", "c"]
    first = cluster.start("a", USERS[0])
    first.send("/character create name:alice image:alice.png")
    await asyncio.to_thread(first.wait_for, 60.0, type="reply")
    for index, name in enumerate(names[1:], start=1):
        cluster.start(name, USERS[index])

    sent = 0

    def send_jobs(console: Console, count: int) -> None:
        nonlocal sent
        for _ in range(count):
            sent += 1
            console.send(f'/generate prompt:"@alice dances, take {sent}" duration:2')

    for name in names:
        send_jobs(cluster.instances[name], 5)
    user_turn = 3
    kills: list[float] = []
    for _ in range(10):
        await asyncio.sleep(rng.uniform(0.5, 2.5))
        victim = rng.choice(names)
        cluster.instances[victim].kill()
        kills.append(time.monotonic())
        user = USERS[user_turn % len(USERS)]
        user_turn += 1
        console = cluster.start(victim, user)
        send_jobs(console, 5 if sent < 55 else 60 - sent)
    assert sent == 60

    async def all_final() -> bool:
        rows = await cluster.query(
            "SELECT COUNT(*) AS n FROM jobs WHERE state IN ('delivered', 'failed', 'cancelled')"
        )
        total = await cluster.query("SELECT COUNT(*) AS n FROM jobs")
        return bool(rows[0]["n"] == total[0]["n"] and total[0]["n"] >= 1)

    await wait(all_final, 180, "every job ending")
    jobs = await cluster.query("SELECT id, user_id, state, reason, spec FROM jobs")
    # Every job that reached the database was delivered (none failed or was cancelled).
    assert {row["state"] for row in jobs} == {"delivered"}, [
        (row["id"], row["state"], row["reason"]) for row in jobs if row["state"] != "delivered"
    ]
    # Delivered exactly once: the outbox holds each, and no console printed a video twice.
    outbox = cluster.workdir / "data" / "outbox"
    for row in jobs:
        assert (outbox / f"{row['id']}.mp4").is_file()
    videos = Counter(
        event["job"]
        for console in cluster.instances.values()
        for event in console.events
        if event.get("type") == "video"
    )
    assert all(count <= 1 for count in videos.values()), videos
    # Submitted to the provider once each.
    doubled = {p: n for p, n in submissions_by_prompt(cluster.fake).items() if n > 1}
    assert not doubled, doubled
    # Per-user limits held across instances: never more than USER_OPEN_JOBS started at once.
    events = await cluster.query(
        "SELECT e.job_id, j.user_id, e.at, e.to_state FROM job_events e JOIN jobs j"
        " ON j.id = e.job_id ORDER BY e.at"
    )
    running: dict[str, int] = defaultdict(int)
    worst: dict[str, int] = defaultdict(int)
    gaps: list[float] = []
    last_at: dict[str, float] = {}
    for event in events:
        user, state = event["user_id"], event["to_state"]
        if state == "submitted":
            running[user] += 1
            worst[user] = max(worst[user], running[user])
        elif state in ("delivered", "failed", "cancelled"):
            running[user] -= 1
        if state != "submitted" and event["job_id"] in last_at:
            gaps.append(event["at"] - last_at[event["job_id"]])
        last_at[event["job_id"]] = event["at"]
    assert max(worst.values()) <= USER_OPEN_JOBS, dict(worst)
    # Once started, no job waited longer than a lease (plus slack) for its next step.
    assert max(gaps) <= LEASE_SECONDS + 10, max(gaps)

    for console in cluster.instances.values():
        console.close_input()
    for console in cluster.instances.values():
        assert await asyncio.to_thread(console.finish, 120.0) == 0, console.stderr


async def test_sigterm_hands_a_job_over_at_once(cluster: Cluster) -> None:
    cluster.fake.complete_after_polls = 12  # about 5 s at the provider
    leaving = cluster.start("a", "u1")
    leaving.send("/character create name:alice image:alice.png")
    await asyncio.to_thread(leaving.wait_for, 60.0, type="reply")
    staying = cluster.start("b", "u2")
    leaving.send('/generate prompt:"@alice bows" duration:2')
    created = await asyncio.to_thread(leaving.wait_for, 60.0, type="status", state="submitted")
    job_id = created["job"]

    started = time.monotonic()
    leaving.process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(leaving.process.wait, 15)
    assert code == 0, leaving.stderr
    assert time.monotonic() - started < 10.0

    owner = await cluster.query("SELECT lease_owner FROM jobs WHERE id = $1", job_id)
    # Released, not left to expire: the other instance took it (or may take it) at once.
    assert owner[0]["lease_owner"] in (None, "b")
    await asyncio.to_thread(staying.wait_for, 60.0, type="video", job=job_id)
    taken_after = time.monotonic() - started
    assert taken_after < 30.0
    assert submissions_by_prompt(cluster.fake)["Image 1 bows"] <= 1
    staying.close_input()
    assert await asyncio.to_thread(staying.finish, 60.0) == 0, staying.stderr
