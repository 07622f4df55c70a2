"""Local files: read as ``IncomingFile`` values (in a thread, a chunk at a time), and written
whole or not at all (``finished_file``)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bot.errors import Refusal
from bot.media import local_incoming
from bot.models import IncomingFile


def local_file(path: Path) -> IncomingFile:
    """An ``IncomingFile`` for a local path; a missing path is refused with its name."""
    if not path.is_file():
        raise Refusal(f"There is no file at {path}.", code="invalid_option")
    return local_incoming(path)


@contextmanager
def finished_file(out: Path) -> Iterator[Path]:
    """A temporary path beside ``out`` to write to: renamed to ``out`` when the block exits
    cleanly, removed when it does not, so a reader never finds half a file under ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{secrets.token_hex(4)}.part")
    try:
        yield partial
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
