"""Local files as ``IncomingFile`` values: read in a thread, a chunk at a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from bot.errors import Refusal
from bot.models import IncomingFile

CHUNK = 256 * 1024


def local_file(path: Path) -> IncomingFile:
    """An ``IncomingFile`` for a local path; a missing path is refused with its name."""
    if not path.is_file():
        raise Refusal(f"There is no file at {path}.", code="invalid_option")

    async def chunks() -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(path.open, "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK):
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    return IncomingFile(name=path.name, open=chunks, declared_size=path.stat().st_size)
