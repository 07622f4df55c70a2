"""Characters of a server and their media, in SQLite or PostgreSQL.

Names are unique in a server regardless of case: the table holds each name's key
(``bot.names.name_key``) under a ``UNIQUE`` constraint, and every write that sets a name checks the
key first inside its transaction, so a clash becomes a ``name_taken`` refusal naming the character
that already has it rather than a constraint error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from bot.errors import Refusal
from bot.models import (
    Character,
    CharacterMedia,
    MediaInfo,
    MediaKind,
    NewCharacter,
    Visibility,
)
from bot.names import name_key
from storage.sql import Row, SqlDatabase, Tx

_SELECT = """
    SELECT c.id, c.server_id, c.name, c.owner_id, c.description, c.visibility, c.created_at,
           m.id AS media_id, m.kind, m.position, m.blob, m.mime, m.size, m.width, m.height,
           m.duration
    FROM characters AS c LEFT JOIN character_media AS m ON m.character_id = c.id
"""
_ORDER = " ORDER BY c.name_key, c.id, m.position, m.id"


def name_taken(existing: str) -> Refusal:
    return Refusal(
        f"This server already has “{existing}”; names ignore case. Choose another name.",
        code="name_taken",
    )


def _media_from_row(row: Row) -> CharacterMedia:
    kind = MediaKind(row["kind"])
    info = MediaInfo(
        kind=kind,
        mime=row["mime"],
        size=row["size"],
        width=row["width"],
        height=row["height"],
        duration=row["duration"],
    )
    return CharacterMedia(
        kind=kind, blob=row["blob"], info=info, position=row["position"], id=row["media_id"]
    )


def _characters_from_rows(rows: Sequence[Row]) -> list[Character]:
    """Fold the joined rows (one per media item, ordered by character) into characters."""
    characters: list[Character] = []
    media: list[CharacterMedia] = []
    current: Row | None = None

    def finish() -> None:
        if current is not None:
            characters.append(
                Character(
                    id=current["id"],
                    server_id=current["server_id"],
                    name=current["name"],
                    owner_id=current["owner_id"],
                    description=current["description"],
                    visibility=Visibility(current["visibility"]),
                    media=tuple(media),
                    created_at=current["created_at"] or 0.0,
                )
            )

    for row in rows:
        if current is None or row["id"] != current["id"]:
            finish()
            current, media = row, []
        if row["media_id"] is not None:
            media.append(_media_from_row(row))
    finish()
    return characters


class SqlCharacterStore:
    """``CharacterStore`` over the bot's database. Call ``ensure_server`` before ``create``."""

    def __init__(self, db: SqlDatabase, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    async def ensure_server(self, server_id: str, platform: str) -> None:
        await self._db.execute(
            "INSERT INTO servers (id, platform, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (server_id, platform, self._clock()),
        )

    async def get(self, server_id: str, name: str) -> Character | None:
        """The character of that name in the server, whatever the case of ``name``."""
        rows = await self._db.fetchall(
            _SELECT + " WHERE c.server_id = ? AND c.name_key = ?" + _ORDER,
            (server_id, name_key(name)),
        )
        found = _characters_from_rows(rows)
        return found[0] if found else None

    async def list(self, server_id: str, *, owner_id: str | None = None) -> Sequence[Character]:
        """The server's characters (only ``owner_id``'s when given), by name, media loaded."""
        where, params = " WHERE c.server_id = ?", [server_id]
        if owner_id is not None:
            where, params = where + " AND c.owner_id = ?", [server_id, owner_id]
        rows = await self._db.fetchall(_SELECT + where + _ORDER, params)
        return _characters_from_rows(rows)

    async def count(self, server_id: str) -> int:
        row = await self._db.fetchone(
            "SELECT count(*) FROM characters WHERE server_id = ?", (server_id,)
        )
        return int(row[0]) if row else 0

    async def create(
        self,
        server_id: str,
        name: str,
        owner_id: str,
        description: str,
        visibility: Visibility,
        media: Sequence[CharacterMedia],
    ) -> Character:
        """Insert a character and its media (positions in the given order) in one transaction;
        ``Refusal(code="name_taken")`` when the server has the name in any case."""
        draft = NewCharacter(name, owner_id, description, visibility, tuple(media))
        [character] = await self.create_many(server_id, [draft])
        return character

    async def create_many(
        self, server_id: str, drafts: Sequence[NewCharacter]
    ) -> Sequence[Character]:
        """Insert several characters in one transaction: all of them, or (on a name clash or
        any failure) none."""
        now = self._clock()
        async with self._db.transaction() as tx:
            return [await self._insert(tx, server_id, draft, now) for draft in drafts]

    async def _insert(self, tx: Tx, server_id: str, draft: NewCharacter, now: float) -> Character:
        await self._check_free(tx, server_id, draft.name)
        inserted = await tx.fetchone(
            "INSERT INTO characters (server_id, name, name_key, owner_id, description,"
            " visibility, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " RETURNING id",
            (
                server_id,
                draft.name,
                name_key(draft.name),
                draft.owner_id,
                draft.description,
                draft.visibility.value,
                now,
                now,
            ),
        )
        character_id = _new_id(inserted)
        stored = [
            await self._insert_media(tx, character_id, item, position, now)
            for position, item in enumerate(draft.media)
        ]
        return Character(
            id=character_id,
            server_id=server_id,
            name=draft.name,
            owner_id=draft.owner_id,
            description=draft.description,
            visibility=draft.visibility,
            media=tuple(stored),
            created_at=now,
        )

    async def add_media(self, character_id: int, media: CharacterMedia) -> None:
        """Append an item after the character's last one."""
        now = self._clock()
        async with self._db.transaction() as tx:
            await self._touch(tx, character_id, now)
            row = await tx.fetchone(
                "SELECT coalesce(max(position), -1) + 1 FROM character_media"
                " WHERE character_id = ?",
                (character_id,),
            )
            await self._insert_media(tx, character_id, media, int(row[0]) if row else 0, now)

    async def remove_media(self, media_id: int) -> None:
        """Remove one item; nothing happens when it is gone already."""
        async with self._db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT character_id FROM character_media WHERE id = ?", (media_id,)
            )
            if row is None:
                return
            await tx.execute("DELETE FROM character_media WHERE id = ?", (media_id,))
            await self._touch(tx, row["character_id"], self._clock())

    async def rename(self, character_id: int, new_name: str) -> None:
        """Give the character a new name; a different case of its own name is allowed."""
        async with self._db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT server_id FROM characters WHERE id = ?", (character_id,)
            )
            if row is None:
                raise LookupError(f"no character with id {character_id}")
            await self._check_free(tx, row["server_id"], new_name, but=character_id)
            await tx.execute(
                "UPDATE characters SET name = ?, name_key = ?, updated_at = ? WHERE id = ?",
                (new_name, name_key(new_name), self._clock(), character_id),
            )

    async def delete(self, character_id: int) -> None:
        """Remove the character and (by cascade) its media rows; the blobs stay for the caller
        to pass to ``BlobStore.discard_unused``."""
        await self._db.execute("DELETE FROM characters WHERE id = ?", (character_id,))

    @staticmethod
    async def _check_free(tx: Tx, server_id: str, name: str, but: int | None = None) -> None:
        row = await tx.fetchone(
            "SELECT name FROM characters WHERE server_id = ? AND name_key = ?"
            " AND id IS DISTINCT FROM ?",
            (server_id, name_key(name), but),
        )
        if row is not None:
            raise name_taken(row["name"])

    @staticmethod
    async def _touch(tx: Tx, character_id: int, now: float) -> None:
        outcome = await tx.execute(
            "UPDATE characters SET updated_at = ? WHERE id = ?", (now, character_id)
        )
        if outcome.rowcount == 0:
            raise LookupError(f"no character with id {character_id}")

    @staticmethod
    async def _insert_media(
        tx: Tx, character_id: int, item: CharacterMedia, position: int, now: float
    ) -> CharacterMedia:
        info = item.info
        inserted = await tx.fetchone(
            "INSERT INTO character_media (character_id, kind, position, blob, mime, size, width,"
            " height, duration, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                character_id,
                item.kind.value,
                position,
                item.blob,
                info.mime,
                info.size,
                info.width,
                info.height,
                info.duration,
                now,
            ),
        )
        return replace(
            item,
            info=replace(info, kind=item.kind),
            position=position,
            id=_new_id(inserted),
        )


def _new_id(row: Row | None) -> int:
    if row is None:
        raise RuntimeError("the database gave no id for an INSERT … RETURNING id")
    return int(row["id"])
