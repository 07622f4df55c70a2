"""What each provider can take decides where a job goes, before anything is sent or paid for;
a rejected key is the bot's configuration, said plainly; the budget counts what was really
charged. Whole bots against the providers' loopback fakes (each follows PROVIDERS.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.models import JobState
from tests.fakes.freepik import FakeFreepik
from tests.fakes.segmind import FakeSegmind
from tests.fakes.together import FakeTogether
from tests.fakes.wavespeed import FakeWaveSpeed, Task
from tests.harness import Harness, bot_with
from tests.media_factory import make_video


@pytest.fixture
async def wavespeed(result_mp4: bytes) -> AsyncIterator[FakeWaveSpeed]:
    async with FakeWaveSpeed(result_mp4) as server:
        yield server


@pytest.fixture
async def freepik(result_mp4: bytes) -> AsyncIterator[FakeFreepik]:
    async with FakeFreepik(result_mp4, complete_after_polls=1, send_webhooks=False) as server:
        yield server


def status_texts(h: Harness, job_id: str) -> str:
    return "\n".join(p.text for p in h.chat.posts if p.job == job_id and p.kind == "status")


# A job WaveSpeed cannot take ------------------------------------------------------------------


async def test_a_picture_only_job_for_wavespeed_is_refused_naming_what_is_missing(
    tmp_path: Path, wavespeed: FakeWaveSpeed
) -> None:
    async with bot_with(tmp_path, wavespeed) as h:
        await h.character("alice")
        reply = await h.run("generate", prompt="@alice waves", provider="wavespeed")
        dry = await h.run("generate", prompt="@alice waves", dry_run=True)
    assert reply.code == "provider_cannot_take"
    assert "wavespeed needs at least one reference video; @alice has only pictures" in reply.text
    assert dry.code == "provider_cannot_take"
    # Nothing reached WaveSpeed: no upload, no submit.
    assert wavespeed.submits == [] and wavespeed.uploads == {}


async def test_with_freepik_next_in_the_order_the_job_is_delivered_by_freepik_and_says_so(
    tmp_path: Path, wavespeed: FakeWaveSpeed, freepik: FakeFreepik
) -> None:
    async with bot_with(tmp_path, wavespeed, freepik) as h:
        await h.character("alice")
        dry = await h.run("generate", prompt="@alice waves", provider="wavespeed", dry_run=True)
        reply = await h.run("generate", prompt="@alice waves", provider="wavespeed")
        assert not reply.is_error and reply.job_id, reply.text
        job = await h.delivered(reply.job_id)
        unnamed = await h.delivered(await h.generate("@alice smiles"))
        shown = status_texts(h, reply.job_id)
    assert wavespeed.submits == [] and wavespeed.uploads == {}
    assert (job.provider, unnamed.provider) == ("freepik", "freepik")
    assert len(freepik.submits) == 2
    assert freepik.submits[0]["prompt"] == "Image 1 waves"
    assert "on freepik (wavespeed cannot take it: wavespeed needs at least one" in reply.text
    # Every status message, up to the delivered one, says where the job runs and why.
    assert "On freepik: wavespeed cannot take it" in shown
    delivered = [p for p in h.chat.posts if p.job == job.id and p.state is JobState.DELIVERED]
    assert delivered and "On freepik" in delivered[-1].text
    assert dry.data["provider"] == "freepik"
    assert "Provider: freepik (wavespeed cannot take it: wavespeed needs" in dry.text


async def test_a_character_with_a_picture_and_a_video_gives_wavespeed_its_video(
    tmp_path: Path, wavespeed: FakeWaveSpeed, freepik: FakeFreepik
) -> None:
    wavespeed.send_webhooks = False
    async with bot_with(tmp_path, wavespeed, freepik) as h:
        await h.character("alice")
        clip = make_video(tmp_path / "alice-clip.mp4", seconds=1.5)
        added = await h.run("character add", name="alice", file=clip)
        assert not added.is_error, added.text
        dry = await h.run("generate", prompt="@alice waves", dry_run=True)
        job = await h.delivered(await h.generate("@alice waves"), within=15.0)
    assert job.provider == "wavespeed" and freepik.submits == []
    [submit] = wavespeed.submits
    assert submit.body["prompt"] == "Video 1 waves"
    assert len(submit.body["videos"]) == 1 and "image" not in submit.body
    assert [slot["kind"] for slot in dry.data["slots"]] == ["video"]
    assert dry.data["why"] == "first in this server's order that can take it"
    assert "Cost: about $1.00" in dry.text


async def test_two_pictures_cannot_go_to_wavespeed_and_move_on_as_well(
    tmp_path: Path, wavespeed: FakeWaveSpeed, freepik: FakeFreepik
) -> None:
    async with bot_with(tmp_path, wavespeed, freepik) as h:
        await h.character("alice")
        await h.character("bob", video=True)
        await h.character("carol")
        job = await h.delivered(await h.generate("@alice, @bob and @carol"))
    assert job.provider == "freepik" and wavespeed.submits == []


# A rejected key -------------------------------------------------------------------------------


async def test_a_rejected_key_is_a_configuration_error_counted_and_never_charged(
    tmp_path: Path, result_mp4: bytes
) -> None:
    async with FakeSegmind(result_mp4) as segmind, bot_with(tmp_path, segmind) as h:
        segmind.key = "rotated"  # the bot's key is no longer Segmind's
        await h.character("alice")
        job = await h.finished(await h.generate("@alice waves"))
        again = await h.run("generate", prompt="@alice smiles")
        usage = await h.run("usage")
        metrics = h.app.metrics.exposition().decode()
    assert job.state is JobState.FAILED and job.task_id is None
    assert job.reason is not None
    assert job.reason.startswith("SEGMIND_API_KEY is rejected by Segmind (HTTP 401")
    assert "not charged" in job.reason
    # Not retried: one submit, then the next command is refused without calling Segmind.
    assert len(segmind.submits) == 1
    assert again.code == "configuration_error"
    assert "SEGMIND_API_KEY is rejected by Segmind" in again.text
    assert usage.data["server_jobs"] == 0 and usage.data["spend_usd"] == 0
    assert 'r2v_provider_key_rejected_total{provider="segmind"} 1.0' in metrics


# Cost and price ---------------------------------------------------------------------------------


async def test_the_budget_counts_what_together_really_charged(
    tmp_path: Path, result_mp4: bytes
) -> None:
    prices = {"together": {"720p": 0.2}}
    async with FakeTogether(result_mp4) as fake, bot_with(tmp_path, fake, prices=prices) as h:
        await h.character("alice")
        job_id = await h.generate("@alice waves")
        queued = await h.job(job_id)
        job = await h.delivered(job_id)
        usage = await h.run("usage")
    assert queued.cost_estimate == 1.0  # 5 s at the R2V_PRICES rate
    assert job.cost_estimate == 0.42  # the fake's outputs.cost
    assert usage.data["spend_usd"] == 0.42


async def test_providers_without_a_price_are_named_in_settings_and_dry_runs(
    tmp_path: Path, freepik: FakeFreepik, result_mp4: bytes
) -> None:
    async with FakeSegmind(result_mp4) as segmind, bot_with(tmp_path, freepik, segmind) as h:
        await h.character("alice")
        settings = await h.run("settings")
        dry = await h.run("generate", prompt="@alice waves", dry_run=True)
        segmind_dry = await h.run(
            "generate", prompt="@alice waves", dry_run=True, provider="segmind"
        )
    assert "price unknown: the daily budget cannot limit it (set R2V_PRICES): freepik" in (
        settings.text
    )
    assert settings.data["price_unknown"] == ["freepik"]
    assert "Cost: price unknown: the daily budget cannot limit it" in dry.text
    assert dry.data["cost_estimate"] is None
    # Segmind's published price per generation is its default now.
    assert segmind_dry.data["cost_estimate"] == 0.625


# Polling never hangs ---------------------------------------------------------------------------


async def test_an_unknown_status_waits_until_the_timeout_which_names_it(
    tmp_path: Path, wavespeed: FakeWaveSpeed, caplog: pytest.LogCaptureFixture
) -> None:
    wavespeed.complete_after_polls = None
    wavespeed.send_webhooks = False
    async with bot_with(tmp_path, wavespeed, public=False, job_timeout_seconds=1.0) as h:
        await h.character("alice", video=True)
        job_id = await h.generate("@alice waves")
        task: Task = await wavespeed.task()
        task.status = "warming_up"
        job = await h.finished(job_id, within=15.0)
    assert job.state is JobState.FAILED and job.reason is not None
    assert "its last status: “warming_up”" in job.reason
    unknown = [r for r in caplog.records if "unknown task status 'warming_up'" in r.getMessage()]
    assert len(unknown) == 1, "logged once, not at every poll"
