"""Wan 2.1 VACE through diffusers' ``WanVACEPipeline`` on one GPU, with nothing to download.

::

    python -m bench.worker.gpu_wan --random-weights [--size 1.3b|14b] [--steps 4]
        [--step-cache 5] [--compile] [--device cuda:0]
    python -m bench.worker.gpu_wan --model-dir /models/Wan2.1-VACE-1.3B-diffusers
    python -m bench.worker.gpu_wan --random-weights --tiny --device cpu   # smoke test, seconds

``--random-weights`` builds the real architectures from their published configurations
(``bench.worker.architectures``: the VACE transformer, the umT5-XXL text encoder, the Wan VAE)
with random weights, in bfloat16 (the VAE in float32) directly on the GPU, and runs the real
pipeline the way the worker does: 832×480 (720p, 1280×720, with ``--size 14b``), 81 frames,
three reference images, classifier-free guidance at 5.0, Wan's UniPC scheduler. No tokenizer is
needed: the encoder is timed on random token ids, and its output goes to the pipeline as
``prompt_embeds`` and ``negative_prompt_embeds``. ``HF_HUB_OFFLINE=1`` is set before diffusers
and transformers are imported, so nothing is fetched. ``--model-dir`` runs the same on real
weights already on disk, loaded by the worker's own ``load_pipeline``.

A few denoising steps are timed and the rest projected (a step costs the same at every
timestep), so a 1.3B run takes a minute or two on an H100. With ``--step-cache N`` a second pass
runs with the worker's TaylorSeer step cache (``R2V_WORKER_STEP_CACHE``) long enough to see both
kinds of step, and its projection is reported beside the plain one.

Prints one JSON line: seconds per denoising step (both guidance passes), text-encode and
VAE-decode seconds, peak GPU memory, and projected seconds for a 30- and a 50-step clip.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

GiB = 1024**3
GUIDANCE = 5.0
REFERENCES = 3
#: Words of the prompt, as many real tokens as the encoder's mask lets through.
PROMPT_TOKENS = 60
#: TaylorSeer computes the first three steps in full (``worker.pipeline.apply_step_cache``).
CACHE_WARMUP = 3
PROJECTED = (30, 50)


def _options(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.worker.gpu_wan")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--random-weights", action="store_true", help="build, download nothing")
    source.add_argument("--model-dir", type=Path, help="a diffusers Wan VACE folder on disk")
    parser.add_argument("--size", choices=("1.3b", "14b"), default="1.3b")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny layout (CPU smoke)")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--steps", type=int, default=4, help="steps timed (the first is warm-up)")
    parser.add_argument("--step-cache", type=int, default=5, help="TaylorSeer interval; 0: skip")
    parser.add_argument("--compile", action="store_true", help="torch.compile, as the worker")
    args = parser.parse_args(list(argv))
    if args.steps < 2:
        parser.error("--steps must be 2 or more: the first step is a warm-up")
    if args.step_cache == 1:
        parser.error("--step-cache 1 computes every step: use 0 (skip) or 2 or more")
    return args


class Clock:
    """Marks after each denoising step (after the device has finished it)."""

    def __init__(self, device: str) -> None:
        self._device = device
        self.marks: list[float] = []

    def sync(self) -> float:
        import torch

        if self._device.startswith("cuda"):
            torch.cuda.synchronize(self._device)
        return time.perf_counter()

    def step(self, pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        self.marks.append(self.sync())
        return tensors


def _pipeline(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """The pipeline on the device, the architecture's clip, and what was loaded."""
    import torch
    from diffusers import WanVACEPipeline

    from bench.worker.architectures import SIZES
    from worker.pipeline import flow_scheduler

    architecture = SIZES["tiny" if args.tiny else args.size]
    if args.model_dir is not None:
        from worker.pipeline import load_pipeline
        from worker.settings import load_worker_settings

        settings = load_worker_settings(
            token="bench-token-0123456789",
            model=str(args.model_dir),
            devices=args.device,
            _env_file=None,
        )
        return load_pipeline(settings, args.device).pipe, architecture, str(args.model_dir)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    from bench.worker.architectures import build_parts

    transformer, text_encoder, vae = build_parts(architecture, args.device, dtype)
    pipe: Any = WanVACEPipeline(  # type: ignore[no-untyped-call]
        tokenizer=None,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=flow_scheduler({}, shift=3.0),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe, architecture, f"{architecture.name}, random weights"


def _encode(pipe: Any, architecture: Any, device: str, clock: Clock) -> tuple[float, Any, Any]:
    """Time the text encoder on a prompt and a negative prompt of random token ids; answer the
    seconds and the two embeddings as the pipeline takes them."""
    import torch

    encoder = pipe.text_encoder
    vocab = encoder.config.vocab_size
    tokens = architecture.text_tokens
    generator = torch.Generator(device="cpu").manual_seed(1)
    ids = torch.randint(3, vocab, (2, tokens), generator=generator).to(device)
    mask = torch.zeros(2, tokens, dtype=torch.long, device=device)
    mask[:, : min(PROMPT_TOKENS, tokens)] = 1
    dtype = pipe.transformer.dtype
    with torch.inference_mode():
        encoder(ids, mask)  # warm-up: kernels chosen, memory reserved
        started = clock.sync()
        hidden = encoder(ids, mask).last_hidden_state
        seconds = clock.sync() - started
    # As the pipeline does: the real tokens kept, the padding zeroed.
    hidden = (hidden * mask.unsqueeze(-1)).to(dtype)
    return seconds, hidden[:1].clone(), hidden[1:].clone()


def _references(width: int, height: int) -> list[Any]:
    from PIL import Image, ImageDraw

    pictures = []
    for color in ((200, 60, 50), (50, 120, 200), (60, 170, 80)):
        picture = Image.new("RGB", (width, height), (255, 255, 255))
        ImageDraw.Draw(picture).ellipse(
            (width // 3, height // 6, 2 * width // 3, 5 * height // 6), fill=color
        )
        pictures.append(picture)
    return pictures[:REFERENCES]


def _run(
    pipe: Any, architecture: Any, embeds: tuple[Any, Any], steps: int, clock: Clock
) -> tuple[list[float], float]:
    """One clip of ``steps`` steps: the step gaps (the first step's lead-in left out) and the
    seconds from the last step to decoded frames."""
    import torch

    clock.marks = []
    started = clock.sync()
    pipe(
        prompt_embeds=embeds[0],
        negative_prompt_embeds=embeds[1],
        reference_images=_references(architecture.width, architecture.height),
        height=architecture.height,
        width=architecture.width,
        num_frames=architecture.frames,
        num_inference_steps=steps,
        guidance_scale=GUIDANCE,
        generator=torch.Generator(device="cpu").manual_seed(0),
        output_type="np",
        callback_on_step_end=clock.step,
    )
    finished = clock.sync()
    marks = [started, *clock.marks]
    gaps = [b - a for a, b in itertools.pairwise(marks)]
    return gaps[1:], finished - clock.marks[-1]


def _projected(encode: float, decode: float, step: float, steps: int) -> float:
    return round(encode + steps * step + decode, 1)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import diffusers
    import torch

    from worker.pipeline import apply_step_cache, compile_transformer, release_memory

    device = args.device
    on_gpu = device.startswith("cuda")
    clock = Clock(device)
    pipe, architecture, loaded = _pipeline(args)  # random weights are made on the device
    if args.compile:
        compile_transformer(pipe.transformer)
    encode, positive, negative = _encode(pipe, architecture, device, clock)
    prompt_embeds = (positive, negative)
    if args.compile:
        _run(pipe, architecture, prompt_embeds, 2, clock)  # compiles, not timed
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    gaps, decode = _run(pipe, architecture, prompt_embeds, args.steps, clock)
    peak = torch.cuda.max_memory_allocated(device) / GiB if on_gpu else 0.0
    step = statistics.median(gaps)
    result: dict[str, Any] = {
        "benchmark": "worker_gpu_wan",
        "model": loaded,
        "device": torch.cuda.get_device_name(device) if on_gpu else "cpu",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "width": architecture.width,
        "height": architecture.height,
        "frames": architecture.frames,
        "references": REFERENCES,
        "guidance": GUIDANCE,
        "compiled": args.compile,
        "timed_steps": len(gaps),
        "seconds_per_step": round(step, 3),
        "text_encode_seconds": round(encode, 3),
        "vae_decode_seconds": round(decode, 3),
        "peak_gpu_memory_gib": round(peak, 2),
        "projected_seconds": {str(n): _projected(encode, decode, step, n) for n in PROJECTED},
    }
    if args.step_cache and args.compile:
        # Hooks added to compiled blocks would be traced into them, or force a recompile.
        result["step_cache"] = "not measured with --compile: run once without it"
    elif args.step_cache:
        release_memory(pipe, device)
        apply_step_cache(pipe.transformer, args.step_cache)
        cached_steps = CACHE_WARMUP + 2 * args.step_cache
        cached, _ = _run(pipe, architecture, prompt_embeds, cached_steps, clock)
        pipe.transformer.disable_cache()
        # Steps that took under half a full one were predicted; the rest were computed.
        predicted = [gap for gap in cached if gap < step / 2] or [step]
        predicted_step = statistics.median(predicted)

        def with_cache(n: int) -> float:
            full = min(n, CACHE_WARMUP + math.ceil(max(0, n - CACHE_WARMUP) / args.step_cache))
            return round(float(encode + decode + full * step + (n - full) * predicted_step), 1)

        result["step_cache"] = {
            "interval": args.step_cache,
            "seconds_per_predicted_step": round(predicted_step, 3),
            "projected_seconds": {str(n): with_cache(n) for n in PROJECTED},
            "speedup_30_steps": round(
                _projected(encode, decode, step, 30) / max(with_cache(30), 1e-9), 2
            ),
        }
    return result


def cli(argv: Sequence[str], out: Callable[[str], None] = print) -> dict[str, Any]:
    # Before diffusers or transformers is imported: they read it once.
    os.environ["HF_HUB_OFFLINE"] = "1"
    args = _options(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(
                "gpu_wan needs a CUDA GPU and torch sees none (--tiny --device cpu runs the "
                "script itself as a smoke test).",
                file=sys.stderr,
            )
            sys.exit(2)
    started = time.perf_counter()
    result = measure(args)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    out(json.dumps(result))
    return result


if __name__ == "__main__":
    cli(sys.argv[1:])
