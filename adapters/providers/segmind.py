"""Segmind: Wan 2.7 R2V through its asynchronous v2 API (submit, then poll).

Segmind sends no webhooks and has no upload API here: it fetches references from URLs, so they
go out as our signed ``/media`` links (``R2V_PUBLIC_URL`` must be set). Its inputs take one
reference image and one reference video, each a single URL string, so a request holds at most
two references, of different kinds. Its prompt names them without a space: Image1, Video1.

Its async inference (docs.segmind.com, "async inference"): the submit answers ``request_id``,
``status_url`` and ``response_url``. The status URL answers the status alone (QUEUED,
PROCESSING, COMPLETED, FAILED); the response URL answers the result once COMPLETED (what it
answers before is not documented, so it is read only then). Both URLs are used as given, kept in
the job's task id; a bare request id (older jobs) gets the documented paths.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from adapters.providers.base import (
    Api,
    HostedProvider,
    ProviderContext,
    content_refused,
    is_content_refusal,
    map_state,
    task_id_with_urls,
    urls_in_task_id,
)
from bot.errors import ProviderError
from bot.models import MediaKind
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

DEFAULT_BASE_URL = "https://api.segmind.com"
SUBMIT_PATH = "/v2/wan2.7-r2v"
#: The documented status and result paths, for a request whose submit answer gave no URLs.
STATUS_PATH = "/v2/requests/{request_id}/status"
RESPONSE_PATH = "/v2/requests/{request_id}"
#: Segmind's status words as our states: QUEUED, PROCESSING, COMPLETED and FAILED are
#: documented; the other usual queue words are accepted in any of their spellings.
STATES: Mapping[str, TaskState] = {
    "queued": TaskState.PENDING,
    "pending": TaskState.PENDING,
    "in_queue": TaskState.PENDING,
    "processing": TaskState.RUNNING,
    "running": TaskState.RUNNING,
    "in_progress": TaskState.RUNNING,
    "completed": TaskState.SUCCEEDED,
    "succeeded": TaskState.SUCCEEDED,
    "success": TaskState.SUCCEEDED,
    "failed": TaskState.FAILED,
    "error": TaskState.FAILED,
    "cancelled": TaskState.CANCELLED,
    "canceled": TaskState.CANCELLED,
}
RESOLUTIONS: Mapping[str, str] = {"720p": "720P", "1080p": "1080P"}
#: The model page's price, per generation whatever its length: $0.625 at 720p, $0.938 at 1080p.
DEFAULT_PRICES = PriceTable(
    by_duration={
        (resolution, seconds): price
        for resolution, price in (("720p", 0.625), ("1080p", 0.938))
        for seconds in range(2, 16)
    }
)

_KEY_CHECK_REQUEST = "r2v-key-check"


class SegmindProvider(HostedProvider):
    """Segmind's serverless API for ``wan2.7-r2v``, asynchronous flavour."""

    name = "segmind"

    def __init__(
        self,
        context: ProviderContext,
        *,
        states: Mapping[str, TaskState] = STATES,
    ) -> None:
        capabilities = Capabilities(
            name=self.name,
            # One image and one video at most (see the module text); two images are refused
            # at submission with a reason, since the limit is per kind.
            max_references=2,
            max_images=1,
            max_videos=1,
            image_durations=(2, 15),
            video_durations=(2, 10),
            resolutions=tuple(RESOLUTIONS),
            # Its documented inputs have no aspect ratio: the model's default (16:9) is all
            # it makes, so other ratios are refused rather than silently ignored.
            aspect_ratios=("16:9",),
            voice=True,
            label_style=context.label_style(self.name, LabelStyle.COMPACT),
            webhooks=False,
            needs_public_media=True,
            prices=context.prices(self.name, DEFAULT_PRICES),
        )
        api = Api(
            self.name,
            context,
            context.base_url(self.name, DEFAULT_BASE_URL),
            {"x-api-key": context.key(self.name)},
        )
        super().__init__(context, capabilities, api)
        self._states = {word.lower(): state for word, state in states.items()}

    async def check_key(self) -> KeyCheck:
        """Look up a made-up request: refused with 401 when the key is not accepted."""
        try:
            await self.api.call("GET", _path(STATUS_PATH, _KEY_CHECK_REQUEST), ok=(400, 404, 422))
        except ProviderError as exc:
            if exc.auth:
                return KeyCheck(False, exc.message)
            return KeyCheck(False, f"the key could not be checked: {exc.message}")
        media = (
            "references are served from R2V_PUBLIC_URL"
            if self.context.settings.public_url
            else "R2V_PUBLIC_URL is not set, so jobs are refused: Segmind fetches references by URL"
        )
        return KeyCheck(
            True,
            f"key accepted by {self.api.base_url}; no webhooks (jobs are polled); {media}",
            webhooks=False,
        )

    async def submit(self, request: ProviderRequest) -> str:
        body = await self._body(request)
        answer = _dict(await self.api.json("POST", SUBMIT_PATH, submit=True, json=body))
        request_id = answer.get("request_id") or answer.get("id")
        if not isinstance(request_id, str) or not request_id:
            raise ProviderError(
                "segmind accepted the request but answered no request id; check its dashboard "
                "before trying again.",
                code="submit_unknown",
            )
        urls = {name: answer.get(f"{name}_url") for name in ("status", "response")}
        return task_id_with_urls(request_id, {k: v for k, v in urls.items() if isinstance(v, str)})

    async def status(self, task_id: str) -> TaskStatus:
        """Poll the status URL; read the response URL only once the status is COMPLETED."""
        request_id, urls = urls_in_task_id(task_id)
        status_url = urls.get("status") or _path(STATUS_PATH, request_id)
        answer = _dict(await self.api.json("GET", status_url))
        raw = str(answer.get("status", ""))
        state = map_state(self.name, raw, self._states)
        if state is TaskState.SUCCEEDED:
            response_url = urls.get("response") or _path(RESPONSE_PATH, request_id)
            result = _dict(await self.api.json("GET", response_url))
            url = _video_url(result.get("output"))
            return TaskStatus(TaskState.SUCCEEDED, progress=1.0, result_url=url)
        if state is TaskState.FAILED:
            return TaskStatus(TaskState.FAILED, error=self._failure(answer))
        return TaskStatus(state, raw=raw)

    async def _body(self, request: ProviderRequest) -> dict[str, Any]:
        _check_one_of_each(request)
        body: dict[str, Any] = {
            "prompt": request.prompt,
            "duration": request.duration,
            "resolution": RESOLUTIONS.get(request.resolution, request.resolution.upper()),
        }
        voices: list[tuple[str, str]] = []
        for reference in request.references:
            url, voice = await self.stage(reference)
            field = "reference_videos" if reference.kind is MediaKind.VIDEO else "reference_images"
            body[field] = url
            if voice is not None:
                voices.append((reference.label, voice))
        if voices:
            # One voice field: the first voiced reference's.
            body["reference_voice"] = voices[0][1]
            if len(voices) > 1:
                log.warning(
                    "segmind takes one voice clip; the voice of %s was left out", voices[1][0]
                )
        if request.negative_prompt:
            body["negative_prompt"] = request.negative_prompt
        if request.seed is not None:
            body["seed"] = request.seed
        return body

    def _failure(self, answer: Mapping[str, Any]) -> str:
        error: object = answer.get("error") or answer.get("detail") or answer.get("message")
        if isinstance(error, dict):
            error = error.get("message") or error.get("detail")
        detail = str(error).strip() if error else "no reason given"
        if is_content_refusal(detail):
            return content_refused(self.name, detail).message
        return detail


def _check_one_of_each(request: ProviderRequest) -> None:
    """Segmind's fields hold one URL each: refuse a second image or video, saying so."""
    for kind in (MediaKind.IMAGE, MediaKind.VIDEO):
        labels = [r.label for r in request.references if r.kind is kind]
        if len(labels) > 1:
            raise ProviderError(
                f"segmind takes at most one reference image and one reference video, and this "
                f"request has {len(labels)} {kind}s ({', '.join(labels)}). Mention fewer "
                f"characters with a {kind}, or choose another provider.",
                code="too_many_references",
            )


def _path(template: str, request_id: str) -> str:
    return template.format(request_id=quote(request_id, safe=""))


def _video_url(output: object) -> str | None:
    """The video's URL: the output itself, or the first URL in a list or object of it."""
    if isinstance(output, str):
        return output if output.startswith(("http://", "https://")) else None
    if isinstance(output, list):
        return next((url for item in output if (url := _video_url(item))), None)
    if isinstance(output, dict):
        for key in ("video", "url", "video_url", "uri"):
            if url := _video_url(output.get(key)):
                return url
    return None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def from_context(context: ProviderContext) -> Provider:
    return SegmindProvider(context)
