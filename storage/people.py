"""People's display names per server, as their chat platform last gave them.

Chat shows people as mentions, which the platform renders; a web page (the gallery) cannot, so
the core records the name each command arrives with and pages read it from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from storage.sql import SqlDatabase


class SqlPeopleStore:
    def __init__(self, db: SqlDatabase, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    async def remember(self, server_id: str, user_id: str, display_name: str) -> None:
        await self._db.execute(
            "INSERT INTO people (server_id, user_id, display_name, updated_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (server_id, user_id) DO UPDATE"
            " SET display_name = excluded.display_name, updated_at = excluded.updated_at",
            (server_id, user_id, display_name, self._clock()),
        )

    async def names(self, server_id: str, user_ids: Sequence[str]) -> Mapping[str, str]:
        """The names known for ``user_ids`` (people never seen are left out)."""
        wanted = list(dict.fromkeys(user_ids))
        if not wanted:
            return {}
        marks = ", ".join("?" for _ in wanted)
        rows = await self._db.fetchall(
            "SELECT user_id, display_name FROM people"
            f" WHERE server_id = ? AND user_id IN ({marks})",
            (server_id, *wanted),
        )
        return {row["user_id"]: row["display_name"] for row in rows}
