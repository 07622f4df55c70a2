"""The roster: who may see, use and change which characters, with real storage and media."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.errors import Refusal, StorageUnavailable
from bot.models import Actor, MediaKind, Visibility
from bot.roster import Roster
from storage.blobs import FileBlobStore
from storage.characters import SqlCharacterStore
from storage.db import Database
from tests.media_factory import local_file, make_image, make_video, make_wav

OWNER = Actor(platform="console", server_id="s1", user_id="olga")
OTHER = Actor(platform="console", server_id="s1", user_id="oscar")
ADMIN = Actor(platform="console", server_id="s1", user_id="ada", is_admin=True)
ELSEWHERE = Actor(platform="console", server_id="s2", user_id="olga")


@dataclass
class Setup:
    roster: Roster
    tmp: Path
    blobs: FileBlobStore

    def image(self, name: str = "a.png", color: tuple[int, int, int] = (200, 10, 10)) -> Path:
        return make_image(self.tmp / name, color=color)

    async def create(self, actor: Actor, name: str, **kwargs: object) -> None:
        files = [(MediaKind.IMAGE, local_file(self.image(f"{name}.png")))]
        await self.roster.create(actor, name, files, **kwargs)  # type: ignore[arg-type]

    def stored_blobs(self) -> list[Path]:
        return [p for p in (self.tmp / "blobs").glob("??/*") if p.is_file()]


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    db = await Database.open(tmp_path / "db.sqlite3")
    blobs = FileBlobStore(tmp_path / "blobs", db.blob_in_use)
    roster = Roster(SqlCharacterStore(db), blobs, tmp_path / "work", max_per_server=3)
    yield Setup(roster, tmp_path, blobs)
    await db.close()


async def refused(code: str, coro: object) -> Refusal:
    with pytest.raises(Refusal) as caught:
        await coro  # type: ignore[misc]
    assert caught.value.code == code, caught.value.message
    return caught.value


async def test_create_orders_media_and_picks_the_primary(setup: Setup) -> None:
    video = make_video(setup.tmp / "v.mp4", seconds=1.5)
    voice = make_wav(setup.tmp / "v.wav", seconds=2.0)
    character = await setup.roster.create(
        OWNER,
        "Alice",
        [
            (MediaKind.VOICE, local_file(voice)),
            (MediaKind.VIDEO, local_file(video)),
            (MediaKind.IMAGE, local_file(setup.image())),
        ],
        description="hero",
    )
    assert [m.kind for m in character.media] == [MediaKind.IMAGE, MediaKind.VIDEO, MediaKind.VOICE]
    assert character.primary is not None and character.primary.kind is MediaKind.IMAGE
    assert len(setup.stored_blobs()) == 3
    assert not list((setup.tmp / "work").glob("*")), "no temp files are left behind"


async def test_a_bad_file_among_good_ones_stores_nothing(setup: Setup) -> None:
    text = setup.tmp / "notes.png"
    text.write_text("not a picture")
    await refused(
        "invalid_media",
        setup.roster.create(
            OWNER,
            "alice",
            [(MediaKind.IMAGE, local_file(setup.image())), (MediaKind.IMAGE, local_file(text))],
        ),
    )
    assert setup.stored_blobs() == []
    assert (await setup.roster.page(OWNER)).total == 0


async def test_a_voice_alone_is_not_a_character(setup: Setup) -> None:
    voice = make_wav(setup.tmp / "v.wav")
    await refused(
        "invalid_option",
        setup.roster.create(OWNER, "alice", [(MediaKind.VOICE, local_file(voice))]),
    )


async def test_names_follow_the_rule_and_clash_regardless_of_case(setup: Setup) -> None:
    for bad in ("1abc", "a b", "x" * 33, "ref1", "", "al!ce"):
        await refused(
            "invalid_name",
            setup.roster.create(OWNER, bad, [(MediaKind.IMAGE, local_file(setup.image()))]),
        )
    await setup.create(OWNER, "Alice")
    clash = await refused(
        "name_taken",
        setup.roster.create(OTHER, "aLiCe", [(MediaKind.IMAGE, local_file(setup.image()))]),
    )
    assert "Alice" in clash.message
    await setup.create(OWNER, "bob")
    renamed = await refused("name_taken", setup.roster.rename(OWNER, "bob", "ALICE"))
    assert "Alice" in renamed.message
    # a rename to another case of its own name is fine
    await setup.roster.rename(OWNER, "alice", "ALICE")
    assert (await setup.roster.show(OWNER, "alice")).name == "ALICE"


async def test_owner_admin_and_others_on_every_command(setup: Setup) -> None:
    await setup.create(OWNER, "alice")
    extra = local_file(setup.image("extra.png", color=(0, 200, 0)))
    # others may see and use, but not change, rename or delete
    assert (await setup.roster.show(OTHER, "alice")).name == "alice"
    assert "alice" in await setup.roster.usable(OTHER)
    await refused("not_allowed", setup.roster.add(OTHER, "alice", extra))
    await refused("not_allowed", setup.roster.remove(OTHER, "alice", "image1"))
    await refused("not_allowed", setup.roster.rename(OTHER, "alice", "alicia"))
    await refused("not_allowed", setup.roster.delete(OTHER, "alice"))
    # admins may rename and delete, not change the media
    await refused("not_allowed", setup.roster.add(ADMIN, "alice", extra))
    await setup.roster.rename(ADMIN, "alice", "alicia")
    # the owner may do everything
    item = await setup.roster.add(OWNER, "alicia", extra)
    assert item.kind is MediaKind.IMAGE
    await setup.roster.remove(OWNER, "alicia", "image2")
    await setup.roster.rename(OWNER, "alicia", "alice")
    await setup.roster.delete(ADMIN, "alice")
    await refused("unknown_character", setup.roster.show(OWNER, "alice"))
    assert setup.stored_blobs() == [], "blobs of a deleted character are removed"


async def test_two_servers_never_see_each_others_characters(setup: Setup) -> None:
    await setup.create(OWNER, "alice")
    await refused("unknown_character", setup.roster.show(ELSEWHERE, "alice"))
    assert await setup.roster.usable(ELSEWHERE) == {}
    await refused("unknown_character", setup.roster.delete(ELSEWHERE, "alice"))
    # the same name is free in the other server
    await setup.create(ELSEWHERE, "alice")
    assert (await setup.roster.page(ELSEWHERE)).total == 1
    assert (await setup.roster.page(OWNER)).total == 1


async def test_private_characters_belong_to_their_owner(setup: Setup) -> None:
    await setup.create(OWNER, "secret", visibility=Visibility.PRIVATE)
    assert "secret" in await setup.roster.usable(OWNER)
    assert "secret" not in await setup.roster.usable(OTHER)
    await refused("unknown_character", setup.roster.show(OTHER, "secret"))
    assert (await setup.roster.page(OTHER)).total == 0
    assert (await setup.roster.page(OWNER)).total == 1
    # an admin cannot see or use it, but may still remove it from the server
    assert "secret" not in await setup.roster.usable(ADMIN)
    await setup.roster.delete(ADMIN, "secret")


async def test_unknown_names_suggest_close_ones(setup: Setup) -> None:
    await setup.create(OWNER, "alice")
    refusal = await refused("unknown_character", setup.roster.show(OTHER, "alcie"))
    assert "@alice" in refusal.message


async def test_limits_per_server_and_per_character(setup: Setup) -> None:
    for name in ("a1", "a2", "a3"):
        await setup.create(OWNER, name)
    await refused(
        "limit_reached",
        setup.roster.create(OWNER, "a4", [(MediaKind.IMAGE, local_file(setup.image()))]),
    )
    for i in range(2):
        await setup.roster.add(OWNER, "a1", local_file(setup.image(f"x{i}.png", (i * 90, 0, 0))))
    await refused("limit_reached", setup.roster.add(OWNER, "a1", local_file(setup.image("y.png"))))
    await setup.roster.add(OWNER, "a1", local_file(make_wav(setup.tmp / "v1.wav")))
    await refused(
        "limit_reached",
        setup.roster.add(OWNER, "a1", local_file(make_wav(setup.tmp / "v2.wav", 3.0))),
    )
    await setup.roster.add(OWNER, "a1", local_file(make_video(setup.tmp / "v.mp4", seconds=1.2)))
    character = await setup.roster.show(OWNER, "a1")
    assert (len(character.images), character.video is not None, character.voice is not None) == (
        3,
        True,
        True,
    )


async def test_the_last_picture_cannot_be_removed(setup: Setup) -> None:
    await setup.create(OWNER, "alice")
    await refused("invalid_option", setup.roster.remove(OWNER, "alice", "image1"))
    await refused("invalid_option", setup.roster.remove(OWNER, "alice", "voice"))


async def test_pages_of_ten_by_name(setup: Setup, tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "big.sqlite3")
    roster = Roster(SqlCharacterStore(db), setup.blobs, tmp_path / "work")
    image = setup.image()
    for i in range(23):
        await roster.create(OWNER, f"c{i:02d}", [(MediaKind.IMAGE, local_file(image))])
    first, third = await roster.page(OTHER), await roster.page(OTHER, number=3)
    assert [c.name for c in first.characters] == [f"c{i:02d}" for i in range(10)]
    assert (first.pages, first.total, len(third.characters)) == (3, 23, 3)
    assert len(setup.stored_blobs()) == 1, "identical content is stored once"
    await db.close()


class FullDisk(FileBlobStore):
    """The blob store on a disk with no space left (what the OS answers, at the store's seam)."""

    def _copy_to_temp(self, source: Path) -> tuple[Path, str]:
        raise OSError(errno.ENOSPC, "No space left on device")


async def test_a_full_disk_refuses_a_save_with_storage_unavailable_and_stores_nothing(
    tmp_path: Path,
) -> None:
    db = await Database.open(tmp_path / "db.sqlite3")
    try:
        store = SqlCharacterStore(db)
        roster = Roster(store, FullDisk(tmp_path / "blobs", db.blob_in_use), tmp_path / "work")
        image = make_image(tmp_path / "a.png")
        with pytest.raises(StorageUnavailable) as caught:
            await roster.create(OWNER, "alice", [(MediaKind.IMAGE, local_file(image))])
        assert caught.value.code == "storage_unavailable"
        assert "No space left" in caught.value.message
        assert await store.list(OWNER.server_key) == []
    finally:
        await db.close()
