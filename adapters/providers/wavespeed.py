"""WaveSpeed (api.wavespeed.ai): Wan 2.7 reference-to-video, uploads, signed webhooks.

What is particular to WaveSpeed (PROVIDERS.md):
- References are uploaded to WaveSpeed's own storage (``POST /api/v3/media/uploads``, then a PUT
  to the link it answers), so no public address of ours is needed to submit a job.
- The request body is flat: ``videos`` (a list), ``image`` (one), ``prompt``, ``resolution``…
  Its page numbers videos first and images after them (label style ``videos_first``).
- Its webhooks look like Standard Webhooks but are not: the signature is ``v3,<hex>`` and the
  HMAC key is the secret's text after ``whsec_`` taken as raw bytes, not base64-decoded. The
  secret is a setting, else fetched from ``GET /api/v3/webhook/secret`` at start; without it the
  provider asks for no webhooks and jobs are polled.

Points PROVIDERS.md marks unconfirmed are constructor parameters with the documented default.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx

from adapters.providers.base import (
    Api,
    HostedProvider,
    ProviderContext,
    content_refused,
    is_content_refusal,
    map_state,
)
from adapters.webhooks import DEFAULT_TOLERANCE, check_timestamp, header
from bot.errors import ProviderError, WebhookRejected
from bot.models import MIME_EXTENSIONS, MediaKind
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

DEFAULT_BASE_URL = "https://api.wavespeed.ai"
SUBMIT_PATH = "/api/v3/alibaba/wan-2.7/reference-to-video"
RESULT_PATH = "/api/v3/predictions/{task_id}/result"
SECRET_PATH = "/api/v3/webhook/secret"
UPLOAD_PATH = "/api/v3/media/uploads"

SECRET_PREFIX = "whsec_"

#: Seed 004's price list: 720p by output duration; 1080p costs 1.6 times as much.
DEFAULT_PRICES = PriceTable(
    by_duration={
        ("720p", 5): 1.00,
        ("720p", 10): 1.50,
        ("720p", 15): 2.00,
        ("1080p", 5): 1.60,
        ("1080p", 10): 2.40,
        ("1080p", 15): 3.20,
    },
)

#: ``data.status`` values: the documented four, and the two the official SDK also treats as final.
_STATES: Mapping[str, TaskState] = {
    "created": TaskState.PENDING,
    "processing": TaskState.RUNNING,
    "completed": TaskState.SUCCEEDED,
    "failed": TaskState.FAILED,
    "cancelled": TaskState.CANCELLED,
    "timeout": TaskState.FAILED,
}


class WaveSpeedProvider(HostedProvider):
    """A WaveSpeed client for Wan 2.7 R2V.

    Unconfirmed points, each a parameter with the documented default:
    - ``durations``: the output lengths it makes — 5, 10 or 15 s per seed 004, 2–10 s per others.
    - ``webhook_in``: the webhook URL goes in the submit URL's ``webhook`` query parameter, as
      the API reference says; one page shows a ``webhook_url`` body field instead (``"body"``).
    - ``videos_required``: ``videos`` is documented as required, so by default a request needs
      at least one reference video (``Capabilities.min_videos``): a job of pictures alone is
      refused or sent to another provider before anything reaches WaveSpeed. ``False`` (some
      pages say the model works from images alone) leaves the field out when there is none.
    - ``max_images``: the model's inputs show one ``image``; more images in a request are refused
      with a message naming the limit.
    - ``aspect_ratio_field``: no aspect-ratio input is documented for this model, so none is sent
      (the references decide the frame) unless a field name is given.

    Others: ``prompt_expansion`` is off because the provider's rewrite could drop the reference
    labels the prompt depends on; ``submit_timeout`` bounds the submit alone (a submit that times
    out is never sent again); ``clock`` and ``tolerance`` check webhook timestamps.
    """

    name = "wavespeed"

    def __init__(
        self,
        context: ProviderContext,
        *,
        durations: tuple[int, ...] = (5, 10, 15),
        webhook_in: Literal["query", "body"] = "query",
        videos_required: bool = True,
        max_images: int = 1,
        aspect_ratio_field: str | None = None,
        prompt_expansion: bool = False,
        submit_timeout: float | None = None,
        clock: Callable[[], float] = time.time,
        tolerance: int = DEFAULT_TOLERANCE,
    ) -> None:
        settings = context.settings
        secret = settings.wavespeed_webhook_secret
        self._secret: str | None = secret.get_secret_value() if secret is not None else None
        longest = max(durations)
        capabilities = Capabilities(
            name=self.name,
            max_references=5,
            image_durations=(min(durations), longest),
            # Wan 2.7 R2V makes at most 10 s once a reference is a video (DESIGN.md).
            video_durations=(min(durations), min(longest, 10)),
            resolutions=("720p", "1080p"),
            voice=False,  # no voice input is documented for this model on WaveSpeed
            label_style=context.label_style(self.name, LabelStyle.VIDEOS_FIRST),
            webhooks=self._secret is not None,
            needs_public_media=False,
            prices=context.prices(self.name, DEFAULT_PRICES),
            max_images=max_images,
            min_videos=1 if videos_required else 0,
            durations=tuple(sorted(durations)),
        )
        api = Api(
            self.name,
            context,
            context.base_url(self.name, DEFAULT_BASE_URL),
            {"Authorization": f"Bearer {context.key(self.name)}"},
        )
        super().__init__(context, capabilities, api)
        self._durations = tuple(sorted(durations))
        self._webhook_in = webhook_in
        self._videos_required = videos_required
        self._max_images = max_images
        self._aspect_ratio_field = aspect_ratio_field
        self._prompt_expansion = prompt_expansion
        self._submit_timeout = submit_timeout
        self._clock = clock
        self._tolerance = tolerance

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch the webhook signing secret when it is not set; without it, poll only."""
        if self._secret is not None:
            return
        try:
            self._use_secret(await self._fetch_secret())
        except ProviderError as exc:
            log.warning(
                "wavespeed: no webhook signing secret (%s); its jobs will be polled only. "
                "Set WAVESPEED_WEBHOOK_SECRET to use webhooks.",
                exc.message,
            )

    async def check_key(self) -> KeyCheck:
        """Fetch the webhook secret: a cheap authenticated call that also tells about webhooks."""
        try:
            secret = await self._fetch_secret()
        except ProviderError as exc:
            if exc.code != "webhook_secret_missing":
                return KeyCheck(False, exc.message)
            secret = None
        if self._secret is None and secret is not None:
            self._use_secret(secret)
        public = self.context.settings.public_url is not None
        if self._secret is None:
            return KeyCheck(
                True,
                "key accepted; webhooks off: WaveSpeed gave no signing secret "
                "(set WAVESPEED_WEBHOOK_SECRET), so jobs are polled.",
            )
        if not public:
            return KeyCheck(
                True, "key accepted; webhooks off: set R2V_PUBLIC_URL, jobs are polled meanwhile."
            )
        return KeyCheck(True, "key accepted; webhooks on (signed, v3).", webhooks=True)

    async def _fetch_secret(self) -> str:
        """``GET /api/v3/webhook/secret``: ``data.secret``, or (unconfirmed) a bare ``data``."""
        body = await self.api.json("GET", SECRET_PATH)
        data = body.get("data") if isinstance(body, dict) else None
        secret = data.get("secret") if isinstance(data, dict) else data
        if not isinstance(secret, str) or not secret.strip():
            raise self.webhook_secret_missing()
        return secret.strip()

    def _use_secret(self, secret: str) -> None:
        self._secret = secret
        self._capabilities = replace(self._capabilities, webhooks=True)

    # -- jobs ------------------------------------------------------------------------------

    async def submit(self, request: ProviderRequest) -> str:
        body = await self._body(request)
        params: dict[str, str] = {}
        if request.webhook_url:
            if self._webhook_in == "query":
                params["webhook"] = request.webhook_url
            else:
                body["webhook_url"] = request.webhook_url
        extra: dict[str, Any] = {}
        if self._submit_timeout is not None:
            extra["timeout"] = httpx.Timeout(self._submit_timeout)
        answer = await self.api.json(
            "POST", SUBMIT_PATH, submit=True, json=body, params=params, **extra
        )
        data = _data(answer)
        task_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise ProviderError(
                f"wavespeed answered the request to start the video without a task id "
                f"({_envelope_message(answer)}). Check your WaveSpeed dashboard before trying "
                "again: it may have started it.",
                code="provider_error",
            )
        return task_id

    async def _body(self, request: ProviderRequest) -> dict[str, Any]:
        """The flat input object, references uploaded, in the prompt's label order."""
        if request.duration not in self._durations:
            raise ProviderError(
                f"wavespeed makes videos of {_seconds(self._durations)} only; this job asks for "
                f"{request.duration} s. Choose one of those durations, or another provider.",
                code="duration_out_of_range",
            )
        images = [r for r in request.references if r.kind is MediaKind.IMAGE]
        if len(images) > self._max_images:
            raise ProviderError(
                f"wavespeed takes at most {self._max_images} reference image(s) besides its "
                f"videos; this job has {len(images)}. Mention fewer pictures, use a character's "
                "video, or choose another provider.",
                code="too_many_references",
            )
        videos = [
            await self.stage_file(r.blob, str(r.path), r.mime)
            for r in request.references
            if r.kind is MediaKind.VIDEO
        ]
        if not videos and self._videos_required:
            raise ProviderError(
                "wavespeed needs at least one reference video, and this job has only pictures. "
                "Mention a character that has a video, or choose another provider.",
                code="provider_cannot_take",
            )
        body: dict[str, Any] = {"prompt": request.prompt}
        if videos:
            body["videos"] = videos
        if images:
            image = images[0]
            body["image"] = await self.stage_file(image.blob, str(image.path), image.mime)
        if request.negative_prompt:
            body["negative_prompt"] = request.negative_prompt
        body["enable_prompt_expansion"] = self._prompt_expansion
        body["resolution"] = request.resolution.lower()
        body["duration"] = request.duration
        if self._aspect_ratio_field:
            body[self._aspect_ratio_field] = request.aspect_ratio
        if request.seed is not None:
            body["seed"] = request.seed
        return body

    async def status(self, task_id: str) -> TaskStatus:
        answer = await self.api.json("GET", RESULT_PATH.format(task_id=quote(task_id, safe="")))
        data = _data(answer)
        if not isinstance(data, dict):
            raise ProviderError(
                "wavespeed answered a status look-up without the task's data.",
                code="provider_error",
                retryable=True,
            )
        raw = data.get("status")
        state = map_state(self.name, raw, _STATES)
        outputs = data.get("outputs")
        result = outputs[0] if isinstance(outputs, list) and outputs else None
        error: str | None = None
        if state is TaskState.FAILED:
            error = _failure(data.get("error"), str(raw))
        return TaskStatus(
            state=state,
            result_url=result if isinstance(result, str) and state is TaskState.SUCCEEDED else None,
            error=error,
            raw=str(raw),
        )

    # -- media -----------------------------------------------------------------------------

    async def stage_file(self, blob: str, path: str, mime: str) -> str:
        """Upload a file to WaveSpeed's storage and answer its download link.

        The PUT goes straight to the storage link WaveSpeed hands out, with the headers it names
        and never our Authorization header (the link is pre-signed). The file is streamed.
        """
        file = Path(path)
        size = (await asyncio.to_thread(file.stat)).st_size
        # Blob files carry no extension; the name WaveSpeed stores is made from the type.
        filename = f"{blob[:16] or 'reference'}{MIME_EXTENSIONS.get(mime, file.suffix)}"
        answer = await self.api.json(
            "POST",
            UPLOAD_PATH,
            json={"filename": filename, "size": size, "content_type": mime},
        )
        data = _data(answer)
        upload = data.get("upload") if isinstance(data, dict) else None
        download_url = data.get("download_url") if isinstance(data, dict) else None
        if (
            not isinstance(upload, dict)
            or not isinstance(upload.get("url"), str)
            or not (isinstance(download_url, str) and download_url)
        ):
            raise ProviderError(
                "wavespeed's upload answer names no upload link or download link; the reference "
                "could not be sent.",
                code="provider_error",
                retryable=True,
            )
        given = upload.get("headers")
        headers = {str(k): str(v) for k, v in given.items()} if isinstance(given, dict) else {}
        method = str(upload.get("method") or "PUT").upper()
        await self.put_file(upload["url"], file, mime, method=method, headers=headers)
        return download_url

    # -- webhooks --------------------------------------------------------------------------

    async def check_webhook(self, headers: Mapping[str, str], body: bytes) -> None:
        """WaveSpeed's scheme: ``v3,<hex>`` HMAC-SHA256 of ``{id}.{timestamp}.{body}``, keyed
        by the secret's text after ``whsec_``; timestamps more than 300 s off are refused."""
        if self._secret is None:
            raise WebhookRejected(
                "wavespeed's webhook signing secret is unknown, so its webhooks cannot be "
                "checked; set WAVESPEED_WEBHOOK_SECRET."
            )
        msg_id = header(headers, "webhook-id")
        raw_timestamp = header(headers, "webhook-timestamp")
        signatures = header(headers, "webhook-signature")
        if not (msg_id and raw_timestamp and signatures):
            raise WebhookRejected(
                "The webhook lacks WaveSpeed's webhook-id, webhook-timestamp or "
                "webhook-signature header."
            )
        check_timestamp(raw_timestamp, now=self._clock(), tolerance=self._tolerance)
        key = self._secret.removeprefix(SECRET_PREFIX).encode()
        signed = f"{msg_id}.{raw_timestamp}.".encode() + body
        expected = hmac.new(key, signed, hashlib.sha256).hexdigest().encode()
        matched = False
        # Every entry is compared (no early exit) so timing says nothing about which one matched.
        for entry in signatures.split():
            version, _, value = entry.partition(",")
            given = value.strip().lower().encode("ascii", "replace")
            if version == "v3" and hmac.compare_digest(given, expected):
                matched = True
        if not matched:
            raise WebhookRejected(
                "The webhook's v3 signature does not match its body: it was altered or signed "
                "with another secret."
            )


def _data(answer: Any) -> Any:
    """The ``data`` of WaveSpeed's ``{"code", "message", "data"}`` envelope (or the bare body)."""
    if isinstance(answer, dict) and "data" in answer:
        return answer["data"]
    return answer


def _envelope_message(answer: Any) -> str:
    if isinstance(answer, dict):
        for key in ("message", "error", "msg"):
            value = answer.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return str(answer)[:200]


def _failure(error: object, raw_status: str) -> str:
    """The failure as the user reads it; a content-filter refusal says so plainly."""
    detail = str(error).strip() if error else ""
    if not detail:
        detail = (
            "WaveSpeed gave up on the task (timeout)"
            if raw_status.strip().lower() == "timeout"
            else "WaveSpeed gave no reason"
        )
    if is_content_refusal(detail):
        return content_refused("wavespeed", detail).message
    return detail


def _seconds(durations: tuple[int, ...]) -> str:
    values = [str(d) for d in durations]
    listed = values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]
    return f"{listed} s"


def from_context(context: ProviderContext) -> Provider:
    return WaveSpeedProvider(context)
