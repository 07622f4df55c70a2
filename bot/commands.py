"""The one catalog of commands: names, options, types, ranges and help text, defined once.

Every chat adapter renders this catalog in its platform's idiom (Discord application commands,
Slack's ``/r2v`` text, console lines); the console syntax is parsed here, and ``/help`` is
generated from it. A new option is added here and nowhere else.
"""

from __future__ import annotations

import enum
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.errors import Refusal
from bot.models import MediaKind

SEED_MAX = 2_147_483_647


class OptionType(enum.StrEnum):
    STRING = "string"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    CHOICE = "choice"
    CHARACTER = "character"  # a character name of the server: adapters offer autocomplete
    ATTACHMENT = "attachment"
    CHANNEL = "channel"  # a channel of the server (its platform id)
    USER = "user"  # a member of the server (its platform id; a mention or @id is read too)


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    type: OptionType
    help: str
    required: bool = False
    default: Any = None
    min_value: int | None = None
    max_value: int | None = None
    max_length: int | None = None
    choices: tuple[str, ...] = ()
    #: For attachments: the kind the file must be (``None``: found from its content).
    media_kind: MediaKind | None = None

    def usage(self) -> str:
        value = {
            OptionType.ATTACHMENT: "<file>",
            OptionType.INTEGER: "<number>",
            OptionType.BOOLEAN: "true|false",
            OptionType.CHARACTER: "<name>",
            OptionType.USER: "@user",
        }.get(self.type, "<text>")
        if self.choices:
            value = "|".join(self.choices)
        text = f"{self.name}:{value}"
        return text if self.required else f"[{text}]"

    def describe(self) -> str:
        detail = self.help
        if self.min_value is not None and self.max_value is not None:
            detail += f" ({self.min_value}–{self.max_value})"
        if self.default is not None and not self.required:
            shown = str(self.default).lower() if isinstance(self.default, bool) else self.default
            detail += f"; default {shown}"
        return detail


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    options: tuple[Option, ...] = ()
    admin_only: bool = False
    examples: tuple[str, ...] = field(default_factory=tuple)

    @property
    def usage(self) -> str:
        return " ".join([f"/{self.name}", *(o.usage() for o in self.options)])

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    @property
    def group(self) -> str:
        return self.name.split(" ", 1)[0]


def _character(help_text: str = "the character's name") -> Option:
    return Option("name", OptionType.CHARACTER, help_text, required=True)


def _file(name: str, kind: MediaKind | None, help_text: str, required: bool = False) -> Option:
    return Option(name, OptionType.ATTACHMENT, help_text, required=required, media_kind=kind)


RESOLUTIONS = ("480p", "720p", "1080p")
ASPECT_RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4")
ITEMS = ("image1", "image2", "image3", "video", "voice")

CATALOG: tuple[Command, ...] = (
    Command(
        "character create",
        "Save a character: up to 3 images, 1 video and 1 voice clip (at least one image or video).",
        (
            Option(
                "name",
                OptionType.STRING,
                "a letter, then letters, digits, _ or -",
                required=True,
                max_length=32,
            ),
            _file("image", MediaKind.IMAGE, "a picture of the character (JPEG, PNG, BMP, WEBP)"),
            _file("image2", MediaKind.IMAGE, "another picture"),
            _file("image3", MediaKind.IMAGE, "a third picture"),
            _file("video", MediaKind.VIDEO, "a video of the character (MP4 or MOV, 1–30 s)"),
            _file("voice", MediaKind.VOICE, "a voice clip (WAV or MP3, 1–10 s)"),
            Option("description", OptionType.STRING, "a short description", max_length=300),
            Option(
                "visibility",
                OptionType.CHOICE,
                "private: only you can see and use it",
                choices=("public", "private"),
                default="public",
            ),
        ),
        examples=("/character create name:alice image:./alice.png voice:./alice.wav",),
    ),
    Command(
        "character add",
        "Add an image, video or voice clip to one of your characters (kind found from the file).",
        (_character(), _file("file", None, "the image, video or voice clip", required=True)),
    ),
    Command(
        "character remove",
        "Remove one item from one of your characters.",
        (
            _character(),
            Option("item", OptionType.CHOICE, "which item", required=True, choices=ITEMS),
        ),
    ),
    Command("character show", "Show a character and its media.", (_character(),)),
    Command(
        "character list",
        "List the server's characters, 10 a page, by name.",
        (
            Option("owner", OptionType.USER, "only the characters of this user"),
            Option(
                "page", OptionType.INTEGER, "page number", default=1, min_value=1, max_value=1000
            ),
        ),
    ),
    Command(
        "character rename",
        "Rename a character (its owner or an admin).",
        (
            _character(),
            Option("new", OptionType.STRING, "the new name", required=True, max_length=32),
        ),
    ),
    Command("character delete", "Delete a character (its owner or an admin).", (_character(),)),
    Command(
        "character export",
        "Export the server's roster as a ZIP: a JSON manifest and the media (admins).",
        admin_only=True,
    ),
    Command(
        "character import",
        "Add the characters of an exported ZIP (admins); shows what it adds, all or nothing.",
        (
            _file("file", None, "a ZIP made by /character export", required=True),
            Option(
                "clashes",
                OptionType.CHOICE,
                "when a name is taken: skip that character, or rename it with a suffix",
                choices=("skip", "rename"),
            ),
            Option(
                "dry_run",
                OptionType.BOOLEAN,
                "only show what would be added and what clashes",
                default=False,
            ),
        ),
        admin_only=True,
        examples=("/character import file:./roster.zip clashes:rename",),
    ),
    Command(
        "generate",
        "Make a video: name characters with @name and attached files with @ref1, @ref2…",
        (
            Option(
                "prompt",
                OptionType.STRING,
                "what happens; @name for characters",
                required=True,
                max_length=5000,
            ),
            _file("ref1", None, "an image or video to use as @ref1"),
            _file("ref2", None, "an image or video to use as @ref2"),
            _file("ref3", None, "an image or video to use as @ref3"),
            Option("duration", OptionType.INTEGER, "seconds", default=5, min_value=2, max_value=15),
            Option(
                "resolution",
                OptionType.CHOICE,
                "video size; default 720p, or what the provider makes (480p on a 1.3B GPU worker)",
                choices=RESOLUTIONS,
            ),
            Option(
                "aspect", OptionType.CHOICE, "aspect ratio", choices=ASPECT_RATIOS, default="16:9"
            ),
            Option(
                "seed",
                OptionType.INTEGER,
                "a seed to repeat a result",
                min_value=0,
                max_value=SEED_MAX,
            ),
            Option("negative", OptionType.STRING, "what to avoid", max_length=500),
            Option("provider", OptionType.STRING, "which provider renders it"),
            Option(
                "dry_run",
                OptionType.BOOLEAN,
                "only show the rewritten prompt and references",
                default=False,
            ),
        ),
        examples=('/generate prompt:"@alice and @bob dance on a rooftop" duration:5',),
    ),
    Command("gallery", "A private link to a web page of the server's characters and videos."),
    Command("jobs", "Your recent jobs, with their states and times."),
    Command("usage", "Today's videos and spending, yours and the server's."),
    Command(
        "settings",
        "Show or change the server's limits (admins): with no option it shows them.",
        (
            Option("budget", OptionType.STRING, "daily budget in USD, or none"),
            Option("user_jobs", OptionType.STRING, "videos per user per day, or none"),
            Option("providers", OptionType.STRING, "allowed providers, comma-separated, or all"),
            Option("default_provider", OptionType.STRING, "the server's default provider"),
        ),
        admin_only=True,
        examples=("/settings budget:5 user_jobs:3 providers:wavespeed,fal",),
    ),
    Command(
        "settings channel add",
        "Make a channel a generation channel (admins): /generate then works only in those.",
        (Option("channel", OptionType.CHANNEL, "the channel", required=True),),
        admin_only=True,
    ),
    Command(
        "settings channel remove",
        "Stop using a channel for generation (admins); with none left, any channel works.",
        (Option("channel", OptionType.CHANNEL, "the channel", required=True),),
        admin_only=True,
    ),
    Command(
        "cancel",
        "Cancel a job (its owner or an admin).",
        (Option("job", OptionType.STRING, "the job's id, as /jobs shows it", required=True),),
    ),
    Command(
        "help",
        "What each command does.",
        (Option("command", OptionType.STRING, "a command, e.g. generate"),),
    ),
)

CATALOG_BY_NAME: Mapping[str, Command] = {c.name: c for c in CATALOG}


def find(name: str) -> Command | None:
    return CATALOG_BY_NAME.get(name.strip().lstrip("/").lower())


@dataclass(frozen=True, slots=True)
class ParsedLine:
    command: Command
    values: Mapping[str, str]


def parse_line(line: str) -> ParsedLine:
    """Parse a console line: ``/cmd [sub] opt:value opt:"value with spaces"``.

    Values are quoted as a shell would. Raises ``Refusal`` (``unknown_command`` or
    ``invalid_option``) with the command's usage.
    """
    try:
        tokens = shlex.split(line, posix=True)
    except ValueError as exc:
        raise Refusal(
            f"Could not read that line: {exc} (check the quotes).", code="invalid_option"
        ) from None
    if not tokens or not tokens[0].startswith("/"):
        raise Refusal("Commands start with /, e.g. /help.", code="unknown_command")
    head = tokens[0][1:].lower()
    rest = tokens[1:]
    command = None
    words = 0
    # the longest command name that the leading words spell: /settings channel add …
    for count in (2, 1):
        if len(rest) >= count and all(":" not in w for w in rest[:count]):
            command = find(" ".join([head, *(w.lower() for w in rest[:count])]))
            if command is not None:
                words = count
                break
    rest = rest[words:]
    command = command or find(head)
    if command is None:
        raise Refusal(f"There is no command /{head}. {_command_hint(head)}", code="unknown_command")
    values: dict[str, str] = {}
    for token in rest:
        name, sep, value = token.partition(":")
        if not sep or not name:
            raise Refusal(
                f"“{token}” is not an option. Write options as name:value.\nUsage: {command.usage}",
                code="invalid_option",
            )
        if command.option(name.lower()) is None:
            raise _unknown_option(command, name)
        values[name.lower()] = value
    return ParsedLine(command, values)


def _command_hint(head: str) -> str:
    groups = sorted({c.group for c in CATALOG})
    subs = [c.name for c in CATALOG if c.group == head]
    if subs:
        return "Try " + ", ".join(f"/{s}" for s in subs) + "."
    return "Commands: " + ", ".join(f"/{g}" for g in groups) + "."


def _unknown_option(command: Command, name: str) -> Refusal:
    return Refusal(
        f"/{command.name} has no option “{name}”.\nUsage: {command.usage}", code="invalid_option"
    )


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def coerce(command: Command, values: Mapping[str, Any]) -> dict[str, Any]:
    """Check option values against the catalog and convert them; defaults filled in.

    Attachments pass through untouched (adapters turn them into ``IncomingFile`` values).
    """
    out: dict[str, Any] = {}
    for name in values:
        if command.option(name) is None:
            raise _unknown_option(command, name)
    for option in command.options:
        raw = values.get(option.name)
        if raw is None or raw == "":
            if option.required:
                raise Refusal(
                    f"/{command.name} needs {option.name}: ({option.help}).\n"
                    f"Usage: {command.usage}",
                    code="invalid_option",
                )
            if option.default is not None:
                out[option.name] = option.default
            continue
        out[option.name] = _convert(command, option, raw)
    return out


def _convert(command: Command, option: Option, raw: Any) -> Any:
    if option.type is OptionType.ATTACHMENT:
        return raw
    if option.type is OptionType.INTEGER:
        try:
            number = raw if isinstance(raw, int) and not isinstance(raw, bool) else int(str(raw))
        except ValueError:
            raise _bad(command, option, raw, "a whole number") from None
        low, high = option.min_value, option.max_value
        if (low is not None and number < low) or (high is not None and number > high):
            code = "duration_out_of_range" if option.name == "duration" else "invalid_option"
            raise Refusal(f"{option.name}:{number} is out of range: use {low}–{high}.", code=code)
        return number
    if option.type is OptionType.BOOLEAN:
        if isinstance(raw, bool):
            return raw
        text = str(raw).lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise _bad(command, option, raw, "true or false")
    text = str(raw)
    if option.type is OptionType.USER:
        return user_id_of(text)
    if option.type is OptionType.CHOICE:
        lowered = {c.lower(): c for c in option.choices}
        if text.lower() not in lowered:
            choices = option.choices
            listed = (
                ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
            )
            raise _bad(command, option, raw, listed)
        return lowered[text.lower()]
    if option.max_length is not None and len(text) > option.max_length:
        code = "prompt_too_long" if option.name in {"prompt", "negative"} else "invalid_option"
        raise Refusal(
            f"{option.name} is {len(text)} characters long; at most {option.max_length} are "
            "accepted.",
            code=code,
        )
    return text


def _bad(command: Command, option: Option, raw: Any, accepted: str) -> Refusal:
    return Refusal(
        f"{option.name}:{raw} is not accepted: use {accepted}.\nUsage: {command.usage}",
        code="invalid_option",
    )


def help_text(name: str | None = None, *, is_admin: bool = False) -> str:
    """``/help`` and ``/help command:X``, generated from the catalog."""
    if name:
        command = find(name)
        if command is None:
            matches = [c for c in CATALOG if c.group == name.strip().lstrip("/").lower()]
            if not matches:
                raise Refusal(
                    f"There is no command /{name}. {_command_hint(name)}", code="unknown_command"
                )
            return "\n\n".join(_command_help(c) for c in matches)
        return _command_help(command)
    lines = ["Commands (`/help command:generate` for the options of one):"]
    for command in CATALOG:
        if command.admin_only and not is_admin:
            continue
        lines.append(f"  /{command.name} — {command.help}")
    lines.append("")
    lines.append('Example: /generate prompt:"@alice waves at @bob" duration:5')
    return "\n".join(lines)


def _command_help(command: Command) -> str:
    lines = [f"/{command.name} — {command.help}", f"Usage: {command.usage}"]
    for option in command.options:
        lines.append(f"  {option.name}: {option.describe()}")
    lines.extend(f"Example: {e}" for e in command.examples)
    return "\n".join(lines)


# -- references to commands inside the core's words ------------------------------------------

#: A command reference in a reply is bracketed by these invisible characters around its
#: canonical spelling (``/character list page:2``, which is also Discord's and the console's),
#: so each adapter can write it as its users must type it; text that is never rendered still
#: reads right.
REF_START, REF_END = "\u2063", "\u2064"
_REF = re.compile(f"{REF_START}/([^{REF_END}]*){REF_END}")


@dataclass(frozen=True, slots=True)
class CommandRef:
    """A catalog command named in a reply, with the options it shows (a value, or ``…``)."""

    command: Command
    options: tuple[tuple[str, str], ...] = ()

    def canonical(self) -> str:
        """``/character list page:2``: how Discord and the console spell it."""
        return " ".join([f"/{self.command.name}", *(f"{k}:{v}" for k, v in self.options)])


def ref(name: str, /, **options: object) -> str:
    """A reference to the catalog command ``name`` for the core's words; adapters render it
    with ``render_refs``. Option values are shown as given (``"…"`` for "fill this in"), and
    hold no spaces."""
    command = find(name)
    assert command is not None, f"the catalog has no command {name!r}"
    for option, value in options.items():
        assert command.option(option) is not None, f"/{name} has no option {option!r}"
        assert " " not in str(value), f"/{name} {option}: a shown value holds no spaces"
    shown = CommandRef(command, tuple((k, str(v)) for k, v in options.items()))
    return f"{REF_START}{shown.canonical()}{REF_END}"


def mention(user_id: str) -> str:
    """A person named in the core's words, by platform id; adapters write it as a mention
    (``<@U123>`` on Slack, ``<@123>`` on Discord, ``@ann`` in the console)."""
    return f"{REF_START}@{user_id}{REF_END}"


def user_id_of(text: str) -> str:
    """The id in a user option as people type it: ``<@U123|ann>``, ``<@123>``, ``@ann``."""
    found = _TYPED_MENTION.fullmatch(text.strip())
    return found.group(1) if found else text.strip().lstrip("@")


_TYPED_MENTION = re.compile(r"<@!?([A-Za-z0-9]+)(?:\|[^>]*)?>")
_MENTION = re.compile(f"{REF_START}@([^{REF_END}]*){REF_END}")


def render_refs(
    text: str,
    render: Callable[[CommandRef], str] | None = None,
    *,
    person: Callable[[str], str] | None = None,
) -> str:
    """``text`` with every command reference written by ``render`` and every mention by
    ``person`` (defaults: the canonical spelling, ``@id``)."""

    def command(match: re.Match[str]) -> str:
        found = _parse_ref(match.group(1))
        if found is None:
            return f"/{match.group(1)}"
        return render(found) if render is not None else found.canonical()

    def user(match: re.Match[str]) -> str:
        return person(match.group(1)) if person is not None else f"@{match.group(1)}"

    return _MENTION.sub(user, _REF.sub(command, text))


def _parse_ref(body: str) -> CommandRef | None:
    words = body.split(" ")
    for count in (3, 2, 1):
        command = find(" ".join(words[:count]))
        if command is not None and all(":" not in w for w in words[:count]):
            options = tuple((k, v) for k, _, v in (w.partition(":") for w in words[count:] if w))
            return CommandRef(command, options)
    return None


def attachment_options(command: Command) -> Sequence[Option]:
    return [o for o in command.options if o.type is OptionType.ATTACHMENT]
