"""S3 blob memory: the bot's peak RSS while a 200 MiB result goes into an object store and back.

``download_rss`` shows the provider download streaming into local files under the 30 MiB bound.
With ``R2V_BLOB_URL=s3://…`` the same bytes then also travel to the store and, on another
instance, back out of it into the local cache for the result check and the upload to chat. Both
legs must stream too: up from the local file in 5 MiB parts, down in 1 MiB chunks.

Measured here, each leg with its own peak above idle: (1) ``local_path`` of a 200 MiB blob on a
store with an empty cache, as an instance fetches a result another instance stored (the blob is
put there first by a child process, so the parent's heap starts clean); (2) the provider's
result, streamed by ``stream_download`` from a loopback server in another process into
``S3BlobStore.writer`` (hash, local file, multipart upload). The store is moto's server in its
own process, so its buffers are not counted. Target: each peak under 30 MiB above idle.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import multiprocessing
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import httpx

from adapters.providers.download import stream_download
from bench.common import Figure, MiB, Result, RssSampler, main, memory_kib, reset_peak_rss
from bench.download_rss import RESULT_BYTES, RESULT_CAP, TARGET_MB, TIME_LIMIT, result_server
from storage.blob_cache import BlobCache
from storage.s3 import S3Access, S3BlobStore, S3Location
from tests.fakes.s3 import MotoServer

BUCKET = "bench"


async def _nothing_referenced(blob: str) -> bool:
    return False


async def run() -> Result:
    moto = MotoServer().start()  # from this thread: the server ends with it (before timing)
    try:
        moto.create_bucket(BUCKET)
        async with result_server(RESULT_BYTES) as url:
            return await _measure(moto, url)
    finally:
        moto.stop()


def _peak_above(idle_kib: int, sampler: RssSampler, hwm_reset: bool) -> float:
    peak = max(sampler.peak_kib, memory_kib("VmHWM") if hwm_reset else 0)
    return (peak - idle_kib) / 1024


async def _relay(store: S3BlobStore, url: str) -> str:
    """The provider's result streamed into the store, as the engine's fetch does: its name."""
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0)) as client,
        store.writer(RESULT_CAP) as writer,
    ):
        async for chunk in stream_download(client, url, max_bytes=RESULT_CAP):
            await writer.write(chunk)
    assert writer.sha256 is not None
    return writer.sha256


def _seed(access: S3Access, url: str, folder: str, pipe: Connection) -> None:
    """In a child process: store the result under the ``seeded`` prefix; send its name."""

    async def seed() -> str:
        cache = BlobCache(Path(folder), RESULT_CAP)
        location = S3Location(BUCKET, "seeded")
        async with S3BlobStore.open(location, access, cache, _nothing_referenced) as store:
            return await _relay(store, url)

    pipe.send(asyncio.run(seed()))


async def _seeded(access: S3Access, url: str, folder: Path) -> str:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(target=_seed, args=(access, url, str(folder), theirs))
    child.start()
    theirs.close()
    try:
        if not await asyncio.to_thread(ours.poll, TIME_LIMIT):
            raise TimeoutError("seeding the store took too long")
        blob: str = ours.recv()
        return blob
    finally:
        ours.close()
        await asyncio.to_thread(child.join, 10)


async def _measure(moto: MotoServer, url: str) -> Result:
    access = moto.access(attempts=3)
    with tempfile.TemporaryDirectory(prefix="r2v-bench-") as name:
        root = Path(name)
        seeded = await _seeded(access, url, root / "seed")
        async with (
            S3BlobStore.open(
                S3Location(BUCKET, "seeded"),
                access,
                BlobCache(root / "fetch", RESULT_CAP),
                _nothing_referenced,
            ) as fetching,
            S3BlobStore.open(
                S3Location(BUCKET, "relayed"),
                access,
                BlobCache(root / "relay", RESULT_CAP),
                _nothing_referenced,
            ) as relaying,
        ):
            gc.collect()
            idle_kib = memory_kib()
            hwm_reset = reset_peak_rss()
            with RssSampler() as down_sampler:
                started = time.perf_counter()
                fetched = await fetching.local_path(seeded)
                down_seconds = time.perf_counter() - started
            down_mb = _peak_above(idle_kib, down_sampler, hwm_reset)
            same = await asyncio.to_thread(_sha256, fetched) == seeded
            size = fetched.stat().st_size

            gc.collect()
            idle_up_kib = memory_kib()
            hwm_reset = reset_peak_rss()
            with RssSampler() as up_sampler:
                started = time.perf_counter()
                relayed = await _relay(relaying, url)
                up_seconds = time.perf_counter() - started
            up_mb = _peak_above(idle_up_kib, up_sampler, hwm_reset)
    size_mib = size / MiB
    return Result(
        name="blob_s3_rss",
        title=f"Memory while a {RESULT_BYTES // MiB} MiB result goes into S3 and back",
        figures=(
            Figure("Idle RSS", idle_kib / 1024, "MiB"),
            Figure("Peak above idle: S3 → local cache", down_mb, "MiB", target=TARGET_MB),
            Figure("Peak above idle: provider → S3", up_mb, "MiB", target=TARGET_MB),
            Figure("S3 → local cache throughput", size_mib / down_seconds, "MiB/s"),
            Figure("Provider → S3 throughput", size_mib / up_seconds, "MiB/s"),
        ),
        notes=(
            f"{size_mib:.0f} MiB fetched from the store; the copy "
            + ("hashes to its name." if same else "does NOT hash to its name."),
            "The fetch is measured first, on a clean heap; the relay after it, from the RSS the "
            "fetch left.",
            "The store is moto's server (python -m moto.server) on loopback, in its own process.",
        ),
        checks_passed=same and size == RESULT_BYTES and relayed == seeded,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


if __name__ == "__main__":
    main(run)
