"""``/r2v`` text: which catalog command it names and its options, and the catalog in that syntax.

Slack gives a slash command one line of text, so the catalog is spoken as
``/r2v <command words> <free text> [option=value …]``: the command's leading words, then
``name=value`` pairs for its options (values with spaces in straight or curly quotes) and free
text for the option(s) a person would never want to name. Those positional options are read from
the catalog, never listed here: a command's required text options in order (``generate``'s
prompt; ``character rename``'s name then new name), or its only option when it has just one
(``help generate``). The last positional option takes the rest of the text.

Everything is checked against the catalog (``commands.coerce``) before the command is
acknowledged, so a mistake is answered at once with the usage in this syntax.
"""

from __future__ import annotations

import difflib
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from adapters.chat.slack.manifest import SLASH_COMMAND
from bot import commands
from bot.commands import Command, CommandRef, Option, OptionType
from bot.errors import Refusal

#: Commands that open a form instead of reading options from text (files cannot be typed).
FORM_COMMANDS = frozenset({"character create"})

_TEXT_TYPES = frozenset(
    {
        OptionType.STRING,
        OptionType.CHARACTER,
        OptionType.CHANNEL,
        OptionType.CHOICE,
        OptionType.USER,
    }
)
_WORD = re.compile(r"\S+")
_OPTION = re.compile(
    r"""(?<!\S)(?P<key>[A-Za-z][A-Za-z0-9_]*)=
        (?P<value>"[^"]*"|“[^”]*”|'[^']*'|‘[^’]*’|\S*)(?=\s|$)""",
    re.VERBOSE,
)
#: ``<#C123|general>``, ``<@U123>``: how Slack writes a channel or a member in text.
_REFERENCE = re.compile(r"<[#@]([A-Z0-9]+)(?:\|[^>]*)?>")
_QUOTES = {'"': '"', "“": "”", "'": "'", "‘": "’"}


@dataclass(frozen=True, slots=True)
class SlackCommand:
    """A command of the catalog and its option values as typed (the core converts them)."""

    command: Command
    values: Mapping[str, str]

    @property
    def name(self) -> str:
        return self.command.name


def parse(text: str, *, channel_id: str) -> SlackCommand:
    """Read the text of ``/r2v …``; raise ``Refusal`` with the right usage when it is wrong.

    ``channel_id`` is where the command was typed: a channel option left out means that channel.
    """
    # Slack escapes &, < and > in the text it sends, whatever the command's escaping setting.
    text = html.unescape(text).strip()
    words = list(_WORD.finditer(text))
    if not words:
        return SlackCommand(commands.CATALOG_BY_NAME["help"], {})
    command, used = _command(words)
    rest = text[words[used - 1].end() :]
    if command.name in FORM_COMMANDS:
        return SlackCommand(command, {})
    needs_file = [o for o in commands.attachment_options(command) if o.required]
    if needs_file:
        raise Refusal(
            f"{SLASH_COMMAND} {command.name} needs a file, and Slack commands carry text only. "
            f"Use {SLASH_COMMAND} character create, or the “Save as character” shortcut on a "
            "message with files.",
            code="needs_file",
        )
    values = _read(command, rest)
    for option in command.options:
        if option.type is OptionType.CHANNEL:
            values[option.name] = _channel(command, values.get(option.name), channel_id)
    try:
        commands.coerce(command, values)
    except Refusal as exc:
        raise _in_this_syntax(command, values, exc) from None
    return SlackCommand(command, values)


def _command(words: Sequence[re.Match[str]]) -> tuple[Command, int]:
    """The longest command name the leading words spell (``settings channel add`` first)."""
    for count in (3, 2, 1):
        leading = [w.group() for w in words[:count]]
        if len(leading) == count and all("=" not in w for w in leading):
            command = commands.find(" ".join(leading).lower())
            if command is not None:
                return command, count
    named: list[str] = []  # the words that could name a command: up to the first option
    for word in words[:2]:
        if "=" in word.group():
            break
        named.append(word.group().lower().lstrip("/"))
    head = named[0] if named else words[0].group().lower()
    group = sorted(c.name for c in commands.CATALOG if c.group == head and _available(c))
    typed = " ".join(named) if group and named else head
    close = difflib.get_close_matches(typed, [c.name for c in commands.CATALOG if _available(c)])
    # a group alone ("character") lists its commands; a mistyped name gets the closest one
    if close and (not group or typed != head):
        hint = f"Did you mean `{SLASH_COMMAND} {close[0]}`?"
    elif group:
        hint = "Try " + ", ".join(f"`{SLASH_COMMAND} {name}`" for name in group) + "."
    else:
        names = sorted({c.group for c in commands.CATALOG})
        hint = "Commands: " + ", ".join(names) + f". `{SLASH_COMMAND} help` explains them."
    raise Refusal(f"There is no command “{typed}”. {hint}", code="unknown_command")


def positional(command: Command) -> list[Option]:
    """The options filled from free text: required text options, or a lone option."""
    texts = [o for o in command.options if o.type in _TEXT_TYPES]
    required = [o for o in texts if o.required]
    if required:
        return required
    named = [o for o in command.options if o.type is not OptionType.ATTACHMENT]
    return texts if len(named) == 1 and texts == named else []


def _read(command: Command, rest: str) -> dict[str, str]:
    values: dict[str, str] = {}
    free: list[str] = []
    start = 0
    for match in _OPTION.finditer(rest):
        option = command.option(match["key"].lower())
        if option is None or option.type is OptionType.ATTACHMENT:
            continue  # prompt text that happens to contain "=" stays prompt text
        if option.name in values:
            raise Refusal(
                f"{option.name}= is given twice.\nUsage: {usage_line(command)}",
                code="invalid_option",
            )
        free.append(rest[start : match.start()])
        values[option.name] = _unquote(option, match["value"])
        start = match.end()
    free.append(rest[start:])
    text = " ".join(" ".join(free).split())
    slots = [o for o in positional(command) if o.name not in values]
    if text and not slots:
        first = text.split()[0]
        key, sep, _ = first.partition("=")
        if sep and command.option(key.lower()) is None:
            problem = f"{SLASH_COMMAND} {command.name} has no option “{key}”."
        else:
            problem = f"{SLASH_COMMAND} {command.name} does not take “{_clip(text)}”."
        raise Refusal(f"{problem}\nUsage: {usage_line(command)}", code="invalid_option")
    if text:
        parts = text.split(maxsplit=len(slots) - 1)
        for option, part in zip(slots, parts, strict=False):
            values[option.name] = part
    for name, value in values.items():
        reference = _REFERENCE.fullmatch(value)
        if reference:
            values[name] = reference.group(1)
    return values


def _unquote(option: Option, value: str) -> str:
    closing = _QUOTES.get(value[:1])
    if closing is None:
        return value
    if len(value) < 2 or value[-1] != closing:
        raise Refusal(
            f'The quote after {option.name}= is not closed: write {option.name}="…".',
            code="invalid_option",
        )
    return value[1:-1]


def _channel(command: Command, value: str | None, here: str) -> str:
    """A channel option: this channel when left out, else a channel Slack wrote as an id."""
    if not value:
        return here
    if value.startswith("#"):
        raise Refusal(
            f"Slack sent the channel's name ({value}), not its id. Run "
            f"`{SLASH_COMMAND} {command.name}` in that channel with no channel given.",
            code="invalid_option",
        )
    return value


def _in_this_syntax(command: Command, values: Mapping[str, str], exc: Refusal) -> Refusal:
    """The catalog's refusal, which speaks the console's syntax (``/generate``,
    ``duration:abc``, a console usage line), told in this one."""
    message = exc.message.split("\nUsage:", 1)[0]
    message = message.replace(f"/{command.name} ", f"{SLASH_COMMAND} {command.name} ", 1)
    for name, value in values.items():
        message = message.replace(f"{name}:{value}", f"{name}={value}")
    return Refusal(f"{message}\nUsage: {usage_line(command)}", code=exc.code)


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- the catalog in this syntax --------------------------------------------------------------


def usage(command: Command) -> str:
    """``/r2v generate <prompt> [duration=<number>] …`` (without the backticks)."""
    parts = [f"{SLASH_COMMAND} {command.name}"]
    if command.name in FORM_COMMANDS:
        return parts[0] + " (opens a form)"
    slots = positional(command)
    for option in slots:
        shown = f"<{'|'.join(option.choices) or option.name}>"
        optional = not option.required or option.type is OptionType.CHANNEL
        parts.append(f"[{shown}]" if optional else shown)
    for option in command.options:
        if option in slots or option.type is OptionType.ATTACHMENT:
            continue
        parts.append(f"[{option.name}={_value_hint(option)}]")
    return " ".join(parts)


def render_ref(found: CommandRef) -> str:
    """A command named in the core's words, as it is typed here: ``/r2v character list
    page=2``, positional options by value alone, no file options (a form takes those)."""
    command = found.command
    parts = [f"{SLASH_COMMAND} {command.name}"]
    if command.name not in FORM_COMMANDS:
        slots = positional(command)
        for name, value in found.options:
            option = command.option(name)
            if option is None or option.type is OptionType.ATTACHMENT:
                continue
            parts.append(value if option in slots else f"{name}={value}")
    return f"`{' '.join(parts)}`"


def usage_line(command: Command) -> str:
    return f"`{usage(command)}`"


def _value_hint(option: Option) -> str:
    if option.choices:
        return "|".join(option.choices)
    return {
        OptionType.INTEGER: "<number>",
        OptionType.BOOLEAN: "true|false",
        OptionType.CHARACTER: "<name>",
    }.get(option.type, "<text>")


def help_text(name: str | None = None, *, is_admin: bool = False) -> str:
    """``/r2v help`` and ``/r2v help <command>``, generated from the catalog."""
    if name:
        wanted = name.strip().lstrip("/").lower()
        available = [c for c in commands.CATALOG if _available(c)]
        chosen = [c for c in available if c.name == wanted] or [
            c for c in available if c.group == wanted
        ]
        if not chosen and commands.find(wanted) is not None:
            return (
                f"`{SLASH_COMMAND} {wanted}` needs a file, which Slack commands cannot carry: "
                f"use `{SLASH_COMMAND} character create` or the “Save as character” shortcut."
            )
        if not chosen:
            names = ", ".join(sorted({c.group for c in commands.CATALOG}))
            raise Refusal(
                f"There is no command “{wanted}”. Commands: {names}.", code="unknown_command"
            )
        return "\n\n".join(_command_help(c) for c in chosen)
    lines = [f"*Commands* (`{SLASH_COMMAND} help generate` shows the options of one):"]
    for command in commands.CATALOG:
        if (command.admin_only and not is_admin) or not _available(command):
            continue
        lines.append(f"• `{usage(command)}` — {command.help}")
    lines.append("")
    lines.append(
        f"Example: `{SLASH_COMMAND} generate @alice waves at the camera`. To save the files of "
        "a message as a character, use the “Save as character” shortcut on it (⋮ → More)."
    )
    return "\n".join(lines)


def _available(command: Command) -> bool:
    """Whether the command can be given in Slack: a form, or options that are all text."""
    return command.name in FORM_COMMANDS or not any(
        o.required for o in commands.attachment_options(command)
    )


def _command_help(command: Command) -> str:
    lines = [f"`{SLASH_COMMAND} {command.name}` — {command.help}", f"Usage: {usage_line(command)}"]
    if command.name in FORM_COMMANDS:
        return "\n".join(lines)
    for option in command.options:
        if option.type is OptionType.ATTACHMENT:
            continue
        detail = option.describe()
        if option.type is OptionType.CHANNEL:
            detail += "; default: the channel you type it in"
        lines.append(f"• {option.name}: {detail}")
    return "\n".join(lines)
