"""The worker service: tasks accepted, queued on the lanes, reported on, and announced by webhook.

The HTTP routes (``worker.server``) call these methods and nothing else. A task is checked
(format, references) and written to disk before it is queued and before the answer goes back; a
webhook is sent only after the task's end is on disk, so a receiver that looks the task up finds
it finished. Webhooks are signed with Standard Webhooks under the key ``webhook_secret`` derives
from the shared token, and retried a few times; the bot polls as well, so a lost one only delays.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from adapters import webhooks
from bot import __version__
from bot.errors import R2VError
from bot.ports import TaskState
from worker.formats import Formats
from worker.lanes import Backend, Lanes, LaneState, Outcome
from worker.pipeline import RenderJob, load_pipeline, resolve_devices
from worker.protocol import MAX_SEED, TaskRequest, result_path, webhook_secret
from worker.references import prepare_reference
from worker.settings import WorkerSettings
from worker.tasks import TaskRecord, TaskStore, new_task_id, reference_path

log = logging.getLogger(__name__)

#: Seconds between webhook attempts; after the last one, the bot's polling finds the result.
WEBHOOK_BACKOFF = (1.0, 4.0, 15.0)
WEBHOOK_TIMEOUT = 10.0
CLEANUP_EVERY = 600.0


class Unavailable(R2VError):
    """The worker cannot take a task now: its model failed to load, its queue is full, or it
    is starting or shutting down."""

    code = "unavailable"


class UnknownTask(R2VError):
    code = "unknown_task"


class NotReady(R2VError):
    code = "not_ready"


class Worker:
    """The GPU worker: its task store, its lanes (one per device) and its webhooks."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.formats = Formats.from_settings(settings)
        self.store = TaskStore(settings.data_dir)
        self._secret = webhook_secret(settings.token_value)
        self._client = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT)
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False
        self._down: str | None = None
        self.lanes: Lanes | None = None

    def _load_pipeline(self, device: str) -> Backend:
        return load_pipeline(self.settings, device)

    async def start(self) -> None:
        """Read the stored tasks, queue the unfinished ones again, and start the lanes (which
        load the model in the background: the worker answers while it loads)."""
        devices = await asyncio.to_thread(resolve_devices, self.settings)
        unfinished = await asyncio.to_thread(self.store.load)
        self.lanes = Lanes(devices, self._load_pipeline, self)
        for record in unfinished:
            if record.state is TaskState.RUNNING:
                await self.store.save(record.moved(TaskState.PENDING, started_at=None))
            self.lanes.enqueue(record.id)
        if unfinished:
            log.info("Queued %d task(s) left unfinished by the last run", len(unfinished))
        await self._clean_up()
        self.lanes.start()
        self._spawn(self._clean_up_regularly())

    async def close(self) -> None:
        self._closing = True
        if self.lanes is not None:
            await self.lanes.close()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(self._background)
        await self._client.aclose()

    # Tasks ---------------------------------------------------------------------------------

    def new_upload(self) -> Path:
        """A folder for an arriving upload's files (blocking: call it in a thread)."""
        return self.store.new_upload()

    def check_reference_count(self, count: int) -> None:
        self.formats.check_reference_count(count)

    async def submit(self, request: TaskRequest, files: Sequence[Path], upload: Path) -> TaskRecord:
        """Check a task, prepare its references, record it and queue it.

        ``files`` are the uploaded references, in order, inside the folder ``upload``, which
        becomes the task's folder. Raises ``Refusal`` (the request or a file is not accepted)
        or ``Unavailable``.
        """
        lanes = self._lanes()
        if self._down is not None:
            raise Unavailable(
                f"The worker cannot make videos: its model failed to load ({self._down})."
            )
        if lanes.waiting >= self.settings.max_queue:
            raise Unavailable(
                f"The worker's queue is full ({self.settings.max_queue} tasks wait); "
                "try again later."
            )
        clip = self.formats.check(request, len(files))
        await asyncio.to_thread(_prepare_all, files, upload, (clip.width, clip.height))
        record = TaskRecord(
            id=new_task_id(),
            state=TaskState.PENDING,
            request=request,
            clip=clip,
            seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
            references=len(files),
            created_at=time.time(),
        )
        await self.store.adopt(upload, record)
        lanes.enqueue(record.id)
        log.info(
            "Task %s queued: %d×%d, %d frames", record.id, clip.width, clip.height, clip.frames
        )
        return record

    def get(self, task_id: str) -> TaskRecord:
        record = self.store.get(task_id)
        if record is None:
            raise UnknownTask(
                f"There is no task {task_id!r} here: it never existed, or it ended more than "
                f"{self.settings.keep_hours:g} hours ago and was removed."
            )
        return record

    def view(self, record: TaskRecord) -> dict[str, Any]:
        """A task as ``GET /v1/tasks/{id}`` shows it."""
        lanes = self._lanes()
        progress = record.progress
        if record.state is TaskState.RUNNING:
            running = lanes.running(record.id)
            progress = running.progress if running is not None else 0.0
        return {
            "id": record.id,
            "state": record.state.value,
            "progress": min(100, int(progress * 100)),
            "queue_position": lanes.position(record.id),
            "error": record.error,
            "created_at": record.created_at,
            "started_at": record.started_at,
            "finished_at": record.finished_at,
            "device": record.device,
            "width": record.clip.width,
            "height": record.clip.height,
            "frames": record.clip.frames,
            "seed": record.seed,
            "result_url": result_path(record.id) if record.state is TaskState.SUCCEEDED else None,
        }

    async def cancel(self, task_id: str) -> bool:
        """Cancel a waiting or running task (a running one stops after its current step);
        ``False`` when it had already ended."""
        record = self.get(task_id)
        if record.finished:
            return False
        await self.store.save(record.moved(TaskState.CANCELLED))
        self._lanes().cancel(task_id)
        log.info("Task %s cancelled", task_id)
        self._announce(task_id)
        return True

    def result(self, task_id: str) -> Path:
        record = self.get(task_id)
        if record.state is not TaskState.SUCCEEDED:
            raise NotReady(f"Task {task_id} has no video: it is {record.state.value}.")
        return self.store.result_path(task_id)

    def health(self) -> dict[str, Any]:
        lanes = self._lanes()
        ready = any(lane.state is LaneState.READY for lane in lanes.lanes)
        return {
            "ok": not lanes.down and not self._closing,
            "version": __version__,
            "model": self.settings.model,
            "model_loaded": ready,
            "devices": [
                {
                    "device": lane.device,
                    "description": lane.description,
                    "state": lane.state.value,
                    "error": lane.error,
                    "task": lane.running.task_id if lane.running is not None else None,
                }
                for lane in lanes.lanes
            ],
            "queue_length": lanes.waiting,
            "running": lanes.busy,
            "limits": self.formats.limits().to_json(),
        }

    # LaneHooks -----------------------------------------------------------------------------

    async def begin(self, task_id: str, device: str) -> RenderJob | None:
        record = self.store.get(task_id)
        if record is None or record.state is not TaskState.PENDING:
            return None
        record = record.moved(TaskState.RUNNING, started_at=time.time(), device=device)
        await self.store.save(record)
        request = record.request
        # The request's own words first, then the worker's default, which keeps away the
        # artefacts Wan is known for.
        negative = ", ".join(
            text
            for text in (request.negative_prompt.strip(), self.settings.negative_prompt)
            if text
        )
        return RenderJob(
            prompt=request.prompt,
            negative_prompt=negative,
            references=self.store.reference_paths(record),
            clip=record.clip,
            seed=record.seed,
            out=self.store.result_path(task_id),
        )

    async def end(self, task_id: str, outcome: Outcome) -> None:
        record = self.store.get(task_id)
        if record is None:
            return
        if record.state is not TaskState.RUNNING:
            # Cancelled while it ran: whatever it made is not wanted; where it stopped is kept.
            await asyncio.to_thread(self.store.result_path(task_id).unlink, True)
            await self.store.save(replace(record, progress=outcome.progress))
            return
        await self.store.save(
            record.moved(outcome.state, error=outcome.error, progress=outcome.progress)
        )
        log.info("Task %s %s", task_id, outcome.state.value)
        self._announce(task_id)

    async def lanes_down(self, error: str) -> None:
        """Every lane failed to load: fail what waits, and refuse what comes, saying why."""
        self._down = error
        for task_id in self._lanes().drain():
            record = self.store.get(task_id)
            if record is not None and not record.finished:
                reason = f"The worker could not load its model: {error}"
                await self.store.save(record.moved(TaskState.FAILED, error=reason))
                self._announce(task_id)

    # Webhooks and housekeeping ---------------------------------------------------------------

    def _announce(self, task_id: str) -> None:
        record = self.store.get(task_id)
        if record is not None and record.request.webhook_url:
            self._spawn(self._notify(record, record.request.webhook_url))

    async def _notify(self, record: TaskRecord, url: str) -> None:
        """POST the signed end-of-task webhook, retrying a few times."""
        body = json.dumps(
            {
                "type": f"task.{record.state.value}",
                "data": {"id": record.id, "state": record.state.value},
            }
        ).encode()
        await webhooks.send_signed(
            self._client,
            url,
            body,
            self._secret,
            backoff=WEBHOOK_BACKOFF,
            attempt_timeout=WEBHOOK_TIMEOUT,
            what=f"Webhook for {record.id}",
        )

    async def _clean_up(self) -> None:
        """Remove the tasks (and their videos) that ended over ``keep_hours`` ago."""
        cutoff = time.time() - self.settings.keep_hours * 3600
        for task_id in self.store.expired(cutoff):
            await self.store.remove(task_id)
            log.info("Removed task %s (ended over %g h ago)", task_id, self.settings.keep_hours)

    async def _clean_up_regularly(self) -> None:
        while True:
            await asyncio.sleep(CLEANUP_EVERY)
            await self._clean_up()

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work)
        self._background.add(task)

        def forget(done: asyncio.Task[None]) -> None:
            self._background.discard(done)
            if not done.cancelled() and (error := done.exception()) is not None:
                log.error("Background work failed", exc_info=error)

        task.add_done_callback(forget)

    def _lanes(self) -> Lanes:
        if self.lanes is None:
            raise Unavailable("The worker is starting; try again in a moment.")
        if self._closing:
            raise Unavailable("The worker is shutting down; try again in a moment.")
        return self.lanes


def _prepare_all(files: Sequence[Path], folder: Path, size: tuple[int, int]) -> None:
    """Turn each uploaded file into its reference picture, removing the upload as it goes."""
    for index, source in enumerate(files):
        try:
            prepare_reference(source, reference_path(folder, index), size, index + 1)
        finally:
            source.unlink(missing_ok=True)
