"""A loopback fake of Slack, for the Slack adapter's tests: both of Slack's sides.

Slack's servers, as the bot calls them: the Web API methods the bot uses (under ``/api/``, each
checking the Bearer token and answering as Slack does, errors included), private file downloads
that need the bot token (without it: a redirect to the sign-in page, as Slack does), the upload
URLs ``files.getUploadURLExternal`` hands out, response URLs, and a Socket Mode WebSocket.

Slack's client side, as the bot receives it: slash commands (form-encoded), message shortcuts and
view submissions (``payload=<JSON>``), signed with the signing secret and POSTed to the bot's
``/slack/events``, or sent as Socket Mode envelopes.

Everything the bot does is recorded; ``wait_for`` waits until a recorded thing shows up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
from aiohttp import WSMsgType, web
from slack_sdk.signature import SignatureVerifier

from tests.fakes.base import LoopbackServer

T = TypeVar("T")

TEAM = "T0R2V"


@dataclass
class Call:
    """One Web API call: its method, its arguments (query, form and JSON merged) and token."""

    method: str
    args: dict[str, Any]
    token: str | None


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    thread_ts: str | None = None
    edits: list[str] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)

    def payload(self) -> dict[str, Any]:
        """The message as conversations.history and conversations.replies show it."""
        shown: dict[str, Any] = {
            "type": "message",
            "user": "U0BOT",
            "bot_id": "B0BOT",
            "ts": self.ts,
            "text": self.text,
        }
        if self.thread_ts is not None:
            shown["thread_ts"] = self.thread_ts
        if self.files:
            shown["files"] = self.files
            shown["upload"] = True
        return shown


@dataclass
class StoredFile:
    info: dict[str, Any]
    data: bytes


@dataclass
class Upload:
    """A file uploaded through an upload URL, and where it was shared once completed."""

    file_id: str
    filename: str
    length: int
    data: bytes | None = None
    content_length_header: str | None = None
    channel: str | None = None
    thread_ts: str | None = None
    comment: str | None = None


@dataclass
class Download:
    path: str
    authorization: str | None


class FakeSlack(LoopbackServer):
    def __init__(
        self,
        *,
        token: str = "xoxb-fake-bot-token",
        app_token: str = "xapp-fake-app-token",
        signing_secret: str = "fake-signing-secret",
        team: str = TEAM,
    ) -> None:
        super().__init__()
        self.token = token
        self.app_token = app_token
        self.signing_secret = signing_secret
        self.team = team
        self.calls: list[Call] = []
        self.messages: dict[str, Message] = {}
        self.ephemerals: list[dict[str, Any]] = []
        self.views: list[dict[str, Any]] = []
        self.files: dict[str, StoredFile] = {}
        self.uploads: dict[str, Upload] = {}
        self.downloads: list[Download] = []
        self.responses: list[dict[str, Any]] = []
        #: users.info answers by user id; anyone else is a plain member.
        self.users: dict[str, dict[str, Any]] = {}
        #: user groups: ``{"id": …, "handle": …, "users": […]}``.
        self.usergroups: list[dict[str, Any]] = []
        #: Channels the bot is not in: posting there fails as Slack fails it.
        self.outside: set[str] = set()
        #: Where the bot takes HTTP requests (``…/slack/events``); set once it runs.
        self.events_url = ""
        #: Seconds a Web API method waits before it answers (a slow Slack).
        self.delays: dict[str, float] = {}
        self.socket_acks: dict[str, dict[str, Any]] = {}
        self._socket: web.WebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()

    # -- running -----------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/files-pri/{key}/download/{name}", self._download)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_post("/respond/{key}", self._respond)
        app.router.add_get("/link", self._link)
        return app

    async def closing(self) -> None:
        if self._socket is not None:
            await self._socket.close()

    @property
    def api_base(self) -> str:
        """What ``R2V_SLACK_API_BASE`` is set to: the Web API's address."""
        return f"{self.url}/api"

    # -- what the test sets up ---------------------------------------------------------------

    def add_file(
        self, name: str, data: bytes, mimetype: str, *, user: str = "U0ANN"
    ) -> dict[str, Any]:
        """Store a file as if ``user`` uploaded it; answers Slack's file object for it."""
        file_id = f"F{next(self._ids):06d}"
        base = f"{self.url}/files-pri/{self.team}-{file_id}"
        info = {
            "id": file_id,
            "created": int(time.time()),
            "name": name,
            "title": name,
            "mimetype": mimetype,
            "filetype": name.rsplit(".", 1)[-1],
            "user": user,
            "size": len(data),
            "url_private": f"{base}/{name}",
            "url_private_download": f"{base}/download/{name}",
            "permalink": f"https://example.slack.com/files/{user}/{file_id}/{name}",
        }
        self.files[file_id] = StoredFile(info, data)
        return info

    def response_url(self) -> str:
        return f"{self.url}/respond/{secrets.token_hex(6)}"

    # -- what the test reads -----------------------------------------------------------------

    def called(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    async def wait_for(self, check: Callable[[], T | None], within: float = 20.0) -> T:
        """Wait until ``check()`` answers something (not None, False or empty) and answer it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            self._changed.clear()
            found = check()
            if found:
                return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"the fake Slack saw nothing matching within {within} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def response(self, url: str) -> dict[str, Any]:
        """The first message posted to the response URL ``url``."""
        key = url.rsplit("/", 1)[-1]
        return await self.wait_for(
            lambda: next((r for r in self.responses if r["key"] == key), None)
        )

    async def ephemeral(self, user: str) -> dict[str, Any]:
        return await self.wait_for(
            lambda: next((e for e in self.ephemerals if e["user"] == user), None)
        )

    def _notify(self) -> None:
        self._changed.set()

    # -- Slack's client side: requests to the bot --------------------------------------------

    def signed(
        self, body: str, *, secret: str | None = None, at: int | None = None
    ) -> dict[str, str]:
        stamp = str(int(time.time()) if at is None else at)
        verifier = SignatureVerifier(secret if secret is not None else self.signing_secret)
        signature = verifier.generate_signature(timestamp=stamp, body=body)
        assert signature is not None
        return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": signature}

    async def post(
        self, body: str, content_type: str, headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        """POST ``body`` to the bot, signed unless ``headers`` are given."""
        assert self.events_url, "events_url is not set"
        sent = {"Content-Type": content_type, **(headers or self.signed(body))}
        async with httpx.AsyncClient(timeout=10.0) as client:
            return await client.post(self.events_url, content=body.encode(), headers=sent)

    def slash_fields(
        self, text: str, *, user: str = "U0ANN", channel: str = "C0GEN", response_url: str = ""
    ) -> dict[str, str]:
        return {
            "token": "deprecated-verification-token",
            "team_id": self.team,
            "team_domain": "example",
            "channel_id": channel,
            "channel_name": "general",
            "user_id": user,
            "user_name": user.lower(),
            "command": "/r2v",
            "text": text,
            "api_app_id": "A0R2V",
            "is_enterprise_install": "false",
            "response_url": response_url or self.response_url(),
            "trigger_id": f"{next(self._ids)}.{secrets.token_hex(8)}",
        }

    async def slash(self, text: str, **where: str) -> tuple[httpx.Response, str]:
        """Send ``/r2v text``; answers the bot's HTTP answer and the command's response URL."""
        fields = self.slash_fields(text, **where)
        answer = await self.post(urlencode(fields), "application/x-www-form-urlencoded")
        return answer, fields["response_url"]

    async def interact(self, payload: Mapping[str, Any]) -> httpx.Response:
        body = urlencode({"payload": json.dumps(payload)})
        return await self.post(body, "application/x-www-form-urlencoded")

    def message_shortcut(
        self,
        callback_id: str,
        files: Sequence[Mapping[str, Any]],
        *,
        user: str = "U0ANN",
        channel: str = "C0GEN",
    ) -> dict[str, Any]:
        ts = self._ts()
        return {
            "type": "message_action",
            "token": "deprecated-verification-token",
            "action_ts": ts,
            "team": {"id": self.team, "domain": "example"},
            "user": {"id": user, "username": user.lower(), "team_id": self.team},
            "channel": {"id": channel, "name": "general"},
            "is_enterprise_install": False,
            "enterprise": None,
            "callback_id": callback_id,
            "trigger_id": f"{next(self._ids)}.{secrets.token_hex(8)}",
            "response_url": self.response_url(),
            "message_ts": ts,
            "message": {
                "type": "message",
                "user": user,
                "ts": ts,
                "text": "look at these",
                "files": [dict(f) for f in files],
                "upload": False,
            },
        }

    def view_submission(
        self, view: Mapping[str, Any], answers: Mapping[str, Any], *, user: str = "U0ANN"
    ) -> dict[str, Any]:
        """A submission of an opened ``view``, filled in as a person would: ``answers`` by the
        inputs' labels (text for text inputs and menus, file objects for file inputs)."""
        values: dict[str, dict[str, Any]] = {}
        for block in view.get("blocks", []):
            if block.get("type") != "input":
                continue
            element = block["element"]
            label = block["label"]["text"]
            if label not in answers:
                continue
            answer = answers[label]
            kind = element["type"]
            state: dict[str, Any] = {"type": kind}
            if kind == "file_input":
                state["files"] = [dict(f) for f in answer]
            elif kind == "static_select":
                options = [o for o in element["options"] if o["value"] == answer]
                assert options, f"{label} offers no option {answer!r}"
                state["selected_option"] = options[0]
            else:
                state["value"] = answer
            values[block["block_id"]] = {element["action_id"]: state}
        return {
            "type": "view_submission",
            "team": {"id": self.team, "domain": "example"},
            "user": {"id": user, "username": user.lower(), "team_id": self.team},
            "api_app_id": "A0R2V",
            "token": "deprecated-verification-token",
            "trigger_id": f"{next(self._ids)}.{secrets.token_hex(8)}",
            "view": {**view, "state": {"values": values}},
            "response_urls": [],
            "is_enterprise_install": False,
            "enterprise": None,
        }

    # -- Socket Mode -------------------------------------------------------------------------

    async def send_envelope(self, kind: str, payload: Mapping[str, Any]) -> str:
        """Send a Socket Mode envelope (``slash_commands``, ``interactive``); answers its id."""
        socket = await self.wait_for(lambda: self._socket)
        envelope_id = secrets.token_hex(8)
        await socket.send_json(
            {
                "envelope_id": envelope_id,
                "type": kind,
                "payload": dict(payload),
                "accepts_response_payload": kind != "events_api",
                "retry_attempt": 0,
                "retry_reason": "",
            }
        )
        return envelope_id

    async def _link(self, request: web.Request) -> web.StreamResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._socket = socket
        await socket.send_json({"type": "hello", "num_connections": 1, "debug_info": {}})
        self._notify()
        async for message in socket:
            if message.type is WSMsgType.TEXT:
                data = json.loads(message.data)
                if "envelope_id" in data:
                    self.socket_acks[data["envelope_id"]] = data
                    self._notify()
        return socket

    # -- Slack's servers -----------------------------------------------------------------------

    def _ts(self) -> str:
        return f"{int(time.time())}.{next(self._ids):06d}"

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            args.update(await request.json())
        elif request.can_read_body:
            args.update(dict(await request.post()))
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        self.calls.append(Call(method, args, token))
        self._notify()
        wanted = self.app_token if method == "apps.connections.open" else self.token
        if token != wanted:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if method in self.delays:
            await asyncio.sleep(self.delays[method])
        handler = _METHODS.get(method)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"}, status=404)
        answer = handler(self, args)
        self._notify()
        return web.json_response(answer)

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://example.slack.com/",
            "team": "Example",
            "user": "r2v",
            "team_id": self.team,
            "user_id": "U0BOT",
            "bot_id": "B0BOT",
        }

    def _post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = str(args.get("channel", ""))
        if channel in self.outside:
            return {"ok": False, "error": "not_in_channel"}
        ts = self._ts()
        thread = args.get("thread_ts")
        self.messages[ts] = Message(channel, ts, str(args.get("text", "")), thread)
        return {"ok": True, "channel": channel, "ts": ts, "message": {"text": args.get("text")}}

    def _update(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get(str(args.get("ts")))
        if message is None or message.channel != args.get("channel"):
            return {"ok": False, "error": "message_not_found"}
        message.text = str(args.get("text", ""))
        message.edits.append(message.text)
        return {"ok": True, "channel": message.channel, "ts": message.ts, "text": message.text}

    def _post_ephemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("channel") in self.outside:
            return {"ok": False, "error": "channel_not_found"}
        self.ephemerals.append(dict(args))
        return {"ok": True, "message_ts": self._ts()}

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("trigger_id"):
            return {"ok": False, "error": "invalid_trigger_id"}
        view = args["view"]
        view = json.loads(view) if isinstance(view, str) else dict(view)
        opened = {**view, "id": f"V{next(self._ids):06d}", "team_id": self.team, "hash": "h1"}
        self.views.append(opened)
        return {"ok": True, "view": opened}

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user_id = str(args.get("user", ""))
        user = {"id": user_id, "team_id": self.team, "is_admin": False, "is_owner": False}
        return {"ok": True, "user": {**user, **self.users.get(user_id, {})}}

    def _users_list(self, args: dict[str, Any]) -> dict[str, Any]:
        """users.list: the members in ``users`` (``name`` and ``display_name`` as given)."""
        members = [
            {
                "id": user_id,
                "team_id": self.team,
                "name": info.get("name", user_id.lower()),
                "real_name": info.get("real_name", ""),
                "profile": {"display_name": info.get("display_name", "")},
            }
            for user_id, info in self.users.items()
        ]
        limit = int(args.get("limit") or 100)
        start = int(args.get("cursor") or 0)
        more = start + limit < len(members)
        return {
            "ok": True,
            "members": members[start : start + limit],
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }

    def _usergroups_list(self, args: dict[str, Any]) -> dict[str, Any]:
        groups = [{"id": g["id"], "handle": g["handle"]} for g in self.usergroups]
        return {"ok": True, "usergroups": groups}

    def _usergroup_users(self, args: dict[str, Any]) -> dict[str, Any]:
        for group in self.usergroups:
            if group["id"] == args.get("usergroup"):
                return {"ok": True, "users": list(group["users"])}
        return {"ok": False, "error": "no_such_subteam"}

    def _files_info(self, args: dict[str, Any]) -> dict[str, Any]:
        stored = self.files.get(str(args.get("file", "")))
        if stored is None:
            return {"ok": False, "error": "file_not_found"}
        return {"ok": True, "file": stored.info}

    def _upload_url(self, args: dict[str, Any]) -> dict[str, Any]:
        file_id = f"F{next(self._ids):06d}"
        self.uploads[file_id] = Upload(file_id, str(args["filename"]), int(args["length"]))
        return {"ok": True, "upload_url": f"{self.url}/upload/{file_id}", "file_id": file_id}

    def _complete_upload(self, args: dict[str, Any]) -> dict[str, Any]:
        files = args.get("files")
        listed = json.loads(files) if isinstance(files, str) else list(files or [])
        done = []
        for item in listed:
            upload = self.uploads.get(item["id"])
            if upload is None or upload.data is None:
                return {"ok": False, "error": "file_not_found"}
            upload.channel = args.get("channel_id")
            upload.thread_ts = args.get("thread_ts")
            upload.comment = args.get("initial_comment")
            done.append({"id": upload.file_id, "title": item.get("title") or upload.filename})
        channel = args.get("channel_id")
        if channel:
            # Sharing posts a message carrying the files, as Slack does (a moment later there).
            ts = self._ts()
            shared = [{**f, "name": self.uploads[f["id"]].filename} for f in done]
            comment = str(args.get("initial_comment") or "")
            self.messages[ts] = Message(
                str(channel), ts, comment, args.get("thread_ts"), files=shared
            )
        return {"ok": True, "files": done}

    def _page(self, messages: list[Message], args: dict[str, Any]) -> dict[str, Any]:
        """One page of ``messages`` by ``limit`` and ``cursor`` (an offset, opaque to callers)."""
        limit = int(args.get("limit") or 100)
        start = int(args.get("cursor") or 0)
        chosen = messages[start : start + limit]
        more = start + limit < len(messages)
        return {
            "ok": True,
            "messages": [m.payload() for m in chosen],
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }

    def _history(self, args: dict[str, Any]) -> dict[str, Any]:
        """conversations.history: the channel's top-level messages, newest first."""
        channel = str(args.get("channel", ""))
        if channel in self.outside:
            return {"ok": False, "error": "not_in_channel"}
        oldest = float(args.get("oldest") or 0)
        found = [
            m
            for m in self.messages.values()
            if m.channel == channel and m.thread_ts in (None, m.ts) and float(m.ts) > oldest
        ]
        return self._page(sorted(found, key=lambda m: float(m.ts), reverse=True), args)

    def _replies(self, args: dict[str, Any]) -> dict[str, Any]:
        """conversations.replies: a thread's parent, then its replies, oldest first."""
        channel, ts = str(args.get("channel", "")), str(args.get("ts", ""))
        if channel in self.outside:
            return {"ok": False, "error": "not_in_channel"}
        parent = self.messages.get(ts)
        if parent is None or parent.channel != channel:
            return {"ok": False, "error": "thread_not_found"}
        replies = [m for m in self.messages.values() if m.channel == channel and m.thread_ts == ts]
        return self._page([parent, *sorted(replies, key=lambda m: float(m.ts))], args)

    def _connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "ws" + self.url.removeprefix("http") + "/link"}

    async def _download(self, request: web.Request) -> web.StreamResponse:
        authorization = request.headers.get("Authorization")
        self.downloads.append(Download(request.path, authorization))
        self._notify()
        if authorization != f"Bearer {self.token}":
            # What Slack does for a private file without a usable token.
            raise web.HTTPFound(f"{self.url}/?redir={request.path}")
        file_id = request.match_info["key"].rsplit("-", 1)[-1]
        stored = self.files.get(file_id)
        if stored is None:
            raise web.HTTPNotFound()
        return web.Response(body=stored.data, content_type=stored.info["mimetype"])

    async def _upload(self, request: web.Request) -> web.Response:
        upload = self.uploads.get(request.match_info["file_id"])
        if upload is None:
            raise web.HTTPNotFound()
        upload.content_length_header = request.headers.get("Content-Length")
        upload.data = await request.read()
        self._notify()
        return web.Response(text=f"OK - {len(upload.data)}")

    async def _respond(self, request: web.Request) -> web.Response:
        self.responses.append({"key": request.match_info["key"], **(await request.json())})
        self._notify()
        return web.Response(text="ok")


_METHODS: dict[str, Callable[[FakeSlack, dict[str, Any]], dict[str, Any]]] = {
    "auth.test": FakeSlack._auth_test,
    "chat.postMessage": FakeSlack._post_message,
    "chat.update": FakeSlack._update,
    "chat.postEphemeral": FakeSlack._post_ephemeral,
    "views.open": FakeSlack._views_open,
    "users.info": FakeSlack._users_info,
    "users.list": FakeSlack._users_list,
    "usergroups.list": FakeSlack._usergroups_list,
    "usergroups.users.list": FakeSlack._usergroup_users,
    "files.info": FakeSlack._files_info,
    "files.getUploadURLExternal": FakeSlack._upload_url,
    "files.completeUploadExternal": FakeSlack._complete_upload,
    "conversations.history": FakeSlack._history,
    "conversations.replies": FakeSlack._replies,
    "apps.connections.open": FakeSlack._connections_open,
}
