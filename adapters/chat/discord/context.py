"""What an interaction says about who acts and where, and how the core's replies read in Discord.

The core speaks in plain values (``Actor``, ``CommandRequest``, ``Reply``); these functions are
the whole translation, so every command, button and form names people and places the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import discord

from bot.commands import render_refs
from bot.models import Actor, CommandRequest, Reply

PLATFORM: Final = "discord"
#: Discord refuses message content longer than this.
MAX_CONTENT: Final = 2000


def actor_of(interaction: discord.Interaction[Any]) -> Actor:
    """The person behind an interaction; an admin is whoever may Manage Server there."""
    return Actor(
        platform=PLATFORM,
        server_id=str(interaction.guild_id),
        user_id=str(interaction.user.id),
        is_admin=interaction.permissions.manage_guild,
        display_name=interaction.user.display_name,
        name=interaction.user.display_name,
    )


def place_of(interaction: discord.Interaction[Any]) -> tuple[str, str | None]:
    """The channel an interaction came from and, inside a thread, the thread.

    In a thread the channel is the thread's parent: generation channels are channels, and a
    thread of one belongs to it.
    """
    channel = interaction.channel
    if isinstance(channel, discord.Thread):
        return str(channel.parent_id), str(channel.id)
    return str(interaction.channel_id), None


def request_of(
    interaction: discord.Interaction[Any], command: str, options: Mapping[str, Any]
) -> CommandRequest:
    channel_id, thread_id = place_of(interaction)
    return CommandRequest(
        actor=actor_of(interaction),
        command=command,
        options=dict(options),
        channel_id=channel_id,
        thread_id=thread_id,
    )


def reply_content(reply: Reply, extra: str = "") -> str:
    """A reply as message content: a refusal shows its words and, in small print, its code."""
    text = reply.text + extra
    if reply.code:
        text = f"⚠️ {text}\n-# {reply.code}"
    return fit_content(text)


def in_discords_words(text: str) -> str:
    """The core's ``text`` with its command references as Discord spells them
    (``/character list``) and the people it names as mentions (``<@123>``; they ping nobody:
    the client allows no mentions unless a send says otherwise)."""
    return render_refs(text, person=lambda user_id: f"<@{user_id}>")


def fit_content(text: str) -> str:
    """``text`` in Discord's words, cut to what Discord accepts in one message."""
    text = in_discords_words(text)
    if len(text) <= MAX_CONTENT:
        return text
    return text[: MAX_CONTENT - 1] + "…"
