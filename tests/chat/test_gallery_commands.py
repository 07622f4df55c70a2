"""/gallery and /character export on Discord and Slack, each against its loopback fake.

The catalog is rendered generically, so the new commands appear on both platforms without code
of their own; what each platform decides is how a reply's file travels: Discord uploads an
export under the guild's upload cap and links it above, Slack (whose answers seen only by the
asker cannot carry files) always links it. The links are signed and really download the ZIP.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.chat.test_discord import characters, discord_bot
from tests.chat.test_slack import slack_bot
from tests.fakes.discord import FakeDiscord
from tests.fakes.slack import FakeSlack


@pytest.fixture
async def discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server
        assert server.problems == []  # every body the bot sent matched Discord's OpenAPI


async def test_discord_offers_the_commands_and_uploads_a_small_export(
    tmp_path: Path, discord: FakeDiscord
) -> None:
    fake = discord
    async with discord_bot(tmp_path, fake) as bot:
        [sync] = fake.made("PUT", r"/applications/\d+/commands")
        synced = {c["name"]: c for c in sync.body}
        subcommands = {o["name"] for o in synced["character"]["options"]}
        assert {"export", "import"} <= subcommands and "gallery" in synced
        admin = fake.user("admin", admin=True)
        channel = fake.text_channel("general")
        await characters(bot, admin, "alice")
        answer = await bot.send(fake.slash("gallery", admin, channel))
        assert answer.ephemeral and f"{bot.public_url}/gallery/" in answer.content
        link = answer.content.split(": ", 1)[1].split()[0]
        async with httpx.AsyncClient() as client:
            page = await client.get(link)
        assert page.status_code == 200 and 'data-name="alice"' in page.text

        answer = await bot.send(fake.slash("character export", admin, channel))
        assert answer.ephemeral and "1 characters" in answer.content
        [edit] = fake.made("PATCH", r"/webhooks/\d+/[^/]+/messages/@original")[-1:]
        [(name, data)] = edit.files.items()
        assert name.endswith(".zip") or name.startswith("files")
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            assert "manifest.json" in archive.namelist()


async def test_discord_links_an_export_over_the_upload_cap(
    tmp_path: Path, discord: FakeDiscord
) -> None:
    fake = discord
    async with discord_bot(tmp_path, fake, max_upload_bytes=1024) as bot:
        admin = fake.user("admin", admin=True)
        channel = fake.text_channel("general")
        await characters(bot, admin, "alice")
        answer = await bot.send(fake.slash("character export", admin, channel))
        assert "over the 1 KB upload limit" in answer.content, answer.content
        [edit] = fake.made("PATCH", r"/webhooks/\d+/[^/]+/messages/@original")[-1:]
        assert not edit.files
        link = answer.content.split()[-1]
        assert link.startswith(f"{bot.public_url}/exports/")
        async with httpx.AsyncClient() as client:
            download = await client.get(link)
            altered = await client.get(link[:-3] + "AAA")
        assert download.status_code == 200
        assert download.headers["Content-Type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
            assert "manifest.json" in archive.namelist()
        assert altered.status_code == 403 and "not valid" in altered.text


async def test_slack_offers_the_commands_and_links_the_export(tmp_path: Path) -> None:
    async with FakeSlack() as slack, slack_bot(tmp_path, slack) as bot:
        slack.users["U0OWN"] = {"is_owner": True}
        await bot.character("alice", owner="U0OWN")
        _, url = await slack.slash("help", user="U0OWN")
        listed = (await slack.response(url))["text"]
        assert "gallery" in listed and "character export" in listed
        _, url = await slack.slash("gallery", user="U0OWN")
        answer = await slack.response(url)
        assert answer["response_type"] == "ephemeral" and "/gallery/" in answer["text"]
        _, url = await slack.slash("character export", user="U0OWN")
        text = (await slack.response(url))["text"]
        assert "/exports/" in text, text
        link = text.split()[-1]
        async with httpx.AsyncClient() as client:
            download = await client.get(link)
        assert download.status_code == 200
        with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
            assert "manifest.json" in archive.namelist()
        # a slash command carries no file on Slack: refused at once, saying so
        refused, _ = await slack.slash("character import", user="U0OWN")
        assert "needs_file" in refused.json()["text"]
