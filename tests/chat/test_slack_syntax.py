"""``/r2v`` text read against the catalog, and the catalog told in that syntax."""

from __future__ import annotations

import pytest

from adapters.chat.slack import syntax
from adapters.chat.slack.mrkdwn import escape, reply_text
from bot import commands
from bot.errors import Refusal
from bot.models import Reply


def parse(text: str) -> tuple[str, dict[str, str]]:
    parsed = syntax.parse(text, channel_id="C0HERE")
    return parsed.name, dict(parsed.values)


def refusal(text: str) -> Refusal:
    with pytest.raises(Refusal) as caught:
        syntax.parse(text, channel_id="C0HERE")
    return caught.value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'generate @alice waves duration=3 negative="blurry, dark" at dusk',
            (
                "generate",
                {"duration": "3", "negative": "blurry, dark", "prompt": "@alice waves at dusk"},
            ),
        ),
        # curly quotes, as phones type them; "=" inside the prompt stays prompt text
        (
            "generate E=mc² on a @bob shirt seed=“42”",
            ("generate", {"seed": "42", "prompt": "E=mc² on a @bob shirt"}),
        ),
        ("character rename alice Alicia", ("character rename", {"name": "alice", "new": "Alicia"})),
        (
            "character remove alice image2",
            ("character remove", {"name": "alice", "item": "image2"}),
        ),
        (
            "Character LIST page=2 owner=<@U0BOB|bob>",
            ("character list", {"page": "2", "owner": "U0BOB"}),
        ),
        ("cancel j1a2b3c4d5", ("cancel", {"job": "j1a2b3c4d5"})),
        ("help generate", ("help", {"command": "generate"})),
        ("", ("help", {})),
        # a channel option left out is the channel the command was typed in
        ("settings channel add", ("settings channel add", {"channel": "C0HERE"})),
        (
            "settings channel remove <#C0GEN|general>",
            ("settings channel remove", {"channel": "C0GEN"}),
        ),
        # Slack escapes &, < and > in the text it sends
        ("generate @alice &amp; @bob &lt;3", ("generate", {"prompt": "@alice & @bob <3"})),
        ("character create", ("character create", {})),
    ],
)
def test_text_is_read_into_the_catalogs_options(
    text: str, expected: tuple[str, dict[str, str]]
) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "code", "words"),
    [
        ("generate", "invalid_option", "/r2v generate needs prompt"),
        (
            "generate @alice duration=1",
            "duration_out_of_range",
            "duration=1 is out of range: use 2–15",
        ),
        (
            "generate @alice resolution=4k",
            "invalid_option",
            "resolution=4k is not accepted: use 480p, 720p or 1080p",
        ),
        ("generate @alice seed=1 seed=2", "invalid_option", "seed= is given twice"),
        (
            'generate @alice negative="no',
            "invalid_option",
            "The quote after negative= is not closed",
        ),
        ("jobs please", "invalid_option", "/r2v jobs does not take “please”"),
        (
            "character list colour=red",
            "invalid_option",
            "/r2v character list has no option “colour”",
        ),
        ("genrate @alice", "unknown_command", "Did you mean `/r2v generate`?"),
        ("character", "unknown_command", "Try `/r2v character create`"),
        ("duration=5", "unknown_command", "`/r2v help` explains them"),
        ("character add alice", "needs_file", "needs a file, and Slack commands carry text only"),
        ("settings channel add #general", "invalid_option", "not its id"),
    ],
)
def test_mistakes_are_refused_with_what_to_type(text: str, code: str, words: str) -> None:
    refused = refusal(text)
    assert refused.code == code
    assert words in refused.message


def test_option_mistakes_end_with_the_commands_usage_in_slack_syntax() -> None:
    refused = refusal("character list page=zero")
    assert refused.message.endswith("Usage: `/r2v character list [owner=<text>] [page=<number>]`")
    assert "page:" not in refused.message  # the console's syntax is not shown


def test_usage_lines_follow_the_catalog() -> None:
    generate = commands.CATALOG_BY_NAME["generate"]
    shown = syntax.usage(generate)
    assert shown.startswith(
        "/r2v generate <prompt> [duration=<number>] [resolution=480p|720p|1080p]"
    )
    # attachments cannot be typed, so they are not offered; every other option is
    for option in generate.options:
        typed = option.type is not commands.OptionType.ATTACHMENT
        assert (f"[{option.name}=" in shown or f"<{option.name}>" in shown) is typed


def test_help_lists_what_can_be_typed_and_hides_admin_commands() -> None:
    member = syntax.help_text()
    admin = syntax.help_text(is_admin=True)
    assert "`/r2v character create (opens a form)`" in member
    assert "character add" not in member  # needs a file
    assert "/r2v settings" not in member and "`/r2v settings [budget=<text>]" in admin
    detail = syntax.help_text("settings channel add")
    assert "default: the channel you type it in" in detail
    with pytest.raises(Refusal) as unknown:
        syntax.help_text("dance")
    assert unknown.value.code == "unknown_command"


def test_text_is_escaped_but_member_and_channel_references_stay() -> None:
    assert escape("@alice & <b>bold</b> <!channel>") == (
        "@alice &amp; &lt;b&gt;bold&lt;/b&gt; &lt;!channel&gt;"
    )
    assert escape("by <@U0ANN> in <#C0GEN|general>") == "by <@U0ANN> in <#C0GEN|general>"
    refused = reply_text(Reply("There is no character “x”.", code="unknown_character"))
    assert refused == ":warning: There is no character “x”.\n`unknown_character`"
