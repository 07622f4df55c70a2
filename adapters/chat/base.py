"""What a chat platform adapter offers the composition root, beyond the core's ChatPort."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aiohttp import web

from bot.core import Core
from bot.ports import ChatPort


class ChatAdapter(ChatPort, Protocol):
    """A platform's glue: a ChatPort for the job engine, plus its own life cycle.

    It is built before the core (the engine needs its ChatPort) and started with the core once
    everything is wired; ``routes`` are HTTP routes it needs on our server (Slack's events).
    """

    def routes(self) -> Sequence[web.RouteDef]: ...

    async def start(self, core: Core) -> None: ...

    async def close(self) -> None: ...
