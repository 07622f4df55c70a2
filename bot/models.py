"""Plain values shared by the core and its adapters: characters, media, jobs, requests, replies."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class MediaKind(enum.StrEnum):
    IMAGE = "image"
    VIDEO = "video"
    VOICE = "voice"

    @property
    def is_visual(self) -> bool:
        return self is not MediaKind.VOICE


@dataclass(frozen=True, slots=True)
class MediaInfo:
    """What a media check found in a file's content (never taken from its name)."""

    kind: MediaKind
    mime: str
    size: int
    width: int | None = None
    height: int | None = None
    duration: float | None = None

    @property
    def extension(self) -> str:
        return MIME_EXTENSIONS.get(self.mime, ".bin")

    def describe(self) -> str:
        parts = [self.mime.split("/")[-1].upper()]
        if self.width and self.height:
            parts.append(f"{self.width}×{self.height}")
        if self.duration is not None:
            parts.append(f"{self.duration:.1f} s")
        parts.append(_human_size(self.size))
        return ", ".join(parts)


MIME_EXTENSIONS: Mapping[str, str] = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/bmp": ".bmp",
    "image/webp": ".webp",
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "audio/wav": ".wav",
    "audio/mpeg": ".mp3",
}


def _human_size(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MB"
    if size >= 1024:
        return f"{size / 1024:.0f} KB"
    return f"{size} B"


@dataclass(frozen=True, slots=True)
class CharacterMedia:
    """One stored item of a character: a blob (sha256 name) and what was found in it."""

    kind: MediaKind
    blob: str
    info: MediaInfo
    position: int = 0
    id: int | None = None


class Visibility(enum.StrEnum):
    PUBLIC = "public"
    PRIVATE = "private"


@dataclass(frozen=True, slots=True)
class NewCharacter:
    """A character to be stored (an import writes several in one transaction)."""

    name: str
    owner_id: str
    description: str
    visibility: Visibility
    media: tuple[CharacterMedia, ...]


@dataclass(frozen=True, slots=True)
class Character:
    id: int
    server_id: str
    name: str
    owner_id: str
    description: str = ""
    visibility: Visibility = Visibility.PUBLIC
    media: tuple[CharacterMedia, ...] = ()
    created_at: float = 0.0

    @property
    def images(self) -> tuple[CharacterMedia, ...]:
        return tuple(m for m in self.media if m.kind is MediaKind.IMAGE)

    @property
    def video(self) -> CharacterMedia | None:
        return next((m for m in self.media if m.kind is MediaKind.VIDEO), None)

    @property
    def voice(self) -> CharacterMedia | None:
        return next((m for m in self.media if m.kind is MediaKind.VOICE), None)

    @property
    def primary(self) -> CharacterMedia | None:
        """The first visual item: the one that stands for the character in a request."""
        return next((m for m in self.media if m.kind.is_visual), None)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who sent a command, and in which server (Discord guild, Slack team, console server)."""

    platform: str
    server_id: str
    user_id: str
    is_admin: bool = False
    #: How chat shows the person (on Slack a mention the client renders).
    display_name: str = ""
    #: The person's name as a reader outside chat knows it (the gallery's owners), when the
    #: platform gave one.
    name: str = ""

    @property
    def server_key(self) -> str:
        """The server's id in our storage: platform and the platform's own id."""
        return f"{self.platform}:{self.server_id}"

    @property
    def mention(self) -> str:
        return self.display_name or self.user_id


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a job's messages go. Stored with the job so any process can deliver it."""

    platform: str
    server_id: str
    channel_id: str
    user_id: str
    thread_id: str | None = None
    status_message_id: str | None = None


ChunkSource = Callable[[], AsyncIterator[bytes]]


@dataclass(frozen=True, slots=True)
class IncomingFile:
    """A file attached to a command, not yet downloaded.

    ``open`` streams its bytes; the adapter decides how (a local read, a download from the
    platform's CDN after the host was checked). ``declared_size`` lets an oversized file be
    refused before a byte is read; the real size is counted while reading all the same.
    """

    name: str
    open: ChunkSource
    declared_size: int | None = None


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """One command as the core sees it: who, what, options, files. No platform types."""

    actor: Actor
    command: str
    options: Mapping[str, Any] = field(default_factory=dict)
    #: Where it was sent; inside a thread, ``channel_id`` is the thread's parent channel.
    channel_id: str = ""
    thread_id: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """The core's answer to a command. ``code`` is set when the command was refused."""

    text: str
    code: str | None = None
    job_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    #: A file that goes with the reply (a roster export), and a signed link to the same file
    #: for platforms where it is over the upload cap (``None`` without a public address).
    file: Path | None = None
    file_link: str | None = None

    @property
    def is_error(self) -> bool:
        return self.code is not None


class JobState(enum.StrEnum):
    QUEUED = "queued"
    SUBMITTED = "submitted"
    RUNNING = "running"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    def can_move_to(self, new: JobState) -> bool:
        """Only forward moves: a repeated or late event never takes a job back."""
        return new in _FORWARD[self]


FINAL_STATES = frozenset({JobState.DELIVERED, JobState.FAILED, JobState.CANCELLED})

_FORWARD: Mapping[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.SUBMITTED, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUBMITTED: frozenset(
        {JobState.RUNNING, JobState.DELIVERING, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.RUNNING: frozenset({JobState.DELIVERING, JobState.FAILED, JobState.CANCELLED}),
    JobState.DELIVERING: frozenset({JobState.DELIVERED, JobState.FAILED}),
    JobState.DELIVERED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class JobReference:
    """One reference slot of a job: a stored blob, its kind, and the voice riding with it."""

    label: str
    kind: MediaKind
    blob: str
    mime: str
    source: str
    voice_blob: str | None = None
    voice_mime: str | None = None
    duration: float | None = None


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a job asks for, fixed when it is created (the composed request and its options)."""

    prompt: str
    original_prompt: str
    references: tuple[JobReference, ...]
    duration: int
    resolution: str
    aspect_ratio: str
    seed: int | None = None
    negative_prompt: str = ""
    #: The prompt with ``{0}``, ``{1}``… where the slot labels go (``str.format`` escaping), so
    #: the prompt can be relabelled for another provider's label style on failover.
    template: str = ""
    #: Providers to move to, in order, when the chosen one fails for capacity or server errors.
    fallbacks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OpenJob:
    """What the scheduler needs of an unfinished job: no spec, so a scan of many stays cheap."""

    id: str
    server_id: str
    user_id: str
    state: JobState
    platform: str


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    server_id: str
    user_id: str
    provider: str
    state: JobState
    spec: JobSpec
    destination: Destination
    created_at: float
    updated_at: float
    task_id: str | None = None
    token_hash: str | None = None
    reason: str | None = None
    progress: float | None = None
    result_blob: str | None = None
    result_size: int | None = None
    result_duration: float | None = None
    submitted_at: float | None = None
    finished_at: float | None = None
    next_poll_at: float | None = None
    poll_count: int = 0
    cost_estimate: float | None = None
    #: Tries at the two side effects that must not be repeated blindly after a crash: handing
    #: the job to a (paid) provider, and posting its video. Each is written before it is made.
    submit_attempts: int = 0
    delivery_attempts: int = 0


@dataclass(frozen=True, slots=True)
class Claim:
    """What one scheduling round gave an instance: jobs it now holds the lease of (to drive),
    and jobs still waiting for a free slot, in queue order (to show their place)."""

    taken: tuple[OpenJob, ...]
    waiting: tuple[OpenJob, ...]
