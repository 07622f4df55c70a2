"""The catalog: console lines parsed, options checked against their ranges, help generated."""

from __future__ import annotations

import pytest

from bot import commands
from bot.errors import Refusal


def test_console_line_with_quotes_and_subcommand() -> None:
    parsed = commands.parse_line(
        '/character create name:alice image:./a.png description:"a tall hero" visibility:private'
    )
    assert parsed.command.name == "character create"
    assert parsed.values == {
        "name": "alice",
        "image": "./a.png",
        "description": "a tall hero",
        "visibility": "private",
    }


def test_values_may_contain_colons() -> None:
    parsed = commands.parse_line('/generate prompt:"@alice: hello" aspect:16:9')
    assert parsed.values == {"prompt": "@alice: hello", "aspect": "16:9"}


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("/nothing", "unknown_command"),
        ("/character frobnicate name:x", "unknown_command"),
        ("generate prompt:x", "unknown_command"),
        ("/generate prompt:x colour:red", "invalid_option"),
        ("/generate prompt:x loose", "invalid_option"),
        ('/generate prompt:"unclosed', "invalid_option"),
    ],
)
def test_bad_lines_are_refused_with_a_code(line: str, code: str) -> None:
    with pytest.raises(Refusal) as caught:
        commands.parse_line(line)
    assert caught.value.code == code


def test_unknown_option_shows_the_usage() -> None:
    with pytest.raises(Refusal) as caught:
        commands.parse_line("/generate prompt:x colour:red")
    assert "Usage: /generate prompt:<text>" in caught.value.message


def test_coerce_fills_defaults_and_converts() -> None:
    generate = commands.find("generate")
    assert generate is not None
    values = commands.coerce(
        generate, {"prompt": "hi", "duration": "7", "dry_run": "yes", "resolution": "1080P"}
    )
    assert values["duration"] == 7
    assert values["dry_run"] is True
    assert values["resolution"] == "1080p"
    assert values["aspect"] == "16:9"
    assert "seed" not in values


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ({"prompt": "x", "duration": "40"}, "duration_out_of_range"),
        ({"prompt": "x", "duration": "1"}, "duration_out_of_range"),
        ({"prompt": "x", "duration": "five"}, "invalid_option"),
        ({"prompt": "x", "seed": "-1"}, "invalid_option"),
        ({"prompt": "x", "seed": "2147483648"}, "invalid_option"),
        ({"prompt": "x", "resolution": "4k"}, "invalid_option"),
        ({"prompt": "x", "aspect": "2:1"}, "invalid_option"),
        ({"prompt": "x", "dry_run": "maybe"}, "invalid_option"),
        ({"prompt": "x" * 5001}, "prompt_too_long"),
        ({"prompt": "x", "negative": "n" * 501}, "prompt_too_long"),
        ({}, "invalid_option"),
    ],
)
def test_out_of_range_options_are_refused(options: dict[str, str], code: str) -> None:
    generate = commands.find("generate")
    assert generate is not None
    with pytest.raises(Refusal) as caught:
        commands.coerce(generate, options)
    assert caught.value.code == code


def test_help_lists_every_command_and_details_one() -> None:
    overview = commands.help_text(is_admin=True)
    for command in commands.CATALOG:
        assert f"/{command.name}" in overview
    assert "/settings" not in commands.help_text(), "admin commands are shown to admins"
    detail = commands.help_text("generate")
    assert "duration: seconds (2–15); default 5" in detail
    assert "aspect:16:9|9:16|1:1|4:3|3:4" in detail
    group = commands.help_text("character")
    assert "/character rename" in group and "/character delete" in group
    with pytest.raises(Refusal):
        commands.help_text("nonsense")
