"""What the benchmarks share: results and their tables, the machine, memory readings, and a bot.

Each benchmark builds the real core (``JobEngine`` on SQLite and the blob store in a temporary
folder) around two stand-ins for the outside world: ``BenchProvider``, a hosted provider played
in-process whose tasks finish when told to, and ``BenchChat``, a chat platform that counts what
it is asked to post. Everything runs on loopback and cleans up after itself.

A benchmark module exposes ``async def run() -> Result`` and calls ``main(run)`` when executed;
``python -m bench`` runs each in a fresh process (so one benchmark's memory and threads never
colour another's figures) and collects their results as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import secrets
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from adapters.http import HttpServer, build_app
from bot.jobs import EngineLimits, JobEngine
from bot.models import (
    FINAL_STATES,
    Actor,
    Destination,
    Job,
    JobReference,
    JobSpec,
    JobState,
    MediaKind,
)
from bot.ports import (
    Capabilities,
    KeyCheck,
    PostedStatus,
    Provider,
    ProviderRequest,
    TaskState,
    TaskStatus,
)
from storage.blobs import FileBlobStore
from storage.db import Database
from storage.jobs import SqlJobStore
from storage.postgres import PostgresDatabase
from storage.sql import SqlDatabase
from tests.media_factory import make_image, make_video
from tests.postgres import DEFAULT_URL, drop_schema

#: Generated media is kept here between runs: making it costs more than some benchmarks.
CACHE_DIR = Path(tempfile.gettempdir()) / "r2v-bench-cache"
MiB = 1024 * 1024

# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured number; the goal, if there is one, is to stay under ``target``."""

    label: str
    value: float
    unit: str
    target: float | None = None
    decimals: int = 1

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.value < self.target

    def shown(self) -> str:
        return f"{self.value:,.{self.decimals}f} {self.unit}".rstrip()

    def goal(self) -> str:
        if self.target is None:
            return ""
        verdict = "met" if self.met else "**missed**"
        return f"< {self.target:g} {self.unit}".rstrip() + f" — {verdict}"


@dataclass(frozen=True, slots=True)
class Result:
    """What one benchmark found: its figures, what it checked along the way, and any remarks."""

    name: str
    title: str
    figures: tuple[Figure, ...]
    notes: tuple[str, ...] = ()
    checks_passed: bool = True
    wall_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Result:
        return cls(
            name=str(data["name"]),
            title=str(data["title"]),
            figures=tuple(Figure(**f) for f in data["figures"]),
            notes=tuple(str(n) for n in data.get("notes", ())),
            checks_passed=bool(data.get("checks_passed", True)),
            wall_seconds=float(data.get("wall_seconds", 0.0)),
        )

    def table(self) -> str:
        """A Markdown table of the figures and goals, readable as is in a terminal."""
        rows = [
            ("Figure", "Value", "Target"),
            *((f.label, f.shown(), f.goal()) for f in self.figures),
        ]
        return markdown_table(rows)

    def report(self) -> str:
        """The title, the table, and the notes as a list: one benchmark's section."""
        lines = [f"### {self.title}", "", self.table(), ""]
        if not self.checks_passed:
            lines += ["**A correctness check failed** (see the notes).", ""]
        lines += [f"- {note}" for note in self.notes]
        lines.append(f"- Ran for {self.wall_seconds:.1f} s.")
        return "\n".join(lines)


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows (the first is the header) as a Markdown table with padded columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(rows[0]), rule, *(line(row) for row in rows[1:])])


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile: the smallest value at least ``fraction`` of ``values`` reach."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


# --- the machine -----------------------------------------------------------------------------

_LIBRARIES = ("aiohttp", "httpx", "aiosqlite", "av", "pillow")


def machine() -> dict[str, str]:
    """The facts that make figures comparable: CPU, cores, memory, OS and library versions."""
    cpuinfo = _read("/proc/cpuinfo")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)$", cpuinfo, re.MULTILINE)
    meminfo = _read("/proc/meminfo")
    total = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = []
    for name in _LIBRARIES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    return {
        "CPU": (model.group(1).strip() if model else platform.processor() or "unknown")
        + (f" at {float(mhz.group(1)):.0f} MHz" if mhz else ""),
        "Cores": f"{usable} usable of {os.cpu_count()}",
        "Memory": f"{int(total.group(1)) / MiB:.1f} GiB" if total else "unknown",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "Load average": "{:.2f} {:.2f} {:.2f} (1, 5, 15 min) when the run began".format(
            *os.getloadavg()
        ),
        "Libraries": ", ".join(versions) + f", FFmpeg libavcodec {_libavcodec()}, "
        f"SQLite {sqlite3.sqlite_version}",
    }


def _libavcodec() -> str:
    import av

    version = av.library_versions.get("libavcodec")
    return ".".join(map(str, version)) if version else "unknown"


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


# --- memory ----------------------------------------------------------------------------------


def memory_kib(field_name: str = "VmRSS") -> int:
    """A ``/proc/self/status`` figure in KiB: ``VmRSS`` (resident now), ``VmHWM`` (its peak)."""
    match = re.search(rf"^{field_name}:\s*(\d+) kB", _read("/proc/self/status"), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field_name}: these benchmarks need Linux")
    return int(match.group(1))


def reset_peak_rss() -> bool:
    """Restart ``VmHWM`` from the current RSS (Linux 4.0+); ``False`` where that is refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return False
    return True


class RssSampler:
    """Reads ``VmRSS`` every ``interval`` seconds in a thread and keeps the highest reading.

    A thread, not a task: a busy event loop would sample late, and late samples miss peaks.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self.peak_kib = 0
        self.samples = 0

    def __enter__(self) -> RssSampler:
        self.peak_kib = memory_kib()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_kib = max(self.peak_kib, memory_kib())
            self.samples += 1


# --- a bot with stand-ins for the outside world ----------------------------------------------

Fetch = Callable[[TaskStatus], AsyncIterator[bytes]]


def bytes_fetch(data: bytes, chunk_size: int = 64 * 1024) -> Fetch:
    """A ``download`` that streams ``data`` from memory, as a fetched result would arrive."""

    async def fetch(status: TaskStatus) -> AsyncIterator[bytes]:
        for start in range(0, len(data), chunk_size):
            yield data[start : start + chunk_size]

    return fetch


class BenchProvider:
    """A hosted provider played in-process: a task runs until ``complete`` is called for it.

    It records every request (its ``webhook_url`` carries the job's token) and counts status
    look-ups, which is how often webhooks and polls reached it. ``fetch`` streams the result.
    """

    def __init__(self, fetch: Fetch, *, name: str = "bench", webhooks: bool = True) -> None:
        self.capabilities = Capabilities(name=name, webhooks=webhooks)
        self.requests: dict[str, ProviderRequest] = {}
        self.tasks: dict[str, str] = {}
        self.status_calls = 0
        self._fetch = fetch
        self._done: set[str] = set()

    async def start(self) -> None:
        """Nothing to get ready: no secrets to fetch, no local work to resume."""

    async def close(self) -> None:
        """Nothing to stop."""

    async def check_key(self) -> KeyCheck:
        return KeyCheck(ok=True, detail="no key needed", webhooks=self.capabilities.webhooks)

    async def submit(self, request: ProviderRequest) -> str:
        task_id = f"task-{len(self.tasks) + 1}"
        self.requests[request.job_id] = request
        self.tasks[request.job_id] = task_id
        return task_id

    def complete(self, job_id: str) -> None:
        """Finish the job's task: from now on ``status`` answers SUCCEEDED."""
        self._done.add(self.tasks[job_id])

    async def status(self, task_id: str) -> TaskStatus:
        self.status_calls += 1
        if task_id in self._done:
            return TaskStatus(TaskState.SUCCEEDED, progress=1.0, result_url=f"bench://{task_id}")
        return TaskStatus(TaskState.RUNNING, progress=0.5)

    async def cancel(self, task_id: str) -> bool:
        return False

    async def check_webhook(self, headers: Mapping[str, str], body: bytes) -> None:
        """Unsigned, like several hosted providers: the per-job token in the URL is the check."""

    def download(self, status: TaskStatus) -> AsyncIterator[bytes]:
        return self._fetch(status)


@dataclass
class BenchChat:
    """A chat platform that counts deliveries per job and notes when each job reached a state."""

    platform: str = "console"
    deliveries: Counter[str] = field(default_factory=Counter)
    reached: dict[tuple[str, JobState], float] = field(default_factory=dict)
    edits: int = 0

    async def post_status(self, job: Job, text: str) -> PostedStatus:
        self._note(job)
        return PostedStatus(message_id=f"m-{job.id}")

    async def edit_status(self, job: Job, text: str) -> None:
        self.edits += 1
        self._note(job)

    async def deliver_video(self, job: Job, video: Path, text: str) -> None:
        self.deliveries[job.id] += 1

    async def find_delivery(self, job: Job) -> bool:
        return self.deliveries[job.id] > 0

    def ended(self, job_id: str) -> bool:
        """Whether the job's status message has shown a final state (delivered, failed…)."""
        return any((job_id, state) in self.reached for state in FINAL_STATES)

    def _note(self, job: Job) -> None:
        self.reached.setdefault((job.id, job.state), time.perf_counter())


ACTOR = Actor(platform="console", server_id="bench", user_id="bench-user")


@dataclass
class BenchBot:
    """The real engine, job store and blob store in ``folder``, driven through ``create``."""

    folder: Path
    engine: JobEngine
    store: SqlJobStore
    blobs: FileBlobStore
    chat: BenchChat
    reference: str
    http: HttpServer | None

    async def create(self, provider: str, actor: Actor = ACTOR) -> Job:
        destination = Destination(
            platform=self.chat.platform,
            server_id=actor.server_id,
            channel_id="bench",
            user_id=actor.user_id,
        )
        spec = JobSpec(
            prompt="Image 1 waves at the camera",
            original_prompt="@alice waves at the camera",
            references=(
                JobReference("Image 1", MediaKind.IMAGE, self.reference, "image/png", "@alice"),
            ),
            duration=5,
            resolution="720p",
            aspect_ratio="16:9",
        )
        return await self.engine.create(actor, destination, spec, provider)

    async def states(self, job_ids: Iterable[str]) -> Counter[JobState | None]:
        """How many of the jobs are in each state, read from the database."""
        jobs = [await self.store.get(job_id) for job_id in job_ids]
        return Counter(job.state if job is not None else None for job in jobs)


@asynccontextmanager
async def bench_bot(
    providers: Mapping[str, Provider],
    limits: EngineLimits,
    *,
    reference: Path,
    serve_http: bool = False,
    folder: Path | None = None,
    database_url: str | None = None,
) -> AsyncIterator[BenchBot]:
    """A bot wired as ``bot.app`` wires it, with ``BenchChat`` as its one chat platform.

    With ``serve_http`` the real HTTP server listens on a free loopback port and jobs are given
    webhook URLs pointing at it. Everything written lives in a temporary folder (under ``folder``
    when given), removed at the end.
    """
    with tempfile.TemporaryDirectory(prefix="r2v-bench-", dir=folder) as name:
        root = Path(name)
        async with bench_database(root, database_url) as db:
            blobs = FileBlobStore(root / "blobs", db.blob_in_use)
            blob = await blobs.put_file(reference)
            store = SqlJobStore(db)
            chat = BenchChat()
            http: HttpServer | None = None
            engine = JobEngine(
                store,
                blobs,
                providers,
                {chat.platform: chat},
                secret=b"bench-secret",
                limits=limits,
                webhook_base=lambda provider: http.local_url if http is not None else None,
            )
            try:
                if serve_http:

                    async def health() -> dict[str, Any]:
                        return {"ok": True}

                    http = HttpServer(build_app(engine, health), "127.0.0.1", 0)
                    await http.start()
                await engine.start()
                yield BenchBot(root, engine, store, blobs, chat, blob, http)
            finally:
                await engine.close()
                if http is not None:
                    await http.close()


#: Where benchmarks find PostgreSQL (each run gets a schema of its own, dropped after).
BENCH_DATABASE_URL = os.environ.get("R2V_BENCH_DATABASE_URL", DEFAULT_URL)


@asynccontextmanager
async def bench_database(root: Path, url: str | None) -> AsyncIterator[SqlDatabase]:
    """SQLite in ``root`` (``url`` None), or a fresh schema of the PostgreSQL at ``url``."""
    if url is None:
        db: SqlDatabase = await Database.open(root / "r2v.sqlite3")
        try:
            yield db
        finally:
            await db.close()
        return
    schema = "bench_" + secrets.token_hex(4)
    pg = await PostgresDatabase.open(url, schema=schema)
    try:
        yield pg
    finally:
        await pg.close()
        await drop_schema(url, schema)


async def until(
    check: Callable[[], Awaitable[bool] | bool], within: float, what: str, *, every: float = 0.02
) -> None:
    """Wait until ``check`` answers true, asking ``every`` seconds; ``TimeoutError`` names
    ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        answer = check()
        if not isinstance(answer, bool):
            answer = await answer
        if answer:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {within:.0f} s")
        await asyncio.sleep(every)


# --- generated media -------------------------------------------------------------------------


def cached(name: str, make: Callable[[Path], object]) -> Path:
    """The file ``name`` in the cache folder, made by ``make(path)`` the first time.

    ``make`` writes to a temporary name that is renamed into place, so an interrupted run never
    leaves a half-made file to be reused.
    """
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / name
    if not path.exists():
        partial = path.with_name(f".{path.name}.{os.getpid()}.part{path.suffix}")
        try:
            make(partial)
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
    return path


def small_image() -> Path:
    """A 320×320 PNG: the reference every benchmark job carries."""
    return cached("reference-320.png", make_image)


def tiny_video() -> Path:
    """A 1 s 320×240 H.264 MP4 of a few kilobytes that passes the engine's result check."""
    return cached("result-1s.mp4", lambda path: make_video(path, seconds=1.0))


# --- running ---------------------------------------------------------------------------------


def main(run: Callable[[], Coroutine[Any, Any, Result]], argv: Iterable[str] | None = None) -> None:
    """Run one benchmark: print its section, or with ``--json`` its result as one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(list(argv) if argv is not None else None)
    started = time.perf_counter()
    result = replace(asyncio.run(run()), wall_seconds=time.perf_counter() - started)
    print(json.dumps(result.to_json()) if args.json else result.report(), flush=True)
    sys.exit(0 if result.checks_passed else 1)
