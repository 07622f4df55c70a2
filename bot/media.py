"""Media checks: what an attached file really is, whether it is within limits, and a clean copy.

Attachments come from strangers, so nothing is taken from a file's name or its declared type:
the kind is found from the content (magic bytes, then Pillow or PyAV reading it), every limit is
checked before the file is kept, and images are re-saved as pixels alone so EXIF (GPS included),
XMP, ICC profiles and comments never reach our blob store or a provider.

Three defences keep a hostile file cheap to refuse: the download stops at the size limit, an
image's pixel count is read from its header and checked before any pixel is decoded, and each
demuxer is named (never probed) so a file that starts like an MP4 is only ever read as one.
All decoding runs in threads; the event loop only streams bytes.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from itertools import islice
from pathlib import Path
from typing import Final

import av
import av.logging
from av.container import InputContainer
from av.stream import Stream
from PIL import (
    BmpImagePlugin,
    Image,
    ImageCms,
    ImageFile,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    WebPImagePlugin,
)

from bot.errors import InvalidMedia
from bot.memory import MemoryBudget, held, image_cost
from bot.models import IncomingFile, MediaInfo, MediaKind

# FFmpeg would otherwise print every oddity of a damaged upload to stderr; refusals say enough.
av.logging.set_level(None)

MiB: Final = 1024 * 1024
#: Container durations include codec delay and priming, so a clip cut at exactly 30 s can
#: measure a few hundredths more; this much is forgiven at either end of a duration range.
DURATION_SLACK_S: Final = 0.05
#: A provider's result must decode this many frames from its start.
RESULT_FIRST_FRAMES: Final = 3

_WRITE_SIZE = MiB
_HEAD_SIZE = 64

FORMAT_NAMES: Final = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/bmp": "BMP",
    "image/webp": "WEBP",
    "video/mp4": "MP4",
    "video/quicktime": "MOV",
    "audio/wav": "WAV",
    "audio/mpeg": "MP3",
}
NOUNS: Final = {MediaKind.IMAGE: "image", MediaKind.VIDEO: "video", MediaKind.VOICE: "voice clip"}
_ARTICLES: Final = {
    MediaKind.IMAGE: "an image",
    MediaKind.VIDEO: "a video",
    MediaKind.VOICE: "a voice clip",
}
#: The FFmpeg demuxer that reads each accepted container; naming it means no probing.
DEMUXERS: Final = {
    "video/mp4": "mov",
    "video/quicktime": "mov",
    "audio/wav": "wav",
    "audio/mpeg": "mp3",
}
#: Pillow's reader for each accepted image format. Using the reader directly (not Image.open)
#: restricts parsing to the format the magic bytes named and leaves the pixel-count check to us,
#: with no global ``Image.MAX_IMAGE_PIXELS`` to tune and no warnings.
IMAGE_READERS: Final[dict[str, Callable[[str], ImageFile.ImageFile]]] = {
    "image/jpeg": JpegImagePlugin.JpegImageFile,
    "image/png": PngImagePlugin.PngImageFile,
    "image/bmp": BmpImagePlugin.BmpImageFile,
    "image/webp": WebPImagePlugin.WebPImageFile,
}
#: ``ftyp`` brands of still-image formats built on the MP4 box structure.
_IMAGE_BRANDS: Final = frozenset({b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif"})
#: Box types an old QuickTime file may start with instead of ``ftyp``.
_QUICKTIME_BOXES: Final = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})
#: Sizes of the BMP info headers Pillow reads (OS/2 and Windows versions).
_BMP_HEADER_SIZES: Final = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


@dataclass(frozen=True)
class MediaLimits:
    """What is accepted when media is saved: the strictest limits common to the providers."""

    image_types: frozenset[str] = frozenset({"image/jpeg", "image/png", "image/bmp", "image/webp"})
    image_min_side: int = 240
    image_max_side: int = 8000
    image_max_bytes: int = 20 * MiB
    #: Decompression-bomb guard, checked from the header before any pixel is decoded.
    max_image_pixels: int = 8000 * 8000
    video_types: frozenset[str] = frozenset({"video/mp4", "video/quicktime"})
    video_min_s: float = 1.0
    video_max_s: float = 30.0
    video_max_bytes: int = 100 * MiB
    voice_types: frozenset[str] = frozenset({"audio/wav", "audio/mpeg"})
    voice_min_s: float = 1.0
    voice_max_s: float = 10.0
    voice_max_bytes: int = 15 * MiB
    #: Decoded pixels held at once across threads (``R2V_MEDIA_MEMORY_MB``); ``None``: no limit.
    memory: MemoryBudget | None = field(default=None, compare=False)

    def max_bytes(self, kind: MediaKind | None) -> int:
        """The largest file of ``kind``; with no kind, the largest of any kind."""
        sizes = {
            MediaKind.IMAGE: self.image_max_bytes,
            MediaKind.VIDEO: self.video_max_bytes,
            MediaKind.VOICE: self.voice_max_bytes,
        }
        return max(sizes.values()) if kind is None else sizes[kind]

    def types(self, kind: MediaKind) -> frozenset[str]:
        """The MIME types accepted for ``kind``."""
        return {
            MediaKind.IMAGE: self.image_types,
            MediaKind.VIDEO: self.video_types,
            MediaKind.VOICE: self.voice_types,
        }[kind]

    def durations(self, kind: MediaKind) -> tuple[float, float]:
        """The shortest and longest accepted clip of a timed ``kind``, in seconds."""
        if kind is MediaKind.VOICE:
            return self.voice_min_s, self.voice_max_s
        return self.video_min_s, self.video_max_s

    def formats(self, kind: MediaKind) -> str:
        """The accepted formats of ``kind`` for a message: "JPEG, PNG, BMP or WEBP"."""
        return _or_list([name for mime, name in FORMAT_NAMES.items() if mime in self.types(kind)])

    def all_formats(self) -> str:
        """Every accepted format, grouped by kind: "JPEG, PNG, BMP, WEBP; MP4, MOV; WAV, MP3"."""
        return "; ".join(
            ", ".join(name for mime, name in FORMAT_NAMES.items() if mime in self.types(kind))
            for kind in MediaKind
        )


DEFAULT_LIMITS: Final = MediaLimits()


@dataclass(frozen=True)
class CheckedFile:
    """A received file that passed every check.

    ``path`` is a temp file in the caller's workdir, named with the extension of its real type,
    holding the cleaned content; the caller owns it (stores it, then deletes it).
    """

    path: Path
    info: MediaInfo


async def receive(
    file: IncomingFile,
    workdir: Path,
    max_bytes: int,
    *,
    kind: MediaKind | None = None,
    limits: MediaLimits = DEFAULT_LIMITS,
) -> Path:
    """Stream an attachment into a new temp file in ``workdir`` and answer its path.

    A file declared larger than ``max_bytes`` is refused before a byte is read; one that turns
    out larger is refused the moment the count passes the limit, its stream closed unread and the
    partial file deleted. An empty file is refused too. ``kind`` and ``limits`` only word the
    refusals.
    """
    if file.declared_size is not None and file.declared_size > max_bytes:
        raise _too_large(describe_amount(file.declared_size), max_bytes, kind)
    path = await asyncio.to_thread(_new_temp_file, workdir)
    try:
        received = await _stream_to(path, file.open(), max_bytes, kind)
        if received == 0:
            raise InvalidMedia(
                "This file is empty (0 bytes); send "
                + (_wanted(kind, limits) if kind else _anything(limits))
                + "."
            )
    except BaseException:
        await _discard(path)
        raise
    return path


async def identify(path: Path, limits: MediaLimits = DEFAULT_LIMITS) -> MediaInfo:
    """What the file at ``path`` is, from its content alone, with every limit checked.

    Raises ``InvalidMedia`` for a file that is not an accepted image, video or voice clip, that is
    damaged, or that is out of limits (bytes, pixels, seconds).
    """
    return await asyncio.to_thread(_identify, path, limits)


async def check_file(
    file: IncomingFile,
    workdir: Path,
    *,
    expect: MediaKind | None = None,
    limits: MediaLimits = DEFAULT_LIMITS,
) -> CheckedFile:
    """Receive an attachment, identify it, check it is the ``expect``-ed kind, and clean it.

    Images are re-saved in their own format as upright pixels alone (EXIF orientation applied,
    colours converted to sRGB when they carried an ICC profile); videos and voice clips are kept
    as received. On any refusal, every temp file this made is gone.
    """
    try:
        return await _check(file, workdir, expect, limits)
    except InvalidMedia as exc:
        raise naming(exc, file.name) from exc


async def _check(
    file: IncomingFile, workdir: Path, expect: MediaKind | None, limits: MediaLimits
) -> CheckedFile:
    received = await receive(file, workdir, limits.max_bytes(expect), kind=expect, limits=limits)
    work = asyncio.ensure_future(asyncio.to_thread(_check_received, received, expect, limits))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        # The thread cannot be interrupted: remove what it makes once it is done.
        work.add_done_callback(_discard_result)
        await _discard(received)
        raise
    except BaseException:
        await _discard(received)
        raise


async def inspect_result(path: Path) -> MediaInfo:
    """Check a provider's finished video before it is delivered, and describe it.

    It must be an MP4 or MOV with a video stream whose first frames and last group of pictures
    decode, and whose packets are all present (a download cut short is caught here). There is no
    duration limit: the provider was asked for the length it made.
    """
    return await asyncio.to_thread(_inspect_result, path)


# --- receiving -------------------------------------------------------------------------------


#: How the temp files of saves and fitting begin (``bot.fitting`` names its own ``fitted-``).
#: How an import names the files it copies out of a ZIP (removed at start when left over).
IMPORT_PREFIX: Final = "import-"
TEMP_PREFIXES: Final = ("incoming-", "fitted-", IMPORT_PREFIX)


#: Bytes read at a time from a local file handed to ``check_file``.
LOCAL_READ_BYTES = 256 * 1024


def local_incoming(path: Path) -> IncomingFile:
    """A local file as ``check_file`` takes attachments: read in chunks, in a thread."""

    async def chunks() -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(path.open, "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, LOCAL_READ_BYTES):
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    return IncomingFile(name=path.name, open=chunks, declared_size=path.stat().st_size)


def remove_leftovers(workdir: Path) -> list[Path]:
    """Delete the temp files a save or a fitting killed half-way left in ``workdir``; answer
    them. Run at start, before anything can be writing there: one process owns a data folder."""
    if not workdir.is_dir():
        return []
    found = [p for p in workdir.iterdir() if p.is_file() and p.name.startswith(TEMP_PREFIXES)]
    _unlink(found)
    return found


def _new_temp_file(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=TEMP_PREFIXES[0], suffix=".part", dir=workdir)
    os.close(handle)
    return Path(name)


async def _stream_to(
    path: Path, chunks: AsyncIterator[bytes], max_bytes: int, kind: MediaKind | None
) -> int:
    """Copy ``chunks`` into ``path``, written a megabyte at a time in a thread; answer the count."""
    out = await asyncio.to_thread(path.open, "wb")
    try:
        received = 0
        pending = bytearray()
        try:
            async for chunk in chunks:
                received += len(chunk)
                if received > max_bytes:
                    raise _too_large(f"over {describe_amount(max_bytes)}", max_bytes, kind)
                pending += chunk
                if len(pending) >= _WRITE_SIZE:
                    await asyncio.to_thread(out.write, bytes(pending))
                    pending.clear()
        finally:
            await _close_stream(chunks)
        if pending:
            await asyncio.to_thread(out.write, bytes(pending))
        return received
    finally:
        await asyncio.to_thread(out.close)


async def _close_stream(chunks: AsyncIterator[bytes]) -> None:
    """Close an attachment's stream so its download stops (async generators have ``aclose``)."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


async def _discard(*paths: Path) -> None:
    """Delete temp files, even when the task awaiting this is being cancelled."""
    await asyncio.shield(asyncio.to_thread(_unlink, paths))


def _unlink(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _discard_result(work: asyncio.Future[CheckedFile]) -> None:
    if not work.cancelled() and work.exception() is None:
        asyncio.get_running_loop().run_in_executor(None, _unlink, [work.result().path])


def _check_received(received: Path, expect: MediaKind | None, limits: MediaLimits) -> CheckedFile:
    with held(limits.memory, _decode_cost(received, limits)):
        return _check_and_clean(received, expect, limits)


def _decode_cost(path: Path, limits: MediaLimits) -> int:
    """What checking and re-saving ``path`` holds decoded, from its header alone: an image's
    pixels (twice when it must be turned upright or colour-converted), else nothing worth
    budgeting (clips are decoded a frame at a time). Oversized or unreadable headers cost
    nothing here: ``_examine`` refuses them before decoding."""
    with path.open("rb") as handle:
        found = _sniff(handle.read(_HEAD_SIZE))
    if found is None or found[0] is not MediaKind.IMAGE or found[1] not in IMAGE_READERS:
        return 0
    try:
        with IMAGE_READERS[found[1]](str(path)) as image:
            width, height = image.size
            if width * height > limits.max_image_pixels:
                return 0
            # getexif() would decode a PNG to look for a late eXIf chunk: read the header's
            # info alone, and count a second copy whenever it may have to be turned.
            copies = 2 if image.info.get("exif") or image.info.get("icc_profile") else 1
            return image_cost(width, height, image.mode, copies=copies)
    except Exception:  # an unreadable header: refused, undecoded, by the check itself
        return 0


def _check_and_clean(received: Path, expect: MediaKind | None, limits: MediaLimits) -> CheckedFile:
    info, image = _examine(received, limits, expect)
    final = received.with_suffix(info.extension)
    if image is None:
        received.replace(final)
        return CheckedFile(final, info)
    try:
        width, height = _save_clean(image, info.mime, final)
    except Exception as exc:
        final.unlink(missing_ok=True)
        fmt = FORMAT_NAMES[info.mime]
        raise InvalidMedia(
            f"This {fmt} image could not be re-saved without its metadata; send it as another "
            f"image ({limits.formats(MediaKind.IMAGE)})."
        ) from exc
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    finally:
        image.close()
    received.unlink(missing_ok=True)  # a cancelled caller may have removed it already
    info = MediaInfo(
        kind=info.kind, mime=info.mime, size=final.stat().st_size, width=width, height=height
    )
    return CheckedFile(final, info)


# --- identifying -----------------------------------------------------------------------------


def _identify(path: Path, limits: MediaLimits) -> MediaInfo:
    with held(limits.memory, _decode_cost(path, limits)):
        info, image = _examine(path, limits, None)
        if image is not None:
            image.close()
    return info


def _examine(
    path: Path, limits: MediaLimits, expect: MediaKind | None
) -> tuple[MediaInfo, ImageFile.ImageFile | None]:
    """Identify and check a file; for an image also answer it decoded, ready to be cleaned."""
    size = path.stat().st_size
    if size == 0:
        raise InvalidMedia(
            "This file is empty (0 bytes); send "
            + (_wanted(expect, limits) if expect else _anything(limits))
            + "."
        )
    with path.open("rb") as handle:
        head = handle.read(_HEAD_SIZE)
    found = _sniff(head)
    if found is None:
        raise _unrecognised(head, limits, expect)
    kind, mime = found
    fmt = FORMAT_NAMES[mime]
    if expect is not None and kind is not expect:
        raise InvalidMedia(
            f"This file is {_ARTICLES[kind]} ({fmt}); {_wanted(expect, limits)} is expected here."
        )
    if mime not in limits.types(kind):
        raise InvalidMedia(
            f"{fmt} {NOUNS[kind]}s are not accepted; {NOUNS[kind]}s must be {limits.formats(kind)}."
        )
    if size > limits.max_bytes(kind):
        raise InvalidMedia(
            f"This {NOUNS[kind]} is {describe_amount(size)}; {NOUNS[kind]}s may be at most "
            f"{describe_amount(limits.max_bytes(kind))}."
        )
    if kind is MediaKind.IMAGE:
        image, width, height = _read_image(path, mime, limits)
        return MediaInfo(kind, mime, size, width, height), image
    return _probe_clip(path, kind, mime, size, limits), None


def _sniff(head: bytes) -> tuple[MediaKind, str] | None:
    """The kind and MIME type that a file's first bytes claim, or ``None``."""
    if head.startswith(b"\xff\xd8\xff"):
        return MediaKind.IMAGE, "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return MediaKind.IMAGE, "image/png"
    if (
        head.startswith(b"BM")
        and len(head) >= 18
        and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES
    ):
        return MediaKind.IMAGE, "image/bmp"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return MediaKind.IMAGE, "image/webp"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return MediaKind.VOICE, "audio/wav"
    box = head[4:8]
    if box == b"ftyp" and head[8:12] not in _IMAGE_BRANDS:
        return MediaKind.VIDEO, "video/quicktime" if head[8:12] == b"qt  " else "video/mp4"
    if box in _QUICKTIME_BOXES:
        return MediaKind.VIDEO, "video/quicktime"
    if head.startswith(b"ID3") or _mpeg_layer3_sync(head):
        return MediaKind.VOICE, "audio/mpeg"
    return None


def _mpeg_layer3_sync(head: bytes) -> bool:
    """Whether ``head`` starts with an MPEG audio layer III frame header (an MP3 with no tag)."""
    if len(head) < 3 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3
    bitrate, rate = head[2] >> 4, (head[2] >> 2) & 3
    return version != 1 and layer == 1 and bitrate not in (0, 15) and rate != 3


#: Formats people often send that we do not accept, to name them in the refusal.
_KNOWN_OTHERS: Final[tuple[tuple[Callable[[bytes], bool], str, MediaKind | None], ...]] = (
    (lambda h: h.startswith(b"GIF8"), "a GIF image", MediaKind.IMAGE),
    (lambda h: h[:4] in (b"II*\0", b"MM\0*"), "a TIFF image", MediaKind.IMAGE),
    (lambda h: h[4:8] == b"ftyp" and h[8:12] in _IMAGE_BRANDS, "a HEIC or AVIF image", None),
    (lambda h: h.startswith(b"\x1aE\xdf\xa3"), "a WebM or MKV video", MediaKind.VIDEO),
    (lambda h: h.startswith(b"RIFF") and h[8:12] == b"AVI ", "an AVI video", MediaKind.VIDEO),
    (lambda h: h.startswith(b"OggS"), "an Ogg file", MediaKind.VOICE),
    (lambda h: h.startswith(b"fLaC"), "a FLAC file", MediaKind.VOICE),
    (lambda h: h.startswith((b"PK\x03\x04", b"PK\x05\x06")), "a ZIP archive", None),
    (lambda h: h.startswith(b"%PDF"), "a PDF document", None),
)


def _unrecognised(head: bytes, limits: MediaLimits, expect: MediaKind | None) -> InvalidMedia:
    for matches, description, kind in _KNOWN_OTHERS:
        if matches(head):
            kind = expect or kind or MediaKind.IMAGE
            return InvalidMedia(
                f"This file is {description}, which is not accepted; "
                f"{NOUNS[kind]}s must be {limits.formats(kind)}."
            )
    if expect is not None:
        return InvalidMedia(
            f"This file is not {_ARTICLES[expect]} we accept ({limits.formats(expect)})."
        )
    return InvalidMedia(
        f"This file is not an image, video or voice clip we accept ({limits.all_formats()})."
    )


# --- images ----------------------------------------------------------------------------------


def _read_image(path: Path, mime: str, limits: MediaLimits) -> tuple[ImageFile.ImageFile, int, int]:
    """Open an image by its header, check its pixel size, then decode it all."""
    fmt = FORMAT_NAMES[mime]
    try:
        image = IMAGE_READERS[mime](str(path))
    except Exception as exc:  # Decoders of untrusted bytes fail in many ways; all mean unreadable.
        raise damaged_media(f"This {fmt} image", MediaKind.IMAGE, limits) from exc
    try:
        width, height = image.size
        _check_pixels(width, height, limits)
        try:
            image.load()
        except Exception as exc:
            raise damaged_media(f"This {fmt} image", MediaKind.IMAGE, limits) from exc
    except BaseException:
        image.close()
        raise
    return image, width, height


def _check_pixels(width: int, height: int, limits: MediaLimits) -> None:
    low, high = limits.image_min_side, limits.image_max_side
    if not (low <= width <= high and low <= height <= high):
        raise InvalidMedia(
            f"This image is {width}×{height} px; images must be {low}–{high} px on each side."
        )
    if width * height > limits.max_image_pixels:
        raise InvalidMedia(
            f"This image is {width}×{height} px ({width * height / 1e6:.1f} megapixels); "
            f"images may have at most {limits.max_image_pixels / 1e6:.1f} megapixels."
        )


def _save_clean(image: ImageFile.ImageFile, mime: str, dest: Path) -> tuple[int, int]:
    """Write ``image`` to ``dest`` as upright sRGB pixels only, in its own format; answer its size.

    Format settings that keep quality are read from the original first: a JPEG's quantization
    tables and chroma subsampling, a WEBP's losslessness. Only the first frame of an animated
    PNG or WEBP is kept: a reference image is a still.
    """
    params: dict[str, object] = {}
    if mime == "image/jpeg":
        tables = getattr(image, "quantization", None)
        sampling = JpegImagePlugin.get_sampling(image)
        params = {"qtables": tables} if tables else {"quality": 95}
        if sampling >= 0:
            params["subsampling"] = sampling
    elif mime == "image/webp":
        params = {"lossless": True} if webp_is_lossless(image) else {"quality": 90}
    elif mime == "image/png":
        # zlib level 3 is as small as the default 6 on photos and noise, and 2-3× faster.
        params = {"compress_level": 3}
    ImageOps.exif_transpose(image, in_place=True)
    pixels = _to_srgb(image)
    kept: dict[str | tuple[int, int], object] = (
        {"transparency": image.info["transparency"]} if "transparency" in image.info else {}
    )
    pixels.info = kept
    pixels.save(dest, format=FORMAT_NAMES[mime], **params)
    return pixels.size


def _to_srgb(image: Image.Image) -> Image.Image:
    """Bake an embedded ICC profile into the pixels, so dropping it keeps the colours."""
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "RGBA"):
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        converted = ImageCms.profileToProfile(image, source, _srgb(), outputMode=image.mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image  # A broken profile says nothing we could honour; plain pixels it is.
    return converted if converted is not None else image


@cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def webp_is_lossless(image: ImageFile.ImageFile) -> bool:
    """Whether a WEBP's first image chunk is ``VP8L`` (lossless) rather than ``VP8 ``."""
    if not isinstance(image.filename, str) or not image.filename:
        return False
    with open(image.filename, "rb") as handle:
        handle.seek(12)
        while header := handle.read(8):
            if len(header) < 8:
                break
            chunk, length = header[:4], int.from_bytes(header[4:], "little")
            if chunk in (b"VP8L", b"VP8 "):
                return chunk == b"VP8L"
            if chunk == b"ANMF":
                handle.seek(16, os.SEEK_CUR)  # frame header; its image chunks follow
                continue
            handle.seek(length + (length & 1), os.SEEK_CUR)
    return False


# --- videos and voice clips ------------------------------------------------------------------


def _probe_clip(
    path: Path, kind: MediaKind, mime: str, size: int, limits: MediaLimits
) -> MediaInfo:
    """Open a video or voice clip with its own demuxer; check its stream, frames and length."""
    fmt = FORMAT_NAMES[mime]
    what = f"This {fmt} file"
    try:
        container = av.open(str(path), format=DEMUXERS[mime])
    except Exception as exc:
        raise damaged_media(what, kind, limits) from exc
    with container:
        if kind is MediaKind.VIDEO:
            if not container.streams.video:
                raise InvalidMedia(
                    f"{what} has no video stream (no picture); videos must be "
                    f"{limits.formats(MediaKind.VIDEO)} with a picture, and voice clips must be "
                    f"{limits.formats(MediaKind.VOICE)}."
                )
            stream: Stream = container.streams.video[0]
            width = container.streams.video[0].codec_context.width
            height = container.streams.video[0].codec_context.height
            if width * height > limits.max_image_pixels or max(width, height) > (
                limits.image_max_side
            ):
                raise InvalidMedia(
                    f"This video is {width}×{height} px; videos may be at most "
                    f"{limits.image_max_side} px on each side."
                )
        else:
            if not container.streams.audio:
                raise InvalidMedia(
                    f"{what} has no sound; voice clips must be {limits.formats(kind)} audio."
                )
            stream = container.streams.audio[0]
            width = height = 0
        try:
            next(iter(container.decode(stream)))
            container.seek(0)
            end, count, _ = scan_packets(container, stream)
        except Exception as exc:
            raise damaged_media(what, kind, limits) from exc
        if stream.frames and count < stream.frames:
            raise damaged_media(what, kind, limits)  # its index lists frames that are not there
        duration = clip_duration(container, stream, end)
    if duration is None:
        raise damaged_media(what, kind, limits)
    low, high = limits.durations(kind)
    if not low - DURATION_SLACK_S <= duration <= high + DURATION_SLACK_S:
        raise InvalidMedia(
            f"This {NOUNS[kind]} is {duration:.1f} s long; {NOUNS[kind]}s must be "
            f"{low:g}–{high:g} s long."
        )
    return MediaInfo(kind, mime, size, width or None, height or None, round(duration, 3))


def clip_duration(container: InputContainer, stream: Stream, end: int | None) -> float | None:
    """A stream's length in seconds: as its header or its container's states it, or else up to
    ``end``, where its last packet ends (in the stream's time base)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    if end is None or not stream.time_base:
        return None
    return float((end - (stream.start_time or 0)) * stream.time_base)


def scan_packets(container: InputContainer, stream: Stream) -> tuple[int | None, int, int | None]:
    """Demux every packet of ``stream`` without decoding: its end time, count and last keyframe."""
    end: int | None = None
    count = 0
    last_key: int | None = None
    for packet in container.demux(stream):
        if packet.size == 0 or packet.pts is None:
            continue
        count += 1
        end = max(end or 0, packet.pts + (packet.duration or 0))
        if packet.is_keyframe:
            last_key = packet.pts
    return end, count, last_key


# --- provider results ------------------------------------------------------------------------


def _inspect_result(path: Path) -> MediaInfo:
    what = "The provider's video"
    size = path.stat().st_size
    if size == 0:
        raise InvalidMedia(f"{what} is empty (0 bytes).")
    with path.open("rb") as handle:
        found = _sniff(handle.read(_HEAD_SIZE))
    if found is None or found[0] is not MediaKind.VIDEO:
        raise InvalidMedia(f"{what} is not an MP4 or MOV file.")
    mime = found[1]
    try:
        container = av.open(str(path), format=DEMUXERS[mime])
    except Exception as exc:
        raise InvalidMedia(f"{what} cannot be read: it is damaged or incomplete.") from exc
    with container:
        if not container.streams.video:
            raise InvalidMedia(f"{what} has no video stream (no picture).")
        stream = container.streams.video[0]
        try:
            first = sum(1 for _ in islice(container.decode(stream), RESULT_FIRST_FRAMES))
            container.seek(0)
            end, count, last_key = scan_packets(container, stream)
            complete = count > 0 and (not stream.frames or count >= stream.frames)
            last = 0
            if complete and last_key is not None:
                container.seek(last_key, stream=stream)
                last = sum(1 for _ in container.decode(stream))
        except Exception as exc:
            raise InvalidMedia(f"{what} cannot be read: it is damaged or incomplete.") from exc
        if not first or not complete or not last:
            raise InvalidMedia(
                f"{what} is incomplete: its frames do not all decode "
                f"({count} of {stream.frames or '?'} packets present)."
            )
        width, height = stream.codec_context.width, stream.codec_context.height
        duration = clip_duration(container, stream, end)
    return MediaInfo(
        MediaKind.VIDEO,
        mime,
        size,
        width or None,
        height or None,
        round(duration, 3) if duration is not None else None,
    )


# --- messages --------------------------------------------------------------------------------

#: How every refusal about one received file begins: "This file is…", "This PNG image cannot…".
_SUBJECT: Final = re.compile(
    r"This (?:(?P<format>[A-Z0-9]+ (?:image|file))|file|image|video|voice clip) "
)


def naming(error: InvalidMedia, name: str) -> InvalidMedia:
    """``error`` about the file called ``name``, said with its name ("ref2.png is a ZIP
    archive…"), so a refusal among several files says which one."""
    name = " ".join(name.split())
    if not name or _SUBJECT.match(error.message) is None:
        return error

    def subject(found: re.Match[str]) -> str:
        return f"{name} ({found['format']}) " if found["format"] else f"{name} "

    return InvalidMedia(_SUBJECT.sub(subject, error.message, count=1), code=error.code)


def _too_large(amount: str, max_bytes: int, kind: MediaKind | None) -> InvalidMedia:
    noun = f"{NOUNS[kind]}s" if kind else "files"
    return InvalidMedia(
        f"This file is {amount}; {noun} may be at most {describe_amount(max_bytes)}."
    )


def damaged_media(what: str, kind: MediaKind, limits: MediaLimits) -> InvalidMedia:
    return InvalidMedia(
        f"{what} cannot be read: it is damaged or incomplete. Send it again, or send another "
        f"{NOUNS[kind]} ({limits.formats(kind)})."
    )


def _wanted(kind: MediaKind, limits: MediaLimits) -> str:
    return f"{_ARTICLES[kind]} ({limits.formats(kind)})"


def _anything(limits: MediaLimits) -> str:
    return f"an image, video or voice clip ({limits.all_formats()})"


def describe_amount(size: int) -> str:
    """A size for a message, in MB as limits are stated (KB below one), rounded up so a file a
    byte over a limit never reads as equal to it."""
    if size >= MiB:
        tenths = math.ceil(size * 10 / MiB)
        return f"{tenths // 10} MB" if tenths % 10 == 0 else f"{tenths / 10:.1f} MB"
    return f"{math.ceil(size / 1024)} KB"


def _or_list(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names) or "nothing"
    return f"{', '.join(names[:-1])} or {names[-1]}"


# --- already clean ---------------------------------------------------------------------------

#: WEBP chunks that hold pixels and nothing else, and the VP8X flags of ICC, EXIF, XMP, animation.
_WEBP_PIXEL_CHUNKS: Final = frozenset({b"VP8 ", b"VP8L", b"VP8X", b"ALPH"})
_WEBP_EXTRA_FLAGS: Final = 0x20 | 0x08 | 0x04 | 0x02
#: A JFIF APP0 segment with no thumbnail: what Pillow writes, and nothing else.
_JFIF_LENGTH: Final = 14


def is_clean_image(path: Path, mime: str) -> bool:
    """Whether an image that passed ``check_file`` holds pixels alone already, so that keeping
    its own bytes keeps nothing a save would strip.

    Re-saving a JPEG or a lossy WEBP changes its bytes every time, so a roster moved by export and
    import would get new hashes and lose a little quality on each move; this tells when the file
    may be kept as it is. Only the two shapes ``_save_clean`` writes count as clean: a JPEG whose
    only marker segment is a bare JFIF header and that ends at its EOI, and a WEBP made of pixel
    chunks only with no ICC, EXIF, XMP or animation flag and nothing after its RIFF body.
    """
    data = path.read_bytes()
    if mime == "image/jpeg":
        with JpegImagePlugin.JpegImageFile(str(path)) as image:
            segments = image.applist
        return data.endswith(b"\xff\xd9") and all(
            marker == "APP0"
            and body.startswith(b"JFIF\0")
            and len(body) == _JFIF_LENGTH
            and body[-2:] == b"\0\0"
            for marker, body in segments
        )
    if mime == "image/webp":
        if len(data) < 12 or int.from_bytes(data[4:8], "little") + 8 != len(data):
            return False
        position = 12
        while position + 8 <= len(data):
            chunk, length = (
                data[position : position + 4],
                int.from_bytes(data[position + 4 : position + 8], "little"),
            )
            if chunk not in _WEBP_PIXEL_CHUNKS:
                return False
            if chunk == b"VP8X" and data[position + 8] & _WEBP_EXTRA_FLAGS:
                return False
            position += 8 + length + (length & 1)
        return position == len(data)
    return False
