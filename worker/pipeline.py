"""Loading diffusers' ``WanVACEPipeline`` onto a device and making one clip with it.

torch and diffusers are imported inside the functions, never at module level: the bot imports
the worker's light modules (``worker.protocol``) without the ``gpu`` extra installed.

Loading follows Wan's own advice and diffusers' Wan recipe: the transformer and text encoder in
bfloat16 (a setting), the VAE in float32 (it smears colours in half precision); a UniPC scheduler
predicting flow with a shift of 3.0 at 480p and 5.0 at 720p, chosen per clip. Memory options are
settings: model CPU offload (whole models move to the GPU when used) or group offload (the
transformer's blocks stream in from CPU memory) apply to the text encoder and the transformer
only, and the VAE stays on the GPU: it is small, and moving it for every decode costs more time
than the memory it frees. ``torch.compile`` compiles the transformer's repeated blocks once with
dynamic shapes and warms them for every size served, so no job pays for compiling. An opt-in
step cache (diffusers' TaylorSeer hooks) predicts attention and feed-forward outputs between
fully computed steps.

A clip that ends any other way than finished (cancelled, failed, out of memory) leaves nothing
behind: the offload hooks are reset, the exception that held the pipeline's frames (and so its
latents) is dropped before the next clip, and the allocator's cache is emptied.

Everything here is blocking and meant for one lane's thread: one ``VacePipeline`` per device,
used by one task at a time.
"""

from __future__ import annotations

import gc
import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from bot.errors import ConfigurationError, R2VError
from worker.encode import encode_video
from worker.formats import FPS, ClipFormat, Formats
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
    return tuple(named)


class VacePipeline:
    """A Wan VACE pipeline loaded on one device, making one clip at a time."""

    def __init__(
        self, pipe: Any, device: str, settings: WorkerSettings, offload: Offload = "none"
    ) -> None:
        self._pipe = pipe
        self.device = device
        self._steps = settings.steps
        self._guidance = settings.guidance_scale
        self._crf = settings.crf
        self._grouped = offload == "group"
        self._schedulers: dict[float, Any] = {}
        self.description = _describe(device)

    @property
    def pipe(self) -> Any:
        """The diffusers pipeline itself (the benchmark times its parts)."""
        return self._pipe

    def render(self, job: RenderJob, progress: Progress, should_stop: ShouldStop) -> None:
        """Make ``job``'s clip and write it to ``job.out``.

        ``should_stop`` is asked after every denoising step (``RenderCancelled``); ``progress``
        hears the fraction done. Out of GPU memory is a ``RenderFailed`` saying what helps.
        Whatever happens, the job's tensors are gone and the memory they held is free when
        this returns or raises.
        """
        if should_stop():
            raise RenderCancelled("The task was cancelled before it started.")
        clip = job.clip
        steps = self._steps
        started = time.perf_counter()

        def after_step(
            pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            progress(STEPS_SHARE * (step + 1) / steps)
            if should_stop():
                raise RenderCancelled("The task was cancelled.")
            return tensors

        frames = self._call(job, after_step)
        progress(DECODED)
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

    def _call(self, job: RenderJob, after_step: Callable[..., Any]) -> Any:
        """Run the pipeline for ``job``: its frames, or a fresh ``RenderCancelled`` or
        ``RenderFailed`` raised only once the memory is released.

        The error is raised anew, outside the ``except`` block and without a cause: the
        original's traceback holds the pipeline's frames and with them every tensor of the
        job, which must be gone before the allocator's cache is emptied.
        """
        import torch

        clip = job.clip
        references = [_load_picture(path) for path in job.references]
        self._pipe.scheduler = self._scheduler(clip.flow_shift)
        generator = torch.Generator(device="cpu").manual_seed(job.seed)
        error: R2VError | None = None
        frames: Any = None
        try:
            output = self._pipe(
                prompt=job.prompt,
                negative_prompt=job.negative_prompt,
                reference_images=references,
                height=clip.height,
                width=clip.width,
                num_frames=clip.frames,
                num_inference_steps=self._steps,
                guidance_scale=self._guidance,
                generator=generator,
                output_type="np",
                callback_on_step_end=after_step,
            )
            frames = output.frames[0]
            del output
        except RenderCancelled as exc:
            error = RenderCancelled(exc.message)
        except torch.OutOfMemoryError as exc:
            # str(exc): a log record keeps its arguments, and the exception its tensors.
            log.warning("%s ran out of memory: %s", self.device, str(exc))
            error = RenderFailed(
                f"The GPU ran out of memory making a {clip.width}×{clip.height}, {clip.frames}-"
                "frame clip: ask for a lower resolution or fewer frames (a shorter clip). The "
                "worker's operator can also set R2V_WORKER_CPU_OFFLOAD, "
                "R2V_WORKER_GROUP_OFFLOAD or R2V_WORKER_VAE_TILING, or lower "
                "R2V_WORKER_MAX_FRAMES."
            )
        except Exception as exc:
            # The traceback goes to the log as text: a log record holding the exception
            # itself would keep the job's tensors alive for as long as a handler keeps it.
            trace = "".join(traceback.format_exception(exc))
            log.error("%s failed making a clip:\n%s", self.device, trace)
            detail = f"{type(exc).__name__}: {exc}"
            error = RenderFailed(f"The worker failed while making the clip ({detail[:300]}).")
        finally:
            for picture in references:
                picture.close()
            self.release()
        if error is not None:
            raise error
        return frames

    def release(self) -> None:
        release_memory(self._pipe, self.device, grouped=self._grouped)

    def warm(self, sizes: Sequence[ClipFormat]) -> None:
        """Run one denoising step at each of ``sizes`` (no decoding), so a compiled
        transformer has compiled for all of them before the first task arrives."""
        import torch

        black = Image.new("RGB", (64, 64))
        for clip in sizes:
            self._pipe.scheduler = self._scheduler(clip.flow_shift)
            try:
                self._pipe(
                    prompt="warm-up",
                    reference_images=[black],
                    height=clip.height,
                    width=clip.width,
                    num_frames=clip.frames,
                    num_inference_steps=1,
                    guidance_scale=self._guidance,
                    generator=torch.Generator(device="cpu").manual_seed(0),
                    output_type="latent",
                )
            finally:
                self.release()

    def _scheduler(self, shift: float) -> Any:
        """A UniPC scheduler predicting flow with ``shift``, made once per shift and kept."""
        scheduler = self._schedulers.get(shift)
        if scheduler is None:
            scheduler = flow_scheduler(self._pipe.scheduler.config, shift)
            self._schedulers[shift] = scheduler
        return scheduler


def release_memory(pipe: Any, device: str, *, grouped: bool = False) -> None:
    """Leave ``pipe`` as it was before a clip: offload hooks reset (and cache hooks' state),
    group-offloaded layers (``grouped``) back in CPU memory, every unreferenced tensor
    collected, ``device``'s allocator cache emptied."""
    import torch

    pipe.maybe_free_model_hooks()
    if grouped:
        _offload_groups(pipe)
    gc.collect()
    if device.startswith("cuda"):
        with torch.cuda.device(torch.device(device)):
            torch.cuda.empty_cache()


def flow_scheduler(config: Any, shift: float) -> Any:
    """Wan's scheduler: UniPC predicting flow, with ``shift`` (3.0 at 480p, 5.0 at 720p)."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler.from_config(  # type: ignore[no-untyped-call]
        config, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
    )


#: The components that offloading moves; the VAE is left on the execution device.
OFFLOADED = ("text_encoder", "transformer")
Offload = Literal["none", "model", "group"]


def apply_offload(pipe: Any, mode: Offload, device: str) -> None:
    """Place the pipeline on ``device``: whole, or with the text encoder and transformer
    offloaded to CPU memory (``model``: each whole model moves in when it runs; ``group``: the
    transformer's layers stream in one by one, overlapping the copy with compute), and the VAE
    on ``device`` either way."""
    import torch

    if mode == "model":
        # The pipeline's own sequence ends with the VAE; without it, the VAE is one of the
        # components excluded from offloading, which diffusers moves to the device.
        pipe.model_cpu_offload_seq = "->".join(OFFLOADED)
        pipe._exclude_from_cpu_offload = ["vae"]
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "group":
        on_gpu = device.startswith("cuda")
        pipe.enable_group_offload(
            onload_device=torch.device(device),
            offload_device=torch.device("cpu"),
            offload_type="leaf_level",
            use_stream=on_gpu,
            exclude_modules=["vae"],
        )
    else:
        pipe.to(device)


def _offload_groups(pipe: Any) -> None:
    """Send every group-offloaded layer back to CPU memory: a forward pass stopped by an
    exception leaves its current layers on the GPU, which nothing else would move out."""
    from diffusers.hooks.hooks import HookRegistry

    for component in pipe.components.values():
        for module in getattr(component, "modules", tuple)():
            registry = getattr(module, "_diffusers_hook", None)
            if not isinstance(registry, HookRegistry):
                continue
            hook = registry.get_hook("group_offloading")
            group = getattr(hook, "group", None)
            if group is not None and _onloaded(group):
                group.offload_()


def _onloaded(group: Any) -> bool:
    tensors = [*group.parameters, *group.buffers]
    tensors += [tensor for module in group.modules for tensor in module.parameters()]
    return any(tensor.device != group.offload_device for tensor in tensors)


def apply_step_cache(transformer: Any, interval: int) -> None:
    """Predict the attention and feed-forward outputs of every block (the main and the VACE
    ones) on the steps between fully computed ones, every ``interval`` steps after the first
    three, from a first-order Taylor expansion of their recent outputs (diffusers' TaylorSeer
    hooks; its default module patterns match none of Wan's, hence ours).

    Not diffusers' first-block cache: on a skipped step it adds the last step's residual to the
    first block's output, and the VACE transformer adds each step's control hints between its
    blocks outside the hooked ones, so they would be counted twice.
    """
    from diffusers import TaylorSeerCacheConfig

    transformer.enable_cache(
        TaylorSeerCacheConfig(  # type: ignore[no-untyped-call]
            cache_interval=interval,
            disable_cache_before_step=3,
            cache_identifiers=[r"(vace_)?blocks\.\d+\.(attn1|attn2|ffn)"],
        )
    )


def compile_transformer(transformer: Any) -> None:
    """Compile the transformer's repeated blocks once, with dynamic shapes: one graph serves
    every size and length (a static compile would recompile for each new one, stalling the
    lane for minutes mid-task). With the step cache on, its hooks (Python state, a choice per
    step) sit inside the blocks, so the blocks may break into several graphs instead of one."""
    cached = bool(getattr(transformer, "is_cache_enabled", False))
    transformer.compile_repeated_blocks(fullgraph=not cached, dynamic=True)


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
    mode: Offload = (
        "model" if settings.cpu_offload else "group" if settings.group_offload else "none"
    )
    if mode != "none" and not device.startswith("cuda"):
        log.warning("%s: offloading only applies to GPUs; it is ignored here", device)
        mode = "none"
    apply_offload(pipe, mode, device)
    if settings.vae_tiling:
        pipe.vae.enable_tiling()
    if settings.step_cache:
        apply_step_cache(pipe.transformer, settings.step_cache)
    pipeline = VacePipeline(pipe, device, settings, mode)
    if settings.compile:
        compile_transformer(pipe.transformer)
        sizes = Formats.from_settings(settings).warm_sizes()
        warming = time.perf_counter()
        pipeline.warm(sizes)
        log.info(
            "%s: compiled and warmed for %d sizes in %.0f s",
            device,
            len(sizes),
            time.perf_counter() - warming,
        )
    log.info("Loaded %s on %s in %.1f s", settings.model, device, time.perf_counter() - started)
    return pipeline


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
