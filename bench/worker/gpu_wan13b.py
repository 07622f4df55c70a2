"""Wan 2.1 VACE 1.3B on one CUDA GPU through the worker's own code: 480p, 81 frames, 3 references.

Run by hand on a machine with an NVIDIA GPU and the gpu extra (the first run downloads the model
into the Hugging Face cache)::

    python -m bench.worker.gpu_wan13b [--model ID_OR_FOLDER] [--steps 30] [--runs 2]
        [--device cuda:0] [--cpu-offload | --group-offload] [--vae-tiling] [--json]

The model is loaded with ``worker.pipeline.load_pipeline`` and clips are made with
``VacePipeline.render``, exactly as a task runs: the request's format from ``worker.formats``
(480p 16:9 is 832×480; 5 s is 81 frames), three references prepared by ``worker.references``,
the worker's default negative prompt, its step count and guidance, and the H.264 encode at the
end. It makes one clip to warm up and ``--runs`` more without ``torch.compile``; then loads the
model again with ``R2V_WORKER_COMPILE`` on and makes ``--runs`` + 1 clips, the first of which
pays for compiling and is reported on its own.

Figures: seconds per clip (from the prepared references to the finished MP4), seconds per
denoising step (gaps between step callbacks), and peak GPU memory
(``torch.cuda.max_memory_allocated`` and ``_reserved``, reset before each clip).

``--device cpu --model <folder of the tests' tiny model> --size 64x32`` runs the same path on a
CPU as a smoke test of the script itself; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from bench.common import Figure, Result, main
from worker.formats import ClipFormat, Formats
from worker.pipeline import RenderJob, VacePipeline, load_pipeline
from worker.protocol import TaskRequest
from worker.references import prepare_reference
from worker.settings import DEFAULT_MODEL, WorkerSettings, load_worker_settings

GiB = 1024**3
PROMPT = (
    "character1 and character2 dance on a rooftop at dusk while character3 claps, city lights "
    "behind them, handheld camera"
)


@dataclass(frozen=True, slots=True)
class Clip:
    seconds: float
    steps: list[float]
    peak_allocated: float
    peak_reserved: float


def _options(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m bench.worker.gpu_wan13b", add_help=True)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model id or folder")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps per clip")
    parser.add_argument("--runs", type=int, default=2, help="clips measured per variant")
    parser.add_argument("--device", default="cuda:0", help="cuda:N (or cpu for a smoke test)")
    parser.add_argument("--size", default=None, help="WxH instead of 480p 16:9 (smoke tests)")
    parser.add_argument("--cpu-offload", action="store_true", help="R2V_WORKER_CPU_OFFLOAD")
    parser.add_argument("--group-offload", action="store_true", help="R2V_WORKER_GROUP_OFFLOAD")
    parser.add_argument("--vae-tiling", action="store_true", help="R2V_WORKER_VAE_TILING")
    return parser.parse_known_args(list(argv))


def _settings(args: argparse.Namespace, *, compile: bool) -> WorkerSettings:
    return load_worker_settings(
        token="bench-token-0123456789",
        model=args.model,
        steps=args.steps,
        devices=args.device,
        cpu_offload=args.cpu_offload,
        group_offload=args.group_offload,
        vae_tiling=args.vae_tiling,
        compile=compile,
        _env_file=None,
    )


def _clip_format(args: argparse.Namespace, settings: WorkerSettings) -> ClipFormat:
    request = TaskRequest(prompt=PROMPT, duration=5, resolution="480p", aspect_ratio="16:9")
    clip = Formats.from_settings(settings).check(request, 3)
    if args.size:
        width, height = (int(side) for side in args.size.lower().split("x"))
        clip = ClipFormat(width, height, clip.frames, clip.flow_shift)
    return clip


def _references(root: Path, size: tuple[int, int]) -> tuple[Path, ...]:
    """Three made-up characters (a figure of one colour each), prepared as the worker does."""
    prepared = []
    for index, color in enumerate(((200, 60, 50), (50, 120, 200), (60, 170, 80))):
        source = root / f"character-{index + 1}.png"
        image = Image.new("RGB", (512, 768), (235, 235, 235))
        draw = ImageDraw.Draw(image)
        draw.ellipse((176, 60, 336, 220), fill=color)  # head
        draw.rectangle((156, 230, 356, 560), fill=color)  # body
        draw.rectangle((176, 560, 236, 740), fill=color)  # legs
        draw.rectangle((276, 560, 336, 740), fill=color)
        image.save(source)
        out = root / f"ref-{index + 1}.png"
        prepare_reference(source, out, size, index + 1)
        prepared.append(out)
    return tuple(prepared)


def _make(pipeline: VacePipeline, job: RenderJob, device: str, steps: int) -> Clip:
    import torch

    on_gpu = device.startswith("cuda")
    if on_gpu:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    marks: list[float] = []
    started = time.perf_counter()
    pipeline.render(job, lambda fraction: marks.append(time.perf_counter()), lambda: False)
    if on_gpu:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - started
    allocated = torch.cuda.max_memory_allocated(device) / GiB if on_gpu else 0.0
    reserved = torch.cuda.max_memory_reserved(device) / GiB if on_gpu else 0.0
    gaps = [b - a for a, b in itertools.pairwise(marks[:steps])]
    return Clip(elapsed, gaps, allocated, reserved)


def _variant(
    args: argparse.Namespace, job: RenderJob, *, compile: bool
) -> tuple[float, Clip, list[Clip]]:
    """Load the model (compiled or not), make a first clip and ``args.runs`` more; free it."""
    import torch

    settings = _settings(args, compile=compile)
    started = time.perf_counter()
    pipeline = load_pipeline(settings, args.device)
    loaded = time.perf_counter() - started
    try:
        first = _make(pipeline, job, args.device, args.steps)
        runs = [_make(pipeline, job, args.device, args.steps) for _ in range(args.runs)]
    finally:
        del pipeline
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return loaded, first, runs


def _figures(label: str, runs: list[Clip]) -> list[Figure]:
    return [
        Figure(f"Seconds per clip, {label}", statistics.median(r.seconds for r in runs), "s"),
        Figure(
            f"Seconds per step, {label}",
            statistics.median(g for r in runs for g in r.steps),
            "s",
            decimals=2,
        ),
        Figure(
            f"Peak GPU memory allocated, {label}",
            max(r.peak_allocated for r in runs),
            "GiB",
        ),
        Figure(f"Peak GPU memory reserved, {label}", max(r.peak_reserved for r in runs), "GiB"),
    ]


def _bench(args: argparse.Namespace) -> Result:
    import torch

    settings = _settings(args, compile=False)
    clip = _clip_format(args, settings)
    with tempfile.TemporaryDirectory(prefix="r2v-bench-wan13b-") as name:
        root = Path(name)
        job = RenderJob(
            prompt=PROMPT,
            negative_prompt=settings.negative_prompt,
            references=_references(root, (clip.width, clip.height)),
            clip=clip,
            seed=42,
            out=root / "clip.mp4",
        )
        eager_load, _, eager = _variant(args, job, compile=False)
        compiled_load, compiling, compiled = _variant(args, job, compile=True)
    gpu = (
        f"{torch.cuda.get_device_name(args.device)}, CUDA {torch.version.cuda}"
        if args.device.startswith("cuda")
        else "the CPU (smoke test: the figures mean nothing)"
    )
    memory = (
        "model CPU offload"
        if args.cpu_offload
        else "group offload"
        if args.group_offload
        else "every model on the GPU"
    )
    figures = [
        Figure("Load the model (from the local cache)", eager_load, "s"),
        *_figures("eager", eager),
        Figure("First clip with torch.compile (compiling)", compiling.seconds, "s"),
        *_figures("torch.compile", compiled),
    ]
    notes = (
        f"{args.model} on {gpu}; torch {torch.__version__}.",
        f"{clip.width}×{clip.height}, {clip.frames} frames, {args.steps} steps, guidance "
        f"{settings.guidance_scale}, flow shift {clip.flow_shift}, 3 reference images, "
        f"{settings.dtype} transformer and text encoder, float32 VAE; {memory}"
        + (", VAE tiling" if args.vae_tiling else "")
        + ".",
        f"Medians of {args.runs} clips after one warm-up clip; loading again with compile on "
        f"took {compiled_load:.0f} s.",
    )
    return Result(
        name="worker_gpu_wan13b",
        title="GPU worker, Wan 2.1 VACE 1.3B at 480p",
        figures=tuple(figures),
        notes=notes,
    )


def cli(argv: Sequence[str]) -> None:
    args, rest = _options(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(
                "gpu_wan13b needs a CUDA GPU and torch sees none; it was not run "
                "(--device cpu with a small model runs the script as a smoke test).",
                file=sys.stderr,
            )
            sys.exit(2)

    async def run() -> Result:
        return await asyncio.to_thread(_bench, args)

    main(run, rest)


if __name__ == "__main__":
    cli(sys.argv[1:])
