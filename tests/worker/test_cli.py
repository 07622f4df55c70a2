"""``r2v worker``'s start-up refusals: one line on stderr naming what to fix, exit status 2."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from worker.cli import main

TOKEN = "a-token-long-enough-for-the-worker"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env from the developer's checkout
    monkeypatch.delenv("R2V_WORKER_TOKEN", raising=False)


def test_a_missing_token_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("r2v worker: R2V_WORKER_TOKEN is not set: set it to a random string")
    assert err.count("\n") == 1


def test_a_bad_option_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("R2V_WORKER_TOKEN", TOKEN)
    assert main(["--port", "99999"]) == 2
    assert capsys.readouterr().err == (
        "r2v worker: R2V_WORKER_PORT=99999 is not accepted: expected a TCP port number, "
        "0–65535 (0 picks a free one).\n"
    )


def test_without_the_gpu_extra_it_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("R2V_WORKER_TOKEN", TOKEN)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if it were not installed
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "needs diffusers: install the gpu extra (pip install 'r2v-bot[gpu]')" in err


def test_sigterm_stops_a_running_worker_with_status_0(tmp_path: Path) -> None:
    """A rolling deploy stops the worker with SIGTERM: it closes and exits 0 (its tasks are
    kept on disk and resumed at the next start)."""
    import os
    import re
    import signal
    import subprocess
    import time

    import httpx

    from tests.worker.tiny import tiny_model

    env = {
        **os.environ,
        "R2V_WORKER_TOKEN": TOKEN,
        "R2V_WORKER_MODEL": str(tiny_model()),
        "R2V_WORKER_DEVICES": "cpu",
        "R2V_WORKER_PORT": "0",
        "R2V_WORKER_DATA_DIR": str(tmp_path / "worker"),
        "PYTHONUNBUFFERED": "1",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "bot", "worker"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stderr is not None
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = worker.stderr.readline()
            assert line, "the worker ended before it listened"
            found = re.search(r"listening on (http://\S+)", line)
            url = found.group(1) if found else None
        assert url is not None
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{url}/healthz", headers=auth, timeout=10).status_code == 200
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        assert time.monotonic() - started < 20  # R2V_SHUTDOWN_SECONDS' default
    finally:
        if worker.poll() is None:
            worker.kill()
