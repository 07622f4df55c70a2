"""Signed ``/media`` links, fetched over a real socket from a real blob store.

A provider fetches our references by these links, so what matters is what it gets: the exact
bytes with the signed type and length, ranges, and a plain 404 for anything expired, altered or
missing, which tells a guesser nothing.
"""

from __future__ import annotations

import base64
import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.http.media import MediaLinks, media_route
from storage.blobs import FileBlobStore

SECRET = b"s" * 32
TTL = 600
DATA = random.Random(5).randbytes(200_000)  # fixed, so every token is the same each run
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Site:
    def __init__(self, links: MediaLinks, clock: Clock, blob: str, client: httpx.AsyncClient):
        self.links, self.clock, self.blob, self.client = links, clock, blob, client

    async def get(self, token: str, **headers: str) -> httpx.Response:
        return await self.client.get(f"/media/{token}", headers=headers)


async def _always_referenced(blob: str) -> bool:
    return True


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    blobs = FileBlobStore(tmp_path / "blobs", _always_referenced)
    source = tmp_path / "reference.bin"
    source.write_bytes(DATA)
    blob = await blobs.put_file(source)
    clock = Clock()
    links = MediaLinks(SECRET, "https://bot.example/", ttl_seconds=TTL, clock=clock)
    app = web.Application()
    app.add_routes([media_route(links, blobs.local_path)])
    async with TestServer(app, port=0) as server:
        base = str(server.make_url("/"))
        async with httpx.AsyncClient(base_url=base) as client:
            yield Site(links, clock, blob, client)


def flip(text: str, index: int) -> str:
    """``text`` with the character at ``index`` swapped for another of the alphabet."""
    old = text[index]
    new = ALPHABET[(ALPHABET.index(old) + 32) % 64]
    return text[:index] + new + text[index + 1 :]


def flip_spare_bit(text: str) -> str:
    """``text`` with the lowest bit of its last character flipped. When the text's length is not
    a multiple of 4, that bit carries no data: a lenient decoder reads the same bytes."""
    assert len(text) % 4, "this text has no spare bits"
    return text[:-1] + ALPHABET[ALPHABET.index(text[-1]) ^ 1]


async def test_a_link_serves_the_exact_bytes_with_the_signed_type_and_length(site: Site) -> None:
    for mime in ("video/mp4", "image/png"):
        response = await site.get(site.links.token(site.blob, mime))

        assert response.status_code == 200
        assert response.content == DATA
        assert response.headers["Content-Type"] == mime
        assert response.headers["Content-Length"] == str(len(DATA))


async def test_a_range_request_gets_those_bytes_alone(site: Site) -> None:
    response = await site.get(site.links.token(site.blob, "video/mp4"), Range="bytes=10-99")

    assert response.status_code == 206
    assert response.content == DATA[10:100]
    assert response.headers["Content-Range"] == f"bytes 10-99/{len(DATA)}"
    assert response.headers["Content-Length"] == "90"
    assert response.headers["Content-Type"] == "video/mp4"


async def test_head_answers_the_type_and_length_without_a_body(site: Site) -> None:
    response = await site.client.head(f"/media/{site.links.token(site.blob, 'audio/wav')}")

    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["Content-Length"] == str(len(DATA))
    assert response.headers["Content-Type"] == "audio/wav"


async def test_a_link_works_until_it_expires_and_not_after(site: Site) -> None:
    token = site.links.token(site.blob, "image/png")

    site.clock.now += TTL
    assert (await site.get(token)).status_code == 200
    site.clock.now += 1
    assert (await site.get(token)).status_code == 404


@pytest.mark.parametrize("part", ["payload", "signature"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
async def test_an_altered_token_is_not_found(site: Site, part: str, where: str) -> None:
    payload, signature = site.links.token(site.blob, "image/png").split(".")
    text = payload if part == "payload" else signature
    altered = flip(text, {"first": 0, "middle": len(text) // 2, "last": len(text) - 1}[where])
    token = f"{altered}.{signature}" if part == "payload" else f"{payload}.{altered}"

    assert (await site.get(token)).status_code == 404


async def test_a_token_has_one_spelling_only(site: Site) -> None:
    """Base64 decoders forgive a lot; a link that was not issued must not work, even when it
    decodes to a signed payload."""
    token = site.links.token(site.blob, "image/png")
    payload, signature = token.split(".")
    standard = token.replace("-", "+").replace("_", "/")
    assert standard != token, "this token has no URL-safe characters to respell"
    respelled = [
        f"{flip_spare_bit(payload)}.{signature}",
        f"{payload}.{flip_spare_bit(signature)}",
        f"{payload}.{signature}==",
        f"{payload}.{signature}~",
        f"{payload[:5]}~{payload[5:]}.{signature}",
        standard.replace("/", "%2F"),
    ]
    assert (await site.get(token)).status_code == 200
    for other in respelled:
        assert (await site.get(other)).status_code == 404, other


async def test_a_token_signed_with_another_secret_is_not_found(site: Site) -> None:
    other = MediaLinks(b"x" * 32, "https://bot.example", ttl_seconds=TTL, clock=site.clock)

    assert (await site.get(other.token(site.blob, "image/png"))).status_code == 404


async def test_a_token_for_a_blob_that_is_not_stored_is_not_found(site: Site) -> None:
    token = site.links.token("0" * 64, "image/png")

    response = await site.get(token)

    assert response.status_code == 404


async def test_every_refusal_looks_the_same(site: Site) -> None:
    """Expired, forged and missing all answer the same 404, so none of them tells anything."""
    missing = await site.get(site.links.token("0" * 64, "image/png"))
    forged = await site.get(flip(site.links.token(site.blob, "image/png"), 3))
    garbage = await site.get("not-a-token")
    expired_token = site.links.token(site.blob, "image/png")
    site.clock.now += TTL + 1
    expired = await site.get(expired_token)

    answers = {(r.status_code, r.content, r.headers["Content-Type"]) for r in (missing, forged)}
    answers |= {(r.status_code, r.content, r.headers["Content-Type"]) for r in (garbage, expired)}
    assert len(answers) == 1
    assert next(iter(answers))[0] == 404


def test_url_for_needs_a_public_url() -> None:
    blob = "a" * 64
    assert MediaLinks(SECRET, None).url_for(blob, "image/png") is None
    assert MediaLinks(SECRET, "").url_for(blob, "image/png") is None

    url = MediaLinks(SECRET, "https://bot.example/r2v/").url_for(blob, "image/png")

    assert url is not None and url.startswith("https://bot.example/r2v/media/")
    token = url.rsplit("/", 1)[1]
    assert MediaLinks(SECRET, None).check(token) == (blob, "image/png")


async def test_a_public_link_is_served_at_its_path(site: Site) -> None:
    url = site.links.url_for(site.blob, "video/mp4")
    assert url is not None and url.startswith("https://bot.example/media/")

    response = await site.client.get(url.removeprefix("https://bot.example"))

    assert response.status_code == 200 and response.content == DATA


@pytest.mark.parametrize(
    ("blob", "mime"),
    [("../../etc/passwd", "image/png"), ("A" * 64, "image/png"), ("a" * 64, "text/html\r\nX: y")],
)
def test_a_link_names_only_a_blob_and_a_plain_type(blob: str, mime: str) -> None:
    with pytest.raises(ValueError):
        MediaLinks(SECRET, None).token(blob, mime)


def test_a_token_decodes_to_what_it_names() -> None:
    """The payload is readable (base64, not encrypted): it names a blob, a type and a time."""
    links = MediaLinks(SECRET, None, ttl_seconds=60, clock=lambda: 1000.0)
    payload = links.token("b" * 64, "audio/mpeg").split(".")[0]

    decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))

    assert decoded == b"b" * 64 + b":audio/mpeg:1060"
