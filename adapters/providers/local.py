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
from dataclasses import dataclass, replace
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
#: How old the worker's announced limits may get before a submission asks again.
LIMITS_MAX_AGE = 60.0
#: References are letterboxed to the clip's size on the worker: more pixels are only upload.
MAX_IMAGE_SIDE = 2048

_STATES: Mapping[str, TaskState] = {state.value: state for state in TaskState}


class LocalProvider(HostedProvider):
    """A client of ``r2v worker``: the bot's own GPU, with a hosted provider's habits."""

    name = "local"

    def __init__(self, context: ProviderContext) -> None:
        base_url = context.settings.local_url
        if not base_url:
            raise ConfigurationError(
                "R2V_LOCAL_URL is not set: give the address of your r2v worker, e.g. "
                "http://gpu-host:8090."
            )
        token = context.key(self.name)
        self._client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(60.0, connect=10.0),
        )
        own = replace(context, client=self._client)
        api = Api(self.name, own, base_url, {})
        self._limits_at: float | None = None
        self._secret = webhook_secret(token)
        self._labels = context.label_style(self.name, LabelStyle.CHARACTER)
        self._reference_seconds = context.settings.max_reference_seconds
        super().__init__(own, self._capabilities_for(DEFAULT_LIMITS), api)

    def _capabilities_for(self, limits: WorkerLimits) -> Capabilities:
        return Capabilities(
            name=self.name,
            max_references=limits.max_references,
            image_durations=limits.durations,
            video_durations=limits.durations,
            resolutions=limits.resolutions,
            aspect_ratios=limits.aspect_ratios,
            voice=False,
            label_style=self._labels,
            webhooks=True,
            needs_public_media=False,
            prices=PriceTable(per_second=dict.fromkeys(limits.resolutions, 0.0)),
            max_image_side=MAX_IMAGE_SIDE,
            max_reference_seconds=self._reference_seconds,
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the worker's limits; a worker that is down now is asked again later."""
        try:
            await self._health()
        except ProviderError as exc:
            log.warning(
                "local: the GPU worker at %s did not answer (%s); assuming the 1.3B model's "
                "limits until it does.",
                self.api.base_url,
                exc.message,
            )

    async def close(self) -> None:
        await self._client.aclose()

    async def check_key(self) -> KeyCheck:
        """Ask the worker's ``/healthz``: reachable, token accepted, model loaded where."""
        try:
            health = await self._health()
        except ProviderError as exc:
            return KeyCheck(False, exc.message)
        listed = health.get("devices")
        devices: list[Any] = listed if isinstance(listed, list) else []
        described = ", ".join(
            f"{d.get('device')} ({d.get('state')})" for d in devices if isinstance(d, dict)
        )
        loaded = "loaded" if health.get("model_loaded") else "not loaded yet"
        webhooks_on = self.context.settings.public_url is not None
        detail = (
            f"worker reachable, token accepted; {health.get('model')} {loaded} on "
            f"{described or 'no device'}; "
            + ("webhooks on." if webhooks_on else "webhooks off: set R2V_PUBLIC_URL.")
        )
        return KeyCheck(bool(health.get("ok")), detail, webhooks=webhooks_on)

    async def _health(self) -> dict[str, Any]:
        response = await self.api.call("GET", HEALTH_PATH, ok=(503,))
        try:
            health = response.json()
            limits = WorkerLimits.from_json(health.get("limits"))
        except (ValueError, AttributeError) as exc:
            raise ProviderError(
                f"The GPU worker's /healthz answer could not be read ({exc}); is R2V_LOCAL_URL "
                "the address of an r2v worker?",
                code="provider_error",
                retryable=True,
            ) from exc
        self._limits_at = time.monotonic()
        self._capabilities = self._capabilities_for(limits)
        if response.status_code == 503:
            devices = health.get("devices") or []
            errors = "; ".join(
                str(d.get("error")) for d in devices if isinstance(d, dict) and d.get("error")
            )
            raise ProviderError(
                "The GPU worker is up but cannot make videos"
                + (f": {errors}" if errors else "")
                + ". Its operator should check its log.",
                code="provider_unavailable",
                retryable=True,
            )
        return dict(health)

    # -- tasks -----------------------------------------------------------------------------

    async def submit(self, request: ProviderRequest) -> str:
        if self._limits_at is None or time.monotonic() - self._limits_at > LIMITS_MAX_AGE:
            try:
                await self._health()
            except ProviderError as exc:
                # Only a refused token stops here: for anything else, the submission below
                # gets the worker's own answer.
                if exc.auth:
                    raise
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
        answer = await self.api.json(
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

    async def status(self, task_id: str) -> TaskStatus:
        response = await self.api.call("GET", task_path(quote(task_id, safe="")), ok=(404,))
        if response.status_code == 404:
            raise ProviderError(
                f"The GPU worker no longer knows task {task_id}: its data folder was cleared, "
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
        position = answer.get("queue_position")
        queue_position = position if isinstance(position, int) else None
        if state is TaskState.SUCCEEDED:
            return TaskStatus(
                state, progress=1.0, result_url=self.api.url(result_path(quote(task_id, safe="")))
            )
        if state is TaskState.FAILED:
            return TaskStatus(state, error=str(answer.get("error") or "the worker gave no reason"))
        percent = answer.get("progress")
        progress = percent / 100 if isinstance(percent, int | float) else None
        return TaskStatus(state, progress=progress, queue_position=queue_position)

    async def cancel(self, task_id: str) -> bool:
        answer = await self.api.json("POST", cancel_path(quote(task_id, safe="")))
        return bool(answer.get("cancelled")) if isinstance(answer, dict) else False

    # -- webhooks -------------------------------------------------------------------------

    async def check_webhook(self, headers: Mapping[str, str], body: bytes) -> None:
        """Standard Webhooks under the key derived from the shared token."""
        webhooks.verify(self._secret, headers, body)

    # ``download`` is HostedProvider's: it streams the result route with this provider's own
    # client, which carries the bearer token.


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
