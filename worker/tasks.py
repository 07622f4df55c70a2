"""The worker's tasks, kept on disk so a restart loses none of them.

Each task has a folder under ``<data_dir>/tasks/<id>/``: ``task.json`` (the record), the prepared
reference pictures ``ref-1.png``… and, once made, ``result.mp4``. The record in memory is the
truth the HTTP routes read (no disk access on a status look-up); every change is written through
to ``task.json``, replaced whole, so a crash leaves either the old record or the new one. A task
that was pending or running when the worker stopped is queued again when it starts, with the
same seed, so it makes the clip it would have made.

Uploads arrive in ``<data_dir>/uploads/<random>/`` and the folder is renamed into place once the
task is accepted, so a refused or broken upload never looks like a task.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from adapters.local_files import finished_file
from bot.errors import R2VError
from bot.ports import TaskState
from worker.formats import ClipFormat
from worker.protocol import TaskRequest

log = logging.getLogger(__name__)

UNFINISHED = frozenset({TaskState.PENDING, TaskState.RUNNING})
RECORD = "task.json"
RESULT = "result.mp4"


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A task: what was asked, the format and seed chosen for it, and where it stands."""

    id: str
    state: TaskState
    request: TaskRequest
    clip: ClipFormat
    seed: int
    references: int
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    device: str | None = None
    #: How far it got (0–1), kept once it has stopped running: a cancelled or failed task
    #: shows where it stopped.
    progress: float = 0.0

    @property
    def finished(self) -> bool:
        return self.state not in UNFINISHED

    def moved(self, state: TaskState, **changes: Any) -> TaskRecord:
        if state not in UNFINISHED and "finished_at" not in changes:
            changes["finished_at"] = time.time()
        return replace(self, state=state, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state.value,
            "request": self.request.to_json(),
            "clip": {
                "width": self.clip.width,
                "height": self.clip.height,
                "frames": self.clip.frames,
                "flow_shift": self.clip.flow_shift,
            },
            "seed": self.seed,
            "references": self.references,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "device": self.device,
            "progress": self.progress,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskRecord:
        clip = data["clip"]
        return cls(
            id=str(data["id"]),
            state=TaskState(data["state"]),
            request=TaskRequest.from_json(data["request"]),
            clip=ClipFormat(
                int(clip["width"]),
                int(clip["height"]),
                int(clip["frames"]),
                float(clip["flow_shift"]),
            ),
            seed=int(data["seed"]),
            references=int(data["references"]),
            created_at=float(data["created_at"]),
            started_at=_optional_float(data.get("started_at")),
            finished_at=_optional_float(data.get("finished_at")),
            error=data.get("error"),
            device=data.get("device"),
            progress=float(data.get("progress", 0.0)),
        )


def _optional_float(value: object) -> float | None:
    return None if value is None else float(str(value))


def new_task_id() -> str:
    return "task_" + secrets.token_hex(10)


class TaskStore:
    """Task records in memory, written through to their folders under ``root``."""

    def __init__(self, root: Path) -> None:
        self._tasks = root / "tasks"
        self._uploads = root / "uploads"
        self._records: dict[str, TaskRecord] = {}
        self._write_lock = asyncio.Lock()

    def get(self, task_id: str) -> TaskRecord | None:
        return self._records.get(task_id)

    def records(self) -> Iterable[TaskRecord]:
        return tuple(self._records.values())

    def folder(self, task_id: str) -> Path:
        return self._tasks / task_id

    def reference_paths(self, record: TaskRecord) -> tuple[Path, ...]:
        return tuple(reference_path(self.folder(record.id), n) for n in range(record.references))

    def result_path(self, task_id: str) -> Path:
        return self.folder(task_id) / RESULT

    # Start-up ------------------------------------------------------------------------------

    def load(self) -> list[TaskRecord]:
        """Read every task folder into memory (blocking) and clear abandoned uploads; answer
        the unfinished tasks, oldest first."""
        shutil.rmtree(self._uploads, ignore_errors=True)
        self._tasks.mkdir(parents=True, exist_ok=True)
        for folder in sorted(self._tasks.iterdir()):
            path = folder / RECORD
            try:
                record = TaskRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
            except FileNotFoundError:
                shutil.rmtree(folder, ignore_errors=True)  # a folder renamed in, never recorded
                continue
            except (OSError, ValueError, KeyError, TypeError, R2VError) as exc:
                log.warning("Skipping the damaged task record %s: %s", path, exc)
                continue
            self._records[record.id] = record
        unfinished = [r for r in self._records.values() if not r.finished]
        return sorted(unfinished, key=lambda r: r.created_at)

    # Changes -------------------------------------------------------------------------------

    def new_upload(self) -> Path:
        """An empty folder for an arriving upload (blocking)."""
        folder = self._uploads / secrets.token_hex(8)
        folder.mkdir(parents=True)
        return folder

    async def adopt(self, upload: Path, record: TaskRecord) -> None:
        """Make ``upload`` the folder of the new task ``record``, and record it."""
        self._records[record.id] = record

        def place() -> None:
            self._tasks.mkdir(parents=True, exist_ok=True)
            os.replace(upload, self.folder(record.id))

        try:
            await asyncio.to_thread(place)
        except BaseException:
            del self._records[record.id]
            raise
        await self._write(record.id)

    async def save(self, record: TaskRecord) -> None:
        """Change a task: at once in memory, then on disk."""
        self._records[record.id] = record
        await self._write(record.id)

    async def remove(self, task_id: str) -> None:
        self._records.pop(task_id, None)
        async with self._write_lock:
            await asyncio.to_thread(shutil.rmtree, self.folder(task_id), True)

    def expired(self, older_than: float) -> list[str]:
        """Finished tasks that ended before ``older_than`` (a unix time)."""
        return [
            r.id
            for r in self._records.values()
            if r.finished and (r.finished_at or r.created_at) < older_than
        ]

    async def _write(self, task_id: str) -> None:
        # Writes queue up behind one another and each writes the record as it stands when its
        # turn comes, so the file always ends with the latest state, whatever order changes
        # were made in.
        async with self._write_lock:
            record = self._records.get(task_id)
            if record is not None:
                await asyncio.to_thread(_write_record, self.folder(task_id), record)


def reference_path(folder: Path, index: int) -> Path:
    return folder / f"ref-{index + 1}.png"


def _write_record(folder: Path, record: TaskRecord) -> None:
    with finished_file(folder / RECORD) as partial:
        partial.write_text(json.dumps(record.to_json(), indent=2), encoding="utf-8")
