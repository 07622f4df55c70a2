"""Budgets, per-user counts and /settings changes, as pure rules."""

from __future__ import annotations

import datetime as dt

import pytest

from bot.errors import Refusal
from bot.prompt_filter import PromptFilter
from bot.quotas import ServerSettings, Usage, apply_changes, check_quota, day_start

NOON = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC).timestamp()


def test_the_day_is_the_utc_day() -> None:
    assert day_start(NOON) == dt.datetime(2026, 11, 21, tzinfo=dt.UTC).timestamp()


def test_a_user_over_the_daily_count_is_refused_with_the_reset_time() -> None:
    settings = ServerSettings(user_daily_jobs=2)
    check_quota(settings, Usage({"ann": 1}), "ann", 1.0, NOON)
    with pytest.raises(Refusal) as caught:
        check_quota(settings, Usage({"ann": 2}), "ann", 1.0, NOON)
    assert caught.value.code == "quota_exceeded"
    assert "resets at 00:00 UTC, in 12h 00m" in caught.value.message
    check_quota(settings, Usage({"ann": 2}), "bob", 1.0, NOON)


def test_the_server_budget_counts_the_new_job_estimate() -> None:
    settings = ServerSettings(daily_budget_usd=5.0)
    check_quota(settings, Usage({"ann": 3}, spend_usd=4.0), "ann", 1.0, NOON)
    with pytest.raises(Refusal) as caught:
        check_quota(settings, Usage({"ann": 3}, spend_usd=4.5), "ann", 1.0, NOON)
    assert caught.value.code == "quota_exceeded"
    assert "$0.50 left of its $5.00 daily budget" in caught.value.message
    # free jobs are never refused for money
    check_quota(settings, Usage({}, spend_usd=9.0), "ann", 0.0, NOON)


def test_settings_changes_are_checked() -> None:
    known = ["storyboard", "wavespeed", "fal"]
    updated = apply_changes(
        ServerSettings(),
        {
            "budget": "$2.50",
            "user_jobs": "3",
            "providers": "wavespeed, fal",
            "default_provider": "fal",
        },
        known,
    )
    assert updated == ServerSettings(2.5, 3, ("wavespeed", "fal"), "fal")
    cleared = apply_changes(updated, {"budget": "none", "providers": "all"}, known)
    assert cleared.daily_budget_usd is None and cleared.allowed_providers == ()
    for changes in (
        {"budget": "lots"},
        {"budget": "-1"},
        {"user_jobs": "x"},
        {"providers": "nope"},
        {"providers": "fal", "default_provider": "wavespeed"},
    ):
        with pytest.raises(Refusal) as caught:
            apply_changes(updated, changes, known)
        assert caught.value.code == "invalid_option"
    assert ServerSettings.from_dict(updated.to_dict()) == updated


def test_the_prompt_filter_matches_whole_words_and_phrases() -> None:
    blocklist = PromptFilter(["gore", "blood bath"])
    blocklist.check("a classy, gorgeous party")
    for prompt in ("GORE everywhere", "a Blood   bath at dawn"):
        with pytest.raises(Refusal) as caught:
            blocklist.check(prompt)
        assert caught.value.code == "prompt_refused"
    PromptFilter().check("anything at all")
