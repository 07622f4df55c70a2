"""The bot's client for its own GPU worker (``r2v worker``), behind the same provider port.

The worker is reached at ``R2V_LOCAL_URL`` with the bearer token ``R2V_WORKER_TOKEN``; the wire
contract is ``worker.protocol``. What is particular to it:

- Its limits are its own and announced: ``/healthz`` says which resolutions (480p for the 1.3B
  model, 480p and 720p for 14B), lengths and how many references (3 by default) it takes. They
  are read at start and again before each submission (at most once a minute), so a worker
  restarted with another model is seen without restarting the bot. Until it has answered, the
  1.3B model's limits are assumed.
- References are uploaded in the task's own ``multipart/form-data`` body, streamed from disk
  with its length declared: no public address of ours is needed.
- Label style: VACE takes reference *images* and no labels at all; the prompt only goes to its
  text encoder. Of the four styles, ``character`` reads as a name in a sentence
  ("character1 waves at character2"), where "Image 1" or "Video 1" would describe a file (and a
  reference video reaches VACE as one frame, not as a video). ``R2V_LOCAL_LABELS`` overrides it.
- No voice: VACE makes silent video, so voices are dropped (the bot says so).
- Webhooks are Standard Webhooks under a key both sides derive from the shared token
  (``worker.protocol.webhook_secret``): the operator sets one secret, and the signing key is
  never the bearer token itself.
- Progress: the worker reports 0–100 %, shown in the job's status message.
- The token lives in an HTTP client of this provider's own, so it is sent to the worker and to
  nothing else (not to a hosted provider sharing the bot's client).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import httpx

from adapters import webhooks
from adapters.local_files import local_file
from adapters.providers.base import Api, HostedProvider, ProviderContext, map_state
from bot.errors import ConfigurationError, ProviderError
from bot.models import MIME_EXTENSIONS, IncomingFile
from bot.ports import (
    Capabilities,
    KeyCheck,
    LabelStyle,
    PriceTable,
    Provider,
    ProviderRequest,
    TaskState,
    TaskStatus,
)
from worker.protocol import (
    HEALTH_PATH,
    REFERENCE_FIELD,
    REQUEST_FIELD,
    TASKS_PATH,
    TaskRequest,
    WorkerLimits,
    cancel_path,
    longest_seconds,
    result_path,
    task_path,
    webhook_secret,
)

log = logging.getLogger(__name__)

#: What the default model (Wan 2.1 VACE 1.3B) takes, assumed until the worker has said. Pixel
#: sizes are the worker's business (only the names are read here), so they are left at zero.
DEFAULT_LIMITS = WorkerLimits(
    max_references=3,
    sizes={"480p": {a: (0, 0) for a in ("16:9", "9:16", "1:1", "4:3", "3:4")}},
    durations=(1, 5),
    fps=16,
)
#: How old the workers' announced limits may get before a submission asks again.
LIMITS_MAX_AGE = 60.0
#: How long a worker has to answer ``/healthz`` when a submission picks the shortest queue.
HEALTH_TIMEOUT = 5.0
#: References are letterboxed to the clip's size on the worker: more pixels are only upload.
MAX_IMAGE_SIDE = 2048
#: Between a worker's task id and the worker's URL, in the task ids given to the bot when there
#: are several workers (worker task ids are ``task_<hex>``: never this character).
WORKER_MARK = "@"

_STATES: Mapping[str, TaskState] = {state.value: state for state in TaskState}


@dataclass(eq=False)
class Node:
    """One GPU worker: its API, and what its last ``/healthz`` said."""

    api: Api
    limits: WorkerLimits | None = None
    queue_length: int = 0
    free_lanes: int = 0
    ok: bool = False
    #: When status look-ups started failing to reach it (monotonic), or ``None``.
    unreachable_since: float | None = None
    #: Its task ids whose jobs were handed to another worker while it was away: cancelled when
    #: it answers again (a restarted worker queues its unfinished tasks again).
    abandoned: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.api.base_url

    def accepts(self, request: ProviderRequest) -> bool:
        """Whether its announced limits take ``request`` (yes, while it has announced none:
        its own answer will say)."""
        limits = self.limits
        if limits is None:
            return True
        low, high = limits.durations
        return (
            low <= request.duration <= high
            and request.resolution in limits.resolutions
            and request.aspect_ratio in limits.aspect_ratios
            and len(request.references) <= limits.max_references
        )


@dataclass(frozen=True, slots=True)
class Placed:
    """A task this bot submitted: where it runs, and the request, to send it elsewhere if that
    worker stops answering."""

    node: Node
    task_id: str
    request: ProviderRequest


class LocalProvider(HostedProvider):
    """A client of ``r2v worker``: the bot's own GPUs, with a hosted provider's habits.

    With several workers in ``R2V_LOCAL_URL``, each submission asks every worker's
    ``/healthz`` and goes to the one with the shortest queue (then the most free GPUs, then the
    order listed) among those that take the request; the task id the bot keeps names that
    worker. A worker whose status look-ups have failed for ``R2V_LOCAL_HANDOVER_SECONDS`` hands
    the jobs this process submitted to it to the next best worker (their requests are kept in
    memory until they end: after a restart of the bot, a job on a dead worker waits for it, or
    for the job timeout).
    """

    name = "local"

    def __init__(self, context: ProviderContext) -> None:
        urls = context.settings.local_urls
        if not urls:
            raise ConfigurationError(
                "R2V_LOCAL_URL is not set: give the address of your r2v worker, e.g. "
                "http://gpu-host:8090 (or several, separated by commas)."
            )
        token = context.key(self.name)
        self._client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(60.0, connect=10.0),
        )
        own = replace(context, client=self._client)
        self._nodes = [Node(Api(self.name, own, url, {})) for url in urls]
        self._limits_at: float | None = None
        self._secret = webhook_secret(token)
        self._labels = context.label_style(self.name, LabelStyle.CHARACTER)
        self._reference_seconds = context.settings.max_reference_seconds
        self._max_frames = context.settings.worker_max_frames
        self._handover = context.settings.local_handover_seconds
        #: Tasks submitted by this process and not yet ended, by the id the bot holds.
        self._placed: dict[str, Placed] = {}
        super().__init__(own, self._capabilities_for([DEFAULT_LIMITS]), self._nodes[0].api)

    def _capabilities_for(self, announced: Sequence[WorkerLimits]) -> Capabilities:
        """What at least one worker takes, clips capped at ``R2V_WORKER_MAX_FRAMES``."""
        longest = max(limits.durations[1] for limits in announced)
        fps = announced[0].fps
        durations = (
            min(limits.durations[0] for limits in announced),
            min(longest, longest_seconds(self._max_frames, fps)),
        )
        resolutions = tuple(dict.fromkeys(r for limits in announced for r in limits.resolutions))
        aspects = tuple(dict.fromkeys(a for limits in announced for a in limits.aspect_ratios))
        return Capabilities(
            name=self.name,
            max_references=max(limits.max_references for limits in announced),
            image_durations=durations,
            video_durations=durations,
            resolutions=resolutions,
            aspect_ratios=aspects,
            voice=False,
            label_style=self._labels,
            webhooks=True,
            needs_public_media=False,
            prices=PriceTable(per_second=dict.fromkeys(resolutions, 0.0)),
            max_image_side=MAX_IMAGE_SIDE,
            max_reference_seconds=self._reference_seconds,
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the workers' limits; a worker that is down now is asked again later."""
        for node, answer in zip(self._nodes, await self._survey(), strict=True):
            if isinstance(answer, ProviderError):
                log.warning(
                    "local: the GPU worker at %s did not answer (%s); assuming the 1.3B "
                    "model's limits until it does.",
                    node.url,
                    answer.message,
                )

    async def close(self) -> None:
        await self._client.aclose()

    async def check_key(self) -> KeyCheck:
        """Ask each worker's ``/healthz``: reachable, token accepted, model loaded where."""
        answers = await self._survey()
        webhooks_on = self.context.settings.public_url is not None
        lines = []
        for node, answer in zip(self._nodes, answers, strict=True):
            where = f"{node.url}: " if len(self._nodes) > 1 else ""
            if isinstance(answer, ProviderError):
                lines.append(where + answer.message)
                continue
            listed = answer.get("devices")
            devices: list[Any] = listed if isinstance(listed, list) else []
            described = ", ".join(
                f"{d.get('device')} ({d.get('state')})" for d in devices if isinstance(d, dict)
            )
            loaded = "loaded" if answer.get("model_loaded") else "not loaded yet"
            lines.append(
                f"{where}worker reachable, token accepted; {answer.get('model')} {loaded} on "
                f"{described or 'no device'}"
            )
        detail = "; ".join(lines) + (
            "; webhooks on." if webhooks_on else "; webhooks off: set R2V_PUBLIC_URL."
        )
        ok = all(not isinstance(a, ProviderError) and a.get("ok") for a in answers)
        return KeyCheck(ok, detail, webhooks=webhooks_on)

    async def _survey(self) -> list[dict[str, Any] | ProviderError]:
        """Every worker's ``/healthz`` at once (each answer or its error); the capabilities
        follow what the answering workers announce."""
        answers = await asyncio.gather(*(self._health(node) for node in self._nodes))
        self._limits_at = time.monotonic()
        announced = [node.limits for node in self._nodes if node.limits is not None]
        self._capabilities = self._capabilities_for(announced or [DEFAULT_LIMITS])
        return answers

    async def _health(self, node: Node) -> dict[str, Any] | ProviderError:
        node.ok = False
        try:
            response = await node.api.call("GET", HEALTH_PATH, ok=(503,), timeout=HEALTH_TIMEOUT)
        except ProviderError as exc:
            return exc
        try:
            health = response.json()
            node.limits = WorkerLimits.from_json(health.get("limits"))
        except (ValueError, AttributeError) as exc:
            return ProviderError(
                f"The GPU worker's /healthz answer could not be read ({exc}); is R2V_LOCAL_URL "
                "the address of an r2v worker?",
                code="provider_error",
                retryable=True,
            )
        if response.status_code == 503:
            devices = health.get("devices") or []
            errors = "; ".join(
                str(d.get("error")) for d in devices if isinstance(d, dict) and d.get("error")
            )
            return ProviderError(
                "The GPU worker is up but cannot make videos"
                + (f": {errors}" if errors else "")
                + ". Its operator should check its log.",
                code="provider_unavailable",
                retryable=True,
            )
        devices = health.get("devices") if isinstance(health.get("devices"), list) else []
        node.free_lanes = sum(
            1
            for d in devices
            if isinstance(d, dict) and d.get("state") == "ready" and not d.get("task")
        )
        queued = health.get("queue_length")
        node.queue_length = queued if isinstance(queued, int) else 0
        node.ok = bool(health.get("ok"))
        await self._cancel_abandoned(node)
        return dict(health)

    async def _cancel_abandoned(self, node: Node) -> None:
        """Cancel, on a worker that answers again, the tasks handed elsewhere meanwhile."""
        while node.abandoned:
            task_id = node.abandoned.pop()
            try:
                await node.api.call("POST", cancel_path(quote(task_id, safe="")), ok=(404,))
            except ProviderError as exc:
                log.info("local: %s could not cancel %s: %s", node.url, task_id, exc)
            else:
                log.info("local: cancelled %s on %s, made elsewhere", task_id, node.url)

    # -- tasks -----------------------------------------------------------------------------

    async def submit(self, request: ProviderRequest) -> str:
        node, task_id = await self._place(request, exclude=None)
        held = task_id if len(self._nodes) == 1 else f"{task_id}{WORKER_MARK}{node.url}"
        self._placed[held] = Placed(node, task_id, request)
        return held

    async def _place(self, request: ProviderRequest, exclude: Node | None) -> tuple[Node, str]:
        """Submit to the best worker that takes ``request``; on a worker that cannot take it
        now (unreachable, busy, full), the next. Answers the worker and its task id."""
        stale = self._limits_at is None or time.monotonic() - self._limits_at > LIMITS_MAX_AGE
        # One worker: its limits, at most a minute old, are all there is to know. Several:
        # their queues, now.
        if stale or len(self._nodes) > 1:
            answers = await self._survey()
            refused = next((a for a in answers if isinstance(a, ProviderError) and a.auth), None)
            if refused is not None and len(self._nodes) == 1:
                raise refused
        candidates = [n for n in self._nodes if n is not exclude and n.accepts(request)]
        # Shortest queue first, then the most GPUs free; workers that did not answer go last,
        # in case they answer now (their own refusal then says why).
        candidates.sort(key=lambda n: (not n.ok, n.queue_length, -n.free_lanes))
        if not candidates:
            raise ProviderError(
                "No GPU worker in R2V_LOCAL_URL takes this request (length, size or number "
                "of references).",
                code="provider_refused",
            )
        for node in candidates[:-1]:
            try:
                return node, await self._submit_to(node, request)
            except ProviderError as exc:
                if not exc.retryable or exc.code == "submit_unknown":
                    raise
                log.warning("local: %s did not take the task (%s); trying the next", node.url, exc)
        last = candidates[-1]
        return last, await self._submit_to(last, request)

    async def _submit_to(self, node: Node, request: ProviderRequest) -> str:
        task = TaskRequest(
            prompt=request.prompt,
            duration=request.duration,
            resolution=request.resolution,
            aspect_ratio=request.aspect_ratio,
            negative_prompt=request.negative_prompt,
            seed=request.seed,
            webhook_url=request.webhook_url,
        )
        files = await asyncio.to_thread(
            lambda: [(ref.path, ref.mime, local_file(ref.path)) for ref in request.references]
        )
        body = Multipart(
            [Part(REQUEST_FIELD, json.dumps(task.to_json()).encode(), "application/json")]
            + [
                Part(
                    REFERENCE_FIELD,
                    file,
                    mime,
                    filename=f"reference-{n}{MIME_EXTENSIONS.get(mime, path.suffix)}",
                )
                for n, (path, mime, file) in enumerate(files, start=1)
            ]
        )
        answer = await node.api.json(
            "POST",
            TASKS_PATH,
            submit=True,
            content=body,
            headers={"Content-Type": body.content_type, "Content-Length": str(body.length)},
        )
        task_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise ProviderError(
                "The GPU worker accepted the task but answered no task id.",
                code="provider_error",
            )
        return task_id

    def _locate(self, held: str) -> tuple[Node, str]:
        """The worker and its own task id for an id the bot holds (handed over or not)."""
        placed = self._placed.get(held)
        if placed is not None:
            return placed.node, placed.task_id
        task_id, _, url = held.partition(WORKER_MARK)
        if not url:
            return self._nodes[0], task_id
        node = next((n for n in self._nodes if n.url == url), None)
        if node is None:
            raise ProviderError(
                f"Task {task_id} ran on the GPU worker at {url}, which is no longer in "
                "R2V_LOCAL_URL.",
                code="task_unknown",
            )
        return node, task_id

    async def status(self, task_id: str) -> TaskStatus:
        node, own_id = self._locate(task_id)
        try:
            response = await node.api.call("GET", task_path(quote(own_id, safe="")), ok=(404,))
        except ProviderError as exc:
            if exc.code != "provider_unavailable":
                raise
            return await self._unreachable(task_id, node, exc)
        node.unreachable_since = None
        await self._cancel_abandoned(node)
        if response.status_code == 404:
            self._placed.pop(task_id, None)
            raise ProviderError(
                f"The GPU worker no longer knows task {own_id}: its data folder was cleared, "
                "or it removed the task after R2V_WORKER_KEEP_HOURS.",
                code="task_unknown",
            )
        try:
            answer = response.json()
            state = map_state(self.name, answer["state"], _STATES)
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError(
                "The GPU worker answered a status look-up with something unreadable.",
                code="provider_error",
                retryable=True,
            ) from exc
        if state in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED):
            self._placed.pop(task_id, None)
        position = answer.get("queue_position")
        queue_position = position if isinstance(position, int) else None
        if state is TaskState.SUCCEEDED:
            return TaskStatus(
                state, progress=1.0, result_url=node.api.url(result_path(quote(own_id, safe="")))
            )
        if state is TaskState.FAILED:
            return TaskStatus(state, error=str(answer.get("error") or "the worker gave no reason"))
        percent = answer.get("progress")
        progress = percent / 100 if isinstance(percent, int | float) else None
        return TaskStatus(state, progress=progress, queue_position=queue_position)

    async def _unreachable(self, held: str, node: Node, error: ProviderError) -> TaskStatus:
        """A worker did not answer about ``held``: after ``R2V_LOCAL_HANDOVER_SECONDS`` of
        that, the task is submitted again to another worker, and the bot's id follows it."""
        now = time.monotonic()
        if node.unreachable_since is None:
            node.unreachable_since = now
        placed = self._placed.get(held)
        if placed is None or len(self._nodes) == 1 or now - node.unreachable_since < self._handover:
            raise error
        try:
            other, task_id = await self._place(placed.request, exclude=node)
        except ProviderError as exc:
            log.warning(
                "local: %s is unreachable and no other worker took %s: %s", node.url, held, exc
            )
            raise error from exc
        log.warning(
            "local: %s has not answered for %.0f s; task %s handed to %s as %s",
            node.url,
            now - node.unreachable_since,
            held,
            other.url,
            task_id,
        )
        self._placed[held] = Placed(other, task_id, placed.request)
        node.abandoned.append(placed.task_id)
        return TaskStatus(TaskState.PENDING)

    async def cancel(self, task_id: str) -> bool:
        node, own_id = self._locate(task_id)
        answer = await node.api.json("POST", cancel_path(quote(own_id, safe="")))
        self._placed.pop(task_id, None)
        return bool(answer.get("cancelled")) if isinstance(answer, dict) else False

    # -- webhooks -------------------------------------------------------------------------

    async def check_webhook(self, headers: Mapping[str, str], body: bytes) -> None:
        """Standard Webhooks under the key derived from the shared token."""
        webhooks.verify(self._secret, headers, body)

    # ``download`` is HostedProvider's: it streams the result route (on whichever worker made
    # it) with this provider's own client, which carries the bearer token.


@dataclass(frozen=True, slots=True)
class Part:
    """One part of a multipart body: bytes in memory, or a file streamed from disk."""

    name: str
    content: bytes | IncomingFile
    content_type: str
    filename: str | None = None

    @property
    def size(self) -> int:
        if isinstance(self.content, bytes):
            return len(self.content)
        return self.content.declared_size or 0


class Multipart:
    """A ``multipart/form-data`` body whose length is known before a byte is read, streamed,
    and sendable again (each iteration reads the files anew), so a retry starts whole."""

    def __init__(self, parts: Sequence[Part]) -> None:
        boundary = secrets.token_hex(16)
        self.content_type = f"multipart/form-data; boundary={boundary}"
        self._parts = [(self._head(boundary, part), part) for part in parts]
        self._tail = f"--{boundary}--\r\n".encode()
        self.length = sum(len(head) + part.size + 2 for head, part in self._parts) + len(self._tail)

    @staticmethod
    def _head(boundary: str, part: Part) -> bytes:
        disposition = f'form-data; name="{part.name}"'
        if part.filename is not None:
            disposition += f'; filename="{part.filename}"'
        return (
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            f"Content-Type: {part.content_type}\r\n\r\n"
        ).encode()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        for head, part in self._parts:
            yield head
            if isinstance(part.content, bytes):
                yield part.content
            else:
                async for chunk in part.content.open():
                    yield chunk
            yield b"\r\n"
        yield self._tail


def from_context(context: ProviderContext) -> Provider:
    return LocalProvider(context)
