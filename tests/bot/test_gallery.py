"""What a gallery page holds, read through the real SQLite stores: pages of 24, public
characters only, owners' names where the platform gives them, and prompts with their mentions
cut out for linking."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import pytest

from bot.gallery import Gallery, PromptPiece, link_mentions
from bot.models import CharacterMedia, MediaInfo, MediaKind, Visibility
from storage.characters import SqlCharacterStore
from storage.db import Database
from storage.jobs import SqlJobStore

SERVER = "console:home"


def picture(n: int) -> CharacterMedia:
    blob = f"{n:064x}"
    return CharacterMedia(MediaKind.IMAGE, blob, MediaInfo(MediaKind.IMAGE, "image/png", 100))


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[SqlCharacterStore, SqlJobStore]]:
    db = await Database.open(tmp_path / "r2v.sqlite3")
    try:
        characters = SqlCharacterStore(db)
        await characters.ensure_server(SERVER, "console")
        for n in range(30):
            await characters.create(
                SERVER, f"c{n:02d}", f"u{n % 3}", "", Visibility.PUBLIC, [picture(n)]
            )
        await characters.create(SERVER, "hidden", "u9", "", Visibility.PRIVATE, [picture(99)])
        yield characters, SqlJobStore(db)
    finally:
        await db.close()


async def names(server: str, ids: Sequence[str]) -> Mapping[str, str]:
    return {"u0": "Ann", "u1": "Bo"}


async def test_the_roster_comes_in_pages_of_24_without_private_characters(
    stores: tuple[SqlCharacterStore, SqlJobStore],
) -> None:
    gallery = Gallery(*stores, display_names=names)
    first = await gallery.page(SERVER)
    assert first.roster.total == 30 and first.roster.pages == 2
    assert len(first.roster.items) == 24 and "hidden" not in first.names
    second = await gallery.page(SERVER, roster_page=9)  # past the end: the last page
    assert second.roster.number == 2 and second.roster.items[0].name == "c24"
    owners = {c.owner for c in first.roster.items}
    assert owners == {"Ann", "Bo", "u2"}  # an id the platform cannot name is shown as it is
    assert await gallery.character(SERVER, "HIDDEN") is None
    assert await gallery.file(SERVER, picture(99).blob) is None
    assert await gallery.file("console:other", picture(1).blob) is None
    served = await gallery.file(SERVER, picture(1).blob)
    assert served is not None and served.mime == "image/png"


def test_mentions_of_public_characters_are_cut_out_for_links() -> None:
    pieces = link_mentions("@Alice meets @secret at me@home, @@bob", {"alice": "alice"})
    assert pieces == (
        PromptPiece("@Alice", "alice"),
        PromptPiece(" meets @secret at me@home, @@bob"),
    )
