"""Run ``r2v console --json`` as a real subprocess and read its JSON events as they come."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

CLEARED = (
    "DISCORD_TOKEN",
    "SLACK_BOT_TOKEN",
    "SLACK_APP_TOKEN",
    "SLACK_SIGNING_SECRET",
    "DASHSCOPE_API_KEY",
    "WAVESPEED_API_KEY",
    "FREEPIK_API_KEY",
    "FAL_KEY",
    "REPLICATE_API_TOKEN",
    "INFERENCE_API_KEY",
    "SEGMIND_API_KEY",
    "R2V_PROVIDER",
    "R2V_PUBLIC_URL",
)


class Console:
    """One ``r2v console --json`` process; ``events`` collects every line it printed."""

    def __init__(
        self,
        workdir: Path,
        *args: str,
        script: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        environment = {k: v for k, v in os.environ.items() if k not in CLEARED}
        environment.update(
            {
                "R2V_DATA_DIR": str(workdir / "data"),
                "R2V_HTTP_PORT": "0",
                "R2V_POLL_INITIAL_SECONDS": "0.5",
                "R2V_POLL_MAX_SECONDS": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        environment.update(env or {})
        command = list(args) if args and args[0] == "run" else ["console", "--json", *args]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bot", *command],
            cwd=workdir,
            env=environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self.raw_lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._stderr: list[str] = []
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if script is not None:
            assert self.process.stdin is not None
            self.process.stdin.write(script)
            self.process.stdin.close()

    def send(self, line: str) -> None:
        """Type one more command (stdin stays open until ``close_input``)."""
        assert self.process.stdin is not None
        self.process.stdin.write(line.rstrip("\n") + "\n")
        self.process.stdin.flush()

    def close_input(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def _take(self, timeout: float) -> dict[str, Any] | None:
        line = self._lines.get(timeout=timeout)
        if line is None:
            return None
        self.raw_lines.append(line)
        event: dict[str, Any] = json.loads(line)
        self.events.append(event)
        return event

    def read_available(self) -> None:
        """Take in every line printed so far, without waiting for more."""
        while True:
            try:
                if self._take(0.0) is None:
                    return
            except queue.Empty:
                return

    def wait_for(self, timeout: float = 60.0, **match: Any) -> dict[str, Any]:
        """Read events until one has all the ``match`` fields; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        for event in self.events:
            if all(event.get(k) == v for k, v in match.items()):
                return event
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no event {match} in time; stderr:\n{self.stderr}")
            try:
                taken = self._take(left)
            except queue.Empty:
                continue
            if taken is None:
                raise AssertionError(f"the console ended before {match}; stderr:\n{self.stderr}")
            if all(taken.get(k) == v for k, v in match.items()):
                return taken

    def finish(self, timeout: float = 120.0) -> int:
        """Read to the end of output and answer the exit status."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.process.kill()
                raise AssertionError(f"the console did not end in time; stderr:\n{self.stderr}")
            try:
                if self._take(left) is None:
                    break
            except queue.Empty:
                continue
        return self.process.wait(timeout=10)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
