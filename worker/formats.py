"""What a clip's request means in frames and pixels, and what the worker refuses before it starts.

Wan 2.1 makes 16 frames a second, in counts of 4k + 1 (its VAE packs 4 frames into one latent
frame after the first), at sizes that are multiples of 16 (the VAE's 8× and the transformer's 2×2
patches). Each resolution is a trained frame (832×480 for 480p, 1280×720 for 720p) whose pixel
count every other aspect ratio keeps, so each costs about the same to make. The 1.3B model was
trained at 480p only; the 14B one at both.

Every refusal here is a ``Refusal`` with a stable code and the values that would be accepted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from bot.errors import Refusal
from worker.protocol import TaskRequest, WorkerLimits, longest_seconds
from worker.settings import ResolutionSpec, WorkerSettings

FPS = 16
SIZE_MULTIPLE = 16
#: Latent frames per pixel frame after the first (the VAE's temporal compression).
TEMPORAL_FACTOR = 4
ASPECT_RATIOS: Mapping[str, tuple[int, int]] = {
    "16:9": (16, 9),
    "9:16": (9, 16),
    "1:1": (1, 1),
    "4:3": (4, 3),
    "3:4": (3, 4),
}
RESOLUTIONS_480P: Mapping[str, ResolutionSpec] = {
    "480p": ResolutionSpec(width=832, height=480, flow_shift=3.0),
}
RESOLUTIONS_720P: Mapping[str, ResolutionSpec] = {
    **RESOLUTIONS_480P,
    "720p": ResolutionSpec(width=1280, height=720, flow_shift=5.0),
}


@dataclass(frozen=True, slots=True)
class ClipFormat:
    """One clip's shape as the pipeline takes it."""

    width: int
    height: int
    frames: int
    flow_shift: float


def frame_count(seconds: int) -> int:
    """The 4k + 1 frame count nearest ``seconds`` at 16 fps (5 s → 81, 2 s → 33, 1 s → 17)."""
    return TEMPORAL_FACTOR * max(1, round(seconds * FPS / TEMPORAL_FACTOR)) + 1


def latent_frames(frames: int) -> int:
    return (frames - 1) // TEMPORAL_FACTOR + 1


def _multiple(value: float) -> int:
    return max(SIZE_MULTIPLE, round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE)


def frame_size(spec: ResolutionSpec, aspect: str) -> tuple[int, int]:
    """``(width, height)`` for ``aspect``: the trained frame itself for its own shape and its
    transpose, else the shape that keeps its pixel count, each side a multiple of 16."""
    across, down = ASPECT_RATIOS[aspect]
    landscape = (
        (spec.width, spec.height) if spec.width >= spec.height else (spec.height, spec.width)
    )
    if (across, down) == (16, 9):
        return _multiple(landscape[0]), _multiple(landscape[1])
    if (across, down) == (9, 16):
        return _multiple(landscape[1]), _multiple(landscape[0])
    height = math.sqrt(spec.width * spec.height * down / across)
    return _multiple(height * across / down), _multiple(height)


def default_resolutions(model: str) -> Mapping[str, ResolutionSpec]:
    """480p for the 1.3B model, 480p and 720p for a 14B one (told apart by its name; a local
    folder of a 14B model named otherwise sets ``R2V_WORKER_RESOLUTIONS``)."""
    return RESOLUTIONS_720P if "14b" in model.lower() else RESOLUTIONS_480P


class Formats:
    """What this worker offers, and the check every request passes before it is queued."""

    def __init__(
        self,
        resolutions: Mapping[str, ResolutionSpec],
        *,
        max_frames: int,
        max_references: int,
    ) -> None:
        self._resolutions = dict(resolutions)
        self._max_frames = max_frames
        self._max_seconds = longest_seconds(max_frames, FPS)
        self._max_references = max_references

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> Formats:
        return cls(
            settings.resolutions or default_resolutions(settings.model),
            max_frames=settings.max_frames,
            max_references=settings.max_references,
        )

    def limits(self) -> WorkerLimits:
        return WorkerLimits(
            max_references=self._max_references,
            sizes={
                name: {aspect: frame_size(spec, aspect) for aspect in ASPECT_RATIOS}
                for name, spec in self._resolutions.items()
            },
            durations=(1, self._max_seconds),
            fps=FPS,
            max_frames=self._max_frames,
        )

    def warm_sizes(self) -> list[ClipFormat]:
        """The clip shapes a compiled transformer is warmed with: for each resolution, its
        fewest tokens (the shortest square clip) and its most, both ways round (the longest
        clip in 16:9 and 9:16). Compiled with dynamic shapes, the sizes between reuse them."""
        shapes = []
        for spec in self._resolutions.values():
            for aspect, seconds in (
                ("1:1", 1),
                ("16:9", self._max_seconds),
                ("9:16", self._max_seconds),
            ):
                width, height = frame_size(spec, aspect)
                shapes.append(ClipFormat(width, height, frame_count(seconds), spec.flow_shift))
        return shapes

    def check_reference_count(self, count: int) -> None:
        """Refuse more references than the setting allows (checked while they arrive too)."""
        if count > self._max_references:
            raise Refusal(
                f"{count} references were sent; this worker takes 1 to {self._max_references} "
                "reference images or videos (R2V_WORKER_MAX_REFERENCES).",
                code="too_many_references",
            )

    def check(self, request: TaskRequest, references: int) -> ClipFormat:
        """The clip's format, or a ``Refusal`` saying what this worker would accept instead."""
        if references < 1:
            raise Refusal(
                "No reference was sent: attach 1 to "
                f"{self._max_references} images or videos as reference parts.",
                code="no_references",
            )
        self.check_reference_count(references)
        spec = self._resolutions.get(request.resolution)
        if spec is None:
            raise Refusal(
                f"Resolution “{request.resolution}” is not offered by this worker: use "
                f"{' or '.join(self._resolutions)}.",
                code="unsupported_size",
            )
        if request.aspect_ratio not in ASPECT_RATIOS:
            raise Refusal(
                f"Aspect ratio “{request.aspect_ratio}” is not offered: use "
                f"{', '.join(ASPECT_RATIOS)}.",
                code="unsupported_size",
            )
        if not 1 <= request.duration <= self._max_seconds:
            raise Refusal(
                f"A {request.duration} s clip cannot be made: this worker makes 1 to "
                f"{self._max_seconds} s ({self._max_frames} frames at {FPS} fps, "
                "R2V_WORKER_MAX_FRAMES).",
                code="duration_out_of_range",
            )
        frames = frame_count(request.duration)
        # Each reference takes one latent frame in front of the clip's; the pipeline breaks
        # when they outnumber the clip's own.
        if references > latent_frames(frames):
            raise Refusal(
                f"{references} references cannot guide a {request.duration} s clip: it has room "
                f"for {latent_frames(frames)}. Send fewer references or ask for a longer clip.",
                code="too_many_references",
            )
        width, height = frame_size(spec, request.aspect_ratio)
        return ClipFormat(width, height, frames, spec.flow_shift)
