"""The console gets both: ``/gallery`` prints a link that opens while the bot runs, and
``/character export`` writes the ZIP into the outbox."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.console import Console
from tests.media_factory import make_image

pytestmark = pytest.mark.slow


def replied(console: Console, key: str) -> dict[str, Any]:
    """The first reply whose data has ``key``, read as the console prints it."""
    while True:
        for event in console.events:
            if event["type"] == "reply" and key in event.get("data", {}):
                return event
        assert console._take(60) is not None, console.stderr


def test_gallery_prints_a_working_link_and_export_fills_the_outbox(tmp_path: Path) -> None:
    make_image(tmp_path / "alice.png", size=(320, 320))
    console = Console(tmp_path, "--user", "ann", "--admin")
    assert console.process.stdin is not None
    console.process.stdin.write("/character create name:alice image:alice.png\n/gallery\n")
    console.process.stdin.flush()
    link = replied(console, "link")["data"]["link"]
    assert link.startswith("http://127.0.0.1:")  # no public URL: the console's own address
    page = httpx.get(link)
    assert page.status_code == 200 and 'data-name="alice"' in page.text
    console.process.stdin.write("/character export\n")
    console.process.stdin.close()
    exported = replied(console, "path")
    assert console.finish() == 0
    path = Path(exported["path"])
    assert path.parent == tmp_path / "data" / "outbox" and path.suffix == ".zip"
    with zipfile.ZipFile(path) as archive:
        assert "manifest.json" in archive.namelist()
