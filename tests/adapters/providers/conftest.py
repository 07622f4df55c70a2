"""Fixtures every provider's tests use."""

from __future__ import annotations

import pytest

from tests.media_factory import make_video


@pytest.fixture(scope="module")
def result_mp4(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The MP4 a provider's fake serves as the video it made."""
    path = make_video(tmp_path_factory.mktemp("provider") / "result.mp4", seconds=1.0)
    return path.read_bytes()
