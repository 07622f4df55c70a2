"""The Discord adapter (discord.py): commands, buttons and forms in; statuses and videos out."""

from adapters.chat.discord.adapter import DiscordAdapter
from adapters.chat.discord.client import fetch_application_id
from adapters.chat.discord.invite import invite_url

__all__ = ["DiscordAdapter", "fetch_application_id", "invite_url"]
