"""`r2v doctor` asks each configured provider whether the key is accepted, and says whether
webhooks can be used."""

from __future__ import annotations

from pathlib import Path

from bot.doctor import run_doctor
from bot.settings import load_settings
from tests.fakes.dashscope import FakeDashScope
from tests.fakes.wavespeed import FakeWaveSpeed
from tests.media_factory import make_video


async def test_doctor_reports_each_provider_key_and_webhooks(tmp_path: Path) -> None:
    result = make_video(tmp_path / "result.mp4", seconds=1.0).read_bytes()
    async with FakeWaveSpeed(result) as wavespeed, FakeDashScope(result) as dashscope:
        settings = load_settings(
            _env_file=None,
            data_dir=tmp_path / "data",
            public_url="https://bot.example.org",
            wavespeed_api_key=wavespeed.key,
            wavespeed_base_url=wavespeed.url,
            dashscope_api_key="sk-wrong",
            dashscope_base_url=dashscope.url,
        )
        lines: list[str] = []
        status = await run_doctor(settings, lines.append)
    text = "\n".join(lines)
    assert status == 1, text
    wavespeed_line = next(line for line in lines if "provider wavespeed" in line)
    assert wavespeed_line.startswith("✓") and "webhooks usable" in wavespeed_line
    dashscope_line = next(line for line in lines if "provider dashscope" in line)
    assert dashscope_line.startswith("✗")
    assert "DASHSCOPE_API_KEY is rejected by DashScope" in dashscope_line
    assert "R2V_DASHSCOPE_REGION" in dashscope_line
    assert "provider dashscope" in text and "sk-wrong" not in text, "keys are never printed"
    # DashScope publishes no price here and R2V_PRICES gives none: the operator is told.
    assert "✓ provider dashscope: price unknown: the daily budget cannot limit it" in text
    assert not any("provider wavespeed: price unknown" in line for line in lines)
