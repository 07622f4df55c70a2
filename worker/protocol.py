"""The wire contract between the bot and its GPU worker, written once for both sides.

The worker (``worker.server``) serves it and the bot's client (``adapters.providers.local``)
speaks it, so routes, field names, the request's shape, the limits the worker announces and the
webhook key are defined here and nowhere else. This module needs nothing heavy: the bot imports
it without torch.

- ``POST /v1/tasks``: ``multipart/form-data`` with one ``request`` part (the JSON of
  ``TaskRequest``) followed by one ``reference`` part per reference file, in slot order. Answers
  ``202`` and the task as ``GET`` shows it.
- ``GET /v1/tasks/{id}``: ``{id, state, progress (0–100), queue_position, error, …}``.
- ``GET /v1/tasks/{id}/result``: the MP4 (``409`` until the task has succeeded).
- ``POST /v1/tasks/{id}/cancel``: ``{cancelled, state}``.
- ``GET /healthz``: the model, its devices, the queue, and the ``limits`` (``WorkerLimits``).
- Errors: ``{"error": {"code", "message"}}`` with 400, 401, 404, 409, 413, 422 or 503.

Every route wants ``Authorization: Bearer <R2V_WORKER_TOKEN>``. When a task ends, the worker
POSTs ``{"type": "task.<state>", "data": {"id", "state"}}`` to the task's ``webhook_url``, signed
with Standard Webhooks under the key ``webhook_secret(token)`` derives.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.errors import Refusal

TASKS_PATH = "/v1/tasks"
HEALTH_PATH = "/healthz"
REQUEST_FIELD = "request"
REFERENCE_FIELD = "reference"

MAX_PROMPT_CHARS = 5000
MAX_NEGATIVE_CHARS = 2000
MAX_SEED = 2_147_483_647

#: Names the webhook key as the worker's own use of the token (HMAC "domain separation").
_WEBHOOK_KEY_LABEL = b"r2v-bot worker webhook signing key v1"


def task_path(task_id: str) -> str:
    return f"{TASKS_PATH}/{task_id}"


def result_path(task_id: str) -> str:
    return f"{TASKS_PATH}/{task_id}/result"


def cancel_path(task_id: str) -> str:
    return f"{TASKS_PATH}/{task_id}/cancel"


def webhook_secret(token: str) -> str:
    """The Standard Webhooks secret (``whsec_<base64>``) both sides derive from the token.

    The key is HMAC-SHA256 keyed by the token over a fixed label, not the token itself: the
    operator sets one secret, yet the bearer token and the signing key are different values, so
    a signature can never be replayed as a credential and a leaked key grants no API access.
    The result is always 32 bytes, whatever the token's length or alphabet, which is the form
    the specification's ``whsec_`` secrets take.
    """
    key = hmac.new(token.encode("utf-8"), _WEBHOOK_KEY_LABEL, hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(key).decode("ascii")


def longest_seconds(max_frames: int, fps: int) -> int:
    """The longest whole-second clip within ``max_frames`` at ``fps``, whose frame count is
    ``fps × seconds + 1`` (81 frames at 16 fps → 5 s); never less than 1."""
    return max(1, (max_frames - 1) // fps)


def _invalid(message: str) -> Refusal:
    return Refusal(message, code="invalid_request")


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """What one task asks for; the reference files travel beside it in the same multipart body.

    ``duration`` is in whole seconds and ``resolution``/``aspect_ratio`` are names the worker's
    ``WorkerLimits`` lists; the worker turns them into frames and pixels.
    """

    prompt: str
    duration: int
    resolution: str
    aspect_ratio: str
    negative_prompt: str = ""
    seed: int | None = None
    webhook_url: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "duration": self.duration,
            "resolution": self.resolution,
            "aspect_ratio": self.aspect_ratio,
            "seed": self.seed,
            "webhook_url": self.webhook_url,
        }

    @classmethod
    def from_json(cls, data: object) -> TaskRequest:
        """Read a request, or raise ``Refusal`` (``invalid_request``) naming the bad field.

        Only the shape is checked here; whether the worker offers that size and length is for
        the worker to say, against its own limits.
        """
        if not isinstance(data, Mapping):
            raise _invalid("The request part must be a JSON object.")
        prompt = data.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _invalid("prompt is missing or empty: describe the scene to make.")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise _invalid(
                f"prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are accepted."
            )
        negative = data.get("negative_prompt") or ""
        if not isinstance(negative, str) or len(negative) > MAX_NEGATIVE_CHARS:
            raise _invalid(
                f"negative_prompt must be text of at most {MAX_NEGATIVE_CHARS} characters."
            )
        duration = data.get("duration")
        if not isinstance(duration, int) or isinstance(duration, bool):
            raise _invalid("duration must be a whole number of seconds.")
        resolution = data.get("resolution")
        aspect = data.get("aspect_ratio")
        if not isinstance(resolution, str) or not isinstance(aspect, str):
            raise _invalid('resolution and aspect_ratio must be names such as "480p" and "16:9".')
        seed = data.get("seed")
        if seed is not None and (
            not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED
        ):
            raise _invalid(f"seed must be a whole number from 0 to {MAX_SEED}, or null.")
        webhook = data.get("webhook_url")
        if webhook is not None and (
            not isinstance(webhook, str) or not webhook.startswith(("http://", "https://"))
        ):
            raise _invalid("webhook_url must be an http(s) URL, or null.")
        return cls(
            prompt=prompt,
            duration=duration,
            resolution=resolution,
            aspect_ratio=aspect,
            negative_prompt=negative,
            seed=seed,
            webhook_url=webhook,
        )


@dataclass(frozen=True, slots=True)
class WorkerLimits:
    """What the worker accepts, as ``/healthz`` announces it and the bot's client reads it.

    ``sizes`` maps each resolution name to its aspect ratios and their ``(width, height)``.
    """

    max_references: int
    sizes: Mapping[str, Mapping[str, tuple[int, int]]]
    durations: tuple[int, int]
    fps: int
    #: The most frames a clip may have (``R2V_WORKER_MAX_FRAMES``); ``None`` from a worker
    #: older than the setting.
    max_frames: int | None = None

    @property
    def resolutions(self) -> tuple[str, ...]:
        return tuple(self.sizes)

    @property
    def aspect_ratios(self) -> tuple[str, ...]:
        """The aspect ratios every resolution offers (the bot asks for the two independently)."""
        shared: list[str] | None = None
        for by_aspect in self.sizes.values():
            names = list(by_aspect)
            shared = names if shared is None else [a for a in shared if a in names]
        return tuple(shared or ())

    def to_json(self) -> dict[str, Any]:
        return {
            "max_references": self.max_references,
            "sizes": {
                name: {aspect: list(size) for aspect, size in by_aspect.items()}
                for name, by_aspect in self.sizes.items()
            },
            "durations": list(self.durations),
            "fps": self.fps,
            "max_frames": self.max_frames,
        }

    @classmethod
    def from_json(cls, data: object) -> WorkerLimits:
        """Read announced limits; ``ValueError`` when they are not in this shape."""
        if not isinstance(data, Mapping):
            raise ValueError("limits must be a JSON object")
        try:
            sizes = {
                str(name): {
                    str(aspect): (int(size[0]), int(size[1])) for aspect, size in by_aspect.items()
                }
                for name, by_aspect in data["sizes"].items()
            }
            low, high = data["durations"]
            max_frames = data.get("max_frames")
            limits = cls(
                max_references=int(data["max_references"]),
                sizes=sizes,
                durations=(int(low), int(high)),
                fps=int(data["fps"]),
                max_frames=None if max_frames is None else int(max_frames),
            )
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise ValueError(f"limits are malformed ({exc!r})") from exc
        if not sizes or limits.max_references < 1 or low > high:
            raise ValueError("limits offer nothing (no sizes, no references or no durations)")
        return limits
