"""Small JPEG pictures of stored media for the gallery: a thumbnail of an image, a poster frame
of a video. Made once per blob and size, then kept as files (a blob never changes, so neither
does its thumbnail). Decoding runs in a thread; the event loop only waits.

The blobs were checked when saved (``bot.media``), so they are read with their own format's
reader or demuxer and never probed.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import av
from PIL import Image, ImageOps

from bot.media import DEMUXERS, IMAGE_READERS
from bot.memory import MemoryBudget, held, image_cost
from bot.models import MediaKind

#: The longest side of a thumbnail, in pixels: sharp on a phone's 2× screen at 160 CSS pixels.
THUMB_SIDE: Final = 320
#: A poster frame is taken this far into a video (or its first frame, if shorter).
POSTER_AT_S: Final = 0.5


class Thumbnails:
    def __init__(
        self, cache_dir: Path, side: int = THUMB_SIDE, *, memory: MemoryBudget | None = None
    ) -> None:
        self._dir = cache_dir
        self._side = side
        self._memory = memory

    async def get(
        self, blob: str, source: Callable[[], Awaitable[Path]], kind: MediaKind, mime: str
    ) -> Path:
        """The thumbnail of ``blob``, made when missing from the file ``source`` gives (asked
        for only then: from an object store it is a download)."""
        target = self._dir / f"{blob}-{self._side}.jpg"
        if await asyncio.to_thread(target.is_file):
            return target
        await asyncio.to_thread(self._make, await source(), kind, mime, target)
        return target

    def _make(self, source: Path, kind: MediaKind, mime: str, target: Path) -> None:
        if kind is MediaKind.VIDEO:
            picture = _poster(source, mime)
        else:
            picture = _still(source, mime, self._side, self._memory)
        with picture:
            picture.thumbnail((self._side, self._side))
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix="thumb-", suffix=".part", dir=target.parent)
            os.close(handle)
            try:
                picture.convert("RGB").save(name, format="JPEG", quality=82, optimize=True)
                os.replace(name, target)
            except BaseException:
                Path(name).unlink(missing_ok=True)
                raise


def _still(source: Path, mime: str, side: int, memory: MemoryBudget | None) -> Image.Image:
    """The image at thumbnail size, decoded within the process's decode budget (an 8000×8000
    picture is 244 MiB decoded, and a gallery page asks for many thumbnails at once)."""
    with IMAGE_READERS[mime](str(source)) as image:
        width, height = image.size
        with held(memory, image_cost(width, height, image.mode, copies=2)):
            image.load()
            picture = ImageOps.exif_transpose(image).copy()
            picture.thumbnail((side, side))
            return picture


def _poster(source: Path, mime: str) -> Image.Image:
    with av.open(str(source), format=DEMUXERS[mime]) as container:
        stream = container.streams.video[0]
        first: Image.Image | None = None
        for frame in container.decode(stream):
            picture: Image.Image = frame.to_image()  # type: ignore[no-untyped-call]
            if first is None:
                first = picture
            if frame.time is None or frame.time >= POSTER_AT_S:
                return picture
        if first is None:
            raise ValueError("the video has no frame")
        return first
