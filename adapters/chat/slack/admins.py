"""Who is a bot admin in a Slack workspace: its admins and owners, and an optional user group.

Every command needs the answer (admins may rename or delete any character, change settings), and
Slack's answers change rarely, so they are kept for a few minutes: ``users.info`` per member and
``usergroups.users.list`` per workspace. A Slack error counts as "not an admin" and is not kept,
so a missing scope shows up in the log and a fixed one takes effect at once.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

log = logging.getLogger(__name__)

#: A user group's id (``S0614TZR7``), as opposed to its handle (``r2v-admins``).
_GROUP_ID = re.compile(r"S[A-Z0-9]{2,}")


class AdminDirectory:
    def __init__(
        self,
        client: AsyncWebClient,
        *,
        group: str | None = None,
        ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._group = group.strip().lstrip("@") if group and group.strip() else None
        self._ttl = ttl
        self._clock = clock
        self._members: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}

    async def is_admin(self, team_id: str, user_id: str) -> bool:
        if await self._workspace_admin(team_id, user_id):
            return True
        return self._group is not None and user_id in await self._group_members(team_id)

    async def name(self, team_id: str, user_id: str) -> str:
        """The member's name as people see it (display name, else real name, else handle);
        "" when Slack does not say."""
        user = await self._user(team_id, user_id)
        profile = user.get("profile") or {}
        for candidate in (
            profile.get("display_name"),
            profile.get("real_name"),
            user.get("real_name"),
            user.get("name"),
        ):
            if isinstance(candidate, str) and candidate.strip():
                return candidate.strip()
        return ""

    async def _workspace_admin(self, team_id: str, user_id: str) -> bool:
        user = await self._user(team_id, user_id)
        return bool(user.get("is_admin") or user.get("is_owner") or user.get("is_primary_owner"))

    async def _user(self, team_id: str, user_id: str) -> dict[str, Any]:
        """``users.info``'s user, kept for the directory's time-to-live ({} when it fails)."""
        now = self._clock()
        kept = self._members.get((team_id, user_id))
        if kept is not None and kept[0] > now:
            return kept[1]
        try:
            answer = await self._client.users_info(user=user_id)
        except SlackApiError as exc:
            log.warning("users.info for %s failed: %s", user_id, exc.response.get("error"))
            return {}
        user = answer.get("user") or {}
        self._members[(team_id, user_id)] = (now + self._ttl, user)
        return dict(user)

    async def _group_members(self, team_id: str) -> frozenset[str]:
        now = self._clock()
        kept = self._groups.get(team_id)
        if kept is not None and kept[0] > now:
            return kept[1]
        try:
            group_id = await self._group_id()
            if group_id is None:
                return frozenset()
            answer = await self._client.usergroups_users_list(usergroup=group_id)
        except SlackApiError as exc:
            log.warning("reading user group %s failed: %s", self._group, exc.response.get("error"))
            return frozenset()
        members = frozenset(str(u) for u in answer.get("users") or [])
        self._groups[team_id] = (now + self._ttl, members)
        return members

    async def _group_id(self) -> str | None:
        assert self._group is not None
        if _GROUP_ID.fullmatch(self._group):
            return self._group
        answer = await self._client.usergroups_list()
        for group in answer.get("usergroups") or []:
            if str(group.get("handle", "")).lower() == self._group.lower():
                return str(group["id"])
        log.warning("no Slack user group has the handle %r (R2V_SLACK_ADMIN_GROUP)", self._group)
        return None
