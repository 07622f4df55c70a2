"""The storyboard provider: free, offline, and shaped like a hosted one.

It renders a captioned slideshow of the references (``render.py``) instead of calling a model, but
it keeps a hosted provider's habits so the whole job loop can be tried and tested without keys:
it refuses what Wan 2.7 R2V refuses, answers a task id at once and works in the background, keeps
its tasks on disk so they survive a restart, reports progress, sends a signed webhook when a task
ends, and serves the result for download.

A task file (``workdir/tasks/<task_id>.json``) is the task's truth. It is written before the
render starts and before every webhook, so a crash at any point leaves a task that is either
finished on disk or resumed the next time the provider starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from urllib.request import url2pathname

import httpx

from adapters import webhooks
from adapters.local_files import finished_file
from adapters.providers.render import RenderCancelled, RenderSpec, render_storyboard
from bot.errors import ProviderError, R2VError
from bot.models import MediaKind
from bot.ports import (
    FREE,
    Capabilities,
    KeyCheck,
    LabelStyle,
    ProviderRequest,
    StagedReference,
    TaskState,
    TaskStatus,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")

DOWNLOAD_CHUNK = 64 * 1024
#: Seconds between webhook attempts; after the last one, the job's polling finds the result.
WEBHOOK_BACKOFF = (0.5, 2.0, 8.0)
WEBHOOK_TIMEOUT = 10.0
MAX_SEED = 2_147_483_647

_TASK_ID = re.compile(r"sb_[0-9a-f]{16}")
_UNFINISHED = frozenset({TaskState.PENDING, TaskState.RUNNING})


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """What a task file holds: the request it was made from and where it stands."""

    task_id: str
    state: TaskState
    request: ProviderRequest
    created_at: float
    updated_at: float
    result: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "state": self.state.value,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "result": self.result,
            "error": self.error,
            "request": _request_to_json(self.request),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskRecord:
        return cls(
            task_id=str(data["task_id"]),
            state=TaskState(data["state"]),
            request=_request_from_json(data["request"]),
            created_at=float(data["created_at"]),
            updated_at=float(data["updated_at"]),
            result=data.get("result"),
            error=data.get("error"),
        )


def _request_to_json(request: ProviderRequest) -> dict[str, Any]:
    return {
        "job_id": request.job_id,
        "prompt": request.prompt,
        "references": [
            {
                "label": ref.label,
                "kind": ref.kind.value,
                "path": str(ref.path),
                "mime": ref.mime,
                "voice_path": None if ref.voice_path is None else str(ref.voice_path),
                "voice_mime": ref.voice_mime,
            }
            for ref in request.references
        ],
        "duration": request.duration,
        "resolution": request.resolution,
        "aspect_ratio": request.aspect_ratio,
        "seed": request.seed,
        "negative_prompt": request.negative_prompt,
        "webhook_url": request.webhook_url,
    }


def _request_from_json(data: Mapping[str, Any]) -> ProviderRequest:
    return ProviderRequest(
        job_id=str(data["job_id"]),
        prompt=str(data["prompt"]),
        references=tuple(
            StagedReference(
                label=str(ref["label"]),
                kind=MediaKind(ref["kind"]),
                path=Path(ref["path"]),
                mime=str(ref["mime"]),
                voice_path=None if ref.get("voice_path") is None else Path(ref["voice_path"]),
                voice_mime=ref.get("voice_mime"),
            )
            for ref in data["references"]
        ),
        duration=int(data["duration"]),
        resolution=str(data["resolution"]),
        aspect_ratio=str(data["aspect_ratio"]),
        seed=None if data.get("seed") is None else int(data["seed"]),
        negative_prompt=str(data.get("negative_prompt", "")),
        webhook_url=data.get("webhook_url"),
    )


@dataclass(eq=False)
class _Render:
    """A render going on in this process: how to stop it and how far it has got."""

    task_id: str
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    progress: float = 0.0
    task: asyncio.Task[None] | None = None

    def report(self, fraction: float) -> None:
        """Called from the render thread; a float assignment needs no lock."""
        self.progress = fraction


class StoryboardProvider:
    """An offline ``bot.ports.Provider`` that renders storyboards in background threads."""

    def __init__(
        self,
        workdir: Path,
        *,
        webhook_secret: str,
        client: httpx.AsyncClient,
        label_style: LabelStyle | None = None,
        render_delay: float = 0.0,
        max_parallel: int = 2,
    ) -> None:
        # Signing once here turns a malformed secret into a ConfigurationError at start-up
        # rather than a failure at the first finished task.
        webhooks.sign(webhook_secret, "msg_check", 0, b"")
        workdir = workdir.resolve()  # results are handed out as file URIs, which must be absolute
        self._tasks_dir = workdir / "tasks"
        self._results_dir = workdir / "results"
        self._secret = webhook_secret
        self._client = client
        self._render_delay = render_delay
        self._slots = asyncio.Semaphore(max(1, max_parallel))
        self._renders: dict[str, _Render] = {}
        self._closed = False
        self._capabilities = Capabilities(
            name="storyboard",
            max_references=5,
            image_durations=(2, 15),
            video_durations=(2, 10),
            voice=True,
            label_style=label_style or LabelStyle.SEPARATE,
            webhooks=True,
            prices=FREE,
            # It renders frames of at most 1920 px; references fitted to that first keep an
            # 8000×8000 image from being decoded full size five times (issue 14.11).
            max_image_side=1920,
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def check_key(self) -> KeyCheck:
        """The storyboard needs no key; it renders on this machine."""
        return KeyCheck(True, "offline, needs no key", webhooks=True)

    async def start(self) -> None:
        """Resume every task a previous run left pending or running, as a hosted provider would."""
        records = await asyncio.to_thread(self._scan)
        for record in records:
            self._resume(record)
        if records:
            log.info("Storyboard resumed %d unfinished task(s)", len(records))

    async def close(self) -> None:
        """Stop the renders between two frames. Their tasks stay unfinished and resume later."""
        self._closed = True
        tasks = [render.task for render in self._renders.values() if render.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def submit(self, request: ProviderRequest) -> str:
        """Check the request, write its task file, start rendering, and answer the task id.

        The render goes on in the background, as at a hosted provider: the answer comes before it
        has begun, and the caller learns the rest from ``status`` or the webhook.
        """
        if self._closed:
            raise ProviderError(
                "The storyboard provider is shutting down; try again in a moment.",
                code="provider_unavailable",
                retryable=True,
            )
        self._check(request)
        await asyncio.to_thread(_check_files, request)
        task_id = "sb_" + secrets.token_hex(8)
        now = time.time()
        record = TaskRecord(task_id, TaskState.PENDING, request, now, now)
        # Registered before the file exists so a status() call meanwhile does not resume it.
        render = self._register(task_id)
        try:
            await asyncio.to_thread(self._write, record)
        except BaseException:
            del self._renders[task_id]
            raise
        self._launch(render, request)
        return task_id

    async def status(self, task_id: str) -> TaskStatus:
        """Where the task stands; asking about an orphaned unfinished task sets it going again."""
        record = await self._load(task_id)
        if record.state in _UNFINISHED:
            self._resume(record)
        render = self._renders.get(task_id)
        if record.state is TaskState.RUNNING:
            progress = render.progress if render is not None else 0.0
            return TaskStatus(TaskState.RUNNING, progress=progress)
        if record.state is TaskState.SUCCEEDED and record.result is not None:
            return TaskStatus(
                TaskState.SUCCEEDED, progress=1.0, result_url=Path(record.result).as_uri()
            )
        return TaskStatus(record.state, error=record.error)

    async def cancel(self, task_id: str) -> bool:
        """Stop the task between two frames; ``False`` when it had already ended."""
        record = await self._load(task_id)
        if record.state not in _UNFINISHED:
            return False
        render = self._renders.get(task_id)
        if render is not None and render.task is not None:
            render.task.cancel()
            await asyncio.wait([render.task])
            record = await self._load(task_id)
            if record.state not in _UNFINISHED:
                return False
        await asyncio.to_thread(self._write, _moved(record, TaskState.CANCELLED))
        await asyncio.to_thread(self._result_path(task_id).unlink, missing_ok=True)
        return True

    async def check_webhook(self, headers: Mapping[str, str], body: bytes) -> None:
        """Accept only webhooks this provider signed (Standard Webhooks, 5 minutes either way)."""
        webhooks.verify(self._secret, headers, body)

    async def download(self, status: TaskStatus) -> AsyncIterator[bytes]:
        """Stream the finished MP4 in 64 KiB chunks, each read in a thread."""
        path = await asyncio.to_thread(self._result_of, status)
        file = await asyncio.to_thread(path.open, "rb")
        try:
            while chunk := await asyncio.to_thread(file.read, DOWNLOAD_CHUNK):
                yield chunk
        finally:
            file.close()

    # Checks -----------------------------------------------------------------------------------

    def _check(self, request: ProviderRequest) -> None:
        """Refuse, with the reason and what is accepted, what Wan 2.7 R2V would refuse."""
        caps = self._capabilities
        count = len(request.references)
        if not 1 <= count <= caps.max_references:
            raise _refused(
                f"{count} references were given; the storyboard takes 1 to "
                f"{caps.max_references} images or videos."
            )
        for ref in request.references:
            if not ref.kind.is_visual:
                raise _refused(
                    f"Reference “{ref.label}” is a {ref.kind}; references must be images or "
                    "videos (a voice clip rides with one of them)."
                )
        has_video = any(ref.kind is MediaKind.VIDEO for ref in request.references)
        low, high = caps.durations_for(has_video)
        if not low <= request.duration <= high:
            images_low, images_high = caps.image_durations
            videos_low, videos_high = caps.video_durations
            raise _refused(
                f"A {request.duration} s clip cannot be made"
                + (" with a reference video" if has_video else "")
                + f": the storyboard makes {videos_low}–{videos_high} s with reference videos, "
                f"{images_low}–{images_high} s with images only."
            )
        if request.resolution not in caps.resolutions:
            raise _refused(
                f"Resolution “{request.resolution}” is not offered: use "
                f"{' or '.join(caps.resolutions)}."
            )
        if request.aspect_ratio not in caps.aspect_ratios:
            raise _refused(
                f"Aspect ratio “{request.aspect_ratio}” is not offered: use "
                f"{', '.join(caps.aspect_ratios)}."
            )
        if not request.prompt.strip():
            raise _refused("The prompt is empty: describe the scene to make.")
        if len(request.prompt) > caps.max_prompt_chars:
            raise _refused(
                f"The prompt has {len(request.prompt)} characters; at most "
                f"{caps.max_prompt_chars} are accepted."
            )
        if len(request.negative_prompt) > caps.max_negative_chars:
            raise _refused(
                f"The negative prompt has {len(request.negative_prompt)} characters; at most "
                f"{caps.max_negative_chars} are accepted."
            )
        if request.seed is not None and not 0 <= request.seed <= MAX_SEED:
            raise _refused(f"Seed {request.seed} is out of range: use 0 to {MAX_SEED}.")

    # Rendering --------------------------------------------------------------------------------

    def _register(self, task_id: str) -> _Render:
        render = _Render(task_id)
        self._renders[task_id] = render
        return render

    def _launch(self, render: _Render, request: ProviderRequest) -> None:
        task = asyncio.create_task(self._work(render, request), name=f"storyboard {render.task_id}")
        render.task = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._renders.get(render.task_id) is render:
                del self._renders[render.task_id]
            if not done.cancelled() and (error := done.exception()) is not None:
                log.error("Storyboard task %s broke off", render.task_id, exc_info=error)

        task.add_done_callback(forget)

    def _resume(self, record: TaskRecord) -> None:
        """Start rendering an unfinished task that nothing in this process is rendering."""
        if self._closed or record.task_id in self._renders:
            return
        log.info("Storyboard task %s was left %s; rendering it again", record.task_id, record.state)
        self._launch(self._register(record.task_id), record.request)

    async def _work(self, render: _Render, request: ProviderRequest) -> None:
        task_id = render.task_id
        out = self._result_path(task_id)
        async with self._slots:
            record = await _to_the_end(self._load(task_id))
            await _to_the_end(asyncio.to_thread(self._write, _moved(record, TaskState.RUNNING)))
            if self._render_delay > 0:
                await asyncio.sleep(self._render_delay)
            try:
                await self._render(render, request, out)
            except RenderCancelled:
                return  # Only cancel() stops a render, and it records the state itself.
            except R2VError as exc:
                failure: str | None = exc.message
            except Exception as exc:
                log.exception("Storyboard task %s failed", task_id)
                failure = f"The storyboard could not be rendered ({type(exc).__name__})."
            else:
                failure = None
        if failure is None:
            done = _moved(record, TaskState.SUCCEEDED, result=str(out))
        else:
            done = _moved(record, TaskState.FAILED, error=failure)
        await _to_the_end(asyncio.to_thread(self._write, done))
        if request.webhook_url:
            await self._notify(task_id, done.state, request.webhook_url)

    async def _render(self, render: _Render, request: ProviderRequest, out: Path) -> None:
        """Render in a thread; if cancelled, stop it between two frames and wait until it has."""
        spec = RenderSpec(
            references=tuple((ref.label, ref.kind, ref.path) for ref in request.references),
            caption=request.prompt,
            duration=request.duration,
            resolution=request.resolution,
            aspect_ratio=request.aspect_ratio,
            voices=tuple(ref.voice_path for ref in request.references if ref.voice_path),
            seed=request.seed if request.seed is not None else int(render.task_id[3:], 16),
        )
        await _to_the_end(
            asyncio.to_thread(
                render_storyboard,
                spec,
                out,
                should_stop=render.stop.is_set,
                on_progress=render.report,
            ),
            on_cancel=render.stop.set,
        )

    async def _notify(self, task_id: str, state: TaskState, url: str) -> None:
        """POST the signed end-of-task webhook, retrying a few times; polling covers the rest."""
        kind = "video.completed" if state is TaskState.SUCCEEDED else "video.failed"
        body = json.dumps(
            {"type": kind, "data": {"task_id": task_id, "status": state.value}}
        ).encode()
        await webhooks.send_signed(
            self._client,
            url,
            body,
            self._secret,
            backoff=WEBHOOK_BACKOFF,
            attempt_timeout=WEBHOOK_TIMEOUT,
            what=f"Storyboard webhook for {task_id}",
        )

    # Task files -------------------------------------------------------------------------------

    def _task_path(self, task_id: str) -> Path:
        return self._tasks_dir / f"{task_id}.json"

    def _result_path(self, task_id: str) -> Path:
        return self._results_dir / f"{task_id}.mp4"

    async def _load(self, task_id: str) -> TaskRecord:
        if not _TASK_ID.fullmatch(task_id):
            raise _unknown(task_id)
        return await asyncio.to_thread(self._read, task_id)

    def _read(self, task_id: str) -> TaskRecord:
        try:
            text = self._task_path(task_id).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise _unknown(task_id) from None
        try:
            return TaskRecord.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError(
                f"The storyboard's file for task {task_id} is damaged ({exc}); submit again.",
                code="provider_error",
            ) from exc

    def _write(self, record: TaskRecord) -> None:
        """Replace the task file whole, so a reader never sees half of one."""
        with finished_file(self._task_path(record.task_id)) as partial:
            partial.write_text(json.dumps(record.to_json(), indent=2), encoding="utf-8")

    def _scan(self) -> list[TaskRecord]:
        unfinished = []
        for path in sorted(self._tasks_dir.glob("sb_*.json")):
            try:
                record = self._read(path.stem)
            except R2VError as exc:
                log.warning("Storyboard skips %s: %s", path.name, exc.message)
                continue
            if record.state in _UNFINISHED:
                unfinished.append(record)
        return unfinished

    def _result_of(self, status: TaskStatus) -> Path:
        """The MP4 a succeeded status points at, which must be one of our own results."""
        if status.state is not TaskState.SUCCEEDED or not status.result_url:
            raise ProviderError(
                f"There is nothing to download: the task is {status.state}.", code="no_result"
            )
        parts = urlsplit(status.result_url)
        path = Path(url2pathname(parts.path)).resolve()
        if parts.scheme != "file" or path.parent != self._results_dir.resolve():
            raise ProviderError(
                "The storyboard only serves its own results (file URLs under its workdir).",
                code="no_result",
            )
        if not path.is_file():
            raise ProviderError(
                "The storyboard's result file is gone; submit the request again.",
                code="no_result",
            )
        return path


async def _to_the_end(step: Awaitable[_T], *, on_cancel: Callable[[], object] | None = None) -> _T:
    """Await ``step`` to its end even if we are cancelled meanwhile, then pass the cancel on.

    A step running in a thread cannot be interrupted; leaving it behind would let it write a
    task file or a result after the canceller believed everything had stopped. ``on_cancel``
    asks it to finish early.
    """
    future = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if on_cancel is not None:
            on_cancel()
        await asyncio.wait([future])
        if not future.cancelled():
            future.exception()  # retrieved, so asyncio does not log it as never retrieved
        raise


def _check_files(request: ProviderRequest) -> None:
    for ref in request.references:
        for path, what in ((ref.path, "file"), (ref.voice_path, "voice clip")):
            if path is not None and not path.is_file():
                raise _refused(
                    f"The {what} of “{ref.label}” ({path.name}) is missing; attach it again."
                )


def _moved(record: TaskRecord, state: TaskState, **changes: Any) -> TaskRecord:
    return dataclasses.replace(record, state=state, updated_at=time.time(), **changes)


def _refused(message: str) -> ProviderError:
    return ProviderError(message, code="provider_refused", retryable=False)


def _unknown(task_id: str) -> ProviderError:
    return ProviderError(
        f"The storyboard has no task “{task_id[:40]}”.", code="unknown_task", retryable=False
    )
