"""The Slack adapter: ``/r2v``, the "Save as character" shortcut and its form in; status
messages, refusals and videos out.

It runs in Socket Mode when an app-level token is set (no public address needed), otherwise on
``POST /slack/events`` of our HTTP server, where Bolt checks each request's signature. Either way
every listener only reads the request and acknowledges it (a text mistake is answered in the
acknowledgement itself); the work (looking up admins, the core command, opening a form,
downloading files) runs after, in tasks this adapter owns, so Slack's 3-second limit holds however
slow the work is and ``close`` can stop it.

A workspace is a server (its team id). A ``/r2v generate`` job's status message is posted in the
channel and edited as the job moves; its thread receives the video, mentioning who asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Collection, Coroutine, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from adapters.chat.base import POSTS_CLOCK_SLACK_SECONDS, file_or_link
from adapters.chat.slack import modal, syntax
from adapters.chat.slack.admins import AdminDirectory
from adapters.chat.slack.files import SlackFiles
from adapters.chat.slack.manifest import SAVE_SHORTCUT, SLASH_COMMAND
from adapters.chat.slack.mrkdwn import escape, mention, reply_text
from adapters.chat.slack.people import member_id
from adapters.chat.slack.upload import upload_file
from bot.commands import OptionType
from bot.core import Core
from bot.errors import ConfigurationError, R2VError, Refusal
from bot.models import Actor, CommandRequest, IncomingFile, Job, JobState, Reply
from bot.ports import PostedStatus
from bot.settings import Settings

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
DEFAULT_API_BASE = "https://slack.com/api/"
#: chat.postMessage errors meaning the bot cannot post in that channel at all.
_CANNOT_POST = frozenset({"not_in_channel", "channel_not_found", "is_archived"})
#: conversations.* errors meaning there is nothing left to look in.
_GONE = frozenset({"thread_not_found", "channel_not_found", "message_not_found"})
#: ``find_delivery`` reads at most this many pages of this many messages.
_SCAN_PAGES, _PAGE = 5, 200


class SlackAdapter:
    """The ChatPort for Slack jobs, and the listeners that feed ``/r2v`` to the core."""

    platform = "slack"

    def __init__(
        self,
        settings: Settings,
        *,
        file_origins: Collection[str] | None = None,
        admin_cache_seconds: float = 300.0,
    ) -> None:
        """``file_origins``: where files may be downloaded from with the bot token;
        ``R2V_SLACK_FILE_HOSTS`` when not given."""
        if settings.slack_bot_token is None:
            raise ConfigurationError(
                "SLACK_BOT_TOKEN is not set: give the bot token (xoxb-…) from the Slack app's "
                "OAuth & Permissions page."
            )
        token = settings.slack_bot_token.get_secret_value()
        app_token = settings.slack_app_token
        secret = settings.slack_signing_secret
        if app_token is None and secret is None:
            raise ConfigurationError(
                "Slack needs SLACK_APP_TOKEN (xapp-…, for Socket Mode) or SLACK_SIGNING_SECRET "
                "(for HTTP mode on /slack/events); neither is set."
            )
        self._app_token = app_token.get_secret_value() if app_token is not None else None
        base_url = f"{settings.slack_api_base}/" if settings.slack_api_base else DEFAULT_API_BASE
        self.client = AsyncWebClient(
            token=token,
            base_url=base_url,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(),
                AsyncRateLimitErrorRetryHandler(max_retry_count=2),
            ],
        )
        origins = settings.slack_file_origins if file_origins is None else file_origins
        self._files = SlackFiles(token, origins=origins)
        self._admins = AdminDirectory(
            self.client, group=settings.slack_admin_group, ttl=admin_cache_seconds
        )
        # process_before_response: the listeners below only acknowledge, so Slack gets its
        # answer as soon as they return, in HTTP and Socket Mode alike. The signature is
        # checked once, by ``_events`` on the raw bytes, before anything parses the body; Bolt
        # need not check it again (Socket Mode requests carry none).
        self._verifier = SignatureVerifier(secret.get_secret_value()) if secret else None
        self._bolt = AsyncApp(
            name="r2v",
            client=self.client,
            signing_secret=secret.get_secret_value() if secret is not None else "",
            process_before_response=True,
            request_verification_enabled=False,
        )
        self._bolt.command(SLASH_COMMAND)(self._on_command)
        self._bolt.shortcut(SAVE_SHORTCUT)(self._on_shortcut)
        self._bolt.view(modal.CALLBACK_ID)(self._on_form)
        self._core: Core | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def socket_mode(self) -> bool:
        return self._app_token is not None

    # -- life cycle ------------------------------------------------------------------------

    def routes(self) -> Sequence[web.RouteDef]:
        """``POST /slack/events`` in HTTP mode; nothing in Socket Mode."""
        return [] if self.socket_mode else [web.post(EVENTS_PATH, self._events)]

    async def start(self, core: Core) -> None:
        self._core = core
        if self._app_token is not None:
            self._socket = AsyncSocketModeHandler(self._bolt, self._app_token)
            await self._socket.connect_async()  # type: ignore[no-untyped-call]
            log.info("Slack: connected in Socket Mode")
        else:
            log.info("Slack: listening on %s", EVENTS_PATH)

    async def close(self) -> None:
        """Stop taking requests and stop the work under way (jobs are stored: they resume).

        The ChatPort keeps working after this, so the job engine can still post while it
        stops."""
        self._closing = True
        if self._socket is not None:
            await self._socket.close_async()  # type: ignore[no-untyped-call]
            self._socket = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _events(self, request: web.Request) -> web.Response:
        """Check the signature on the raw bytes before anything reads them (401), then the
        body's shape (400); only a signed, well-formed request reaches Bolt. No state of this
        process is needed to answer, so any instance answers any request."""
        if self._core is None or self._closing:
            return web.json_response({"error": "the bot is starting or stopping"}, status=503)
        body = await request.read()
        if self._verifier is None or not self._verifier.is_valid(
            body=body,
            timestamp=request.headers.get("X-Slack-Request-Timestamp"),
            signature=request.headers.get("X-Slack-Signature"),
        ):
            return web.json_response({"error": "invalid_signature"}, status=401)
        problem = malformed(body, request.content_type)
        if problem is not None:
            return web.json_response({"error": "malformed_body", "detail": problem}, status=400)
        answer = await self._bolt.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(answer)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("Slack: work after an acknowledgement failed", exc_info=error)

    def _started(self) -> Core:
        assert self._core is not None, "SlackAdapter.start(core) was not called"
        return self._core

    async def _actor(self, team_id: str, user_id: str) -> Actor:
        return Actor(
            platform=self.platform,
            server_id=team_id,
            user_id=user_id,
            is_admin=await self._admins.is_admin(team_id, user_id),
            display_name=mention(user_id),
            name=await self._admins.name(team_id, user_id),
        )

    # -- /r2v --------------------------------------------------------------------------------

    async def _on_command(self, ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        channel = str(body.get("channel_id", ""))
        try:
            command = syntax.parse(str(body.get("text", "")), channel_id=channel)
        except R2VError as exc:
            await ack(text=reply_text(Reply(exc.message, code=exc.code)), response_type="ephemeral")
            return
        await ack()
        team, user = str(body.get("team_id", "")), str(body.get("user_id", ""))
        if command.name in syntax.FORM_COMMANDS:
            form = modal.FormContext(channel_id=channel)
            self._spawn(self._open_form(str(body.get("trigger_id", "")), form, (), respond))
        else:
            self._spawn(self._run(command, team, user, channel, respond))

    async def _run(
        self,
        command: syntax.SlackCommand,
        team: str,
        user: str,
        channel: str,
        respond: AsyncRespond,
    ) -> None:
        try:
            actor = await self._actor(team, user)
            if command.name == "help":
                topic = command.values.get("command")
                reply = Reply(syntax.help_text(topic, is_admin=actor.is_admin))
            else:
                options = dict(command.values)
                for option in command.command.options:
                    if option.type is OptionType.USER and options.get(option.name):
                        options[option.name] = await member_id(self.client, options[option.name])
                request = CommandRequest(
                    actor=actor,
                    command=command.name,
                    options=options,
                    channel_id=channel,
                )
                reply = await self._started().dispatch(request)
        except R2VError as exc:
            reply = Reply(exc.message, code=exc.code)
        except Exception:
            log.exception("Slack: /r2v %s failed", command.name)
            reply = Reply("Something went wrong on our side; please try again.", "internal_error")
        await respond(text=await _with_file(reply), response_type="ephemeral")

    # -- the character form ------------------------------------------------------------------

    async def _on_shortcut(
        self, ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond
    ) -> None:
        await ack()
        message = body.get("message") or {}
        files = [f for f in message.get("files") or [] if isinstance(f, dict) and f.get("id")]
        if not files:
            refusal = Reply(
                "That message has no files. Use “Save as character” on a message with images, "
                f"a video or a voice clip, or `{SLASH_COMMAND} character create`.",
                code="no_files",
            )
            self._spawn(self._respond(respond, refusal))
            return
        context = modal.FormContext(
            channel_id=str((body.get("channel") or {}).get("id", "")),
            file_ids=tuple(str(f["id"]) for f in files),
        )
        names = [str(f.get("name") or f["id"]) for f in files]
        self._spawn(self._open_form(str(body.get("trigger_id", "")), context, names, respond))

    async def _open_form(
        self,
        trigger_id: str,
        context: modal.FormContext,
        file_names: Sequence[str],
        respond: AsyncRespond,
    ) -> None:
        try:
            await self.client.views_open(
                trigger_id=trigger_id, view=modal.character_modal(context, file_names)
            )
        except SlackApiError as exc:
            error = exc.response.get("error")
            log.warning("Slack: views.open failed: %s", error)
            await self._respond(
                respond,
                Reply(f"Slack would not open the form ({error}); please try again.", "form_failed"),
            )

    async def _on_form(self, ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        context = modal.FormContext.load(view.get("private_metadata"))
        if context is None:
            await ack(response_action="errors", errors={modal.NAME: modal.STALE_FORM})
            return
        form = modal.read_form(view)
        errors = modal.form_errors(form, context)
        if errors:
            await ack(response_action="errors", errors=errors)
            return
        await ack()
        who = body.get("user") or {}
        team = str((body.get("team") or {}).get("id") or who.get("team_id", ""))
        self._spawn(self._save(team, str(who.get("id", "")), form, context))

    async def _save(
        self, team: str, user: str, form: modal.CharacterForm, context: modal.FormContext
    ) -> None:
        actor = Actor(self.platform, team, user, display_name=mention(user))
        try:
            files = [*(await self._message_files(context)), *map(self._files.incoming, form.files)]
            reply = await self._started().save_character(
                actor,
                form.name,
                files,
                description=form.description,
                visibility=form.visibility,
            )
        except R2VError as exc:
            reply = Reply(exc.message, code=exc.code)
        except Exception:
            log.exception("Slack: saving the character %s failed", form.name)
            reply = Reply("Something went wrong on our side; please try again.", "internal_error")
        await self._tell(context.channel_id, user, reply)

    async def _message_files(self, context: modal.FormContext) -> list[IncomingFile]:
        """The shortcut's message files, looked up again: links in the shortcut's payload may
        be missing (files shared from another workspace) and the form may be sent much later."""
        files = []
        for file_id in context.file_ids:
            try:
                answer = await self.client.files_info(file=file_id)
            except SlackApiError as exc:
                raise Refusal(
                    f"Slack would not show the bot the message's file {file_id} "
                    f"({exc.response.get('error')}); it may have been deleted.",
                    code="download_failed",
                ) from exc
            files.append(self._files.incoming(answer["file"]))
        return files

    # -- answering ---------------------------------------------------------------------------

    async def _respond(self, respond: AsyncRespond, reply: Reply) -> None:
        await respond(text=await _with_file(reply), response_type="ephemeral")

    async def _tell(self, channel: str, user: str, reply: Reply) -> None:
        """Only ``user`` sees it: in the channel, or in the bot's DM where the bot cannot post
        in that channel (a private channel it is not in)."""
        text = await _with_file(reply)
        if channel:
            try:
                await self.client.chat_postEphemeral(channel=channel, user=user, text=text)
                return
            except SlackApiError as exc:
                log.info("Slack: ephemeral in %s refused (%s)", channel, exc.response.get("error"))
        await self.client.chat_postMessage(channel=user, text=text)

    # -- the ChatPort: what the job engine posts ---------------------------------------------

    async def post_status(self, job: Job, text: str) -> PostedStatus:
        """The status message, in the channel; its thread is where the video will go."""
        destination = job.destination
        try:
            answer = await self.client.chat_postMessage(
                channel=destination.channel_id,
                text=_status(job, text),
                unfurl_links=False,
                unfurl_media=False,
            )
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error not in _CANNOT_POST:
                raise
            # The engine stored the job before asking for this message: take it back, so it
            # does not run for a channel its video could never reach.
            self._spawn(self._withdraw(job))
            raise Refusal(
                f"The bot cannot post in this channel ({error}), so the video could not be "
                "delivered here. Invite the bot (`/invite @r2v`) or use a channel it is in.",
                code="not_in_channel",
            ) from exc
        ts = str(answer["ts"])
        return PostedStatus(message_id=ts, thread_id=ts)

    async def edit_status(self, job: Job, text: str) -> None:
        destination = job.destination
        if not destination.status_message_id:
            return
        await self.client.chat_update(
            channel=destination.channel_id,
            ts=destination.status_message_id,
            text=_status(job, text),
        )
        if job.state is JobState.FAILED:
            # An edit notifies nobody: say it in the thread, to the person who asked.
            await self.client.chat_postMessage(
                channel=destination.channel_id,
                thread_ts=_thread(job),
                text=f"{mention(job.user_id)} your video could not be made: "
                f"{escape(job.reason or 'unknown reason')}",
            )

    async def find_delivery(self, job: Job) -> bool:
        """Whether the job's video was already shared: a message in its thread (or, without
        one, in its channel since the job was made) carrying a file named for the job.

        ``files.completeUploadExternal`` takes no message metadata, so the file's name is the
        marker. A thread or channel that is gone holds nothing: answers False.
        """
        name = video_name(job)
        channel, thread = job.destination.channel_id, _thread(job)
        cursor: str | None = None
        for _ in range(_SCAN_PAGES):
            try:
                if thread is not None:
                    page = await self.client.conversations_replies(
                        channel=channel, ts=thread, limit=_PAGE, cursor=cursor
                    )
                else:
                    page = await self.client.conversations_history(
                        channel=channel,
                        oldest=f"{max(job.created_at - POSTS_CLOCK_SLACK_SECONDS, 0):.6f}",
                        limit=_PAGE,
                        cursor=cursor,
                    )
            except SlackApiError as exc:
                if exc.response.get("error") in _GONE:
                    return False
                raise
            for message in page.get("messages") or []:
                if any(f.get("name") == name for f in message.get("files") or []):
                    return True
            cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
            if cursor is None:
                return False
        return False

    async def deliver_video(self, job: Job, video: Path, text: str) -> None:
        await upload_file(
            self.client,
            video,
            channel=job.destination.channel_id,
            thread_ts=_thread(job),
            filename=video_name(job),
            title=f"r2v {job.id}",
            comment=f"{mention(job.user_id)} {escape(text)}",
        )

    async def _withdraw(self, job: Job) -> None:
        if self._core is None:
            return
        owner = Actor(self.platform, job.destination.server_id, job.user_id)
        with contextlib.suppress(R2VError):
            await self._core.engine.cancel(owner, job.id)


def video_name(job: Job) -> str:
    """The shared video's file name: the job's marker ``find_delivery`` looks for."""
    return f"{job.id}.mp4"


def malformed(body: bytes, content_type: str) -> str | None:
    """What is wrong with a signed request's body, in the shapes Slack sends: a form
    (slash commands), a form whose ``payload`` is a JSON object (interactions), or a JSON object
    (events). ``None``: nothing."""
    try:
        text = body.decode("utf-8")
        if content_type == "application/json":
            if not isinstance(json.loads(text), dict):
                return "the JSON body is not an object"
            return None
        form = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text))
    except ValueError as exc:
        return f"the body cannot be read ({exc})"
    if "payload" in form:
        try:
            payload = json.loads(form["payload"][0])
        except ValueError:
            return "payload is not JSON"
        if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
            return "payload is not an interaction"
    elif "command" not in form:
        return "neither a slash command nor an interaction"
    return None


def _status(job: Job, text: str) -> str:
    return f"{escape(text)}\nAsked by {mention(job.user_id)}"


def _thread(job: Job) -> str | None:
    return job.destination.thread_id or job.destination.status_message_id


async def _with_file(reply: Reply) -> str:
    """A reply's text; a file that goes with it (a roster export) becomes its signed link, as
    an answer only its asker sees cannot carry a file on Slack."""
    return reply_text(reply) + (await file_or_link(reply, upload_limit=None))[1]
