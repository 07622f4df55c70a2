"""Reference files turned into the pictures the pipeline is given, once, when a task arrives.

VACE takes reference *images*: each is letterboxed onto a white frame of the clip's size (what
``WanVACEPipeline`` itself does, on a white canvas, to any image it is handed), so doing it here
first leaves the pipeline nothing to resize and keeps a huge upload from ever reaching it. A
video reference contributes one frame: the one at its middle, where the subject is most likely
in view (first frames are often fades, titles or a camera still settling).

The files' content decides what they are, never their names. Preparing them at submission means
a file the worker cannot read is refused at once with a 4xx, not found out later on the GPU, and
the render reads only small PNGs. Synchronous: callers run it in a thread.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import av
from PIL import Image, ImageOps, UnidentifiedImageError

from bot.errors import InvalidMedia

#: A side this long is far past any real photo; its pixels are not decoded at all.
MAX_SIDE = 16_384
MAX_PIXELS = 120_000_000
WHITE = (255, 255, 255)

_DECODE_ERRORS = (OSError, ValueError, EOFError, av.FFmpegError, Image.DecompressionBombError)
_ACCEPTED = "JPEG, PNG, WEBP or BMP images, or MP4, MOV or WEBM videos"


def prepare_reference(source: Path, out: Path, size: tuple[int, int], number: int) -> str:
    """Write reference ``number`` (1-based, for messages) as a PNG of ``size`` to ``out``.

    Answers what it was, ``"image"`` or ``"video"``; raises ``InvalidMedia`` naming the
    reference when it is neither, or cannot be decoded.
    """
    picture, kind = _read_picture(source, size, number)
    try:
        letterboxed = letterbox(picture, size)
    finally:
        picture.close()
    letterboxed.save(out, format="PNG")
    return kind


def letterbox(picture: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``picture`` scaled to fit inside ``size`` whole, centred on white."""
    fitted = ImageOps.contain(picture, size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", size, WHITE)
    canvas.paste(fitted, ((size[0] - fitted.width) // 2, (size[1] - fitted.height) // 2))
    return canvas


def _read_picture(source: Path, size: tuple[int, int], number: int) -> tuple[Image.Image, str]:
    try:
        return _read_image(source, size), "image"
    except UnidentifiedImageError:
        pass
    except _DECODE_ERRORS as exc:
        raise _unreadable(number, f"the image could not be decoded: {exc}") from exc
    try:
        return _middle_frame(source), "video"
    except _NotAVideo:
        raise _unreadable(number, f"it is not one of the {_ACCEPTED}") from None
    except _DECODE_ERRORS as exc:
        raise _unreadable(number, f"the video could not be decoded: {exc}") from exc


def _unreadable(number: int, why: str) -> InvalidMedia:
    return InvalidMedia(
        f"Reference {number} cannot be used: {why}. Send {_ACCEPTED}.", code="invalid_media"
    )


def _read_image(source: Path, size: tuple[int, int]) -> Image.Image:
    """The image upright, in RGB with any transparency laid over white."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as image:
            width, height = image.size
            if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
                raise ValueError(f"{width}×{height} pixels is too large")
            image.draft("RGB", size)  # JPEG: decode at a reduced scale when that is enough
            upright = ImageOps.exif_transpose(image)
            return _flatten(upright)


def _flatten(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class _NotAVideo(Exception):
    """The file opened as no video container with a video stream."""


def _middle_frame(source: Path) -> Image.Image:
    try:
        container: Any = av.open(str(source))
    except (av.FFmpegError, OSError) as exc:
        raise _NotAVideo from exc
    with container:
        if not container.streams.video:
            raise _NotAVideo
        stream = container.streams.video[0]
        middle = _middle_seconds(container, stream)
        frame = _frame_at(container, stream, middle) if middle > 0 else None
        if frame is None:  # unknown length, or seeking failed: the first frame will do
            container.seek(0)
            frame = next(container.decode(stream), None)
        if frame is None:
            raise ValueError("it has no frames")
        picture: Image.Image = frame.to_image()
        return picture


def _middle_seconds(container: Any, stream: Any) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base) / 2
    if container.duration is not None:
        return float(container.duration) / av.time_base / 2
    return 0.0


def _frame_at(container: Any, stream: Any, seconds: float) -> Any:
    """The first frame at or after ``seconds`` (decoding on from the keyframe before it)."""
    try:
        container.seek(int(seconds / stream.time_base), stream=stream, backward=True)
    except av.FFmpegError:
        return None
    last = None
    for frame in container.decode(stream):
        last = frame
        if frame.time is not None and frame.time >= seconds:
            return frame
    return last
