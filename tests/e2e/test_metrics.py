"""GET /metrics: Prometheus text of what the bot counted while it worked."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.harness import running_bot


async def test_metrics_count_jobs_deliveries_and_refused_webhooks(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as bot:
        await bot.character("alice")
        job = await bot.generate("@alice waves", duration=2)
        await bot.delivered(job)
        assert bot.public_url is not None
        async with httpx.AsyncClient(base_url=bot.public_url) as client:
            forged = await client.post(
                f"/hooks/storyboard/{job}", params={"t": "forged"}, content=b"{}"
            )
            assert forged.status_code == 401
            answer = await client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    text = answer.text
    assert 'r2v_jobs_finished_total{provider="storyboard",state="delivered"} 1.0' in text
    assert 'r2v_deliveries_total{platform="console"} 1.0' in text
    assert 'r2v_webhook_checks_failed_total{provider="storyboard"} 1.0' in text
    assert 'r2v_submit_seconds_count{provider="storyboard"} 1.0' in text
    assert 'r2v_time_to_result_seconds_count{provider="storyboard"} 1.0' in text
