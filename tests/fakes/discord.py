"""A loopback fake of Discord: its REST API, its CDN, and the gateway's interaction payloads.

The bot under test is real discord.py pointed at this server (``R2V_DISCORD_API_BASE``). The fake
answers the routes the bot uses, keeps channels, threads and messages, serves the attachments it
was handed or that the bot uploaded, and validates every JSON body it receives against Discord's
own OpenAPI description (allowing integer snowflakes, which discord.py sends for new attachment
ids). A body the description refuses is answered 400 as Discord would, and listed in
``problems`` for the test to fail on.

It also plays the gateway: ``slash``, ``autocomplete``, ``click``, ``submit`` and ``context_menu``
build INTERACTION_CREATE payloads from the commands the bot synced, the messages it posted and the
forms it opened; ``feed`` hands one to the client as the gateway would.

Answers are ``Content-Type: application/json`` exactly: with a charset, discord.py reads the body
as text. Attachments live at ``https://cdn.discordapp.com/...`` URLs; ``CdnTransport`` (given to
the bot's download client in tests only) serves every host from this fake and records which hosts
were asked for.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import itertools
import json
import mimetypes
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import discord
import httpx
import jsonschema  # no stubs in the dev extra
import referencing
from aiohttp import BodyPartReader, web
from referencing.jsonschema import DRAFT202012

from tests.fakes.base import LoopbackServer

T = TypeVar("T")

API = "/api/v10"
CDN = "https://cdn.discordapp.com"
BOT_TOKEN = "fake-bot-token"
_SPEC_URI = "urn:discord-openapi"
_HERE = Path(__file__).resolve()
#: Where Discord's OpenAPI description is looked for (``R2V_DISCORD_OPENAPI`` first).
SPEC_LOCATIONS = (
    _HERE.parents[3] / "shared" / "specs" / "discord-openapi.json",
    # a compressed copy of the same file (July 2026), so a clone without shared/ still checks
    _HERE.parent / "specs" / "discord-openapi.json.gz",
)
EPHEMERAL = 64
_MESSAGE_CALLBACK, _DEFERRED, _DEFERRED_UPDATE = 4, 5, 6
_AUTOCOMPLETE_RESULT, _MODAL = 8, 9
_NESTING = {1, 2}

Handler = Callable[[web.Request], Any]


def _spec_path() -> Path:
    named = os.environ.get("R2V_DISCORD_OPENAPI")
    candidates = [Path(named)] if named else list(SPEC_LOCATIONS)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "Discord's OpenAPI description (discord-openapi.json, discord/discord-api-spec) is needed "
        f"to check request bodies; put it at one of {[str(c) for c in candidates]} or name it in "
        "R2V_DISCORD_OPENAPI."
    )


class SpecCheck:
    """Request bodies checked against Discord's OpenAPI 3.1 description (JSON Schema 2020-12)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        schemas = spec["components"]["schemas"]
        # discord.py sends new attachments' ids as integers; Discord takes them.
        schemas["SnowflakeType"] = {
            "anyOf": [schemas["SnowflakeType"], {"type": "integer", "minimum": 0}]
        }
        self._registry: referencing.Registry[Any] = referencing.Registry().with_resource(
            _SPEC_URI, DRAFT202012.create_resource(spec)
        )
        self._paths = spec["paths"]
        # Fewer parameters first, so /messages/@original wins over /messages/{message_id}.
        templates = sorted(self._paths, key=lambda p: (p.count("{"), -len(p)))
        self._routes = [
            (re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(p)) + "$"), p)
            for p in templates
        ]
        self._validators: dict[tuple[str, str, str], Any] = {}

    def template(self, path: str) -> str | None:
        return next((t for pattern, t in self._routes if pattern.match(path)), None)

    def errors(self, method: str, path: str, content_type: str, body: Any) -> list[str]:
        """What is wrong with ``body`` for this operation (empty: nothing)."""
        template = self.template(path)
        operation = self._paths.get(template or "", {}).get(method.lower())
        if template is None or operation is None:
            return [f"{method} {path} is not an operation of Discord's API"]
        content = operation.get("requestBody", {}).get("content", {})
        if content_type not in content:
            return [f"{method} {template} takes no {content_type} body"]
        key = (template, method.lower(), content_type)
        validator = self._validators.get(key)
        if validator is None:
            pointer = "/".join(
                part.replace("~", "~0").replace("/", "~1")
                for part in ("paths", template, method.lower(), "requestBody", "content")
            )
            pointer += "/" + content_type.replace("~", "~0").replace("/", "~1") + "/schema"
            schema = {"$ref": f"{_SPEC_URI}#/{quote(pointer, safe='/~@')}"}
            validator = jsonschema.Draft202012Validator(schema, registry=self._registry)
            self._validators[key] = validator
        return [
            f"{method} {template}: {'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}"
            for e in validator.iter_errors(body)
        ]


@functools.cache
def spec_check() -> SpecCheck:
    path = _spec_path()
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return SpecCheck(json.loads(raw))


@dataclass
class Request:
    """One request the bot made: its body (JSON, or a multipart's ``payload_json``) and files."""

    seq: int
    method: str
    path: str
    query: dict[str, str]
    body: Any = None
    files: dict[str, bytes] = field(default_factory=dict)


RECORDED = web.RequestKey("recorded", Request)


@dataclass
class User:
    id: int
    name: str
    admin: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name,
            "discriminator": "0",
            "global_name": self.name.title(),
            "avatar": None,
            "bot": False,
            "public_flags": 0,
        }


@dataclass
class Interaction:
    payload: dict[str, Any]
    callbacks: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    edits: list[dict[str, Any]] = field(default_factory=list)
    followups: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Answer:
    """What the user saw as an interaction's answer."""

    kind: str  # "message", "choices" or "modal"
    content: str = ""
    ephemeral: bool = False
    choices: tuple[str, ...] = ()
    modal: Mapping[str, Any] = field(default_factory=dict)
    token: str = ""

    @property
    def code(self) -> str | None:
        """A refusal's code: the small print (``-# code``) under its words."""
        found = re.search(r"^-# (\w+)$", self.content, re.MULTILINE)
        return found.group(1) if found else None


class FakeDiscord(LoopbackServer):
    """``async with FakeDiscord() as fake:`` then point the bot at ``fake.url``.

    ``premium_tier``: the guild's boost tier, which sets its upload limit (0: 10 MiB).
    """

    def __init__(self, *, premium_tier: int = 0) -> None:
        super().__init__()
        self.premium_tier = premium_tier
        # Snowflakes carry their creation time, as Discord's do (reading "messages after a
        # moment" depends on it).
        self._ids = itertools.count(discord.utils.time_snowflake(discord.utils.utcnow()))
        self.app_id = self.snowflake()
        self.bot = User(self.snowflake(), "r2v")
        self.guild_id = self.snowflake()
        self.requests: list[Request] = []
        self.cdn_requests: list[tuple[int, str]] = []
        self.problems: list[str] = []
        self.channels: dict[int, dict[str, Any]] = {}
        self.messages: dict[int, dict[str, Any]] = {}
        self.deleted: list[int] = []
        self.interactions: dict[str, Interaction] = {}
        self.commands: dict[str, list[dict[str, Any]]] = {}
        self.cdn_files: dict[str, bytes] = {}
        self._nonces: dict[tuple[int, str], int] = {}
        #: Channels where the bot lacks a permission: posting there answers 403 (50013).
        self.forbidden: set[int] = set()
        #: Direct-message channels by user id.
        self.dms: dict[int, int] = {}
        self._seq = itertools.count(1)

    def snowflake(self) -> int:
        return next(self._ids)

    # -- lifecycle -------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        spec_check()  # load once, before any request waits on it
        app = web.Application(middlewares=[self._record], client_max_size=200 * 1024 * 1024)
        routes = [
            ("GET", "/users/@me", self._me),
            ("GET", "/oauth2/applications/@me", self._application),
            ("PUT", "/applications/{app}/commands", self._sync),
            ("PUT", "/applications/{app}/guilds/{guild}/commands", self._sync),
            ("GET", "/guilds/{guild}", self._guild),
            ("GET", "/channels/{channel}", self._channel),
            ("POST", "/channels/{channel}/threads", self._thread),
            ("POST", "/channels/{channel}/messages", self._create_message),
            ("GET", "/channels/{channel}/messages", self._list_messages),
            ("POST", "/users/@me/channels", self._open_dm),
            ("PATCH", "/channels/{channel}/messages/{message}", self._edit_message),
            ("DELETE", "/channels/{channel}/messages/{message}", self._delete_message),
            ("POST", "/interactions/{id}/{token}/callback", self._callback),
            ("PATCH", "/webhooks/{app}/{token}/messages/@original", self._edit_original),
            ("POST", "/webhooks/{app}/{token}", self._followup),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, API + path, handler)
        app.router.add_get("/cdn/{host}/{tail:.*}", self._cdn)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        return app

    # -- the test's side: the server's contents --------------------------------------------

    def text_channel(self, name: str) -> int:
        channel_id = self.snowflake()
        self.channels[channel_id] = {
            "id": str(channel_id),
            "type": 0,
            "guild_id": str(self.guild_id),
            "name": name,
            "position": len(self.channels),
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "flags": 0,
        }
        return channel_id

    def user(self, name: str, *, admin: bool = False) -> User:
        return User(self.snowflake(), name, admin)

    def attachment(
        self,
        path: Path | None = None,
        *,
        url: str | None = None,
        data: bytes | None = None,
        filename: str | None = None,
        channel_id: int | None = None,
    ) -> dict[str, Any]:
        """An attachment object for a file (``path``, or ``data`` named ``filename``), its bytes
        served by the CDN route; ``url`` plants any other address instead."""
        content = data if data is not None else (path.read_bytes() if path else b"")
        attachment_id = self.snowflake()
        filename = filename or (path.name if path else "file.bin")
        folder = channel_id or self.guild_id
        url = url or f"{CDN}/attachments/{folder}/{attachment_id}/{filename}"
        self.cdn_files.setdefault(url, content)
        return {
            "id": str(attachment_id),
            "filename": filename,
            "size": len(content),
            "url": url,
            "proxy_url": url.replace("cdn.discordapp.com", "media.discordapp.net"),
            "content_type": mimetypes.guess_type(filename)[0] or "application/octet-stream",
        }

    def user_message(
        self, channel_id: int, author: User, content: str, attachments: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """A message a person posted (one to save a character from)."""
        message = self._message(channel_id, content, author=author.payload())
        message["attachments"] = attachments
        return message

    def delete_channel(self, channel_id: int) -> None:
        """A channel or thread someone deleted, with its messages."""
        del self.channels[channel_id]
        for message_id in [int(m["id"]) for m in self.in_channel(channel_id)]:
            del self.messages[message_id]

    def in_channel(self, channel_id: int) -> list[dict[str, Any]]:
        return [m for m in self.messages.values() if m["channel_id"] == str(channel_id)]

    def threads_of(self, channel_id: int) -> list[dict[str, Any]]:
        return [c for c in self.channels.values() if c.get("parent_id") == str(channel_id)]

    def made(self, method: str, pattern: str) -> list[Request]:
        """The requests whose method matches and whose path matches ``pattern`` (a regex)."""
        return [r for r in self.requests if r.method == method and re.fullmatch(pattern, r.path)]

    async def wait_for(self, check: Callable[[], T | None], within: float = 15.0) -> T:
        """Poll ``check`` until it answers something truthy."""
        deadline = time.monotonic() + within
        while True:
            found = check()
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within} s waiting for {check}")
            await asyncio.sleep(0.01)

    # -- the gateway's side: interactions --------------------------------------------------

    def feed(self, client: discord.Client, payload: dict[str, Any]) -> None:
        """Deliver an INTERACTION_CREATE to the client as its gateway connection would."""
        client._connection.parse_interaction_create(payload)  # type: ignore[arg-type]

    async def answer(self, payload: dict[str, Any], within: float = 15.0) -> Answer:
        """Wait for the bot's visible answer to the interaction ``payload``."""
        token = payload["token"]
        return await self.wait_for(lambda: self._answer(token), within)

    def slash(self, words: str, user: User, channel_id: int, **options: Any) -> dict[str, Any]:
        """A slash command as the user typed it (``words``: ``"character create"``)."""
        return self._interaction(2, self._command_data(words, options, None), user, channel_id)

    def autocomplete(
        self, words: str, user: User, channel_id: int, focused: str, **options: Any
    ) -> dict[str, Any]:
        return self._interaction(4, self._command_data(words, options, focused), user, channel_id)

    def context_menu(self, name: str, message: dict[str, Any], user: User) -> dict[str, Any]:
        command = self._synced(name, 3)
        data = {
            "id": command["id"],
            "name": name,
            "type": 3,
            "target_id": message["id"],
            "resolved": {"messages": {message["id"]: message}},
        }
        return self._interaction(2, data, user, int(message["channel_id"]))

    def click(self, message: dict[str, Any], label: str, user: User) -> dict[str, Any]:
        """A click on the button labelled ``label`` under ``message``."""
        buttons = [c for row in message.get("components", []) for c in row.get("components", [])]
        button = next((b for b in buttons if b.get("label") == label), None)
        if button is None:
            raise AssertionError(f"no button {label!r} under the message; {buttons}")
        data = {"custom_id": button["custom_id"], "component_type": 2}
        payload = self._interaction(3, data, user, int(message["channel_id"]))
        payload["message"] = message
        return payload

    def submit(
        self, modal: Answer, user: User, channel_id: int, values: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The form ``modal`` submitted with ``values`` by label: text, a choice, or files."""
        components: list[dict[str, Any]] = []
        attachments: dict[str, Any] = {}
        for number, label in enumerate(modal.modal["components"], start=1):
            if label["type"] != 18:
                continue
            inner = label["component"]
            given = values.get(label["label"])
            answered: dict[str, Any] = {
                "type": inner["type"],
                "id": inner.get("id", number * 10),
                "custom_id": inner["custom_id"],
            }
            if inner["type"] == 4:
                answered["value"] = given if given is not None else inner.get("value") or ""
            elif inner["type"] == 19:
                ids = []
                for item in given or []:
                    attachment = item if isinstance(item, dict) else self.attachment(item)
                    attachments[attachment["id"]] = attachment
                    ids.append(attachment["id"])
                answered["values"] = ids
            elif inner["type"] == 3:
                defaults = [o["value"] for o in inner.get("options", []) if o.get("default")]
                answered["values"] = [given] if given is not None else defaults
            components.append({"type": 18, "id": label.get("id", number), "component": answered})
        data: dict[str, Any] = {"custom_id": modal.modal["custom_id"], "components": components}
        if attachments:
            data["resolved"] = {"attachments": attachments}
        return self._interaction(5, data, user, channel_id)

    # -- building payloads -----------------------------------------------------------------

    def _synced(self, name: str, kind: int = 1) -> dict[str, Any]:
        for commands in self.commands.values():
            for command in commands:
                if command["name"] == name and command.get("type", 1) == kind:
                    return command
        raise AssertionError(f"the bot synced no command {name!r}")

    def _command_data(
        self, words: str, options: Mapping[str, Any], focused: str | None
    ) -> dict[str, Any]:
        top, *rest = words.split()
        command = self._synced(top)
        data: dict[str, Any] = {"id": command["id"], "name": top, "type": 1}
        holder, defined = data, command.get("options", [])
        for word in rest:
            sub = next((o for o in defined if o["name"] == word and o["type"] in _NESTING), None)
            if sub is None:
                raise AssertionError(f"/{top} has no subcommand {word!r}")
            nested: dict[str, Any] = {"type": sub["type"], "name": word}
            holder["options"] = [nested]
            holder, defined = nested, sub.get("options", [])
        given: list[dict[str, Any]] = []
        attachments: dict[str, Any] = {}
        for name, value in options.items():
            option = next((o for o in defined if o["name"] == name), None)
            if option is None:
                raise AssertionError(f"/{words} has no option {name!r}")
            if option["type"] == 11 and not (focused and name != focused):
                attachment = value if isinstance(value, dict) else self.attachment(value)
                attachments[attachment["id"]] = attachment
                value = attachment["id"]
            elif option["type"] == 7:
                value = str(value)
            entry = {"name": name, "type": option["type"], "value": value}
            if name == focused:
                entry["focused"] = True
            given.append(entry)
        holder["options"] = given
        if attachments:
            data["resolved"] = {"attachments": attachments}
        return data

    def _interaction(
        self, kind: int, data: dict[str, Any], user: User, channel_id: int
    ) -> dict[str, Any]:
        interaction_id = self.snowflake()
        token = "itok_" + secrets.token_urlsafe(16)
        permissions = discord.Permissions(
            view_channel=True, send_messages=True, use_application_commands=True
        )
        permissions.manage_guild = user.admin
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(self.app_id),
            "type": kind,
            "data": data,
            "guild_id": str(self.guild_id),
            "guild": {"id": str(self.guild_id), "locale": "en-US", "features": []},
            "channel": self.channels[channel_id],
            "channel_id": str(channel_id),
            "member": {
                "user": user.payload(),
                "roles": [],
                "permissions": str(permissions.value),
                "joined_at": "2026-01-01T00:00:00+00:00",
                "deaf": False,
                "mute": False,
                "flags": 0,
                "pending": False,
                "nick": None,
                "avatar": None,
                "premium_since": None,
                "communication_disabled_until": None,
            },
            "token": token,
            "version": 1,
            "app_permissions": str(discord.Permissions.all().value),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(self.guild_id)},
            "context": 0,
            "attachment_size_limit": self._upload_limit(),
        }
        self.interactions[token] = Interaction(payload)
        return payload

    def _answer(self, token: str) -> Answer | None:
        state = self.interactions[token]
        for kind, data in state.callbacks:
            flags = int(data.get("flags") or 0)
            if kind == _MESSAGE_CALLBACK:
                content = str(data.get("content") or "")
                return Answer("message", content, bool(flags & EPHEMERAL), token=token)
            if kind == _AUTOCOMPLETE_RESULT:
                choices = tuple(str(c["value"]) for c in data.get("choices", []))
                return Answer("choices", choices=choices, token=token)
            if kind == _MODAL:
                return Answer("modal", modal=data, token=token)
            if kind in (_DEFERRED, _DEFERRED_UPDATE) and state.edits:
                content = str(state.edits[-1].get("content") or "")
                return Answer("message", content, bool(flags & EPHEMERAL), token=token)
        return None

    def _upload_limit(self) -> int:
        return {2: 50 * 1024 * 1024, 3: 100 * 1024 * 1024}.get(self.premium_tier, 10 * 1024 * 1024)

    def _message(
        self, channel_id: int, content: str, *, author: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        message_id = self.snowflake()
        message: dict[str, Any] = {
            "id": str(message_id),
            "channel_id": str(channel_id),
            "guild_id": str(self.guild_id),
            "author": author or {**self.bot.payload(), "bot": True},
            "content": content,
            "timestamp": "2026-01-01T00:00:00+00:00",
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "components": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
        }
        self.messages[message_id] = message
        return message

    # -- REST ------------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(API + "/"):
            response: web.StreamResponse = await handler(request)
            return response
        path = request.path[len(API) :]
        recorded = Request(next(self._seq), request.method, path, dict(request.query))
        self.requests.append(recorded)
        if request.headers.get("Authorization") not in (f"Bot {BOT_TOKEN}", None):
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        content_type = request.content_type
        errors: list[str] = []
        if request.can_read_body:
            if content_type == "multipart/form-data":
                reader = await request.multipart()
                while (part := await reader.next()) is not None:
                    if not isinstance(part, BodyPartReader) or part.name is None:
                        continue
                    if part.name == "payload_json":
                        recorded.body = json.loads(await part.text())
                    else:
                        recorded.files[part.filename or part.name] = bytes(await part.read())
            else:
                recorded.body = json.loads(await request.read() or b"null")
            errors = spec_check().errors(request.method, path, content_type, recorded.body)
        if errors:
            self.problems.extend(errors)
            return _json(
                {
                    "code": 50035,
                    "message": "Invalid Form Body",
                    "errors": {
                        "body": {"_errors": [{"code": "SPEC", "message": e} for e in errors]}
                    },
                },
                status=400,
            )
        request[RECORDED] = recorded
        response = await handler(request)
        return response

    async def _unknown(self, request: web.Request) -> web.StreamResponse:
        self.problems.append(f"{request.method} {request.path}: the fake has no such route")
        return _json({"message": "404: Not Found", "code": 0}, status=404)

    async def _me(self, request: web.Request) -> web.StreamResponse:
        return _json({**self.bot.payload(), "id": str(self.bot.id), "bot": True, "flags": 0})

    async def _application(self, request: web.Request) -> web.StreamResponse:
        return _json(
            {
                "id": str(self.app_id),
                "name": "r2v",
                "icon": None,
                "description": "",
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": User(self.snowflake(), "owner").payload(),
                "verify_key": "0" * 64,
                "flags": 0,
                "summary": "",
            }
        )

    async def _sync(self, request: web.Request) -> web.StreamResponse:
        body: list[dict[str, Any]] = request[RECORDED].body
        scope = request.match_info.get("guild", "global")
        synced = [
            {
                **command,
                "id": str(self.snowflake()),
                "application_id": str(self.app_id),
                "version": str(self.snowflake()),
            }
            for command in body
        ]
        self.commands[scope] = synced
        return _json(synced)

    async def _guild(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["guild"] != str(self.guild_id):
            return _json({"message": "Unknown Guild", "code": 10004}, status=404)
        return _json(
            {
                "id": str(self.guild_id),
                "name": "Test server",
                "icon": None,
                "splash": None,
                "discovery_splash": None,
                "owner_id": str(self.snowflake()),
                "afk_channel_id": None,
                "afk_timeout": 300,
                "verification_level": 0,
                "default_message_notifications": 0,
                "explicit_content_filter": 0,
                "roles": [],
                "emojis": [],
                "stickers": [],
                "features": [],
                "mfa_level": 0,
                "application_id": None,
                "system_channel_id": None,
                "system_channel_flags": 0,
                "rules_channel_id": None,
                "vanity_url_code": None,
                "description": None,
                "banner": None,
                "premium_tier": self.premium_tier,
                "premium_subscription_count": 0,
                "preferred_locale": "en-US",
                "public_updates_channel_id": None,
                "safety_alerts_channel_id": None,
                "nsfw_level": 0,
                "premium_progress_bar_enabled": False,
            }
        )

    async def _channel(self, request: web.Request) -> web.StreamResponse:
        channel = self.channels.get(int(request.match_info["channel"]))
        if channel is None:
            return _json({"message": "Unknown Channel", "code": 10003}, status=404)
        return _json(channel)

    async def _thread(self, request: web.Request) -> web.StreamResponse:
        parent = int(request.match_info["channel"])
        if parent not in self.channels:
            return _json({"message": "Unknown Channel", "code": 10003}, status=404)
        body = request[RECORDED].body
        thread_id = self.snowflake()
        thread = {
            "id": str(thread_id),
            "type": body.get("type", 11),
            "guild_id": str(self.guild_id),
            "parent_id": str(parent),
            "name": body["name"],
            "owner_id": str(self.bot.id),
            "member_count": 1,
            "message_count": 0,
            "total_message_sent": 0,
            "rate_limit_per_user": 0,
            "flags": 0,
            "last_message_id": None,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": body.get("auto_archive_duration", 1440),
                "archive_timestamp": "2026-01-01T00:00:00+00:00",
                "locked": False,
                "create_timestamp": "2026-01-01T00:00:00+00:00",
            },
        }
        self.channels[thread_id] = thread
        return _json(thread, status=201)

    async def _create_message(self, request: web.Request) -> web.StreamResponse:
        channel_id = int(request.match_info["channel"])
        if channel_id not in self.channels:
            return _json({"message": "Unknown Channel", "code": 10003}, status=404)
        if channel_id in self.forbidden:
            return _json({"message": "Missing Permissions", "code": 50013}, status=403)
        recorded: Request = request[RECORDED]
        body: dict[str, Any] = recorded.body or {}
        nonce = body.get("nonce")
        if nonce is not None and body.get("enforce_nonce"):
            first = self._nonces.get((channel_id, str(nonce)))
            if first is not None and first in self.messages:
                return _json(self.messages[first])
        message = self._message(channel_id, body.get("content") or "")
        message["embeds"] = body.get("embeds") or []
        message["components"] = body.get("components") or []
        if nonce is not None:
            message["nonce"] = str(nonce)
            self._nonces[(channel_id, str(nonce))] = int(message["id"])
        for index, data in enumerate(recorded.files.values()):
            described = (body.get("attachments") or [{}] * (index + 1))[index]
            filename = described.get("filename") or f"file{index}"
            attachment = self.attachment(data=data, filename=filename, channel_id=channel_id)
            message["attachments"].append(attachment)
        return _json(message)

    async def _list_messages(self, request: web.Request) -> web.StreamResponse:
        """Get Channel Messages: ``limit`` (1–100, default 50) around, before or after a
        message id; newest first whichever is asked, as Discord answers."""
        channel_id = int(request.match_info["channel"])
        if channel_id not in self.channels:
            return _json({"message": "Unknown Channel", "code": 10003}, status=404)
        if channel_id in self.forbidden:
            return _json({"message": "Missing Access", "code": 50001}, status=403)
        query = request.query
        limit = int(query.get("limit", "50"))
        if not 1 <= limit <= 100:
            return _json({"message": "Invalid Form Body", "code": 50035}, status=400)
        ids = sorted(int(m["id"]) for m in self.in_channel(channel_id))
        if "after" in query:
            chosen = [i for i in ids if i > int(query["after"])][:limit]
        elif "before" in query:
            chosen = [i for i in ids if i < int(query["before"])][-limit:]
        elif "around" in query:
            middle = int(query["around"])
            older = [i for i in ids if i < middle][-(limit // 2) :]
            chosen = older + [i for i in ids if i >= middle][: limit - len(older)]
        else:
            chosen = ids[-limit:]
        return _json([self.messages[i] for i in reversed(chosen)])

    async def _open_dm(self, request: web.Request) -> web.StreamResponse:
        """Create DM: the same channel every time for one recipient."""
        recipient = int(request[RECORDED].body["recipient_id"])
        channel_id = self.dms.get(recipient)
        if channel_id is None:
            channel_id = self.dms[recipient] = self.snowflake()
            self.channels[channel_id] = {
                "id": str(channel_id),
                "type": 1,
                "last_message_id": None,
                "flags": 0,
                "recipients": [User(recipient, "someone").payload()],
            }
        return _json(self.channels[channel_id])

    async def _edit_message(self, request: web.Request) -> web.StreamResponse:
        message = self.messages.get(int(request.match_info["message"]))
        if message is None or message["channel_id"] != request.match_info["channel"]:
            return _json({"message": "Unknown Message", "code": 10008}, status=404)
        body = request[RECORDED].body or {}
        for key in ("content", "embeds", "components"):
            if key in body:
                message[key] = body[key]
        message["edited_timestamp"] = "2026-01-01T00:00:01+00:00"
        return _json(message)

    async def _delete_message(self, request: web.Request) -> web.StreamResponse:
        message_id = int(request.match_info["message"])
        if self.messages.pop(message_id, None) is None:
            return _json({"message": "Unknown Message", "code": 10008}, status=404)
        self.deleted.append(message_id)
        return web.Response(status=204)

    async def _callback(self, request: web.Request) -> web.StreamResponse:
        state = self.interactions.get(request.match_info["token"])
        if state is None or state.payload["id"] != request.match_info["id"]:
            return _json({"message": "Unknown interaction", "code": 10062}, status=404)
        if state.callbacks:
            return _json(
                {"message": "Interaction has already been acknowledged.", "code": 40060},
                status=400,
            )
        body = request[RECORDED].body
        kind, data = int(body["type"]), body.get("data") or {}
        state.callbacks.append((kind, data))
        interaction = {
            "id": state.payload["id"],
            "type": state.payload["type"],
            "response_message_loading": kind == _DEFERRED,
            "response_message_ephemeral": bool(int(data.get("flags") or 0) & EPHEMERAL),
        }
        resource: dict[str, Any] = {"type": kind}
        if kind in (_MESSAGE_CALLBACK, _DEFERRED):
            channel_id = int(state.payload["channel_id"])
            message = self._message(channel_id, str(data.get("content") or ""))
            self.messages.pop(int(message["id"]))  # the answer, not a channel message
            interaction["response_message_id"] = message["id"]
            resource["message"] = message
        return _json({"interaction": interaction, "resource": resource})

    async def _edit_original(self, request: web.Request) -> web.StreamResponse:
        state = self.interactions.get(request.match_info["token"])
        if state is None or not state.callbacks:
            return _json({"message": "Unknown Webhook", "code": 10015}, status=404)
        body = request[RECORDED].body or {}
        state.edits.append(body)
        message = self._message(int(state.payload["channel_id"]), str(body.get("content") or ""))
        self.messages.pop(int(message["id"]))
        return _json(message)

    async def _followup(self, request: web.Request) -> web.StreamResponse:
        state = self.interactions.get(request.match_info["token"])
        if state is None:
            return _json({"message": "Unknown Webhook", "code": 10015}, status=404)
        body = request[RECORDED].body or {}
        state.followups.append(body)
        message = self._message(int(state.payload["channel_id"]), str(body.get("content") or ""))
        self.messages.pop(int(message["id"]))
        return _json(message)

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        url = f"https://{request.match_info['host']}/{request.match_info['tail']}"
        self.cdn_requests.append((next(self._seq), url))
        data = self.cdn_files.get(url)
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/octet-stream")


class CdnTransport(httpx.AsyncBaseTransport):
    """Serves every https URL from the fake's ``/cdn/{host}/...`` route, for tests only.

    The bot's download client gets this transport in tests, so what the CDN would serve comes
    from the fake; the bot's own host check runs before any request, with or without it.
    """

    def __init__(self, fake: FakeDiscord) -> None:
        self._fake = fake
        self._inner = httpx.AsyncHTTPTransport()
        self.hosts: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.host)
        local = httpx.URL(f"{self._fake.url}/cdn/{request.url.host}{request.url.raw_path.decode()}")
        forwarded = httpx.Request(request.method, local, headers=request.headers)
        return await self._inner.handle_async_request(forwarded)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"}
    )
