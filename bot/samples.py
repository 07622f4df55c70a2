"""``r2v samples DIR``: a few small media files to try the bot with, drawn on the spot.

The README's console session uses them, so a newcomer needs no pictures of their own.
"""

from __future__ import annotations

import math
import struct
import wave
from fractions import Fraction
from pathlib import Path

from PIL import Image, ImageDraw


def _figure(
    size: tuple[int, int], body: tuple[int, int, int], name: str, sway: float
) -> Image.Image:
    width, height = size
    picture = Image.new("RGB", size, (250, 240, 225))
    draw = ImageDraw.Draw(picture)
    cx = width // 2 + int(sway * width * 0.15)
    head = height // 8
    draw.ellipse(
        (cx - head, height // 5 - head, cx + head, height // 5 + head), fill=(240, 200, 170)
    )
    draw.rectangle((cx - head, height // 5 + head, cx + head, height * 3 // 5), fill=body)
    draw.line((cx - head // 2, height * 3 // 5, cx - head, height * 9 // 10), fill=body, width=12)
    draw.line((cx + head // 2, height * 3 // 5, cx + head, height * 9 // 10), fill=body, width=12)
    draw.text((10, 10), name, fill=(40, 40, 40))
    return picture


def write_samples(folder: Path) -> list[Path]:
    import av

    folder.mkdir(parents=True, exist_ok=True)
    alice = folder / "alice.png"
    _figure((480, 640), (200, 60, 90), "alice", 0.0).save(alice)

    bob = folder / "bob.mp4"
    with av.open(str(bob), mode="w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 480, 640, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 12)
        for i in range(36):
            frame = av.VideoFrame.from_image(  # type: ignore[no-untyped-call]
                _figure((480, 640), (50, 90, 200), "bob", math.sin(i / 6))
            )
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)

    voice = folder / "alice.wav"
    rate = 16000
    with wave.open(str(voice), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        samples = (
            int(8000 * math.sin(2 * math.pi * (220 + 110 * math.sin(t / rate * 3)) * t / rate))
            for t in range(rate * 2)
        )
        out.writeframes(b"".join(struct.pack("<h", s) for s in samples))
    return [alice, bob, voice]
