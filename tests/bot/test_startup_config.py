"""Start-up refuses a bad configuration with one line that names what to change, never a
traceback: an unknown provider name, a port another program holds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bot.errors import ConfigurationError
from bot.settings import KNOWN_PROVIDERS, load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value", ["no-such-provider", "wavespeed, nope"])
def test_an_unknown_provider_stops_the_start_naming_the_known_ones(
    tmp_path: Path, value: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings(data_dir=tmp_path, provider=value, _env_file=None)
    message = raised.value.message
    assert message.startswith(f"R2V_PROVIDER={value!r} is not accepted")
    assert all(name in message for name in KNOWN_PROVIDERS)


def test_known_providers_in_any_case_are_taken(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, provider="WaveSpeed,storyboard", _env_file=None)
    assert settings.provider_order == ["wavespeed", "storyboard"]


def test_a_port_in_use_stops_the_bot_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("R2V_", "DISCORD", "SLACK"))
        }
        env |= {"R2V_DATA_DIR": str(tmp_path / "data"), "R2V_HTTP_PORT": str(port)}
        env["PYTHONPATH"] = str(ROOT)
        done = subprocess.run(
            [sys.executable, "-m", "bot", "run"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    assert f"port {port} is in use" in done.stderr and "set R2V_HTTP_PORT" in done.stderr
    assert "Traceback" not in done.stderr
