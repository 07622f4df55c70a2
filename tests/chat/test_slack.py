"""The Slack adapter inside the whole bot (storyboard provider), against a loopback fake of Slack.

Requests reach the bot as Slack sends them: signed, POSTed to ``/slack/events`` of the bot's own
HTTP server (or as Socket Mode envelopes). What the bot does is read back from the fake: the
messages it posted and edited, the files it downloaded and uploaded, its ephemeral answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from adapters.chat.slack import SlackAdapter
from adapters.chat.slack.manifest import SAVE_SHORTCUT
from adapters.local_files import local_file
from bot.app import App, build
from bot.models import Actor, CommandRequest, Job, JobState
from tests.fakes.slack import FakeSlack, Upload
from tests.harness import bot_settings, bot_socket
from tests.media_factory import make_image, make_video, make_wav

ANN = "U0ANN"
FORM_FILES = "Images, video and voice"


@dataclass
class SlackBot:
    app: App
    adapter: SlackAdapter
    slack: FakeSlack
    tmp: Path

    async def character(self, name: str, owner: str = ANN) -> None:
        image = make_image(self.tmp / f"{name}.png", size=(320, 400))
        actor = Actor("slack", self.slack.team, owner)
        reply = await self.app.core.save_character(actor, name, [local_file(image)])
        assert not reply.is_error, reply.text

    async def submit(self, answers: dict[str, Any]) -> None:
        """Open the character form with ``/r2v character create`` and send it filled in."""
        await self.slack.slash("character create")
        view = await opened_view(self.slack)
        answer = await self.slack.interact(self.slack.view_submission(view, answers))
        assert answer.status_code == 200


async def opened_view(slack: FakeSlack) -> dict[str, Any]:
    """The first modal the bot opened (each test opens at most one)."""
    return await slack.wait_for(lambda: slack.views[0] if slack.views else None)


@asynccontextmanager
async def slack_bot(
    tmp_path: Path, slack: FakeSlack, *, socket_mode: bool = False, **settings: Any
) -> AsyncIterator[SlackBot]:
    sock, address = bot_socket()
    config = bot_settings(
        tmp_path,
        address,
        slack_bot_token=slack.token,
        slack_app_token=slack.app_token if socket_mode else None,
        slack_signing_secret=None if socket_mode else slack.signing_secret,
        slack_api_base=slack.api_base,
        **{"slack_file_hosts": slack.url, **settings},
    )
    adapter = SlackAdapter(config)
    app = await build(config, {"slack": adapter}, http_socket=sock, routes=adapter.routes())
    try:
        await adapter.start(app.core)
        slack.events_url = f"{address}/slack/events"
        yield SlackBot(app, adapter, slack, tmp_path)
    finally:
        await adapter.close()
        await app.close()


async def settled_jobs(bot: SlackBot, actor: Actor) -> list[Job]:
    """The actor's jobs, once there are some and none is unfinished."""
    jobs: list[Job] = []
    for _ in range(250):
        jobs = list(await bot.app.engine.recent(actor))
        if jobs and all(job.state.is_final for job in jobs):
            return jobs
        await asyncio.sleep(0.02)
    raise AssertionError(f"the jobs did not settle: {jobs}")


def shared_upload(slack: FakeSlack) -> Upload | None:
    return next((u for u in slack.uploads.values() if u.channel), None)


async def test_generate_posts_a_status_edits_it_and_delivers_the_video_in_its_thread(
    tmp_path: Path,
) -> None:
    async with FakeSlack() as slack, slack_bot(tmp_path, slack) as bot:
        await bot.character("alice")
        answer, url = await slack.slash("generate @alice waves at the camera duration=2")
        assert answer.status_code == 200

        queued = await slack.response(url)
        assert queued["response_type"] == "ephemeral"
        assert queued["text"].startswith("Queued job j")
        upload = await slack.wait_for(lambda: shared_upload(slack), within=40)

        [status] = [m for m in slack.messages.values() if m.thread_ts is None]
        assert status.channel == "C0GEN"
        assert "“@alice waves at the camera”" in status.text and f"<@{ANN}>" in status.text
        assert (upload.channel, upload.thread_ts) == ("C0GEN", status.ts)
        assert upload.comment is not None and upload.comment.startswith(f"<@{ANN}> your video")
        assert upload.data is not None and upload.data[4:8] == b"ftyp"
        assert upload.length == len(upload.data) == int(upload.content_length_header or 0)
        assert upload.filename.endswith(".mp4")

        await slack.wait_for(lambda: "Done in" in status.text or None)
        assert any("Sent to storyboard" in edit for edit in status.edits)
        # every edit went to the one status message: nothing else was posted in the channel
        assert [m.ts for m in slack.messages.values() if m.thread_ts is None] == [status.ts]


async def test_a_failed_job_tells_the_asker_in_its_thread(tmp_path: Path) -> None:
    slow: dict[str, Any] = {"storyboard_render_seconds": 5.0, "job_timeout_seconds": 0.3}
    async with FakeSlack() as slack, slack_bot(tmp_path, slack, **slow) as bot:
        await bot.character("alice")
        await slack.slash("generate @alice waves duration=2")
        told = await slack.wait_for(
            lambda: next((m for m in slack.messages.values() if m.thread_ts), None)
        )
        [status] = [m for m in slack.messages.values() if m.thread_ts is None]
        assert told.thread_ts == status.ts
        assert told.text.startswith(f"<@{ANN}> your video could not be made: the provider did")
        assert "❌ Failed" in status.text
        assert not slack.uploads


async def test_character_list_answers_only_the_asker(tmp_path: Path) -> None:
    async with FakeSlack() as slack, slack_bot(tmp_path, slack) as bot:
        await bot.character("alice")
        await bot.character("bob", owner="U0BOB")
        _, url = await slack.slash("character list")
        listed = await slack.response(url)
        assert listed["response_type"] == "ephemeral"
        assert "alice — 1 image · by <@U0ANN>" in listed["text"]
        assert "bob — 1 image · by <@U0BOB>" in listed["text"]
        assert not slack.messages


async def test_a_syntax_error_is_answered_at_once_with_the_slack_usage(tmp_path: Path) -> None:
    async with FakeSlack() as slack, slack_bot(tmp_path, slack):
        answer, _ = await slack.slash("generate @alice waves duration=soon")
        assert answer.status_code == 200
        refused = answer.json()
        assert refused["response_type"] == "ephemeral"
        assert "duration=soon is not accepted: use a whole number" in refused["text"]
        assert "Usage: `/r2v generate &lt;prompt&gt; [duration=&lt;number&gt;]" in refused["text"]
        assert refused["text"].endswith("`invalid_option`")

        unknown, _ = await slack.slash("character lst")
        text = unknown.json()["text"]
        assert "There is no command “character lst”" in text
        assert "Did you mean `/r2v character list`?" in text and "`unknown_command`" in text
        assert not slack.messages and not slack.responses


async def test_commands_are_acknowledged_before_the_work_is_done(tmp_path: Path) -> None:
    async with FakeSlack() as slack, slack_bot(tmp_path, slack):
        slack.delays["users.info"] = 1.5
        started = time.monotonic()
        answer, url = await slack.slash("jobs")
        acknowledged = time.monotonic() - started
        assert answer.status_code == 200 and answer.text == ""
        assert acknowledged < 1.0
        jobs = await slack.response(url)
        assert "You have no jobs yet" in jobs["text"]


async def test_the_create_form_saves_a_character_from_its_files(tmp_path: Path) -> None:
    async with FakeSlack() as slack, slack_bot(tmp_path, slack):
        png = make_image(tmp_path / "a.png", size=(320, 400)).read_bytes()
        wav = make_wav(tmp_path / "a.wav", seconds=1.5).read_bytes()
        image = slack.add_file("alice.png", png, "image/png")
        # A voice clip whose name and type claim an image: its content decides.
        voice = slack.add_file("not-a-picture.png", wav, "image/png")

        await slack.slash("character create")
        view = await opened_view(slack)
        kinds = {b["label"]["text"]: b["element"]["type"] for b in view["blocks"] if "label" in b}
        assert kinds[FORM_FILES] == "file_input"
        assert view["callback_id"] and view["private_metadata"]

        answers = {
            "Name": "alice",
            "Description": "our hero",
            "Visibility": "private",
            FORM_FILES: [image, voice],
        }
        closed = await slack.interact(slack.view_submission(view, answers))
        assert closed.status_code == 200 and closed.text == ""

        told = await slack.ephemeral(ANN)
        assert told["channel"] == "C0GEN"
        assert told["text"].startswith("Saved alice: 1 image, 1 voice clip (private).")
        assert [d.authorization for d in slack.downloads] == [f"Bearer {slack.token}"] * 2

        _, url = await slack.slash("character show alice")
        shown = await slack.response(url)
        assert "our hero" in shown["text"] and "voice" in shown["text"]


async def test_form_mistakes_show_under_their_fields(tmp_path: Path) -> None:
    async with FakeSlack() as slack, slack_bot(tmp_path, slack):
        await slack.slash("character create")
        view = await opened_view(slack)
        answer = await slack.interact(slack.view_submission(view, {"Name": "9lives"}))
        assert answer.status_code == 200
        body = answer.json()
        assert body["response_action"] == "errors"
        block_of = {b["label"]["text"]: b["block_id"] for b in view["blocks"] if "label" in b}
        assert set(body["errors"]) == {block_of["Name"], block_of[FORM_FILES]}
        assert "not a valid character name" in body["errors"][block_of["Name"]]
        assert not slack.downloads and not slack.ephemerals


async def test_save_as_character_on_a_message_uses_its_files(tmp_path: Path) -> None:
    async with FakeSlack() as slack, slack_bot(tmp_path, slack):
        png = make_image(tmp_path / "b.png", size=(320, 400)).read_bytes()
        mp4 = make_video(tmp_path / "b.mp4", seconds=1.5).read_bytes()
        files = [
            slack.add_file("bob.png", png, "image/png"),
            slack.add_file("bob.mp4", mp4, "video/mp4"),
        ]
        answer = await slack.interact(slack.message_shortcut(SAVE_SHORTCUT, files))
        assert answer.status_code == 200
        view = await opened_view(slack)
        texts = [e["text"] for b in view["blocks"] for e in b.get("elements", [])]
        assert any("bob.png, bob.mp4" in t for t in texts)

        await slack.interact(slack.view_submission(view, {"Name": "bob"}))
        told = await slack.ephemeral(ANN)
        assert told["text"].startswith("Saved bob: 1 image, 1 video (public).")
        assert [c.args["file"] for c in slack.called("files.info")] == [f["id"] for f in files]

        empty = slack.message_shortcut(SAVE_SHORTCUT, [])
        await slack.interact(empty)
        refused = await slack.response(empty["response_url"])
        assert "That message has no files" in refused["text"]


async def test_a_file_on_another_host_is_refused_without_sending_the_token(
    tmp_path: Path,
) -> None:
    png = make_image(tmp_path / "a.png", size=(320, 400)).read_bytes()
    async with FakeSlack() as slack, FakeSlack() as elsewhere, slack_bot(tmp_path, slack) as bot:
        foreign = elsewhere.add_file("alice.png", png, "image/png")
        await bot.submit({"Name": "alice", FORM_FILES: [foreign]})
        told = await slack.ephemeral(ANN)
        assert "“alice.png” is not a file uploaded to this Slack workspace" in told["text"]
        assert told["text"].endswith("`foreign_file`")
        assert elsewhere.downloads == [] and slack.downloads == []

        _, url = await slack.slash("character show alice")
        assert "`unknown_character`" in (await slack.response(url))["text"]


async def test_requests_with_a_bad_or_stale_signature_are_refused(tmp_path: Path) -> None:
    async with FakeSlack() as slack, slack_bot(tmp_path, slack):
        body = urlencode(slack.slash_fields("jobs"))
        form = "application/x-www-form-urlencoded"
        forged = await slack.post(body, form, slack.signed(body, secret="not-the-secret"))
        stale = await slack.post(body, form, slack.signed(body, at=int(time.time()) - 600))
        assert (forged.status_code, stale.status_code) == (401, 401)
        good = await slack.post(body, form)
        assert good.status_code == 200
        await slack.wait_for(lambda: slack.responses)
        assert len(slack.responses) == 1


async def test_replies_name_commands_as_they_are_typed_on_slack(tmp_path: Path) -> None:
    async with FakeSlack() as slack, slack_bot(tmp_path, slack):
        answers = []
        for text in ("character list", "jobs", "character show nobody"):
            _, url = await slack.slash(text)
            answers.append((await slack.response(url))["text"])
    empty, jobs, unknown = answers
    assert "`/r2v character create`" in empty
    assert "`/r2v generate`" in jobs
    assert "`/r2v character list` shows the ones you can use" in unknown
    for text in answers:
        assert "\u2063" not in text and " /character" not in text and " /generate" not in text


async def test_owners_are_mentions_and_character_list_takes_a_member(tmp_path: Path) -> None:
    async with FakeSlack() as slack, slack_bot(tmp_path, slack) as bot:
        slack.users["U0BEN"] = {"name": "ben", "display_name": "Benjamin"}
        await bot.character("alice")
        await bot.character("bob", owner="U0BEN")
        texts = {}
        for typed in ("", "owner=<@U0BEN|ben>", "owner=@ben", "owner=@Benjamin", "owner=<@U0ZED>"):
            _, url = await slack.slash(f"character list {typed}")
            texts[typed] = (await slack.response(url))["text"]
        _, url = await slack.slash("character list owner=@ghost")
        ghost = (await slack.response(url))["text"]
    assert "alice — 1 image · by <@U0ANN>" in texts[""] and "by <@U0BEN>" in texts[""]
    for typed in ("owner=<@U0BEN|ben>", "owner=@ben", "owner=@Benjamin"):
        assert "bob" in texts[typed] and "alice" not in texts[typed], typed
    assert texts["owner=<@U0ZED>"] == "<@U0ZED> has no characters you can see."
    assert "There is no member @ghost" in ghost and ghost.endswith("`unknown_user`")


async def test_a_name_that_breaks_the_rule_is_refused_with_it_wherever_given(
    tmp_path: Path,
) -> None:
    async with FakeSlack() as slack, slack_bot(tmp_path, slack) as bot:
        await bot.character("alice")
        answers = []
        for text in (f"generate @{'a' * 40} waves", "character rename alice bad!name"):
            _, url = await slack.slash(text)
            answers.append((await slack.response(url))["text"])
    for text in answers:
        assert text.endswith("`invalid_name`"), text
        assert "a letter, then letters, digits, _ or -, at most 32 characters" in text


async def test_file_hosts_are_a_setting_and_any_other_host_is_refused(tmp_path: Path) -> None:
    png = make_image(tmp_path / "a.png", size=(320, 400)).read_bytes()
    hosts = "files.slack.com, files-edge.slack.com"
    async with FakeSlack() as slack, slack_bot(tmp_path, slack, slack_file_hosts=hosts) as bot:
        on_the_fake = slack.add_file("alice.png", png, "image/png")
        await bot.submit({"Name": "alice", FORM_FILES: [on_the_fake]})
        told = await slack.ephemeral(ANN)
        assert told["text"].endswith("`foreign_file`")
        assert "https://files-edge.slack.com, https://files.slack.com" in told["text"]
        assert slack.downloads == []


async def test_unsigned_or_malformed_requests_never_reach_a_parser(tmp_path: Path) -> None:
    form = "application/x-www-form-urlencoded"
    async with FakeSlack() as slack, slack_bot(tmp_path, slack):
        unsigned = await slack.post("payload=%7Bnot-json", form, headers={"X-Unsigned": "1"})
        garbage = await slack.post(
            "\x00\xff", "application/json", headers={"X-Slack-Signature": "v0=1"}
        )
        assert (unsigned.status_code, garbage.status_code) == (401, 401)
        for body, content_type in (
            ("payload=%7Bnot-json", form),
            ("payload=%5B1%2C2%5D", form),
            ("nothing=here", form),
            ("[1, 2]", "application/json"),
            ("{not json", "application/json"),
        ):
            answer = await slack.post(body, content_type)
            assert answer.status_code == 400, (body, answer.status_code, answer.text)
            assert answer.json()["error"] == "malformed_body"
        assert slack.calls == []


async def test_a_form_this_bot_did_not_open_is_answered_in_the_form(tmp_path: Path) -> None:
    async with FakeSlack() as slack, slack_bot(tmp_path, slack) as bot:
        await slack.slash("character create")
        view = await opened_view(slack)
        for foreign in ("not json", "[1]", '{"channel": 5}', '{"files": [1]}'):
            forged = {**view, "private_metadata": foreign}
            answer = await slack.interact(slack.view_submission(forged, {"Name": "alice"}))
            assert answer.status_code == 200
            assert answer.json()["response_action"] == "errors"
            assert "not opened by this bot" in answer.json()["errors"]["name"]
        listed = await bot.app.core.dispatch(
            CommandRequest(Actor("slack", slack.team, ANN), "character list", {})
        )
        assert listed.data["characters"] == []


async def test_a_delivery_whose_outcome_was_lost_is_found_by_a_new_process(
    tmp_path: Path,
) -> None:
    """Shared, then killed before the engine recorded it: the next process finds the share in
    the thread (by the file named for the job) and does not share it again."""
    async with FakeSlack() as slack:
        async with slack_bot(tmp_path, slack) as bot:
            await bot.character("alice")
            await slack.slash("generate @alice waves duration=2")
            [job] = await settled_jobs(bot, Actor("slack", slack.team, ANN))
            assert job.state is JobState.DELIVERED
        async with slack_bot(tmp_path, slack) as bot:
            assert await bot.adapter.find_delivery(job)
            assert not await bot.adapter.find_delivery(dataclasses.replace(job, id="jnever"))
            # A job with no status message was delivered to the channel itself.
            unthreaded = dataclasses.replace(
                job,
                destination=dataclasses.replace(
                    job.destination, thread_id=None, status_message_id=None
                ),
            )
            assert not await bot.adapter.find_delivery(unthreaded)
            video = tmp_path / "again.mp4"
            video.write_bytes(b"\x00\x00\x00\x18ftypmp42")
            await bot.adapter.deliver_video(unthreaded, video, "again")
        async with slack_bot(tmp_path, slack) as bot:
            assert await bot.adapter.find_delivery(unthreaded)
            gone = dataclasses.replace(
                job, destination=dataclasses.replace(job.destination, thread_id="1.000001")
            )
            assert not await bot.adapter.find_delivery(gone)
        assert slack.called("conversations.replies") and slack.called("conversations.history")


async def test_workspace_owners_and_the_admin_group_are_admins(tmp_path: Path) -> None:
    async with FakeSlack() as slack, slack_bot(tmp_path, slack, slack_admin_group="r2v-admins"):
        slack.users["U0OWN"] = {"is_owner": True}
        slack.usergroups = [{"id": "S0ADM", "handle": "r2v-admins", "users": ["U0GRP"]}]
        for user, admin in (("U0MEM", False), ("U0OWN", True), ("U0GRP", True)):
            _, url = await slack.slash("settings user_jobs=3", user=user)
            text = (await slack.response(url))["text"]
            assert text.endswith("`not_allowed`") is not admin, (user, text)

        asked = len(slack.called("users.info"))
        _, url = await slack.slash("usage", user="U0OWN")
        await slack.response(url)
        assert len(slack.called("users.info")) == asked  # kept from the first answer


async def test_generate_where_the_bot_cannot_post_is_refused_and_not_run(tmp_path: Path) -> None:
    async with FakeSlack() as slack, slack_bot(tmp_path, slack) as bot:
        await bot.character("alice")
        slack.outside.add("C0PRIV")
        _, url = await slack.slash("generate @alice waves duration=2", channel="C0PRIV")
        refused = (await slack.response(url))["text"]
        assert "cannot post in this channel (not_in_channel)" in refused
        assert refused.endswith("`not_in_channel`")
        jobs = await settled_jobs(bot, Actor("slack", slack.team, ANN))
        assert [job.state for job in jobs] == [JobState.CANCELLED]
        assert not slack.uploads


async def test_socket_mode_takes_commands_over_the_websocket(tmp_path: Path) -> None:
    async with FakeSlack() as slack, slack_bot(tmp_path, slack, socket_mode=True) as bot:
        assert bot.adapter.routes() == []
        fields = slack.slash_fields("help generate")
        envelope = await slack.send_envelope("slash_commands", fields)
        acknowledged = await slack.wait_for(lambda: slack.socket_acks.get(envelope))
        assert acknowledged["envelope_id"] == envelope
        helped = await slack.response(fields["response_url"])
        assert "Usage: `/r2v generate &lt;prompt&gt;" in helped["text"]

        wrong = slack.slash_fields("generate duration=3")
        envelope = await slack.send_envelope("slash_commands", wrong)
        refused = await slack.wait_for(lambda: slack.socket_acks.get(envelope))
        assert "needs prompt" in refused["payload"]["text"]
