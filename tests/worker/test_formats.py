"""What a request means in frames and pixels, what the worker refuses before queuing, and how
its settings are read. None of this needs torch."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.errors import ConfigurationError, Refusal
from worker.formats import Formats, frame_count, frame_size, latent_frames
from worker.protocol import TaskRequest, WorkerLimits, webhook_secret
from worker.settings import ResolutionSpec, WorkerSettings, load_worker_settings

TOKEN = "a-token-long-enough-for-the-worker"


def request(**changes: object) -> TaskRequest:
    values: dict[str, object] = {
        "prompt": "character1 waves",
        "duration": 5,
        "resolution": "480p",
        "aspect_ratio": "16:9",
    }
    values.update(changes)
    return TaskRequest.from_json(values)


def formats(model: str = "Wan-AI/Wan2.1-VACE-1.3B-diffusers", **settings: object) -> Formats:
    return Formats.from_settings(load_worker_settings(token=TOKEN, model=model, **settings))


@pytest.mark.parametrize(("seconds", "frames"), [(1, 17), (2, 33), (5, 81), (10, 161)])
def test_durations_become_4k_plus_1_frames_at_16_fps(seconds: int, frames: int) -> None:
    assert frame_count(seconds) == frames
    assert (frames - 1) % 4 == 0


def test_sizes_keep_the_trained_frame_and_its_pixel_count_in_multiples_of_16() -> None:
    spec = ResolutionSpec(width=832, height=480, flow_shift=3.0)
    assert frame_size(spec, "16:9") == (832, 480)  # Wan's own 480p frame
    assert frame_size(spec, "9:16") == (480, 832)
    for aspect in ("1:1", "4:3", "3:4"):
        width, height = frame_size(spec, aspect)
        assert width % 16 == 0 and height % 16 == 0
        assert abs(width * height - 832 * 480) / (832 * 480) < 0.08
    assert frame_size(spec, "1:1") == (624, 624)
    wide, tall = frame_size(spec, "4:3"), frame_size(spec, "3:4")
    assert wide == (tall[1], tall[0]) and wide[0] > wide[1]


def test_the_model_decides_the_default_resolutions() -> None:
    small = formats().limits()
    assert small.resolutions == ("480p",)
    large = formats("Wan-AI/Wan2.1-VACE-14B-diffusers").limits()
    assert large.resolutions == ("480p", "720p")
    assert large.sizes["720p"]["16:9"] == (1280, 720)
    clip = formats("Wan-AI/Wan2.1-VACE-14B-diffusers").check(request(resolution="720p"), 1)
    assert (clip.width, clip.height, clip.frames, clip.flow_shift) == (1280, 720, 81, 5.0)
    clip = formats().check(request(), 3)
    assert (clip.width, clip.height, clip.frames, clip.flow_shift) == (832, 480, 81, 3.0)


def test_limits_survive_the_trip_through_json() -> None:
    limits = formats().limits()
    again = WorkerLimits.from_json(limits.to_json())
    assert again == WorkerLimits(
        max_references=3,
        sizes={k: dict(v) for k, v in limits.sizes.items()},
        durations=(1, 5),
        fps=16,
        max_frames=81,
    )
    assert again.aspect_ratios == ("16:9", "9:16", "1:1", "4:3", "3:4")
    with pytest.raises(ValueError, match="limits"):
        WorkerLimits.from_json({"sizes": {}, "durations": [1, 5], "fps": 16})


@pytest.mark.parametrize(
    ("changes", "references", "code", "words"),
    [
        ({"resolution": "1080p"}, 1, "unsupported_size", "use 480p"),
        ({"aspect_ratio": "21:9"}, 1, "unsupported_size", "16:9, 9:16, 1:1, 4:3, 3:4"),
        ({"duration": 9}, 1, "duration_out_of_range", "1 to 5 s"),
        ({"duration": 0}, 1, "duration_out_of_range", "1 to 5 s"),
        ({}, 4, "too_many_references", "1 to 3"),
        ({}, 0, "no_references", "attach 1 to 3"),
    ],
)
def test_requests_out_of_limits_are_refused_with_what_is_accepted(
    changes: dict[str, object], references: int, code: str, words: str
) -> None:
    with pytest.raises(Refusal) as caught:
        formats().check(request(**changes), references)
    assert caught.value.code == code
    assert words in caught.value.message


def test_references_may_not_outnumber_the_clips_latent_frames() -> None:
    many = formats(max_references=6)
    assert latent_frames(frame_count(1)) == 5
    many.check(request(duration=1), 5)
    with pytest.raises(Refusal, match="room for 5") as caught:
        many.check(request(duration=1), 6)
    assert caught.value.code == "too_many_references"
    many.check(request(duration=2), 6)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"duration": 5, "resolution": "480p", "aspect_ratio": "16:9"}, "prompt"),
        ({"prompt": " ", "duration": 5, "resolution": "480p", "aspect_ratio": "16:9"}, "prompt"),
        (
            {"prompt": "x", "duration": "5", "resolution": "480p", "aspect_ratio": "16:9"},
            "duration",
        ),
        ({"prompt": "x", "duration": 5, "resolution": 480, "aspect_ratio": "16:9"}, "resolution"),
        (
            {"prompt": "x", "duration": 5, "resolution": "480p", "aspect_ratio": "1:1", "seed": -1},
            "seed",
        ),
        (
            {
                "prompt": "x",
                "duration": 5,
                "resolution": "480p",
                "aspect_ratio": "1:1",
                "webhook_url": "ftp://x",
            },
            "webhook_url",
        ),
        (["not", "an", "object"], "JSON object"),
    ],
)
def test_malformed_requests_name_the_field(data: object, words: str) -> None:
    with pytest.raises(Refusal, match=words) as caught:
        TaskRequest.from_json(data)
    assert caught.value.code == "invalid_request"


def test_the_webhook_key_is_derived_from_the_token_and_is_not_the_token() -> None:
    secret = webhook_secret(TOKEN)
    assert secret.startswith("whsec_") and TOKEN not in secret
    assert secret == webhook_secret(TOKEN)
    assert secret != webhook_secret(TOKEN + "x")


# Settings ----------------------------------------------------------------------------------


def test_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("R2V_WORKER_TOKEN", TOKEN)
    monkeypatch.setenv("R2V_WORKER_PORT", "9000")
    monkeypatch.setenv("R2V_WORKER_DEVICES", "0, cuda:1")
    monkeypatch.setenv("R2V_WORKER_RESOLUTIONS", '{"480p": {"width": 832, "height": 480}}')
    monkeypatch.setenv("R2V_WORKER_CPU_OFFLOAD", "true")
    settings = load_worker_settings(_env_file=None)
    assert settings.token_value == TOKEN
    assert settings.port == 9000
    assert settings.device_list == ("cuda:0", "cuda:1")
    assert settings.resolutions == {"480p": ResolutionSpec(width=832, height=480)}
    assert settings.cpu_offload and not settings.group_offload
    assert settings.model == "Wan-AI/Wan2.1-VACE-1.3B-diffusers"
    assert (settings.max_references, settings.crf, settings.steps) == (3, 18, 30)
    assert isinstance(settings, WorkerSettings)


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        (
            "R2V_WORKER_PORT",
            "99999",
            "R2V_WORKER_PORT='99999' is not accepted: expected a TCP port",
        ),
        ("R2V_WORKER_CRF", "60", "R2V_WORKER_CRF='60' is not accepted: expected x264"),
        ("R2V_WORKER_DEVICES", "gpu0", "R2V_WORKER_DEVICES='gpu0' is not accepted: expected auto"),
        ("R2V_WORKER_MAX_REFERENCES", "0", "R2V_WORKER_MAX_REFERENCES='0' is not accepted"),
        ("R2V_WORKER_RESOLUTIONS", '{"480p": {"width": 8}}', "R2V_WORKER_RESOLUTIONS="),
        ("R2V_WORKER_DTYPE", "int8", "expected bfloat16, float16 or float32"),
        ("R2V_WORKER_DEVICES", "0,cuda:0", "R2V_WORKER_DEVICES='0,cuda:0' is not accepted"),
        ("R2V_WORKER_MAX_FRAMES", "9", "expected the most frames one clip may have, 17–241"),
        ("R2V_WORKER_STEP_CACHE", "1", "R2V_WORKER_STEP_CACHE=1 would compute every step"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, words: str
) -> None:
    monkeypatch.setenv("R2V_WORKER_TOKEN", TOKEN)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        load_worker_settings(_env_file=None)
    assert words in caught.value.message
    assert "\n" not in caught.value.message


@pytest.mark.parametrize(
    ("token", "words"), [(None, "is not set"), ("short", "is shorter than 16")]
)
def test_the_worker_needs_a_token(
    monkeypatch: pytest.MonkeyPatch, token: str | None, words: str
) -> None:
    monkeypatch.delenv("R2V_WORKER_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match=f"R2V_WORKER_TOKEN {words}"):
        load_worker_settings(_env_file=None, **({"token": token} if token else {}))


def test_both_offloads_at_once_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="R2V_WORKER_CPU_OFFLOAD and R2V_WORKER_GROUP"):
        load_worker_settings(_env_file=None, token=TOKEN, cpu_offload=True, group_offload=True)


@pytest.mark.parametrize(("max_frames", "seconds"), [(81, 5), (80, 4), (33, 2), (17, 1), (161, 10)])
def test_the_frame_cap_sets_the_longest_clip(max_frames: int, seconds: int) -> None:
    capped = formats(max_frames=max_frames)
    assert capped.limits().durations == (1, seconds)
    assert capped.limits().max_frames == max_frames
    assert capped.check(request(duration=seconds), 1).frames <= max_frames
    with pytest.raises(Refusal) as caught:
        capped.check(request(duration=seconds + 1), 1)
    assert caught.value.code == "duration_out_of_range"
    assert f"1 to {seconds} s ({max_frames} frames at 16 fps, R2V_WORKER_MAX_FRAMES)" in (
        caught.value.message
    )


def test_a_compiled_transformer_is_warmed_at_both_ends_of_every_resolution() -> None:
    shapes = formats("Wan-AI/Wan2.1-VACE-14B-diffusers").warm_sizes()
    assert [(c.width, c.height, c.frames) for c in shapes] == [
        (624, 624, 17),
        (832, 480, 81),
        (480, 832, 81),
        (960, 960, 17),
        (1280, 720, 81),
        (720, 1280, 81),
    ]


@pytest.mark.parametrize("devices", ["cuda,0", "0,cuda:0", "cuda, cuda:0"])
def test_one_gpu_named_twice_is_refused(devices: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        load_worker_settings(token=TOKEN, devices=devices, _env_file=None)
    assert "R2V_WORKER_DEVICES" in refused.value.message
