"""The shared result download, against a loopback aiohttp server (and a raw socket for a cut)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.providers.download import stream_download
from bot.errors import ProviderError, R2VError

BODY = os.urandom(3 * 256 * 1024 + 12_345)
PIECE = 50_000


class Site:
    """The loopback server with every route the tests use."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        app = web.Application()
        app.router.add_get("/file", _file)
        app.router.add_get("/chunked", _chunked)
        app.router.add_get("/old", _moved)
        app.router.add_get("/huge", self._huge)
        for code in (400, 404, 410, 429, 500, 503):
            app.router.add_get(f"/status/{code}", _status(code))
        self.server = TestServer(app, port=0)

    def url(self, path: str) -> str:
        return str(self.server.make_url(path)) + "?sig=secret-token"

    async def _huge(self, request: web.Request) -> web.StreamResponse:
        """Declares 50 MB, sends 64 KiB, then stalls until released: reading on would hang."""
        response = web.StreamResponse(headers={"Content-Length": str(50 * 1024 * 1024)})
        await response.prepare(request)
        await response.write(b"\0" * 65536)
        await self.release.wait()
        return response


async def _file(request: web.Request) -> web.StreamResponse:
    """The body in small writes, so the client sees it arrive in many reads."""
    response = web.StreamResponse(headers={"Content-Length": str(len(BODY))})
    await response.prepare(request)
    for start in range(0, len(BODY), PIECE):
        await response.write(BODY[start : start + PIECE])
    await response.write_eof()
    return response


async def _chunked(request: web.Request) -> web.StreamResponse:
    """The body with no Content-Length (chunked transfer encoding)."""
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for start in range(0, len(BODY), PIECE):
        await response.write(BODY[start : start + PIECE])
    await response.write_eof()
    return response


def _status(code: int) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=code, text="nope")

    return answer


async def _moved(request: web.Request) -> web.Response:
    raise web.HTTPFound("/file")


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    site = Site()
    await site.server.start_server()
    yield site
    site.release.set()
    await site.server.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as http:
        yield http


async def collect(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in chunks]


async def test_chunks_reassemble_to_the_exact_bytes(site: Site, client: httpx.AsyncClient) -> None:
    chunks = await collect(stream_download(client, site.url("/file"), chunk_size=64 * 1024))
    assert b"".join(chunks) == BODY
    assert len(chunks) > 1
    assert max(len(c) for c in chunks) <= 64 * 1024


async def test_a_redirect_is_followed(site: Site, client: httpx.AsyncClient) -> None:
    chunks = await collect(stream_download(client, site.url("/old")))
    assert b"".join(chunks) == BODY


@pytest.mark.parametrize("code", [404, 410])
async def test_a_missing_result_is_not_retryable(
    site: Site, client: httpx.AsyncClient, code: int
) -> None:
    with pytest.raises(ProviderError) as caught:
        await collect(stream_download(client, site.url(f"/status/{code}")))
    assert caught.value.code == "result_missing"
    assert not caught.value.retryable
    assert f"answered {code}" in caught.value.message
    assert "secret-token" not in caught.value.message, "signed queries stay out of messages"


@pytest.mark.parametrize("code", [429, 500, 503])
async def test_a_busy_or_broken_server_is_retryable(
    site: Site, client: httpx.AsyncClient, code: int
) -> None:
    with pytest.raises(ProviderError) as caught:
        await collect(stream_download(client, site.url(f"/status/{code}")))
    assert caught.value.code == "result_unavailable"
    assert caught.value.retryable


async def test_another_client_error_is_not_retryable(site: Site, client: httpx.AsyncClient) -> None:
    with pytest.raises(ProviderError) as caught:
        await collect(stream_download(client, site.url("/status/400")))
    assert caught.value.code == "result_refused"
    assert not caught.value.retryable


async def test_an_oversize_content_length_is_refused_before_reading(
    site: Site, client: httpx.AsyncClient
) -> None:
    received: list[bytes] = []

    async def read() -> None:
        async for chunk in stream_download(client, site.url("/huge"), max_bytes=1024 * 1024):
            received.append(chunk)

    with pytest.raises(R2VError) as caught:
        # The server stalls after its first 64 KiB: a client reading the body would hang here.
        await asyncio.wait_for(read(), timeout=5.0)
    assert caught.value.code == "too_large"
    assert "50 MB" in caught.value.message and "1 MB" in caught.value.message
    assert received == []


async def test_a_body_longer_than_allowed_is_cut_while_streaming(
    site: Site, client: httpx.AsyncClient
) -> None:
    received: list[bytes] = []
    with pytest.raises(R2VError) as caught:
        async for chunk in stream_download(
            client, site.url("/chunked"), chunk_size=64 * 1024, max_bytes=256 * 1024
        ):
            received.append(chunk)
    assert caught.value.code == "too_large"
    assert sum(map(len, received)) <= 256 * 1024


async def test_a_connection_cut_mid_body_is_retryable(client: httpx.AsyncClient) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(cut, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ProviderError) as caught:
            await collect(stream_download(client, f"http://127.0.0.1:{port}/result.mp4"))
    finally:
        server.close()
        await server.wait_closed()
    assert caught.value.code == "result_unavailable"
    assert caught.value.retryable


async def test_a_refused_connection_is_retryable(client: httpx.AsyncClient) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(ProviderError) as caught:
        await collect(stream_download(client, f"http://127.0.0.1:{port}/result.mp4"))
    assert caught.value.code == "result_unavailable"
    assert caught.value.retryable
