"""Fitting references to a provider's limits, on real files made here with Pillow, PyAV and wave.

Limits are set small (a 500 px side, 60 KB) so the files stay tiny and the tests fast.
"""

from __future__ import annotations

import asyncio
import os
import random
import struct
from pathlib import Path
from typing import Literal

import av
import pytest
from PIL import Image

from bot.errors import InvalidMedia
from bot.fitting import DURATION_TOLERANCE_S, FittedFile, fit_reference
from bot.media import identify
from bot.models import MediaKind
from bot.ports import Capabilities
from tests.media_factory import (
    encode_clip,
    make_image,
    make_mp3,
    make_video,
    make_wav,
    png_header_claiming,
)

CAPS = Capabilities(name="test", max_image_side=500, max_reference_seconds=5.0)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


async def fit(path: Path, mime: str, workdir: Path, caps: Capabilities = CAPS) -> FittedFile:
    kind = {"image": MediaKind.IMAGE, "video": MediaKind.VIDEO}.get(
        mime.split("/")[0], MediaKind.VOICE
    )
    fitted = await fit_reference(path, kind, mime, caps, workdir)
    assert fitted is not None, "the file should have needed fitting"
    assert fitted.path.parent == workdir
    return fitted


def files_in(workdir: Path) -> list[str]:
    return sorted(path.name for path in workdir.iterdir())


def noise_png(path: Path, size: tuple[int, int], mode: str = "RGB") -> Path:
    """Random pixels: PNG cannot compress them, so the file is about 3 bytes a pixel."""
    rng = random.Random(7)
    data = rng.randbytes(size[0] * size[1] * len(mode))
    Image.frombytes(mode, size, data).save(path, format="PNG")
    return path


def make_clip(
    path: Path,
    seconds: float,
    *,
    codec: Literal["libx264", "mpeg4"] = "libx264",
    options: dict[str, str] | None = None,
    size: tuple[int, int] = (64, 48),
    fps: int = 12,
    noise: bool = False,
    rotation: int = 0,
    audio: bool = False,
) -> Path:
    """A clip ``make_video`` cannot make: another codec, B-frames, noise, a display rotation.

    Unless it is noise, each frame is one colour whose red steps by 6 a frame, so a frame
    decoded wrong (a B-frame whose reference was cut off) shows up as a wrong red.
    """
    rng = random.Random(3)
    width, height = size
    with av.open(str(path), "w", format="mov" if path.suffix == ".mov" else "mp4") as out:
        stream = out.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=16000, layout="mono") if audio else None
        pixels = (
            rng.randbytes(width * height * 4)
            if noise
            else bytes((index * 6 % 256, 80, 40, 255)) * (width * height)
            for index in range(round(seconds * fps))
        )
        encode_clip(out, stream, pixels, fps, sound, seconds)
    return path


def with_b_frames(path: Path, seconds: float, **kwargs: object) -> Path:
    """An H.264 clip whose frames are stored out of display order (I P B B P B B …)."""
    options = {"preset": "ultrafast", "x264-params": "bframes=2:b-adapt=0"}
    return make_clip(path, seconds, options=options, **kwargs)  # type: ignore[arg-type]


class Clip:
    """What a fitted clip holds, read back by decoding all of it."""

    def __init__(self, path: Path) -> None:
        with av.open(str(path)) as container:
            self.format = container.format.name
            video = container.streams.video[0] if container.streams.video else None
            audio = container.streams.audio[0] if container.streams.audio else None
            self.video_codec = video.codec_context.name if video else None
            self.pix_fmt = video.codec_context.pix_fmt if video else None
            self.audio_codec = audio.codec_context.name if audio else None
            self.audio_format = audio.format.name if audio else None
            self.rotation = 0
            self.frames = 0
            if video is not None:
                for frame in container.decode(video):
                    if self.frames == 0:
                        self.rotation = frame.rotation
                    self.frames += 1
            self.audio_seconds = 0.0
            if audio is not None:
                container.seek(0)
                samples = sum(frame.samples for frame in container.decode(audio))
                self.audio_seconds = samples / audio.rate


def reds(path: Path) -> list[int]:
    """The red of every frame's centre, in display order."""
    with av.open(str(path)) as container:
        return [_centre_red(frame) for frame in container.decode(video=0)]


def _centre_red(frame: av.VideoFrame) -> int:
    image = frame.to_image()  # type: ignore[no-untyped-call]
    red, _, _ = image.convert("RGB").getpixel((frame.width // 2, frame.height // 2))
    return int(red)


def top_level_boxes(path: Path) -> list[bytes]:
    """The MP4 boxes at the top of the file, in order (``moov`` before ``mdat`` = faststart)."""
    boxes = []
    with path.open("rb") as handle:
        while header := handle.read(8):
            size, kind = struct.unpack(">I4s", header)
            if size == 1:
                size = struct.unpack(">Q", handle.read(8))[0] - 8
            boxes.append(kind)
            handle.seek(size - 8, os.SEEK_CUR)
    return boxes


def video_packets(path: Path, count: int) -> list[bytes]:
    with av.open(str(path)) as container:
        packets = (bytes(p) for p in container.demux(video=0) if p.size)
        return [next(packets) for _ in range(count)]


# --- images ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("BMP", "image/bmp")],
)
async def test_a_wide_image_is_resized_to_the_side_limit_keeping_its_aspect_and_format(
    tmp_path: Path, workdir: Path, fmt: str, mime: str
) -> None:
    source = make_image(tmp_path / f"wide.{fmt.lower()}", size=(1200, 800), fmt=fmt)

    fitted = await fit(source, mime, workdir)

    info = await identify(fitted.path)
    assert (info.mime, info.width, info.height) == (mime, 500, 333)
    assert fitted.mime == mime and fitted.path.suffix == source.suffix.replace("jpeg", "jpg")
    assert fitted.note == "resized to 500×333"
    with Image.open(fitted.path) as image:
        centre = image.convert("RGB").getpixel((250, 200))  # the picture, not a blank
    assert centre == pytest.approx((200, 80, 40), abs=4)


async def test_a_16_bit_grey_png_keeps_its_tones_when_resized(
    tmp_path: Path, workdir: Path
) -> None:
    source = tmp_path / "grey16.png"
    Image.new("I;16", (1000, 600), 32768).save(source)  # mid grey, in 16 bits

    fitted = await fit(source, "image/png", workdir)

    with Image.open(fitted.path) as image:
        assert image.size == (500, 300)
        assert image.convert("L").getpixel((250, 150)) == pytest.approx(128, abs=1)


async def test_a_heavy_png_becomes_a_jpeg_under_the_byte_limit(
    tmp_path: Path, workdir: Path
) -> None:
    source = noise_png(tmp_path / "noise.png", (400, 300))
    caps = Capabilities(name="test", max_image_bytes=60_000)
    assert source.stat().st_size > caps.max_image_bytes

    fitted = await fit(source, "image/png", workdir, caps)

    info = await identify(fitted.path)
    assert info.mime == fitted.mime == "image/jpeg" and fitted.path.suffix == ".jpg"
    assert info.size <= caps.max_image_bytes
    assert (info.width, info.height) == (400, 300)
    assert "JPEG" in fitted.note


async def test_an_image_no_quality_can_fit_is_made_smaller_until_it_does(
    tmp_path: Path, workdir: Path
) -> None:
    source = noise_png(tmp_path / "noise.png", (600, 450))
    caps = Capabilities(name="test", max_image_bytes=50_000)

    fitted = await fit(source, "image/png", workdir, caps)

    info = await identify(fitted.path)  # which also checks the sides are 240 px or more
    assert info.mime == "image/jpeg" and info.size <= caps.max_image_bytes
    assert info.width is not None and info.height is not None
    assert info.width < 600
    assert info.width / info.height == pytest.approx(4 / 3, abs=0.02)
    assert f"{info.width}×{info.height}" in fitted.note


async def test_an_image_is_not_shrunk_below_the_smallest_side_providers_take(
    tmp_path: Path, workdir: Path
) -> None:
    source = noise_png(tmp_path / "noise.png", (600, 450))
    caps = Capabilities(name="test", max_image_bytes=8_000)

    with pytest.raises(InvalidMedia, match="cannot be made as small as 8 KB"):
        await fit_reference(source, MediaKind.IMAGE, "image/png", caps, workdir)

    assert files_in(workdir) == []


async def test_transparent_parts_turn_white_not_black_in_a_jpeg(
    tmp_path: Path, workdir: Path
) -> None:
    source = noise_png(tmp_path / "rgba.png", (300, 300), mode="RGBA")
    with Image.open(source) as image:
        see_through = image.convert("RGBA")
    see_through.paste((0, 0, 0, 0), (0, 0, 100, 100))  # a clear corner, black if alpha dropped
    see_through.save(source)
    caps = Capabilities(name="test", max_image_bytes=60_000)

    fitted = await fit(source, "image/png", workdir, caps)

    assert fitted.mime == "image/jpeg"
    with Image.open(fitted.path) as image:
        red, green, blue = image.convert("RGB").getpixel((40, 40))  # type: ignore[misc]
    assert min(red, green, blue) > 200


async def test_a_too_wide_image_that_is_also_too_heavy_is_resized_then_compressed(
    tmp_path: Path, workdir: Path
) -> None:
    source = noise_png(tmp_path / "noise.png", (1000, 400))
    caps = Capabilities(name="test", max_image_side=600, max_image_bytes=60_000)

    fitted = await fit(source, "image/png", workdir, caps)

    info = await identify(fitted.path)
    assert info.mime == "image/jpeg" and info.size <= caps.max_image_bytes
    assert info.width is not None and info.width <= 600
    assert info.height is not None and info.width / info.height == pytest.approx(2.5, abs=0.02)


# --- videos ----------------------------------------------------------------------------------


async def test_a_long_video_is_trimmed_to_the_reference_seconds_with_its_sound(
    tmp_path: Path, workdir: Path
) -> None:
    source = make_video(tmp_path / "long.mp4", seconds=7.0, size=(64, 48), audio=True)

    fitted = await fit(source, "video/mp4", workdir)

    info = await identify(fitted.path)
    assert info.duration == pytest.approx(5.0, abs=DURATION_TOLERANCE_S)
    clip = Clip(fitted.path)
    assert (clip.video_codec, clip.pix_fmt, clip.audio_codec) == ("h264", "yuv420p", "aac")
    assert clip.frames == 60  # 5 s at 12 fps, every one decodable
    assert clip.audio_seconds == pytest.approx(5.0, abs=DURATION_TOLERANCE_S)
    assert fitted.mime == "video/mp4" and fitted.note == "trimmed to 5.0 s"
    assert top_level_boxes(fitted.path).index(b"moov") < top_level_boxes(fitted.path).index(b"mdat")


async def test_trimming_a_plain_h264_clip_copies_its_frames_without_re_encoding(
    tmp_path: Path, workdir: Path
) -> None:
    source = make_video(tmp_path / "long.mp4", seconds=7.0, size=(64, 48))

    fitted = await fit(source, "video/mp4", workdir)

    assert video_packets(fitted.path, 30) == video_packets(source, 30)


@pytest.mark.parametrize(
    ("name", "maker"),
    [
        ("b-frames.mp4", lambda path: with_b_frames(path, 7.0, audio=True)),
        ("mpeg4.mov", lambda path: make_clip(path, 7.0, codec="mpeg4", audio=True)),
    ],
    ids=["h264-with-b-frames", "mpeg4-in-mov"],
)
async def test_a_clip_that_cannot_be_cut_by_copying_is_re_encoded_to_h264(
    tmp_path: Path, workdir: Path, name: str, maker: object
) -> None:
    source = maker(tmp_path / name)  # type: ignore[operator]
    mime = "video/quicktime" if name.endswith(".mov") else "video/mp4"

    fitted = await fit(source, mime, workdir)

    info = await identify(fitted.path)
    assert info.mime == fitted.mime == "video/mp4"
    assert info.duration == pytest.approx(5.0, abs=DURATION_TOLERANCE_S)
    clip = Clip(fitted.path)
    assert (clip.video_codec, clip.pix_fmt, clip.audio_codec) == ("h264", "yuv420p", "aac")
    assert clip.frames == 60
    expected = reds(source)[:60]
    assert all(abs(a - b) <= 3 for a, b in zip(reds(fitted.path), expected, strict=True))
    assert clip.audio_seconds == pytest.approx(5.0, abs=DURATION_TOLERANCE_S)
    assert top_level_boxes(fitted.path).index(b"moov") < top_level_boxes(fitted.path).index(b"mdat")


@pytest.mark.parametrize("b_frames", [False, True], ids=["copied", "re-encoded"])
async def test_a_portrait_phone_video_stays_upright_when_trimmed(
    tmp_path: Path, workdir: Path, b_frames: bool
) -> None:
    path = tmp_path / "portrait.mp4"
    if b_frames:
        source = with_b_frames(path, 7.0, rotation=90)
    else:
        source = make_clip(path, 7.0, options={"preset": "ultrafast"}, rotation=90)

    fitted = await fit(source, "video/mp4", workdir)

    assert Clip(fitted.path).rotation == 90


@pytest.mark.parametrize("seconds", [3.0, 7.0], ids=["short", "also-too-long"])
async def test_a_video_over_the_byte_limit_is_re_encoded_under_it(
    tmp_path: Path, workdir: Path, seconds: float
) -> None:
    source = make_clip(
        tmp_path / "noise.mp4",
        seconds,
        options={"preset": "ultrafast"},
        size=(96, 64),
        noise=True,
        audio=True,
    )
    caps = Capabilities(name="test", max_video_bytes=80_000)
    assert source.stat().st_size > 2 * caps.max_video_bytes

    fitted = await fit(source, "video/mp4", workdir, caps)

    info = await identify(fitted.path)
    assert info.size <= caps.max_video_bytes
    target = min(seconds, 5.0)
    assert info.duration == pytest.approx(target, abs=DURATION_TOLERANCE_S)
    clip = Clip(fitted.path)
    assert (clip.video_codec, clip.audio_codec, clip.frames) == ("h264", "aac", target * 12)
    assert clip.audio_seconds == pytest.approx(target, abs=DURATION_TOLERANCE_S)
    assert "re-encoded to fit 79 KB" in fitted.note
    assert ("trimmed to 5.0 s" in fitted.note) is (seconds > 5)


async def test_a_video_that_cannot_shrink_enough_is_refused(tmp_path: Path, workdir: Path) -> None:
    source = make_clip(tmp_path / "noise.mp4", 2.0, noise=True, options={"preset": "ultrafast"})
    caps = Capabilities(name="test", max_video_bytes=1_000)

    with pytest.raises(InvalidMedia, match="cannot be made as small as 1 KB"):
        await fit_reference(source, MediaKind.VIDEO, "video/mp4", caps, workdir)

    assert files_in(workdir) == []


# --- voice clips -----------------------------------------------------------------------------


async def test_a_long_wav_is_trimmed_to_the_voice_seconds_and_stays_16_bit_wav(
    tmp_path: Path, workdir: Path
) -> None:
    source = make_wav(tmp_path / "long.wav", seconds=12.0)

    fitted = await fit(source, "audio/wav", workdir)

    info = await identify(fitted.path)
    assert info.mime == fitted.mime == "audio/wav" and fitted.path.suffix == ".wav"
    assert info.duration == pytest.approx(10.0, abs=DURATION_TOLERANCE_S)
    clip = Clip(fitted.path)
    assert (clip.audio_codec, clip.audio_format) == ("pcm_s16le", "s16")
    assert clip.audio_seconds == pytest.approx(10.0, abs=DURATION_TOLERANCE_S)


async def test_a_long_mp3_is_trimmed_and_stays_mp3(tmp_path: Path, workdir: Path) -> None:
    source = make_mp3(tmp_path / "long.mp3", seconds=12.0)
    caps = Capabilities(name="test", max_voice_seconds=6.0)

    fitted = await fit(source, "audio/mpeg", workdir, caps)

    info = await identify(fitted.path)
    assert info.mime == fitted.mime == "audio/mpeg" and fitted.path.suffix == ".mp3"
    assert info.duration == pytest.approx(6.0, abs=DURATION_TOLERANCE_S)
    assert Clip(fitted.path).audio_seconds == pytest.approx(6.0, abs=DURATION_TOLERANCE_S)
    assert fitted.note == "trimmed to 6.0 s"


# --- files that fit, and files that cannot be read -------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "mime"),
    [
        ("small.png", MediaKind.IMAGE, "image/png"),
        ("small.jpg", MediaKind.IMAGE, "image/jpeg"),
        ("short.mp4", MediaKind.VIDEO, "video/mp4"),
        ("five.mp4", MediaKind.VIDEO, "video/mp4"),
        ("short.wav", MediaKind.VOICE, "audio/wav"),
        ("short.mp3", MediaKind.VOICE, "audio/mpeg"),
    ],
)
async def test_a_file_that_fits_is_used_as_it_is(
    tmp_path: Path, workdir: Path, name: str, kind: MediaKind, mime: str
) -> None:
    path = tmp_path / name
    makers = {
        "small.png": lambda: make_image(path, size=(500, 300)),
        "small.jpg": lambda: make_image(path, size=(320, 480), fmt="JPEG"),
        "short.mp4": lambda: make_video(path, seconds=3.0, audio=True),
        "five.mp4": lambda: make_video(path, seconds=5.0, audio=True),  # exactly the limit
        "short.wav": lambda: make_wav(path, seconds=10.0),
        "short.mp3": lambda: make_mp3(path, seconds=4.0),
    }
    source = makers[name]()

    assert await fit_reference(source, kind, mime, CAPS, workdir) is None
    assert files_in(workdir) == []


async def test_a_file_that_fits_is_judged_from_its_header_without_decoding(
    tmp_path: Path, workdir: Path
) -> None:
    """Pixel and frame data is never read: damage behind an intact header goes unnoticed here
    (it was checked when the file was saved), while the same damage fails a real fit."""
    image = make_image(tmp_path / "image.png", size=(400, 300))
    png = bytearray(image.read_bytes())
    start = png.index(b"IDAT") + 4
    png[start : start + 40] = bytes(40)
    image.write_bytes(bytes(png))
    video = make_video(tmp_path / "video.mp4", seconds=3.0, faststart=True)
    mp4 = bytearray(video.read_bytes())
    start = mp4.index(b"mdat") + 4
    mp4[start:] = bytes(len(mp4) - start)
    video.write_bytes(bytes(mp4))

    assert await fit_reference(image, MediaKind.IMAGE, "image/png", CAPS, workdir) is None
    assert await fit_reference(video, MediaKind.VIDEO, "video/mp4", CAPS, workdir) is None
    assert files_in(workdir) == []

    smaller = Capabilities(name="test", max_image_side=300)
    with pytest.raises(InvalidMedia):
        await fit_reference(image, MediaKind.IMAGE, "image/png", smaller, workdir)


async def test_a_damaged_image_that_needs_fitting_is_refused(tmp_path: Path, workdir: Path) -> None:
    source = png_header_claiming(tmp_path / "bad.png", 1200, 800)

    with pytest.raises(InvalidMedia, match="PNG image cannot be read"):
        await fit_reference(source, MediaKind.IMAGE, "image/png", CAPS, workdir)

    assert files_in(workdir) == []


async def test_a_cut_short_video_is_refused(tmp_path: Path, workdir: Path) -> None:
    source = make_video(tmp_path / "cut.mp4", seconds=7.0)
    data = source.read_bytes()
    source.write_bytes(data[: len(data) // 2])  # its index (moov) was at the end

    with pytest.raises(InvalidMedia, match="MP4 video cannot be read"):
        await fit_reference(source, MediaKind.VIDEO, "video/mp4", CAPS, workdir)

    assert files_in(workdir) == []


async def test_a_file_of_another_kind_is_refused(tmp_path: Path, workdir: Path) -> None:
    source = make_wav(tmp_path / "voice.wav", seconds=2.0)

    with pytest.raises(InvalidMedia, match="MP4 or MOV"):
        await fit_reference(source, MediaKind.VIDEO, "audio/wav", CAPS, workdir)


async def test_a_cancelled_fit_leaves_no_file_behind(tmp_path: Path, workdir: Path) -> None:
    source = make_clip(
        tmp_path / "noise.mp4", 4.0, size=(320, 240), noise=True, options={"preset": "ultrafast"}
    )
    caps = Capabilities(name="test", max_video_bytes=100_000)
    task = asyncio.create_task(fit_reference(source, MediaKind.VIDEO, "video/mp4", caps, workdir))
    for _ in range(5000):  # its file appears as encoding starts, a tenth of a second or more
        if files_in(workdir):
            break
        await asyncio.sleep(0.002)
    assert task.cancel(), "the fit finished before it could be cancelled"

    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(1000):  # the encoding thread runs on; its file goes once it is done
        if not files_in(workdir):
            break
        await asyncio.sleep(0.01)
    assert files_in(workdir) == []
