"""The committed Slack app manifest is the one the adapter's names and scopes make."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.chat.slack.manifest import (
    BOT_SCOPES,
    SAVE_SHORTCUT,
    SLASH_COMMAND,
    manifest,
    manifest_yaml,
)

MANIFEST = Path(__file__).resolve().parents[2] / "slack" / "manifest.yml"


def test_the_committed_manifest_is_up_to_date() -> None:
    assert MANIFEST.read_text(encoding="utf-8") == manifest_yaml(), (
        "slack/manifest.yml is out of date: python -m adapters.chat.slack.manifest > "
        "slack/manifest.yml"
    )


def test_the_manifest_asks_for_socket_mode_interactivity_and_the_scopes_the_bot_uses() -> None:
    app = manifest()
    assert app["settings"]["socket_mode_enabled"] is True
    assert app["settings"]["interactivity"]["is_enabled"] is True
    assert app["oauth_config"]["scopes"]["bot"] == sorted(BOT_SCOPES)
    [command] = app["features"]["slash_commands"]
    assert (command["command"], command["should_escape"]) == (SLASH_COMMAND, False)
    [shortcut] = app["features"]["shortcuts"]
    assert (shortcut["type"], shortcut["callback_id"]) == ("message", SAVE_SHORTCUT)


def test_the_manifest_file_reads_as_that_yaml() -> None:
    yaml = pytest.importorskip("yaml")  # not a dependency; checked where it is installed
    assert yaml.safe_load(MANIFEST.read_text(encoding="utf-8")) == manifest()
