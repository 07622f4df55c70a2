"""Together AI (api.together.ai): Wan 2.7 reference-to-video through its video jobs API, polled.

What is particular to Together (PROVIDERS.md):
- ``POST /v2/videos`` answers the job itself (its id at the top level); ``GET /v2/videos/{id}``
  reports ``queued``, ``in_progress``, ``completed``, ``failed`` or ``cancelled``.
- No webhooks are documented, so every job is followed by polling alone.
- References go by URL inside ``media`` and Together has no upload API, so they are our signed
  ``/media`` links (``R2V_PUBLIC_URL`` must be set).
- ``seconds`` is a string ("5"), the resolution is spelled "720P" / "1080P".
- The R2V model refuses audio inputs: voices are never sent (the composer drops them with a note
  to the user, since ``capabilities.voice`` is False).
- The finished video's ``outputs.video_url`` is a short link that redirects; the download
  follows redirects. ``outputs.cost`` is what the job was charged, logged and kept a while.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
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

DEFAULT_BASE_URL = "https://api.together.ai"
DEFAULT_MODEL = "Wan-AI/wan2.7-r2v"
VIDEOS_PATH = "/v2/videos"
VIDEO_PATH = "/v2/videos/{task_id}"
RESOLUTIONS: Mapping[str, str] = {"720p": "720P", "1080p": "1080P"}

#: Together's documented job statuses.
STATES: Mapping[str, TaskState] = {
    "queued": TaskState.PENDING,
    "in_progress": TaskState.RUNNING,
    "completed": TaskState.SUCCEEDED,
    "failed": TaskState.FAILED,
    "cancelled": TaskState.CANCELLED,
}

#: PROVIDERS.md lists no Together price for this model: estimates stay unknown unless
#: ``R2V_PRICES`` gives rates. Reference video seconds are counted, as R2V billing usually does.
DEFAULT_PRICES = PriceTable(bills_reference_video=True)

#: How many finished jobs' charges ``charge`` remembers.
_CHARGES_KEPT = 256
_KEY_CHECK_ID = "r2v-key-check"


class TogetherProvider(HostedProvider):
    """A Together AI client for Wan 2.7 R2V (submit, then poll).

    The label style is not documented by Together: ``separate`` (Alibaba's own text) unless
    ``R2V_TOGETHER_LABELS`` says otherwise. ``model`` is the model id Together runs; ``durations``
    the output lengths it accepts (2–10 s, with or without a reference video).
    """

    name = "together"

    def __init__(
        self,
        context: ProviderContext,
        *,
        model: str = DEFAULT_MODEL,
        durations: tuple[int, int] = (2, 10),
    ) -> None:
        capabilities = Capabilities(
            name=self.name,
            max_references=5,
            image_durations=durations,
            video_durations=durations,
            resolutions=tuple(RESOLUTIONS),
            voice=False,  # the R2V model refuses audio inputs
            label_style=context.label_style(self.name, LabelStyle.SEPARATE),
            webhooks=False,
            needs_public_media=True,
            prices=context.prices(self.name, DEFAULT_PRICES),
        )
        api = Api(
            self.name,
            context,
            context.base_url(self.name, DEFAULT_BASE_URL),
            {"Authorization": f"Bearer {context.key(self.name)}"},
        )
        super().__init__(context, capabilities, api)
        self.model = model
        self._charges: OrderedDict[str, float] = OrderedDict()

    async def check_key(self) -> KeyCheck:
        """Look up a job that does not exist: free, 404 with a good key, 401 with a bad one."""
        try:
            await self.api.call("GET", _video_path(_KEY_CHECK_ID), ok=(400, 404))
        except ProviderError as exc:
            return KeyCheck(False, exc.message)
        media = (
            "references are served from R2V_PUBLIC_URL"
            if self.context.settings.public_url
            else "R2V_PUBLIC_URL is not set, so its jobs are refused: Together fetches "
            "references by URL"
        )
        return KeyCheck(True, f"key accepted; no webhooks (jobs are polled); {media}.")

    async def submit(self, request: ProviderRequest) -> str:
        answer = await self.api.json(
            "POST", VIDEOS_PATH, submit=True, json=await self._body(request)
        )
        task_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise ProviderError(
                "together accepted the request to start the video but answered no job id. "
                "Check your Together dashboard before trying again: it may have started it.",
                code="submit_unknown",
            )
        return task_id

    async def _body(self, request: ProviderRequest) -> dict[str, Any]:
        """The documented body: references as signed links under ``media``, in slot order."""
        images: list[str] = []
        videos: list[dict[str, str]] = []
        for reference in request.references:
            url = await self.stage_file(reference.blob, str(reference.path), reference.mime)
            if reference.kind is MediaKind.VIDEO:
                videos.append({"video": url})
            else:
                images.append(url)
        media: dict[str, Any] = {}
        if images:
            media["reference_images"] = images
        if videos:
            media["reference_videos"] = videos
        body: dict[str, Any] = {"model": self.model, "prompt": request.prompt}
        if request.negative_prompt:
            body["negative_prompt"] = request.negative_prompt
        body["seconds"] = str(request.duration)
        body["resolution"] = RESOLUTIONS.get(request.resolution, request.resolution.upper())
        body["ratio"] = request.aspect_ratio
        if request.seed is not None:
            body["seed"] = request.seed
        body["media"] = media
        return body

    async def status(self, task_id: str) -> TaskStatus:
        answer = await self.api.json("GET", _video_path(task_id))
        if not isinstance(answer, dict):
            raise ProviderError(
                "together answered a status look-up with something other than a job.",
                code="provider_error",
                retryable=True,
            )
        raw = answer.get("status")
        state = map_state(self.name, raw, STATES)
        outputs = answer.get("outputs")
        outputs = outputs if isinstance(outputs, dict) else {}
        if state is TaskState.SUCCEEDED:
            self._record_charge(task_id, outputs.get("cost"))
            url = outputs.get("video_url")
            if not isinstance(url, str) or not url:
                return TaskStatus(
                    TaskState.FAILED,
                    error="Together finished the job, but its answer holds no outputs.video_url",
                )
            return TaskStatus(
                TaskState.SUCCEEDED, progress=1.0, result_url=url, cost=self.charge(task_id)
            )
        if state is TaskState.FAILED:
            return TaskStatus(TaskState.FAILED, error=_failure(answer.get("error")))
        return TaskStatus(state, raw=str(raw))

    async def cancel(self, task_id: str) -> bool:
        """Together documents no way to cancel a video job, so nothing is asked."""
        return False

    def charge(self, task_id: str) -> float | None:
        """What Together charged (``outputs.cost``, USD) for a recently finished job."""
        return self._charges.get(task_id)

    def _record_charge(self, task_id: str, cost: object) -> None:
        if isinstance(cost, bool) or not isinstance(cost, int | float):
            return
        if task_id not in self._charges:
            log.info("together job %s charged $%.4f", task_id, cost)
        self._charges[task_id] = float(cost)
        self._charges.move_to_end(task_id)
        while len(self._charges) > _CHARGES_KEPT:
            self._charges.popitem(last=False)


def _video_path(task_id: str) -> str:
    return VIDEO_PATH.format(task_id=quote(task_id, safe=""))


def _failure(error: object) -> str:
    """The failure as the user reads it, from ``error {code, message}``; a content-filter
    refusal says so plainly."""
    if isinstance(error, dict):
        code = str(error.get("code") or "").strip()
        message = str(error.get("message") or "").strip()
    else:
        code, message = "", str(error or "").strip()
    detail = ": ".join(part for part in (code, message) if part) or "Together gave no reason"
    if is_content_refusal(detail):
        return content_refused("together", detail).message
    return detail


def from_context(context: ProviderContext) -> Provider:
    return TogetherProvider(context)
