"""Freepik (api.freepik.com): Wan 2.7 reference-to-video from public links, unsigned webhooks.

What is particular to Freepik (PROVIDERS.md):
- It fetches every reference by public URL and has no upload API, so it needs
  ``R2V_PUBLIC_URL``: references go out as our signed, expiring ``/media`` links.
- Voices ride on their reference: ``image_urls``/``video_urls`` items are
  ``{"url", "reference_voice"}``. Images and videos are counted apart (label style ``separate``).
- It calls the webhook on every status change and signs nothing, so a webhook is trusted only as
  far as the engine's per-job URL token goes, and the status is always fetched again from the API.
- An answered 503 is retried with exponential backoff (the shared ``Api`` does it).
"""

from __future__ import annotations

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

DEFAULT_BASE_URL = "https://api.freepik.com"
TASKS_PATH = "/v1/ai/reference-to-video/wan-2-7"

#: Freepik publishes no price for this model in PROVIDERS.md: no estimate unless R2V_PRICES
#: gives one.
DEFAULT_PRICES = PriceTable()

#: CREATED is documented; IN_PROGRESS, COMPLETED and FAILED come from third parties (unconfirmed).
_STATES: Mapping[str, TaskState] = {
    "created": TaskState.PENDING,
    "in_progress": TaskState.RUNNING,
    "completed": TaskState.SUCCEEDED,
    "failed": TaskState.FAILED,
}


class FreepikProvider(HostedProvider):
    """A Freepik client for Wan 2.7 R2V.

    ``prompt_extend`` (``additional_settings.prompt_extend``) is off by default because the
    provider's rewrite could drop the reference labels the prompt depends on.
    """

    name = "freepik"

    def __init__(self, context: ProviderContext, *, prompt_extend: bool = False) -> None:
        capabilities = Capabilities(
            name=self.name,
            max_references=5,
            image_durations=(2, 10),
            video_durations=(2, 10),
            resolutions=("720p", "1080p"),
            voice=True,
            label_style=context.label_style(self.name, LabelStyle.SEPARATE),
            webhooks=True,
            needs_public_media=True,
            prices=context.prices(self.name, DEFAULT_PRICES),
            max_image_side=8000,
            max_image_bytes=20 * 1024 * 1024,
            max_video_bytes=100 * 1024 * 1024,
        )
        api = Api(
            self.name,
            context,
            context.base_url(self.name, DEFAULT_BASE_URL),
            {"x-freepik-api-key": context.key(self.name)},
        )
        super().__init__(context, capabilities, api)
        self._prompt_extend = prompt_extend

    async def check_key(self) -> KeyCheck:
        """List this model's tasks: one cheap authenticated call.

        The list endpoint is what Freepik offers for its other models (unconfirmed for this one),
        so any answer but 401/403 counts as the key being accepted.
        """
        try:
            await self.api.call("GET", TASKS_PATH, ok=(400, 404, 405))
        except ProviderError as exc:
            return KeyCheck(False, exc.message)
        if self.context.settings.public_url is None:
            return KeyCheck(
                True,
                "key accepted, but Freepik fetches references by URL: set R2V_PUBLIC_URL "
                "or its jobs cannot start.",
            )
        return KeyCheck(
            True, "key accepted; webhooks on (unsigned: URL token and status re-fetch).", True
        )

    async def submit(self, request: ProviderRequest) -> str:
        body = await self._body(request)
        answer = await self.api.json("POST", TASKS_PATH, submit=True, json=body)
        data = _data(answer)
        task_id = data.get("task_id") if isinstance(data, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise ProviderError(
                "freepik answered the request to start the video without a task id. Check your "
                "Freepik dashboard before trying again: it may have started it.",
                code="provider_error",
            )
        return task_id

    async def _body(self, request: ProviderRequest) -> dict[str, Any]:
        """The request body: references as signed links with their voices, in slot order."""
        images: list[dict[str, str]] = []
        videos: list[dict[str, str]] = []
        for reference in request.references:
            url, voice = await self.stage(reference)
            item = {"url": url}
            if voice is not None:
                item["reference_voice"] = voice
            (videos if reference.kind is MediaKind.VIDEO else images).append(item)
        body: dict[str, Any] = {"prompt": request.prompt}
        if request.negative_prompt:
            body["negative_prompt"] = request.negative_prompt
        if images:
            body["image_urls"] = images
        if videos:
            body["video_urls"] = videos
        body["aspect_ratio"] = request.aspect_ratio
        body["resolution"] = request.resolution.upper()
        body["duration"] = request.duration
        if request.seed is not None:
            body["seed"] = request.seed
        body["additional_settings"] = {"prompt_extend": self._prompt_extend}
        if request.webhook_url:
            body["webhook_url"] = request.webhook_url
        return body

    async def status(self, task_id: str) -> TaskStatus:
        answer = await self.api.json("GET", f"{TASKS_PATH}/{quote(task_id, safe='')}")
        data = _data(answer)
        if not isinstance(data, dict):
            raise ProviderError(
                "freepik answered a status look-up without the task's data.",
                code="provider_error",
                retryable=True,
            )
        state = map_state(self.name, data.get("status"), _STATES)
        generated = data.get("generated")
        first = generated[0] if isinstance(generated, list) and generated else None
        if isinstance(first, dict):  # tolerate ``{"url": ...}`` items as well as bare links
            first = first.get("url")
        return TaskStatus(
            state=state,
            result_url=first if isinstance(first, str) and state is TaskState.SUCCEEDED else None,
            error=_failure(data) if state is TaskState.FAILED else None,
            raw=str(data.get("status")),
        )


def _data(answer: Any) -> Any:
    """The ``data`` of Freepik's ``{"data": {...}}`` answer (webhooks send it unwrapped)."""
    if isinstance(answer, dict) and isinstance(answer.get("data"), dict):
        return answer["data"]
    return answer


def _failure(data: Mapping[str, Any]) -> str:
    """Freepik documents no error field for a failed task, so look in the usual places."""
    detail = ""
    for key in ("error", "message", "reason", "detail", "failure_reason"):
        value = data.get(key)
        if isinstance(value, dict):
            value = value.get("message")
        if isinstance(value, str) and value.strip():
            detail = value.strip()
            break
    if not detail:
        return "Freepik gave no reason"
    if is_content_refusal(detail):
        return content_refused("freepik", detail).message
    return detail


def from_context(context: ProviderContext) -> Provider:
    return FreepikProvider(context)
