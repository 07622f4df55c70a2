"""Per-server settings, usage and the prompt filter through the whole bot (storyboard)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.errors import Refusal
from bot.models import Actor, CommandRequest
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


async def test_generation_channels_limit_where_videos_are_made(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as bot:
        await bot.character("alice")
        added = await bot.run("settings channel add", channel="<#777>")
        assert added.data == {"channels": ["777"]}
        elsewhere = await bot.run("generate", prompt="@alice waves", duration=2)
        assert elsewhere.code == "wrong_channel" and "<#777>" in elsewhere.text
        inside = await bot.app.core.dispatch(
            CommandRequest(
                USER, "generate", {"prompt": "@alice waves", "duration": 2}, channel_id="777"
            )
        )
        assert not inside.is_error, inside.text
        removed = await bot.run("settings channel remove", channel="777")
        assert removed.data == {"channels": []}
        assert not (await bot.run("generate", prompt="@alice waves", duration=2)).is_error
        member = await bot.run("settings channel add", actor=MEMBER, channel="1")
        assert member.code == "not_allowed"


async def test_a_result_can_be_made_again_with_another_seed_size_or_prompt(
    tmp_path: Path,
) -> None:
    async with running_bot(tmp_path) as bot:
        await bot.character("alice")
        first = await bot.generate("@alice waves", duration=2, seed=42)
        await bot.delivered(first)
        request = CommandRequest(MEMBER, "generate", channel_id="c")
        reroll = await bot.app.core.rerun(request, first, new_seed=True)
        hd = await bot.app.core.rerun(request, first, resolution="1080p")
        edited = await bot.app.core.rerun(request, first, prompt="@alice jumps")
        jobs = [await bot.job(r.job_id or "") for r in (reroll, hd, edited)]
        assert jobs[0].spec.seed != 42 and jobs[0].spec.resolution == "720p"
        assert jobs[1].spec.seed == 42 and jobs[1].spec.resolution == "1080p"
        assert jobs[2].spec.original_prompt == "@alice jumps" and jobs[2].spec.seed == 42
        assert all(job.user_id == "member" for job in jobs)
        with pytest.raises(Refusal) as caught:
            await bot.app.core.job_in_server(MEMBER, first, manage=True)
        assert caught.value.code == "not_allowed"
        assert (await bot.app.core.job_in_server(USER, first, manage=True)).id == first
        elsewhere = Actor(platform="console", server_id="other", user_id="tester")
        gone = await bot.app.core.rerun(CommandRequest(elsewhere, "generate"), first)
        assert gone.code == "unknown_job"
