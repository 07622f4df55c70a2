"""A scripted provider and a recording chat: fakes of the outside world for engine tests.

``ScriptedProvider`` plays a hosted provider whose answers the test controls step by step;
``RecordingChat`` is a chat platform that remembers every post. The engine under test is real.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bot.errors import ProviderError, WebhookRejected
from bot.models import Job, JobState
from bot.ports import (
    Capabilities,
    KeyCheck,
    PostedStatus,
    PriceTable,
    ProviderRequest,
    TaskState,
    TaskStatus,
)

SIGNATURE_HEADER = "x-test-signature"
GOOD_SIGNATURE = "good"


class ScriptedProvider:
    def __init__(self, result: Path, *, webhooks: bool = True) -> None:
        self.capabilities = Capabilities(
            name="scripted",
            webhooks=webhooks,
            prices=PriceTable(per_second={"720p": 0.1, "1080p": 0.16}),
        )
        self.result = result
        self.submitted: list[ProviderRequest] = []
        self.states: dict[str, TaskStatus] = {}
        self.status_calls = 0
        self.cancelled: list[str] = []
        self.submit_error: ProviderError | None = None
        self.download_chunks = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def check_key(self) -> KeyCheck:
        return KeyCheck(True, "scripted")

    async def submit(self, request: ProviderRequest) -> str:
        if self.submit_error is not None:
            raise self.submit_error
        self.submitted.append(request)
        task_id = f"task-{len(self.submitted)}"
        self.states[task_id] = TaskStatus(TaskState.PENDING)
        return task_id

    def set(self, task_id: str, state: TaskState, **fields: object) -> None:
        self.states[task_id] = TaskStatus(
            state,
            result_url=str(self.result) if state is TaskState.SUCCEEDED else None,
            **fields,  # type: ignore[arg-type]
        )

    async def status(self, task_id: str) -> TaskStatus:
        self.status_calls += 1
        return self.states[task_id]

    async def cancel(self, task_id: str) -> bool:
        self.cancelled.append(task_id)
        self.states[task_id] = TaskStatus(TaskState.CANCELLED)
        return True

    async def check_webhook(self, headers: Mapping[str, str], body: bytes) -> None:
        if headers.get(SIGNATURE_HEADER) != GOOD_SIGNATURE:
            raise WebhookRejected("bad signature")

    async def download(self, status: TaskStatus) -> AsyncIterator[bytes]:
        assert status.result_url is not None
        data = await asyncio.to_thread(Path(status.result_url).read_bytes)
        for start in range(0, len(data), 64 * 1024):
            self.download_chunks += 1
            yield data[start : start + 64 * 1024]


@dataclass
class Post:
    kind: str
    job: str
    state: JobState
    text: str
    path: Path | None = None


@dataclass
class RecordingChat:
    platform: str = "console"
    posts: list[Post] = field(default_factory=list)
    delivered: list[Path] = field(default_factory=list)

    async def post_status(self, job: Job, text: str) -> PostedStatus:
        self.posts.append(Post("status", job.id, job.state, text))
        return PostedStatus(message_id=f"m-{job.id}")

    async def edit_status(self, job: Job, text: str) -> None:
        self.posts.append(Post("status", job.id, job.state, text))

    async def deliver_video(self, job: Job, video: Path, text: str) -> None:
        self.posts.append(Post("video", job.id, job.state, text, video))
        self.delivered.append(video)

    async def find_delivery(self, job: Job) -> bool:
        return any(post.kind == "video" and post.job == job.id for post in self.posts)

    def states(self, job_id: str) -> list[JobState]:
        seen: list[JobState] = []
        for post in self.posts:
            if (
                post.job == job_id
                and post.kind == "status"
                and (not seen or seen[-1] != post.state)
            ):
                seen.append(post.state)
        return seen

    def videos(self, job_id: str) -> list[Post]:
        return [p for p in self.posts if p.job == job_id and p.kind == "video"]
