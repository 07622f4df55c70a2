"""The link a server admin opens to add the bot, with exactly the access the bot uses."""

from __future__ import annotations

from typing import Final

import discord

#: ``bot`` puts the bot user in the server; ``applications.commands`` its slash commands.
SCOPES: Final = ("bot", "applications.commands")
#: What the bot does in a server: post status messages and videos (with embeds) in channels and
#: the public threads it opens for jobs, read the messages it saves characters from, and offer
#: its application commands.
PERMISSIONS: Final = discord.Permissions(
    send_messages=True,
    send_messages_in_threads=True,
    create_public_threads=True,
    attach_files=True,
    embed_links=True,
    read_message_history=True,
    use_application_commands=True,
)


def invite_url(application_id: int | str) -> str:
    """The OAuth2 URL that adds the bot (``r2v discord invite`` prints it)."""
    return discord.utils.oauth_url(application_id, permissions=PERMISSIONS, scopes=SCOPES)
