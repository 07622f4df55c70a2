"""Replicate: Wan 2.7 R2V as a prediction, its file uploads and its Standard Webhooks.

What is particular to Replicate (PROVIDERS.md):
- A prediction is made on the model's own endpoint (``/v1/models/{owner}/{name}/predictions``)
  and followed at ``/v1/predictions/{id}``; its ``output`` is one MP4 URL, deleted after an hour,
  so the engine fetches it as soon as the prediction has succeeded.
- References are uploaded with ``POST /v1/files`` (multipart field ``content``) and passed by the
  ``urls.get`` link it answers, so no public address of ours is needed to submit a job.
- Webhooks are true Standard Webhooks. The signing secret is a setting
  (``REPLICATE_WEBHOOK_SECRET``) or fetched from ``GET /v1/webhooks/default/secret`` at start;
  webhooks are asked for on ``start`` and ``completed`` only, the two that change a job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from adapters import webhooks
from adapters.local_files import local_file
from adapters.providers.base import (
    Api,
    HostedProvider,
    ProviderContext,
    content_refused,
    is_content_refusal,
    map_state,
)
from adapters.providers.multipart import MultipartFile
from adapters.webhooks import DEFAULT_TOLERANCE
from bot.errors import ConfigurationError, ProviderError, WebhookRejected
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

DEFAULT_BASE_URL = "https://api.replicate.com"
DEFAULT_MODEL = "wan-video/wan-2.7-r2v"
PREDICTION_PATH = "/v1/predictions/{id}"
SECRET_PATH = "/v1/webhooks/default/secret"
FILES_PATH = "/v1/files"
WEBHOOK_EVENTS = ("start", "completed")

#: PROVIDERS.md lists no price for Replicate: estimates stay unknown unless ``R2V_PRICES`` names
#: one, e.g. ``{"replicate": {"720p": 0.1, "1080p": 0.15}}``.
DEFAULT_PRICES = PriceTable()

_STATES: Mapping[str, TaskState] = {
    "starting": TaskState.PENDING,
    "processing": TaskState.RUNNING,
    "succeeded": TaskState.SUCCEEDED,
    "failed": TaskState.FAILED,
    "canceled": TaskState.CANCELLED,
}


class ReplicateProvider(HostedProvider):
    """A Replicate client for Wan 2.7 R2V.

    Parameters: ``model`` is the model's ``owner/name``; ``durations`` the output lengths it
    takes (2–10 s per its inputs); ``clock`` and ``tolerance`` check webhook timestamps.
    No voice input is documented for this model on Replicate, so voices are not sent, and no
    label style either: ``separate`` (Alibaba's own text) unless ``R2V_REPLICATE_LABELS`` says
    otherwise.
    """

    name = "replicate"

    def __init__(
        self,
        context: ProviderContext,
        *,
        model: str = DEFAULT_MODEL,
        durations: tuple[int, int] = (2, 10),
        clock: Callable[[], float] = time.time,
        tolerance: int = DEFAULT_TOLERANCE,
    ) -> None:
        settings = context.settings
        configured = settings.replicate_webhook_secret
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
            self.name,
            context,
            context.base_url(self.name, DEFAULT_BASE_URL),
            {"Authorization": f"Bearer {context.key(self.name)}"},
        )
        super().__init__(context, capabilities, api)
        self._model = model.strip("/")
        self._clock = clock
        self._tolerance = tolerance
        self._secret: str | None = None
        if configured is not None:
            self._use_secret(configured.get_secret_value(), "REPLICATE_WEBHOOK_SECRET")

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch the webhook signing secret when it is not set.

        Without it the webhooks that arrive are refused and jobs finish by polling alone.
        """
        if self._secret is not None or self.context.settings.public_url is None:
            return
        try:
            await self._fetch_secret()
        except (ProviderError, ConfigurationError) as exc:
            log.warning(
                "replicate: no webhook signing secret (%s); jobs are polled. "
                "Set REPLICATE_WEBHOOK_SECRET to check its webhooks.",
                exc.message,
            )

    async def check_key(self) -> KeyCheck:
        """Fetch the webhook signing secret: a cheap authenticated call that also tells whether
        webhooks can be checked."""
        try:
            await self._fetch_secret(keep=self._secret is None)
        except ProviderError as exc:
            if exc.auth or exc.code != "webhook_secret_missing":
                return KeyCheck(False, exc.message)
        except ConfigurationError as exc:
            return KeyCheck(True, f"token accepted; webhooks off: {exc.message}")
        if self._secret is None:
            return KeyCheck(
                True,
                "token accepted; webhooks off: Replicate gave no signing secret "
                "(set REPLICATE_WEBHOOK_SECRET), so jobs are polled.",
            )
        if self.context.settings.public_url is None:
            return KeyCheck(
                True,
                "token accepted; webhooks off: set R2V_PUBLIC_URL, jobs are polled meanwhile.",
            )
        return KeyCheck(True, "token accepted; webhooks on (Standard Webhooks).", webhooks=True)

    async def _fetch_secret(self, *, keep: bool = True) -> None:
        answer = await self.api.json("GET", SECRET_PATH)
        key = answer.get("key") if isinstance(answer, dict) else None
        if not isinstance(key, str) or not key.strip():
            raise self.webhook_secret_missing()
        if keep:
            self._use_secret(key.strip(), "Replicate's webhook secret")

    def _use_secret(self, secret: str, source: str) -> None:
        """Keep a secret once it is known to be usable (``whsec_`` and base64)."""
        try:
            webhooks.sign(secret, "msg_check", 0, b"")
        except ConfigurationError:
            raise ConfigurationError(
                f"{source} is not valid: expected whsec_ followed by base64 text."
            ) from None
        self._secret = secret

    # -- jobs ------------------------------------------------------------------------------

    async def submit(self, request: ProviderRequest) -> str:
        body: dict[str, Any] = {"input": await self._input(request)}
        if request.webhook_url:
            body["webhook"] = request.webhook_url
            body["webhook_events_filter"] = list(WEBHOOK_EVENTS)
        answer = await self.api.json(
            "POST", f"/v1/models/{self._model}/predictions", submit=True, json=body
        )
        prediction_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(prediction_id, str) or not prediction_id:
            raise ProviderError(
                "replicate accepted the request to start the video but answered no prediction "
                "id. Check your Replicate dashboard before trying again: it may have started it.",
                code="provider_error",
            )
        return prediction_id

    async def _input(self, request: ProviderRequest) -> dict[str, Any]:
        """The model's input: references uploaded as Replicate files, in slot order by kind."""
        staged = await self.stage_all(request)
        images, videos = staged.images, staged.videos
        inputs: dict[str, Any] = {"prompt": request.prompt}
        if images:
            inputs["reference_images"] = images
        if videos:
            inputs["reference_videos"] = videos
        if request.negative_prompt:
            inputs["negative_prompt"] = request.negative_prompt
        inputs["resolution"] = request.resolution.lower()
        inputs["aspect_ratio"] = request.aspect_ratio
        inputs["duration"] = request.duration
        if request.seed is not None:
            inputs["seed"] = request.seed
        return inputs

    async def status(self, task_id: str) -> TaskStatus:
        answer = await self.api.json("GET", PREDICTION_PATH.format(id=quote(task_id, safe="")))
        if not isinstance(answer, dict):
            raise ProviderError(
                "replicate answered a status look-up with something other than a prediction.",
                code="provider_error",
                retryable=True,
            )
        raw = str(answer.get("status"))
        state = map_state(self.name, raw, _STATES)
        if state is TaskState.SUCCEEDED:
            return TaskStatus(state, progress=1.0, result_url=_output_url(answer.get("output")))
        if state is TaskState.FAILED:
            return TaskStatus(state, error=_failure(answer.get("error")))
        return TaskStatus(state, raw=raw)

    async def cancel(self, task_id: str) -> bool:
        """Ask Replicate to stop; it answers the prediction, already ended or now cancelled."""
        path = PREDICTION_PATH.format(id=quote(task_id, safe="")) + "/cancel"
        answer = await self.api.json("POST", path)
        status = answer.get("status") if isinstance(answer, dict) else None
        return status not in ("succeeded", "failed")

    # -- media -----------------------------------------------------------------------------

    async def stage_file(self, blob: str, path: str, mime: str) -> str:
        """Upload a file (``POST /v1/files``, multipart field ``content``), answer ``urls.get``.

        The multipart body is streamed from disk with its length declared up front.
        """
        file = await asyncio.to_thread(local_file, Path(path))
        name = f"{blob[:16] or 'reference'}{MIME_EXTENSIONS.get(mime, Path(path).suffix)}"
        body = MultipartFile("content", name, mime, file)
        answer = await self.api.json(
            "POST",
            FILES_PATH,
            content=body,
            headers=body.headers,
        )
        urls = answer.get("urls") if isinstance(answer, dict) else None
        url = urls.get("get") if isinstance(urls, dict) else None
        if not isinstance(url, str) or not url:
            raise ProviderError(
                "replicate's upload answer names no urls.get link; the reference could not be "
                "sent.",
                code="provider_error",
                retryable=True,
            )
        return url

    # -- webhooks --------------------------------------------------------------------------

    async def check_webhook(self, headers: Mapping[str, str], body: bytes) -> None:
        """Standard Webhooks with Replicate's secret; without one, every webhook is refused."""
        if self._secret is None:
            try:
                await self._fetch_secret()
            except (ProviderError, ConfigurationError) as exc:
                raise WebhookRejected(
                    f"replicate's webhook signing secret is unknown ({exc.message}); its "
                    "webhooks cannot be checked, so its jobs are polled."
                ) from exc
        assert self._secret is not None
        webhooks.verify(self._secret, headers, body, now=self._clock(), tolerance=self._tolerance)


def _output_url(output: object) -> str | None:
    """The video's URL: one string, as documented (a list's first string is taken too)."""
    if isinstance(output, list):
        output = next((item for item in output if isinstance(item, str)), None)
    return output if isinstance(output, str) and output else None


def _failure(error: object) -> str:
    """The failure as the user reads it; a content-filter refusal says so plainly."""
    detail = str(error).strip() if error else ""
    if not detail:
        return "Replicate gave no reason"
    if is_content_refusal(detail):
        return content_refused("replicate", detail).message
    return detail


def from_context(context: ProviderContext) -> Provider:
    return ReplicateProvider(context)
