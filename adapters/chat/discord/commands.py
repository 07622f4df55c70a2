"""The core's catalog as Discord application commands, and invocations read back into it.

Every command, option, range, choice and help text comes from ``bot.commands.CATALOG``; nothing
here names a command's options. Discord nests commands at most three words deep (``/character
create`` is the ``create`` subcommand of ``/character``; ``/settings channel add`` sits in the
``channel`` group of ``/settings``), and a command with subcommands cannot take options of its
own. So a catalog command whose name begins other names (``settings`` beside ``settings channel
add``) is rendered as one more subcommand of its group: ``/settings limits``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import discord

from adapters.chat.discord.files import Attachment
from bot.commands import CATALOG, Command, Option, OptionType

#: The message context-menu command (right-click a message → Apps → Save as character).
SAVE_AS_CHARACTER: Final = "Save as character"
#: The subcommand a command becomes when its name also begins other commands' names.
ROOT_SUBCOMMANDS: Final[Mapping[str, str]] = {"settings": "limits"}
DEFAULT_ROOT_SUBCOMMAND: Final = "show"
#: Characters belong to servers: every command is offered in servers only, to server installs.
_GUILD_CONTEXT: Final = [0]
_GUILD_INSTALL: Final = [0]
_DESCRIPTION_MAX: Final = 100
#: Discord offers at most this many choices for an option (and autocomplete suggestions).
MAX_CHOICES: Final = 25
#: Admin-only commands are shown to those who may Manage Server (the core checks again). An
#: integer, as Discord's OpenAPI description has it (its prose and discord.py use a string).
_ADMIN_PERMISSIONS: Final = discord.Permissions(manage_guild=True).value
_MAX_DEPTH: Final = 3

_KINDS: Final[Mapping[OptionType, discord.AppCommandOptionType]] = {
    OptionType.STRING: discord.AppCommandOptionType.string,
    OptionType.CHOICE: discord.AppCommandOptionType.string,
    OptionType.CHARACTER: discord.AppCommandOptionType.string,
    OptionType.INTEGER: discord.AppCommandOptionType.integer,
    OptionType.BOOLEAN: discord.AppCommandOptionType.boolean,
    OptionType.ATTACHMENT: discord.AppCommandOptionType.attachment,
    OptionType.CHANNEL: discord.AppCommandOptionType.channel,
    OptionType.USER: discord.AppCommandOptionType.user,
}
_NESTING: Final = frozenset(
    {
        discord.AppCommandOptionType.subcommand.value,
        discord.AppCommandOptionType.subcommand_group.value,
    }
)


@dataclass(frozen=True, slots=True)
class Invocation:
    """A command as the user sent it: raw option values by catalog name.

    Attachments are ``Attachment`` values (not downloaded yet), channels their ids as text.
    ``focused`` names the option being typed, for autocomplete.
    """

    command: Command
    values: Mapping[str, Any]
    focused: str | None = None

    @property
    def attachments(self) -> dict[str, Attachment]:
        return {k: v for k, v in self.values.items() if isinstance(v, Attachment)}


@dataclass
class _Node:
    command: Command | None = None
    children: dict[str, _Node] = field(default_factory=dict)


class CommandSet:
    """The rendered catalog: the payloads to sync, and the way back from an interaction."""

    def __init__(self, catalog: Sequence[Command] = CATALOG) -> None:
        self._by_path: dict[tuple[str, ...], Command] = {}
        names = [c.name for c in catalog]
        for command in catalog:
            path = tuple(command.name.split())
            if any(other.startswith(command.name + " ") for other in names):
                path += (ROOT_SUBCOMMANDS.get(command.name, DEFAULT_ROOT_SUBCOMMAND),)
            if len(path) > _MAX_DEPTH:
                raise ValueError(f"/{command.name} is nested deeper than Discord allows")
            self._by_path[path] = command
        self._root = _Node()
        for path, command in self._by_path.items():
            node = self._root
            for word in path:
                node = node.children.setdefault(word, _Node())
            node.command = command

    def path_of(self, name: str) -> tuple[str, ...]:
        """The words a user types for the catalog command ``name`` (``settings`` → settings
        limits)."""
        return next(path for path, command in self._by_path.items() if command.name == name)

    def payloads(self) -> list[dict[str, Any]]:
        """Every application command, as the bulk-overwrite endpoint takes them."""
        rendered = [self._top(name, node) for name, node in self._root.children.items()]
        rendered.append(
            {
                "type": discord.AppCommandType.message.value,
                "name": SAVE_AS_CHARACTER,
                "contexts": _GUILD_CONTEXT,
                "integration_types": _GUILD_INSTALL,
            }
        )
        return rendered

    def read(self, data: Mapping[str, Any]) -> Invocation | None:
        """The catalog command and values in an APPLICATION_COMMAND or AUTOCOMPLETE payload's
        ``data``; ``None`` for a command the catalog does not have (an old sync)."""
        path = [str(data.get("name", ""))]
        options: Sequence[Mapping[str, Any]] = data.get("options") or []
        while options and options[0].get("type") in _NESTING:
            path.append(str(options[0].get("name", "")))
            options = options[0].get("options") or []
        command = self._by_path.get(tuple(path))
        if command is None:
            return None
        attachments: Mapping[str, Any] = (data.get("resolved") or {}).get("attachments") or {}
        values: dict[str, Any] = {}
        focused = None
        for given in options:
            name = str(given.get("name", ""))
            option = command.option(name)
            if option is None:
                continue
            if given.get("focused"):
                focused = name
            value = given.get("value")
            if option.type is OptionType.ATTACHMENT:
                resolved = attachments.get(str(value))
                if resolved is None:
                    continue
                value = Attachment.from_payload(resolved)
            elif option.type in (OptionType.CHANNEL, OptionType.USER):
                value = str(value)
            values[name] = value
        return Invocation(command, values, focused)

    # -- rendering -------------------------------------------------------------------------

    def _top(self, name: str, node: _Node) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "type": discord.AppCommandType.chat_input.value,
            "name": name,
            "contexts": _GUILD_CONTEXT,
            "integration_types": _GUILD_INSTALL,
        }
        commands = list(_commands_under(node))
        if all(c.admin_only for c in commands):
            payload["default_member_permissions"] = _ADMIN_PERMISSIONS
        if node.command is not None and not node.children:
            payload["description"] = _short(node.command.help)
            payload["options"] = _options(node.command)
        else:
            payload["description"] = _group_description(name, node)
            payload["options"] = [self._sub(word, child) for word, child in node.children.items()]
        return payload

    def _sub(self, name: str, node: _Node) -> dict[str, Any]:
        if node.command is not None:
            return {
                "type": discord.AppCommandOptionType.subcommand.value,
                "name": name,
                "description": _short(node.command.help),
                "options": _options(node.command),
            }
        return {
            "type": discord.AppCommandOptionType.subcommand_group.value,
            "name": name,
            "description": _group_description(name, node),
            "options": [self._sub(word, child) for word, child in node.children.items()],
        }


def _commands_under(node: _Node) -> list[Command]:
    found = [node.command] if node.command is not None else []
    for child in node.children.values():
        found.extend(_commands_under(child))
    return found


def _group_description(name: str, node: _Node) -> str:
    return _short(f"/{name}: " + ", ".join(node.children))


def _options(command: Command) -> list[dict[str, Any]]:
    # Discord wants required options first; the catalog's order is kept otherwise.
    ordered = sorted(command.options, key=lambda o: not o.required)
    return [_option(o) for o in ordered]


def _option(option: Option) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "type": _KINDS[option.type].value,
        "name": option.name,
        "description": _short(option.describe()),
        "required": option.required,
    }
    if option.type is OptionType.CHOICE:
        payload["choices"] = [{"name": c, "value": c} for c in option.choices]
    if option.type is OptionType.CHARACTER:
        payload["autocomplete"] = True
    if option.type is OptionType.CHANNEL:
        payload["channel_types"] = [discord.ChannelType.text.value]
    if option.type is OptionType.INTEGER:
        low, high = option.min_value, option.max_value
        if low is not None and high is not None and high - low < MAX_CHOICES:
            # A short range is a list to pick from (``duration``: 2 s … 15 s), not a number
            # to type and have refused.
            unit = f" {option.help}" if option.help == "seconds" else ""
            payload["choices"] = [{"name": f"{n}{unit}", "value": n} for n in range(low, high + 1)]
        else:
            if low is not None:
                payload["min_value"] = low
            if high is not None:
                payload["max_value"] = high
    if option.max_length is not None and _KINDS[option.type] is discord.AppCommandOptionType.string:
        payload["max_length"] = option.max_length
    return payload


def _short(text: str) -> str:
    """A description as Discord takes it: one line, at most 100 characters."""
    line = " ".join(text.split())
    return line if len(line) <= _DESCRIPTION_MAX else line[: _DESCRIPTION_MAX - 1] + "…"
