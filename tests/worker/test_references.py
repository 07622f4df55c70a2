"""Reference files turned into the pictures VACE is given: letterboxed on white at the clip's
size, a video's middle frame, and a clear refusal for anything that is not an image or video."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bot.errors import InvalidMedia
from tests.media_factory import make_image, make_video
from worker.references import prepare_reference

SIZE = (160, 96)


def pixel(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    value = image.getpixel((x, y))
    assert isinstance(value, tuple)
    return value


def test_a_tall_image_is_centred_between_white_bars(tmp_path: Path) -> None:
    source = make_image(tmp_path / "tall.png", size=(300, 600), color=(200, 30, 30))
    out = tmp_path / "ref.png"

    assert prepare_reference(source, out, SIZE, 1) == "image"

    with Image.open(out) as picture:
        assert picture.size == SIZE and picture.mode == "RGB"
        assert pixel(picture, 2, SIZE[1] // 2) == (255, 255, 255)  # bar on the left
        assert pixel(picture, SIZE[0] - 3, SIZE[1] // 2) == (255, 255, 255)  # and the right
        red = pixel(picture, SIZE[0] // 2, SIZE[1] - 3)
        assert red[0] > 150 and red[1] < 80  # the picture itself fills the height


def test_transparency_is_laid_over_white_and_exif_rotation_is_applied(tmp_path: Path) -> None:
    clear = tmp_path / "clear.png"
    Image.new("RGBA", (400, 240), (0, 0, 0, 0)).save(clear)
    out = tmp_path / "ref.png"
    prepare_reference(clear, out, SIZE, 1)
    with Image.open(out) as picture:
        assert pixel(picture, SIZE[0] // 2, SIZE[1] // 2) == (255, 255, 255)

    # A landscape photo whose EXIF says "turn 90°" is portrait when shown, so it gets bars.
    turned = make_image(tmp_path / "turned.jpg", size=(480, 240), fmt="JPEG", orientation=6)
    prepare_reference(turned, out, SIZE, 2)
    with Image.open(out) as picture:
        assert pixel(picture, 2, SIZE[1] // 2) == (255, 255, 255)


def test_a_video_gives_its_middle_frame(tmp_path: Path) -> None:
    # make_video's red channel climbs from 0 at the first frame to 255 at the last.
    video = make_video(tmp_path / "clip.mp4", seconds=2.0, size=(160, 96), fps=12)
    out = tmp_path / "ref.png"

    assert prepare_reference(video, out, SIZE, 1) == "video"

    with Image.open(out) as picture:
        red = pixel(picture, SIZE[0] // 2, SIZE[1] // 2)[0]
    assert 100 < red < 160


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"just some text, not a picture\n" * 20, "is not one of the JPEG, PNG"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "Reference 2 cannot be used"),
    ],
)
def test_what_is_not_an_image_or_video_is_refused(
    tmp_path: Path, content: bytes, words: str
) -> None:
    source = tmp_path / "upload"
    source.write_bytes(content)
    with pytest.raises(InvalidMedia, match=words) as caught:
        prepare_reference(source, tmp_path / "ref.png", SIZE, 2)
    assert caught.value.code == "invalid_media"
    assert not (tmp_path / "ref.png").exists()


def test_a_truncated_image_is_refused(tmp_path: Path) -> None:
    whole = make_image(tmp_path / "whole.jpg", size=(640, 480), fmt="JPEG").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: len(whole) // 3])
    with pytest.raises(InvalidMedia, match="could not be decoded"):
        prepare_reference(cut, tmp_path / "ref.png", SIZE, 1)
