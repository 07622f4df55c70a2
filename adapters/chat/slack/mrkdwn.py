"""The bot's words as Slack message text (mrkdwn).

Slack reads ``&``, ``<`` and ``>`` as markup, and prompts and names are typed by people, so text
is escaped before it is posted, except the references the bot writes on purpose: a member
(``<@U123>``) or a channel (``<#C123>``). ``<!channel>`` and links are escaped like any text.
"""

from __future__ import annotations

import re

from adapters.chat.slack.syntax import render_ref
from bot.commands import render_refs
from bot.models import Reply

_KEPT = re.compile(r"<(?:@[UW][A-Z0-9]+|#C[A-Z0-9]+)(?:\|[^<>]*)?>")
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def escape(text: str) -> str:
    """``text`` safe to post: command references written as ``/r2v …``, markup characters
    escaped, member and channel references kept."""
    text = render_refs(text, render_ref, person=mention)
    pieces: list[str] = []
    start = 0
    for match in _KEPT.finditer(text):
        pieces.append(text[start : match.start()].translate(_ESCAPES))
        pieces.append(match.group())
        start = match.end()
    pieces.append(text[start:].translate(_ESCAPES))
    return "".join(pieces)


def mention(user_id: str) -> str:
    return f"<@{user_id}>"


def reply_text(reply: Reply) -> str:
    """A core reply as a message; a refusal is marked and ends with its stable code."""
    if reply.is_error:
        return f":warning: {escape(reply.text)}\n`{reply.code}`"
    return escape(reply.text)
