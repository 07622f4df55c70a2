"""The GPU benchmark's own code path, run on the CPU with the tiny layout: it builds the model
from configurations, times the real pipeline, and prints its one JSON line, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[2]


def test_random_weights_tiny_prints_one_json_line_with_the_figures(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    # An unreachable hub and an empty cache: anything fetched would fail the run.
    env |= {
        "HF_HOME": str(tmp_path / "hf"),
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "bench.worker.gpu_wan", "--random-weights", "--tiny"]
    command += ["--device", "cpu", "--steps", "3", "--step-cache", "2"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.strip().splitlines()
    result = json.loads(line)
    assert result["model"] == "tiny Wan VACE (test layout), random weights"
    assert (result["width"], result["height"], result["frames"]) == (64, 32, 17)
    assert result["references"] == 3 and result["guidance"] == 5.0
    assert result["timed_steps"] == 2 and result["seconds_per_step"] > 0
    assert result["text_encode_seconds"] > 0 and result["vae_decode_seconds"] > 0
    step, encode, decode = (
        result["seconds_per_step"],
        result["text_encode_seconds"],
        result["vae_decode_seconds"],
    )
    assert result["projected_seconds"]["30"] == pytest.approx(encode + 30 * step + decode, abs=0.1)
    assert set(result["step_cache"]) == {
        "interval",
        "seconds_per_predicted_step",
        "projected_seconds",
        "speedup_30_steps",
    }
    assert not list((tmp_path / "hf").glob("**/*.safetensors"))


def test_the_benchmark_needs_a_source_and_a_gpu_for_cuda() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    base = [sys.executable, "-m", "bench.worker.gpu_wan"]
    no_source = subprocess.run(base, cwd=ROOT, env=env, capture_output=True, text=True)
    no_gpu = subprocess.run(
        [*base, "--random-weights"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )

    assert no_source.returncode == 2 and "--random-weights" in no_source.stderr
    assert no_gpu.returncode == 2 and "needs a CUDA GPU" in no_gpu.stderr
