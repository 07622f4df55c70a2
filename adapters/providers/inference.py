"""inference.sh: Wan 2.7 R2V as the ``alibaba/wan-2-7-r2v`` app, with webhooks and uploads.

References are uploaded to inference.sh's own storage (``POST /files``, then a PUT of the bytes
to the signed ``upload_url``), so no public address of ours is needed for them. Webhooks are
not signed: the per-job URL token (checked by the engine) and the status look-up after every
webhook are the guard.

Two things its documents disagree on are parameters rather than constants:
- Task statuses are numbers, and their meaning moved: the current SDK has 9 uploading and
  10/11/12 completed/failed/cancelled, older pages have 9 completed (``LEGACY_STATUS_CODES``).
  Status names sent as strings are understood either way.
- The app's input field names and resolution spelling are not in PROVIDERS.md; the defaults
  follow Alibaba's own names as other inference.sh clients send them (unconfirmed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
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

DEFAULT_BASE_URL = "https://api.inference.sh"
DEFAULT_APP = "alibaba/wan-2-7-r2v"

#: The current SDK's numbers (``inferencesh.types.TaskStatus``); 9 to 12 are in PROVIDERS.md,
#: the lower ones follow the SDK's order of names.
CURRENT_STATUS_CODES: Mapping[int, str] = {
    0: "unknown",
    1: "received",
    2: "queued",
    3: "dispatched",
    4: "preparing",
    5: "serving",
    6: "setting_up",
    7: "running",
    8: "cancelling",
    9: "uploading",
    10: "completed",
    11: "failed",
    12: "cancelled",
}
#: Older pages: the same sequence one step shorter, so 9 meant completed.
LEGACY_STATUS_CODES: Mapping[int, str] = {
    0: "unknown",
    1: "received",
    2: "queued",
    3: "scheduled",
    4: "preparing",
    5: "serving",
    6: "setting_up",
    7: "running",
    8: "uploading",
    9: "completed",
    10: "failed",
    11: "cancelled",
}
#: Status names (sent as strings, or looked up from a number) as our task states. A task that
#: is cancelling or uploading its output has not ended yet.
STATES: Mapping[str, TaskState] = {
    "unknown": TaskState.PENDING,
    "received": TaskState.PENDING,
    "queued": TaskState.PENDING,
    "dispatched": TaskState.PENDING,
    "scheduled": TaskState.PENDING,
    "preparing": TaskState.PENDING,
    "serving": TaskState.PENDING,
    "setting_up": TaskState.PENDING,
    "running": TaskState.RUNNING,
    "cancelling": TaskState.RUNNING,
    "uploading": TaskState.RUNNING,
    "completed": TaskState.SUCCEEDED,
    "failed": TaskState.FAILED,
    "cancelled": TaskState.CANCELLED,
    "canceled": TaskState.CANCELLED,
}
#: Our names for the app's inputs → the app's field names (unconfirmed, see the module text).
INPUT_FIELDS: Mapping[str, str] = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "images": "reference_images",
    "videos": "reference_videos",
    "voice": "reference_voice",
    "resolution": "resolution",
    "aspect_ratio": "ratio",
    "duration": "duration",
    "seed": "seed",
}
RESOLUTIONS: Mapping[str, str] = {"720p": "720P", "1080p": "1080P"}
#: Where the app's output holds the video (unconfirmed; other places are searched too).
DEFAULT_OUTPUT_FIELD = "video"

_KEY_CHECK_TASK = "r2v-key-check"


class InferenceProvider(HostedProvider):
    """inference.sh's task API: run an app, follow its task, download its output."""

    name = "inference"

    def __init__(
        self,
        context: ProviderContext,
        *,
        app: str = DEFAULT_APP,
        status_codes: Mapping[int, str] = CURRENT_STATUS_CODES,
        input_fields: Mapping[str, str] = INPUT_FIELDS,
        resolutions: Mapping[str, str] = RESOLUTIONS,
        output_field: str = DEFAULT_OUTPUT_FIELD,
    ) -> None:
        capabilities = Capabilities(
            name=self.name,
            max_references=5,
            image_durations=(2, 15),
            video_durations=(2, 10),
            resolutions=tuple(resolutions),
            voice=True,
            label_style=context.label_style(self.name, LabelStyle.SEPARATE),
            webhooks=True,
            needs_public_media=False,
            # No price is documented: estimates stay unknown unless R2V_PRICES gives rates.
            prices=context.prices(self.name, PriceTable()),
        )
        api = Api(
            self.name,
            context,
            context.base_url(self.name, DEFAULT_BASE_URL),
            {"Authorization": f"Bearer {context.key(self.name)}"},
        )
        super().__init__(context, capabilities, api)
        self.app = app
        self._codes = dict(status_codes)
        self._fields = {**INPUT_FIELDS, **input_fields}
        self._resolutions = dict(resolutions)
        self._output_field = output_field

    async def check_key(self) -> KeyCheck:
        """Look up a made-up task: refused with 401 when the key is not accepted."""
        try:
            await self.api.call("GET", _task_path(_KEY_CHECK_TASK), ok=(400, 404))
        except ProviderError as exc:
            if exc.auth:
                return KeyCheck(False, exc.message)
            return KeyCheck(False, f"the key could not be checked: {exc.message}")
        public = self.context.settings.public_url is not None
        hooks = (
            "webhooks go to R2V_PUBLIC_URL (unsigned: checked by their URL token)"
            if public
            else "no R2V_PUBLIC_URL, so jobs are polled"
        )
        return KeyCheck(True, f"key accepted by {self.api.base_url}; {hooks}", webhooks=public)

    async def submit(self, request: ProviderRequest) -> str:
        body: dict[str, Any] = {"app": self.app, "input": await self._inputs(request)}
        if request.webhook_url:
            body["webhook"] = request.webhook_url
        task = _dict(self._unwrap(await self.api.json("POST", "/apps/run", submit=True, json=body)))
        task_id = task.get("id")
        if not isinstance(task_id, str) or not task_id:
            raise ProviderError(
                "inference.sh accepted the request but answered no task id; check its "
                "dashboard before trying again.",
                code="submit_unknown",
            )
        return task_id

    async def status(self, task_id: str) -> TaskStatus:
        task = _dict(self._unwrap(await self.api.json("GET", _task_path(task_id))))
        raw = self.status_name(task.get("status"))
        state = map_state(self.name, raw, STATES)
        if state is TaskState.SUCCEEDED:
            url = _video_url(task.get("output"), self._output_field)
            return TaskStatus(TaskState.SUCCEEDED, progress=1.0, result_url=url)
        if state is TaskState.FAILED:
            return TaskStatus(TaskState.FAILED, error=self._failure(task.get("error")))
        return TaskStatus(state, raw=raw)

    async def cancel(self, task_id: str) -> bool:
        path = f"{_task_path(task_id)}/cancel"
        response = await self.api.call("POST", path, ok=(400, 404, 409))
        return response.is_success

    def status_name(self, raw: object) -> str:
        """A task's status as a name: numbers through the status table, names as given."""
        if isinstance(raw, bool):
            return str(raw)
        if isinstance(raw, int):
            return self._codes.get(raw, str(raw))
        text = str(raw).strip()
        if text.isdigit():
            return self._codes.get(int(text), text)
        return text.lower()

    async def stage_file(self, blob: str, path: str, mime: str) -> str:
        """Upload the file to inference.sh's storage and answer its ``uri``."""
        size = (await asyncio.to_thread(Path(path).stat)).st_size
        entry = {
            "uri": "",
            "filename": f"{blob[:16]}{MIME_EXTENSIONS.get(mime, '')}",
            "content_type": mime,
            "size": size,
        }
        answer = self._unwrap(await self.api.json("POST", "/files", json={"files": [entry]}))
        created = answer[0] if isinstance(answer, list) and answer else answer
        file = _dict(created)
        upload_url, uri = file.get("upload_url"), file.get("uri")
        if not isinstance(upload_url, str) or not isinstance(uri, str) or not uri:
            raise ProviderError(
                "inference.sh did not hand out an upload address for a reference.",
                code="provider_error",
                retryable=True,
            )
        await self.put_file(upload_url, Path(path), mime)
        return uri

    async def _inputs(self, request: ProviderRequest) -> dict[str, Any]:
        staged = await self.stage_all(request)
        images, videos, voices = staged.images, staged.videos, staged.voices
        f = self._fields
        inputs: dict[str, Any] = {
            f["prompt"]: request.prompt,
            f["resolution"]: self._resolutions.get(request.resolution, request.resolution),
            f["aspect_ratio"]: request.aspect_ratio,
            f["duration"]: request.duration,
        }
        if images:
            inputs[f["images"]] = images
        if videos:
            inputs[f["videos"]] = videos
        if voices:
            # The app takes one voice clip: the first voiced reference's.
            inputs[f["voice"]] = voices[0][1]
            if len(voices) > 1:
                log.warning(
                    "inference.sh takes one voice clip; the voices of %s were left out",
                    ", ".join(label for label, _ in voices[1:]),
                )
        if request.negative_prompt:
            inputs[f["negative_prompt"]] = request.negative_prompt
        if request.seed is not None:
            inputs[f["seed"]] = request.seed
        return inputs

    def _unwrap(self, answer: object) -> object:
        """The payload of an answer, wrapped as ``{"success", "data"}`` or bare."""
        if not isinstance(answer, dict):
            return answer
        if answer.get("success") is False:
            detail = _error_text(answer.get("error") or answer.get("message")) or "no reason"
            if is_content_refusal(detail):
                raise content_refused(self.name, detail)
            raise ProviderError(
                f"inference.sh refused the request ({detail}).", code="provider_refused"
            )
        return answer.get("data", answer)

    def _failure(self, error: object) -> str:
        detail = _error_text(error) or "no reason given"
        if is_content_refusal(detail):
            return content_refused(self.name, detail).message
        return detail


def _video_url(output: object, field: str) -> str | None:
    """The video's URL in a task's output: at ``field``, else the first URL found in it. A file
    may be given as a bare URL or as an object with ``uri`` or ``url``."""
    if isinstance(output, dict) and field in output:
        found = _url(output[field])
        if found:
            return found
    return _url(output)


def _url(value: object) -> str | None:
    if isinstance(value, str):
        return value if value.startswith(("http://", "https://")) else None
    if isinstance(value, dict):
        for key in ("uri", "url"):
            found = _url(value.get(key))
            if found:
                return found
        values: list[object] = list(value.values())
    elif isinstance(value, list):
        values = list(value)
    else:
        return None
    return next((found for item in values if (found := _url(item))), None)


def _error_text(error: object) -> str:
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail") or error.get("error")
    return str(error).strip() if error else ""


def _task_path(task_id: str) -> str:
    return f"/tasks/{quote(task_id, safe='')}"


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def from_context(context: ProviderContext) -> Provider:
    return InferenceProvider(context)
