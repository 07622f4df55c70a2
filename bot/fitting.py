"""Fitting a reference to one provider's limits just before a request goes out.

Saved media meets the strictest limits common to the providers (``bot.media``), but a provider
may accept less: fewer pixels, fewer bytes, shorter voice clips, and reference videos it bills by
the second. ``fit_reference`` makes a fitted copy for that provider, or answers ``None`` when the
stored file already fits. That is the common case, so it is decided from headers and container
metadata alone, with no file written.

Fitting keeps as much as the limits allow: images keep their format unless only a JPEG is small
enough; a plain H.264 clip is trimmed by copying its packets, so it loses no quality; anything
else is re-encoded, at constant quality when only its length is over, else at a bitrate worked
out from the bytes and seconds allowed, and its length and size are checked before it is handed
over. All of it runs in a thread: the event loop only waits.
"""

from __future__ import annotations

import asyncio
import math
import os
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Final, Literal

import av
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.stream import Stream
from av.video.frame import PictureType, VideoFrame
from av.video.stream import VideoStream
from PIL import Image, ImageFile

from bot.errors import InvalidMedia
from bot.media import (
    DEFAULT_LIMITS,
    DEMUXERS,
    DURATION_SLACK_S,
    FORMAT_NAMES,
    IMAGE_READERS,
    NOUNS,
    TEMP_PREFIXES,
    clip_duration,
    damaged_media,
    describe_amount,
    scan_packets,
    webp_is_lossless,
)
from bot.memory import MemoryBudget, held, image_cost
from bot.models import MIME_EXTENSIONS, MediaKind
from bot.ports import Capabilities

#: How far a fitted clip's length may be from the length it was cut to.
DURATION_TOLERANCE_S: Final = 0.1
#: JPEG qualities tried in turn when an image has too many bytes; below the last it shrinks.
JPEG_QUALITIES: Final = (90, 80, 70, 60, 50, 40)
#: The share of a byte limit given to the streams; the rest covers the container and rate
#: control overshoot. A clip over the limit all the same is encoded again, smaller.
_STREAM_SHARE: Final = 0.9
_ENCODE_ATTEMPTS: Final = 3
_AAC_BPS_PER_CHANNEL: Final = 64_000
_AAC_RATES: Final = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000})
_MP4_OPTIONS: Final = {"movflags": "+faststart"}
_AudioCodec = Literal["aac", "libmp3lame", "pcm_s16le"]
#: What decoders and encoders raise for bytes they cannot make sense of.
_UNREADABLE: Final = (av.FFmpegError, OSError, ValueError, EOFError, SyntaxError, struct.error)


@dataclass(frozen=True, slots=True)
class FittedFile:
    """A fitted copy of a reference.

    ``path`` is a new temp file in the caller's workdir, named with its type's extension; the
    caller stores it as a blob and deletes it. ``note`` says what was done, for the status message
    ("trimmed to 5.0 s", "resized to 3000×2000").
    """

    path: Path
    mime: str
    note: str


async def fit_reference(
    path: Path,
    kind: MediaKind,
    mime: str,
    capabilities: Capabilities,
    workdir: Path,
    *,
    memory: MemoryBudget | None = None,
) -> FittedFile | None:
    """Fit a stored reference to a provider's limits; ``None`` when it already fits.

    Images over ``max_image_side`` are resized (Lanczos, aspect kept); images over
    ``max_image_bytes`` become JPEGs of decreasing quality, then smaller, until they fit. Videos
    over ``max_reference_seconds`` are trimmed from the start, and videos over
    ``max_video_bytes`` re-encoded to fit: the result is an H.264 (yuv420p) MP4 with its index
    first, its sound kept as AAC. Voice clips over ``max_voice_seconds`` are trimmed and stay WAV
    (16-bit PCM) or MP3. Raises ``InvalidMedia`` for a file that cannot be read or fitted.

    A JPEG is decoded at the smallest scale that still covers the provider's side limit
    (Pillow's ``draft``); any image's decode waits its turn in ``memory`` when given.
    """
    work = asyncio.ensure_future(
        asyncio.to_thread(_fit, path, kind, mime, capabilities, workdir, memory)
    )
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        # The thread cannot be interrupted: remove what it makes once it is done.
        work.add_done_callback(_discard_result)
        raise


def _discard_result(work: asyncio.Future[FittedFile | None]) -> None:
    if work.cancelled() or work.exception() is not None:
        return
    fitted = work.result()
    if fitted is not None:
        asyncio.get_running_loop().run_in_executor(None, _unlink, fitted.path)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _fit(
    path: Path,
    kind: MediaKind,
    mime: str,
    capabilities: Capabilities,
    workdir: Path,
    memory: MemoryBudget | None = None,
) -> FittedFile | None:
    if mime not in DEFAULT_LIMITS.types(kind):
        raise InvalidMedia(
            f"This file is {mime}, which cannot be used as a {NOUNS[kind]} reference; "
            f"{NOUNS[kind]}s must be {DEFAULT_LIMITS.formats(kind)}."
        )
    try:
        if kind is MediaKind.IMAGE:
            return _fit_image(path, mime, capabilities, workdir, memory)
        if kind is MediaKind.VIDEO:
            return _fit_video(path, mime, capabilities, workdir)
        return _fit_voice(path, mime, capabilities, workdir)
    except InvalidMedia:
        raise
    except _UNREADABLE as exc:
        what = f"This {FORMAT_NAMES[mime]} {NOUNS[kind]}"
        raise damaged_media(what, kind, DEFAULT_LIMITS) from exc


@contextmanager
def _output(workdir: Path, mime: str) -> Iterator[Path]:
    """A new temp file for a fitted copy, removed again if making it fails."""
    workdir.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(
        prefix=TEMP_PREFIXES[1], suffix=MIME_EXTENSIONS[mime], dir=workdir
    )
    os.close(handle)
    path = Path(name)
    try:
        yield path
    except BaseException:
        path.unlink(missing_ok=True)
        raise


# --- images ----------------------------------------------------------------------------------


def _fit_image(
    path: Path, mime: str, caps: Capabilities, workdir: Path, memory: MemoryBudget | None = None
) -> FittedFile | None:
    size = path.stat().st_size
    with IMAGE_READERS[mime](str(path)) as image:  # reads the header, not the pixels
        width, height = image.size
        if max(width, height) <= caps.max_image_side and size <= caps.max_image_bytes:
            return None
        if width * height > DEFAULT_LIMITS.max_image_pixels:
            raise InvalidMedia(
                f"This image is {width}×{height} px; images may have at most "
                f"{DEFAULT_LIMITS.max_image_pixels / 1e6:.1f} megapixels."
            )
        original = image.size
        if max(width, height) > caps.max_image_side:
            scale = caps.max_image_side / max(width, height)
            # A JPEG decodes at 1/2, 1/4 or 1/8 scale directly, never below the size asked.
            image.draft(image.mode, (math.ceil(width * scale), math.ceil(height * scale)))
        decoded = image_cost(*image.size, image.mode, copies=2)  # the pixels and a resized copy
        with held(memory, decoded):
            image.load()
            params = _save_params(image, mime)
            pixels = _reduced(_workable(image), caps.max_image_side)
            if pixels is not image:
                image.close()  # its full-size pixels are not needed any more: free them now
            return _refit_image(pixels, mime, caps, workdir, original, params)


def _reduced(pixels: Image.Image, max_side: int) -> Image.Image:
    """``pixels`` shrunk by a whole factor (box averaging, cheap) while still at least
    ``max_side`` on the long side, so the Lanczos pass after it starts from a small copy."""
    factor = max(pixels.size) // max_side
    return pixels.reduce(factor) if factor >= 2 else pixels


def _refit_image(
    pixels: Image.Image,
    mime: str,
    caps: Capabilities,
    workdir: Path,
    original: tuple[int, int],
    params: dict[str, object],
) -> FittedFile:
    """Resize ``pixels`` (of an image ``original`` in size, perhaps decoded or reduced smaller
    already) to the side limit, in its own format (``params``) if that meets the byte limit
    too; otherwise as a JPEG of decreasing quality, then smaller, until it does."""
    if max(pixels.size) > caps.max_image_side:
        pixels = _resized(pixels, caps.max_image_side / max(pixels.size))
    if pixels.size != original:
        with _output(workdir, mime) as dest:
            _save_as(pixels, mime, dest, params)
            if dest.stat().st_size <= caps.max_image_bytes:
                return FittedFile(dest, mime, f"resized to {pixels.width}×{pixels.height}")
            dest.unlink()
    with _output(workdir, "image/jpeg") as dest:
        pixels, quality = _jpeg_within(_flattened(pixels), caps.max_image_bytes, dest)
        notes = [] if pixels.size == original else [f"resized to {pixels.width}×{pixels.height}"]
        notes.append(
            f"re-encoded as JPEG (quality {quality}) to fit {describe_amount(caps.max_image_bytes)}"
        )
        return FittedFile(dest, "image/jpeg", " and ".join(notes))


def _workable(image: ImageFile.ImageFile) -> Image.Image:
    """The pixels in a mode that resizes smoothly (palettes resize by nearest neighbour) and
    saves as any format. 16-bit grey is scaled to 8 bits: a plain conversion clips it white."""
    if image.mode in ("RGB", "RGBA", "L"):
        return image
    if image.mode.startswith("I"):
        return image.convert("I").point(lambda value: value / 256).convert("L")
    has_alpha = "A" in image.mode or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def _save_params(image: ImageFile.ImageFile, mime: str) -> dict[str, object]:
    if mime == "image/jpeg":
        return {"quality": JPEG_QUALITIES[0]}
    if mime == "image/webp":
        return {"lossless": True} if webp_is_lossless(image) else {"quality": 90}
    return {}


def _save_as(pixels: Image.Image, mime: str, dest: Path, params: dict[str, object]) -> None:
    if mime == "image/jpeg":
        pixels = _flattened(pixels)
    pixels.save(dest, format=FORMAT_NAMES[mime], **params)


def _resized(pixels: Image.Image, scale: float) -> Image.Image:
    size = (max(1, round(pixels.width * scale)), max(1, round(pixels.height * scale)))
    return pixels.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _flattened(pixels: Image.Image) -> Image.Image:
    """The pixels with no alpha (JPEG has none), transparent parts shown over white."""
    if pixels.mode in ("RGB", "L"):
        return pixels
    rgba = pixels.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _jpeg_within(pixels: Image.Image, max_bytes: int, dest: Path) -> tuple[Image.Image, int]:
    """Write ``pixels`` to ``dest`` as a JPEG of at most ``max_bytes``: at each of
    ``JPEG_QUALITIES`` in turn, then smaller. Answer the pixels written and their quality.

    It is never made smaller than the smallest side saved images may have (providers refuse
    smaller ones too), unless it was smaller to begin with.
    """
    min_side = min(DEFAULT_LIMITS.image_min_side, *pixels.size)
    while True:
        for quality in JPEG_QUALITIES:
            pixels.save(dest, format="JPEG", quality=quality, optimize=True)
            written = dest.stat().st_size
            if written <= max_bytes:
                return pixels, quality
        # Bytes grow about as the pixel count does: shrink by the square root of the excess.
        scale = min(0.9, max(0.5, math.sqrt(max_bytes / written) * 0.95))
        if min(pixels.size) <= min_side:
            raise InvalidMedia(
                f"This image cannot be made as small as {describe_amount(max_bytes)}, which is all "
                "this provider accepts; choose another provider or a simpler image."
            )
        pixels = _resized(pixels, max(scale, min_side / min(pixels.size)))


# --- videos ----------------------------------------------------------------------------------


def _fit_video(path: Path, mime: str, caps: Capabilities, workdir: Path) -> FittedFile | None:
    size = path.stat().st_size
    with _open(path, mime) as source:
        if not source.streams.video:
            raise InvalidMedia("This video has no picture; videos must be MP4 or MOV with one.")
        duration = _duration(source, source.streams.video[0])
        audio = source.streams.audio[0] if source.streams.audio else None
        sound_bps = _channels(audio) * _AAC_BPS_PER_CHANNEL if audio is not None else 0
    too_long = duration > caps.max_reference_seconds + DURATION_SLACK_S
    too_big = size > caps.max_video_bytes
    if not too_long and not too_big:
        return None
    target = min(duration, caps.max_reference_seconds)
    notes = [f"trimmed to {target:.1f} s"] if too_long else []
    with _output(workdir, "video/mp4") as dest:
        if too_long and _copy_start(path, mime, dest, target, caps.max_video_bytes):
            return FittedFile(dest, "video/mp4", notes[0])
        budget = _video_bitrate(target, caps.max_video_bytes, sound_bps)
        # Quality first when only the length is over; a bitrate from the byte budget otherwise.
        bitrate = budget if too_big else None
        for _ in range(_ENCODE_ATTEMPTS):
            _encode_start(path, mime, dest, target, bitrate)
            if not _lasts(dest, target):
                raise InvalidMedia(
                    f"This video could not be cut to {target:.1f} s: its frames are not where "
                    "its index says. Send it again as an MP4, or send another video."
                )
            written = dest.stat().st_size
            if written <= caps.max_video_bytes:
                if bitrate is not None:
                    notes.append(f"re-encoded to fit {describe_amount(caps.max_video_bytes)}")
                return FittedFile(dest, "video/mp4", " and ".join(notes))
            excess = caps.max_video_bytes / written
            bitrate = budget if bitrate is None else int(bitrate * min(0.8, excess))
        raise InvalidMedia(
            f"This video cannot be made as small as {describe_amount(caps.max_video_bytes)} for "
            f"{target:.1f} s, which is all this provider accepts; choose another provider or a "
            "shorter video."
        )


def _copy_start(path: Path, mime: str, dest: Path, target: float, max_bytes: int) -> bool:
    """Copy the first ``target`` seconds of a plain H.264 clip packet by packet into ``dest``.

    Answers ``False`` (and leaves ``dest`` to be overwritten) when a copy would not be a clean,
    fitting H.264 yuv420p MP4 of that length: another codec, a first frame that is not a
    keyframe, frames reordered across the cut (B-frames whose reference is cut off), sound
    that is not AAC, or too many bytes.
    """
    with _open(path, mime) as source:
        video = source.streams.video[0]
        audio = source.streams.audio[0] if source.streams.audio else None
        codec = video.codec_context
        if codec.name != "h264" or codec.pix_fmt != "yuv420p":
            return False
        if audio is not None and audio.codec_context.name != "aac":
            return False
        start = video.start_time or 0
        start_s = start * _time_base(video)
        with av.open(str(dest), "w", format="mp4", options=_MP4_OPTIONS) as out:
            outputs: dict[int, Stream] = {video.index: out.add_stream_from_template(video)}
            if audio is not None:
                outputs[audio.index] = out.add_stream_from_template(audio)
            first = True
            cut_seen = video_done = False
            audio_done = audio is None
            written = 0
            for packet in source.demux(*_present(video, audio)):
                if video_done and audio_done:
                    break
                if packet.pts is None or packet.size == 0:
                    continue
                at = packet.pts * packet.time_base - start_s
                if packet.stream.index == video.index:
                    if first and (not packet.is_keyframe or packet.pts != start):
                        return False
                    first = False
                    if at >= target:
                        # Every later packet is shown after the cut once one is decoded after it.
                        cut_seen = True
                        dts = packet.dts if packet.dts is not None else packet.pts
                        video_done = dts * packet.time_base - start_s >= target
                        continue
                    if cut_seen:
                        return False  # a frame shown before the cut depends on one after it
                elif at + (packet.duration or 0) * packet.time_base / 2 >= target:
                    audio_done = True  # most of this packet's sound lies after the cut
                    continue
                written += packet.size
                if written > max_bytes * _STREAM_SHARE:
                    return False
                packet.stream = outputs[packet.stream.index]
                out.mux(packet)
    return _lasts(dest, target) and dest.stat().st_size <= max_bytes


def _present(*streams: Stream | None) -> list[Stream]:
    """The streams that are there (a clip may have no sound)."""
    return [stream for stream in streams if stream is not None]


def _lasts(path: Path, target: float) -> bool:
    """Whether the MP4 at ``path`` has a video stream within the tolerance of ``target`` s."""
    with _open(path, "video/mp4") as fitted:
        if not fitted.streams.video:
            return False
        return abs(_duration(fitted, fitted.streams.video[0]) - target) <= DURATION_TOLERANCE_S


def _video_bitrate(seconds: float, max_bytes: int, sound_bps: int) -> int:
    """Bits per second of picture that fit ``seconds`` into ``max_bytes`` beside the sound."""
    budget = max_bytes * 8 * _STREAM_SHARE / max(seconds, 0.1) - sound_bps
    # A VBV buffer of one second may be spent on top of the rate: leave room for it.
    return max(16_000, int(budget * seconds / (seconds + 1)))


def _encode_start(path: Path, mime: str, dest: Path, target: float, bitrate: int | None) -> None:
    """Re-encode the first ``target`` seconds as H.264 yuv420p (and AAC) into an MP4."""
    with (
        _open(path, mime) as source,
        av.open(str(dest), "w", format="mp4", options=_MP4_OPTIONS) as out,
    ):
        video = source.streams.video[0]
        video.thread_type = "AUTO"
        audio = source.streams.audio[0] if source.streams.audio else None
        picture = _h264_stream(out, video, bitrate)
        sound = _AudioCut(out, audio, "aac", target) if audio is not None else None
        start = video.start_time or 0
        time_base = _time_base(video)
        limit = Fraction(target)
        video_done = rotated = False
        for packet in source.demux(*_present(video, audio)):
            if video_done and (sound is None or sound.done):
                break
            if sound is not None and audio is not None and packet.stream.index == audio.index:
                sound.feed(audio.decode(packet))
                continue
            if video_done:
                continue
            for frame in video.decode(packet):  # in display order
                if frame.pts is None or frame.pts < start:
                    continue  # before the start its edit list sets: never shown
                pts = frame.pts - start
                if pts * time_base >= limit:
                    video_done = True
                    break
                if not rotated:
                    # Phones store portrait clips sideways with a display rotation.
                    rotated = True
                    if frame.rotation:
                        picture.set_display_rotation(frame.rotation)
                out.mux(picture.encode(_for_encoder(frame, picture, pts, time_base)))
        out.mux(picture.encode(None))
        if sound is not None:
            sound.finish()


def _for_encoder(
    frame: VideoFrame, picture: VideoStream, pts: int, time_base: Fraction
) -> VideoFrame:
    """A decoded frame as the encoder wants it: its size and pixel format, rebased at 0."""
    if (frame.width, frame.height, frame.format.name) != (picture.width, picture.height, "yuv420p"):
        frame = frame.reformat(picture.width, picture.height, "yuv420p")
    frame.pts = pts
    frame.time_base = time_base
    # Decoded frames keep the types (I, P, B) they had; x264 would obey them.
    frame.pict_type = PictureType.NONE
    return frame


def _h264_stream(out: OutputContainer, video: VideoStream, bitrate: int | None) -> VideoStream:
    """An H.264 yuv420p stream like ``video``: quality-based (CRF 23), or at ``bitrate``."""
    options = {"preset": "veryfast"}
    if bitrate is None:
        options["crf"] = "23"
    else:
        # A one-second VBV buffer keeps every second near the rate, so the total is bounded.
        options |= {"maxrate": str(bitrate), "bufsize": str(bitrate)}
    rate: Fraction = video.average_rate or video.guessed_rate or Fraction(30)
    picture = out.add_stream("libx264", rate=rate, options=options)
    if bitrate is not None:
        picture.bit_rate = bitrate
    codec = video.codec_context
    # 4:2:0 needs even sides.
    picture.width = max(2, codec.width - codec.width % 2)
    picture.height = max(2, codec.height - codec.height % 2)
    picture.pix_fmt = "yuv420p"
    picture.codec_context.time_base = _time_base(video)
    return picture


def _channels(audio: AudioStream) -> int:
    """How many channels a fitted copy of ``audio`` has: one, or two for anything more."""
    return 1 if audio.codec_context.channels == 1 else 2


class _AudioCut:
    """Decoded sound into an encoder, cut at exactly ``target`` seconds.

    Samples go through a FIFO so the encoder gets whole frames of its own size and the last one
    ends on the very sample where the cut falls.
    """

    def __init__(
        self, out: OutputContainer, source: AudioStream, codec: _AudioCodec, target: float
    ) -> None:
        rate = source.rate or 48000
        if codec == "aac" and rate not in _AAC_RATES:
            rate = 48000
        # A voice or a soundtrack needs no more than two channels; more are mixed down.
        layout = "mono" if _channels(source) == 1 else "stereo"
        sample_format = "s16" if codec == "pcm_s16le" else "fltp"
        self._stream = out.add_stream(codec, rate=rate, layout=layout, format=sample_format)
        if codec == "aac":
            self._stream.bit_rate = _channels(source) * _AAC_BPS_PER_CHANNEL
        elif codec == "libmp3lame" and source.bit_rate:
            self._stream.bit_rate = source.bit_rate
        self._out = out
        self._resampler = av.AudioResampler(format=sample_format, layout=layout, rate=rate)
        self._fifo = av.AudioFifo()
        self._rate = rate
        self._needed = round(target * rate)
        self._written = 0
        self._frame_size = self._stream.codec_context.frame_size or 1024

    @property
    def done(self) -> bool:
        return self._written >= self._needed

    def feed(self, frames: list[AudioFrame]) -> None:
        for frame in frames:
            if self.done:
                return
            for resampled in self._resampler.resample(frame):
                self._push(resampled)
        self._drain(partial=False)

    def finish(self) -> None:
        for resampled in self._resampler.resample(None):
            self._push(resampled)
        self._drain(partial=True)
        self._out.mux(self._stream.encode(None))

    def _push(self, frame: AudioFrame) -> None:
        frame.pts = None
        self._fifo.write(frame)

    def _drain(self, *, partial: bool) -> None:
        while not self.done:
            count = min(self._frame_size, self._needed - self._written)
            chunk = self._fifo.read(count, partial=partial)
            if chunk is None or chunk.samples == 0:
                return
            chunk.pts = self._written
            chunk.time_base = Fraction(1, self._rate)
            self._written += chunk.samples
            self._out.mux(self._stream.encode(chunk))


# --- voice clips -----------------------------------------------------------------------------


def _fit_voice(path: Path, mime: str, caps: Capabilities, workdir: Path) -> FittedFile | None:
    with _open(path, mime) as source:
        if not source.streams.audio:
            raise InvalidMedia("This voice clip has no sound; voice clips must be WAV or MP3.")
        duration = _duration(source, source.streams.audio[0])
    if duration <= caps.max_voice_seconds + DURATION_SLACK_S:
        return None
    target = caps.max_voice_seconds
    codec: _AudioCodec = "pcm_s16le" if mime == "audio/wav" else "libmp3lame"
    with _output(workdir, mime) as dest:
        with (
            _open(path, mime) as source,
            av.open(str(dest), "w", format=DEMUXERS[mime]) as out,
        ):
            audio = source.streams.audio[0]
            cut = _AudioCut(out, audio, codec, target)
            for packet in source.demux(audio):
                cut.feed(audio.decode(packet))
                if cut.done:
                    break
            cut.finish()
        return FittedFile(dest, mime, f"trimmed to {target:.1f} s")


# --- shared ----------------------------------------------------------------------------------


def _open(path: Path, mime: str) -> InputContainer:
    """Open a clip with its own demuxer (never probed, as ``bot.media`` checked it)."""
    return av.open(str(path), format=DEMUXERS[mime])


def _time_base(stream: Stream) -> Fraction:
    if stream.time_base is None:
        raise ValueError("the stream states no time base")
    return stream.time_base


def _duration(container: InputContainer, stream: Stream) -> float:
    """A stream's length from its header; failing that, from its packets (demuxed, not decoded)."""
    duration = clip_duration(container, stream, None)
    if duration is None:
        end, _, _ = scan_packets(container, stream)
        duration = clip_duration(container, stream, end)
    if duration is None:
        raise ValueError("the clip states no length and has no timed packets")
    return duration


# --- results: shrinking a finished video to an upload limit ----------------------------------

#: The fewest bits a shrunk video may spend on each pixel of each frame. Below it H.264 shows
#: more blocks than picture, and a link to the full video serves people better than an upload.
WATCHABLE_BITS_PER_PIXEL: Final = 0.04
_SHRINK_PASSES: Final = 2


async def shrink_video(
    path: Path, max_bytes: int, workdir: Path, *, mime: str = "video/mp4"
) -> FittedFile | None:
    """A copy of a finished video re-encoded to at most ``max_bytes``; ``None`` when it fits.

    Chat platforms cap uploads (Discord: 10 MiB on most servers), and a result may be larger.
    The bitrate comes from the bytes and seconds allowed, the sound keeping its share; when the
    first encoding overshoots, a second one aims lower by the excess. Frame size, rate, length
    and sound are kept. Raises ``InvalidMedia`` (code ``cannot_fit``) when the bitrate would
    fall below ``WATCHABLE_BITS_PER_PIXEL`` or the second encoding is still too large; the
    caller then links to the video instead.
    """
    work = asyncio.ensure_future(asyncio.to_thread(_shrink, path, max_bytes, workdir, mime))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        work.add_done_callback(_discard_result)
        raise


def _shrink(path: Path, max_bytes: int, workdir: Path, mime: str) -> FittedFile | None:
    if path.stat().st_size <= max_bytes:
        return None
    try:
        with _open(path, mime) as source:
            if not source.streams.video:
                raise InvalidMedia("This video has no picture to shrink.")
            video = source.streams.video[0]
            duration = _duration(source, video)
            rate = float(video.average_rate or video.guessed_rate or 24)
            pixels = video.codec_context.width * video.codec_context.height
            audio = source.streams.audio[0] if source.streams.audio else None
            sound_bps = _channels(audio) * _AAC_BPS_PER_CHANNEL if audio is not None else 0
    except _UNREADABLE as exc:
        raise InvalidMedia("This video cannot be read, so it cannot be shrunk.") from exc
    floor = WATCHABLE_BITS_PER_PIXEL * pixels * rate
    bitrate = _video_bitrate(duration, max_bytes, sound_bps)
    with _output(workdir, "video/mp4") as dest:
        for _ in range(_SHRINK_PASSES):
            if bitrate < floor:
                break
            _encode_start(path, mime, dest, duration, bitrate)
            written = dest.stat().st_size
            if written <= max_bytes:
                note = f"re-encoded at {bitrate // 1000} kb/s to fit {describe_amount(max_bytes)}"
                return FittedFile(dest, "video/mp4", note)
            bitrate = int(bitrate * min(0.9, max_bytes / written * 0.95))
        raise InvalidMedia(
            f"This {duration:.0f} s video cannot be made as small as "
            f"{describe_amount(max_bytes)} and still be watchable.",
            code="cannot_fit",
        )
