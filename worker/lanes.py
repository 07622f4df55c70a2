"""One lane per GPU: each runs one task at a time, and all take tasks in the order they came.

A lane loads its own copy of the model onto its device (lanes load one after another, so a
machine with eight GPUs never holds eight copies in CPU memory at once, and the first GPU starts
working as soon as it is ready), then takes the oldest waiting task, runs it in a thread, and
takes the next. Progress comes from the pipeline's step callback; a cancelled task stops after
its current step. Whatever a task raises ends that task as failed and the lane goes on to the
next: one bad request never takes the worker down.

The lanes know nothing about HTTP or records: ``LaneHooks`` (the worker service) says what to run
and hears how it went.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bot.errors import R2VError
from bot.ports import TaskState
from worker.pipeline import Progress, RenderCancelled, RenderJob, ShouldStop

log = logging.getLogger(__name__)


class Backend(Protocol):
    """A model loaded on one device (``worker.pipeline.VacePipeline``)."""

    @property
    def description(self) -> str: ...

    def render(self, job: RenderJob, progress: Progress, should_stop: ShouldStop) -> None: ...


Loader = Callable[[str], Backend]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a task that ran ended: succeeded, failed (with the reason) or cancelled, and how
    far it had got (0–1) when it stopped."""

    state: TaskState
    progress: float
    error: str | None = None


class LaneHooks(Protocol):
    async def begin(self, task_id: str, device: str) -> RenderJob | None:
        """The job to run for a task a lane has taken, or ``None`` to skip it (it ended
        meanwhile). The task counts as running from here."""
        ...

    async def end(self, task_id: str, outcome: Outcome) -> None: ...

    async def lanes_down(self, error: str) -> None:
        """No lane is left that could ever run a task (every model load failed)."""
        ...


@dataclass(eq=False)
class Running:
    """The task on a lane: how far it has got, and the flag that stops it between two steps."""

    task_id: str
    stop: threading.Event = field(default_factory=threading.Event)
    progress: float = 0.0

    def report(self, fraction: float) -> None:
        """Called from the lane's thread; a float assignment needs no lock."""
        self.progress = fraction


class LaneState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(eq=False)
class Lane:
    device: str
    state: LaneState = LaneState.LOADING
    description: str = ""
    error: str | None = None
    running: Running | None = None


class _Waiting:
    """Task ids waiting for a lane, oldest first; any lane takes the oldest."""

    def __init__(self) -> None:
        self._ids: deque[str] = deque()
        self._changed = asyncio.Event()

    def put(self, task_id: str) -> None:
        self._ids.append(task_id)
        self._changed.set()

    async def take(self) -> str:
        while not self._ids:
            self._changed.clear()
            await self._changed.wait()
        return self._ids.popleft()

    def remove(self, task_id: str) -> bool:
        try:
            self._ids.remove(task_id)
        except ValueError:
            return False
        return True

    def position(self, task_id: str) -> int | None:
        try:
            return self._ids.index(task_id) + 1
        except ValueError:
            return None

    def drain(self) -> list[str]:
        ids = list(self._ids)
        self._ids.clear()
        return ids

    def __len__(self) -> int:
        return len(self._ids)


class Lanes:
    """The lanes of this worker, one per device, and the queue they share."""

    def __init__(self, devices: Sequence[str], loader: Loader, hooks: LaneHooks) -> None:
        self.lanes = tuple(Lane(device) for device in devices)
        self._loader = loader
        self._hooks = hooks
        self._waiting = _Waiting()
        self._loading = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._serve(lane), name=f"lane {lane.device}")
            for lane in self.lanes
        ]

    async def close(self) -> None:
        """Stop every lane; a running task stops after its current step and stays unfinished
        (it is queued again at the next start)."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)

    def enqueue(self, task_id: str) -> None:
        self._waiting.put(task_id)

    def position(self, task_id: str) -> int | None:
        """Where a waiting task stands: 1 is the next to start; ``None`` when not waiting."""
        return self._waiting.position(task_id)

    def running(self, task_id: str) -> Running | None:
        return next(
            (
                lane.running
                for lane in self.lanes
                if lane.running is not None and lane.running.task_id == task_id
            ),
            None,
        )

    def cancel(self, task_id: str) -> None:
        """Take a task out of the queue, or ask its lane to stop it after the current step."""
        if self._waiting.remove(task_id):
            return
        running = self.running(task_id)
        if running is not None:
            running.stop.set()

    def drain(self) -> list[str]:
        """Empty the queue and answer what was in it."""
        return self._waiting.drain()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> int:
        return sum(lane.running is not None for lane in self.lanes)

    @property
    def down(self) -> bool:
        """Whether every lane failed to load, so no task can ever run."""
        return all(lane.state is LaneState.FAILED for lane in self.lanes)

    async def _serve(self, lane: Lane) -> None:
        try:
            async with self._loading:
                backend = await asyncio.to_thread(self._loader, lane.device)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            lane.state = LaneState.FAILED
            lane.error = (
                exc.message if isinstance(exc, R2VError) else f"{type(exc).__name__}: {exc}"
            )
            log.error("The model could not be loaded on %s: %s", lane.device, lane.error)
            if self.down:
                await self._hooks.lanes_down(lane.error)
            return
        lane.description = backend.description
        lane.state = LaneState.READY
        log.info("Lane %s (%s) is ready", lane.device, lane.description)
        while True:
            task_id = await self._waiting.take()
            running = Running(task_id)
            lane.running = running
            try:
                job = await self._hooks.begin(task_id, lane.device)
                if job is not None:
                    await self._hooks.end(task_id, await self._run(backend, job, running))
            except Exception:
                # Bookkeeping failed (a full disk, say): the task stays unfinished and is
                # run again at the next start; this lane goes on with the next one.
                log.exception("Lane %s could not see task %s through", lane.device, task_id)
            finally:
                lane.running = None

    async def _run(self, backend: Backend, job: RenderJob, running: Running) -> Outcome:
        """Run the job in a thread. If the lane is stopped meanwhile, stop the job after its
        current step and wait for the thread before going (a thread cannot be killed)."""
        work = asyncio.ensure_future(
            asyncio.to_thread(backend.render, job, running.report, running.stop.is_set)
        )
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            running.stop.set()
            await asyncio.wait([work])
            with contextlib.suppress(BaseException):
                work.result()
            raise
        except RenderCancelled:
            return Outcome(TaskState.CANCELLED, running.progress)
        except R2VError as exc:
            log.warning("Task %s failed: %s", running.task_id, exc.message)
            return Outcome(TaskState.FAILED, running.progress, exc.message)
        except Exception as exc:
            log.exception("Task %s failed", running.task_id)
            detail = f"{type(exc).__name__}: {exc}"
            return Outcome(
                TaskState.FAILED,
                running.progress,
                f"The worker failed while making the clip ({detail[:300]}).",
            )
        return Outcome(TaskState.SUCCEEDED, 1.0)
