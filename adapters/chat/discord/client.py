"""The discord.py client: an ``AutoShardedClient`` that hands every interaction to the bot.

No command tree is used: the catalog is synced as raw payloads (``commands.CommandSet``) and
application commands and autocomplete are answered from ``on_interaction``; buttons reach the
dynamic items registered in ``setup_hook``, forms their modal, through discord.py's view store.
Only REST and interactions are needed, so the client asks for the guilds intent alone (which
discord.py's state expects).
"""

from __future__ import annotations

import re
from typing import Any, Final

import discord
from discord.http import Route

from adapters.chat.discord.interactions import Interactions
from adapters.chat.discord.views import ResultButton
from bot.errors import ConfigurationError
from bot.settings import Settings

API_VERSION: Final = 10
_VERSIONED: Final = re.compile(r"/api/v\d+$")
REFUSED_TOKEN: Final = (
    "Discord refused DISCORD_TOKEN: copy the bot token again from the developer portal "
    "(Bot → Reset Token)."
)


def api_base(url: str) -> str:
    """The REST base discord.py builds every request from (``R2V_DISCORD_API_BASE``): a bare
    address gets Discord's path, ``/api/v10``; one that names a version is taken as it is."""
    url = url.rstrip("/")
    return url if _VERSIONED.search(url) else f"{url}/api/v{API_VERSION}"


def point_at(url: str | None) -> str | None:
    """Send discord.py's REST calls (interaction answers included) to ``url``, when given;
    answer the base it replaces, for putting it back (``None``: nothing was changed).

    discord.py keeps its REST base in one class attribute, so this holds for the process.
    """
    if not url:
        return None
    previous = Route.BASE
    Route.BASE = api_base(url)
    return previous


def restore(previous: str | None) -> None:
    if previous is not None:
        Route.BASE = previous


async def fetch_application_id(settings: Settings) -> int:
    """The bot's application id, asked of Discord with ``DISCORD_TOKEN`` (the invite link
    names it)."""
    if settings.discord_token is None:
        raise ConfigurationError("DISCORD_TOKEN is not set: set it to the bot's token.")
    previous = point_at(settings.discord_api_base)
    client = discord.Client(intents=discord.Intents.none())
    try:
        await client.login(settings.discord_token.get_secret_value())
        application_id = client.application_id
    except discord.LoginFailure as exc:
        raise ConfigurationError(REFUSED_TOKEN) from exc
    finally:
        await client.close()
        restore(previous)
    if application_id is None:
        raise ConfigurationError("Discord did not name the bot's application.")
    return application_id


class R2VClient(discord.AutoShardedClient):
    """``shards``: ``(shard ids, shard count)`` this process runs (``R2V_DISCORD_SHARDS``), so
    several processes share one bot's guilds; ``None`` runs them all here."""

    def __init__(self, shards: tuple[list[int], int] | None = None) -> None:
        # discord.py's stubs say a list, but it reads None as "every shard".
        ids, count = shards if shards is not None else (None, None)
        super().__init__(
            shard_ids=ids,  # type: ignore[arg-type]
            shard_count=count,
            intents=discord.Intents(guilds=True),
            # Status messages repeat prompts, which may say @everyone: nothing pings unless a
            # send allows it (a delivered video pings its owner).
            allowed_mentions=discord.AllowedMentions.none(),
        )
        #: Set when the adapter starts; the views find the bot's actions here.
        self.r2v_actions: Interactions | None = None

    async def setup_hook(self) -> None:
        self.add_dynamic_items(ResultButton)

    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        if self.r2v_actions is not None:
            await self.r2v_actions.handle(interaction)
