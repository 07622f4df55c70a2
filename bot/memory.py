"""A memory budget for decoding images, shared by every thread that decodes.

A small file can hold a huge picture: an 8000×8000 PNG of one colour is 190 KB on disk and
244 MiB decoded (Pillow keeps RGB as four bytes a pixel). Five saved at once would take 1.2 GB.
Each decode first reserves what it will hold (``image_cost``) and waits while the budget
(``R2V_MEDIA_MEMORY_MB``) is spent; small images pass at once, big ones take turns. A decode
larger than the whole budget still runs, alone, rather than never.

Decodes run in worker threads (never on the event loop), so this is a ``threading`` condition,
not an asyncio one: a waiting decode blocks its worker thread, not the loop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from PIL import Image

#: Bytes a decoded pixel takes in Pillow, by mode; RGB, RGBA, CMYK and the like take four.
_PIXEL_BYTES: Final = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I": 4, "F": 4}
#: What a decode holds beyond its pixels: the encoder's or resampler's working rows.
_WORKING: Final = 1.25


def image_cost(width: int, height: int, mode: str, *, copies: int = 1) -> int:
    """Bytes an image of this size and mode holds decoded, ``copies`` times over (a rotated or
    colour-converted copy is a second one), with room to work."""
    per_pixel = _PIXEL_BYTES.get(mode, 4)
    return int(width * height * per_pixel * (copies - 1 + _WORKING))


class MemoryBudget:
    """``with budget.hold(n):`` waits until ``n`` bytes are free, then holds them."""

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes <= 0:
            raise ValueError("a memory budget needs a positive size")
        self.limit = limit_bytes
        self._used = 0
        self._free = threading.Condition()

    @property
    def used(self) -> int:
        with self._free:
            return self._used

    @contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        amount = min(max(amount, 0), self.limit)
        with self._free:
            self._free.wait_for(lambda: self._used + amount <= self.limit)
            self._used += amount
        try:
            yield
        finally:
            with self._free:
                self._used -= amount
                self._free.notify_all()


#: Pillow's allocation unit for big images (its default is 16 MiB).
PILLOW_BLOCK_BYTES: Final = 64 * 1024 * 1024


#: Allocations from this size up are mmapped (glibc's ``M_MMAP_THRESHOLD``).
MMAP_THRESHOLD_BYTES: Final = 4 * 1024 * 1024
_M_MMAP_THRESHOLD: Final = -3


def return_decoded_memory() -> None:
    """Give big images' memory back to the system when they are freed, not keep it per thread.

    Pillow allocates a big image in 16 MiB blocks. glibc serves the first ones with mmap and,
    once one is freed, raises its mmap threshold past that size, so later blocks come from the
    decoding thread's malloc arena, which keeps them after they are freed: five saves that
    took turns still held five images' worth (770 MiB for five 8000×8000 PNGs, measured).
    Fixing glibc's threshold at 4 MiB keeps every big allocation mmapped (unmapped on free);
    where that is not glibc, Pillow's blocks are made larger than any threshold glibc-like
    allocators raise to. Both are process-wide: the composition root calls this once.
    """
    Image.core.set_block_size(PILLOW_BLOCK_BYTES)  # type: ignore[attr-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass  # not glibc: the larger blocks above do what they can


@contextmanager
def held(budget: MemoryBudget | None, amount: int) -> Iterator[None]:
    """``budget.hold(amount)``, or nothing when there is no budget."""
    if budget is None:
        yield
        return
    with budget.hold(amount):
        yield
