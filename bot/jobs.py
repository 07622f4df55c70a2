"""The job engine: persist, submit, wait (webhook and polling at once), fetch, deliver.

Rules that keep jobs from being lost or doubled (DESIGN.md):
- A job and each state change are written before their side effect; only forward moves exist,
  and a repeated or late event for a finished job changes nothing (the store enforces it).
- Webhooks are wake-ups: a checked webhook only makes the job ask its provider for its status.
- Nothing waits on a webhook alone: every submitted job also polls, backing off to a cap.
- On start every unfinished job resumes where it stood.

Several instances (DESIGN.md): an instance drives a job only while it holds the job's lease,
taken in the database together with the counting of open jobs per user and per server (so the
limits hold across instances) and renewed every third of the lease. Every write of a driver is
fenced by that lease: an instance that paused past its lease finds the job gone and stops. A
webhook may land on any instance: its token is an HMAC checked without the database, and the
owner is woken through ``Wakeups`` (PostgreSQL ``NOTIFY``). The two side effects that must not
happen twice, submitting to a paid provider and posting the video, are recorded as attempts
before they are made; after a crash the next owner does not re-submit blindly and asks the
platform whether the video is already posted.

One asyncio task (a "driver") follows each job held; jobs over the per-user or per-server limit
of open jobs wait in order, their queue position shown in their status message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import secrets
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bot import fitting, media
from bot.commands import ref as command_ref
from bot.compose import relabel
from bot.errors import (
    LeaseLost,
    ProviderError,
    R2VError,
    Refusal,
    StorageUnavailable,
    WebhookRejected,
)
from bot.memory import MemoryBudget
from bot.models import Actor, Destination, Job, JobSpec, JobState, MediaKind, OpenJob
from bot.ports import (
    BEFORE_BILLABLE_REQUEST,
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
    Wakeups,
)
from bot.quotas import Admission, Usage
from bot.status import delivery_text, status_text
from bot.wakeups import LocalWakeups

log = logging.getLogger(__name__)

#: The least time between two progress edits of one status message.
PROGRESS_EDIT_SECONDS = 2.0

#: What a dry run, /settings and ``r2v doctor`` say of a provider without a known price.
PRICE_UNKNOWN = "price unknown: the daily budget cannot limit it"


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
    provider cannot take it (``Capabilities.misfit``: kinds and counts of references, duration,
    size)."""
    kinds = [r.kind for r in spec.references]
    if capabilities.misfit(kinds, spec.duration, spec.resolution, spec.aspect_ratio) is not None:
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


#: Backoff while the database or the blob store is unavailable (a transient fault).
TRANSIENT_FIRST_SECONDS = 1.0
TRANSIENT_MAX_SECONDS = 30.0


def hash_token(token: str) -> str:
    """How per-job tokens of jobs submitted before shared-secret tokens were stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def webhook_token(secret: bytes, provider: str, job_id: str) -> str:
    """The token in a job's webhook URL: an HMAC of the job id and provider under the secret
    every instance shares, so any instance checks it without the database."""
    mac = hmac.new(secret, f"{provider}/{job_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:24]).decode("ascii")


def new_job_id() -> str:
    return "j" + secrets.token_hex(5)


class JobEngine:
    """Drives the jobs this instance holds the lease of; see the module's docstring."""

    def __init__(
        self,
        store: JobStore,
        blobs: BlobStore,
        providers: Mapping[str, Provider],
        chats: Mapping[str, ChatPort],
        *,
        secret: bytes,
        wakeups: Wakeups | None = None,
        instance_id: str = "local",
        lease_seconds: float = 30.0,
        limits: EngineLimits | None = None,
        webhook_base: Callable[[str], str | None] = lambda provider: None,
        workdir: Path | None = None,
        memory: MemoryBudget | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._providers = providers
        self._chats = chats
        self._secret = secret
        self._wakeups: Wakeups = wakeups or LocalWakeups()
        self.instance_id = instance_id
        self._lease_seconds = lease_seconds
        self._limits = limits or EngineLimits()
        self._webhook_base = webhook_base
        self._workdir = workdir or Path(tempfile.gettempdir()) / "r2v-fitting"
        #: The process's decode budget: fitting references decodes images too.
        self._memory = memory
        self._metrics = metrics or NoMetrics()
        self._clock = clock
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._busy: set[str] = set()
        self._shown_positions: dict[str, int] = {}
        self._progress_shown: dict[str, float] = {}
        self._rejected_keys: dict[str, str] = {}
        self._provider_queue_shown: dict[str, int] = {}
        self._pump_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._closing = False
        self._background: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        """True once ``drain`` began: no new commands or leases are taken."""
        return self._closing

    async def start(self) -> None:
        """Take (and resume) every job this instance may drive, then keep doing so: renew the
        leases held, take over jobs whose owner died, and listen for wake-ups."""
        listening = asyncio.Event()
        self._background = [
            asyncio.create_task(self._listen(listening), name="job-wakeups"),
            asyncio.create_task(self._keep_leases(), name="job-leases"),
        ]
        await listening.wait()
        await self._pump()

    async def drain(self, grace_seconds: float) -> None:
        """Stop for a rolling deploy: take nothing new, let each side effect in hand (a
        submission, a download, a post) finish within ``grace_seconds``, stop following the
        rest, and release every lease so that another instance takes the jobs over at once."""
        if self._closing:
            return
        self._closing = True
        for task in self._background:
            task.cancel()
        deadline = asyncio.get_running_loop().time() + grace_seconds
        for job_id, task in list(self._drivers.items()):
            if job_id not in self._busy:
                task.cancel()
        busy = [task for job_id, task in self._drivers.items() if job_id in self._busy]
        if busy:
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            await asyncio.wait(busy, timeout=remaining)
        await self._stop_drivers()
        with contextlib.suppress(Exception):
            released = await self._store.release(self.instance_id)
            if released:
                log.info("released %d job(s) to the other instances", released)
                await self._wakeups.notify("*")

    async def close(self) -> None:
        """Stop at once (tests, a failed start); leases run out by themselves."""
        self._closing = True
        for task in self._background:
            task.cancel()
        await self._stop_drivers()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _stop_drivers(self) -> None:
        drivers = [*self._drivers.values(), *self._side_tasks]
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
            if not self._drivers:
                await self._pump()

    async def _listen(self, listening: asyncio.Event) -> None:
        """Wake-ups from webhooks (on any instance) and from instances releasing their jobs."""
        stream = self._wakeups.listen()
        try:
            first = asyncio.ensure_future(anext(stream))
            listening.set()
            payload = await first
            while True:
                if payload in self._drivers:
                    self._wake(payload)
                elif not self._closing:
                    await self._pump()
                payload = await anext(stream)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the wake-up listener stopped; jobs are still polled")
        finally:
            listening.set()
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]

    async def _keep_leases(self) -> None:
        """Every third of a lease: renew ours, drop jobs we lost, take over free ones."""
        period = self._lease_seconds / 3
        while not self._closing:
            await asyncio.sleep(period)
            try:
                held = await self._store.renew(self.instance_id, self._lease_seconds)
                for job_id, task in list(self._drivers.items()):
                    if job_id not in held and job_id not in self._busy and not task.done():
                        log.warning("job %s: lease lost; another instance drives it now", job_id)
                        task.cancel()
                await self._pump()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not renew or take leases, will retry: %s", exc)

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

    def unpriced_providers(self) -> list[str]:
        """Providers with no published price and none in ``R2V_PRICES``."""
        return [n for n, p in self._providers.items() if not p.capabilities.price_known]

    def key_problem(self, name: str) -> str | None:
        """Why the provider's key cannot be used (it was rejected since start), or ``None``.

        Keys are read once at start, so a rejected one stays rejected until the operator fixes
        it and restarts: new commands are refused instead of being queued to fail."""
        return self._rejected_keys.get(name)

    async def create(
        self,
        actor: Actor,
        destination: Destination,
        spec: JobSpec,
        provider: str,
        *,
        note: str = "",
        admit: Admission | None = None,
    ) -> Job:
        """Write the job (queued), post its status message, then let it run when allowed.

        ``note`` says why the job runs on this provider when it is not the first choice; it is
        kept in the job's ``reason`` (shown in its status) until a failure reason replaces it."""
        if self._closing:
            raise Refusal(
                "This bot is restarting; send the command again in a few seconds.",
                code="shutting_down",
            )
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
            reason=note or None,
        )
        blobs = [r.blob for r in spec.references]
        blobs += [r.voice_blob for r in spec.references if r.voice_blob]
        await self._store.create(job, blobs, admit=admit)
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
        # A person's command, from any instance: not fenced. The owner's next write then finds
        # the job final (and its lease gone) and stops.
        moved = await self._advance(
            job.id,
            JobState.CANCELLED,
            detail=f"by {actor.user_id}",
            fenced=False,
            reason=f"cancelled by {actor.mention}",
        )
        if moved is None or moved.state is not JobState.CANCELLED:
            raise Refusal(f"Job {job.id} ended before it could be cancelled.", code="job_finished")
        with contextlib.suppress(Exception):
            await self._wakeups.notify(job.id)
        self._changed.set()
        await self._pump()
        return moved

    async def queue_position(self, job: Job) -> int | None:
        return await self._queue_position(job)

    # -- webhooks --------------------------------------------------------------------------

    def webhook_token(self, provider: str, job_id: str) -> str:
        """The token in a job's webhook URL: every instance can check it without the database."""
        return webhook_token(self._secret, provider, job_id)

    async def on_webhook(
        self, provider: str, job_id: str, token: str, headers: Mapping[str, str], body: bytes
    ) -> None:
        """Check a provider's callback, then wake the job's owner to refresh its status.

        The token is checked against the shared secret first (no database); a token from
        before that scheme is checked against the job's stored hash. Raises ``UnknownJob``
        (404) or ``WebhookRejected`` (401).
        """
        if provider not in self._providers:
            raise UnknownJob(f"No provider {provider} on this bot.")
        try:
            if not hmac.compare_digest(token, self.webhook_token(provider, job_id)):
                await self._check_legacy_token(provider, job_id, token)
            await self._providers[provider].check_webhook(headers, body)
        except WebhookRejected:
            self._metrics.webhook_rejected(provider)
            raise
        if job_id in self._drivers:
            self._wake(job_id)
        else:
            # The answer goes back now; the owner (maybe on another instance) is woken after.
            self._in_background(self._notify(job_id))

    async def _notify(self, payload: str) -> None:
        try:
            await self._wakeups.notify(payload)
        except Exception as exc:
            log.warning("could not wake the owner of %s (it still polls): %s", payload, exc)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` on its own; ``close`` and ``drain`` stop what is left of it."""
        task = asyncio.create_task(work)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _check_legacy_token(self, provider: str, job_id: str, token: str) -> None:
        job = await self._store.get(job_id)
        if job is None or job.provider != provider:
            raise UnknownJob(f"No job {job_id} for provider {provider}.")
        if not job.token_hash or not hmac.compare_digest(hash_token(token), job.token_hash):
            raise WebhookRejected("The webhook's token does not match its job.")

    # -- scheduling ------------------------------------------------------------------------

    async def _served_unfinished(self) -> list[OpenJob]:
        return [j for j in await self._store.open_jobs() if j.platform in self._chats]

    async def _pump(self) -> None:
        """Take the leases of jobs that may run now and start a driver for each."""
        if self._closing:
            return
        async with self._pump_lock:
            claim = await self._store.claim(
                self.instance_id,
                self._lease_seconds,
                platforms=list(self._chats),
                user_open_jobs=self._limits.user_open_jobs,
                server_open_jobs=self._limits.server_open_jobs,
            )
            for job in claim.taken:
                if job.id not in self._drivers and not self._closing:
                    self._shown_positions.pop(job.id, None)
                    self._start_driver(job)
        await self._show_positions(claim.waiting)

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
        mine, server = await self._store.active_count(job.server_id, job.user_id)
        waiting = list(await self._store.waiting(job.server_id))
        if (
            len(waiting) <= 1
            and mine < self._limits.user_open_jobs
            and server < self._limits.server_open_jobs
        ):
            return None
        return waiting.index(job.id) + 1 if job.id in waiting else None

    def _start_driver(self, job: OpenJob) -> None:
        self._wakes.setdefault(job.id, asyncio.Event())
        task = asyncio.create_task(self._drive(job.id), name=f"job-{job.id}")
        self._drivers[job.id] = task

    def _wake(self, job_id: str) -> None:
        event = self._wakes.get(job_id)
        if event is not None:
            event.set()

    @contextlib.contextmanager
    def _side_effect(self, job_id: str) -> Iterator[None]:
        """Marks a step that must not be cut short by a drain (a submission, a download, a
        post): ``drain`` waits for it, within the shutdown time."""
        self._busy.add(job_id)
        try:
            yield
        finally:
            self._busy.discard(job_id)

    # -- one job ---------------------------------------------------------------------------

    async def _drive(self, job_id: str) -> None:
        backoff = TRANSIENT_FIRST_SECONDS
        try:
            while True:
                try:
                    job = await self._store.get(job_id)
                    while job is not None and not job.state.is_final:
                        if job.state is JobState.QUEUED:
                            with self._side_effect(job_id):
                                job = await self._submit(job)
                        elif job.state in (JobState.SUBMITTED, JobState.RUNNING):
                            job = await self._follow(job)
                        else:
                            with self._side_effect(job_id):
                                job = await self._deliver(job)
                        backoff = TRANSIENT_FIRST_SECONDS
                    return
                except LeaseLost:
                    log.info("job %s: lease lost; another instance drives it now", job_id)
                    return
                except (StorageUnavailable, OSError) as exc:
                    # Disk full, read-only files, a database or bucket gone: the job keeps its
                    # state and carries on when the fault clears. A blob that is gone is not
                    # such a fault: it will not come back.
                    if isinstance(exc, FileNotFoundError):
                        raise
                    log.warning(
                        "job %s: storage unavailable, retrying in %.0f s: %s", job_id, backoff, exc
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, TRANSIENT_MAX_SECONDS)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s stopped on an unexpected error", job_id)
            with contextlib.suppress(Exception):
                await self._fail(job_id, "something went wrong on our side; please try again.")
        finally:
            self._drivers.pop(job_id, None)
            self._wakes.pop(job_id, None)
            self._progress_shown.pop(job_id, None)
            self._provider_queue_shown.pop(job_id, None)
            self._changed.set()
            if not self._closing:
                asyncio.get_running_loop().call_soon(self._schedule_pump)

    def _schedule_pump(self) -> None:
        if not self._closing:
            self._in_background(self._pump_quietly())

    async def _pump_quietly(self) -> None:
        try:
            await self._pump()
        except Exception as exc:
            log.warning("could not look for jobs to run, will retry: %s", exc)

    async def _update(self, job_id: str, **fields: object) -> Job:
        """A driver's write: fenced by this instance's lease."""
        return await self._store.update(job_id, lease=self.instance_id, **fields)

    async def _submit(self, job: Job) -> Job | None:
        """Submit to the job's provider, moving down its fallbacks on capacity or server errors.

        An authentication error never moves on: it is the bot's configuration, reported as such.
        A submission whose outcome a crash hid is not sent again to a provider that would bill
        it twice.
        """
        if job.submit_attempts and not self._resubmit_is_safe(job):
            return await self._fail(
                job.id,
                f"the bot stopped while handing this job to {job.provider}, which may have "
                "taken it; it was not sent again, so that it is not paid for twice. "
                f"Use {command_ref('generate')} again.",
            )
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
                job = await self._update(
                    job.id,
                    provider=name,
                    cost_estimate=estimate_cost(job.spec, provider.capabilities),
                    reason=f"moved from {job.provider}: {errors[-1]}",
                )
                await self._announce(job)
            try:
                task_id = await self._submit_to(job, provider, request_spec)
            except ProviderError as exc:
                log.warning("job %s: %s did not take the job: %s", job.id, name, exc)
                # The provider answered no: nothing of this attempt is pending there.
                job = await self._update(job.id, submit_attempts=0)
                if exc.auth:
                    # The bot's configuration: never retried nor moved on, and nothing was
                    # charged (the job ends without a task id, which usage leaves out).
                    self._key_rejected(name, exc.message)
                    return await self._fail(
                        job.id, f"{exc.message} This video was not made and is not charged."
                    )
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

    def _key_rejected(self, provider: str, message: str) -> None:
        """Remember a rejected key (commands for the provider are refused until a restart with
        a new one) and count it."""
        self._rejected_keys[provider] = message
        self._metrics.key_rejected(provider)

    def _resubmit_is_safe(self, job: Job) -> bool:
        provider = self._providers.get(job.provider)
        return provider is not None and provider.capabilities.idempotent_submit

    async def _submit_to(self, job: Job, provider: Provider, spec: JobSpec) -> str:
        base = self._webhook_base(job.provider) if provider.capabilities.webhooks else None
        token = self.webhook_token(job.provider, job.id)
        webhook_url = f"{base}/hooks/{job.provider}/{job.id}?t={token}" if base else None
        request = await self._request(job, spec, provider.capabilities, webhook_url)
        recorded = False

        async def record_attempt() -> None:
            # Written just before the request that may bill the job leaves (references are
            # uploaded by then): after a crash past here, the next owner knows it may have.
            nonlocal recorded
            if not recorded:
                await self._update(job.id, submit_attempts=job.submit_attempts + 1)
                recorded = True

        started = self._clock()
        announcing = BEFORE_BILLABLE_REQUEST.set(record_attempt)
        try:
            task_id = await provider.submit(request)
        finally:
            BEFORE_BILLABLE_REQUEST.reset(announcing)
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
            voice_path = await self._blobs.local_path(voice_blob) if voice_blob else None
            references.append(
                StagedReference(
                    label=ref.label,
                    kind=ref.kind,
                    path=await self._blobs.local_path(blob),
                    mime=mime,
                    voice_path=voice_path,
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
            await self._blobs.local_path(blob),
            kind,
            mime,
            capabilities,
            self._workdir,
            memory=self._memory,
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
            if exc.auth:
                self._key_rejected(job.provider, exc.message)
            if not exc.retryable:
                return await self._fail(job.id, exc.message)
            log.info("job %s: status look-up failed, will retry: %s", job.id, exc)
            return await self._update(job.id, poll_count=job.poll_count + 1)
        job = await self._update(job.id, poll_count=job.poll_count + 1)
        return await self._apply(job, provider, status)

    async def _apply(self, job: Job, provider: Provider, status: TaskStatus) -> Job | None:
        if status.cost is not None and status.cost != job.cost_estimate:
            # The provider's real charge: the budget (a sum of cost_estimate) counts it instead.
            job = await self._update(job.id, cost_estimate=status.cost)
        if status.state is TaskState.SUCCEEDED:
            with self._side_effect(job.id):
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
            last = f" (its last status: “{status.raw}”)" if status.raw else ""
            return await self._fail(
                job.id,
                f"the provider did not finish within {minutes} minutes{last}; try again later.",
            )
        if status.state is TaskState.RUNNING and job.state is JobState.SUBMITTED:
            return await self._advance(job.id, JobState.RUNNING, progress=status.progress)
        position = status.queue_position
        if status.state is TaskState.PENDING and position is not None:
            # The provider's own queue (the GPU worker's): shown when the place changes.
            if self._provider_queue_shown.get(job.id) != position:
                self._provider_queue_shown[job.id] = position
                await self._announce(job, queue_position=position)
            return job
        if status.progress is not None and status.progress != job.progress:
            job = await self._update(job.id, progress=status.progress)
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
            info = await media.inspect_result(await self._blobs.local_path(blob))
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
        """Post the video exactly once: the attempt is written before the post, and after a
        crash that hid an attempt's outcome the platform is asked whether the post exists."""
        assert job.result_blob is not None
        chat = self._chat(job)
        if job.delivery_attempts and await chat.find_delivery(job):
            log.info("job %s: its video was already posted; not posting it again", job.id)
            return await self._advance(job.id, JobState.DELIVERED, detail="found posted")
        job = await self._update(job.id, delivery_attempts=job.delivery_attempts + 1)
        assert job.result_blob is not None
        video = await self._blobs.local_path(job.result_blob)
        await chat.deliver_video(job, video, delivery_text(job))
        self._metrics.delivered(job.destination.platform)
        return await self._advance(job.id, JobState.DELIVERED)

    async def _fail(self, job_id: str, reason: str) -> Job | None:
        return await self._advance(job_id, JobState.FAILED, detail=reason, reason=reason)

    async def _advance(
        self,
        job_id: str,
        state: JobState,
        *,
        detail: str = "",
        fenced: bool = True,
        **fields: object,
    ) -> Job | None:
        """Move the job forward (written first), then tell its chat and count it.

        Answers the job as it now stands: moved, or unchanged when the move was not forward.
        A driver's moves are fenced by this instance's lease; a person's (cancel) are not.
        """
        lease = self.instance_id if fenced else None
        moved = await self._store.move(job_id, state, detail=detail, lease=lease, **fields)
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
