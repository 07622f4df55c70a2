"""What a server's gallery page shows: its public roster and its delivered videos.

The gallery is read by anyone holding a link, with no account, so it answers for the server
alone and shows only what every member of that server may see: public characters, and videos
whose references include no private character (a video shows the faces it was made from). Every
file the page links to is looked up here before it is served (``file``), so a guessed blob hash,
job id or character name of another server, or of a private character, finds nothing.

It reads through the store ports only; the HTTP adapter renders it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from bot.compose import MENTION
from bot.models import Character, CharacterMedia, Job, MediaKind, Visibility
from bot.names import name_key
from bot.paging import Paged, page_of
from bot.ports import CharacterStore, JobStore

PAGE_SIZE: Final = 24
#: How many of a server's latest videos the page (and its filter) looks through.
RECENT_VIDEOS: Final = 1000

#: Owners' display names by user id, for a server (ids not known are left out).
DisplayNames = Callable[[str, Sequence[str]], Awaitable[Mapping[str, str]]]


async def ids_as_names(server_id: str, user_ids: Sequence[str]) -> Mapping[str, str]:
    """The fallback when no platform can name people: the id is shown as it is."""
    return {}


@dataclass(frozen=True, slots=True)
class CharacterCard:
    name: str
    description: str
    owner: str
    kinds: tuple[str, ...]
    primary: CharacterMedia | None
    media: tuple[CharacterMedia, ...]


@dataclass(frozen=True, slots=True)
class PromptPiece:
    """A run of a prompt's text; ``character`` is set when it is a mention to link."""

    text: str
    character: str | None = None


@dataclass(frozen=True, slots=True)
class VideoCard:
    job_id: str
    prompt: tuple[PromptPiece, ...]
    provider: str
    duration: float | None
    resolution: str
    cost: float | None
    created_at: float
    blob: str
    size: int | None


@dataclass(frozen=True, slots=True)
class GalleryPage:
    roster: Paged[CharacterCard]
    videos: Paged[VideoCard]
    #: The character the videos are filtered by (its stored spelling), if any.
    character: str | None
    #: Every public character's name, for the filter.
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ServedFile:
    """A file the gallery may serve: its blob, type and kind."""

    blob: str
    mime: str
    kind: MediaKind


class Gallery:
    def __init__(
        self,
        characters: CharacterStore,
        jobs: JobStore,
        *,
        display_names: DisplayNames = ids_as_names,
        recent: int = RECENT_VIDEOS,
    ) -> None:
        self._characters = characters
        self._jobs = jobs
        self._names = display_names
        self._recent = recent

    async def page(
        self, server_id: str, *, character: str | None = None, page: int = 1, roster_page: int = 1
    ) -> GalleryPage:
        """The roster (a page of it) and the videos, newest first, filtered by a character."""
        everyone = await self._characters.list(server_id)
        public = [c for c in everyone if c.visibility is Visibility.PUBLIC]
        videos = await self._videos(server_id, everyone)
        chosen = None
        if character:
            chosen = next((c for c in public if name_key(c.name) == name_key(character)), None)
            videos = [] if chosen is None else [v for v in videos if _features(v, chosen)]
        roster = page_of(public, roster_page, PAGE_SIZE)
        cards = await self._cards(server_id, roster.items)
        return GalleryPage(
            roster=Paged(cards, roster.number, roster.pages, roster.total),
            videos=_as_cards(page_of(videos, page, PAGE_SIZE), public),
            character=chosen.name if chosen else None,
            names=tuple(c.name for c in public),
        )

    async def character(self, server_id: str, name: str) -> CharacterCard | None:
        """A public character of the server, or ``None`` (private and missing look the same)."""
        found = await self._characters.get(server_id, name)
        if found is None or found.visibility is not Visibility.PUBLIC:
            return None
        (card,) = await self._cards(server_id, [found])
        return card

    async def file(self, server_id: str, blob: str) -> ServedFile | None:
        """The blob, if the server's gallery shows it: an item of a public character or a
        video on the page. Anything else (another server's, a private character's, a hash made
        up) is ``None``."""
        everyone = await self._characters.list(server_id)
        for c in everyone:
            if c.visibility is not Visibility.PUBLIC:
                continue
            for item in c.media:
                if item.blob == blob:
                    return ServedFile(blob, item.info.mime, item.kind)
        job = await self._jobs.delivered_result(server_id, blob)
        if job is not None and _shows(job, _private_marks(everyone)):
            return ServedFile(blob, "video/mp4", MediaKind.VIDEO)
        return None

    async def _videos(self, server_id: str, everyone: Sequence[Character]) -> list[Job]:
        jobs = await self._jobs.delivered(server_id, self._recent)
        hidden = _private_marks(everyone)
        return [job for job in jobs if _shows(job, hidden)]

    async def _cards(
        self, server_id: str, characters: Sequence[Character]
    ) -> tuple[CharacterCard, ...]:
        owners = sorted({c.owner_id for c in characters})
        names = await self._names(server_id, owners) if owners else {}
        return tuple(
            CharacterCard(
                name=c.name,
                description=c.description,
                owner=names.get(c.owner_id, c.owner_id),
                kinds=_kinds(c),
                primary=c.primary,
                media=c.media,
            )
            for c in characters
        )


def _private_marks(everyone: Sequence[Character]) -> frozenset[str]:
    """What gives a private character away in a job's references: its blobs (so a renamed
    character is still recognised) and its mention (``@name``, by name key)."""
    private = [c for c in everyone if c.visibility is Visibility.PRIVATE]
    return frozenset(
        [m.blob for c in private for m in c.media] + [f"@{name_key(c.name)}" for c in private]
    )


def _shows(job: Job, hidden: frozenset[str]) -> bool:
    """Whether a video may be shown: none of its references is a private character's."""
    return not any(r.blob in hidden or name_key(r.source) in hidden for r in job.spec.references)


def _kinds(c: Character) -> tuple[str, ...]:
    kinds = []
    if c.images:
        kinds.append("pictures")
    if c.video:
        kinds.append("video")
    if c.voice:
        kinds.append("voice")
    return tuple(kinds)


def _features(job: Job, character: Character) -> bool:
    blobs = {m.blob for m in character.media}
    key = f"@{name_key(character.name)}"
    return any(r.blob in blobs or name_key(r.source) == key for r in job.spec.references)


def _as_cards(jobs: Paged[Job], public: Sequence[Character]) -> Paged[VideoCard]:
    names = {name_key(c.name): c.name for c in public}
    cards = tuple(
        VideoCard(
            job_id=j.id,
            prompt=link_mentions(j.spec.original_prompt, names),
            provider=j.provider,
            duration=j.result_duration,
            resolution=j.spec.resolution,
            cost=j.cost_estimate,
            created_at=j.created_at,
            blob=j.result_blob or "",
            size=j.result_size,
        )
        for j in jobs.items
    )
    return Paged(cards, jobs.number, jobs.pages, jobs.total)


def link_mentions(prompt: str, names: Mapping[str, str]) -> tuple[PromptPiece, ...]:
    """Cut a prompt into text and mentions of the public characters ``names`` (by name key)."""
    pieces: list[PromptPiece] = []
    position = 0
    for match in MENTION.finditer(prompt):
        name = match.group("name")
        if name is None or name_key(name) not in names:
            continue
        if match.start() > position:
            pieces.append(PromptPiece(prompt[position : match.start()]))
        pieces.append(PromptPiece(match.group(0), names[name_key(name)]))
        position = match.end()
    if position < len(prompt):
        pieces.append(PromptPiece(prompt[position:]))
    return tuple(pieces)
