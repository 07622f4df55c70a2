"""Loading diffusers' ``WanVACEPipeline`` onto a device and making one clip with it.

torch and diffusers are imported inside the functions, never at module level: the bot imports
the worker's light modules (``worker.protocol``) without the ``gpu`` extra installed.

Loading follows Wan's own advice: the transformer and text encoder in bfloat16 (a setting), the
VAE in float32 (it smears colours in half precision); a UniPC scheduler predicting flow with a
shift of 3.0 at 480p and 5.0 at 720p, chosen per clip; and the memory options as settings — model
CPU offload (whole models move to the GPU when used), group offload (the transformer's blocks
stream in from CPU memory), VAE tiling. ``torch.compile`` compiles the transformer's repeated
blocks, which is where the time goes.

Everything here is blocking and meant for one lane's thread: one ``VacePipeline`` per device,
used by one task at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from bot.errors import ConfigurationError, R2VError
from worker.encode import encode_video
from worker.formats import FPS, ClipFormat
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

#: Of a clip's progress, the share the denoising steps make up; decoding and encoding the rest.
STEPS_SHARE = 0.9
DECODED = 0.95


class RenderCancelled(R2VError):
    """The task was cancelled; the pipeline stopped after its current step."""

    code = "cancelled"


class RenderFailed(R2VError):
    """The clip could not be made; the message says why and what to change."""

    code = "render_failed"


@dataclass(frozen=True, slots=True)
class RenderJob:
    """One clip to make: the prepared reference PNGs, the texts, the format, where it goes."""

    prompt: str
    negative_prompt: str
    references: tuple[Path, ...]
    clip: ClipFormat
    seed: int
    out: Path


Progress = Callable[[float], None]
ShouldStop = Callable[[], bool]


def gpu_packages_missing() -> str | None:
    """Which of the ``gpu`` extra's packages cannot be imported, as a sentence, or ``None``."""
    import importlib.util

    missing = [
        name
        for name in ("torch", "diffusers", "transformers", "accelerate", "ftfy", "numpy")
        if importlib.util.find_spec(name) is None
    ]
    if not missing:
        return None
    return (
        f"the GPU worker needs {', '.join(missing)}: install the gpu extra "
        "(pip install 'r2v-bot[gpu]'), or use Dockerfile.gpu"
    )


def resolve_devices(settings: WorkerSettings) -> tuple[str, ...]:
    """The devices to run lanes on: those named, or every CUDA GPU (else the CPU) for ``auto``."""
    import torch

    named = settings.device_list
    if named is None:
        count = torch.cuda.device_count()
        return tuple(f"cuda:{index}" for index in range(count)) or ("cpu",)
    for device in named:
        if device.startswith("cuda"):
            index = int(device.partition(":")[2] or 0)
            if index >= torch.cuda.device_count():
                raise ConfigurationError(
                    f"R2V_WORKER_DEVICES names {device}, but this machine has "
                    f"{torch.cuda.device_count()} CUDA GPU(s)."
                )
    return tuple(device if device != "cuda" else "cuda:0" for device in named)


class VacePipeline:
    """A Wan VACE pipeline loaded on one device, making one clip at a time."""

    def __init__(self, pipe: Any, device: str, settings: WorkerSettings) -> None:
        self._pipe = pipe
        self.device = device
        self._steps = settings.steps
        self._guidance = settings.guidance_scale
        self._crf = settings.crf
        self._schedulers: dict[float, Any] = {}
        self.description = _describe(device)

    def render(self, job: RenderJob, progress: Progress, should_stop: ShouldStop) -> None:
        """Make ``job``'s clip and write it to ``job.out``.

        ``should_stop`` is asked after every denoising step (``RenderCancelled``); ``progress``
        hears the fraction done. Out of GPU memory is a ``RenderFailed`` saying what helps.
        """
        import torch

        if should_stop():
            raise RenderCancelled("The task was cancelled before it started.")
        clip = job.clip
        references = [_load_picture(path) for path in job.references]
        self._pipe.scheduler = self._scheduler(clip.flow_shift)
        generator = torch.Generator(device="cpu").manual_seed(job.seed)
        steps = self._steps
        started = time.perf_counter()

        def after_step(
            pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            progress(STEPS_SHARE * (step + 1) / steps)
            if should_stop():
                raise RenderCancelled("The task was cancelled.")
            return tensors

        try:
            output = self._pipe(
                prompt=job.prompt,
                negative_prompt=job.negative_prompt,
                reference_images=references,
                height=clip.height,
                width=clip.width,
                num_frames=clip.frames,
                num_inference_steps=steps,
                guidance_scale=self._guidance,
                generator=generator,
                output_type="np",
                callback_on_step_end=after_step,
            )
        except torch.OutOfMemoryError as exc:
            _free_memory(self.device)
            raise RenderFailed(
                f"{self.device} ran out of memory making a {clip.width}×{clip.height}, "
                f"{clip.frames}-frame clip. Ask for a shorter clip or a lower resolution, or "
                "set R2V_WORKER_CPU_OFFLOAD, R2V_WORKER_GROUP_OFFLOAD or R2V_WORKER_VAE_TILING "
                "on the worker."
            ) from exc
        finally:
            for picture in references:
                picture.close()
        progress(DECODED)
        frames = output.frames[0]
        encode_video(frames, job.out, fps=FPS, crf=self._crf)
        log.info(
            "%s: %d×%d, %d frames, %d steps in %.1f s",
            self.device,
            clip.width,
            clip.height,
            clip.frames,
            steps,
            time.perf_counter() - started,
        )

    def _scheduler(self, shift: float) -> Any:
        """A UniPC scheduler predicting flow with ``shift``, made once per shift and kept."""
        scheduler = self._schedulers.get(shift)
        if scheduler is None:
            from diffusers import UniPCMultistepScheduler

            scheduler = UniPCMultistepScheduler.from_config(  # type: ignore[no-untyped-call]
                self._pipe.scheduler.config,
                prediction_type="flow_prediction",
                use_flow_sigmas=True,
                flow_shift=shift,
            )
            self._schedulers[shift] = scheduler
        return scheduler


def load_pipeline(settings: WorkerSettings, device: str) -> VacePipeline:
    """Load ``settings.model`` (a Hub id or a local folder) onto ``device``, set as configured.

    Raises ``ConfigurationError`` when the model cannot be found or is not a Wan VACE model.
    """
    import torch
    from diffusers import AutoencoderKLWan, WanVACEPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Their loading bars would fill the worker's log; downloads keep huggingface_hub's own.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    dtype = getattr(torch, settings.dtype)
    started = time.perf_counter()
    try:
        vae = AutoencoderKLWan.from_pretrained(  # type: ignore[no-untyped-call]
            settings.model, subfolder="vae", dtype=torch.float32
        )
        pipe = WanVACEPipeline.from_pretrained(  # type: ignore[no-untyped-call]
            settings.model, vae=vae, dtype=dtype
        )
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"The model {settings.model!r} could not be loaded ({exc}). R2V_WORKER_MODEL takes a "
            "Hugging Face id of a diffusers Wan VACE model (e.g. Wan-AI/Wan2.1-VACE-1.3B-"
            "diffusers) or a folder holding one."
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    on_gpu = device.startswith("cuda")
    if settings.cpu_offload and on_gpu:
        pipe.enable_model_cpu_offload(device=device)
    elif settings.group_offload and on_gpu:
        pipe.enable_group_offload(
            onload_device=torch.device(device),
            offload_device=torch.device("cpu"),
            offload_type="leaf_level",
            use_stream=True,
        )
    else:
        if settings.cpu_offload or settings.group_offload:
            log.warning("%s: offloading only applies to GPUs; it is ignored here", device)
        pipe.to(device)
    if settings.vae_tiling:
        pipe.vae.enable_tiling()
    if settings.compile:
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
    log.info("Loaded %s on %s in %.1f s", settings.model, device, time.perf_counter() - started)
    return VacePipeline(pipe, device, settings)


def _load_picture(path: Path) -> Image.Image:
    with Image.open(path) as picture:
        return picture.convert("RGB")


def _describe(device: str) -> str:
    """The device as people know it: the GPU's name and memory, or "CPU"."""
    import torch

    if not device.startswith("cuda"):
        return "CPU"
    properties = torch.cuda.get_device_properties(torch.device(device))
    return f"{properties.name}, {properties.total_memory / 1024**3:.0f} GiB"


def _free_memory(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
