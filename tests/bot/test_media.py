"""Media checks as a user meets them: what is accepted, what is refused and why, what is kept.

Every file here is real (made by ``tests.media_factory``); every refusal must carry the stable
code ``invalid_media`` and leave nothing behind in the work folder.
"""

from __future__ import annotations

import asyncio
import io
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
import pytest
from PIL import ExifTags, Image

from bot.errors import InvalidMedia
from bot.media import (
    DEFAULT_LIMITS,
    MediaLimits,
    check_file,
    identify,
    inspect_result,
    receive,
)
from bot.models import IncomingFile, MediaKind
from tests.media_factory import (
    bytes_file,
    local_file,
    make_audio_only_mp4,
    make_image,
    make_mp3,
    make_video,
    make_wav,
    png_header_claiming,
)

MiB = 1024 * 1024


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "work"


@pytest.fixture
def src(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    return folder


def leftovers(workdir: Path) -> list[str]:
    return sorted(p.name for p in workdir.iterdir()) if workdir.exists() else []


async def refused(
    file: IncomingFile,
    workdir: Path,
    *,
    expect: MediaKind | None = None,
    limits: MediaLimits = DEFAULT_LIMITS,
) -> str:
    """Check a file that must be refused; answer the message after the common assertions."""
    with pytest.raises(InvalidMedia) as caught:
        await check_file(file, workdir, expect=expect, limits=limits)
    assert caught.value.code == "invalid_media"
    assert leftovers(workdir) == []
    return caught.value.message


@dataclass
class CountingSource:
    """An attachment stream that would go on for ``chunks`` × 64 KiB, recording what was pulled."""

    chunks: int
    pulled: int = 0
    closed: bool = False
    chunk: bytes = field(default=b"\xff\xd8\xff" + bytes(64 * 1024 - 3))

    async def stream(self) -> AsyncIterator[bytes]:
        try:
            for _ in range(self.chunks):
                self.pulled += 1
                yield self.chunk
        finally:
            self.closed = True

    def file(self, declared_size: int | None = None) -> IncomingFile:
        return IncomingFile(name="big.jpg", open=self.stream, declared_size=declared_size)


def cut_between_frames(path: Path) -> Path:
    """Cut a video where a frame starts, 3/4 through: every packet left is whole and decodes,
    only the index's frame count can tell that some are missing."""
    with av.open(str(path)) as container:
        starts = [p.pos for p in container.demux(video=0) if p.size and p.pos is not None]
    data = path.read_bytes()
    path.write_bytes(data[: starts[len(starts) * 3 // 4]])
    return path


# --- accepted files --------------------------------------------------------------------------

Maker = Callable[[Path], Path]

GOOD: list[tuple[str, Maker, MediaKind, str, float | None]] = [
    ("a.png", lambda p: make_image(p, fmt="PNG"), MediaKind.IMAGE, "image/png", None),
    ("a.jpg", lambda p: make_image(p, fmt="JPEG"), MediaKind.IMAGE, "image/jpeg", None),
    ("a.webp", lambda p: make_image(p, fmt="WEBP"), MediaKind.IMAGE, "image/webp", None),
    ("a.bmp", lambda p: make_image(p, fmt="BMP"), MediaKind.IMAGE, "image/bmp", None),
    ("a.mp4", lambda p: make_video(p, seconds=2.0), MediaKind.VIDEO, "video/mp4", 2.0),
    (
        "a.mov",
        lambda p: make_video(p, seconds=3.0, audio=True, container="mov"),
        MediaKind.VIDEO,
        "video/quicktime",
        3.0,
    ),
    ("a.wav", lambda p: make_wav(p, seconds=2.5), MediaKind.VOICE, "audio/wav", 2.5),
    ("a.mp3", lambda p: make_mp3(p, seconds=3.0), MediaKind.VOICE, "audio/mpeg", 3.0),
    (
        "untagged.mp3",
        lambda p: make_mp3(p, seconds=2.0, id3=False),
        MediaKind.VOICE,
        "audio/mpeg",
        2.0,
    ),
]


@pytest.mark.parametrize(
    ("name", "make", "kind", "mime", "seconds"), GOOD, ids=[g[0] for g in GOOD]
)
async def test_accepted_files_are_identified_from_their_content(
    src: Path,
    workdir: Path,
    name: str,
    make: Maker,
    kind: MediaKind,
    mime: str,
    seconds: float | None,
) -> None:
    # The name says nothing: every file is saved as "upload.bin".
    path = make(src / name).rename(src / "upload.bin")

    info = await identify(path)

    assert (info.kind, info.mime, info.size) == (kind, mime, path.stat().st_size)
    if seconds is None:
        assert info.duration is None
    else:
        assert info.duration == pytest.approx(seconds, abs=0.1)
    if kind is MediaKind.IMAGE:
        assert (info.width, info.height) == (320, 320)
    if kind is MediaKind.VIDEO:
        assert (info.width, info.height) == (320, 240)

    checked = await check_file(local_file(path), workdir, expect=kind)

    assert checked.info.kind is kind and checked.info.mime == mime
    assert checked.path.suffix == info.extension
    assert checked.info.size == checked.path.stat().st_size
    assert leftovers(workdir) == [checked.path.name]
    if kind is not MediaKind.IMAGE:
        assert checked.path.read_bytes() == path.read_bytes()


async def test_a_file_of_unknown_kind_may_be_as_large_as_the_largest_kind_allows(
    src: Path, workdir: Path
) -> None:
    video = make_video(src / "clip.mp4")  # about 11 KB
    limits = MediaLimits(image_max_bytes=4096, voice_max_bytes=4096, video_max_bytes=MiB)

    assert video.stat().st_size > 4096

    checked = await check_file(local_file(video), workdir, limits=limits)

    assert checked.info.kind is MediaKind.VIDEO


# --- refusals --------------------------------------------------------------------------------


async def test_text_named_png_is_refused(workdir: Path) -> None:
    file = bytes_file("cat.png", b"definitely a picture of a cat\n" * 20)

    message = await refused(file, workdir)

    assert "not an image, video or voice clip we accept" in message
    assert "JPEG, PNG, BMP, WEBP; MP4, MOV; WAV, MP3" in message


async def test_truncated_png_is_refused(src: Path, workdir: Path) -> None:
    path = src / "noise.png"
    Image.effect_noise((400, 400), 80).convert("RGB").save(path)
    data = path.read_bytes()

    message = await refused(bytes_file("noise.png", data[: len(data) // 2]), workdir)

    assert message.startswith("noise.png (PNG image) cannot be read")


async def test_image_header_claiming_a_huge_size_is_refused_before_decoding(
    src: Path, workdir: Path
) -> None:
    path = png_header_claiming(src / "bomb.png", 100_000, 100_000)

    started = time.perf_counter()
    message = await refused(local_file(path), workdir)
    elapsed = time.perf_counter() - started

    # Decoding would need 30 GB and fail as "damaged"; the size in the message comes from the
    # header check alone, and no decoder could have run in this time.
    assert "100000×100000 px" in message
    assert "240–8000 px on each side" in message
    assert elapsed < 0.5


async def test_pixel_count_limit_applies_even_when_each_side_fits(src: Path, workdir: Path) -> None:
    path = png_header_claiming(src / "wide.png", 3000, 3000)
    limits = MediaLimits(max_image_pixels=4_000_000)

    message = await refused(local_file(path), workdir, limits=limits)

    assert "3000×3000 px (9.0 megapixels)" in message
    assert "at most 4.0 megapixels" in message


async def test_too_small_image_is_refused(src: Path, workdir: Path) -> None:
    path = make_image(src / "tiny.png", size=(100, 100))

    message = await refused(local_file(path), workdir)

    assert message == "tiny.png is 100×100 px; images must be 240–8000 px on each side."


async def test_too_long_video_is_refused(src: Path, workdir: Path) -> None:
    path = make_video(src / "long.mp4", seconds=40, size=(64, 64), fps=2)

    message = await refused(local_file(path), workdir, expect=MediaKind.VIDEO)

    assert message == "long.mp4 is 40.0 s long; videos must be 1–30 s long."


async def test_too_long_voice_clip_is_refused(src: Path, workdir: Path) -> None:
    path = make_wav(src / "speech.wav", seconds=12, rate=8000)

    message = await refused(local_file(path), workdir, expect=MediaKind.VOICE)

    assert message == "speech.wav is 12.0 s long; voice clips must be 1–10 s long."


@pytest.mark.parametrize("kind", [MediaKind.VIDEO, MediaKind.VOICE])
async def test_too_short_clip_is_refused(src: Path, workdir: Path, kind: MediaKind) -> None:
    path = (
        make_video(src / "blink.mp4", seconds=0.5, size=(64, 64), fps=8)
        if kind is MediaKind.VIDEO
        else make_wav(src / "blip.wav", seconds=0.5, rate=8000)
    )

    message = await refused(local_file(path), workdir, expect=kind)

    assert "is 0.5 s long" in message
    assert ("1–30 s" if kind is MediaKind.VIDEO else "1–10 s") in message


async def test_video_cut_short_is_refused(src: Path, workdir: Path) -> None:
    path = cut_between_frames(make_video(src / "clip.mp4", seconds=3, faststart=True))

    message = await refused(local_file(path), workdir, expect=MediaKind.VIDEO)

    assert message.startswith("clip.mp4 (MP4 file) cannot be read: it is damaged or incomplete.")


async def test_audio_only_mp4_is_refused_as_a_video(src: Path, workdir: Path) -> None:
    path = make_audio_only_mp4(src / "sound.mp4")

    for expect in (MediaKind.VIDEO, None):
        message = await refused(local_file(path), workdir, expect=expect)
        assert "has no video stream" in message
        assert "voice clips must be WAV or MP3" in message


async def test_video_given_for_an_image_is_refused_by_kind(src: Path, workdir: Path) -> None:
    path = make_video(src / "clip.png")

    message = await refused(local_file(path), workdir, expect=MediaKind.IMAGE)

    assert message == (
        "clip.png is a video (MP4); an image (JPEG, PNG, BMP or WEBP) is expected here."
    )


async def test_video_given_for_a_voice_clip_is_refused(src: Path, workdir: Path) -> None:
    path = make_video(src / "talking.mp4", audio=True)

    message = await refused(local_file(path), workdir, expect=MediaKind.VOICE)

    assert "a voice clip (WAV or MP3) is expected here" in message


async def test_gif_is_refused_by_name(src: Path, workdir: Path) -> None:
    path = src / "anim.gif"
    Image.new("P", (300, 300)).save(path)

    message = await refused(local_file(path), workdir)

    assert (
        message
        == "anim.gif is a GIF image, which is not accepted; images must be JPEG, PNG, BMP or WEBP."
    )


async def test_format_left_out_of_the_limits_is_refused(src: Path, workdir: Path) -> None:
    path = make_image(src / "a.bmp", fmt="BMP")
    limits = MediaLimits(image_types=frozenset({"image/jpeg", "image/png"}))

    message = await refused(local_file(path), workdir, limits=limits)

    assert message == "BMP images are not accepted; images must be JPEG or PNG."


async def test_empty_file_is_refused(workdir: Path) -> None:
    message = await refused(bytes_file("empty.png", b""), workdir)

    assert "empty" in message


async def test_oversized_file_is_refused_by_its_declared_size_without_reading(
    workdir: Path,
) -> None:
    source = CountingSource(chunks=400)

    message = await refused(
        source.file(declared_size=20 * MiB + 1), workdir, expect=MediaKind.IMAGE
    )

    assert source.pulled == 0
    assert message == "big.jpg is 20.1 MB; images may be at most 20 MB."


async def test_oversized_file_is_refused_while_reading_and_its_stream_is_closed(
    workdir: Path,
) -> None:
    # 400 chunks of 64 KiB would be 25 MB; the limit is 1 MB, reached at the 17th chunk.
    source = CountingSource(chunks=400)
    limits = MediaLimits(image_max_bytes=1 * MiB)

    message = await refused(source.file(), workdir, expect=MediaKind.IMAGE, limits=limits)

    assert source.pulled == 17
    assert source.closed
    assert message == "big.jpg is over 1 MB; images may be at most 1 MB."


async def test_cancelled_download_leaves_nothing_behind(workdir: Path) -> None:
    first_chunk_in = asyncio.Event()
    closed = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        try:
            yield b"\x89PNG\r\n\x1a\n" + bytes(64 * 1024)
            first_chunk_in.set()
            await asyncio.Event().wait()  # the platform's CDN stops answering
            yield b""
        finally:
            closed.set()

    task = asyncio.create_task(check_file(IncomingFile("slow.png", stalls), workdir))
    await asyncio.wait_for(first_chunk_in.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert closed.is_set()
    assert leftovers(workdir) == []


async def test_a_file_over_its_kinds_limit_is_refused_after_identification(
    src: Path, workdir: Path
) -> None:
    path = make_image(src / "big.bmp", fmt="BMP")  # 300 KB of pixels
    limits = MediaLimits(image_max_bytes=100 * 1024)

    message = await refused(local_file(path), workdir, limits=limits)

    assert message == "big.bmp is 301 KB; images may be at most 100 KB."


async def test_receive_keeps_every_byte_of_an_accepted_stream(workdir: Path) -> None:
    data = bytes(range(256)) * 10_000  # 2.4 MB: several buffered writes

    path = await receive(bytes_file("blob", data), workdir, max_bytes=len(data))

    assert path.read_bytes() == data
    assert path.parent == workdir


# --- cleaning --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
async def test_saved_image_keeps_pixels_only_and_stays_upright(
    src: Path, workdir: Path, fmt: str
) -> None:
    # Stored 400×300 with "turn 90° clockwise" in its EXIF: upright, it is 300×400 and the white
    # mark of the stored top-left corner sits at the top right.
    path = make_image(
        src / "photo",
        size=(400, 300),
        fmt=fmt,
        exif=True,
        orientation=6,
        icc=True,
        comment=b"shot at home" if fmt == "JPEG" else None,
    )
    original = path.read_bytes()
    assert b"TestCam" in original

    checked = await check_file(local_file(path), workdir, expect=MediaKind.IMAGE)

    cleaned = checked.path.read_bytes()
    assert b"TestCam" not in cleaned and b"Exif" not in cleaned
    assert b"shot at home" not in cleaned
    with Image.open(checked.path) as image:
        assert image.format == fmt
        assert not image.getexif()
        assert not image.getexif().get_ifd(ExifTags.IFD.GPSInfo)
        assert "icc_profile" not in image.info and "exif" not in image.info
        assert image.size == (300, 400)
        assert (checked.info.width, checked.info.height) == (300, 400)
        rgb = image.convert("RGB")
        assert min(rgb.getpixel((295, 5))) > 230  # type: ignore[arg-type]
        assert max(rgb.getpixel((5, 395))) < 240  # type: ignore[arg-type]


async def test_png_transparency_survives_cleaning(src: Path, workdir: Path) -> None:
    path = src / "cutout.png"
    image = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    image.paste((10, 200, 10, 255), (100, 100, 200, 200))
    image.save(path)

    checked = await check_file(local_file(path), workdir)

    with Image.open(checked.path) as cleaned:
        assert cleaned.mode == "RGBA"
        assert cleaned.getpixel((0, 0)) == (0, 0, 0, 0)
        assert cleaned.getpixel((150, 150)) == (10, 200, 10, 255)


# --- provider results ------------------------------------------------------------------------


async def test_result_video_is_accepted_with_its_length(src: Path) -> None:
    path = make_video(src / "result.mp4", seconds=45, size=(64, 48), fps=4)

    info = await inspect_result(path)

    assert (info.kind, info.mime, info.size) == (MediaKind.VIDEO, "video/mp4", path.stat().st_size)
    assert info.duration == pytest.approx(45, abs=0.1)
    assert (info.width, info.height) == (64, 48)


@pytest.mark.parametrize("faststart", [False, True], ids=["index-last", "index-first"])
async def test_result_video_cut_short_is_refused(src: Path, faststart: bool) -> None:
    path = make_video(src / "result.mp4", seconds=4, faststart=faststart)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])

    with pytest.raises(InvalidMedia) as caught:
        await inspect_result(path)

    assert caught.value.code == "invalid_media"
    assert caught.value.message.startswith("The provider's video")


async def test_result_video_cut_between_two_frames_is_refused(src: Path) -> None:
    path = cut_between_frames(make_video(src / "result.mp4", seconds=4, faststart=True))

    with pytest.raises(InvalidMedia, match="The provider's video is incomplete"):
        await inspect_result(path)


async def test_result_that_is_not_a_video_is_refused(src: Path) -> None:
    path = src / "result.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 40)

    with pytest.raises(InvalidMedia, match="The provider's video cannot be read"):
        await inspect_result(path)


async def test_result_without_a_picture_is_refused(src: Path) -> None:
    path = make_audio_only_mp4(src / "result.mp4")

    with pytest.raises(InvalidMedia, match="The provider's video has no video stream"):
        await inspect_result(path)


async def test_a_refusal_names_the_file_and_what_it_really_is(workdir: Path) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as packed:
        packed.writestr("inside.txt", "not a picture")
    message = await refused(bytes_file("ref2.png", archive.getvalue()), workdir)
    assert message.startswith("ref2.png is a ZIP archive, which is not accepted")
