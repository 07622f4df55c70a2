"""A loopback Segmind (asynchronous v2 API for ``wan2.7-r2v``) that follows PROVIDERS.md.

It checks the ``x-api-key`` header, records every request, insists that ``reference_images``
and ``reference_videos`` are single URL strings, fetches them (and ``reference_voice``) as
Segmind would, and follows its async inference: the submit answers ``request_id``, ``status``
QUEUED, ``poll_url``, ``status_url`` and ``response_url``; the status URL answers the status
alone (with ``error`` when FAILED); the response URL answers the result with ``output`` once
COMPLETED, and — its answer before that being undocumented — a 404 until then. A request is
processing once its status is looked up and completes after ``complete_after_polls`` look-ups,
unless the test sets its state itself. Knobs: those of every fake (``tests.fakes.base``), where
``fail_next`` answers API calls.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeProvider

SUBMIT_PATH = "/v2/wan2.7-r2v"
_URL_FIELDS = ("reference_images", "reference_videos", "reference_voice")


@dataclass
class FakeRequest:
    request_id: str
    status: str = "QUEUED"
    body: dict[str, Any] = field(default_factory=dict)
    polls: int = 0
    error: str | None = None
    #: Reads of the response URL, and how many came before the request completed.
    response_reads: int = 0
    early_reads: int = 0


class FakeSegmind(FakeProvider):
    name = "segmind"

    def __init__(
        self,
        result: bytes,
        *,
        key: str = "sg-test-key",
        complete_after_polls: int | None = 2,
    ) -> None:
        super().__init__(result, key=key, complete_after_polls=complete_after_polls)
        self.jobs: dict[str, FakeRequest] = {}
        self._ids = itertools.count(1)

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(SUBMIT_PATH, self._submit)
        app.router.add_get("/v2/requests/{request_id}/status", self._status)
        app.router.add_get("/v2/requests/{request_id}", self._response)
        app.router.add_get("/outputs/{request_id}.mp4", self._serve_result)
        return app

    @property
    def submits(self) -> list[dict[str, Any]]:
        return [r.json() for r in self.requested("POST", SUBMIT_PATH)]

    def add_request(self, status: str = "QUEUED", **fields: Any) -> str:
        job = FakeRequest(f"sg-{next(self._ids)}", status, **fields)
        self.jobs[job.request_id] = job
        return job.request_id

    def set_state(self, request_id: str, status: str, error: str | None = None) -> None:
        self.jobs[request_id].status = status
        self.jobs[request_id].error = error

    async def _admit(self, request: web.Request) -> web.Response | None:
        """Record the request; answer an auth or injected error, else ``None`` to go on."""
        await self._record(request)
        if request.headers.get("x-api-key") != self.key:
            return web.json_response({"error": "Invalid API key"}, status=401)
        status = self._take_failure(request.path)
        if status is not None:
            return web.json_response({"error": f"injected {status}"}, status=status)
        return None

    async def _submit(self, request: web.Request) -> web.Response:
        refused = await self._admit(request)
        if refused is not None:
            return refused
        await self._hold_submit()
        body = self.requests[-1].json()
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
        base = f"{self.url}/v2/requests/{job.request_id}"
        return web.json_response(
            {
                "request_id": job.request_id,
                "status": job.status,
                "poll_url": f"{base}/status",
                "status_url": f"{base}/status",
                "response_url": base,
            }
        )

    async def _job(self, request: web.Request) -> FakeRequest | web.Response:
        """The request's job, or the answer that refuses it (auth, unknown id)."""
        refused = await self._admit(request)
        if refused is not None:
            return refused
        job = self.jobs.get(request.match_info["request_id"])
        if job is None:
            return web.json_response({"error": "request not found"}, status=404)
        return job

    async def _status(self, request: web.Request) -> web.Response:
        job = await self._job(request)
        if isinstance(job, web.Response):
            return job
        job.polls += 1
        if self.complete_after_polls is not None and job.status in ("QUEUED", "PROCESSING"):
            job.status = "PROCESSING"
            if job.polls >= self.complete_after_polls:
                job.status = "COMPLETED"
        answer: dict[str, Any] = {"request_id": job.request_id, "status": job.status}
        if job.status == "FAILED":
            answer["error"] = job.error or "inference failed"
        return web.json_response(answer)

    async def _response(self, request: web.Request) -> web.Response:
        job = await self._job(request)
        if isinstance(job, web.Response):
            return job
        job.response_reads += 1
        if job.status != "COMPLETED":
            job.early_reads += 1
            return web.json_response({"error": "result not ready"}, status=404)
        return web.json_response(
            {
                "request_id": job.request_id,
                "status": job.status,
                "output": f"{self.url}/outputs/{job.request_id}.mp4",
            }
        )
