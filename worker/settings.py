"""The GPU worker's settings: ``R2V_WORKER_*`` variables (also read from ``.env``).

The worker is its own service, often on another machine than the bot, so it has its own settings
class; the one value both share is ``R2V_WORKER_TOKEN`` (the bot reads it under the same name).
``load_worker_settings`` turns a bad value into one line naming the variable and what it takes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.errors import ConfigurationError

DEFAULT_MODEL = "Wan-AI/Wan2.1-VACE-1.3B-diffusers"
#: Wan 2.1's own negative prompt (the English of its README), used unless the request adds one.
DEFAULT_NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, "
    "images, static, overall gray, worst quality, low quality, JPEG compression residue, ugly, "
    "incomplete, extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, "
    "misshapen limbs, fused fingers, still picture, messy background, three legs, many people in "
    "the background, walking backwards"
)
MIN_TOKEN_CHARS = 16
#: The clip length Wan 2.1 VACE was trained on (5 s at 16 fps); longer clips drift and repeat.
DEFAULT_MAX_FRAMES = 81

_DEVICE = re.compile(r"cpu|cuda(:\d+)?|\d+")


class ResolutionSpec(BaseModel):
    """One resolution the worker offers: the landscape frame whose pixel count every aspect
    ratio keeps, and the scheduler's flow shift for it (Wan: 3.0 at 480p, 5.0 at 720p)."""

    width: Annotated[int, Field(ge=16, le=4096)]
    height: Annotated[int, Field(ge=16, le=4096)]
    flow_shift: Annotated[float, Field(gt=0, le=20)] = 3.0


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="R2V_WORKER_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    token: SecretStr | None = Field(
        None,
        description=f"a random string of at least {MIN_TOKEN_CHARS} characters, the same the "
        "bot has in R2V_WORKER_TOKEN",
    )
    model: str = Field(
        DEFAULT_MODEL,
        description="a Hugging Face model id or a local folder of a diffusers Wan VACE model",
    )
    host: str = Field("127.0.0.1", description="an address to listen on, e.g. 0.0.0.0")
    port: Annotated[int, Field(ge=0, le=65535)] = Field(
        8090, description="a TCP port number, 0–65535 (0 picks a free one)"
    )
    data_dir: Path = Field(
        Path("./worker-data"), description="a folder the worker may write tasks and results to"
    )
    max_references: Annotated[int, Field(ge=1, le=8)] = Field(
        3, description="how many reference images one task may have, 1–8 (Wan advises 3)"
    )
    max_frames: Annotated[int, Field(ge=17, le=241)] = Field(
        DEFAULT_MAX_FRAMES,
        description="the most frames one clip may have, 17–241 (Wan 2.1 VACE was trained on "
        "81: 5 s at 16 fps)",
    )
    steps: Annotated[int, Field(ge=1, le=200)] = Field(
        30, description="denoising steps per clip, 1–200"
    )
    guidance_scale: Annotated[float, Field(ge=1, le=20)] = Field(
        5.0, description="classifier-free guidance scale, 1–20"
    )
    negative_prompt: str = Field(
        DEFAULT_NEGATIVE_PROMPT, description="text describing what every clip should avoid"
    )
    crf: Annotated[int, Field(ge=0, le=51)] = Field(
        18, description="x264 constant rate factor, 0 (lossless) to 51 (smallest)"
    )
    devices: str = Field(
        "auto",
        description="auto (every CUDA GPU, else the CPU), or devices separated by commas: "
        "0,1 (CUDA GPU numbers), cuda:0,cuda:1 or cpu",
    )
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="bfloat16, float16 or float32 (the VAE always runs in float32)"
    )
    cpu_offload: bool = Field(
        False, description="true or false: keep idle models in CPU memory (less GPU memory)"
    )
    group_offload: bool = Field(
        False,
        description="true or false: stream the transformer's blocks from CPU memory (least GPU "
        "memory, slower)",
    )
    vae_tiling: bool = Field(False, description="true or false: decode the video in tiles")
    compile: bool = Field(
        False,
        description="true or false: torch.compile the transformer once, for every size served "
        "(compiled and warmed while the lane loads)",
    )
    step_cache: Annotated[int, Field(ge=0, le=10)] = Field(
        0,
        description="0 (off) or 2–10: compute the transformer's attention and feed-forward in "
        "full every this many denoising steps and predict them between (TaylorSeer), faster at "
        "some cost in detail",
    )
    resolutions: dict[str, ResolutionSpec] | None = Field(
        None,
        description='JSON: resolution names and sizes, e.g. {"480p": {"width": 832, "height": '
        '480, "flow_shift": 3.0}} (default: 480p, and 720p for 14B models)',
    )
    max_reference_mb: Annotated[int, Field(ge=1, le=1000)] = Field(
        100, description="the largest reference file accepted, in megabytes, 1–1000"
    )
    max_queue: Annotated[int, Field(ge=1)] = Field(
        100, description="how many tasks may wait at once, at least 1"
    )
    keep_hours: Annotated[float, Field(gt=0)] = Field(
        24.0, description="hours a finished task and its video are kept, more than 0"
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: str) -> str:
        text = value.strip().lower()
        if text == "auto":
            return text
        names = [name.strip() for name in text.split(",") if name.strip()]
        if not names or any(not _DEVICE.fullmatch(name) for name in names):
            raise ValueError("unknown device")
        # A bare number is a CUDA GPU, as nvidia-smi and CUDA_VISIBLE_DEVICES count them, and
        # "cuda" is the first: named alike, a GPU listed twice is seen as such.
        devices = [
            f"cuda:{name}" if name.isdigit() else "cuda:0" if name == "cuda" else name
            for name in names
        ]
        if len(set(devices)) != len(devices):
            raise ValueError("a device is named twice")
        return ",".join(devices)

    @field_validator("resolutions")
    @classmethod
    def _sizes(cls, value: dict[str, ResolutionSpec] | None) -> dict[str, ResolutionSpec] | None:
        if value is not None and not value:
            raise ValueError("no resolution given")
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("unknown level")
        return level

    @property
    def device_list(self) -> tuple[str, ...] | None:
        """The devices named, or ``None`` for ``auto`` (decided once torch is loaded)."""
        return None if self.devices == "auto" else tuple(self.devices.split(","))

    @property
    def max_reference_bytes(self) -> int:
        return self.max_reference_mb * 1024 * 1024

    @property
    def token_value(self) -> str:
        assert self.token is not None  # load_worker_settings refuses settings without one
        return self.token.get_secret_value()


def env_name(field_name: str) -> str:
    return f"R2V_WORKER_{field_name.upper()}"


def load_worker_settings(**overrides: Any) -> WorkerSettings:
    """Build the settings, or raise ``ConfigurationError`` with one line naming the variable."""
    try:
        settings = WorkerSettings(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        field_name = str(error["loc"][0]) if error["loc"] else "?"
        info = WorkerSettings.model_fields.get(field_name)
        name = env_name(field_name)
        accepts = (info.description if info is not None else None) or error["msg"]
        got = error.get("input")
        shown = f"{got!r}" if isinstance(got, str | int | float) else "this value"
        raise ConfigurationError(f"{name}={shown} is not accepted: expected {accepts}.") from None
    token = settings.token.get_secret_value().strip() if settings.token is not None else ""
    if len(token) < MIN_TOKEN_CHARS:
        state = "is not set" if not token else f"is shorter than {MIN_TOKEN_CHARS} characters"
        raise ConfigurationError(
            f"R2V_WORKER_TOKEN {state}: set it to a random string (e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`) and give the bot "
            "the same value."
        )
    if settings.step_cache == 1:
        raise ConfigurationError(
            "R2V_WORKER_STEP_CACHE=1 would compute every step anyway: set 0 (off) or 2–10."
        )
    if settings.cpu_offload and settings.group_offload:
        raise ConfigurationError(
            "R2V_WORKER_CPU_OFFLOAD and R2V_WORKER_GROUP_OFFLOAD cannot both be on: choose one "
            "(group offload needs the least GPU memory, CPU offload is faster)."
        )
    return settings
