"""The whole bot with its blobs in an S3-compatible store (moto's server, real HTTP).

What changes for a user with ``R2V_BLOB_URL=s3://…``: nothing they can see. Characters and
results land in the bucket, a provider that fetches references by URL gets presigned links and
fetches them from the store itself (not from the bot), and the video is delivered as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.models import MediaKind
from tests.fakes.freepik import FakeFreepik
from tests.fakes.s3 import REGION, MotoServer, moto_with_bucket
from tests.harness import NO_POLLING, bot_with
from tests.media_factory import make_video

BUCKET = "bot-blobs"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_with_bucket(BUCKET) as server:
        yield server


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeFreepik]:
    result = make_video(tmp_path / "result.mp4", seconds=1.0).read_bytes()
    async with FakeFreepik(result) as server:
        yield server


async def test_a_job_runs_with_blobs_in_the_bucket_and_presigned_references(
    tmp_path: Path, fake: FakeFreepik, moto: MotoServer
) -> None:
    fake.complete_after_polls = None
    blob_settings: dict[str, Any] = {
        "blob_url": f"s3://{BUCKET}/bot",
        "aws_endpoint_url": moto.url,
        "aws_region": REGION,
        "aws_access_key_id": moto.keys[0],
        "aws_secret_access_key": moto.keys[1],
    }
    async with bot_with(tmp_path, fake, **NO_POLLING, **blob_settings) as h:
        await h.character("alice", voice=True)
        job_id = await h.generate("@alice waves", seed=5)
        task = await fake.task()
        await fake.finish(task.task_id)
        job = await h.delivered(job_id, within=10.0)
        assert h.delivered_bytes(job_id) == fake.result

    [body] = fake.submits
    [image] = body["image_urls"]
    alice = next(r for r in job.spec.references if r.kind is MediaKind.IMAGE)
    fetched = {f.url: f for f in fake.fetched}
    assert set(fetched) == {image["url"], image["reference_voice"]}
    for url, blob, mime in [
        (image["url"], alice.blob, "image/png"),
        (image["reference_voice"], alice.voice_blob, "audio/wav"),
    ]:
        assert url.startswith(f"{moto.url}/{BUCKET}/bot/"), url  # from the store, not /media
        assert fetched[url].status == 200
        assert fetched[url].content_type == mime
        assert hashlib.sha256(fetched[url].data).hexdigest() == blob

    listed = moto.admin().list_objects_v2(Bucket=BUCKET, Prefix="bot/")
    keys = {item["Key"] for item in listed.get("Contents", [])}
    assert job.result_blob is not None
    for blob in (alice.blob, alice.voice_blob, job.result_blob):
        assert blob is not None
        assert f"bot/{blob[:2]}/{blob[2:]}" in keys
    assert not (tmp_path / "data" / "blobs").exists()  # nothing in the local-files store
    assert (tmp_path / "data" / "blob-cache").is_dir()
