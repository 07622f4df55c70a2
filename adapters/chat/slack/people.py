"""Members named in ``/r2v`` text: a mention Slack wrote (``<@U123|ann>``, already an id by the
time the syntax is read) or a name typed as ``@ann``, which only the workspace's member list
can turn into an id (slash commands are sent unescaped, so Slack does not resolve it)."""

from __future__ import annotations

import re
from typing import Any, Final

from slack_sdk.web.async_client import AsyncWebClient

from bot.errors import Refusal

_MEMBER_ID: Final = re.compile(r"[UW][A-Z0-9]{2,}")
_PAGE: Final = 200


async def member_id(client: AsyncWebClient, typed: str) -> str:
    """The id of the member ``typed`` names (an id, or a user or display name)."""
    name = typed.strip().lstrip("@")
    if _MEMBER_ID.fullmatch(name):
        return name
    wanted = name.casefold()
    cursor: str | None = None
    while True:
        page = await client.users_list(limit=_PAGE, cursor=cursor)
        for member in page.get("members") or []:
            if wanted in _names(member):
                return str(member["id"])
        cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
        if cursor is None:
            raise Refusal(
                f"There is no member @{name} in this workspace. Pick them from Slack's list "
                "as you type @, so the command carries their mention.",
                code="unknown_user",
            )


def _names(member: dict[str, Any]) -> set[str]:
    profile = member.get("profile") or {}
    given = (member.get("name"), member.get("real_name"), profile.get("display_name"))
    return {str(n).casefold() for n in given if n}
