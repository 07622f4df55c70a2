"""What a job leaves behind when it does not finish, and where offloading puts each model.

The tiny model runs on the CPU through the worker's own loading code. A torch hook on its
transformer (the real pipeline, not a stand-in) keeps weak references to every tensor the
transformer is given, so a test can see that a cancelled or failed job's latents are really
gone, and can raise a real ``torch.OutOfMemoryError`` where a GPU would.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.worker.test_api import AUTH, FINAL, loaded, submit, wait_for
from tests.worker.tiny import make_reference, tiny_model, tiny_settings
from worker.lanes import Backend
from worker.pipeline import OFFLOADED, RenderJob, VacePipeline, apply_offload, load_pipeline
from worker.server import WorkerServer
from worker.service import Worker

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


class Traced:
    """Weak references to the transformer's inputs, and a real ``torch.OutOfMemoryError``
    from the transformer while ``fail`` is set."""

    def __init__(self, *, fail: bool = False) -> None:
        self.seen: list[weakref.ref[Any]] = []
        self.fail = fail

    def attach(self, pipe: Any) -> None:
        pipe.transformer.register_forward_pre_hook(self._before, with_kwargs=True)

    def _before(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if isinstance(hidden, torch.Tensor):
            self.seen.append(weakref.ref(hidden))
        if self.fail:
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 20.00 GiB (injected by the test)."
            )

    @property
    def alive(self) -> int:
        return sum(ref() is not None for ref in self.seen)


class TracedWorker(Worker):
    """The worker as it is, with ``Traced`` attached to each pipeline it loads."""

    def __init__(self, *args: Any, traced: Traced, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.traced = traced

    def _load_pipeline(self, device: str) -> Backend:
        pipeline = load_pipeline(self.settings, device)
        self.traced.attach(pipeline.pipe)
        return pipeline


@asynccontextmanager
async def traced_worker(
    tmp_path: Path, traced: Traced, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    worker = TracedWorker(tiny_settings(tmp_path / "w", tiny_model(), **settings), traced=traced)
    async with (
        WorkerServer(worker, "127.0.0.1", 0) as server,
        httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=30) as client,
    ):
        await loaded(client)
        yield client


async def test_a_cancelled_job_leaves_no_tensor_behind_and_the_next_one_completes(
    tmp_path: Path,
) -> None:
    image = make_reference(tmp_path / "a.png", (320, 320), (10, 200, 10))
    traced = Traced()
    async with traced_worker(tmp_path, traced, steps=20) as client:
        first = (await submit(client, [image])).json()
        await wait_for(client, first["id"], {"running"}, progress=10)
        await client.post(f"/v1/tasks/{first['id']}/cancel")
        second = (await submit(client, [image], duration=1)).json()
        done = (await wait_for(client, second["id"], FINAL))[-1]
        cancelled = (await client.get(f"/v1/tasks/{first['id']}")).json()

    assert cancelled["state"] == "cancelled" and cancelled["progress"] < 90
    assert done["state"] == "succeeded", done
    assert len(traced.seen) > 4 and traced.alive == 0  # both jobs' latents are gone


async def test_out_of_memory_fails_that_job_with_what_to_change_and_the_next_succeeds(
    tmp_path: Path,
) -> None:
    image = make_reference(tmp_path / "a.png", (320, 320), (10, 200, 10))
    traced = Traced(fail=True)
    async with traced_worker(tmp_path, traced) as client:
        first = (await submit(client, [image])).json()
        failed = (await wait_for(client, first["id"], FINAL))[-1]
        assert traced.alive == 0
        traced.fail = False
        second = (await submit(client, [image])).json()
        done = (await wait_for(client, second["id"], FINAL))[-1]
        health = (await client.get("/healthz")).json()

    assert failed["state"] == "failed"
    assert failed["error"].startswith("The GPU ran out of memory making a 64×32, 33-frame clip")
    assert "lower resolution or fewer frames" in failed["error"]
    assert done["state"] == "succeeded", done
    assert health["ok"] and health["devices"][0]["state"] == "ready"
    assert traced.alive == 0


def hooked(module: Any) -> bool:
    """Whether accelerate's offload hook or diffusers' group-offload hook is on the module or
    any module inside it."""
    for inner in module.modules():
        if hasattr(inner, "_hf_hook"):
            return True
        registry = getattr(inner, "_diffusers_hook", None)
        if registry is not None and registry.get_hook("group_offloading") is not None:
            return True
    return False


@pytest.mark.parametrize("mode", ["model", "group"])
def test_offload_moves_the_text_encoder_and_transformer_and_keeps_the_vae_on_the_device(
    tmp_path: Path, mode: Any
) -> None:
    from diffusers import AutoencoderKLWan, WanVACEPipeline

    model = tiny_model()
    vae = AutoencoderKLWan.from_pretrained(model, subfolder="vae", dtype=torch.float32)  # type: ignore[no-untyped-call]
    pipe = WanVACEPipeline.from_pretrained(model, vae=vae)  # type: ignore[no-untyped-call]
    pipe.set_progress_bar_config(disable=True)
    # On a machine with no GPU the CPU stands in as the execution device: the hooks are the
    # ones a GPU gets, moving models between the same device.
    apply_offload(pipe, mode, "cpu")
    placed = {name: hooked(getattr(pipe, name)) for name in (*OFFLOADED, "vae")}
    settings = tiny_settings(tmp_path / "w", model)
    pipeline = VacePipeline(pipe, "cpu", settings, mode)
    clip = pipeline_clip()
    job = RenderJob(
        prompt="a person waves",
        negative_prompt="",
        references=(make_reference(tmp_path / "a.png", (64, 32), (200, 10, 10)),),
        clip=clip,
        seed=1,
        out=tmp_path / "clip.mp4",
    )
    pipeline.render(job, lambda fraction: None, lambda: False)

    assert placed == {"text_encoder": True, "transformer": True, "vae": False}
    assert all(p.device.type == "cpu" for p in pipe.vae.parameters())
    assert (tmp_path / "clip.mp4").stat().st_size > 0


def pipeline_clip() -> Any:
    from worker.formats import ClipFormat

    return ClipFormat(64, 32, 17, 3.0)


def test_warming_runs_one_step_at_each_size_and_leaves_nothing_behind(tmp_path: Path) -> None:
    from worker.formats import Formats

    settings = tiny_settings(tmp_path / "w", tiny_model(), max_frames=33)
    pipeline = load_pipeline(settings, "cpu")
    traced = Traced()
    traced.attach(pipeline.pipe)
    sizes = Formats.from_settings(settings).warm_sizes()
    pipeline.warm(sizes)

    # Guidance on: two transformer calls a size, one step each.
    assert len(traced.seen) == 2 * len(sizes) == 6
    assert traced.alive == 0
