"""The command line: start-up errors, doctor, version, and `r2v run` falling back to the console."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.errors import ConfigurationError
from bot.settings import load_settings
from tests.e2e.console import CLEARED
from tests.postgres import drop_schema, new_schema, require_postgres


def r2v(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in CLEARED}
    environment.update({"R2V_DATA_DIR": str(tmp_path / "data"), "R2V_HTTP_PORT": "0"})
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=tmp_path,
        env=environment,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("R2V_HTTP_PORT", "eighty", "R2V_HTTP_PORT='eighty' is not accepted: expected a TCP port"),
        ("R2V_HTTP_PORT", "70000", "R2V_HTTP_PORT='70000' is not accepted"),
        ("R2V_PUBLIC_URL", "bot.example.com", "R2V_PUBLIC_URL='bot.example.com' is not accepted"),
        ("R2V_USER_OPEN_JOBS", "0", "R2V_USER_OPEN_JOBS='0' is not accepted"),
        ("R2V_STORYBOARD_LABELS", "fancy", "expected separate, videos_first, compact or character"),
    ],
)
def test_a_bad_setting_stops_start_up_with_one_line(
    tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    result = r2v(tmp_path, "run", env={variable: value})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert not (tmp_path / "data").exists(), "nothing starts with a bad setting"


def test_settings_come_from_dotenv_and_keys_pick_the_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("R2V_HTTP_PORT=9123\nWAVESPEED_API_KEY=secret-key\n")
    settings = load_settings()
    assert settings.http_port == 9123
    assert settings.provider_order == ["wavespeed"]
    assert "secret-key" not in repr(settings), "secrets are never shown"
    monkeypatch.setenv("R2V_PROVIDER", "WaveSpeed, fal")
    assert load_settings().provider_order == ["wavespeed", "fal"]
    monkeypatch.setenv("R2V_LOG_LEVEL", "chatty")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert caught.value.message.startswith("R2V_LOG_LEVEL='chatty'")


def test_doctor_checks_the_set_up(tmp_path: Path) -> None:
    result = r2v(tmp_path, "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "✓ PyAV encodes H.264" in result.stdout
    assert "database" in result.stdout and "schema version" in result.stdout
    assert "All good." in result.stdout
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    bad = r2v(tmp_path, "doctor", env={"R2V_DATA_DIR": str(blocked / "data")})
    assert bad.returncode == 1
    assert "NOT writable" in bad.stdout


def test_run_without_tokens_is_the_console(tmp_path: Path) -> None:
    result = r2v(tmp_path, "run", stdin="/help\n/character list\n")
    assert result.returncode == 0, result.stderr
    assert "/character create" in result.stdout
    assert "No characters yet." in result.stdout


def test_version(tmp_path: Path) -> None:
    result = r2v(tmp_path, "version")
    assert result.returncode == 0 and result.stdout.startswith("r2v-bot ")


def test_a_second_process_on_one_sqlite_folder_refuses_to_start(tmp_path: Path) -> None:
    from tests.e2e.console import Console

    first = Console(tmp_path, "--user", "one")
    try:
        first.send("/character list")
        first.wait_for(timeout=60.0, type="reply")
        second = Console(tmp_path, "--user", "two", script="/character list\n")
        assert second.finish(timeout=60.0) == 2
        assert "Another r2v-bot (pid" in second.stderr
        assert str(tmp_path / "data") in second.stderr
    finally:
        first.close_input()
        assert first.finish(timeout=60.0) == 0


def test_db_status_and_migrate_on_sqlite(tmp_path: Path) -> None:
    behind = r2v(tmp_path, "db", "status")
    assert behind.returncode == 1, behind.stderr
    assert "sqlite: schema version 0 of" in behind.stdout
    migrated = r2v(tmp_path, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "schema version 0 ->" in migrated.stdout
    current = r2v(tmp_path, "db", "status")
    assert current.returncode == 0 and "up to date" in current.stdout


async def test_db_migrate_on_postgresql_and_a_missing_secret_stops_the_start(
    tmp_path: Path,
) -> None:
    url = await require_postgres()
    schema = await new_schema(url)
    try:
        env = {"R2V_DATABASE_URL": f"{url}?search_path={schema}"}
        migrated = await asyncio.to_thread(r2v, tmp_path, "db", "migrate", env=env)
        assert migrated.returncode == 0, migrated.stderr
        assert migrated.stdout.startswith("postgresql: schema version 0 ->")
        status = await asyncio.to_thread(r2v, tmp_path, "db", "status", env=env)
        assert status.returncode == 0 and "up to date" in status.stdout
        started = await asyncio.to_thread(r2v, tmp_path, "console", "--json", env=env)
        assert started.returncode == 2
        assert "R2V_SECRET is not set" in started.stderr
        assert "Traceback" not in started.stderr
    finally:
        await drop_schema(url, schema)


def test_a_bad_database_url_is_one_line(tmp_path: Path) -> None:
    result = r2v(tmp_path, "console", env={"R2V_DATABASE_URL": "mysql://nope"})
    assert result.returncode == 2
    assert "R2V_DATABASE_URL='mysql://nope' is not accepted" in result.stderr
