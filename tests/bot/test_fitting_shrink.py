"""Shrinking a finished video to an upload limit (``bot.fitting.shrink_video``)."""

from __future__ import annotations

import random
from fractions import Fraction
from pathlib import Path

import av
import pytest

from bot.errors import InvalidMedia
from bot.fitting import WATCHABLE_BITS_PER_PIXEL, shrink_video
from tests.media_factory import make_video

SIZE = (320, 240)
FPS = 24


def noise_clip(path: Path, seconds: float, *, sound: bool = False) -> Path:
    """Random pixels, losslessly coded (about 3 MB a second at 320×240), with an AAC tone."""
    rng = random.Random(3)
    frames = round(seconds * FPS)
    with av.open(str(path), "w", format="mp4") as out:
        picture = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "qp": "0"})
        picture.width, picture.height = SIZE
        picture.pix_fmt = "yuv420p"
        audio = out.add_stream("aac", rate=16000, layout="mono") if sound else None
        for index in range(frames):
            frame = av.VideoFrame.from_bytes(
                rng.randbytes(SIZE[0] * SIZE[1] * 4), *SIZE, format="rgba"
            )
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            out.mux(picture.encode(frame))
        out.mux(picture.encode(None))
        if audio is not None:
            samples = audio.codec_context.frame_size or 1024
            for start in range(0, round(seconds * 16000), samples):
                chunk = av.AudioFrame(format="fltp", layout="mono", samples=samples)
                chunk.planes[0].update(bytes(samples * 4))
                chunk.rate, chunk.pts, chunk.time_base = 16000, start, Fraction(1, 16000)
                out.mux(audio.encode(chunk))
            out.mux(audio.encode(None))
    return path


def described(path: Path) -> tuple[tuple[int, int], float, bool]:
    """Frame size, seconds of picture (frames decoded / rate) and whether there is sound."""
    with av.open(str(path)) as clip:
        video = clip.streams.video[0]
        frames = sum(1 for _ in clip.decode(video))
        size = (video.codec_context.width, video.codec_context.height)
        assert video.average_rate is not None
        return size, frames / float(video.average_rate), bool(clip.streams.audio)


async def test_a_video_over_the_limit_is_re_encoded_under_it(tmp_path: Path) -> None:
    source = noise_clip(tmp_path / "big.mp4", 1.5, sound=True)
    limit = source.stat().st_size // 3
    work = tmp_path / "work"

    fitted = await shrink_video(source, limit, work)

    assert fitted is not None
    assert fitted.mime == "video/mp4"
    assert fitted.path.parent == work
    assert fitted.path.stat().st_size <= limit
    assert described(fitted.path) == described(source)  # same size, length and sound
    assert "re-encoded" in fitted.note


async def test_a_video_within_the_limit_is_left_alone(tmp_path: Path) -> None:
    source = make_video(tmp_path / "small.mp4", seconds=1.0)
    work = tmp_path / "work"
    assert await shrink_video(source, source.stat().st_size, work) is None
    assert not work.exists() or not any(work.iterdir())


async def test_a_limit_below_a_watchable_bitrate_is_refused(tmp_path: Path) -> None:
    source = noise_clip(tmp_path / "big.mp4", 1.0)
    # What one second of picture needs at the floor, and a limit just under a third of it.
    floor_bytes = WATCHABLE_BITS_PER_PIXEL * SIZE[0] * SIZE[1] * FPS / 8
    work = tmp_path / "work"
    with pytest.raises(InvalidMedia) as refused:
        await shrink_video(source, int(floor_bytes / 3), work)
    assert refused.value.code == "cannot_fit"
    assert "watchable" in refused.value.message
    assert not any(work.iterdir())  # nothing left behind
