"""The Discord adapter against a loopback fake of Discord, with the whole bot running in-process.

Interactions are fed to the real discord.py client as the gateway would deliver them; the fake
answers Discord's REST routes, serves attachments as the CDN would, and checks every JSON body
against Discord's OpenAPI description (``fake.problems`` must stay empty). Jobs really run: the
storyboard provider renders each video, or WaveSpeed's fake serves one when a test needs a
result of a given size.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import av
import discord
import httpx
import pytest

from adapters.chat.discord import DiscordAdapter, fetch_application_id, invite_url
from adapters.chat.discord.commands import CommandSet
from adapters.http.media import MediaLinks
from adapters.webhooks import load_or_create_secret
from bot.app import App, build
from bot.commands import CATALOG, OptionType
from bot.errors import ConfigurationError
from bot.models import Actor, CommandRequest, Job, JobState
from bot.settings import load_settings
from tests.fakes.discord import BOT_TOKEN, Answer, CdnTransport, FakeDiscord, User
from tests.fakes.wavespeed import FakeWaveSpeed
from tests.harness import bot_settings, bot_socket
from tests.media_factory import local_file, make_image, make_video, make_wav

MiB = 1024 * 1024


# The whole bot with the Discord adapter ----------------------------------------------------------


@dataclass
class DiscordBot:
    fake: FakeDiscord
    adapter: DiscordAdapter
    app: App
    cdn: CdnTransport
    public_url: str

    async def send(self, payload: dict[str, Any]) -> Answer:
        """Deliver an interaction as the gateway would, and wait for the bot's answer."""
        self.fake.feed(self.adapter.client, payload)
        return await self.fake.answer(payload)

    async def generate(self, user: User, channel: int, **options: Any) -> str:
        """``/generate`` from ``user`` in ``channel``; the id of the job it started."""
        answer = await self.send(self.fake.slash("generate", user, channel, **options))
        return job_id_in(answer.content)

    async def job(self, job_id: str) -> Job:
        job = await self.app.engine.job(job_id)
        assert job is not None
        return job


@asynccontextmanager
async def discord_bot(
    tmp: Path, fake: FakeDiscord, *, max_upload_bytes: int | None = None, **settings: Any
) -> AsyncIterator[DiscordBot]:
    """The bot over ``tmp/data`` (kept between calls, as a restart would find it)."""
    sock, public_url = bot_socket()
    values: dict[str, Any] = {"discord_token": BOT_TOKEN, "discord_api_base": fake.url}
    loaded = bot_settings(tmp, public_url, **{**values, **settings})
    # The same signing key the app's /media route checks links with.
    secret = load_or_create_secret(loaded.data_dir / "secrets" / "media.key")
    links = MediaLinks(secret.encode(), public_url)
    cdn = CdnTransport(fake)
    async with httpx.AsyncClient(transport=cdn) as downloads:
        adapter = DiscordAdapter(
            loaded,
            link_for=links.url_for,
            downloads=downloads,
            max_upload_bytes=max_upload_bytes,
            gateway=False,
        )
        app = await build(loaded, {"discord": adapter}, http_socket=sock)
        try:
            await adapter.start(app.core)
            yield DiscordBot(fake, adapter, app, cdn, public_url)
        finally:
            await app.close()
            await adapter.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server
        assert server.problems == []


# Helpers ---------------------------------------------------------------------------------------


async def characters(bot: DiscordBot, owner: User, *names: str, private: bool = False) -> None:
    """Characters saved straight through the core, for tests about something else."""
    actor = Actor("discord", str(bot.fake.guild_id), str(owner.id))
    for name in names:
        image = make_image(bot.app.settings.data_dir.parent / f"{name}.png", size=(240, 240))
        options = {"name": name, "image": local_file(image)}
        if private:
            options["visibility"] = "private"
        reply = await bot.app.core.dispatch(CommandRequest(actor, "character create", options))
        assert not reply.is_error, reply.text


async def generation_channel(bot: DiscordBot, name: str = "videos") -> int:
    fake = bot.fake
    channel = fake.text_channel(name)
    admin = fake.user("admin", admin=True)
    answer = await bot.send(fake.slash("settings channel add", admin, channel, channel=channel))
    assert answer.code is None, answer.content
    return channel


def job_id_in(content: str) -> str:
    words = content.split()
    return words[words.index("job") + 1]


async def rendering_in_its_thread(bot: DiscordBot, fake: FakeDiscord) -> tuple[int, User, str, int]:
    """Ann's job, rendering (slowly) in its thread: channel, user, job id and thread id."""
    channel = await generation_channel(bot)
    user = fake.user("ann")
    await characters(bot, user, "alice")
    job_id = await bot.generate(user, channel, prompt="@alice waves", duration=2)
    threads = await fake.wait_for(lambda: fake.threads_of(channel))
    return channel, user, job_id, int(threads[0]["id"])


async def delivered(bot: DiscordBot, job_id: str) -> dict[str, Any]:
    """Wait for the job's video message and answer it."""

    def video() -> dict[str, Any] | None:
        return next(
            (
                m
                for m in bot.fake.messages.values()
                if m["attachments"] and f"Job {job_id}" in str(m["embeds"])
            ),
            None,
        )

    return await bot.fake.wait_for(video)


async def finished(bot: DiscordBot, job_id: str, within: float = 15.0) -> Job:
    """The job once it has ended (the engine records a delivery just after posting it)."""
    deadline = asyncio.get_running_loop().time() + within
    while not (job := await bot.job(job_id)).state.is_final:
        assert asyncio.get_running_loop().time() < deadline, f"job {job_id} is {job.state}"
        await asyncio.sleep(0.02)
    return job


def noise_video(path: Path, frames: int, size: tuple[int, int] = (320, 240)) -> Path:
    """An H.264 clip of random pixels, losslessly coded: big for its length, cheap to make."""
    rng = random.Random(7)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=24, options={"preset": "ultrafast", "qp": "0"})
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            pixels = rng.randbytes(size[0] * size[1] * 4)
            frame = av.VideoFrame.from_bytes(pixels, *size, format="rgba")
            frame.pts = index
            frame.time_base = Fraction(1, 24)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def video_seconds(data: bytes, tmp: Path) -> float:
    path = tmp / "check.mp4"
    path.write_bytes(data)
    with av.open(str(path)) as clip:
        stream = clip.streams.video[0]
        frames = sum(1 for _ in clip.decode(stream))
        assert stream.average_rate is not None
        return frames / float(stream.average_rate)


# Commands --------------------------------------------------------------------------------------


async def test_the_catalog_is_synced_globally_as_application_commands(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    async with discord_bot(tmp_path, fake):
        pass
    [sync] = fake.made("PUT", r"/applications/\d+/commands")
    assert not fake.made("PUT", r"/applications/\d+/guilds/\d+/commands")
    synced = {c["name"]: c for c in sync.body}
    assert set(synced) == {
        "character",
        "generate",
        "jobs",
        "cancel",
        "help",
        "settings",
        "usage",
        "gallery",
        "Save as character",
    }
    assert synced["Save as character"]["type"] == 3
    subs = {o["name"]: o for o in synced["character"]["options"]}
    assert list(subs) == [
        *("create", "add", "remove", "show", "list", "rename", "delete", "export", "import")
    ]
    # /settings has its own options beside the channel group, so it becomes /settings limits.
    settings = {o["name"]: o for o in synced["settings"]["options"]}
    assert settings["limits"]["type"] == 1
    assert [o["name"] for o in settings["channel"]["options"]] == ["add", "remove"]
    admin_bit = discord.Permissions(manage_guild=True).value
    assert synced["settings"]["default_member_permissions"] == admin_bit
    assert "default_member_permissions" not in synced["generate"]

    generate = {o["name"]: o for o in synced["generate"]["options"]}
    assert synced["generate"]["options"][0]["name"] == "prompt"  # required options first
    assert [generate[f"ref{n}"]["type"] for n in (1, 2, 3)] == [11, 11, 11]
    assert [c["value"] for c in generate["resolution"]["choices"]] == ["480p", "720p", "1080p"]
    assert [c["value"] for c in generate["aspect"]["choices"]] == [
        "16:9",
        "9:16",
        "1:1",
        "4:3",
        "3:4",
    ]
    # A short range is offered as choices, as the README says.
    assert [c["value"] for c in generate["duration"]["choices"]] == list(range(2, 16))
    assert generate["duration"]["choices"][0]["name"] == "2 seconds"
    create = {o["name"]: o for o in subs["create"]["options"]}
    assert {n: create[n]["type"] for n in ("image", "image2", "image3", "video", "voice")} == {
        "image": 11,
        "image2": 11,
        "image3": 11,
        "video": 11,
        "voice": 11,
    }
    show = subs["show"]["options"][0]
    assert (show["name"], show["autocomplete"]) == ("name", True)

    # Every catalog command is there with exactly the catalog's options: nothing hard-coded.
    rendered = CommandSet()
    for command in CATALOG:
        top, *rest = rendered.path_of(command.name)
        node = synced[top]
        for word in rest:
            node = next(o for o in node["options"] if o["name"] == word)
        assert {o["name"] for o in node.get("options", [])} == {o.name for o in command.options}
        for option in command.options:
            if option.type is OptionType.CHARACTER:
                given = next(o for o in node["options"] if o["name"] == option.name)
                assert given.get("autocomplete") is True


async def test_commands_sync_to_one_guild_when_one_is_set(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    async with discord_bot(tmp_path, fake, discord_guild=fake.guild_id):
        pass
    assert not fake.made("PUT", r"/applications/\d+/commands")
    [sync] = fake.made("PUT", rf"/applications/{fake.app_id}/guilds/{fake.guild_id}/commands")
    assert len(sync.body) == len(CommandSet().payloads())


async def test_a_character_is_made_from_attachments_fetched_after_deferring(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    image = make_image(tmp_path / "alice.png", size=(320, 400))
    voice = make_wav(tmp_path / "alice.wav", seconds=1.5)
    async with discord_bot(tmp_path, fake) as bot:
        user = fake.user("ann")
        channel = fake.text_channel("general")
        answer = await bot.send(
            fake.slash("character create", user, channel, name="alice", image=image, voice=voice)
        )
        assert answer.ephemeral
        assert answer.content.startswith("Saved alice: 1 image, 1 voice clip")
        shown = await bot.send(fake.slash("character show", user, channel, name="alice"))
        assert "image1: PNG, 320×400" in shown.content
        assert "voice: WAV" in shown.content

    # Deferred (ephemeral "thinking") before a byte was downloaded, from Discord's CDN only.
    [deferral] = fake.made("POST", r"/interactions/\d+/[^/]+/callback")[:1]
    assert deferral.body == {"type": 5, "data": {"flags": 64}}
    assert len(fake.cdn_requests) == 2
    assert all(seq > deferral.seq for seq, _ in fake.cdn_requests)
    assert set(bot.cdn.hosts) == {"cdn.discordapp.com"}


async def test_attachments_not_on_discords_cdn_are_never_fetched(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    image = make_image(tmp_path / "a.png", size=(320, 320))
    async with discord_bot(tmp_path, fake) as bot:
        user = fake.user("ann")
        channel = fake.text_channel("general")
        for url in (
            "https://evil.example.com/attachments/1/2/a.png",
            "http://cdn.discordapp.com/attachments/1/2/a.png",
            "https://cdn.discordapp.com.evil.example.com/a.png",
            "https://cdn.discordapp.com:8443/attachments/1/2/a.png",
        ):
            planted = fake.attachment(image, url=url)
            answer = await bot.send(
                fake.slash("character create", user, channel, name="eve", image=planted)
            )
            assert answer.code == "untrusted_attachment", url
            assert "cdn.discordapp.com" in answer.content
        # A file that brings more bytes than Discord declared for it is cut off and refused.
        short = fake.attachment(image)
        short["size"] = 1000
        answer = await bot.send(
            fake.slash("character create", user, channel, name="eve", image=short)
        )
        assert answer.code == "too_large"
        listed = await bot.send(fake.slash("character list", user, channel))
        assert "No characters yet" in listed.content
    assert bot.cdn.hosts == ["cdn.discordapp.com"]  # the last one only, and it was cut off


async def test_replies_name_commands_as_discord_spells_them(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    async with discord_bot(tmp_path, fake) as bot:
        user = fake.user("ann")
        channel = fake.text_channel("general")
        empty = await bot.send(fake.slash("character list", user, channel))
        jobs = await bot.send(fake.slash("jobs", user, channel))
    assert "Save one with /character create." in empty.content
    assert "Make one with /generate." in jobs.content
    assert "\u2063" not in empty.content + jobs.content


async def test_owners_are_mentions_and_character_list_takes_a_user(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    async with discord_bot(tmp_path, fake) as bot:
        ann, ben, cat = fake.user("ann"), fake.user("ben"), fake.user("cat")
        channel = fake.text_channel("general")
        await characters(bot, ann, "alice")
        await characters(bot, ben, "bob")
        everyone = await bot.send(fake.slash("character list", ann, channel))
        bens = await bot.send(fake.slash("character list", ann, channel, owner=str(ben.id)))
        cats = await bot.send(fake.slash("character list", ann, channel, owner=str(cat.id)))
        shown = await bot.send(fake.slash("character show", ann, channel, name="bob"))
    [option] = [
        o
        for c in fake.commands["global"]
        if c["name"] == "character"
        for s in c["options"]
        if s["name"] == "list"
        for o in s["options"]
        if o["name"] == "owner"
    ]
    assert option["type"] == 6  # Discord's user picker
    assert f"by <@{ann.id}>" in everyone.content and f"by <@{ben.id}>" in everyone.content
    assert "bob" in bens.content and "alice" not in bens.content
    assert cats.content == f"<@{cat.id}> has no characters you can see."
    assert f"by <@{ben.id}>" in shown.content


async def test_a_refusal_names_the_file(tmp_path: Path, fake: FakeDiscord) -> None:
    async with discord_bot(tmp_path, fake) as bot:
        user = fake.user("ann")
        channel = fake.text_channel("general")
        packed = fake.attachment(data=b"PK\x03\x04" + bytes(200), filename="ref2.png")
        answer = await bot.send(
            fake.slash("character create", user, channel, name="eve", image=packed)
        )
    assert answer.code == "invalid_media"
    assert "ref2.png is a ZIP archive, which is not accepted" in answer.content


async def test_a_bad_name_is_refused_with_the_rule(tmp_path: Path, fake: FakeDiscord) -> None:
    image = make_image(tmp_path / "a.png", size=(320, 320))
    async with discord_bot(tmp_path, fake) as bot:
        user = fake.user("ann")
        channel = fake.text_channel("general")
        answer = await bot.send(
            fake.slash("character create", user, channel, name="9lives", image=image)
        )
    assert answer.code == "invalid_name"
    assert "a letter, then letters, digits, _ or -" in answer.content
    assert fake.cdn_requests == []  # refused before any download


async def test_attachment_hosts_are_a_setting(tmp_path: Path, fake: FakeDiscord) -> None:
    image = make_image(tmp_path / "a.png", size=(320, 320))
    async with discord_bot(tmp_path, fake, discord_file_hosts="files.example.org") as bot:
        user = fake.user("ann")
        channel = fake.text_channel("general")
        refused = await bot.send(
            fake.slash("character create", user, channel, name="eve", image=fake.attachment(image))
        )
        assert refused.code == "untrusted_attachment"
        assert "files.example.org" in refused.content
        elsewhere = fake.attachment(image, url="https://files.example.org/a/b/a.png")
        saved = await bot.send(
            fake.slash("character create", user, channel, name="eve", image=elsewhere)
        )
        assert saved.code is None, saved.content
    assert bot.cdn.hosts == ["files.example.org"]


async def test_autocomplete_offers_the_users_names_prefix_first(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    async with discord_bot(tmp_path, fake) as bot:
        user, other = fake.user("ann"), fake.user("ben")
        channel = fake.text_channel("general")
        await characters(bot, user, "Alina", "alice", "malice", "bob")
        await characters(bot, other, "alien", private=True)
        answer = await bot.send(
            fake.autocomplete("character show", user, channel, "name", name="ali")
        )
        assert answer.choices == ("alice", "Alina", "malice")
        await characters(bot, user, *(f"c{n:02d}" for n in range(30)))
        many = await bot.send(fake.autocomplete("generate", user, channel, "prompt", prompt="x"))
        assert many.choices == ()  # the prompt is free text: nothing offered
        answer = await bot.send(
            fake.autocomplete("character delete", user, channel, "name", name="c")
        )
        assert answer.choices == tuple(f"c{n:02d}" for n in range(25))


# Generation ------------------------------------------------------------------------------------


async def test_a_video_is_made_in_a_thread_of_the_generation_channel(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    async with discord_bot(tmp_path, fake) as bot:
        channel = await generation_channel(bot)
        user = fake.user("ann")
        await characters(bot, user, "alice", "bob")
        prompt = "@alice waves at @bob on a rooftop at dusk"
        answer = await bot.send(
            fake.slash("generate", user, channel, prompt=prompt, duration=2, seed=7)
        )
        assert answer.ephemeral and answer.code is None
        job_id = job_id_in(answer.content)
        [thread] = fake.threads_of(channel)
        assert thread["name"] == prompt
        assert thread["type"] == 11  # a public thread
        assert f"Follow it in <#{thread['id']}>" in answer.content

        video = await delivered(bot, job_id)
        job = await bot.job(job_id)
        assert video["channel_id"] == thread["id"]
        assert video["content"] == f"<@{user.id}>"
        [embed] = video["embeds"]
        assert prompt in embed["description"] and "2s · 720p · 16:9" in embed["description"]
        assert "seed 7" in embed["description"]
        labels = [b["label"] for row in video["components"] for b in row["components"]]
        assert labels == ["Re-roll", "1080p", "Edit prompt", "Delete"]
        send = next(r for r in fake.made("POST", rf"/channels/{thread['id']}/messages") if r.files)
        assert send.body["allowed_mentions"]["users"] == [user.id]
        assert send.body["allowed_mentions"]["parse"] == []
        [(name, data)] = send.files.items()
        assert name == f"{job_id}.mp4"
        assert hashlib.sha256(data).hexdigest() == job.result_blob  # blobs are named by content

        # The status message lives in the thread and was edited through the job's states.
        status = await fake.wait_for(
            lambda: next(
                (m for m in fake.in_channel(int(thread["id"])) if "✅ Done" in m["content"]),
                None,
            )
        )
        edits = [
            r.body["content"]
            for r in fake.made("PATCH", rf"/channels/{thread['id']}/messages/{status['id']}")
        ]
        first = next(r for r in fake.made("POST", rf"/channels/{thread['id']}/messages"))
        assert "⏳ Queued" in first.body["content"]
        states = ["📨 Sent to storyboard", "🎬 Rendering", "📦 Finished", "✅ Done"]
        seen = [next(i for i, e in enumerate(edits) if s in e) for s in states]
        assert seen == sorted(seen)
        assert fake.in_channel(channel) == []  # nothing in the channel itself
        assert (await finished(bot, job_id)).state is JobState.DELIVERED


async def test_generate_is_refused_outside_the_generation_channels(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    async with discord_bot(tmp_path, fake) as bot:
        user = fake.user("ann")
        general = fake.text_channel("general")
        await characters(bot, user, "alice")
        # With no generation channel set, a job's messages go to the channel it came from.
        job_id = await bot.generate(user, general, prompt="@alice", duration=2)
        video = await delivered(bot, job_id)
        assert video["channel_id"] == str(general)
        assert fake.threads_of(general) == []

        videos = await generation_channel(bot)
        before = len(fake.messages)
        answer = await bot.send(fake.slash("generate", user, general, prompt="@alice", duration=2))
        assert answer.ephemeral
        assert answer.code == "wrong_channel"
        assert f"<#{videos}>" in answer.content
        assert len(fake.messages) == before
        assert fake.threads_of(general) == [] and fake.threads_of(videos) == []
        # The heading and the first job: the refused one was never stored.
        jobs = await bot.send(fake.slash("jobs", user, general))
        assert len(jobs.content.splitlines()) == 2, jobs.content


async def test_a_result_over_the_guilds_upload_limit_is_re_encoded_under_it(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    result = noise_video(tmp_path / "result.mp4", frames=80)
    assert result.stat().st_size > 10 * MiB  # just over a boost-less guild's 10 MiB
    fake.premium_tier = 0
    async with (
        FakeWaveSpeed(result.read_bytes()) as wavespeed,
        discord_bot(
            tmp_path,
            fake,
            wavespeed_api_key=wavespeed.key,
            wavespeed_base_url=wavespeed.url,
            provider="wavespeed",
        ) as bot,
    ):
        user = fake.user("ann")
        channel = fake.text_channel("general")
        await characters(bot, user, "alice")
        # WaveSpeed needs a reference video (its `videos` is required): give alice one.
        clip = make_video(bot.app.settings.data_dir.parent / "alice.mp4", seconds=1.5)
        actor = Actor("discord", str(fake.guild_id), str(user.id))
        options = {"name": "alice", "file": local_file(clip)}
        added = await bot.app.core.dispatch(CommandRequest(actor, "character add", options))
        assert not added.is_error, added.text
        job_id = await bot.generate(user, channel, prompt="@alice", duration=5)
        video = await delivered(bot, job_id)
        assert (await bot.job(job_id)).result_size == result.stat().st_size
    assert video["content"] == f"<@{user.id}> (re-encoded to fit this server's 10 MB upload limit)"
    [attachment] = video["attachments"]
    uploaded = fake.cdn_files[attachment["url"]]
    assert 5 * MiB < len(uploaded) <= 10 * MiB
    assert abs(video_seconds(uploaded, tmp_path) - 80 / 24) < 0.1
    assert fake.made("GET", rf"/guilds/{fake.guild_id}")  # the limit was read, not assumed


async def test_a_result_that_cannot_fit_is_linked_instead(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    async with discord_bot(tmp_path, fake, max_upload_bytes=4096) as bot:
        user = fake.user("ann")
        channel = fake.text_channel("general")
        await characters(bot, user, "alice")
        job_id = await bot.generate(user, channel, prompt="@alice", duration=2)
        message = await fake.wait_for(
            lambda: next((m for m in fake.in_channel(channel) if "/media/" in m["content"]), None)
        )
        assert message["attachments"] == []
        assert message["content"].startswith(f"<@{user.id}> The video (")
        link = message["content"].split()[-1]
        assert link.startswith(f"{bot.public_url}/media/")
        job = await bot.job(job_id)
        async with httpx.AsyncClient() as client:
            served = await client.get(link)
        assert served.status_code == 200
        assert hashlib.sha256(served.content).hexdigest() == job.result_blob


async def test_a_repeated_delivery_posts_the_video_once(tmp_path: Path, fake: FakeDiscord) -> None:
    async with discord_bot(tmp_path, fake) as bot:
        user = fake.user("ann")
        channel = fake.text_channel("general")
        await characters(bot, user, "alice")
        job_id = await bot.generate(user, channel, prompt="@alice", duration=2)
        video = await delivered(bot, job_id)
        copy = tmp_path / "copy.mp4"
        copy.write_bytes(fake.cdn_files[video["attachments"][0]["url"]])
        # What the engine does after a crash between posting and recording the delivery.
        await bot.adapter.deliver_video(await bot.job(job_id), copy, "again")
    sends = [r for r in fake.made("POST", rf"/channels/{channel}/messages") if r.files]
    assert len(sends) == 2
    assert {(r.body["nonce"], r.body["enforce_nonce"]) for r in sends} == {
        (sends[0].body["nonce"], True)
    }
    assert len([m for m in fake.in_channel(channel) if m["attachments"]]) == 1


async def test_a_delivery_whose_outcome_was_lost_is_found_by_a_new_process(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    """Posted, then killed before the engine recorded it: the next process finds the post (by
    the embed's job marker, past the nonce's window) and the engine does not post again."""
    async with discord_bot(tmp_path, fake) as bot:
        channel = await generation_channel(bot)
        user = fake.user("ann")
        await characters(bot, user, "alice")
        job_id = await bot.generate(user, channel, prompt="@alice waves", duration=2)
        await delivered(bot, job_id)
        job = await bot.job(job_id)
    fake._nonces.clear()  # the nonce's few minutes have passed
    async with discord_bot(tmp_path, fake) as bot:
        assert await bot.adapter.find_delivery(job)
        never_posted = dataclasses.replace(job, id="j-never-posted")
        assert not await bot.adapter.find_delivery(never_posted)
    reads = fake.made("GET", rf"/channels/{job.destination.thread_id}/messages")
    assert reads and all(r.query["limit"] == "100" and "after" in r.query for r in reads)


async def test_a_deleted_thread_sends_the_video_to_its_channel_mentioning_the_owner(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    async with discord_bot(tmp_path, fake, storyboard_render_seconds=1.0) as bot:
        channel, user, job_id, thread = await rendering_in_its_thread(bot, fake)
        fake.delete_channel(thread)
        video = await delivered(bot, job_id)
        assert video["channel_id"] == str(channel)
        assert video["content"].startswith(f"<@{user.id}>")
        job = await finished(bot, job_id)
        assert job.state is JobState.DELIVERED
        assert await bot.adapter.find_delivery(job)


async def test_a_video_goes_to_direct_messages_when_no_channel_takes_it(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    async with discord_bot(tmp_path, fake, storyboard_render_seconds=1.0) as bot:
        channel, user, job_id, thread = await rendering_in_its_thread(bot, fake)
        fake.forbidden |= {thread, channel}
        video = await delivered(bot, job_id)
        assert video["channel_id"] == str(fake.dms[user.id])
        assert (await finished(bot, job_id)).state is JobState.DELIVERED


async def test_a_channel_the_bot_may_not_post_in_is_explained(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    async with discord_bot(tmp_path, fake) as bot:
        user = fake.user("ann")
        channel = fake.text_channel("locked")
        fake.forbidden.add(channel)
        await characters(bot, user, "alice")
        answer = await bot.send(fake.slash("generate", user, channel, prompt="@alice", duration=2))
        assert answer.ephemeral and answer.code == "missing_permissions", answer.content
        assert f"<#{channel}>" in answer.content and "Send Messages" in answer.content


async def test_shards_split_across_processes_and_any_process_delivers(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    """R2V_DISCORD_SHARDS=0-3/8 runs shards 0–3 of 8 here; a process with other shards still
    posts any job's video, through REST alone (no gateway cache)."""
    async with discord_bot(tmp_path, fake, discord_shards="0-3/8") as bot:
        assert (bot.adapter.client.shard_ids, bot.adapter.client.shard_count) == ([0, 1, 2, 3], 8)
        user = fake.user("ann")
        channel = fake.text_channel("general")
        await characters(bot, user, "alice")
        job_id = await bot.generate(user, channel, prompt="@alice", duration=2)
        video = await delivered(bot, job_id)
        job = await finished(bot, job_id)
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(fake.cdn_files[video["attachments"][0]["url"]])
    elsewhere = fake.text_channel("other")
    # Another place, so the nonce does not answer with the first post.
    moved = dataclasses.replace(
        job, destination=dataclasses.replace(job.destination, channel_id=str(elsewhere))
    )
    async with discord_bot(tmp_path, fake, discord_shards="4/8") as other:
        assert other.adapter.client.shard_ids == [4]
        await other.adapter.deliver_video(moved, copy, "from another shard's process")
        assert await other.adapter.find_delivery(moved)
    assert [m for m in fake.in_channel(elsewhere) if m["attachments"]]


@pytest.mark.parametrize("value", ["4-9/8", "3-1/8", "all", "0-3/0"])
def test_a_bad_shard_range_stops_the_start_naming_the_variable(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigurationError, match=r"R2V_DISCORD_SHARDS=.*first-last/count"):
        load_settings(data_dir=tmp_path, discord_shards=value)


# Buttons, forms and the context menu -----------------------------------------------------------


async def test_result_buttons_work_after_a_restart(tmp_path: Path, fake: FakeDiscord) -> None:
    async with discord_bot(tmp_path, fake) as bot:
        channel = await generation_channel(bot)
        owner, stranger = fake.user("ann"), fake.user("ben")
        await characters(bot, owner, "alice")
        first = await bot.generate(owner, channel, prompt="@alice waves", duration=2, seed=42)
        video = await delivered(bot, first)
    thread = int(video["channel_id"])

    # A new process over the same data: the buttons on the old message still work.
    async with discord_bot(tmp_path, fake) as bot:
        reroll = await bot.send(fake.click(video, "Re-roll", owner))
        assert reroll.ephemeral and reroll.code is None, reroll.content
        rerolled = await bot.job(job_id_in(reroll.content))
        assert rerolled.spec.original_prompt == "@alice waves"
        assert rerolled.spec.seed != 42
        # Made from the thread, so its status message goes to the same thread.
        assert rerolled.destination.thread_id == str(thread)
        assert "Follow it" not in reroll.content

        hd = await bot.send(fake.click(video, "1080p", owner))
        sharper = await bot.job(job_id_in(hd.content))
        assert (sharper.spec.resolution, sharper.spec.seed) == ("1080p", 42)

        form = await bot.send(fake.click(video, "Edit prompt", owner))
        assert form.kind == "modal"
        [label] = form.modal["components"]
        assert label["component"]["value"] == "@alice waves"  # pre-filled
        edited = await bot.send(
            fake.submit(form, owner, thread, {"Prompt": "@alice waves goodbye"})
        )
        assert edited.code is None, edited.content
        again = await bot.job(job_id_in(edited.content))
        assert again.spec.original_prompt == "@alice waves goodbye"

        refused = await bot.send(fake.click(video, "Delete", stranger))
        assert refused.code == "not_allowed"
        assert int(video["id"]) in fake.messages
        deleted = await bot.send(fake.click(video, "Delete", owner))
        assert deleted.code is None
        assert fake.deleted == [int(video["id"])]
        await fake.wait_for(lambda: len(fake.in_channel(thread)) >= 4)  # three new statuses


async def test_save_as_character_takes_a_messages_media(tmp_path: Path, fake: FakeDiscord) -> None:
    image = make_image(tmp_path / "look.png", size=(320, 400))
    voice = make_wav(tmp_path / "hello.wav", seconds=1.5)
    notes = tmp_path / "notes.txt"
    notes.write_text("not media")
    async with discord_bot(tmp_path, fake) as bot:
        user = fake.user("ann")
        channel = fake.text_channel("general")
        attachments = [fake.attachment(p) for p in (image, voice, notes)]
        message = fake.user_message(channel, user, "my character", attachments)
        form = await bot.send(fake.context_menu("Save as character", message, user))
        assert form.kind == "modal"
        labels = [c["label"] for c in form.modal["components"]]
        assert labels == ["Name", "Description", "Visibility"]  # files come from the message
        saved = await bot.send(
            fake.submit(form, user, channel, {"Name": "carol", "Description": "tall"})
        )
        assert saved.content.startswith("Saved carol: 1 image, 1 voice clip (public)")
        assert {url for _, url in fake.cdn_requests} == {a["url"] for a in attachments[:2]}

        plain = fake.user_message(channel, user, "no files here", [])
        refused = await bot.send(fake.context_menu("Save as character", plain, user))
        assert refused.code == "no_media"


async def test_character_create_without_files_opens_a_form_with_uploads(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    image = make_image(tmp_path / "dana.png", size=(320, 400))
    async with discord_bot(tmp_path, fake) as bot:
        user = fake.user("ann")
        channel = fake.text_channel("general")
        form = await bot.send(
            fake.slash("character create", user, channel, name="dana", visibility="private")
        )
        assert form.kind == "modal"
        by_label = {c["label"]: c["component"] for c in form.modal["components"]}
        assert by_label["Name"]["value"] == "dana"  # what was typed is kept
        chosen = [o["value"] for o in by_label["Visibility"]["options"] if o.get("default")]
        assert chosen == ["private"]
        assert by_label["Files"]["type"] == 19  # a file upload inside a label
        assert by_label["Files"]["max_values"] == 5
        saved = await bot.send(fake.submit(form, user, channel, {"Files": [image]}))
        assert saved.content.startswith("Saved dana: 1 image (private)")


async def test_the_invite_link_asks_for_exactly_what_the_bot_uses(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    settings = load_settings(
        data_dir=tmp_path, discord_token=BOT_TOKEN, discord_api_base=fake.url, _env_file=None
    )
    application_id = await fetch_application_id(settings)
    assert application_id == fake.app_id
    url = urlsplit(invite_url(application_id))
    query = parse_qs(url.query)
    assert (url.netloc, url.path) == ("discord.com", "/oauth2/authorize")
    assert query["client_id"] == [str(fake.app_id)]
    assert query["scope"][0].split() == ["bot", "applications.commands"]
    granted = discord.Permissions(int(query["permissions"][0]))
    assert {name for name, on in granted if on} == {
        "send_messages",
        "send_messages_in_threads",
        "create_public_threads",
        "attach_files",
        "embed_links",
        "read_message_history",
        "use_application_commands",
    }


def test_the_adapter_needs_a_token(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, _env_file=None, discord_token=None)
    with pytest.raises(ConfigurationError, match="DISCORD_TOKEN is not set"):
        DiscordAdapter(settings)


async def test_a_refused_token_is_reported_as_a_setup_error(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    with pytest.raises(ConfigurationError, match="Discord refused DISCORD_TOKEN"):
        async with discord_bot(tmp_path, fake, discord_token="not-the-token"):
            pass
    assert not fake.made("PUT", r"/applications/.*")
