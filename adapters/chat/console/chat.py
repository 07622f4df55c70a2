"""The console's ChatPort: status messages and videos as lines (or JSON events) on stdout.

With ``--json`` every post of the bot is one JSON object on its own line and nothing else is
written to stdout (DESIGN.md's contract); logs go to stderr.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any, TextIO

from bot.commands import render_refs
from bot.models import Job, Reply
from bot.ports import PostedStatus


class ConsoleOutput:
    """Writes the bot's posts, as JSON lines or as plain text, one whole post at a time."""

    def __init__(self, stream: TextIO | None = None, *, as_json: bool = False) -> None:
        self._stream = stream or sys.stdout
        self._json = as_json

    def emit(self, event: dict[str, Any]) -> None:
        """Write one post; command references in its text are written as the console's own
        lines spell them (which is the catalog's canonical spelling)."""
        if isinstance(event.get("text"), str):
            event = {**event, "text": render_refs(event["text"])}
        line = json.dumps(event, ensure_ascii=False) if self._json else _plain(event)
        self._stream.write(line + "\n")
        self._stream.flush()

    def reply(self, reply: Reply) -> None:
        event: dict[str, Any] = {"type": "error" if reply.is_error else "reply", "text": reply.text}
        if reply.code:
            event["code"] = reply.code
        if reply.job_id:
            event["job"] = reply.job_id
        if reply.data:
            event["data"] = dict(reply.data)
        if reply.file is not None:
            event["path"] = str(reply.file.resolve())  # an export: the ZIP in the outbox
        self.emit(event)


def _plain(event: dict[str, Any]) -> str:
    kind = event["type"]
    if kind == "error":
        return f"✗ [{event['code']}] {event['text']}"
    if kind == "status":
        return f"· {event['text']}"
    if kind == "video":
        return f"🎞  {event['text']}\n   saved to {event['path']}"
    if "path" in event:
        return f"{event['text']}\n   saved to {event['path']}"
    return str(event["text"])


class ConsoleChat:
    """Delivers videos into ``{data}/outbox/{job_id}.mp4`` and announces them."""

    platform = "console"

    def __init__(self, output: ConsoleOutput, outbox: Path, *, delivery_delay: float = 0.0) -> None:
        self._output = output
        self._outbox = outbox
        self._delivery_delay = delivery_delay

    def _status(self, job: Job, text: str) -> None:
        self._output.emit({"type": "status", "job": job.id, "state": str(job.state), "text": text})

    async def post_status(self, job: Job, text: str) -> PostedStatus:
        self._status(job, text)
        return PostedStatus(message_id=job.id)

    async def edit_status(self, job: Job, text: str) -> None:
        self._status(job, text)

    async def deliver_video(self, job: Job, video: Path, text: str) -> None:
        if self._delivery_delay:
            await asyncio.sleep(self._delivery_delay)
        target = self._outbox / f"{job.id}.mp4"
        await asyncio.to_thread(_copy_atomically, video, target)
        self._output.emit(
            {
                "type": "video",
                "job": job.id,
                "path": str(target.resolve()),
                "text": f"@{job.user_id} {text}",
            }
        )

    async def find_delivery(self, job: Job) -> bool:
        """The outbox file named by job id is the post: it exists only once fully copied."""
        return await asyncio.to_thread((self._outbox / f"{job.id}.mp4").is_file)


def _copy_atomically(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    shutil.copyfile(source, partial)
    partial.replace(target)
