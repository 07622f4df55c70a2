"""Real media files for tests, made on the spot, small enough to keep tests fast.

Tests check what the bot does with real files (a JPEG with GPS in its EXIF, an MP4 with no
picture), so this writes them with the same libraries the bot reads them with: Pillow, PyAV and the
standard ``wave`` module. Nothing binary is committed. The ``IncomingFile`` helpers stand in for a
chat attachment the way an adapter would hand one over.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import wave
import zlib
from collections.abc import AsyncIterator, Iterable
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
from PIL import ExifTags, Image, ImageCms

from bot.media import local_incoming
from bot.models import IncomingFile

CHUNK_SIZE = 64 * 1024

Color = tuple[int, int, int]


def make_image(
    path: Path,
    size: tuple[int, int] = (320, 320),
    fmt: str = "PNG",
    color: Color = (200, 80, 40),
    exif: bool = False,
    *,
    orientation: int | None = None,
    icc: bool = False,
    comment: bytes | None = None,
) -> Path:
    """An image of one colour with a white square in its top-left corner (to tell rotations).

    ``exif`` adds EXIF with a camera make and a GPS position; ``orientation`` sets the EXIF
    orientation tag (6: the viewer should turn it 90° clockwise); ``icc`` embeds an sRGB ICC
    profile; ``comment`` a JPEG comment.
    """
    image = Image.new("RGB", size, color)
    mark = max(4, min(size) // 8)
    image.paste((255, 255, 255), (0, 0, mark, mark))
    params: dict[str, object] = {}
    tags = Image.Exif()
    if exif:
        tags[ExifTags.Base.Make] = "TestCam"
        tags[ExifTags.IFD.GPSInfo] = {
            ExifTags.GPS.GPSLatitudeRef: "N",
            ExifTags.GPS.GPSLatitude: (52.0, 31.0, 12.0),
            ExifTags.GPS.GPSLongitudeRef: "E",
            ExifTags.GPS.GPSLongitude: (13.0, 24.0, 36.0),
        }
    if orientation is not None:
        tags[ExifTags.Base.Orientation] = orientation
    if len(tags):
        params["exif"] = tags
    if icc:
        params["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    if comment is not None:
        params["comment"] = comment
    if fmt.upper() == "JPEG":
        params["quality"] = 90
    image.save(path, format=fmt, **params)
    return path


def make_video(
    path: Path,
    seconds: float = 2.0,
    size: tuple[int, int] = (320, 240),
    fps: int = 12,
    audio: bool = False,
    container: Literal["mp4", "mov"] = "mp4",
    *,
    faststart: bool = False,
) -> Path:
    """An H.264 clip whose colour changes frame by frame, optionally with an AAC tone.

    Width and height must be even (4:2:0 chroma). A long clip is cheap with a tiny size and a low
    ``fps``: a 40 s clip at 64×64 and 2 fps takes a few milliseconds. ``faststart`` puts the index
    (``moov``) before the frames, as web services do, so a cut-short copy still opens.
    """
    frames = max(1, round(seconds * fps))
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format=container, options=options) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast"}
        sound = out.add_stream("aac", rate=16000, layout="mono") if audio else None
        shades = ((index * 255) // frames for index in range(frames))
        pixels = (bytes((shade, 80, 255 - shade, 255)) * (size[0] * size[1]) for shade in shades)
        encode_clip(out, stream, pixels, fps, sound, seconds)
    return path


def encode_clip(
    out: av.container.OutputContainer,
    stream: av.video.stream.VideoStream,
    frames: Iterable[bytes],
    fps: int,
    sound: av.audio.stream.AudioStream | None,
    seconds: float,
) -> None:
    """Encode RGBA ``frames`` of the stream's size at ``fps``, then, into ``sound`` when given,
    a 16 kHz tone ``seconds`` long."""
    for index, pixels in enumerate(frames):
        frame = av.VideoFrame.from_bytes(pixels, stream.width, stream.height, format="rgba")
        frame.pts = index
        frame.time_base = Fraction(1, fps)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))
    if sound is not None:
        _encode_tone(out, sound, seconds, 16000)


def make_audio_only_mp4(path: Path, seconds: float = 2.0) -> Path:
    """An MP4 that holds an AAC tone and no picture (an ``.m4a`` by another name)."""
    with av.open(str(path), "w", format="mp4") as out:
        sound = out.add_stream("aac", rate=16000, layout="mono")
        _encode_tone(out, sound, seconds, 16000)
    return path


def make_wav(path: Path, seconds: float = 2.0, rate: int = 16000) -> Path:
    """A 16-bit mono WAV holding a 440 Hz tone."""
    samples = _tone(seconds, rate)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"".join(struct.pack("<h", round(s * 32767)) for s in samples))
    return path


def make_mp3(path: Path, seconds: float = 2.0, *, id3: bool = True) -> Path:
    """An MP3 holding a 440 Hz tone (PyAV's wheel encodes MP3 with LAME: codec ``libmp3lame``).

    FFmpeg's muxer starts the file with an ID3v2 tag; ``id3=False`` cuts it off, leaving a file
    that starts with a bare MPEG frame header, as some encoders write them.
    """
    with av.open(str(path), "w", format="mp3") as out:
        sound = out.add_stream("libmp3lame", rate=22050, layout="mono", format="fltp")
        _encode_tone(out, sound, seconds, 22050)
    if not id3:
        data = path.read_bytes()
        if data.startswith(b"ID3"):
            size = 10 + sum((byte & 0x7F) << (7 * (3 - i)) for i, byte in enumerate(data[6:10]))
            path.write_bytes(data[size:])
    return path


def png_header_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header (IHDR) claims ``width``×``height`` pixels: a decompression bomb's
    shape without its bulk. Its pixel data is a few bytes, so decoding it would fail too."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return path


def local_file(path: Path, *, declared: bool = True) -> IncomingFile:
    """A local file as an attachment, read as the bot reads local files (in a thread);
    ``declared=False`` leaves its size unknown until read, as some uploads do."""
    incoming = local_incoming(path)
    return incoming if declared else dataclasses.replace(incoming, declared_size=None)


def bytes_file(name: str, data: bytes, declared_size: int | None = None) -> IncomingFile:
    """Bytes in memory as an attachment, streamed in 64 KiB chunks."""

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), CHUNK_SIZE):
            yield data[start : start + CHUNK_SIZE]

    return IncomingFile(name=name, open=chunks, declared_size=declared_size)


def _tone(seconds: float, rate: int) -> list[float]:
    return [0.3 * math.sin(2 * math.pi * 440 * n / rate) for n in range(round(seconds * rate))]


def _encode_tone(
    out: av.container.OutputContainer,
    stream: av.audio.stream.AudioStream,
    seconds: float,
    rate: int,
) -> None:
    """Encode a tone into ``stream``, in frames of the encoder's own size."""
    samples = _tone(seconds, rate)
    step = stream.codec_context.frame_size or 1024
    for start in range(0, len(samples), step):
        part = samples[start : start + step]
        frame = av.AudioFrame(format="fltp", layout="mono", samples=len(part))
        frame.planes[0].update(struct.pack(f"<{len(part)}f", *part))
        frame.rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))
