"""A loopback Segmind (asynchronous v2 API for ``wan2.7-r2v``) that follows PROVIDERS.md.

It checks the ``x-api-key`` header, records every request, insists that ``reference_images``
and ``reference_videos`` are single URL strings, fetches them (and ``reference_voice``) as
Segmind would, and answers look-ups at the poll path the client assumes. A request is processing
once looked up and completes after ``complete_after_polls`` look-ups, unless the test sets its
state itself. Knobs answer errors a given number of times, hang a submit, or lose the result.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

SUBMIT_PATH = "/v2/wan2.7-r2v"
_URL_FIELDS = ("reference_images", "reference_videos", "reference_voice")


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Fetched:
    url: str
    status: int
    content_type: str
    size: int


@dataclass
class FakeRequest:
    request_id: str
    status: str = "QUEUED"
    body: dict[str, Any] = field(default_factory=dict)
    polls: int = 0
    error: str | None = None


class FakeSegmind:
    def __init__(
        self,
        result: Path,
        *,
        key: str = "sg-test-key",
        complete_after_polls: int | None = 2,
    ) -> None:
        self.result = result
        self.key = key
        self.complete_after_polls = complete_after_polls
        self.requests: list[Recorded] = []
        self.jobs: dict[str, FakeRequest] = {}
        self.fetched: list[Fetched] = []
        self.hang_submit = False
        self.result_missing = False
        self._failures: list[int] = []
        self._ids = itertools.count(1)
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_post(SUBMIT_PATH, self._submit)
        app.router.add_get("/v2/requests/{request_id}", self._status)
        app.router.add_get("/outputs/{request_id}.mp4", self._result)
        self._server = TestServer(app, host="127.0.0.1", port=0)
        self._session: aiohttp.ClientSession | None = None
        #: The fake's address (scheme, host and port), known once it has started.
        self.url = ""

    async def __aenter__(self) -> FakeSegmind:
        await self._server.start_server()
        self.url = str(self._server.make_url("")).rstrip("/")
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        if self._session is not None:
            await self._session.close()
        await self._server.close()

    @property
    def submits(self) -> list[dict[str, Any]]:
        return [r.body for r in self.requests if r.path == SUBMIT_PATH]

    def fail_next(self, status: int, times: int = 1) -> None:
        """Answer the next ``times`` API calls (not results) with ``status``."""
        self._failures.extend([status] * times)

    def add_request(self, status: str = "QUEUED", **fields: Any) -> str:
        job = FakeRequest(f"sg-{next(self._ids)}", status, **fields)
        self.jobs[job.request_id] = job
        return job.request_id

    def set_state(self, request_id: str, status: str, error: str | None = None) -> None:
        self.jobs[request_id].status = status
        self.jobs[request_id].error = error

    async def _record(self, request: web.Request) -> web.Response | None:
        body: Any = None
        if request.can_read_body:
            body = await request.json()
        self.requests.append(Recorded(request.method, request.path, dict(request.headers), body))
        if request.headers.get("x-api-key") != self.key:
            return web.json_response({"error": "Invalid API key"}, status=401)
        if self._failures:
            status = self._failures.pop(0)
            return web.json_response({"error": f"injected {status}"}, status=status)
        return None

    async def _submit(self, request: web.Request) -> web.Response:
        refused = await self._record(request)
        if refused is not None:
            return refused
        if self.hang_submit:
            await self._release.wait()
        body = self.requests[-1].body
        if not isinstance(body, dict) or not body.get("prompt"):
            return web.json_response({"error": "prompt is required"}, status=400)
        for name in _URL_FIELDS:
            if name in body and not isinstance(body[name], str):
                return web.json_response({"error": f"{name} must be a URL string"}, status=422)
        job = FakeRequest(f"sg-{next(self._ids)}", body=body)
        self.jobs[job.request_id] = job
        for name in _URL_FIELDS:
            if name in body and not await self._fetch(body[name]):
                job.status, job.error = "FAILED", f"could not download {name}"
        return web.json_response(
            {
                "request_id": job.request_id,
                "status": job.status,
                "poll_url": f"{self.url}/v2/requests/{job.request_id}",
            }
        )

    async def _fetch(self, url: str) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(url) as response:
                size = 0
                async for chunk in response.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                self.fetched.append(Fetched(url, response.status, response.content_type, size))
                return response.status == 200
        except aiohttp.ClientError:
            self.fetched.append(Fetched(url, 0, "", 0))
            return False

    async def _status(self, request: web.Request) -> web.Response:
        refused = await self._record(request)
        if refused is not None:
            return refused
        job = self.jobs.get(request.match_info["request_id"])
        if job is None:
            return web.json_response({"error": "request not found"}, status=404)
        job.polls += 1
        if self.complete_after_polls is not None and job.status in ("QUEUED", "PROCESSING"):
            job.status = "PROCESSING"
            if job.polls >= self.complete_after_polls:
                job.status = "COMPLETED"
        answer: dict[str, Any] = {"request_id": job.request_id, "status": job.status}
        if job.status == "COMPLETED":
            answer["output"] = f"{self.url}/outputs/{job.request_id}.mp4"
        if job.status == "FAILED":
            answer["error"] = job.error or "inference failed"
        return web.json_response(answer)

    async def _result(self, request: web.Request) -> web.StreamResponse:
        if self.result_missing:
            return web.Response(status=404, text="NoSuchKey")
        return web.FileResponse(self.result, headers={"Content-Type": "video/mp4"})
