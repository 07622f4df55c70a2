"""Characters: names unique per server regardless of case, media kept in order."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable

import asyncpg
import pytest

from bot.errors import Refusal
from bot.models import CharacterMedia, MediaInfo, MediaKind, NewCharacter, Visibility
from bot.ports import CharacterStore
from storage.characters import SqlCharacterStore
from storage.people import SqlPeopleStore
from storage.sql import SqlDatabase

SERVER = "discord:1"
OTHER_SERVER = "slack:T2"


@pytest.fixture
def db(database: SqlDatabase) -> SqlDatabase:
    return database


def ticking() -> Callable[[], float]:
    """A clock that moves one second per reading, so every write gets its own time."""
    counter = itertools.count(1000)
    return lambda: float(next(counter))


@pytest.fixture
async def store(db: SqlDatabase) -> SqlCharacterStore:
    characters = SqlCharacterStore(db, clock=ticking())
    await characters.ensure_server(SERVER, "discord")
    await characters.ensure_server(OTHER_SERVER, "slack")
    return characters


def image(blob: str, width: int = 512) -> CharacterMedia:
    info = MediaInfo(MediaKind.IMAGE, "image/png", 2048, width, width)
    return CharacterMedia(MediaKind.IMAGE, blob, info)


def voice(blob: str) -> CharacterMedia:
    return CharacterMedia(
        MediaKind.VOICE, blob, MediaInfo(MediaKind.VOICE, "audio/wav", 99, None, None, 3.5)
    )


def video(blob: str) -> CharacterMedia:
    info = MediaInfo(MediaKind.VIDEO, "video/mp4", 5000, 1280, 720, 4.25)
    return CharacterMedia(MediaKind.VIDEO, blob, info)


def blob(n: int) -> str:
    return f"{n:064x}"


async def updated_at(db: SqlDatabase, character_id: int) -> float:
    row = await db.fetchone("SELECT updated_at FROM characters WHERE id = ?", (character_id,))
    assert row is not None
    return float(row[0])


def test_the_store_fits_the_port(db: SqlDatabase) -> None:
    port: CharacterStore = SqlCharacterStore(db)
    assert port is not None


async def test_a_created_character_is_found_by_any_case(store: SqlCharacterStore) -> None:
    media = [voice(blob(3)), image(blob(1)), video(blob(2))]
    created = await store.create(SERVER, "Alice", "u1", "a pilot", Visibility.PRIVATE, media)

    found = await store.get(SERVER, "aLICE")

    assert found == created
    assert found.name == "Alice"
    assert found.visibility is Visibility.PRIVATE
    assert [m.blob for m in found.media] == [blob(3), blob(1), blob(2)]
    assert [m.position for m in found.media] == [0, 1, 2]
    assert all(m.id is not None for m in found.media)
    assert found.voice is not None and found.voice.info.duration == 3.5
    assert found.video is not None and found.video.info == video(blob(2)).info
    assert found.primary is not None and found.primary.blob == blob(1)
    assert await store.get(SERVER, "bob") is None


async def test_a_name_taken_in_another_case_is_refused_and_nothing_stored(
    db: SqlDatabase, store: SqlCharacterStore
) -> None:
    await store.create(SERVER, "Alice", "u1", "", Visibility.PUBLIC, [image(blob(1))])

    with pytest.raises(Refusal) as refused:
        await store.create(SERVER, "ALICE", "u2", "", Visibility.PUBLIC, [image(blob(2))])

    assert refused.value.code == "name_taken"
    assert "“Alice”" in refused.value.message
    assert await store.count(SERVER) == 1
    assert not await db.blob_in_use(blob(2))


async def test_two_servers_have_their_own_names(store: SqlCharacterStore) -> None:
    here = await store.create(SERVER, "alice", "u1", "", Visibility.PUBLIC, [image(blob(1))])
    there = await store.create(OTHER_SERVER, "Alice", "u9", "", Visibility.PUBLIC, [image(blob(2))])

    assert here.id != there.id
    found_here = await store.get(SERVER, "ALICE")
    found_there = await store.get(OTHER_SERVER, "alice")
    assert found_here is not None and found_here.owner_id == "u1"
    assert found_there is not None and found_there.owner_id == "u9"
    assert await store.count(SERVER) == 1
    assert await store.count(OTHER_SERVER) == 1


async def test_list_is_by_name_with_media_and_can_filter_by_owner(
    store: SqlCharacterStore,
) -> None:
    await store.create(
        SERVER, "carol", "u1", "", Visibility.PUBLIC, [image(blob(3)), voice(blob(4))]
    )
    await store.create(SERVER, "Bob", "u2", "", Visibility.PUBLIC, [image(blob(2))])
    await store.create(SERVER, "alice", "u1", "", Visibility.PRIVATE, [])
    await store.create(OTHER_SERVER, "dave", "u1", "", Visibility.PUBLIC, [image(blob(5))])

    everyone = await store.list(SERVER)
    mine = await store.list(SERVER, owner_id="u1")

    assert [c.name for c in everyone] == ["alice", "Bob", "carol"]
    assert [[m.blob for m in c.media] for c in everyone] == [[], [blob(2)], [blob(3), blob(4)]]
    assert [c.name for c in mine] == ["alice", "carol"]
    assert await store.list("discord:empty") == []
    assert await store.count(SERVER) == 3


async def test_rename_refuses_another_characters_name_in_any_case(
    store: SqlCharacterStore,
) -> None:
    await store.create(SERVER, "Alice", "u1", "", Visibility.PUBLIC, [])
    bob = await store.create(SERVER, "bob", "u2", "", Visibility.PUBLIC, [])

    with pytest.raises(Refusal) as refused:
        await store.rename(bob.id, "aLiCe")

    assert refused.value.code == "name_taken"
    assert "“Alice”" in refused.value.message
    unchanged = await store.get(SERVER, "bob")
    assert unchanged is not None and unchanged.name == "bob"


async def test_rename_to_another_case_of_its_own_name_is_allowed(
    store: SqlCharacterStore,
) -> None:
    bob = await store.create(SERVER, "bob", "u2", "", Visibility.PUBLIC, [image(blob(1))])

    await store.rename(bob.id, "Bob")
    renamed = await store.get(SERVER, "BOB")
    assert renamed is not None and renamed.name == "Bob" and renamed.id == bob.id

    await store.rename(bob.id, "robert")
    assert await store.get(SERVER, "bob") is None
    moved = await store.get(SERVER, "Robert")
    assert moved is not None and moved.media == renamed.media


async def test_rename_in_one_server_ignores_names_of_another(store: SqlCharacterStore) -> None:
    await store.create(OTHER_SERVER, "alice", "u1", "", Visibility.PUBLIC, [])
    bob = await store.create(SERVER, "bob", "u1", "", Visibility.PUBLIC, [])

    await store.rename(bob.id, "Alice")

    assert (await store.get(SERVER, "alice")) is not None


async def test_media_is_appended_after_the_last_position(store: SqlCharacterStore) -> None:
    alice = await store.create(
        SERVER, "alice", "u1", "", Visibility.PUBLIC, [image(blob(1)), image(blob(2))]
    )
    first = alice.media[0]
    assert first.id is not None

    await store.remove_media(first.id)
    await store.add_media(alice.id, voice(blob(3)))
    await store.add_media(alice.id, image(blob(4)))

    found = await store.get(SERVER, "alice")
    assert found is not None
    assert [(m.blob, m.position) for m in found.media] == [(blob(2), 1), (blob(3), 2), (blob(4), 3)]
    assert found.primary is not None and found.primary.blob == blob(2)
    await store.remove_media(first.id)  # already gone: nothing happens


async def test_adding_media_to_a_missing_character_fails_loudly(
    store: SqlCharacterStore,
) -> None:
    with pytest.raises(LookupError):
        await store.add_media(12345, image(blob(1)))


async def test_every_change_bumps_updated_at(db: SqlDatabase, store: SqlCharacterStore) -> None:
    alice = await store.create(SERVER, "alice", "u1", "", Visibility.PUBLIC, [image(blob(1))])
    stamps = [await updated_at(db, alice.id)]

    await store.add_media(alice.id, image(blob(2)))
    stamps.append(await updated_at(db, alice.id))
    media_id = alice.media[0].id
    assert media_id is not None
    await store.remove_media(media_id)
    stamps.append(await updated_at(db, alice.id))
    await store.rename(alice.id, "Alicia")
    stamps.append(await updated_at(db, alice.id))

    assert stamps == sorted(set(stamps)), stamps


async def test_delete_removes_the_character_and_its_media(
    db: SqlDatabase, store: SqlCharacterStore
) -> None:
    alice = await store.create(SERVER, "alice", "u1", "", Visibility.PUBLIC, [image(blob(1))])
    await store.create(SERVER, "bob", "u1", "", Visibility.PUBLIC, [image(blob(2))])

    await store.delete(alice.id)

    assert await store.get(SERVER, "alice") is None
    assert not await db.blob_in_use(blob(1))
    assert await db.blob_in_use(blob(2))
    assert [c.name for c in await store.list(SERVER)] == ["bob"]
    # The name is free again.
    await store.create(SERVER, "ALICE", "u2", "", Visibility.PUBLIC, [])


async def test_ensure_server_is_idempotent_and_required(db: SqlDatabase) -> None:
    store = SqlCharacterStore(db)
    with pytest.raises((sqlite3.IntegrityError, asyncpg.ForeignKeyViolationError)):
        await store.create("console:new", "alice", "u1", "", Visibility.PUBLIC, [])

    await store.ensure_server("console:new", "console")
    await store.ensure_server("console:new", "console")
    await store.create("console:new", "alice", "u1", "", Visibility.PUBLIC, [])
    assert await store.count("console:new") == 1


async def test_people_names_are_remembered_per_server_and_updated(db: SqlDatabase) -> None:
    people = SqlPeopleStore(db)
    await people.remember(SERVER, "u1", "Ada")
    await people.remember(SERVER, "u1", "Ada Lovelace")
    await people.remember("console:other", "u1", "Someone else")
    assert await people.names(SERVER, ["u1", "u2", "u1"]) == {"u1": "Ada Lovelace"}
    assert await people.names(SERVER, []) == {}


async def test_create_many_writes_all_or_none(db: SqlDatabase, store: SqlCharacterStore) -> None:
    await store.create(SERVER, "bob", "u1", "", Visibility.PUBLIC, [])
    drafts = [
        NewCharacter("alice", "u2", "", Visibility.PUBLIC, ()),
        NewCharacter("BOB", "u2", "", Visibility.PUBLIC, ()),  # clashes with bob
    ]
    with pytest.raises(Refusal) as clash:
        await store.create_many(SERVER, drafts)
    assert clash.value.code == "name_taken"
    assert [c.name for c in await store.list(SERVER)] == ["bob"]  # alice was not kept
    made = await store.create_many(SERVER, drafts[:1])
    assert [c.name for c in made] == ["alice"]
