"""A loopback DashScope (Alibaba Model Studio) that follows PROVIDERS.md.

It checks the Bearer key and the ``X-DashScope-Async`` header, records every request, fetches
the references from the URLs it is given (as DashScope does, so our signed ``/media`` links are
really exercised), and answers task look-ups as documented. A task runs once it has been looked
up and succeeds after ``complete_after_polls`` look-ups, unless the test sets its state itself.
Knobs: those of every fake (``tests.fakes.base``), where ``fail_next`` answers API calls.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeProvider

SUBMIT_PATH = "/api/v1/services/aigc/video-generation/video-synthesis"


@dataclass
class FakeTask:
    task_id: str
    status: str = "PENDING"
    body: dict[str, Any] = field(default_factory=dict)
    polls: int = 0
    code: str | None = None
    message: str | None = None


class FakeDashScope(FakeProvider):
    name = "dashscope"

    def __init__(
        self,
        result: bytes,
        *,
        key: str = "sk-test-dashscope",
        complete_after_polls: int | None = 2,
        output_seconds: float = 1.0,
    ) -> None:
        super().__init__(result, key=key, complete_after_polls=complete_after_polls)
        self.output_seconds = output_seconds
        self.tasks: dict[str, FakeTask] = {}
        self.cancelled: list[str] = []
        self._ids = itertools.count(1)

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(SUBMIT_PATH, self._submit)
        app.router.add_get("/api/v1/tasks/{task_id}", self._task)
        app.router.add_post("/api/v1/tasks/{task_id}/cancel", self._cancel)
        app.router.add_get("/results/{task_id}.mp4", self._serve_result)
        return app

    @property
    def submits(self) -> list[dict[str, Any]]:
        return [r.json() for r in self.requested("POST", SUBMIT_PATH)]

    def add_task(self, status: str = "PENDING", **fields: Any) -> str:
        task = FakeTask(f"ds-task-{next(self._ids)}", status, **fields)
        self.tasks[task.task_id] = task
        return task.task_id

    def set_state(self, task_id: str, status: str, **fields: Any) -> None:
        task = self.tasks[task_id]
        task.status = status
        for name, value in fields.items():
            setattr(task, name, value)

    # -- routes --------------------------------------------------------------------------------

    async def _admit(self, request: web.Request) -> web.Response | None:
        """Record the request; answer an auth or injected error, else ``None`` to go on."""
        await self._record(request)
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return _error(401, "InvalidApiKey", "Invalid API-key provided.")
        status = self._take_failure(request.path)
        if status is not None:
            return _error(status, "Throttling" if status == 429 else "InternalError", "injected")
        return None

    async def _submit(self, request: web.Request) -> web.Response:
        refused = await self._admit(request)
        if refused is not None:
            return refused
        if request.headers.get("X-DashScope-Async") != "enable":
            return _error(
                403, "AccessDenied", "current user api does not support synchronous calls"
            )
        await self._hold_submit()
        body = self.requests[-1].json()
        inputs = body.get("input") if isinstance(body, dict) else None
        if not isinstance(inputs, dict):
            inputs = {}
        media = inputs.get("media")
        if not media or not body.get("model") or not inputs.get("prompt"):
            return _error(
                400, "InvalidParameter", "model, input.prompt and input.media are required"
            )
        task = FakeTask(f"ds-task-{next(self._ids)}", body=body)
        self.tasks[task.task_id] = task
        for item in media:
            for url in (item.get("url"), item.get("reference_voice")):
                if url and not await self._fetch(url):
                    task.status, task.code = "FAILED", "InvalidParameter.DataDownload"
                    task.message = f"Failed to download the media: {url}"
        return web.json_response(
            {
                "request_id": f"req-{task.task_id}",
                "output": {"task_id": task.task_id, "task_status": task.status},
            }
        )

    async def _task(self, request: web.Request) -> web.Response:
        refused = await self._admit(request)
        if refused is not None:
            return refused
        task_id = request.match_info["task_id"]
        task = self.tasks.get(task_id)
        if task is None:
            return web.json_response(
                {
                    "request_id": "req-unknown",
                    "output": {"task_id": task_id, "task_status": "UNKNOWN"},
                }
            )
        task.polls += 1
        if self.complete_after_polls is not None:
            if task.status == "PENDING":
                task.status = "RUNNING"
            if task.status == "RUNNING" and task.polls >= self.complete_after_polls:
                task.status = "SUCCEEDED"
        output: dict[str, Any] = {"task_id": task_id, "task_status": task.status}
        answer: dict[str, Any] = {"request_id": f"req-{task_id}-{task.polls}", "output": output}
        if task.status == "SUCCEEDED":
            output["video_url"] = f"{self.url}/results/{task_id}.mp4?Expires=86400&Signature=x"
            answer["usage"] = self._usage(task)
        if task.status == "FAILED":
            output["code"] = task.code or "InternalError"
            output["message"] = task.message or "The task failed."
        return web.json_response(answer)

    def _usage(self, task: FakeTask) -> dict[str, Any]:
        media = task.body.get("input", {}).get("media", [])
        videos = sum(1 for item in media if item.get("type") == "reference_video")
        inputs = 1.5 * videos
        return {
            "input_video_duration": inputs,
            "output_video_duration": self.output_seconds,
            "duration": inputs + self.output_seconds,
            "video_count": 1,
            "SR": 720,
        }

    async def _cancel(self, request: web.Request) -> web.Response:
        refused = await self._admit(request)
        if refused is not None:
            return refused
        task = self.tasks.get(request.match_info["task_id"])
        if task is None or task.status != "PENDING":
            return _error(400, "UnsupportedOperation", "Only PENDING tasks can be canceled.")
        task.status = "CANCELED"
        self.cancelled.append(task.task_id)
        return web.json_response({"request_id": f"req-cancel-{task.task_id}"})


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"request_id": "req-error", "code": code, "message": message}, status=status
    )
