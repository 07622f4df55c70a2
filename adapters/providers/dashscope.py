"""DashScope (Alibaba Model Studio): Wan 2.7 R2V from the model's own maker, polled.

DashScope sends no webhooks, so every job is followed by polling alone. It fetches references
by URL and its temporary upload is Beijing-only and not for production, so references go out as
our signed ``/media`` links (``R2V_PUBLIC_URL`` must be set).

A key, the model and the endpoint must be of one region. ``R2V_DASHSCOPE_REGION`` (singapore by
default, virginia, beijing) picks the regional base when ``R2V_DASHSCOPE_BASE_URL`` is not set;
the base may also be a newer workspace domain, ``https://{WorkspaceId}.{region}.maas.aliyuncs.com``.
A region setting that contradicts the base URL is refused at start, and a rejected key's message
names the region called and the settings that choose it.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
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
from bot.errors import ConfigurationError, ProviderError
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

DEFAULT_BASE_URL = "https://dashscope-intl.aliyuncs.com"
DEFAULT_REGION = "singapore"
#: Where each region's API lives; a key works only against its own region's base.
REGION_BASE_URLS: Mapping[str, str] = {
    "singapore": DEFAULT_BASE_URL,
    "virginia": "https://dashscope-us.aliyuncs.com",
    "beijing": "https://dashscope.aliyuncs.com",
}
#: The region ids of workspace domains (``https://{WorkspaceId}.{region}.maas.aliyuncs.com``).
WORKSPACE_REGIONS: Mapping[str, str] = {
    "ap-southeast-1": "singapore",
    "us-east-1": "virginia",
    "cn-beijing": "beijing",
}
_WORKSPACE = re.compile(r"^https://[A-Za-z0-9-]+\.(?P<region>[a-z0-9-]+)\.maas\.aliyuncs\.com$")
DEFAULT_MODEL = "wan2.7-r2v"
SUBMIT_PATH = "/api/v1/services/aigc/video-generation/video-synthesis"
TASK_PATH = "/api/v1/tasks/{task_id}"
#: Not in PROVIDERS.md: DashScope's task-management page documents this call, for tasks that
#: are still PENDING. Unconfirmed for R2V, so a constructor parameter (``None`` turns it off).
DEFAULT_CANCEL_PATH = "/api/v1/tasks/{task_id}/cancel"

#: DashScope's task statuses. UNKNOWN means the id is unknown or older than 24 hours: the task
#: can never finish, so it is a failure (with its own reason, see ``_failure``).
STATES: Mapping[str, TaskState] = {
    "pending": TaskState.PENDING,
    "running": TaskState.RUNNING,
    "succeeded": TaskState.SUCCEEDED,
    "failed": TaskState.FAILED,
    "canceled": TaskState.CANCELLED,
    "unknown": TaskState.FAILED,
}
RESOLUTIONS: Mapping[str, str] = {"720p": "720P", "1080p": "1080P"}
#: Error codes of Alibaba's content checks (input or output inspection, suspected IP use).
_CONTENT_CODES = ("datainspection", "ipinfringement")
#: Usage of this many recent tasks is kept for ``usage``; older entries are dropped.
_USAGE_KEPT = 256
_KEY_CHECK_TASK = "r2v-key-check"


@dataclass(frozen=True, slots=True)
class VideoUsage:
    """What DashScope billed a task for: seconds of reference video in, of video out."""

    input_seconds: float
    output_seconds: float


class DashScopeProvider(HostedProvider):
    """Alibaba Model Studio's asynchronous video-synthesis API (submit, then poll)."""

    name = "dashscope"

    def __init__(
        self,
        context: ProviderContext,
        *,
        model: str = DEFAULT_MODEL,
        prompt_extend: bool | None = None,
        watermark: bool = False,
        cancel_path: str | None = DEFAULT_CANCEL_PATH,
    ) -> None:
        """``prompt_extend``: let DashScope rewrite the prompt (``None``: its own default)."""
        capabilities = Capabilities(
            name=self.name,
            max_references=5,
            image_durations=(2, 15),
            video_durations=(2, 10),
            resolutions=tuple(RESOLUTIONS),
            voice=True,
            label_style=context.label_style(self.name, LabelStyle.SEPARATE),
            webhooks=False,
            needs_public_media=True,
            # PROVIDERS.md lists no DashScope price: estimates stay unknown unless R2V_PRICES
            # gives rates. Its usage counts input video seconds, so those are billed too.
            prices=context.prices(self.name, PriceTable(bills_reference_video=True)),
        )
        base_url, self.region = _endpoint(
            context.settings.dashscope_base_url, context.settings.dashscope_region
        )
        api = Api(
            self.name,
            context,
            base_url,
            {"Authorization": f"Bearer {context.key(self.name)}"},
            key_hint=self._region_hint,
        )
        super().__init__(context, capabilities, api)
        self.model = model
        self._prompt_extend = prompt_extend
        self._watermark = watermark
        self._cancel_path = cancel_path
        self._usage: OrderedDict[str, VideoUsage] = OrderedDict()

    async def check_key(self) -> KeyCheck:
        """Look up a made-up task: free, and refused with 401 when the key is not accepted."""
        try:
            await self.api.call("GET", _task_path(_KEY_CHECK_TASK), ok=(400, 404))
        except ProviderError as exc:
            if exc.auth:
                return KeyCheck(False, exc.message)
            return KeyCheck(False, f"the key could not be checked: {exc.message}")
        media = (
            "references are served from R2V_PUBLIC_URL"
            if self.context.settings.public_url
            else "R2V_PUBLIC_URL is not set, so jobs are refused: DashScope fetches references "
            "by URL"
        )
        return KeyCheck(
            True,
            f"key accepted by {self.api.base_url}; no webhooks (jobs are polled); {media}",
            webhooks=False,
        )

    async def submit(self, request: ProviderRequest) -> str:
        body = await self._body(request)
        answer = await self.api.json(
            "POST", SUBMIT_PATH, submit=True, json=body, headers={"X-DashScope-Async": "enable"}
        )
        output = _dict(_dict(answer).get("output"))
        task_id = output.get("task_id")
        if not isinstance(task_id, str) or not task_id:
            raise ProviderError(
                "dashscope accepted the request but answered no task id; check the DashScope "
                "console before trying again.",
                code="submit_unknown",
            )
        return task_id

    async def status(self, task_id: str) -> TaskStatus:
        answer = _dict(await self.api.json("GET", _task_path(task_id)))
        output = _dict(answer.get("output"))
        raw = output.get("task_status", "")
        state = map_state(self.name, raw, STATES)
        if state is TaskState.SUCCEEDED:
            self._record_usage(task_id, _dict(answer.get("usage")))
            url = output.get("video_url")
            return TaskStatus(
                TaskState.SUCCEEDED, progress=1.0, result_url=url if isinstance(url, str) else None
            )
        if state is TaskState.FAILED:
            return TaskStatus(TaskState.FAILED, error=self._failure(str(raw), output))
        return TaskStatus(state, raw=str(raw))

    async def cancel(self, task_id: str) -> bool:
        """DashScope cancels only tasks still waiting (PENDING); others answer an error."""
        if self._cancel_path is None:
            return False
        path = self._cancel_path.format(task_id=quote(task_id, safe=""))
        response = await self.api.call("POST", path, ok=(400, 404, 409))
        return response.is_success

    def usage(self, task_id: str) -> VideoUsage | None:
        """The billed seconds DashScope reported for a recently finished task."""
        return self._usage.get(task_id)

    async def _body(self, request: ProviderRequest) -> dict[str, Any]:
        media: list[dict[str, str]] = []
        for reference in request.references:
            url, voice = await self.stage(reference)
            kind = "reference_video" if reference.kind is MediaKind.VIDEO else "reference_image"
            item = {"type": kind, "url": url}
            if voice is not None:
                item["reference_voice"] = voice
            media.append(item)
        inputs: dict[str, Any] = {"prompt": request.prompt, "media": media}
        if request.negative_prompt:
            inputs["negative_prompt"] = request.negative_prompt
        parameters: dict[str, Any] = {
            "resolution": RESOLUTIONS.get(request.resolution, request.resolution.upper()),
            "ratio": request.aspect_ratio,
            "duration": request.duration,
            "watermark": self._watermark,
        }
        if request.seed is not None:
            parameters["seed"] = request.seed
        if self._prompt_extend is not None:
            parameters["prompt_extend"] = self._prompt_extend
        return {"model": self.model, "input": inputs, "parameters": parameters}

    def _failure(self, raw: str, output: Mapping[str, Any]) -> str:
        if raw.strip().upper() == "UNKNOWN":
            return (
                "the provider no longer knows this task: its id is unknown to DashScope or the "
                "task is older than 24 hours"
            )
        code = str(output.get("code") or "").strip()
        message = str(output.get("message") or "").strip()
        detail = ": ".join(part for part in (code, message) if part) or "no reason given"
        if code.lower().startswith(_CONTENT_CODES) or is_content_refusal(detail):
            return content_refused(self.name, detail).message
        return detail

    def _record_usage(self, task_id: str, usage: Mapping[str, Any]) -> None:
        inputs = _seconds(usage.get("input_video_duration"))
        outputs = _seconds(usage.get("output_video_duration"))
        if inputs is None and outputs is None:
            return
        record = VideoUsage(inputs or 0.0, outputs or 0.0)
        if self._usage.get(task_id) != record:
            log.info(
                "dashscope task %s billed %.1f s of reference video and %.1f s of output",
                task_id,
                record.input_seconds,
                record.output_seconds,
            )
        self._usage[task_id] = record
        self._usage.move_to_end(task_id)
        while len(self._usage) > _USAGE_KEPT:
            self._usage.popitem(last=False)

    def _region_hint(self) -> str:
        where = f"the {self.region} region" if self.region else "a base of unknown region"
        return (
            f"A DashScope key works only in its own region, and this bot calls {where} "
            f"({self.api.base_url}): set R2V_DASHSCOPE_REGION to your key's region "
            f"({', '.join(REGION_BASE_URLS)}), or R2V_DASHSCOPE_BASE_URL to its workspace "
            "domain (https://{WorkspaceId}.{region}.maas.aliyuncs.com)."
        )


def region_of(base_url: str) -> str | None:
    """The region a DashScope base URL belongs to: a regional base or a workspace domain."""
    base = base_url.rstrip("/")
    for region, url in REGION_BASE_URLS.items():
        if base == url:
            return region
    match = _WORKSPACE.match(base)
    return WORKSPACE_REGIONS.get(match.group("region")) if match else None


def _endpoint(base_url: str | None, region: str | None) -> tuple[str, str | None]:
    """The base URL to call and its region (``None``: another address, e.g. a proxy).

    A region that contradicts the base URL is refused: the key, the model and the endpoint must
    be of one region, and a mismatch would only show as a rejected key later."""
    if base_url is None:
        chosen = region or DEFAULT_REGION
        return REGION_BASE_URLS[chosen], chosen
    found = region_of(base_url)
    if region is not None and found is not None and found != region:
        raise ConfigurationError(
            f"R2V_DASHSCOPE_REGION={region} but R2V_DASHSCOPE_BASE_URL={base_url} is in the "
            f"{found} region: a DashScope key, model and endpoint must be of one region. Set "
            "one of them to match the other (or leave R2V_DASHSCOPE_REGION out)."
        )
    return base_url.rstrip("/"), found or region


def _task_path(task_id: str) -> str:
    return TASK_PATH.format(task_id=quote(task_id, safe=""))


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def from_context(context: ProviderContext) -> Provider:
    return DashScopeProvider(context)
