"""The "save a character" form: a Slack modal built from the catalog, and what comes back.

Slash commands carry no files, so ``/r2v character create`` and the "Save as character" message
shortcut open this modal instead: name, description and visibility as the catalog defines them,
and one ``file_input`` for the images, video and voice clip (their kinds are found from their
content, as ``Core.save_character`` does). From the shortcut the message's files ride along in
the view's ``private_metadata`` (by id; their links are looked up again when the form is sent).
The name rule is checked when the form is sent, so a mistake shows under the field itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot import commands
from bot.errors import R2VError
from bot.names import check_name

CALLBACK_ID = "r2v_character"
NAME, DESCRIPTION, VISIBILITY, FILES = "name", "description", "visibility", "files"
ACTION = "value"
#: What Slack's file picker offers; the content decides all the same.
FILE_TYPES = ("jpg", "jpeg", "png", "bmp", "webp", "mp4", "mov", "wav", "mp3")

_CREATE = commands.CATALOG_BY_NAME["character create"]


@dataclass(frozen=True, slots=True)
class FormContext:
    """What the form must remember between opening and sending: where it was opened, and the
    files of the message it was opened on."""

    channel_id: str
    file_ids: tuple[str, ...] = ()

    def dump(self) -> str:
        return json.dumps({"channel": self.channel_id, "files": list(self.file_ids)})

    @classmethod
    def load(cls, text: str | None) -> FormContext | None:
        """The context ``dump`` wrote; ``None`` for anything else (a form this bot did not
        open, or one from an older version)."""
        try:
            data = json.loads(text or "{}")
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        channel, files = data.get("channel", ""), data.get("files", [])
        if not isinstance(channel, str) or not isinstance(files, list):
            return None
        if not all(isinstance(f, str) for f in files):
            return None
        return cls(channel, tuple(files))


@dataclass(frozen=True, slots=True)
class CharacterForm:
    """A sent form: the fields, and the Slack file objects picked in it."""

    name: str
    description: str = ""
    visibility: str = "public"
    files: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)


def character_modal(context: FormContext, message_files: Sequence[str] = ()) -> dict[str, Any]:
    """The modal view; ``message_files`` names the files of the message it was opened on."""
    name = _option("name")
    description = _option("description")
    visibility = _option("visibility")
    attachments = commands.attachment_options(_CREATE)
    blocks: list[dict[str, Any]] = [
        _input(
            NAME,
            "Name",
            {"type": "plain_text_input", "max_length": name.max_length or 32},
            hint=f"Use it as @name in prompts: {name.help}.",
        ),
        _input(
            DESCRIPTION,
            "Description",
            {
                "type": "plain_text_input",
                "multiline": True,
                "max_length": description.max_length or 300,
            },
            optional=True,
            hint=description.help.capitalize() + ".",
        ),
        _input(
            VISIBILITY,
            "Visibility",
            {
                "type": "static_select",
                "options": [_choice(c) for c in visibility.choices],
                "initial_option": _choice(str(visibility.default)),
            },
            hint=visibility.help.capitalize() + ".",
        ),
    ]
    if message_files:
        listed = ", ".join(message_files)
        blocks.append(_context(f"From the message: {listed}. Add more files below if you like."))
    blocks.append(
        _input(
            FILES,
            "Images, video and voice",
            {"type": "file_input", "max_files": len(attachments), "filetypes": list(FILE_TYPES)},
            optional=bool(message_files),
            hint=_CREATE.help,
        )
    )
    return {
        "type": "modal",
        "callback_id": CALLBACK_ID,
        "title": {"type": "plain_text", "text": "Save a character"},
        "submit": {"type": "plain_text", "text": "Save"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "private_metadata": context.dump(),
        "blocks": blocks,
    }


def read_form(view: Mapping[str, Any]) -> CharacterForm:
    values: Mapping[str, Any] = view.get("state", {}).get("values", {})

    def element(block: str) -> Mapping[str, Any]:
        found: Mapping[str, Any] = values.get(block, {}).get(ACTION) or {}
        return found

    selected = element(VISIBILITY).get("selected_option") or {}
    return CharacterForm(
        name=str(element(NAME).get("value") or "").strip(),
        description=str(element(DESCRIPTION).get("value") or "").strip(),
        visibility=str(selected.get("value") or _option("visibility").default),
        files=tuple(element(FILES).get("files") or ()),
    )


#: Shown under the name field when a form's context is not one this bot wrote.
STALE_FORM = "This form was not opened by this bot, or is out of date; close it and start again."


def form_errors(form: CharacterForm, context: FormContext) -> dict[str, str]:
    """Mistakes to show under their fields (Slack's ``response_action: errors``)."""
    errors: dict[str, str] = {}
    try:
        check_name(form.name)
    except R2VError as exc:
        errors[NAME] = exc.message
    if not form.files and not context.file_ids:
        errors[FILES] = "Add at least one image or video."
    return errors


def _option(name: str) -> commands.Option:
    option = _CREATE.option(name)
    assert option is not None, f"the catalog's character create has no {name} option"
    return option


def _input(
    block_id: str,
    label: str,
    element: dict[str, Any],
    *,
    optional: bool = False,
    hint: str = "",
) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "input",
        "block_id": block_id,
        "label": {"type": "plain_text", "text": label},
        "element": {**element, "action_id": ACTION},
        "optional": optional,
    }
    if hint:
        block["hint"] = {"type": "plain_text", "text": hint[:2000]}
    return block


def _choice(value: str) -> dict[str, Any]:
    return {"text": {"type": "plain_text", "text": value.capitalize()}, "value": value}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "plain_text", "text": text[:2000]}]}
