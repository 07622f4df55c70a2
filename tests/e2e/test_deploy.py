"""compose.yaml, the example deployment of several instances, names only settings the bot
reads and gives instances time to drain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bot.settings import Settings, env_name

ROOT = Path(__file__).resolve().parents[2]


def known_variables() -> set[str]:
    return {env_name(name) for name in Settings.model_fields} | {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
    }


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def test_two_bot_instances_share_one_database_bucket_and_secret() -> None:
    services = compose()["services"]
    bots = {name: spec for name, spec in services.items() if name.startswith("bot-")}
    assert len(bots) == 2
    for spec in bots.values():
        env = spec["environment"]
        assert env["R2V_DATABASE_URL"].startswith("postgresql://")
        assert env["R2V_BLOB_URL"].startswith("s3://")
        assert set(env) <= known_variables(), set(env) - known_variables()
        # docker stops a container this long after SIGTERM: more than the drain's time.
        assert (
            int(spec["stop_grace_period"].rstrip("s"))
            > Settings.model_fields["shutdown_seconds"].default
        )
    assert {spec["environment"]["R2V_INSTANCE_ID"] for spec in bots.values()} == set(bots)
    assert {"postgres", "minio", "proxy", "worker"} <= set(services)


def test_the_example_env_sets_the_shared_secret_and_only_known_variables() -> None:
    names = {
        line.split("=", 1)[0]
        for line in (ROOT / "deploy" / "example.env").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert "R2V_SECRET" in names
    own = {"PUBLIC_HOST", "POSTGRES_PASSWORD", "MINIO_PASSWORD"}  # compose's, not the bot's
    chat_and_keys = {"DISCORD_TOKEN", "SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"}
    assert names - own - chat_and_keys <= known_variables(), names - known_variables()
