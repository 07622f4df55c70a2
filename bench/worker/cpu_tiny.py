"""The worker's own cost on a CPU: the tiny test model through the worker's real code path.

The model is the tests' tiny Wan VACE (``tests.worker.tiny``: the real architecture at widths of
a few dozen, randomly initialised), loaded with ``worker.pipeline.load_pipeline`` and run through
``VacePipeline.render`` with three references prepared as the worker prepares them — text
encoding, VAE encoding of the references and the control video, the denoising steps, VAE
decoding and the H.264 encode. The figures say what the worker and the pipeline's plumbing
cost around a model, and how that grows with the clip's length and size; they say nothing about
Wan's real speed, which is all GPU (``gpu_wan``).

Each clip is made once to warm up, then ``RUNS`` times; figures are medians. Seconds per step
are the gaps between the step callbacks (the first step is left out: it follows the encoders).
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import av

from bench.common import Figure, Result, main
from tests.worker.tiny import build_tiny_model, make_reference
from worker.formats import ClipFormat, frame_count
from worker.pipeline import RenderJob, VacePipeline, load_pipeline
from worker.references import prepare_reference
from worker.settings import load_worker_settings

STEPS = 10
RUNS = 3
#: (label, width, height, seconds)
CLIPS = (
    ("64×32, 2 s (33 frames)", 64, 32, 2),
    ("64×32, 5 s (81 frames)", 64, 32, 5),
    ("128×64, 5 s (81 frames)", 128, 64, 5),
)


def _measure(pipeline: VacePipeline, job: RenderJob) -> tuple[float, list[float]]:
    """One clip: its wall time, and the gaps between its denoising steps."""
    marks: list[float] = []
    started = time.perf_counter()
    pipeline.render(job, lambda fraction: marks.append(time.perf_counter()), lambda: False)
    elapsed = time.perf_counter() - started
    steps = marks[:STEPS]  # one report a step, then one once the VAE has decoded
    return elapsed, [b - a for a, b in itertools.pairwise(steps)]


def _frames(path: Path) -> int:
    with av.open(str(path), "r") as container:
        return sum(1 for _ in container.decode(video=0))


def _bench(root: Path) -> Result:
    import torch

    model = build_tiny_model(root / "model")
    settings = load_worker_settings(
        token="bench-token-0123456789",
        model=str(model),
        steps=STEPS,
        devices="cpu",
        _env_file=None,
    )
    started = time.perf_counter()
    pipeline = load_pipeline(settings, "cpu")
    figures = [
        Figure("Load the tiny model from disk", time.perf_counter() - started, "s", decimals=2)
    ]
    notes = [
        f"torch {torch.__version__} on {torch.get_num_threads()} CPU threads, "
        f"{settings.dtype} transformer and text encoder, float32 VAE, {STEPS} steps, "
        "classifier-free guidance on (two transformer passes a step), three references.",
    ]
    passed = True
    for label, width, height, seconds in CLIPS:
        frames = frame_count(seconds)
        clip = ClipFormat(width, height, frames, 3.0)
        references = []
        for index, color in enumerate(((220, 40, 40), (40, 220, 40), (40, 40, 220))):
            source = make_reference(root / f"source-{index}.png", (480, 640), color)
            prepared = root / f"{width}x{height}-ref-{index}.png"
            prepare_reference(source, prepared, (width, height), index + 1)
            references.append(prepared)
        job = RenderJob(
            prompt="a person waves at the camera on a rooftop at dusk",
            negative_prompt=settings.negative_prompt,
            references=tuple(references),
            clip=clip,
            seed=1,
            out=root / f"{width}x{height}-{frames}.mp4",
        )
        _measure(pipeline, job)  # warm-up: first use of these shapes
        runs = [_measure(pipeline, job) for _ in range(RUNS)]
        clip_seconds = statistics.median(run[0] for run in runs)
        step_seconds = statistics.median(gap for run in runs for gap in run[1])
        figures.append(Figure(f"Seconds per step — {label}", step_seconds, "s", decimals=3))
        figures.append(Figure(f"Seconds per clip — {label}", clip_seconds, "s", decimals=2))
        made = _frames(job.out)
        if made != frames:
            passed = False
            notes.append(f"{label}: the MP4 has {made} frames, not {frames}.")
    notes.append(
        "A clip's time beyond its steps is the text encoder, the VAE (encoding the references "
        "and the control video, decoding the result) and the H.264 encode."
    )
    return Result(
        name="worker_cpu_tiny",
        title="GPU worker, tiny model on the CPU",
        figures=tuple(figures),
        notes=tuple(notes),
        checks_passed=passed,
    )


async def run() -> Result:
    with tempfile.TemporaryDirectory(prefix="r2v-bench-worker-") as name:
        return await asyncio.to_thread(_bench, Path(name))


if __name__ == "__main__":
    main(run)
