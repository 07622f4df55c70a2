"""A loopback fake of Freepik's Wan 2.7 reference-to-video API, following PROVIDERS.md.

It checks the ``x-freepik-api-key`` header, records every submit, and — as Freepik does — fetches
each reference and voice from the links it was given (our signed ``/media`` links), keeping the
bytes so tests can compare them with what was saved. Tasks go CREATED → IN_PROGRESS → COMPLETED
(or FAILED), by status polls or when the test says; every status change is POSTed, unsigned, to
the task's ``webhook_url`` when ``send_webhooks`` is on. The result MP4 is served by the fake.
Knobs: those of every fake (``tests.fakes.base``), where a route is ``"submit"`` or ``"status"``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeProvider

TASKS_PATH = "/v1/ai/reference-to-video/wan-2-7"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Task:
    task_id: str
    body: dict[str, Any]
    status: str = "CREATED"
    error: str | None = None
    polls: int = 0


class FakeFreepik(FakeProvider):
    """``async with FakeFreepik(result_mp4) as fake:`` — then point the client at ``fake.url``.

    ``complete_after_polls``: a task reads IN_PROGRESS from its first status poll and COMPLETED
    from this poll on (``None``: only ``finish`` ends it).
    """

    name = "freepik"

    def __init__(
        self,
        result: bytes,
        *,
        key: str = "fp-test-key",
        complete_after_polls: int | None = 2,
        send_webhooks: bool = True,
    ) -> None:
        super().__init__(result, key=key, complete_after_polls=complete_after_polls)
        self.send_webhooks = send_webhooks
        self.tasks: dict[str, Task] = {}
        self.submits: list[dict[str, Any]] = []
        #: (status sent, the bot's answer) for every webhook POSTed.
        self.webhooks: list[tuple[str, int]] = []
        self.status_reads = 0
        self._submitted = asyncio.Condition()

    # -- what tests drive ------------------------------------------------------------------

    async def task(self, number: int = 1, within: float = 10.0) -> Task:
        """The ``number``-th task made, waiting for it to be submitted."""
        async with self._submitted:
            await asyncio.wait_for(
                self._submitted.wait_for(lambda: len(self.tasks) >= number), within
            )
        return list(self.tasks.values())[number - 1]

    async def move(self, task_id: str, status: str, error: str | None = None) -> None:
        """Change a task's status, calling its webhook as Freepik does on every change."""
        task = self.tasks[task_id]
        if task.status == status:
            return
        task.status, task.error = status, error
        await self._notify(task)

    async def finish(self, task_id: str) -> None:
        await self.move(task_id, "IN_PROGRESS")
        await self.move(task_id, "COMPLETED")

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_post(TASKS_PATH, self._submit)
        app.router.add_get(TASKS_PATH, self._list)
        app.router.add_get(TASKS_PATH + "/{task_id}", self._status)
        app.router.add_get("/results/{task_id}.mp4", self._result)
        return app

    # -- routes ----------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/v1/") and request.headers.get("x-freepik-api-key") != self.key:
            return web.json_response({"message": "Invalid API key"}, status=401)
        return await handler(request)

    def _failure(self, route: str) -> web.Response | None:
        status = self._take_failure(route)
        if status is None:
            return None
        return web.json_response({"message": f"fake failure {status}"}, status=status)

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.submits.append(body)
        failure = self._failure("submit")
        if failure is not None:
            return failure
        task = Task(secrets.token_hex(8), body)
        missing = await self._fetch_references(body)
        if missing:
            task.status, task.error = "FAILED", f"could not download {missing}"
        async with self._submitted:
            self.tasks[task.task_id] = task
            self._submitted.notify_all()
        return web.json_response({"data": self._data(task)})

    async def _list(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"data": [self._data(t) for t in self.tasks.values()]})

    async def _status(self, request: web.Request) -> web.StreamResponse:
        failure = self._failure("status")
        if failure is not None:
            return failure
        task = self.tasks.get(request.match_info["task_id"])
        if task is None:
            return web.json_response({"message": "Not found"}, status=404)
        self.status_reads += 1
        task.polls += 1
        if task.status in ("CREATED", "IN_PROGRESS") and self.complete_after_polls is not None:
            status = "COMPLETED" if task.polls >= self.complete_after_polls else "IN_PROGRESS"
            await self.move(task.task_id, status)
        return web.json_response({"data": self._data(task)})

    async def _result(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["task_id"] not in self.tasks:
            return web.Response(status=404)
        return await self._serve_result(request)

    # -- helpers ---------------------------------------------------------------------------

    def _data(self, task: Task) -> dict[str, Any]:
        generated = [f"{self.url}/results/{task.task_id}.mp4"] if task.status == "COMPLETED" else []
        data: dict[str, Any] = {
            "task_id": task.task_id,
            "status": task.status,
            "generated": generated,
        }
        if task.error:
            data["error"] = task.error
        return data

    async def _fetch_references(self, body: dict[str, Any]) -> str | None:
        """GET every reference and voice link as Freepik would; answer the first that failed."""
        links: list[str] = [
            str(link)
            for item in [*body.get("image_urls", []), *body.get("video_urls", [])]
            for link in (item.get("url"), item.get("reference_voice"))
            if link
        ]
        for link in links:
            if not await self._fetch(link):
                return link
        return None

    async def _notify(self, task: Task) -> None:
        """POST the status answer, without its ``data`` wrapper and without any signature."""
        webhook = task.body.get("webhook_url")
        if not (self.send_webhooks and webhook):
            return
        async with self._client.post(webhook, json=self._data(task)) as response:
            self.webhooks.append((task.status, response.status))
