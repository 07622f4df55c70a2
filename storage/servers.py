"""Per-server settings (budget, quotas, providers, channels), kept as JSON on the server row."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from bot.quotas import ServerSettings
from storage.sql import SqlDatabase


class SqlServerStore:
    def __init__(self, db: SqlDatabase, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    async def settings(self, server_id: str) -> ServerSettings:
        row = await self._db.fetchone("SELECT settings FROM servers WHERE id = ?", (server_id,))
        return ServerSettings.from_dict(json.loads(row["settings"])) if row else ServerSettings()

    async def save_settings(self, server_id: str, platform: str, value: ServerSettings) -> None:
        async with self._db.transaction() as tx:
            await tx.execute(
                "INSERT INTO servers (id, platform, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (server_id, platform, self._clock()),
            )
            await tx.execute(
                "UPDATE servers SET settings = ? WHERE id = ?",
                (json.dumps(value.to_dict()), server_id),
            )
