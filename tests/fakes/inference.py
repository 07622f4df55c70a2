"""A loopback inference.sh that follows PROVIDERS.md.

It checks the Bearer key, records every request, runs the ``/apps/run`` → task → status cycle
with numeric statuses (the current table, or the older one where 9 meant completed; or names as
strings), keeps uploaded files (``POST /files`` hands out an ``upload_url`` on the fake itself,
whose PUT must come without the key), and serves the result MP4. Answers come wrapped as
``{"success", "data"}`` or bare. When a task ends and its run named a webhook, the fake POSTs
``{event, timestamp, data: task}`` there, unsigned, as inference.sh does, if ``send_webhooks``.
Knobs: those of every fake (``tests.fakes.base``), where ``fail_next`` answers API calls (not
storage or results).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeProvider

CURRENT_CODES = {
    "received": 1,
    "queued": 2,
    "running": 7,
    "cancelling": 8,
    "uploading": 9,
    "completed": 10,
    "failed": 11,
    "cancelled": 12,
}
LEGACY_CODES = {
    "received": 1,
    "queued": 2,
    "running": 7,
    "uploading": 8,
    "completed": 9,
    "failed": 10,
    "cancelled": 11,
}
_FINAL = frozenset({"completed", "failed", "cancelled"})


@dataclass
class FakeTask:
    task_id: str
    status: str = "received"
    body: dict[str, Any] = field(default_factory=dict)
    polls: int = 0
    error: str | None = None
    output: dict[str, Any] | None = None


@dataclass
class Upload:
    file_id: str
    content_type: str
    size: int
    data: bytes = b""
    put_headers: dict[str, str] = field(default_factory=dict)


class FakeInference(FakeProvider):
    name = "inference"

    def __init__(
        self,
        result: bytes,
        *,
        key: str = "inf-test-key",
        wrap: bool = True,
        codes: dict[str, int] | None = CURRENT_CODES,
        complete_after_polls: int | None = 2,
        send_webhooks: bool = True,
    ) -> None:
        """``codes``: the status numbers sent; ``None`` sends status names as strings."""
        super().__init__(result, key=key)
        self.wrap = wrap
        self.codes = codes
        self.complete_after_polls = complete_after_polls
        self.send_webhooks = send_webhooks
        self.tasks: dict[str, FakeTask] = {}
        self.uploads: dict[str, Upload] = {}
        self.webhooks_sent: list[tuple[int, dict[str, Any]]] = []
        self._ids = itertools.count(1)

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/apps/run", self._run)
        app.router.add_get("/tasks/{task_id}", self._task)
        app.router.add_post("/tasks/{task_id}/cancel", self._cancel)
        app.router.add_post("/files", self._files)
        app.router.add_put("/storage/{file_id}", self._put)
        app.router.add_get("/storage/{file_id}", self._stored)
        app.router.add_get("/results/{task_id}.mp4", self._serve_result)
        return app

    @property
    def runs(self) -> list[dict[str, Any]]:
        return [r.json() for r in self.requested("POST", "/apps/run")]

    def add_task(self, status: str = "received", **fields: Any) -> str:
        task = FakeTask(f"inf-{next(self._ids)}", status, **fields)
        self.tasks[task.task_id] = task
        return task.task_id

    async def finish(self, task_id: str, status: str = "completed", error: str = "") -> None:
        """End a task as the test decides, and send its webhook (awaited, so it has landed)."""
        task = self.tasks[task_id]
        self._end(task, status, error)
        await self._notify(task)

    # -- routes --------------------------------------------------------------------------------

    async def _admit(self, request: web.Request) -> web.Response | None:
        """Record the request; answer an auth or injected error, else ``None`` to go on."""
        await self._record(request)
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return web.json_response({"detail": "invalid api key"}, status=401)
        status = self._take_failure(request.path)
        if status is not None:
            return web.json_response({"detail": f"injected {status}"}, status=status)
        return None

    def _answer(self, data: Any) -> web.Response:
        return web.json_response({"success": True, "data": data} if self.wrap else data)

    def view(self, task: FakeTask) -> dict[str, Any]:
        status: int | str = task.status if self.codes is None else self.codes[task.status]
        return {
            "id": task.task_id,
            "status": status,
            "app": task.body.get("app"),
            "input": task.body.get("input"),
            "output": task.output,
            "error": task.error,
        }

    async def _run(self, request: web.Request) -> web.Response:
        refused = await self._admit(request)
        if refused is not None:
            return refused
        await self._hold_submit()
        body = self.requests[-1].json()
        if (
            not isinstance(body, dict)
            or not body.get("app")
            or not isinstance(body.get("input"), dict)
        ):
            return web.json_response({"detail": "app and input are required"}, status=400)
        task = FakeTask(f"inf-{next(self._ids)}", body=body)
        self.tasks[task.task_id] = task
        return self._answer(self.view(task))

    async def _task(self, request: web.Request) -> web.Response:
        refused = await self._admit(request)
        if refused is not None:
            return refused
        task = self.tasks.get(request.match_info["task_id"])
        if task is None:
            return web.json_response({"detail": "task not found"}, status=404)
        task.polls += 1
        if self.complete_after_polls is not None and task.status not in _FINAL:
            task.status = "running"
            if task.polls >= self.complete_after_polls:
                self._end(task, "completed", "")
                self._in_background(self._notify(task))
        return self._answer(self.view(task))

    async def _cancel(self, request: web.Request) -> web.Response:
        refused = await self._admit(request)
        if refused is not None:
            return refused
        task = self.tasks.get(request.match_info["task_id"])
        if task is None:
            return web.json_response({"detail": "task not found"}, status=404)
        if task.status in _FINAL:
            return web.json_response({"detail": "task already finished"}, status=400)
        self._end(task, "cancelled", "")
        return self._answer(self.view(task))

    async def _files(self, request: web.Request) -> web.Response:
        refused = await self._admit(request)
        if refused is not None:
            return refused
        created = []
        for entry in self.requests[-1].json()["files"]:
            upload = Upload(f"f{next(self._ids)}", entry["content_type"], int(entry["size"]))
            self.uploads[upload.file_id] = upload
            created.append(
                {
                    "id": upload.file_id,
                    "uri": f"{self.url}/storage/{upload.file_id}",
                    "upload_url": f"{self.url}/storage/{upload.file_id}?X-Amz-Signature=x",
                    "filename": entry.get("filename"),
                    "content_type": upload.content_type,
                    "size": upload.size,
                }
            )
        return self._answer(created)

    async def _put(self, request: web.Request) -> web.Response:
        upload = self.uploads.get(request.match_info["file_id"])
        if upload is None or "X-Amz-Signature" not in request.query:
            return web.Response(status=403, text="AccessDenied")
        upload.put_headers = dict(request.headers)
        upload.data = await request.read()
        return web.Response(status=200)

    async def _stored(self, request: web.Request) -> web.Response:
        upload = self.uploads.get(request.match_info["file_id"])
        if upload is None or not upload.data:
            return web.Response(status=404)
        return web.Response(body=upload.data, content_type=upload.content_type)

    # -- tasks ending ----------------------------------------------------------------------------

    def _end(self, task: FakeTask, status: str, error: str) -> None:
        task.status = status
        if status == "completed":
            task.output = {"video": {"uri": f"{self.url}/results/{task.task_id}.mp4"}}
        if status == "failed":
            task.error = error or "the app failed"

    async def _notify(self, task: FakeTask) -> None:
        url = task.body.get("webhook")
        if not self.send_webhooks or not url:
            return
        payload = {
            "event": f"task.{task.status}",
            "timestamp": int(time.time()),
            "data": self.view(task),
        }
        async with self._client.post(url, json=payload) as response:
            self.webhooks_sent.append((response.status, payload))
