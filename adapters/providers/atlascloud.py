"""AtlasCloud (api.atlascloud.ai): Wan 2.7 reference-to-video, uploads, Ed25519-signed webhooks.

What is particular to AtlasCloud (PROVIDERS.md):
- One flat submit body (``POST /api/v1/model/generateVideo``) naming the model; the job id is at
  ``data.id``. Every submit it takes is billed, so a submit is never sent twice: after a timeout
  or a 5xx answer the job fails saying so (only a 429, a refusal before any work, is retried).
- ``GET /api/v1/model/prediction/{id}`` answers HTTP 200 even for a failed job: ``data.status``
  and ``data.error_code`` tell (1039: refused by moderation). Right after creation it may answer
  400 or 404 for about 30 s; that means "not yet", and only a task still unknown once that grace
  has passed is reported lost.
- References are uploaded (``POST /api/v1/model/uploadMedia``, multipart field ``file``), so no
  public address of ours is needed to submit a job.
- One webhook when the job ends, signed (per third parties, unconfirmed) with Ed25519 over
  ``"<timestamp>.<raw body>"``, checked against the keys AtlasCloud publishes as a JWKS
  (``R2V_ATLASCLOUD_JWKS_URL``; default ``/api/v1/webhooks/jwks.json`` on the API host). Should
  the real scheme differ, its webhooks are refused and jobs still finish by polling.
- No cancellation is documented: ``cancel`` asks nothing and answers False.

Points PROVIDERS.md marks unconfirmed are constructor parameters with the documented default.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from adapters.local_files import local_file
from adapters.providers.base import (
    Api,
    HostedProvider,
    ProviderContext,
    content_refused,
    is_content_refusal,
    map_state,
)
from adapters.providers.jwks import JwksCache
from adapters.providers.multipart import MultipartFile
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

DEFAULT_BASE_URL = "https://api.atlascloud.ai"
DEFAULT_MODEL = "alibaba/wan-2.7/reference-to-video"
SUBMIT_PATH = "/api/v1/model/generateVideo"
PREDICTION_PATH = "/api/v1/model/prediction/{task_id}"
UPLOAD_PATH = "/api/v1/model/uploadMedia"
JWKS_PATH = "/api/v1/webhooks/jwks.json"
#: Unconfirmed (third parties): the webhook headers are this prefix and ``Signature-Ed25519``,
#: ``Key-Id``, ``Timestamp``, ``Id``.
DEFAULT_HEADER_PREFIX = "X-AtlasCloud-Webhook-"
RESOLUTIONS: Mapping[str, str] = {"720p": "720P", "1080p": "1080P"}

#: About $0.10 a second of output. Whether reference video seconds are billed is not stated;
#: R2V billing usually counts them, so estimates (and budgets) count them too and err high.
DEFAULT_PRICES = PriceTable(
    per_second={"720p": 0.10, "1080p": 0.10},
    bills_reference_video=True,
)

#: ``data.status`` values: "completed" is documented, "succeeded" seen as well. "processing" is
#: the only state before the end (queued and rendering alike). ``timeout`` and ``cancelled``
#: (per third-party clients) are final too: failures, with the provider's reason.
STATES: Mapping[str, TaskState] = {
    "processing": TaskState.RUNNING,
    "completed": TaskState.SUCCEEDED,
    "succeeded": TaskState.SUCCEEDED,
    "failed": TaskState.FAILED,
    "timeout": TaskState.FAILED,
    "cancelled": TaskState.FAILED,
    "canceled": TaskState.FAILED,
}
#: Payload statuses of a webhook that mean the job failed.
_FAILED_WORDS = frozenset({"failed", "timeout", "cancelled", "canceled", "error"})
#: ``data.error_code`` values meaning AtlasCloud's moderation refused the job.
MODERATION_CODES = frozenset({1039})
#: Answers a status look-up gives for a task it does not know (yet).
_NOT_FOUND = (400, 404)
#: A submit answered with one of these may have created (and billed) the job: never re-sent.
_SERVER_ERRORS = tuple(range(500, 600))


class AtlasCloudProvider(HostedProvider):
    """An AtlasCloud client for Wan 2.7 R2V.

    Unconfirmed points (PROVIDERS.md), each a parameter with the documented default:
    - ``durations``: 2–10 s per third parties.
    - ``voice_field``: the voice goes in ``audio`` or ``reference_voice``; one clip per job,
      the first voiced reference's.
    - ``header_prefix``: the webhook headers' names; the signature may be hex or base64.
    - ``not_found_grace``: how long after creation a 400/404 status answer means "not yet"
      (about 30 s). Counted from the submit, or (after a restart) from the first such answer.

    Others: ``model`` is the model AtlasCloud runs; ``jwks_ttl`` is how long its webhook keys
    are trusted before they are fetched again; ``clock`` and ``tolerance`` (5 minutes) check
    webhook timestamps and the grace above.
    """

    name = "atlascloud"

    def __init__(
        self,
        context: ProviderContext,
        *,
        model: str = DEFAULT_MODEL,
        durations: tuple[int, int] = (2, 10),
        voice_field: str = "audio",
        header_prefix: str = DEFAULT_HEADER_PREFIX,
        not_found_grace: float = 30.0,
        jwks_ttl: float = 24 * 3600.0,
        clock: Callable[[], float] = time.time,
        tolerance: int = DEFAULT_TOLERANCE,
    ) -> None:
        settings = context.settings
        base_url = context.base_url(self.name, DEFAULT_BASE_URL)
        capabilities = Capabilities(
            name=self.name,
            max_references=5,
            image_durations=durations,
            video_durations=durations,
            resolutions=tuple(RESOLUTIONS),
            voice=True,
            # Its page names references character1, character2… across images and videos.
            label_style=context.label_style(self.name, LabelStyle.CHARACTER),
            webhooks=True,
            needs_public_media=False,
            prices=context.prices(self.name, DEFAULT_PRICES),
        )
        api = Api(
            self.name, context, base_url, {"Authorization": f"Bearer {context.key(self.name)}"}
        )
        super().__init__(context, capabilities, api)
        self.model = model
        self._voice_field = voice_field
        self._header_prefix = header_prefix
        self._grace = not_found_grace
        self._clock = clock
        self._tolerance = tolerance
        #: When each task was created (or first answered "unknown"): the start of its grace.
        self._since: dict[str, float] = {}
        #: Tasks a checked webhook said failed, and why: kept until a status read confirms it.
        self._failed_by_webhook: dict[str, str] = {}
        jwks_url = settings.atlascloud_jwks_url or f"{base_url}{JWKS_PATH}"
        self.jwks = JwksCache(
            context.client, jwks_url, owner="atlascloud", ttl=jwks_ttl, clock=clock
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch AtlasCloud's webhook keys ahead of the first webhook when webhooks can reach us.

        A failure only delays them: the keys are fetched again when a webhook arrives.
        """
        if self.context.settings.public_url is None:
            return
        try:
            await self.jwks.keys()
        except ProviderError as exc:
            log.warning(
                "atlascloud: %s Its webhooks are checked once the key set can be read.", exc
            )

    async def check_key(self) -> KeyCheck:
        """Look up a job that does not exist (free: 400/404 with a good key, 401 with a bad
        one), then say whether webhooks can be used: a public URL and a readable key set."""
        try:
            await self.api.call(
                "GET", _prediction_path(f"r2v-key-check-{uuid.uuid4()}"), ok=_NOT_FOUND
            )
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
        return KeyCheck(
            True, "key accepted; webhooks on (Ed25519, AtlasCloud's JWKS).", webhooks=True
        )

    # -- jobs ------------------------------------------------------------------------------

    async def submit(self, request: ProviderRequest) -> str:
        body = await self._body(request)
        response = await self.api.call(
            "POST", SUBMIT_PATH, submit=True, ok=_SERVER_ERRORS, json=body
        )
        if response.status_code >= 500:
            raise ProviderError(
                f"atlascloud answered HTTP {response.status_code} to the request to start the "
                "video. AtlasCloud bills every request it takes, so it was not sent again; check "
                "your AtlasCloud dashboard before trying again.",
                code="submit_unknown",
            )
        try:
            answer: Any = response.json()
        except ValueError:
            answer = None
        data = answer.get("data") if isinstance(answer, dict) else None
        task_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise ProviderError(
                "atlascloud accepted the request to start the video but answered no job id. "
                "Check your AtlasCloud dashboard before trying again: it may have started it.",
                code="submit_unknown",
            )
        self._since[task_id] = self._clock()
        return task_id

    async def _body(self, request: ProviderRequest) -> dict[str, Any]:
        """The flat input object: references uploaded, in slot order by kind, one voice."""
        staged = await self.stage_all(request)
        images, videos, voices = staged.images, staged.videos, staged.voices
        body: dict[str, Any] = {"model": self.model, "prompt": request.prompt}
        if request.negative_prompt:
            body["negative_prompt"] = request.negative_prompt
        if images:
            body["images"] = images
        if videos:
            body["videos"] = videos
        if voices:
            body[self._voice_field] = voices[0][1]
            if len(voices) > 1:
                log.info(
                    "atlascloud takes one voice clip; the voices of %s were left out",
                    ", ".join(label for label, _ in voices[1:]),
                )
        body["resolution"] = RESOLUTIONS.get(request.resolution, request.resolution.upper())
        body["ratio"] = request.aspect_ratio
        body["duration"] = request.duration
        if request.seed is not None:
            body["seed"] = request.seed
        if request.webhook_url:
            body["webhook_url"] = request.webhook_url
        return body

    async def status(self, task_id: str) -> TaskStatus:
        response = await self.api.call("GET", _prediction_path(task_id), ok=_NOT_FOUND)
        # A failure its webhook reported ends the job at this read, whatever the read says
        # (the status call lags behind the webhook), unless the read says it has finished.
        reported = self._failed_by_webhook.get(task_id)
        if response.status_code in _NOT_FOUND:
            if reported is not None:
                self._forget(task_id)
                return TaskStatus(TaskState.FAILED, error=reported)
            return self._not_found(task_id, response.status_code)
        try:
            answer: Any = response.json()
        except ValueError:
            answer = None
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, dict):
            raise ProviderError(
                "atlascloud answered a status look-up without the job's data.",
                code="provider_error",
                retryable=True,
            )
        self._forget(task_id)  # it is known now: its grace is over, the webhook's word read
        raw = data.get("status")
        state = map_state(self.name, raw, STATES)
        if state in (TaskState.PENDING, TaskState.RUNNING):
            if reported is not None:
                return TaskStatus(TaskState.FAILED, error=reported)
            return TaskStatus(state, raw=str(raw))
        if state is TaskState.FAILED:
            return TaskStatus(TaskState.FAILED, error=_failure(data))
        outputs = data.get("outputs")
        url = outputs[0] if isinstance(outputs, list) and outputs else None
        if not isinstance(url, str) or not url:
            return TaskStatus(
                TaskState.FAILED,
                error="AtlasCloud finished the job, but its answer holds no video in data.outputs",
            )
        return TaskStatus(TaskState.SUCCEEDED, progress=1.0, result_url=url)

    def _forget(self, task_id: str) -> None:
        self._since.pop(task_id, None)
        self._failed_by_webhook.pop(task_id, None)

    def _not_found(self, task_id: str, status: int) -> TaskStatus:
        """A task AtlasCloud does not know: "not yet" within the grace, then lost."""
        since = self._since.setdefault(task_id, self._clock())
        waited = self._clock() - since
        if waited < self._grace:
            return TaskStatus(TaskState.PENDING, raw=f"HTTP {status}")
        self._since.pop(task_id, None)
        return TaskStatus(
            TaskState.FAILED,
            error=(
                f"AtlasCloud still answers HTTP {status} for this job after {waited:.0f} s (a "
                f"new job may be unknown for about {self._grace:.0f} s, not longer): it was lost "
                "on their side. Generate the video again."
            ),
        )

    async def cancel(self, task_id: str) -> bool:
        """AtlasCloud documents no way to cancel a job, so nothing is asked."""
        return False

    # -- media -----------------------------------------------------------------------------

    async def stage_file(self, blob: str, path: str, mime: str) -> str:
        """Upload a file (``uploadMedia``, multipart field ``file``), answer ``data.download_url``.

        The multipart body is streamed from disk with its length declared up front.
        """
        file = await asyncio.to_thread(local_file, Path(path))
        name = f"{blob[:16] or 'reference'}{MIME_EXTENSIONS.get(mime, Path(path).suffix)}"
        body = MultipartFile("file", name, mime, file)
        answer = await self.api.json("POST", UPLOAD_PATH, content=body, headers=body.headers)
        data = answer.get("data") if isinstance(answer, dict) else None
        url = data.get("download_url") if isinstance(data, dict) else None
        if not isinstance(url, str) or not url:
            raise ProviderError(
                "atlascloud's upload answer names no data.download_url; the reference could not "
                "be sent.",
                code="provider_error",
                retryable=True,
            )
        return url

    # -- webhooks --------------------------------------------------------------------------

    async def check_webhook(self, headers: Mapping[str, str], body: bytes) -> None:
        """An Ed25519 signature of ``"<timestamp>.<raw body>"`` by a key of AtlasCloud's JWKS
        (the one the key id names, when given), with a timestamp at most 5 minutes off.

        The signature is read from ``…-Signature-Ed25519``, else from the bare ``…-Signature``
        header (where it is said to move once the HMAC of the migration is retired), and is
        decoded as Ed25519 only: an HMAC there is refused. A checked webhook that reports a
        failure (``status: ERROR``, or a payload status failed/timeout/cancelled) is kept, so
        the status read it triggers ends the job even if that read still says processing.
        """
        prefix = self._header_prefix
        signature_text = header(headers, f"{prefix}Signature-Ed25519") or header(
            headers, f"{prefix}Signature"
        )
        timestamp = header(headers, f"{prefix}Timestamp")
        kid = header(headers, f"{prefix}Key-Id") or None
        if not (signature_text and timestamp):
            raise WebhookRejected(
                f"The webhook lacks AtlasCloud's {prefix}Signature-Ed25519 or {prefix}Timestamp "
                "header."
            )
        check_timestamp(timestamp, now=self._clock(), tolerance=self._tolerance)
        signature = _signature_bytes(signature_text)
        try:
            signed = await self.jwks.verify(signature, f"{timestamp}.".encode() + body, kid=kid)
        except ProviderError as exc:
            raise WebhookRejected(
                f"{exc.message} The webhook cannot be checked; its job is polled meanwhile."
            ) from exc
        if not signed:
            raise WebhookRejected(
                "The webhook's signature matches none of AtlasCloud's published keys: it was "
                "altered or not sent by AtlasCloud."
            )
        self._note_failure(body)

    def _note_failure(self, body: bytes) -> None:
        """Remember a failure the (checked) webhook reports, for the status read that follows."""
        try:
            event: Any = json.loads(body)
        except ValueError:
            return
        if not isinstance(event, dict) or not isinstance(event.get("session_id"), str):
            return
        payload = event.get("payload")
        if not isinstance(payload, dict):
            payload = {}
        words = {str(event.get("status", "")).lower(), str(payload.get("status", "")).lower()}
        if words & _FAILED_WORDS:
            reason = _failure({**payload, "status": payload.get("status") or "ERROR"})
            self._failed_by_webhook[event["session_id"]] = reason


def _prediction_path(task_id: str) -> str:
    return PREDICTION_PATH.format(task_id=quote(task_id, safe=""))


def _signature_bytes(text: str) -> bytes:
    """The 64-byte Ed25519 signature, written in hex or in (URL-safe) base64."""
    candidates: list[bytes] = []
    with contextlib.suppress(ValueError):
        candidates.append(bytes.fromhex(text))
    padded = text + "=" * (-len(text) % 4)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            candidates.append(decode(padded))
        except (binascii.Error, ValueError):
            continue
    for candidate in candidates:
        if len(candidate) == 64:
            return candidate
    raise WebhookRejected(
        "The webhook's signature is not a 64-byte Ed25519 signature in hex or base64."
    )


def _failure(data: Mapping[str, Any]) -> str:
    """A failed job's reason as the user reads it; a moderation refusal says so plainly."""
    code = data.get("error_code")
    message = ""
    for key in ("error", "message", "error_message"):
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            message = value.strip()
            break
    numeric = int(code) if isinstance(code, int | str) and str(code).strip().isdigit() else None
    status = data.get("status")
    detail = message or f"AtlasCloud ended the job with status “{status or 'failed'}”"
    if code is not None and str(code).strip():
        detail = f"{detail} (error code {code})"
    if numeric in MODERATION_CODES or is_content_refusal(detail):
        return content_refused("atlascloud", detail).message
    return detail


def from_context(context: ProviderContext) -> Provider:
    return AtlasCloudProvider(context)
