"""fal.ai: Wan 2.7 reference-to-video through fal's queue, its CDN uploads and its signed webhooks.

What is particular to fal (PROVIDERS.md):
- Three hosts: the queue (``queue.fal.run``: submit, status, result, cancel), the REST API
  (``rest.fal.ai``: uploads) and the key set its webhooks are signed with. ``R2V_FAL_QUEUE_URL``,
  ``R2V_FAL_REST_URL`` and ``R2V_FAL_JWKS_URL`` set them; ``R2V_FAL_BASE_URL`` stands in for the
  first two (and, with ``/.well-known/jwks.json`` appended to the REST host, for the third).
- The submit answers ``status_url``, ``response_url`` and ``cancel_url``, which are used exactly as
  given (the status path drops the model's sub-path, so it cannot be rebuilt from the model id
  alone). They are kept in the task id itself, so a restarted bot can still follow the job.
- ``COMPLETED`` means the request ended, well or not: the result (or the error) comes from
  ``response_url``.
- Webhooks are signed with Ed25519 over ``request id\\nuser id\\ntimestamp\\nsha256(body) hex`` and
  checked against every key of fal's published JWKS, fetched on first need, cached, and fetched
  again once when a signature matches none of the cached keys (fal rotated its keys).
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from adapters.providers.base import (
    Api,
    HostedProvider,
    ProviderContext,
    content_refused,
    error_message,
    is_content_refusal,
    map_state,
    task_id_with_urls,
    urls_in_task_id,
)
from adapters.providers.jwks import JwksCache
from adapters.webhooks import DEFAULT_TOLERANCE, check_timestamp, header
from bot.errors import ProviderError, WebhookRejected
from bot.models import MIME_EXTENSIONS
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

log = logging.getLogger(__name__)

DEFAULT_QUEUE_URL = "https://queue.fal.run"
DEFAULT_REST_URL = "https://rest.fal.ai"
JWKS_PATH = "/.well-known/jwks.json"
UPLOAD_PATH = "/storage/upload/initiate"
DEFAULT_MODEL = "fal-ai/wan/v2.7/reference-to-video"

#: $0.10 a second of output, and the seconds of reference video are billed as well.
DEFAULT_PRICES = PriceTable(
    per_second={"720p": 0.10, "1080p": 0.10},
    bills_reference_video=True,
)

#: The queue's documented states. ``COMPLETED`` is refined by the result (success or error).
_STATES: Mapping[str, TaskState] = {
    "in_queue": TaskState.PENDING,
    "in_progress": TaskState.RUNNING,
    "completed": TaskState.SUCCEEDED,
}

#: Answers that speak of the request rather than of our key or fal's load: on ``response_url`` a
#: model error (422 and kin) is the request's end; to the key check, an unknown request.
_RESULT_ERRORS = tuple(code for code in range(400, 500) if code not in (401, 403, 408, 429))


@dataclass(frozen=True, slots=True)
class FalTask:
    """A queued request and the URLs the submit answered for it (kept in the task id)."""

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str

    def to_id(self) -> str:
        return task_id_with_urls(
            self.request_id,
            {"status": self.status_url, "response": self.response_url, "cancel": self.cancel_url},
        )

    @classmethod
    def from_id(cls, task_id: str, queue_url: str, model: str) -> FalTask:
        """The task a task id names; a bare request id gets the documented URL shapes."""
        request_id, urls = urls_in_task_id(task_id)
        if all(key in urls for key in ("status", "response", "cancel")):
            return cls(request_id, urls["status"], urls["response"], urls["cancel"])
        base = f"{queue_url}/{app_id(model)}/requests/{quote(task_id, safe='')}"
        return cls(task_id, f"{base}/status", base, f"{base}/cancel")


def app_id(model: str) -> str:
    """The model's app (owner and name): what the queue's request paths are built on."""
    return "/".join(model.split("/")[:2])


class FalProvider(HostedProvider):
    """A fal.ai client for Wan 2.7 R2V.

    Unconfirmed points (PROVIDERS.md), each a parameter with the documented default:
    - ``video_path``: where the video's URL sits in the result, "probably" ``video.url``.
    - ``durations``: third parties say 2–10 s, with images alone as with videos.
    - ``cancel_method``: PROVIDERS.md names no method for ``cancel_url``; fal's queue pages use
      ``PUT``.

    The label style is not documented for fal: ``separate`` (Alibaba's own text) unless
    ``R2V_FAL_LABELS`` says otherwise. Others: ``model`` is the app path on the queue;
    ``jwks_ttl`` is how long the webhook key set is trusted before it is fetched again; ``clock``
    and ``tolerance`` check webhook timestamps.
    No voice input is documented for this model on fal, so voices are not sent.
    """

    name = "fal"

    def __init__(
        self,
        context: ProviderContext,
        *,
        model: str = DEFAULT_MODEL,
        video_path: Sequence[str] = ("video", "url"),
        durations: tuple[int, int] = (2, 10),
        cancel_method: str = "PUT",
        jwks_ttl: float = 24 * 3600.0,
        clock: Callable[[], float] = time.time,
        tolerance: int = DEFAULT_TOLERANCE,
    ) -> None:
        settings = context.settings
        # R2V_FAL_BASE_URL (context.base_url) stands in for the queue and REST hosts alike.
        queue = settings.fal_queue_url or context.base_url(self.name, DEFAULT_QUEUE_URL)
        rest = settings.fal_rest_url or context.base_url(self.name, DEFAULT_REST_URL)
        self.queue_url = queue.rstrip("/")
        self.rest_url = rest.rstrip("/")
        jwks_url = settings.fal_jwks_url or f"{self.rest_url}{JWKS_PATH}"
        capabilities = Capabilities(
            name=self.name,
            max_references=5,
            image_durations=durations,
            video_durations=durations,
            resolutions=("720p", "1080p"),
            voice=False,
            label_style=context.label_style(self.name, LabelStyle.SEPARATE),
            webhooks=True,
            needs_public_media=False,
            prices=context.prices(self.name, DEFAULT_PRICES),
        )
        api = Api(
            self.name, context, self.queue_url, {"Authorization": f"Key {context.key(self.name)}"}
        )
        super().__init__(context, capabilities, api)
        self._model = model.strip("/")
        self._video_path = tuple(video_path)
        self._cancel_method = cancel_method
        self._clock = clock
        self._tolerance = tolerance
        self.jwks = JwksCache(context.client, jwks_url, owner="fal", ttl=jwks_ttl, clock=clock)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch fal's webhook keys ahead of the first webhook when webhooks can reach us.

        A failure only delays them: the keys are fetched again when a webhook arrives.
        """
        if self.context.settings.public_url is None:
            return
        try:
            await self.jwks.keys()
        except ProviderError as exc:
            log.warning("fal: %s Its webhooks are checked once the key set can be read.", exc)

    async def check_key(self) -> KeyCheck:
        """Ask the queue about a request that does not exist: only the key is judged.

        fal documents no account endpoint; an unknown request answers 404 with a good key and
        401/403 with a bad one, and costs nothing.
        """
        probe = f"/{app_id(self._model)}/requests/{uuid.uuid4()}/status"
        try:
            await self.api.call("GET", probe, ok=_RESULT_ERRORS)
        except ProviderError as exc:
            return KeyCheck(False, exc.message)
        if self.context.settings.public_url is None:
            return KeyCheck(
                True, "key accepted; webhooks off: set R2V_PUBLIC_URL, jobs are polled meanwhile."
            )
        try:
            await self.jwks.refresh(since=self.jwks.fetched_at)
        except ProviderError as exc:
            return KeyCheck(True, f"key accepted; webhooks off: {exc.message}")
        return KeyCheck(True, "key accepted; webhooks on (Ed25519, fal's JWKS).", webhooks=True)

    # -- jobs ------------------------------------------------------------------------------

    async def submit(self, request: ProviderRequest) -> str:
        body = await self._input(request)
        params = {"fal_webhook": request.webhook_url} if request.webhook_url else {}
        answer = await self.api.json(
            "POST", f"/{self._model}", submit=True, json=body, params=params
        )
        fields = {
            key: answer.get(key) if isinstance(answer, dict) else None
            for key in ("request_id", "status_url", "response_url", "cancel_url")
        }
        if not all(isinstance(value, str) and value for value in fields.values()):
            raise ProviderError(
                "fal accepted the request to start the video but did not answer its request id "
                "and URLs. Check your fal dashboard before trying again: it may have started it.",
                code="provider_error",
            )
        return FalTask(
            str(fields["request_id"]),
            str(fields["status_url"]),
            str(fields["response_url"]),
            str(fields["cancel_url"]),
        ).to_id()

    async def _input(self, request: ProviderRequest) -> dict[str, Any]:
        """The model's input: references uploaded to fal's CDN, in slot order by kind."""
        staged = await self.stage_all(request)
        images, videos = staged.images, staged.videos
        body: dict[str, Any] = {"prompt": request.prompt}
        if images:
            body["reference_image_urls"] = images
        if videos:
            body["reference_video_urls"] = videos
        # The fields below are named as third parties document them (fal's own page lists only
        # the prompt and the reference lists); resolution is sent as "720p" / "1080p".
        if request.negative_prompt:
            body["negative_prompt"] = request.negative_prompt
        body["aspect_ratio"] = request.aspect_ratio
        body["resolution"] = request.resolution.lower()
        body["duration"] = request.duration
        if request.seed is not None:
            body["seed"] = request.seed
        return body

    async def status(self, task_id: str) -> TaskStatus:
        task = self._task(task_id)
        answer = await self.api.json("GET", task.status_url)
        if not isinstance(answer, dict):
            raise ProviderError(
                "fal answered a status look-up with something other than an object.",
                code="provider_error",
                retryable=True,
            )
        raw = str(answer.get("status"))
        state = map_state(self.name, raw, _STATES)
        if state is TaskState.PENDING:
            position = answer.get("queue_position")
            return TaskStatus(
                TaskState.PENDING,
                queue_position=position if isinstance(position, int) else None,
                raw=raw,
            )
        if state is TaskState.RUNNING:
            return TaskStatus(TaskState.RUNNING, raw=raw)
        error = answer.get("error")
        if isinstance(error, str) and error.strip():
            return TaskStatus(TaskState.FAILED, error=_failure(error.strip()))
        return await self._result(task)

    async def _result(self, task: FalTask) -> TaskStatus:
        """The finished request's answer: the video's URL, or the reason it failed."""
        response = await self.api.call("GET", task.response_url, ok=_RESULT_ERRORS)
        if not response.is_success:
            return TaskStatus(TaskState.FAILED, error=_failure(error_message(response)))
        try:
            answer: Any = response.json()
        except ValueError:
            answer = None
        url = _walk(answer, self._video_path)
        if not isinstance(url, str) or not url:
            where = ".".join(self._video_path)
            log.warning(
                "fal: result of %s has no video at %s (keys: %s)",
                task.request_id,
                where,
                sorted(answer) if isinstance(answer, dict) else type(answer).__name__,
            )
            return TaskStatus(
                TaskState.FAILED,
                error=f"fal finished, but its answer holds no video link at “{where}”",
            )
        return TaskStatus(TaskState.SUCCEEDED, progress=1.0, result_url=url)

    async def cancel(self, task_id: str) -> bool:
        """Ask the queue to drop the request; fal answers 400 once it has already finished."""
        task = self._task(task_id)
        response = await self.api.call(self._cancel_method, task.cancel_url, ok=(400, 404, 409))
        return response.is_success

    def _task(self, task_id: str) -> FalTask:
        return FalTask.from_id(task_id, self.queue_url, self._model)

    # -- media -----------------------------------------------------------------------------

    async def stage_file(self, blob: str, path: str, mime: str) -> str:
        """Upload to fal's CDN: initiate (authenticated), PUT the bytes, use ``file_url``.

        The PUT goes to the pre-signed ``upload_url`` without our key, streamed from disk.
        """
        name = f"{blob[:16] or 'reference'}{MIME_EXTENSIONS.get(mime, Path(path).suffix)}"
        answer = await self.api.json(
            "POST",
            f"{self.rest_url}{UPLOAD_PATH}",
            params={"storage_type": "fal-cdn-v3"},
            json={"file_name": name, "content_type": mime},
        )
        upload_url = answer.get("upload_url") if isinstance(answer, dict) else None
        file_url = answer.get("file_url") if isinstance(answer, dict) else None
        if not (isinstance(upload_url, str) and upload_url and isinstance(file_url, str)):
            raise ProviderError(
                "fal's upload answer names no upload_url or file_url; the reference could not "
                "be sent.",
                code="provider_error",
                retryable=True,
            )
        await self.put_file(upload_url, Path(path), mime)
        return file_url

    # -- webhooks --------------------------------------------------------------------------

    async def check_webhook(self, headers: Mapping[str, str], body: bytes) -> None:
        """fal's scheme: an Ed25519 signature (hex) by any key of its JWKS, recent timestamp."""
        request_id = header(headers, "x-fal-webhook-request-id")
        user_id = header(headers, "x-fal-webhook-user-id")
        timestamp = header(headers, "x-fal-webhook-timestamp")
        signature_hex = header(headers, "x-fal-webhook-signature")
        if not (request_id and user_id and timestamp and signature_hex):
            raise WebhookRejected(
                "The webhook lacks fal's X-Fal-Webhook-Request-Id, -User-Id, -Timestamp or "
                "-Signature header."
            )
        check_timestamp(timestamp, now=self._clock(), tolerance=self._tolerance)
        try:
            signature = bytes.fromhex(signature_hex)
        except ValueError:
            raise WebhookRejected("The webhook's signature is not hexadecimal.") from None
        message = "\n".join(
            (request_id, user_id, timestamp, hashlib.sha256(body).hexdigest())
        ).encode()
        try:
            signed = await self.jwks.verify(signature, message)
        except ProviderError as exc:
            raise WebhookRejected(
                f"{exc.message} The webhook cannot be checked; its job is polled meanwhile."
            ) from exc
        if not signed:
            raise WebhookRejected(
                "The webhook's signature matches none of fal's published keys: it was altered "
                "or not sent by fal."
            )


def _walk(value: object, path: Sequence[str]) -> object:
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _failure(detail: str) -> str:
    """The failure as the user reads it; a content-filter refusal says so plainly."""
    detail = detail.strip() or "fal gave no reason"
    if is_content_refusal(detail):
        return content_refused("fal", detail).message
    return detail


def from_context(context: ProviderContext) -> Provider:
    return FalProvider(context)
