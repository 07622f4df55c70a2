"""The ports: small protocols the core talks through, which adapters and storage implement.

The core never imports an adapter; the composition root (``bot.app``) hands it objects that fit
these shapes. Tests use the real implementations against loopback fakes of outside services.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bot.models import (
    Character,
    CharacterMedia,
    Claim,
    Job,
    JobState,
    MediaKind,
    NewCharacter,
    OpenJob,
    Visibility,
)
from bot.quotas import Admission, ServerSettings, Usage


class LabelStyle(enum.StrEnum):
    """How a provider names reference slots in a prompt (its documents disagree, so a setting)."""

    SEPARATE = "separate"  # Image 1, Image 2, Video 1
    VIDEOS_FIRST = "videos_first"  # Video 1, Video 2, Image 3
    COMPACT = "compact"  # Image1, Video1
    CHARACTER = "character"  # character1, character2


@dataclass(frozen=True, slots=True)
class PriceTable:
    """What a provider charges, in USD: per second of output by resolution, exact prices where
    the provider lists them by duration, and whether seconds of reference video are billed too."""

    per_second: Mapping[str, float] = field(default_factory=dict)
    by_duration: Mapping[tuple[str, int], float] = field(default_factory=dict)
    bills_reference_video: bool = False

    def estimate(
        self, resolution: str, seconds: int, reference_video_seconds: float = 0.0
    ) -> float | None:
        exact = self.by_duration.get((resolution, seconds))
        rate = self.per_second.get(resolution)
        if exact is None and rate is None:
            return None
        price = exact if exact is not None else (rate or 0.0) * seconds
        if self.bills_reference_video and rate is not None:
            price += rate * reference_video_seconds
        return round(price, 4)


FREE = PriceTable(per_second={"720p": 0.0, "1080p": 0.0})


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider accepts. The composer and the media fitting read limits from here."""

    name: str
    max_references: int = 5
    image_durations: tuple[int, int] = (2, 15)
    video_durations: tuple[int, int] = (2, 10)
    resolutions: tuple[str, ...] = ("720p", "1080p")
    aspect_ratios: tuple[str, ...] = ("16:9", "9:16", "1:1", "4:3", "3:4")
    voice: bool = True
    first_frame: bool = False
    label_style: LabelStyle = LabelStyle.SEPARATE
    webhooks: bool = True
    needs_public_media: bool = False
    max_prompt_chars: int = 5000
    max_negative_chars: int = 500
    prices: PriceTable = FREE
    #: Limits references are fitted to before submission (resized, trimmed, re-encoded).
    max_image_side: int = 8000
    max_image_bytes: int = 20 * 1024 * 1024
    max_video_bytes: int = 100 * 1024 * 1024
    max_reference_seconds: float = 5.0
    max_voice_seconds: float = 10.0
    #: Some providers take fewer images or videos than references in all (``None``: no limit).
    max_images: int | None = None
    max_videos: int | None = None
    #: Some need a kind: a field their documents mark required (WaveSpeed's ``videos``).
    min_images: int = 0
    min_videos: int = 0
    #: The exact lengths a provider makes, when it makes only some (``None``: any in range).
    durations: tuple[int, ...] | None = None
    #: Whether sending the same job twice makes one task (the provider dedupes by job id). When
    #: not, a submission whose outcome a crash hid is never sent again: it may have been billed.
    idempotent_submit: bool = False

    def accepts_duration(self, seconds: int, has_video: bool) -> bool:
        low, high = self.durations_for(has_video)
        return low <= seconds <= high and (self.durations is None or seconds in self.durations)

    def kind_range(self, kind: MediaKind) -> tuple[int, int | None]:
        """How many references of ``kind`` the provider takes: at least, at most (``None``:
        only ``max_references`` bounds it)."""
        if kind is MediaKind.IMAGE:
            return self.min_images, self.max_images
        if kind is MediaKind.VIDEO:
            return self.min_videos, self.max_videos
        return 0, None

    def misfit(
        self, kinds: Sequence[MediaKind], duration: int, resolution: str, aspect_ratio: str
    ) -> str | None:
        """Why this provider cannot take a request with references of these kinds and these
        options, in a few words (``None``: it can). One check for every provider, hosted or our
        own worker, so a job is refused or moved before anything is sent or paid for."""
        if len(kinds) > self.max_references:
            return f"takes at most {self.max_references} references"
        for kind in (MediaKind.IMAGE, MediaKind.VIDEO):
            count = sum(1 for k in kinds if k is kind)
            least, most = self.kind_range(kind)
            if count < least:
                return f"needs at least {least} reference {kind.value}{_plural(least)}"
            if most is not None and count > most:
                return f"takes at most {most} reference {kind.value}{_plural(most)}"
        if not self.accepts_duration(duration, MediaKind.VIDEO in kinds):
            low, high = self.durations_for(MediaKind.VIDEO in kinds)
            made = self.durations or range(low, high + 1)
            return f"makes {', '.join(str(d) for d in made if low <= d <= high)} s videos"
        if resolution not in self.resolutions:
            return f"makes {' or '.join(self.resolutions)} only"
        if aspect_ratio not in self.aspect_ratios:
            return f"makes {', '.join(self.aspect_ratios)} frames only"
        return None

    @property
    def price_known(self) -> bool:
        """Whether a job's cost can be estimated (else the daily budget cannot limit it)."""
        return bool(self.prices.per_second or self.prices.by_duration)

    def durations_for(self, has_video: bool) -> tuple[int, int]:
        return self.video_durations if has_video else self.image_durations

    def estimate(
        self, resolution: str, seconds: int, reference_video_seconds: float = 0.0
    ) -> float | None:
        return self.prices.estimate(resolution, seconds, reference_video_seconds)


@dataclass(frozen=True, slots=True)
class StagedReference:
    """A reference as handed to a provider: a local file the provider stages as it must."""

    label: str
    kind: MediaKind
    path: Path
    mime: str
    voice_path: Path | None = None
    voice_mime: str | None = None
    #: The blobs behind ``path`` and ``voice_path``: signed ``/media`` links name them.
    blob: str = ""
    voice_blob: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    job_id: str
    prompt: str
    references: tuple[StagedReference, ...]
    duration: int
    resolution: str
    aspect_ratio: str
    seed: int | None
    negative_prompt: str
    webhook_url: str | None


#: Set by the engine while a provider's ``submit`` runs: the provider awaits it right before it
#: sends the request that starts (and may bill) a task, after uploading the references. The
#: engine records the attempt there, so a crash during the uploads leaves nothing to doubt,
#: and a crash after it leaves a job that is never sent again blindly.
BEFORE_BILLABLE_REQUEST: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar(
    "r2v_before_billable_request", default=None
)


class TaskState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A provider's answer about one task, mapped to our few states.

    ``raw`` is the provider's own status word, kept so a job that times out can name the last one
    seen; ``cost`` is the real charge in USD where the provider reports it (Together's
    ``outputs.cost``), which then replaces the job's estimate in the budget."""

    state: TaskState
    progress: float | None = None
    result_url: str | None = None
    error: str | None = None
    queue_position: int | None = None
    raw: str | None = None
    cost: float | None = None


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """``r2v doctor``'s answer for one provider: is its key accepted, can it use webhooks."""

    ok: bool
    detail: str
    webhooks: bool = False


class Provider(Protocol):
    """A reference-to-video service: hosted, our own GPU worker, or the offline storyboard."""

    @property
    def capabilities(self) -> Capabilities: ...

    async def start(self) -> None:
        """Get ready: fetch signing secrets, resume local work. Called once at start."""
        ...

    async def close(self) -> None: ...

    async def check_key(self) -> KeyCheck:
        """One cheap authenticated call: is the key accepted?"""
        ...

    async def submit(self, request: ProviderRequest) -> str:
        """Start a task and answer its id. Never retried blindly after a timeout."""
        ...

    async def status(self, task_id: str) -> TaskStatus: ...

    async def cancel(self, task_id: str) -> bool:
        """Ask the provider to stop; answer whether it said it would."""
        ...

    async def check_webhook(self, headers: Mapping[str, str], body: bytes) -> None:
        """Raise ``WebhookRejected`` unless the provider's signature checks out."""
        ...

    def download(self, status: TaskStatus) -> AsyncIterator[bytes]:
        """Stream the finished MP4's bytes."""
        ...


@dataclass(frozen=True, slots=True)
class PostedStatus:
    """Where a status message landed (a thread may have been made for it)."""

    message_id: str | None
    thread_id: str | None = None


class ChatPort(Protocol):
    """A chat platform, as the job engine needs it: post and edit status, deliver a video."""

    platform: str

    async def post_status(self, job: Job, text: str) -> PostedStatus: ...

    async def edit_status(self, job: Job, text: str) -> None: ...

    async def deliver_video(self, job: Job, video: Path, text: str) -> None:
        """Post the video where the job asked for it, marked with the job's id so that
        ``find_delivery`` can recognise it (Discord: message nonce and a marker in the text;
        Slack: message metadata; console: the outbox file named by job id)."""
        ...

    async def find_delivery(self, job: Job) -> bool:
        """Whether the job's video is already posted. The engine asks this before posting again
        after a crash left a delivery attempt without its outcome (exactly-once posting)."""
        ...


class BlobWriter(Protocol):
    """An open blob being written; ``sha256`` is set once its ``writer`` block exits cleanly."""

    async def write(self, chunk: bytes) -> None: ...

    @property
    def size(self) -> int: ...

    @property
    def sha256(self) -> str | None: ...


class BlobStore(Protocol):
    """Content-addressed files: a blob's name is the sha256 of its bytes."""

    async def local_path(self, blob: str) -> Path:
        """A local file holding the blob's bytes, for media work (fitting, checks, uploads to
        chat). Local files: the blob itself; an object store: a cached copy, fetched (streamed)
        when missing. A blob that is not stored raises ``FileNotFoundError``, here (an object
        store) or when the path is opened (local files)."""
        ...

    async def put_file(self, source: Path) -> str:
        """Store a file's content and answer its sha256; the source is left as it was."""
        ...

    def writer(self, max_bytes: int) -> AbstractAsyncContextManager[BlobWriter]:
        """Stream bytes into a new blob, refusing more than ``max_bytes`` (``BlobTooLarge``).

        The blob exists under its real name only once the block exits cleanly."""
        ...

    async def discard_unused(self, blobs: Sequence[str]) -> None:
        """Remove those of the blobs that nothing refers to any more."""
        ...


class CharacterStore(Protocol):
    async def ensure_server(self, server_id: str, platform: str) -> None: ...

    async def get(self, server_id: str, name: str) -> Character | None: ...

    async def list(self, server_id: str, *, owner_id: str | None = None) -> Sequence[Character]: ...

    async def count(self, server_id: str) -> int: ...

    async def create(
        self,
        server_id: str,
        name: str,
        owner_id: str,
        description: str,
        visibility: Visibility,
        media: Sequence[CharacterMedia],
    ) -> Character:
        """Insert a character and its media in one transaction; ``NameTaken`` on a clash."""
        ...

    async def create_many(
        self, server_id: str, drafts: Sequence[NewCharacter]
    ) -> Sequence[Character]:
        """Insert several characters in one transaction: all, or none."""
        ...

    async def add_media(self, character_id: int, media: CharacterMedia) -> None: ...

    async def remove_media(self, media_id: int) -> None: ...

    async def rename(self, character_id: int, new_name: str) -> None: ...

    async def delete(self, character_id: int) -> None: ...


class JobStore(Protocol):
    """Jobs and their leases. Writes given ``lease=`` (an instance id) are fenced: they raise
    ``LeaseLost`` and change nothing unless that instance still holds the job's lease."""

    async def create(
        self, job: Job, blobs: Sequence[str], *, admit: Admission | None = None
    ) -> None:
        """Write a new job (state ``queued``) and the blobs it holds on to; with ``admit``, only
        if its check passes on the usage counted in the same transaction (else it raises and
        nothing is written)."""
        ...

    async def get(self, job_id: str) -> Job | None: ...

    async def move(
        self,
        job_id: str,
        new: JobState,
        *,
        detail: str = "",
        lease: str | None = None,
        **fields: object,
    ) -> Job | None:
        """Move a job forward and record the event, in one transaction.

        Answers the updated job, or ``None`` when the move is not forward from the stored state
        (the job is then unchanged). A final state ends the job's lease."""
        ...

    async def update(self, job_id: str, *, lease: str | None = None, **fields: object) -> Job: ...

    async def claim(
        self,
        owner: str,
        lease_seconds: float,
        *,
        platforms: Sequence[str],
        user_open_jobs: int,
        server_open_jobs: int,
    ) -> Claim:
        """Take the leases of free jobs that may run now (limits counted in the database)."""
        ...

    async def renew(self, owner: str, lease_seconds: float) -> set[str]:
        """Extend ``owner``'s unexpired leases; answers the job ids it still holds."""
        ...

    async def release(self, owner: str, job_ids: Sequence[str] | None = None) -> int: ...

    async def waiting(self, server_id: str) -> Sequence[str]:
        """The server's queued jobs nobody has taken, oldest first."""
        ...

    async def active_count(self, server_id: str, user_id: str) -> tuple[int, int]:
        """Slots held now by the user and by the whole server."""
        ...

    async def unfinished(self) -> Sequence[Job]: ...

    async def open_jobs(self) -> Sequence[OpenJob]:
        """The unfinished jobs, oldest first, without their specs (the scheduler's scan)."""
        ...

    async def recent_for_user(self, server_id: str, user_id: str, limit: int) -> Sequence[Job]: ...

    async def add_blob(self, job_id: str, blob: str, role: str) -> None: ...

    async def usage(self, server_id: str, since: float) -> Usage:
        """Jobs created since ``since`` that reached (or are waiting for) a provider."""
        ...

    async def delivered(self, server_id: str, limit: int) -> Sequence[Job]:
        """The server's delivered jobs that kept their video, newest first (the gallery)."""
        ...

    async def delivered_result(self, server_id: str, blob: str) -> Job | None:
        """The server's latest delivered job whose video is ``blob`` (the gallery's files)."""
        ...


class Wakeups(Protocol):
    """How instances wake each other: a webhook on one wakes the job's owner on another
    (PostgreSQL ``LISTEN/NOTIFY``; in-process on SQLite). Payloads are job ids, or ``*``:
    "look for jobs to take over" (an instance released its leases)."""

    async def notify(self, payload: str) -> None: ...

    def listen(self) -> AsyncIterator[str]: ...


class PeopleStore(Protocol):
    """People's names per server, for pages outside chat where an id means nothing."""

    async def remember(self, server_id: str, user_id: str, display_name: str) -> None: ...

    async def names(self, server_id: str, user_ids: Sequence[str]) -> Mapping[str, str]: ...


class ServerStore(Protocol):
    async def settings(self, server_id: str) -> ServerSettings: ...

    async def save_settings(self, server_id: str, platform: str, value: ServerSettings) -> None: ...


class Metrics(Protocol):
    """What the bot counts and times; an adapter exports it (Prometheus at ``/metrics``)."""

    def job_finished(self, provider: str, state: str) -> None: ...

    def submit_latency(self, provider: str, seconds: float) -> None: ...

    def time_to_result(self, provider: str, seconds: float) -> None: ...

    def webhook_rejected(self, provider: str) -> None: ...

    def delivered(self, platform: str) -> None: ...

    def retried(self, provider: str) -> None: ...

    def key_rejected(self, provider: str) -> None:
        """A provider refused the bot's key (HTTP 401/403): a configuration error."""
        ...


class NoMetrics:
    """Counts nothing: the default when no exporter is wired."""

    def job_finished(self, provider: str, state: str) -> None:
        return None

    def submit_latency(self, provider: str, seconds: float) -> None:
        return None

    def time_to_result(self, provider: str, seconds: float) -> None:
        return None

    def webhook_rejected(self, provider: str) -> None:
        return None

    def delivered(self, platform: str) -> None:
        return None

    def retried(self, provider: str) -> None:
        return None

    def key_rejected(self, provider: str) -> None:
        return None


def _plural(count: int) -> str:
    return "" if count == 1 else "s"
