"""``GET /media`` follows HTTP's Range rules (RFC 9110 §14), over a real socket.

A Range the route does not serve as a part (an unknown unit, several ranges, nonsense) is
ignored: 200 with the whole body, never a 416 or a 500. A token signed with our secret but
naming something that is not a blob is a plain 404.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.http.media import MediaLinks, media_route, usable_range
from storage.blobs import FileBlobStore

SECRET = b"r" * 32
DATA = random.Random(9).randbytes(50_000)


async def _referenced(blob: str) -> bool:
    return True


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    blobs = FileBlobStore(tmp_path / "blobs", _referenced)
    source = tmp_path / "clip.bin"
    source.write_bytes(DATA)
    blob = await blobs.put_file(source)
    links = MediaLinks(SECRET, "https://bot.example")
    app = web.Application()
    app.add_routes([media_route(links, blobs.local_path)])
    async with (
        TestServer(app, port=0) as server,
        httpx.AsyncClient(base_url=str(server.make_url("/"))) as client,
    ):
        yield client, f"/media/{links.token(blob, 'video/mp4')}"


@pytest.mark.parametrize(
    "header",
    ["items=0-10", "bytes=0-1,5-6", "bytes=0-9, 20-29", "bytes=abc", "bytes=", "bytes 0-10"],
)
async def test_a_range_the_route_does_not_serve_as_a_part_gets_the_whole_body(
    served: tuple[httpx.AsyncClient, str], header: str
) -> None:
    client, path = served
    response = await client.get(path, headers={"Range": header})
    assert response.status_code == 200, (header, response.status_code)
    assert response.content == DATA
    assert "Content-Range" not in response.headers


@pytest.mark.parametrize(
    ("header", "part"), [("bytes=10-19", DATA[10:20]), ("BYTES=-5", DATA[-5:])]
)
async def test_one_byte_range_is_still_a_part(
    served: tuple[httpx.AsyncClient, str], header: str, part: bytes
) -> None:
    client, path = served
    response = await client.get(path, headers={"Range": header})
    assert (response.status_code, response.content) == (206, part)


async def test_a_range_beyond_the_end_is_416(served: tuple[httpx.AsyncClient, str]) -> None:
    client, path = served
    response = await client.get(path, headers={"Range": f"bytes={len(DATA) + 10}-"})
    assert response.status_code == 416


async def test_a_signed_token_naming_no_blob_is_404(
    served: tuple[httpx.AsyncClient, str],
) -> None:
    client, _ = served

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    for name in ("../../etc/passwd", "ABC", "a" * 63, "z" * 64):
        payload = f"{name}:video/mp4:9999999999".encode()
        signature = hmac.new(SECRET, payload, hashlib.sha256).digest()
        response = await client.get(f"/media/{b64(payload)}.{b64(signature)}")
        assert response.status_code == 404, name


def test_only_single_byte_ranges_are_usable() -> None:
    assert usable_range("bytes=0-") and usable_range("bytes=-1") and usable_range("bytes=3-4")
    assert not usable_range(None) and not usable_range("bytes=1-2,3-4")
