"""Settings, read once at start from the environment (and ``.env``) and passed down.

Names are a contract (DESIGN.md): ``R2V_*`` for our own, the providers' and platforms' usual
names for keys and tokens. There is no module-level instance: ``load_settings`` builds one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.errors import ConfigurationError
from bot.ports import LabelStyle

#: Providers in the order the default is chosen when several keys are set.
HOSTED_PROVIDERS = (
    "dashscope",
    "wavespeed",
    "freepik",
    "fal",
    "replicate",
    "inference",
    "segmind",
    "together",
    "atlascloud",
)
PROVIDER_KEY_FIELDS = {
    "dashscope": "dashscope_api_key",
    "wavespeed": "wavespeed_api_key",
    "freepik": "freepik_api_key",
    "fal": "fal_key",
    "replicate": "replicate_api_token",
    "inference": "inference_api_key",
    "segmind": "segmind_api_key",
    "together": "together_api_key",
    "atlascloud": "atlascloud_api_key",
    "local": "worker_token",
}


_LABELS = "separate, videos_first, compact or character"
#: Every name R2V_PROVIDER takes: the hosted ones, the GPU worker, and the keyless storyboard.
KNOWN_PROVIDERS = (*HOSTED_PROVIDERS, "local", "storyboard")


def _env(name: str) -> Any:
    return Field(default=None, validation_alias=AliasChoices(name))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="R2V_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    data_dir: Path = Field(Path("./data"), description="a folder path the bot may write to")
    http_host: str = Field("127.0.0.1", description="an address to listen on, e.g. 0.0.0.0")
    http_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        8080, description="a TCP port number, 0–65535 (0 picks a free one)"
    )
    public_url: str | None = Field(
        None, description="an http(s) URL where providers can reach this bot, without a path"
    )
    provider: str | None = Field(
        None,
        description=f"one of {', '.join(KNOWN_PROVIDERS)}, or several separated by commas "
        "(the failover order)",
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")

    max_characters_per_server: Annotated[int, Field(ge=1)] = Field(
        1000, description="a whole number of characters, at least 1"
    )
    user_open_jobs: Annotated[int, Field(ge=1)] = Field(
        2, description="how many unfinished jobs one user may have running, at least 1"
    )
    server_open_jobs: Annotated[int, Field(ge=1)] = Field(
        10, description="how many unfinished jobs one server may have running, at least 1"
    )
    poll_initial_seconds: Annotated[float, Field(gt=0)] = Field(
        5.0, description="seconds before the first status poll, more than 0"
    )
    poll_max_seconds: Annotated[float, Field(gt=0)] = Field(
        60.0, description="the longest wait between status polls in seconds, more than 0"
    )
    job_timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        3600.0, description="seconds after which an unfinished job is given up, more than 0"
    )
    max_result_bytes: Annotated[int, Field(ge=1)] = Field(
        500 * 1024 * 1024, description="the largest result video accepted, in bytes"
    )
    storyboard_labels: LabelStyle | None = Field(None, description=_LABELS)
    storyboard_render_seconds: Annotated[float, Field(ge=0)] = Field(
        0.0, description="extra seconds the storyboard waits before rendering (for demos and tests)"
    )

    console_delivery_delay_seconds: Annotated[float, Field(ge=0)] = Field(
        0.0, description="seconds the console waits before delivering (for demos and tests)"
    )

    dashscope_api_key: SecretStr | None = _env("DASHSCOPE_API_KEY")
    wavespeed_api_key: SecretStr | None = _env("WAVESPEED_API_KEY")
    freepik_api_key: SecretStr | None = _env("FREEPIK_API_KEY")
    fal_key: SecretStr | None = _env("FAL_KEY")
    replicate_api_token: SecretStr | None = _env("REPLICATE_API_TOKEN")
    inference_api_key: SecretStr | None = _env("INFERENCE_API_KEY")
    segmind_api_key: SecretStr | None = _env("SEGMIND_API_KEY")
    together_api_key: SecretStr | None = _env("TOGETHER_API_KEY")
    atlascloud_api_key: SecretStr | None = _env("ATLASCLOUD_API_KEY")
    local_url: str | None = Field(
        None,
        description="the http(s) URL of your GPU worker (r2v worker), or several separated by "
        "commas, e.g. http://gpu1:8090,http://gpu2:8090",
    )
    worker_token: SecretStr | None = Field(
        None, description="the shared bearer token of the GPU worker"
    )
    worker_max_frames: Annotated[int, Field(ge=17, le=241)] = Field(
        81,
        description="the most frames a GPU worker clip may have, 17–241 (81 is 5 s at 16 fps, "
        "what Wan 2.1 VACE was trained on); the same variable the worker reads",
    )
    local_handover_seconds: Annotated[float, Field(ge=0)] = Field(
        60.0,
        description="seconds a GPU worker may stay unreachable before its jobs are sent to "
        "another one in R2V_LOCAL_URL, 0 or more",
    )

    # Each provider's base URL (scheme, host and port only) and label style, overridable because
    # tests point clients at loopback fakes and the providers' own documents disagree on labels.
    dashscope_base_url: str | None = Field(
        None, description="an http(s) URL: scheme, host and port"
    )
    dashscope_labels: LabelStyle | None = Field(None, description=_LABELS)
    dashscope_region: Literal["singapore", "virginia", "beijing"] | None = Field(
        None,
        description="singapore, virginia or beijing: the region of the DashScope key (and base "
        "URL, when R2V_DASHSCOPE_BASE_URL is not set); singapore when neither is set",
    )
    wavespeed_base_url: str | None = Field(
        None, description="an http(s) URL: scheme, host and port"
    )
    wavespeed_labels: LabelStyle | None = Field(None, description=_LABELS)
    freepik_base_url: str | None = Field(None, description="an http(s) URL: scheme, host and port")
    freepik_labels: LabelStyle | None = Field(None, description=_LABELS)
    fal_base_url: str | None = Field(None, description="an http(s) URL: scheme, host and port")
    fal_labels: LabelStyle | None = Field(None, description=_LABELS)
    replicate_base_url: str | None = Field(
        None, description="an http(s) URL: scheme, host and port"
    )
    replicate_labels: LabelStyle | None = Field(None, description=_LABELS)
    inference_base_url: str | None = Field(
        None, description="an http(s) URL: scheme, host and port"
    )
    inference_labels: LabelStyle | None = Field(None, description=_LABELS)
    segmind_base_url: str | None = Field(None, description="an http(s) URL: scheme, host and port")
    segmind_labels: LabelStyle | None = Field(None, description=_LABELS)
    together_base_url: str | None = Field(None, description="an http(s) URL: scheme, host and port")
    together_labels: LabelStyle | None = Field(None, description=_LABELS)
    atlascloud_base_url: str | None = Field(
        None, description="an http(s) URL: scheme, host and port"
    )
    atlascloud_labels: LabelStyle | None = Field(None, description=_LABELS)
    local_labels: LabelStyle | None = Field(None, description=_LABELS)
    atlascloud_jwks_url: str | None = Field(
        None, description="the URL of AtlasCloud's webhook key set"
    )
    discord_guild: int | None = Field(
        None, description="a Discord server (guild) id to sync commands to, for quick testing"
    )
    slack_admin_group: str | None = Field(
        None, description="the handle or id of a Slack user group whose members are bot admins"
    )
    fal_queue_url: str | None = Field(None, description="an http(s) URL (queue.fal.run)")
    fal_rest_url: str | None = Field(None, description="an http(s) URL (rest.fal.ai)")
    fal_jwks_url: str | None = Field(None, description="the URL of fal's webhook key set")
    wavespeed_webhook_secret: SecretStr | None = _env("WAVESPEED_WEBHOOK_SECRET")
    replicate_webhook_secret: SecretStr | None = _env("REPLICATE_WEBHOOK_SECRET")
    prices: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description='JSON: USD per second by provider and resolution, e.g. {"fal": {"720p": 0.1}}',
    )
    media_memory_mb: Annotated[int, Field(ge=64)] = Field(
        512,
        description="megabytes of decoded images held at once (big ones take turns), at least 64",
    )
    max_reference_seconds: Annotated[float, Field(gt=0, le=30)] = Field(
        5.0, description="seconds of reference video sent to a provider (it bills them), 0–30"
    )
    media_link_seconds: Annotated[int, Field(ge=60)] = Field(
        3600, description="how long a signed /media link stays valid, in seconds (at least 60)"
    )
    gallery_link_hours: Annotated[int, Field(ge=1, le=24 * 365)] = Field(
        24, description="how many hours a /gallery link works, 1–8760"
    )
    prompt_blocklist: Path | None = Field(
        None, description="a text file of words or phrases refused in prompts, one a line"
    )

    # Several instances (DESIGN.md "Several instances").
    database_url: str | None = Field(
        None,
        description="sqlite:///path/to/file or postgresql://user@host:port/database "
        "(default: sqlite in R2V_DATA_DIR)",
    )
    blob_url: str | None = Field(
        None,
        description="file:///path/to/folder, file://relative/folder or s3://bucket/prefix "
        "(default: files in R2V_DATA_DIR)",
    )
    blob_cache_bytes: Annotated[int, Field(ge=0)] = Field(
        2 * 1024**3,
        description="how many bytes of an object store's blobs to keep on local disk, 0 or more",
    )
    aws_access_key_id: str | None = _env("AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = _env("AWS_SECRET_ACCESS_KEY")
    aws_session_token: SecretStr | None = _env("AWS_SESSION_TOKEN")
    aws_region: str | None = Field(
        None,
        validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"),
        description="an AWS region name, e.g. eu-central-1",
    )
    aws_endpoint_url: str | None = Field(
        None,
        validation_alias=AliasChoices("AWS_ENDPOINT_URL"),
        description="the http(s) URL of an S3-compatible store that is not AWS",
    )
    secret: SecretStr | None = Field(
        None,
        description="a random string shared by every instance (signs webhook tokens and links); "
        "required with PostgreSQL",
    )
    instance_id: str | None = Field(
        None, description="this instance's name in leases and logs (default: host name and pid)"
    )
    lease_seconds: Annotated[float, Field(ge=2, le=3600)] = Field(
        30.0, description="how long an instance's hold on a job lasts unrenewed, 2–3600 seconds"
    )
    shutdown_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        20.0, description="seconds a stopping instance has to finish what it holds, more than 0"
    )
    discord_shards: str | None = Field(
        None,
        description="the Discord shards this process runs, as first-last/count with "
        "last < count, e.g. 0-3/8 (shards 0–3 of 8)",
    )

    discord_token: SecretStr | None = _env("DISCORD_TOKEN")
    slack_bot_token: SecretStr | None = _env("SLACK_BOT_TOKEN")
    slack_app_token: SecretStr | None = _env("SLACK_APP_TOKEN")
    slack_signing_secret: SecretStr | None = _env("SLACK_SIGNING_SECRET")
    discord_api_base: str | None = Field(None, description="an http(s) URL of a Discord REST API")
    discord_file_hosts: str = Field(
        "cdn.discordapp.com,media.discordapp.net",
        description="host names attachments are downloaded from over https, separated by commas",
    )
    slack_file_hosts: str = Field(
        "files.slack.com",
        description="host names (https) or http(s) origins Slack files are downloaded from with "
        "the bot token, separated by commas",
    )
    slack_api_base: str | None = Field(None, description="an http(s) URL of a Slack Web API")

    @field_validator(
        "public_url",
        "discord_api_base",
        "slack_api_base",
        "fal_queue_url",
        "fal_rest_url",
        "fal_jwks_url",
        "atlascloud_jwks_url",
        "aws_endpoint_url",
        *(f"{p}_base_url" for p in HOSTED_PROVIDERS),
    )
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("dashscope_region", mode="before")
    @classmethod
    def _region(cls, value: object) -> object:
        return value.strip().lower() or None if isinstance(value, str) else value

    @field_validator("blob_url")
    @classmethod
    def _blob_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("file://", "s3://")):
            raise ValueError("must start with file:// or s3://")
        return value

    @field_validator("local_url")
    @classmethod
    def _http_urls(cls, value: str | None) -> str | None:
        """One worker's URL or several, comma-separated; each checked as an http(s) URL."""
        if value is None or not value.strip():
            return None
        checked = [cls._http_url(url) or "" for url in _names(value)]
        if len(set(checked)) != len(checked):
            raise ValueError("a URL is listed twice")
        return ",".join(checked)

    @property
    def local_urls(self) -> tuple[str, ...]:
        """The GPU workers' URLs, in the order given."""
        return tuple(self.local_url.split(",")) if self.local_url else ()

    @field_validator("discord_file_hosts", "slack_file_hosts")
    @classmethod
    def _hosts(cls, value: str) -> str:
        if not _names(value):
            raise ValueError("no host given")
        return value

    @property
    def discord_file_host_names(self) -> frozenset[str]:
        return frozenset(name.lower() for name in _names(self.discord_file_hosts))

    @property
    def slack_file_origins(self) -> tuple[str, ...]:
        """``R2V_SLACK_FILE_HOSTS`` as origins: a bare host name means https on it."""
        return tuple(n if "://" in n else f"https://{n}" for n in _names(self.slack_file_hosts))

    @field_validator("provider")
    @classmethod
    def _providers(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        unknown = [n for n in _names(value.lower()) if n not in KNOWN_PROVIDERS]
        if unknown:
            raise ValueError(f"unknown provider {', '.join(unknown)}")
        return value

    @field_validator("discord_shards")
    @classmethod
    def _shards(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        shard_plan(value)
        return value.strip()

    @property
    def discord_shard_plan(self) -> tuple[list[int], int] | None:
        """``(shard ids, shard count)`` for ``R2V_DISCORD_SHARDS``; ``None``: all, Discord's
        recommended count."""
        return shard_plan(self.discord_shards) if self.discord_shards else None

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
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    def provider_key(self, provider: str) -> SecretStr | None:
        field_name = PROVIDER_KEY_FIELDS.get(provider)
        value = getattr(self, field_name) if field_name else None
        return value if isinstance(value, SecretStr) else None

    @property
    def configured_providers(self) -> list[str]:
        """Providers this bot can use: every hosted one with a key, and the GPU worker when
        its URL is set."""
        hosted = [name for name in HOSTED_PROVIDERS if self.provider_key(name) is not None]
        return hosted + (["local"] if self.local_url else [])

    @property
    def provider_order(self) -> list[str]:
        """Providers to try in order: ``R2V_PROVIDER``, else the first keyed, else storyboard."""
        if self.provider:
            return _names(self.provider.lower())
        return self.configured_providers[:1] or ["storyboard"]

    @property
    def chat_platforms(self) -> list[str]:
        platforms = []
        if self.discord_token is not None:
            platforms.append("discord")
        if self.slack_bot_token is not None and (
            self.slack_app_token is not None or self.slack_signing_secret is not None
        ):
            platforms.append("slack")
        return platforms


def _names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


_SHARDS = re.compile(r"(\d+)(?:-(\d+))?/(\d+)")


def shard_plan(value: str) -> tuple[list[int], int]:
    """``"0-3/8"`` → ``([0, 1, 2, 3], 8)``; ``"5/8"`` is shard 5 alone."""
    found = _SHARDS.fullmatch(value.strip())
    if found is None:
        raise ValueError("not first-last/count")
    first, last, count = int(found[1]), int(found[2] or found[1]), int(found[3])
    if not first <= last < count:
        raise ValueError("shards must run from first to last, below the count")
    return list(range(first, last + 1)), count


def env_name(field_name: str) -> str:
    """The environment variable a settings field is read from."""
    info = Settings.model_fields[field_name]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        if isinstance(first, str):
            return first
    return f"R2V_{field_name.upper()}"


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, or raise ``ConfigurationError`` with one line naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        field_name = str(error["loc"][0]) if error["loc"] else "?"
        if field_name in Settings.model_fields:
            name = env_name(field_name)
            accepts = Settings.model_fields[field_name].description or error["msg"]
        else:
            name, accepts = field_name.upper(), error["msg"]
        got = error.get("input")
        shown = f"{got!r}" if isinstance(got, str | int | float) else "this value"
        raise ConfigurationError(f"{name}={shown} is not accepted: expected {accepts}.") from None
