"""The roster: each server's characters, and who may see, use and change them.

Rules (DESIGN.md): a character belongs to one server; its name is unique there regardless of
case; it holds up to 3 images, 1 video and 1 voice clip, the first visual item being its primary
reference. Its owner may change or delete it; admins may delete or rename any. A private
character is visible and usable by its owner alone.

Media is checked and copied into the blob store before anything is written, so a refused file
leaves nothing half-stored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bot import media
from bot.commands import ref as command_ref
from bot.commands import user_id_of
from bot.errors import Refusal
from bot.models import Actor, Character, CharacterMedia, IncomingFile, MediaKind, Visibility
from bot.names import check_name, name_key, suggest, unknown_character
from bot.paging import page_of
from bot.ports import BlobStore, CharacterStore

PER_CHARACTER = {MediaKind.IMAGE: 3, MediaKind.VIDEO: 1, MediaKind.VOICE: 1}
PAGE_SIZE = 10


@dataclass(frozen=True, slots=True)
class Page:
    characters: tuple[Character, ...]
    number: int
    pages: int
    total: int


class Roster:
    def __init__(
        self,
        characters: CharacterStore,
        blobs: BlobStore,
        workdir: Path,
        *,
        max_per_server: int = 1000,
        limits: media.MediaLimits = media.DEFAULT_LIMITS,
    ) -> None:
        self._store = characters
        self._blobs = blobs
        self._workdir = workdir
        self._max_per_server = max_per_server
        self._limits = limits

    # -- reading ---------------------------------------------------------------------------

    @staticmethod
    def can_see(actor: Actor, character: Character) -> bool:
        return character.visibility is Visibility.PUBLIC or character.owner_id == actor.user_id

    async def usable(self, actor: Actor) -> dict[str, Character]:
        """The characters ``actor`` may mention, by name key (what the composer takes)."""
        everyone = await self._store.list(actor.server_key)
        return {name_key(c.name): c for c in everyone if self.can_see(actor, c)}

    async def find(self, actor: Actor, name: str, *, managing: bool = False) -> Character:
        """The named character, or ``unknown_character`` with close names the actor can see.

        ``managing`` lets admins reach private characters to rename or delete them.
        """
        wanted = name.strip().lstrip("@")
        character = await self._store.get(actor.server_key, wanted)
        if character is not None and (
            self.can_see(actor, character) or (managing and actor.is_admin)
        ):
            return character
        visible = await self.usable(actor)
        raise unknown_character(wanted, [c.name for c in visible.values()])

    async def complete(self, actor: Actor, typed: str, limit: int = 25) -> list[str]:
        """Names for autocomplete: the ones the actor may use, those starting with what was
        typed first (by name), then close spellings."""
        names = sorted((c.name for c in (await self.usable(actor)).values()), key=name_key)
        key = name_key(typed.strip().lstrip("@"))
        if not key:
            return names[:limit]
        starting = [n for n in names if name_key(n).startswith(key)]
        rest = [n for n in suggest(key, names, limit=limit) if n not in starting]
        contained = [n for n in names if key in name_key(n) and n not in starting + rest]
        return (starting + rest + contained)[:limit]

    async def show(self, actor: Actor, name: str) -> Character:
        return await self.find(actor, name)

    async def page(self, actor: Actor, *, owner: str | None = None, number: int = 1) -> Page:
        owner_id = user_id_of(owner) if owner else None
        everyone = await self._store.list(actor.server_key, owner_id=owner_id)
        visible = [c for c in everyone if self.can_see(actor, c)]
        paged = page_of(visible, number, PAGE_SIZE)
        return Page(paged.items, paged.number, paged.pages, paged.total)

    # -- changing --------------------------------------------------------------------------

    async def create(
        self,
        actor: Actor,
        name: str,
        files: Sequence[tuple[MediaKind | None, IncomingFile]],
        *,
        description: str = "",
        visibility: Visibility = Visibility.PUBLIC,
    ) -> Character:
        """Save a character from files; a file's kind may be ``None`` (found from its content,
        as for "Save as character" on a message with attachments)."""
        name = check_name(name)
        if all(kind is MediaKind.VOICE for kind, _ in files):
            raise _needs_visual()
        await self._store.ensure_server(actor.server_key, actor.platform)
        existing = await self._store.get(actor.server_key, name)
        if existing is not None:
            raise _name_taken(existing.name)
        if await self._store.count(actor.server_key) >= self._max_per_server:
            raise Refusal(
                f"This server has reached its limit of {self._max_per_server} characters. "
                "Delete one first, or ask the bot's operator to raise "
                "R2V_MAX_CHARACTERS_PER_SERVER.",
                code="limit_reached",
            )
        stored = await self._store_files(files)
        if not any(m.kind.is_visual for m in stored):
            await self._blobs.discard_unused([m.blob for m in stored])
            raise _needs_visual()
        try:
            return await self._store.create(
                actor.server_key, name, actor.user_id, description.strip(), visibility, stored
            )
        except BaseException:
            await self._blobs.discard_unused([m.blob for m in stored])
            raise

    async def add(self, actor: Actor, name: str, file: IncomingFile) -> CharacterMedia:
        character = await self._owned(actor, name, "change")
        checked = await media.check_file(file, self._workdir, limits=self._limits)
        try:
            kind = checked.info.kind
            have = sum(1 for m in character.media if m.kind is kind)
            if have >= PER_CHARACTER[kind]:
                raise Refusal(
                    f"{character.name} already has {_count(PER_CHARACTER[kind], kind)}, the most a "
                    f"character can hold. Remove one first with {command_ref('character remove')}.",
                    code="limit_reached",
                )
            blob = await self._blobs.put_file(checked.path)
        finally:
            checked.path.unlink(missing_ok=True)
        item = CharacterMedia(kind=kind, blob=blob, info=checked.info)
        try:
            await self._store.add_media(character.id, item)
        except BaseException:
            await self._blobs.discard_unused([blob])
            raise
        return item

    async def remove(self, actor: Actor, name: str, item: str) -> CharacterMedia:
        character = await self._owned(actor, name, "change")
        target = _pick_item(character, item)
        visual_left = [m for m in character.media if m.kind.is_visual and m is not target]
        if target.kind.is_visual and not visual_left:
            raise Refusal(
                f"{item} is {character.name}'s only image or video, and a character needs one. "
                "Add another first, or delete the character.",
                code="invalid_option",
            )
        assert target.id is not None
        await self._store.remove_media(target.id)
        await self._blobs.discard_unused([target.blob])
        return target

    async def rename(self, actor: Actor, name: str, new: str) -> tuple[Character, str]:
        character = await self._owned(actor, name, "rename", admin_may=True)
        new = check_name(new)
        clash = await self._store.get(actor.server_key, new)
        if clash is not None and clash.id != character.id:
            raise _name_taken(clash.name)
        await self._store.rename(character.id, new)
        return character, new

    async def delete(self, actor: Actor, name: str) -> Character:
        character = await self._owned(actor, name, "delete", admin_may=True)
        await self._store.delete(character.id)
        await self._blobs.discard_unused([m.blob for m in character.media])
        return character

    # -- helpers ---------------------------------------------------------------------------

    async def _owned(
        self, actor: Actor, name: str, verb: str, *, admin_may: bool = False
    ) -> Character:
        character = await self.find(actor, name, managing=admin_may)
        if character.owner_id == actor.user_id or (admin_may and actor.is_admin):
            return character
        who = "its owner or a server admin" if admin_may else "its owner"
        raise Refusal(
            f"Only {who} may {verb} {character.name}.",
            code="not_allowed",
        )

    async def _store_files(
        self, files: Sequence[tuple[MediaKind | None, IncomingFile]]
    ) -> list[CharacterMedia]:
        """Check every file first, then copy them into the blob store: all or nothing."""
        checked: list[media.CheckedFile] = []
        try:
            for kind, file in files:
                checked.append(
                    await media.check_file(file, self._workdir, expect=kind, limits=self._limits)
                )
            counts: dict[MediaKind, int] = {}
            for item in checked:
                counts[item.info.kind] = counts.get(item.info.kind, 0) + 1
                if counts[item.info.kind] > PER_CHARACTER[item.info.kind]:
                    raise Refusal(
                        "A character holds at most "
                        f"{_count(PER_CHARACTER[item.info.kind], item.info.kind)}.",
                        code="limit_reached",
                    )
            stored: list[CharacterMedia] = []
            for position, item in enumerate(_visual_first(checked)):
                blob = await self._blobs.put_file(item.path)
                stored.append(
                    CharacterMedia(
                        kind=item.info.kind, blob=blob, info=item.info, position=position
                    )
                )
            return stored
        finally:
            for item in checked:
                with contextlib.suppress(OSError):
                    item.path.unlink(missing_ok=True)


def _visual_first(items: Sequence[media.CheckedFile]) -> list[media.CheckedFile]:
    order = {MediaKind.IMAGE: 0, MediaKind.VIDEO: 1, MediaKind.VOICE: 2}
    return sorted(items, key=lambda c: order[c.info.kind])


def _count(n: int, kind: MediaKind) -> str:
    noun = {MediaKind.IMAGE: "image", MediaKind.VIDEO: "video", MediaKind.VOICE: "voice clip"}[kind]
    return f"{n} {noun}" + ("s" if n != 1 else "")


def _needs_visual() -> Refusal:
    return Refusal(
        "A character needs at least one image or video: add image: or video:.",
        code="invalid_option",
    )


def _name_taken(existing: str) -> Refusal:
    return Refusal(
        f"This server already has a character named “{existing}” (names ignore case). "
        "Choose another name.",
        code="name_taken",
    )


def _pick_item(character: Character, item: str) -> CharacterMedia:
    item = item.lower()
    if item in {"image", "image1", "image2", "image3"}:
        index = int(item[-1]) - 1 if item[-1].isdigit() else 0
        images = character.images
        if index < len(images):
            return images[index]
    elif item == "video" and character.video is not None:
        return character.video
    elif item == "voice" and character.voice is not None:
        return character.voice
    raise Refusal(
        f"{character.name} has no {item}. It has: {describe_items(character)}.",
        code="invalid_option",
    )


def describe_items(character: Character) -> str:
    names = [f"image{i}" for i, _ in enumerate(character.images, start=1)]
    if character.video:
        names.append("video")
    if character.voice:
        names.append("voice")
    return ", ".join(names) or "nothing"
