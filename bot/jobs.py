"""The job engine: persist, submit, wait (webhook and polling at once), fetch, deliver.

Rules that keep jobs from being lost or doubled (DESIGN.md):
- A job and each state change are written before their side effect; only forward moves exist,
  and a repeated or late event for a finished job changes nothing (the store enforces it).
- Webhooks are wake-ups: a checked webhook only makes the job ask its provider for its status.
- Nothing waits on a webhook alone: every submitted job also polls, backing off to a cap.
- On start every unfinished job resumes where it stood.

One asyncio task (a "driver") follows each job that may run; jobs over the per-user or
per-server limit of open jobs wait in order, their queue position shown in their status message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bot import fitting, media
from bot.commands import ref as command_ref
from bot.compose import relabel
from bot.errors import ProviderError, R2VError, Refusal, WebhookRejected
from bot.models import Actor, Destination, Job, JobSpec, JobState, MediaKind, OpenJob
from bot.ports import (
    BlobStore,
    Capabilities,
    ChatPort,
    JobStore,
    Metrics,
    NoMetrics,
    Provider,
    ProviderRequest,
    StagedReference,
    TaskState,
    TaskStatus,
)
from bot.quotas import Usage
from bot.status import delivery_text, status_text

log = logging.getLogger(__name__)

#: The least time between two progress edits of one status message.
PROGRESS_EDIT_SECONDS = 2.0

OPEN_STATES = frozenset({JobState.SUBMITTED, JobState.RUNNING, JobState.DELIVERING})


@dataclass(frozen=True, slots=True)
class EngineLimits:
    user_open_jobs: int = 2
    server_open_jobs: int = 10
    poll_initial_seconds: float = 5.0
    poll_max_seconds: float = 60.0
    poll_factor: float = 1.5
    job_timeout_seconds: float = 3600.0
    max_result_bytes: int = 500 * 1024 * 1024

    def poll_delay(self, polls: int) -> float:
        """Seconds before the next status poll: backing off from the first, capped."""
        delay = self.poll_initial_seconds * self.poll_factor ** min(polls, 50)
        return float(min(delay, self.poll_max_seconds))


def estimate_cost(spec: JobSpec, capabilities: Capabilities) -> float | None:
    """What the provider would charge: output seconds, plus the seconds of reference video it
    bills (as trimmed to its limit before sending)."""
    reference_seconds = sum(
        min(r.duration or 0.0, capabilities.max_reference_seconds)
        for r in spec.references
        if r.kind is MediaKind.VIDEO
    )
    return capabilities.estimate(spec.resolution, spec.duration, reference_seconds)


def fit_spec(spec: JobSpec, capabilities: Capabilities) -> JobSpec | None:
    """The spec as another provider must read it (its label style), or ``None`` if that
    provider cannot take it (too many references, duration or size out of its range)."""
    kinds = [r.kind for r in spec.references]
    if (
        len(kinds) > capabilities.max_references
        or any(kinds.count(kind) > most for kind, most in capabilities.per_kind_limits())
        or not capabilities.accepts_duration(spec.duration, MediaKind.VIDEO in kinds)
        or spec.resolution not in capabilities.resolutions
        or spec.aspect_ratio not in capabilities.aspect_ratios
    ):
        return None
    if not spec.template:
        return spec
    prompt, labels = relabel(spec.template, kinds, capabilities.label_style)
    if len(prompt) > capabilities.max_prompt_chars:
        return None
    references = tuple(
        replace(r, label=label) for r, label in zip(spec.references, labels, strict=True)
    )
    return replace(spec, prompt=prompt, references=references)


class UnknownJob(R2VError):
    code = "unknown_job"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_job_id() -> str:
    return "j" + secrets.token_hex(5)


class JobEngine:
    def __init__(
        self,
        store: JobStore,
        blobs: BlobStore,
        providers: Mapping[str, Provider],
        chats: Mapping[str, ChatPort],
        *,
        limits: EngineLimits | None = None,
        webhook_base: Callable[[str], str | None] = lambda provider: None,
        workdir: Path | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._providers = providers
        self._chats = chats
        self._limits = limits or EngineLimits()
        self._webhook_base = webhook_base
        self._workdir = workdir or Path(tempfile.gettempdir()) / "r2v-fitting"
        self._metrics = metrics or NoMetrics()
        self._clock = clock
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._shown_positions: dict[str, int] = {}
        self._progress_shown: dict[str, float] = {}
        self._pump_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume every unfinished job this process can deliver."""
        await self._pump()

    async def close(self) -> None:
        self._closing = True
        drivers = list(self._drivers.values())
        for task in drivers:
            task.cancel()
        for task in drivers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_idle(self, poll: float = 0.5) -> None:
        """Wait until no job this process delivers is unfinished (resumed ones included)."""
        while True:
            self._changed.clear()
            if not await self._served_unfinished():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=poll)

    # -- commands --------------------------------------------------------------------------

    def provider(self, name: str) -> Provider:
        provider = self._providers.get(name)
        if provider is None:
            known = ", ".join(sorted(self._providers)) or "none"
            raise Refusal(
                f"The provider “{name}” is not set up on this bot. Available: {known}.",
                code="invalid_option",
            )
        return provider

    @property
    def provider_names(self) -> Sequence[str]:
        return list(self._providers)

    async def create(
        self, actor: Actor, destination: Destination, spec: JobSpec, provider: str
    ) -> Job:
        """Write the job (queued), post its status message, then let it run when allowed."""
        now = self._clock()
        capabilities = self.provider(provider).capabilities
        job = Job(
            id=new_job_id(),
            server_id=actor.server_key,
            user_id=actor.user_id,
            provider=provider,
            state=JobState.QUEUED,
            spec=spec,
            destination=destination,
            created_at=now,
            updated_at=now,
            cost_estimate=estimate_cost(spec, capabilities),
        )
        blobs = [r.blob for r in spec.references]
        blobs += [r.voice_blob for r in spec.references if r.voice_blob]
        await self._store.create(job, blobs)
        position = await self._queue_position(job)
        try:
            posted = await self._chat(job).post_status(
                job, status_text(job, now=now, queue_position=position)
            )
        except BaseException:
            # Nowhere to tell the user about it: the job must not run unseen after a restart.
            await self._store.move(
                job.id, JobState.CANCELLED, reason="its status could not be posted"
            )
            raise
        job = await self._store.update(
            job.id, status_message_id=posted.message_id, thread_id=posted.thread_id
        )
        if position:
            self._shown_positions[job.id] = position
        await self._pump()
        return job

    async def usage(self, server_id: str, since: float) -> Usage:
        return await self._store.usage(server_id, since)

    async def job(self, job_id: str) -> Job | None:
        return await self._store.get(job_id)

    async def recent(self, actor: Actor, limit: int = 10) -> Sequence[Job]:
        return await self._store.recent_for_user(actor.server_key, actor.user_id, limit)

    async def cancel(self, actor: Actor, job_id: str) -> Job:
        job = await self._store.get(job_id.strip())
        if job is None or job.server_id != actor.server_key:
            raise Refusal(
                f"There is no job “{job_id}” in this server. {command_ref('jobs')} lists yours.",
                code="unknown_job",
            )
        if job.user_id != actor.user_id and not actor.is_admin:
            raise Refusal(
                "Only the job's owner or a server admin may cancel it.", code="not_allowed"
            )
        if job.state.is_final:
            raise Refusal(f"Job {job.id} has already ended ({job.state}).", code="job_finished")
        if job.state is JobState.DELIVERING:
            raise Refusal(
                f"Job {job.id} is already finished and being posted.", code="job_finished"
            )
        if job.task_id:
            with contextlib.suppress(R2VError):
                await self.provider(job.provider).cancel(job.task_id)
        moved = await self._advance(
            job.id,
            JobState.CANCELLED,
            detail=f"by {actor.user_id}",
            reason=f"cancelled by {actor.mention}",
        )
        if moved is None or moved.state is not JobState.CANCELLED:
            raise Refusal(f"Job {job.id} ended before it could be cancelled.", code="job_finished")
        self._wake(job.id)
        self._changed.set()
        await self._pump()
        return moved

    async def queue_position(self, job: Job) -> int | None:
        return await self._queue_position(job)

    # -- webhooks --------------------------------------------------------------------------

    async def on_webhook(
        self, provider: str, job_id: str, token: str, headers: Mapping[str, str], body: bytes
    ) -> None:
        """Check a provider's callback, then wake the job to refresh its status.

        Raises ``UnknownJob`` (404) or ``WebhookRejected`` (401); a finished job is left as it is.
        """
        job = await self._store.get(job_id)
        if job is None or job.provider != provider:
            raise UnknownJob(f"No job {job_id} for provider {provider}.")
        try:
            if not job.token_hash or not hmac.compare_digest(hash_token(token), job.token_hash):
                raise WebhookRejected("The webhook's token does not match its job.")
            await self.provider(provider).check_webhook(headers, body)
        except WebhookRejected:
            self._metrics.webhook_rejected(provider)
            raise
        if job.state.is_final:
            return
        if job.id not in self._drivers:
            await self._pump()
        self._wake(job.id)

    # -- scheduling ------------------------------------------------------------------------

    async def _served_unfinished(self) -> list[OpenJob]:
        return [j for j in await self._store.open_jobs() if j.platform in self._chats]

    async def _pump(self) -> None:
        """Start drivers for resumable jobs and for waiting jobs that fit the limits."""
        if self._closing:
            return
        async with self._pump_lock:
            jobs = await self._served_unfinished()
            running = [j for j in jobs if j.state in OPEN_STATES or j.id in self._drivers]
            per_user: dict[tuple[str, str], int] = {}
            per_server: dict[str, int] = {}
            for j in running:
                per_user[(j.server_id, j.user_id)] = per_user.get((j.server_id, j.user_id), 0) + 1
                per_server[j.server_id] = per_server.get(j.server_id, 0) + 1
            waiting: list[OpenJob] = []
            for job in jobs:
                if job.id in self._drivers:
                    continue
                if job.state is not JobState.QUEUED:
                    self._start_driver(job)
                    continue
                user_key = (job.server_id, job.user_id)
                if (
                    per_user.get(user_key, 0) < self._limits.user_open_jobs
                    and per_server.get(job.server_id, 0) < self._limits.server_open_jobs
                ):
                    per_user[user_key] = per_user.get(user_key, 0) + 1
                    per_server[job.server_id] = per_server.get(job.server_id, 0) + 1
                    self._shown_positions.pop(job.id, None)
                    self._start_driver(job)
                else:
                    waiting.append(job)
        await self._show_positions(waiting)

    async def _show_positions(self, waiting: Sequence[OpenJob]) -> None:
        positions: dict[str, int] = {}
        for open_job in waiting:
            positions[open_job.server_id] = positions.get(open_job.server_id, 0) + 1
            position = positions[open_job.server_id]
            if self._shown_positions.get(open_job.id) != position:
                self._shown_positions[open_job.id] = position
                job = await self._store.get(open_job.id)
                if job is not None:
                    await self._announce(job, queue_position=position)

    async def _queue_position(self, job: Job) -> int | None:
        """Where a queued job stands among its server's waiting jobs (None: it may run now)."""
        jobs = [j for j in await self._served_unfinished() if j.server_id == job.server_id]
        open_jobs = [j for j in jobs if j.state in OPEN_STATES or j.id in self._drivers]
        mine = sum(1 for j in open_jobs if j.user_id == job.user_id)
        waiting = [j for j in jobs if j.state is JobState.QUEUED and j.id not in self._drivers]
        if (
            len(waiting) <= 1
            and mine < self._limits.user_open_jobs
            and len(open_jobs) < self._limits.server_open_jobs
        ):
            return None
        ids = [j.id for j in waiting]
        return ids.index(job.id) + 1 if job.id in ids else None

    def _start_driver(self, job: OpenJob) -> None:
        self._wakes.setdefault(job.id, asyncio.Event())
        task = asyncio.create_task(self._drive(job.id), name=f"job-{job.id}")
        self._drivers[job.id] = task

    def _wake(self, job_id: str) -> None:
        event = self._wakes.get(job_id)
        if event is not None:
            event.set()

    # -- one job ---------------------------------------------------------------------------

    async def _drive(self, job_id: str) -> None:
        job = await self._store.get(job_id)
        try:
            while job is not None and not job.state.is_final:
                if job.state is JobState.QUEUED:
                    job = await self._submit(job)
                elif job.state in (JobState.SUBMITTED, JobState.RUNNING):
                    job = await self._follow(job)
                else:
                    job = await self._deliver(job)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s stopped on an unexpected error", job_id)
            await self._fail(job_id, "something went wrong on our side; please try again.")
        finally:
            self._drivers.pop(job_id, None)
            self._wakes.pop(job_id, None)
            self._progress_shown.pop(job_id, None)
            self._changed.set()
            if not self._closing:
                asyncio.get_running_loop().call_soon(self._schedule_pump)

    def _schedule_pump(self) -> None:
        if not self._closing:
            asyncio.create_task(self._pump(), name="job-pump")  # noqa: RUF006

    async def _submit(self, job: Job) -> Job | None:
        """Submit to the job's provider, moving down its fallbacks on capacity or server errors.

        An authentication error never moves on: it is the bot's configuration, reported as such.
        """
        errors: list[str] = []
        for name in (job.provider, *job.spec.fallbacks):
            provider = self._providers.get(name)
            if provider is None:
                errors.append(f"{name} is not set up on this bot")
                continue
            request_spec = fit_spec(job.spec, provider.capabilities)
            if request_spec is None:
                errors.append(f"{name} cannot take this request")
                continue
            if name != job.provider:
                log.info("job %s: moving from %s to %s", job.id, job.provider, name)
                job = await self._store.update(
                    job.id,
                    provider=name,
                    cost_estimate=estimate_cost(job.spec, provider.capabilities),
                )
                await self._announce(job)
            try:
                task_id = await self._submit_to(job, provider, request_spec)
            except ProviderError as exc:
                log.warning("job %s: %s did not take the job: %s", job.id, name, exc)
                if exc.retryable:
                    errors.append(exc.message)
                    continue
                return await self._fail(job.id, exc.message)
            moved = await self._advance(
                job.id,
                JobState.SUBMITTED,
                detail=f"{name}:{task_id}",
                task_id=task_id,
                submitted_at=self._clock(),
            )
            if moved is None or moved.state is not JobState.SUBMITTED:
                with contextlib.suppress(R2VError):  # cancelled while submitting
                    await provider.cancel(task_id)
            return moved
        return await self._fail(job.id, "no provider could take the job: " + "; ".join(errors))

    async def _submit_to(self, job: Job, provider: Provider, spec: JobSpec) -> str:
        token = secrets.token_urlsafe(24)
        base = self._webhook_base(job.provider) if provider.capabilities.webhooks else None
        webhook_url = f"{base}/hooks/{job.provider}/{job.id}?t={token}" if base else None
        await self._store.update(job.id, token_hash=hash_token(token))
        request = await self._request(job, spec, provider.capabilities, webhook_url)
        started = self._clock()
        task_id = await provider.submit(request)
        self._metrics.submit_latency(job.provider, self._clock() - started)
        return task_id

    async def _request(
        self, job: Job, spec: JobSpec, capabilities: Capabilities, webhook_url: str | None
    ) -> ProviderRequest:
        """The provider's request: references fitted to its limits, voices where it takes them."""
        references = []
        for ref in spec.references:
            blob, mime = await self._fitted(job.id, ref.blob, ref.kind, ref.mime, capabilities)
            voice_blob, voice_mime = None, None
            if ref.voice_blob and ref.voice_mime and capabilities.voice:
                voice_blob, voice_mime = await self._fitted(
                    job.id, ref.voice_blob, MediaKind.VOICE, ref.voice_mime, capabilities
                )
            references.append(
                StagedReference(
                    label=ref.label,
                    kind=ref.kind,
                    path=self._blobs.path(blob),
                    mime=mime,
                    voice_path=self._blobs.path(voice_blob) if voice_blob else None,
                    voice_mime=voice_mime,
                    blob=blob,
                    voice_blob=voice_blob,
                )
            )
        return ProviderRequest(
            job_id=job.id,
            prompt=spec.prompt,
            references=tuple(references),
            duration=spec.duration,
            resolution=spec.resolution,
            aspect_ratio=spec.aspect_ratio,
            seed=spec.seed,
            negative_prompt=spec.negative_prompt,
            webhook_url=webhook_url,
        )

    async def _fitted(
        self, job_id: str, blob: str, kind: MediaKind, mime: str, capabilities: Capabilities
    ) -> tuple[str, str]:
        """The blob as the provider may take it: itself, or a fitted copy kept with the job."""
        fitted = await fitting.fit_reference(
            self._blobs.path(blob), kind, mime, capabilities, self._workdir
        )
        if fitted is None:
            return blob, mime
        try:
            copy = await self._blobs.put_file(fitted.path)
        finally:
            fitted.path.unlink(missing_ok=True)
        await self._store.add_blob(job_id, copy, "fitted")
        log.info("job %s: reference %s", job_id, fitted.note)
        return copy, fitted.mime

    async def _follow(self, job: Job) -> Job | None:
        """Wait for a wake-up or the next poll, then refresh the job from its provider."""
        provider = self.provider(job.provider)
        wake = self._wakes.setdefault(job.id, asyncio.Event())
        delay = self._limits.poll_delay(job.poll_count)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=delay)
        wake.clear()
        current = await self._store.get(job.id)
        if current is None or current.state.is_final:
            return current
        job = current
        assert job.task_id is not None
        try:
            status = await provider.status(job.task_id)
        except ProviderError as exc:
            if not exc.retryable:
                return await self._fail(job.id, exc.message)
            log.info("job %s: status look-up failed, will retry: %s", job.id, exc)
            return await self._store.update(job.id, poll_count=job.poll_count + 1)
        job = await self._store.update(job.id, poll_count=job.poll_count + 1)
        return await self._apply(job, provider, status)

    async def _apply(self, job: Job, provider: Provider, status: TaskStatus) -> Job | None:
        if status.state is TaskState.SUCCEEDED:
            return await self._fetch(job, provider, status)
        if status.state is TaskState.FAILED:
            reason = status.error or "no reason given"
            return await self._fail(job.id, f"the provider could not make this video ({reason}).")
        if status.state is TaskState.CANCELLED:
            return await self._advance(
                job.id, JobState.CANCELLED, reason="cancelled at the provider"
            )
        started = job.submitted_at or job.created_at
        if self._clock() - started > self._limits.job_timeout_seconds:
            with contextlib.suppress(R2VError):
                await provider.cancel(job.task_id or "")
            minutes = round(self._limits.job_timeout_seconds / 60)
            return await self._fail(
                job.id, f"the provider did not finish within {minutes} minutes; try again later."
            )
        if status.state is TaskState.RUNNING and job.state is JobState.SUBMITTED:
            return await self._advance(job.id, JobState.RUNNING, progress=status.progress)
        if status.progress is not None and status.progress != job.progress:
            job = await self._store.update(job.id, progress=status.progress)
            # Chat platforms rate-limit edits (Discord: about 5 per 5 s a channel).
            now = self._clock()
            if now - self._progress_shown.get(job.id, 0.0) >= PROGRESS_EDIT_SECONDS:
                self._progress_shown[job.id] = now
                await self._announce(job)
        return job

    async def _fetch(self, job: Job, provider: Provider, status: TaskStatus) -> Job | None:
        """Stream the result into the blob store, check it, then move to delivering."""
        limit = self._limits.max_result_bytes
        try:
            async with self._blobs.writer(limit) as writer:
                async for chunk in provider.download(status):
                    await writer.write(chunk)
        except ProviderError as exc:
            if exc.retryable:
                log.info("job %s: download failed, will retry: %s", job.id, exc)
                return job
            return await self._fail(job.id, f"the result could not be fetched: {exc.message}")
        except R2VError as exc:
            if exc.code == "too_large":
                return await self._fail(
                    job.id,
                    f"the provider's video is larger than the {limit / (1024 * 1024):.1f} MB "
                    "limit.",
                )
            raise
        blob = writer.sha256
        assert blob is not None
        await self._store.add_blob(job.id, blob, "result")
        try:
            info = await media.inspect_result(self._blobs.path(blob))
        except R2VError as exc:
            return await self._fail(job.id, f"the provider's video is unusable: {exc.message}")
        self._metrics.time_to_result(job.provider, self._clock() - (job.submitted_at or 0.0))
        return await self._advance(
            job.id,
            JobState.DELIVERING,
            result_blob=blob,
            result_size=info.size,
            result_duration=info.duration,
            progress=1.0,
        )

    async def _deliver(self, job: Job) -> Job | None:
        assert job.result_blob is not None
        chat = self._chat(job)
        await chat.deliver_video(job, self._blobs.path(job.result_blob), delivery_text(job))
        self._metrics.delivered(job.destination.platform)
        return await self._advance(job.id, JobState.DELIVERED)

    async def _fail(self, job_id: str, reason: str) -> Job | None:
        return await self._advance(job_id, JobState.FAILED, detail=reason, reason=reason)

    async def _advance(
        self, job_id: str, state: JobState, *, detail: str = "", **fields: object
    ) -> Job | None:
        """Move the job forward (written first), then tell its chat and count it.

        Answers the job as it now stands: moved, or unchanged when the move was not forward.
        """
        moved = await self._store.move(job_id, state, detail=detail, **fields)
        if moved is None:
            return await self._store.get(job_id)
        if moved.state.is_final:
            self._metrics.job_finished(moved.provider, str(moved.state))
        await self._announce(moved)
        return moved

    # -- talking to chat -------------------------------------------------------------------

    def _chat(self, job: Job) -> ChatPort:
        return self._chats[job.destination.platform]

    async def _announce(self, job: Job, *, queue_position: int | None = None) -> None:
        """Edit the job's status message; a chat failure never stops the job."""
        chat = self._chats.get(job.destination.platform)
        if chat is None:
            return
        try:
            await chat.edit_status(
                job, status_text(job, now=self._clock(), queue_position=queue_position)
            )
        except Exception:
            log.warning("job %s: could not update its status message", job.id, exc_info=True)
