"""What a chat platform adapter offers the composition root, beyond the core's ChatPort."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from aiohttp import web

from bot.core import Core
from bot.media import describe_amount
from bot.models import Reply
from bot.ports import ChatPort

#: How far before a job's creation ``find_delivery`` starts looking for its post: the bot's
#: clock and the platform's may differ.
POSTS_CLOCK_SLACK_SECONDS = 60.0


class ChatAdapter(ChatPort, Protocol):
    """A platform's glue: a ChatPort for the job engine, plus its own life cycle.

    It is built before the core (the engine needs its ChatPort) and started with the core once
    everything is wired; ``routes`` are HTTP routes it needs on our server (Slack's events).
    """

    def routes(self) -> Sequence[web.RouteDef]: ...

    async def start(self, core: Core) -> None: ...

    async def close(self) -> None: ...


async def file_or_link(reply: Reply, upload_limit: int | None) -> tuple[Path | None, str]:
    """What to do with a reply's file (a roster export) where uploads stop at ``upload_limit``
    (``None``: no upload at all): the file to upload when it fits, else nothing to upload and
    a line with its signed link."""
    if reply.file is None:
        return None, ""
    size = (await asyncio.to_thread(reply.file.stat)).st_size
    if upload_limit is not None and size <= upload_limit:
        return reply.file, ""
    over = f"It is {describe_amount(size)}" + (
        f", over the {describe_amount(upload_limit)} upload limit here"
        if upload_limit is not None
        else ""
    )
    if reply.file_link is None:
        return None, (
            f"\n{over}, and the bot has no public address for a download link: its operator can "
            f"set R2V_PUBLIC_URL, or take {reply.file.name} from the bot's outbox folder."
        )
    return None, f"\n{over}; download it here (the link expires): {reply.file_link}"
