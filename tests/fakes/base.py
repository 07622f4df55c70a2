"""What the loopback fakes share, so that each fake's module holds only its own protocol.

``LoopbackServer`` serves a fake's aiohttp app on 127.0.0.1 at a port the system picks; ``url``
is its address once ``async with`` has started it. ``FakeProvider`` adds the chores every hosted
provider's fake does alike: the key and the bot settings that point at the fake, a record of the
requests, failure knobs, the result MP4 served in pieces, references fetched from the links the
bot gave, and webhooks sent in the background. Routes, bodies, statuses and signatures stay in
each provider's module.

Knobs every provider fake has: ``complete_after_polls`` (each fake says how a task gets there),
``fail_next(status, times, route=)`` (answers to give the next requests; each fake says which of
its requests can fail, and what names a route), ``hang_submit`` (the submit waits until the fake
stops), ``result_status`` (what the result link answers, e.g. 404), ``stall_after`` (stop sending
the result after that many bytes) and ``declare_length`` (send the result's Content-Length or
not).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import aiohttp
from aiohttp import web

from bot.settings import PROVIDER_KEY_FIELDS

CHUNK = 64 * 1024


class LoopbackServer:
    """An aiohttp app on 127.0.0.1; ``async with`` starts it and stops it."""

    def __init__(self) -> None:
        #: The fake's address (scheme, host and port), known once it has started.
        self.url = ""
        self._runner: web.AppRunner | None = None

    def make_app(self) -> web.Application:
        """The fake's routes."""
        raise NotImplementedError

    async def started(self) -> None:
        """Called once the server listens."""

    async def closing(self) -> None:
        """Called before the server stops."""

    async def __aenter__(self) -> Self:
        self._runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        await self.started()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.closing()
        finally:
            if self._runner is not None:
                await self._runner.cleanup()


@dataclass
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Fetched:
    """A reference link the fake followed, as the provider does before rendering."""

    url: str
    status: int
    content_type: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


class FakeProvider(LoopbackServer):
    """A hosted provider's API on loopback: what is the same from one provider to the next."""

    #: The provider's name in the bot (``R2V_PROVIDER``), which names its settings too.
    name: ClassVar[str]

    def __init__(self, result: bytes, *, key: str, complete_after_polls: int | None = 2) -> None:
        super().__init__()
        #: The MP4 that every finished task made.
        self.result = result
        self.key = key
        #: A task finishes at this status look-up (``None``: only when the test says).
        self.complete_after_polls = complete_after_polls
        self.requests: list[Recorded] = []
        self.fetched: list[Fetched] = []
        self.hang_submit = False
        self.result_status = 200
        self.declare_length = True
        self.stall_after: int | None = None
        self.bytes_sent = 0
        self.result_downloads = 0
        self._failures: list[tuple[int, str | None]] = []
        self._release = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def settings(self) -> dict[str, Any]:
        """The bot's settings that point it at this fake: its key and its base URL."""
        return {PROVIDER_KEY_FIELDS[self.name]: self.key, f"{self.name}_base_url": self.url}

    def requested(self, method: str, path: str) -> list[Recorded]:
        """The requests made with ``method`` to ``path``, in order."""
        return [r for r in self.requests if r.method == method and r.path == path]

    def fail_next(self, status: int, times: int = 1, *, route: str | None = None) -> None:
        """Answer the next ``times`` requests that can fail (on ``route`` alone, when given)
        with ``status``."""
        self._failures.extend([(status, route)] * times)

    # -- lifecycle -------------------------------------------------------------------------

    async def started(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10.0))

    async def closing(self) -> None:
        self._release.set()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # -- for the fakes' routes -------------------------------------------------------------

    @property
    def _client(self) -> aiohttp.ClientSession:
        """The fake's own HTTP client: for reference links and webhooks."""
        assert self._session is not None, "the fake is not running"
        return self._session

    async def _record(self, request: web.Request) -> Recorded:
        recorded = Recorded(
            request.method,
            request.path,
            dict(request.query),
            dict(request.headers),
            await request.read(),
        )
        self.requests.append(recorded)
        return recorded

    def _take_failure(self, route: str) -> int | None:
        """The status queued for a request on ``route``, taken off the queue (``None``: none)."""
        for queued in self._failures:
            if queued[1] in (None, route):
                self._failures.remove(queued)
                return queued[0]
        return None

    async def _hold_submit(self) -> None:
        """Wait here, while ``hang_submit`` is on, until the fake stops."""
        if self.hang_submit:
            await self._release.wait()

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` (a webhook) on its own; the fake waits for it before it stops."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _fetch(self, url: str) -> bool:
        """GET a reference link as the provider would; whether it answered 200."""
        try:
            async with self._client.get(url) as response:
                data = await response.read()
                self.fetched.append(Fetched(url, response.status, response.content_type, data))
                return response.status == 200
        except aiohttp.ClientError:
            self.fetched.append(Fetched(url, 0, "", b""))
            return False

    async def _serve_result(self, request: web.Request) -> web.StreamResponse:
        """The result MP4 in 64 KiB writes, counting what was sent; the knobs shape the answer."""
        self.result_downloads += 1
        if self.result_status != 200:
            return web.Response(status=self.result_status, text="NoSuchKey")
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        if self.declare_length:
            response.content_length = len(self.result)
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for start in range(0, len(self.result), CHUNK):
                if self.stall_after is not None and self.bytes_sent >= self.stall_after:
                    await self._release.wait()
                    return response
                piece = self.result[start : start + CHUNK]
                await response.write(piece)
                self.bytes_sent += len(piece)
            await response.write_eof()
        except ConnectionError:
            pass
        return response
