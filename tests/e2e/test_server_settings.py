"""Per-server settings, usage and the prompt filter through the whole bot (storyboard)."""

from __future__ import annotations

from pathlib import Path

from bot.models import Actor
from tests.harness import USER, running_bot

MEMBER = Actor(platform="console", server_id="test", user_id="member")


async def test_settings_are_for_admins_and_limit_daily_jobs(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as bot:
        refused = await bot.run("settings", actor=MEMBER, user_jobs="1")
        assert refused.code == "not_allowed"
        shown = await bot.run("settings")
        assert "jobs per user: no limit" in shown.text
        saved = await bot.run("settings", user_jobs="1")
        assert not saved.is_error and "jobs per user: 1 a day" in saved.text

        await bot.character("alice")
        first = await bot.generate("@alice waves", duration=2)
        await bot.delivered(first)
        second = await bot.run("generate", prompt="@alice waves again", duration=2)
        assert second.code == "quota_exceeded"
        assert "resets at 00:00 UTC" in second.text
        # another user of the server still has their own count
        other = await bot.run("generate", actor=MEMBER, prompt="@alice jumps", duration=2)
        assert not other.is_error
        await bot.delivered(other.job_id or "")
        usage = await bot.run("usage")
        assert usage.data == {"user_jobs": 1, "server_jobs": 2, "spend_usd": 0.0}
        assert "you made 1 of 1 videos" in usage.text


async def test_providers_not_allowed_in_a_server_are_refused(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as bot:
        await bot.character("alice")
        unknown = await bot.run("settings", providers="wavespeed")
        assert unknown.code == "invalid_option" and "storyboard" in unknown.text
        nope = await bot.run("generate", prompt="@alice waves", provider="fal")
        assert nope.code == "invalid_option" and "not set up" in nope.text


async def test_blocked_words_are_refused_before_anything_is_stored(tmp_path: Path) -> None:
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text("# words this server refuses\ngore\n")
    async with running_bot(tmp_path, prompt_blocklist=blocklist) as bot:
        await bot.character("alice")
        refused = await bot.run("generate", prompt="@alice in a lot of GORE", duration=2)
        assert refused.code == "prompt_refused"
        jobs = await bot.run("jobs")
        assert jobs.data == {"jobs": []}
        assert USER.is_admin
