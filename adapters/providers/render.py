"""The storyboard renderer: references shown in turn, panned and zoomed, captioned, as a real MP4.

It stands in for a video model so the whole job loop can be tried offline, and so its output has
to look like a provider's: H.264 in yuv420p at exactly 24 fps, the requested frame size, the
moov atom first (players and chat previews can start before the end arrives), and the voices as
an AAC track of exactly the clip's length.

It is synchronous and CPU-bound; callers run it in a thread. Frames are made, encoded and
dropped one at a time, and reference videos are decoded as they play, so memory stays flat
whatever the duration.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import av
from av.audio.stream import AudioStream
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from adapters.local_files import finished_file
from adapters.mp4 import H264Writer
from bot.errors import R2VError
from bot.models import MediaKind

_T = TypeVar("_T")

FPS = 24
AUDIO_RATE = 48_000

#: Output frame sizes by resolution and aspect ratio (what Wan 2.7 R2V produces).
FRAME_SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "720p": {
        "16:9": (1280, 720),
        "9:16": (720, 1280),
        "1:1": (720, 720),
        "4:3": (960, 720),
        "3:4": (720, 960),
    },
    "1080p": {
        "16:9": (1920, 1080),
        "9:16": (1080, 1920),
        "1:1": (1080, 1080),
        "4:3": (1440, 1080),
        "3:4": (1080, 1440),
    },
}

#: Zoom at the tight end of a Ken Burns move; the wide end is 1 (the cover-fitted reference).
_MAX_ZOOM = 1.12
_CAPTION_LINES = 3
_BAND = (0, 0, 0, 150)
_TEXT = (255, 255, 255, 255)
#: Errors that mean a reference or voice file could not be decoded.
_DECODE_ERRORS = (OSError, ValueError, EOFError, av.FFmpegError, Image.DecompressionBombError)


class RenderCancelled(R2VError):
    """The render was asked to stop (``should_stop`` answered true between two frames)."""

    code = "cancelled"


class RenderFailed(R2VError):
    """The storyboard could not be made from what it was given."""

    code = "render_failed"


@dataclass(frozen=True, slots=True)
class RenderSpec:
    """Everything a render needs: the references in order, the caption, the voices, the format.

    ``references`` are ``(label, kind, path)`` of images and videos; each gets an equal share of
    the duration. ``seed`` varies the direction of the pans and zooms.
    """

    references: tuple[tuple[str, MediaKind, Path], ...]
    caption: str
    duration: int
    resolution: str
    aspect_ratio: str
    voices: tuple[Path, ...] = ()
    seed: int = 0

    @property
    def frame_count(self) -> int:
        return self.duration * FPS


def frame_size(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """The output ``(width, height)``; ``RenderFailed`` names the accepted values otherwise."""
    sizes = FRAME_SIZES.get(resolution)
    if sizes is None:
        raise RenderFailed(
            f"Resolution “{resolution}” is not supported: use {' or '.join(FRAME_SIZES)}."
        )
    size = sizes.get(aspect_ratio)
    if size is None:
        raise RenderFailed(
            f"Aspect ratio “{aspect_ratio}” is not supported: use {', '.join(sizes)}."
        )
    return size


def render_storyboard(
    spec: RenderSpec,
    out: Path,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    on_progress: Callable[[float], None] = lambda p: None,
) -> None:
    """Render ``spec`` into the MP4 ``out``.

    The file appears under ``out`` only once it is complete: it is written beside it under a
    temporary name and renamed at the end, and removed if anything goes wrong. ``should_stop`` is
    asked before every frame (``RenderCancelled``); ``on_progress`` hears the fraction done.
    """
    size = frame_size(spec.resolution, spec.aspect_ratio)
    if not spec.references:
        raise RenderFailed("A storyboard needs at least one image or video reference.")
    if spec.duration < 1:
        raise RenderFailed(f"A storyboard lasts at least 1 s, not {spec.duration} s.")
    for label, kind, _ in spec.references:
        if not kind.is_visual:
            raise RenderFailed(
                f"Reference “{label}” is a {kind}: only images and videos are shown."
            )
    with finished_file(out) as partial:
        _encode(spec, size, partial, should_stop, on_progress)


def _encode(
    spec: RenderSpec,
    size: tuple[int, int],
    path: Path,
    should_stop: Callable[[], bool],
    on_progress: Callable[[float], None],
) -> None:
    height = size[1]
    total = spec.frame_count
    caption = _caption_band(spec.caption, size)
    with H264Writer(path, size, FPS, crf=20) as writer:
        container = writer.container
        voice: tuple[AudioStream, _Soundtrack] | None = None
        if spec.voices:
            voice = (
                container.add_stream("aac", rate=AUDIO_RATE, layout="mono"),
                _Soundtrack(spec.voices, total * AUDIO_RATE // FPS),
            )

        segments = len(spec.references)
        shown: _Shot | None = None
        try:
            for index in range(total):
                if should_stop():
                    raise RenderCancelled("The render was cancelled.")
                segment = index * segments // total
                if shown is None or shown.segment != segment:
                    if shown is not None:
                        shown.close()
                    start = -(-segment * total // segments)
                    end = -(-(segment + 1) * total // segments)
                    shown = _Shot(spec, segment, size, first=start, frames=end - start)
                picture = shown.picture(index)
                if caption is not None:
                    picture.paste(caption, (0, height - caption.height), caption)
                writer.write(av.VideoFrame.from_image(picture))  # type: ignore[no-untyped-call]
                if voice is not None:
                    audio, soundtrack = voice
                    for chunk in soundtrack.until((index + 1) * AUDIO_RATE // FPS):
                        container.mux(audio.encode(chunk))
                on_progress((index + 1) / total)
        finally:
            if shown is not None:
                shown.close()
            if voice is not None:
                voice[1].close()
        if voice is not None:
            container.mux(voice[0].encode(None))


class _Shot:
    """One reference's share of the clip: its pictures, the camera move over them, its label."""

    def __init__(
        self, spec: RenderSpec, segment: int, size: tuple[int, int], *, first: int, frames: int
    ) -> None:
        self.segment = segment
        self._size = size
        self._first = first
        self._frames = max(frames, 1)
        label, kind, path = spec.references[segment]
        self._label = _label_patch(label, size)
        self._camera = _Camera(random.Random(f"{spec.seed}:{segment}"))
        self._source: _Still | _Moving = (
            _Moving(label, path, size) if kind is MediaKind.VIDEO else _Still(label, path, size)
        )

    def picture(self, index: int) -> Image.Image:
        local = index - self._first
        base = self._source.picture(local / FPS)
        picture = self._camera.view(base, self._size, local / max(self._frames - 1, 1))
        margin = _margin(self._size)
        picture.paste(self._label, (margin, margin), self._label)
        return picture

    def close(self) -> None:
        self._source.close()


class _Camera:
    """A Ken Burns move: a zoom in or out and a drift between two points, eased at both ends."""

    def __init__(self, rng: random.Random) -> None:
        self._zoom = (1.0, _MAX_ZOOM) if rng.random() < 0.5 else (_MAX_ZOOM, 1.0)
        self._start = (rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85))
        self._end = (rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85))

    def view(self, base: Image.Image, size: tuple[int, int], progress: float) -> Image.Image:
        """The part of ``base`` (cover-fitted to ``size``) seen at ``progress`` (0..1)."""
        width, height = size
        eased = progress * progress * (3 - 2 * progress)
        zoom = self._zoom[0] + (self._zoom[1] - self._zoom[0]) * eased
        window_w, window_h = width / zoom, height / zoom
        fx = self._start[0] + (self._end[0] - self._start[0]) * eased
        fy = self._start[1] + (self._end[1] - self._start[1]) * eased
        left = (base.width - window_w) * fx
        top = (base.height - window_h) * fy
        box = (left, top, left + window_w, top + window_h)
        return base.resize(size, Image.Resampling.BILINEAR, box=box)


def _cover_size(source: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """The smallest scaling of ``source`` that covers ``size`` whole, keeping its shape."""
    scale = max(size[0] / source[0], size[1] / source[1])
    return max(size[0], round(source[0] * scale)), max(size[1], round(source[1] * scale))


#: Shapes further apart than this are not cropped to fit: a portrait in a landscape frame would
#: lose its head and feet. They are shown whole over a blurred, dimmed copy of themselves.
_CROP_LIMIT = 1.25


def _framed(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The picture made ready for the camera: cover-fitted when its shape is close to the
    frame's, else shown whole on a backdrop of itself."""
    covered = image.resize(
        _cover_size(image.size, size), Image.Resampling.LANCZOS, reducing_gap=3.0
    )
    ratio = (image.width / image.height) / (size[0] / size[1])
    if max(ratio, 1 / ratio) <= _CROP_LIMIT:
        return covered
    width, height = size
    left, top = (covered.width - width) // 2, (covered.height - height) // 2
    small = covered.crop((left, top, left + width, top + height)).reduce(8)
    backdrop = ImageEnhance.Brightness(small.filter(ImageFilter.GaussianBlur(4))).enhance(0.55)
    canvas = backdrop.resize(size, Image.Resampling.BILINEAR)
    scale = min(width / image.width, height / image.height)
    whole = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.LANCZOS,
    )
    canvas.paste(whole, ((width - whole.width) // 2, (height - whole.height) // 2))
    return canvas


class _Still:
    """An image reference, decoded and framed once."""

    def __init__(self, label: str, path: Path, size: tuple[int, int]) -> None:
        try:
            with Image.open(path) as image:
                image.draft("RGB", size)
                upright = ImageOps.exif_transpose(image)
                self._base = _framed(_flatten(upright), size)
        except _DECODE_ERRORS as exc:
            raise RenderFailed(f"The image of “{label}” could not be read ({exc}).") from exc

    def picture(self, seconds: float) -> Image.Image:
        return self._base

    def close(self) -> None:
        self._base.close()


def _flatten(image: Image.Image) -> Image.Image:
    """RGB, with any transparency laid over black (as a video frame has no alpha)."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class _Moving:
    """A video reference played in real time from the start of its share, looping when shorter.

    Only the frame on screen and the one after it are held; frames are decoded as time reaches
    them, and a frame is converted to a picture only when it is the one shown.
    """

    def __init__(self, label: str, path: Path, size: tuple[int, int]) -> None:
        self._label = label
        self._path = path
        self._size = size
        self._offset = 0.0
        self._container: Any = None
        self._shown: tuple[float, Any] | None = None
        self._picture: Image.Image | None = None
        self._picture_of: Any = None
        self._guarded(self._open)
        current = self._guarded(self._next)
        if current is None:
            raise RenderFailed(f"The video of “{label}” has no frames to show.")
        self._current: tuple[float, Any] = current
        self._ahead = self._guarded(self._next)

    def _guarded(self, step: Callable[[], _T]) -> _T:
        try:
            return step()
        except _DECODE_ERRORS as exc:
            raise RenderFailed(f"The video of “{self._label}” could not be read ({exc}).") from exc

    def _open(self) -> None:
        self.close()
        self._container = av.open(str(self._path))
        if not self._container.streams.video:
            raise RenderFailed(f"The video of “{self._label}” has no video stream.")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        self._rate = float(stream.average_rate or FPS)
        self._frames: Iterator[Any] = self._container.decode(stream)
        self._first_time: float | None = None
        self._count = 0

    def _next(self) -> tuple[float, Any] | None:
        """The next decoded frame and when it is due, in seconds from the start of the share."""
        frame = next(self._frames, None)
        if frame is None:
            return None
        when = frame.time if frame.time is not None else self._count / self._rate
        if self._first_time is None:
            self._first_time = when
        self._count += 1
        return self._offset + when - self._first_time, frame

    def _advance(self, seconds: float) -> None:
        while True:
            if self._ahead is None:
                loop_end = self._current[0] + 1 / self._rate
                if seconds < loop_end:
                    return
                self._offset = loop_end
                self._open()
                self._ahead = self._next()
                if self._ahead is None:
                    return
            if self._ahead[0] > seconds:
                return
            self._current, self._ahead = self._ahead, self._next()

    def picture(self, seconds: float) -> Image.Image:
        self._guarded(lambda: self._advance(seconds))
        frame = self._current[1]
        if self._picture is None or self._picture_of is not frame:
            scale = max(self._size[0] / frame.width, self._size[1] / frame.height)
            width, height = round(frame.width * scale), round(frame.height * scale)
            decoded = self._guarded(lambda: frame.to_image(width=width, height=height))
            self._picture = _framed(decoded, self._size)
            self._picture_of = frame
        assert self._picture is not None
        return self._picture

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


class _Soundtrack:
    """The voices one after the other as 48 kHz mono, padded with silence or cut to length."""

    def __init__(self, voices: tuple[Path, ...], total_samples: int) -> None:
        self._pending = list(voices)
        self._total = total_samples
        self._fifo = av.AudioFifo()
        self._emitted = 0
        self._container: Any = None
        self._frames: Iterator[Any] | None = None
        self._resampler: Any = None
        self._voice: Path | None = None

    def until(self, sample: int) -> Iterator[Any]:
        """Frames carrying the samples from where the last call stopped up to ``sample``."""
        target = min(sample, self._total)
        while self._emitted < target:
            count = min(4096, target - self._emitted)
            self._fill(count)
            chunk = self._fifo.read(count)
            assert chunk is not None  # _fill left at least ``count`` samples in the FIFO
            chunk.pts = self._emitted
            chunk.time_base = Fraction(1, AUDIO_RATE)
            self._emitted += count
            yield chunk

    def _fill(self, count: int) -> None:
        while self._fifo.samples < count:
            decoded = self._decode_some()
            if decoded is None:
                self._fifo.write(_silence(count - self._fifo.samples))
                return
            for frame in decoded:
                frame.pts = None
                self._fifo.write(frame)

    def _decode_some(self) -> list[Any] | None:
        """The next resampled frames of the voices, or ``None`` once every voice is used up."""
        while True:
            if self._frames is None:
                if not self._pending:
                    return None
                self._voice = self._pending.pop(0)
                try:
                    self._container = av.open(str(self._voice))
                    self._frames = self._container.decode(audio=0)
                except _DECODE_ERRORS as exc:
                    raise self._unreadable(exc) from exc
                self._resampler = av.AudioResampler(format="fltp", layout="mono", rate=AUDIO_RATE)
            try:
                frame = next(self._frames, None)
                resampled: list[Any] = self._resampler.resample(frame)
            except _DECODE_ERRORS as exc:
                raise self._unreadable(exc) from exc
            if frame is None:
                self.close()
            if resampled:
                return resampled

    def _unreadable(self, exc: BaseException) -> RenderFailed:
        name = self._voice.name if self._voice else "a voice clip"
        return RenderFailed(f"The voice clip {name} could not be read ({exc}).")

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = None
        self._frames = None


def _silence(samples: int) -> Any:
    frame = av.AudioFrame(format="fltp", layout="mono", samples=samples)
    frame.sample_rate = AUDIO_RATE
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    return frame


def _margin(size: tuple[int, int]) -> int:
    return max(8, min(size) // 40)


def _font(size: tuple[int, int], divisor: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.load_default(size=max(12, min(size) // divisor))
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise RenderFailed("Pillow was built without FreeType, so captions cannot be drawn.")
    return font


def _label_patch(label: str, size: tuple[int, int]) -> Image.Image:
    """The label of a reference on a small translucent box, to be pasted in the top-left corner."""
    font = _font(size, 26)
    left, top, right, bottom = font.getbbox(label)
    pad = max(4, min(size) // 90)
    patch = Image.new("RGBA", (int(right - left) + 2 * pad, int(bottom - top) + 2 * pad))
    draw = ImageDraw.Draw(patch)
    draw.rounded_rectangle((0, 0, patch.width - 1, patch.height - 1), radius=pad, fill=_BAND)
    draw.text((pad - left, pad - top), label, font=font, fill=_TEXT)
    return patch


def _caption_band(caption: str, size: tuple[int, int]) -> Image.Image | None:
    """The caption wrapped on a translucent band as wide as the frame, or ``None`` when empty."""
    text = " ".join(caption.split())
    if not text:
        return None
    font = _font(size, 24)
    margin = _margin(size)
    lines = _wrap(text, font, size[0] - 2 * margin)
    ascent, descent = font.getmetrics()
    line_height = int((ascent + descent) * 1.15)
    band = Image.new("RGBA", (size[0], line_height * len(lines) + 2 * margin), _BAND)
    draw = ImageDraw.Draw(band)
    for number, line in enumerate(lines):
        draw.text((margin, margin + number * line_height), line, font=font, fill=_TEXT)
    return band


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels in at most three lines, the last one ellipsised."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = word
        while font.getlength(line) > width and len(lines) <= _CAPTION_LINES:
            cut = _fit(line, font, width)
            lines.append(line[:cut])
            line = line[cut:]
        if len(lines) >= _CAPTION_LINES:
            break
    else:
        if line:
            lines.append(line)
        return lines
    lines = lines[:_CAPTION_LINES]
    lines[-1] = _ellipsise(lines[-1], font, width)
    return lines


def _fit(text: str, font: ImageFont.FreeTypeFont, width: int) -> int:
    """How many leading characters of ``text`` fit in ``width`` pixels (at least one)."""
    low, high = 1, len(text)
    while low < high:
        middle = math.ceil((low + high) / 2)
        if font.getlength(text[:middle]) <= width:
            low = middle
        else:
            high = middle - 1
    return low


def _ellipsise(line: str, font: ImageFont.FreeTypeFont, width: int) -> str:
    while line and font.getlength(line + "…") > width:
        line = line[:-1]
    return line.rstrip() + "…"
