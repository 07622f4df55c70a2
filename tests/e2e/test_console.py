"""The console as a user (or a script) drives it: a subprocess, JSON events, real files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import pytest

from tests.e2e.console import Console
from tests.media_factory import make_image, make_video, make_wav

pytestmark = pytest.mark.slow


@pytest.fixture
def media(tmp_path: Path) -> Path:
    make_image(tmp_path / "alice.png", size=(480, 640))
    make_image(tmp_path / "bob.jpg", size=(400, 400), fmt="JPEG", color=(20, 90, 200))
    make_video(tmp_path / "carol.mp4", seconds=2.0, size=(320, 240))
    make_wav(tmp_path / "alice.wav", seconds=2.0)
    (tmp_path / "notes.png").write_text("this is text, not a picture")
    return tmp_path


def test_a_roster_session_prints_only_json_events(media: Path) -> None:
    script = (
        "\n".join(
            [
                "# comments and blank lines are skipped",
                "",
                "/character create name:alice image:alice.png voice:alice.wav "
                'description:"our hero"',
                "/character create name:Bob image:bob.jpg",
                "/character create name:ALICE image:bob.jpg",
                "/character create name:eve image:notes.png",
                "/character list",
                "/character rename name:bob new:robert",
                "/character delete name:alice",
                "/character list",
                '/generate prompt:"@robert waves at @@home" duration:4 dry_run:true',
                '/generate prompt:"@robrt waves"',
                "/frobnicate",
            ]
        )
        + "\n"
    )
    console = Console(media, "--user", "ann", script=script)
    assert console.finish() == 0
    assert all(line.startswith("{") for line in console.raw_lines), console.raw_lines
    kinds = [(e["type"], e.get("code")) for e in console.events]
    assert kinds == [
        ("reply", None),
        ("reply", None),
        ("error", "name_taken"),
        ("error", "invalid_media"),
        ("reply", None),
        ("reply", None),
        ("reply", None),
        ("reply", None),
        ("reply", None),
        ("error", "unknown_character"),
        ("error", "unknown_command"),
    ]
    events = console.events
    assert "alice" in events[2]["text"]
    assert events[4]["data"]["characters"] == ["alice", "Bob"]
    assert events[7]["data"]["characters"] == ["robert"]
    dry = events[8]
    assert dry["data"]["prompt"] == "Image 1 waves at @home"
    assert dry["data"]["slots"] == [
        {"label": "Image 1", "source": "@robert", "kind": "image", "voice": False}
    ]
    assert not (media / "data" / "outbox").exists(), "a dry run makes no job"
    assert "Did you mean @robert?" in events[9]["text"]


def test_two_characters_become_a_delivered_clip(media: Path) -> None:
    script = (
        "/character create name:alice image:alice.png voice:alice.wav\n"
        "/character create name:carol video:carol.mp4\n"
        '/generate prompt:"@alice dances with @carol on a rooftop" duration:3\n'
    )
    console = Console(media, script=script)
    assert console.finish() == 0, console.stderr
    queued = next(e for e in console.events if e["type"] == "reply" and e.get("job"))
    job = queued["job"]
    states = [e["state"] for e in console.events if e["type"] == "status" and e["job"] == job]
    assert states[0] == "queued" and states[-1] == "delivered"
    assert "failed" not in states
    videos = [e for e in console.events if e["type"] == "video"]
    assert len(videos) == 1 and videos[0]["job"] == job
    path = Path(videos[0]["path"])
    assert path == (media / "data" / "outbox" / f"{job}.mp4").resolve()
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        assert (video.width, video.height) == (1280, 720)
        assert container.streams.audio, "the voice clip is the audio track"
        assert container.duration is not None
        assert abs(container.duration / 1_000_000 - 3.0) <= 0.1
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == 72


def _start_job(media: Path, env: dict[str, str]) -> tuple[Console, str]:
    script = (
        '/character create name:alice image:alice.png\n/generate prompt:"@alice waves" duration:2\n'
    )
    console = Console(media, script=script, env=env)
    queued = console.wait_for(type="status", state="queued")
    return console, str(queued["job"])


def _killed_and_restarted(
    media: Path, console: Console, job: str
) -> tuple[Console, list[dict[str, Any]]]:
    """Kill the console before it posts a video, then run it again with nothing to do: the
    restarted console, and the videos it posted (the job's, once)."""
    console.kill()
    assert not [e for e in console.events if e["type"] == "video"]

    again = Console(media, script="")
    assert again.finish() == 0, again.stderr
    videos = [e for e in again.events if e["type"] == "video"]
    assert [v["job"] for v in videos] == [job]
    return again, videos


def test_a_job_killed_while_rendering_is_delivered_once_after_restart(media: Path) -> None:
    console, job = _start_job(media, {"R2V_STORYBOARD_RENDER_SECONDS": "60"})
    console.wait_for(type="status", job=job, state="submitted")
    _, videos = _killed_and_restarted(media, console, job)
    assert Path(videos[0]["path"]).is_file()


def test_a_job_killed_while_delivering_is_delivered_once_after_restart(media: Path) -> None:
    console, job = _start_job(media, {"R2V_CONSOLE_DELIVERY_DELAY_SECONDS": "60"})
    console.wait_for(type="status", job=job, state="delivering")
    again, _ = _killed_and_restarted(media, console, job)
    states = [e["state"] for e in again.events if e["type"] == "status"]
    assert states[-1] == "delivered"
