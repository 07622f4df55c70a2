"""The worker through its HTTP API, with a tiny Wan VACE model on the CPU loaded by the worker's
own loading code: tasks in, MP4s out, progress, cancelling, refusals, webhooks, restarts."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
from aiohttp import web
from PIL import Image

from adapters import webhooks
from adapters.http import HttpServer
from tests.media_factory import make_image, make_video
from tests.worker.tiny import TOKEN, make_reference, tiny_model, tiny_settings
from worker.protocol import webhook_secret
from worker.server import WorkerServer
from worker.service import Worker

pytest.importorskip("torch")
pytest.importorskip("diffusers")

AUTH = {"Authorization": f"Bearer {TOKEN}"}
FINAL = {"succeeded", "failed", "cancelled"}


@asynccontextmanager
async def running_worker(
    data_dir: Path, model: Path | None = None, **settings: Any
) -> AsyncIterator[tuple[WorkerServer, httpx.AsyncClient]]:
    worker = Worker(tiny_settings(data_dir, model or tiny_model(), **settings))
    async with (
        WorkerServer(worker, "127.0.0.1", 0) as server,
        httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=30) as client,
    ):
        yield server, client


def task_body(**changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "prompt": "a person waves at the camera",
        "duration": 2,
        "resolution": "720p",
        "aspect_ratio": "16:9",
    }
    values.update(changes)
    return values


async def submit(
    client: httpx.AsyncClient, references: Sequence[Path], **changes: Any
) -> httpx.Response:
    files: list[tuple[str, tuple[str | None, bytes, str]]] = [
        ("request", (None, json.dumps(task_body(**changes)).encode(), "application/json"))
    ]
    for path in references:
        files.append(("reference", (path.name, path.read_bytes(), "application/octet-stream")))
    return await client.post("/v1/tasks", files=files)


async def wait_for(
    client: httpx.AsyncClient,
    task_id: str,
    states: set[str],
    within: float = 60.0,
    *,
    progress: int = 0,
) -> list[dict[str, Any]]:
    """Poll the task until it is in one of ``states`` with at least ``progress`` percent done;
    answer every view seen on the way."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + within
    while True:
        view = (await client.get(f"/v1/tasks/{task_id}")).json()
        seen.append(view)
        if view["state"] in states and view["progress"] >= progress:
            return seen
        assert view["state"] not in FINAL, view
        assert time.monotonic() < deadline, f"task still {view['state']} after {within} s"
        await asyncio.sleep(0.02)


async def loaded(client: httpx.AsyncClient, within: float = 30.0) -> dict[str, Any]:
    """Wait until the worker's model is loaded; answer its health."""
    deadline = time.monotonic() + within
    while not (health := (await client.get("/healthz")).json())["model_loaded"]:
        assert time.monotonic() < deadline, health
        await asyncio.sleep(0.02)
    return dict(health)


def decode(data: bytes) -> tuple[int, tuple[int, int], str, str]:
    """Frame count, size, codec and pixel format of an MP4, by decoding every frame."""
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return (
            len(frames),
            (frames[0].width, frames[0].height),
            stream.codec_context.name,
            str(frames[0].format.name),
        )


class Receiver:
    """A loopback webhook receiver that keeps what it is sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.arrived = asyncio.Event()
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._http = HttpServer(app, "127.0.0.1", 0)

    async def _hook(self, request: web.Request) -> web.Response:
        self.calls.append((dict(request.headers), await request.read()))
        self.arrived.set()
        return web.json_response({"ok": True})

    @property
    def url(self) -> str:
        return f"{self._http.local_url}/hook?t=secret-token"

    async def __aenter__(self) -> Receiver:
        await self._http.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.close()


async def test_three_reference_images_make_a_clip_of_the_asked_length_and_size(
    tmp_path: Path,
) -> None:
    references = [
        make_reference(tmp_path / "a.png", (320, 400), (220, 40, 40)),
        make_image(tmp_path / "b.jpg", size=(500, 300), fmt="JPEG"),
        make_reference(tmp_path / "c.webp", (256, 256), (40, 40, 220)),
    ]
    async with Receiver() as receiver, running_worker(tmp_path / "w") as (_, client):
        answer = await submit(client, references, seed=7, webhook_url=receiver.url)
        assert answer.status_code == 202, answer.text
        task = answer.json()
        assert task["state"] == "pending" and task["id"].startswith("task_")
        assert (task["width"], task["height"], task["frames"]) == (64, 32, 33)

        views = await wait_for(client, task["id"], {"succeeded"})
        result = await client.get(f"/v1/tasks/{task['id']}/result")
        await asyncio.wait_for(receiver.arrived.wait(), 10)

    assert views[-1]["progress"] == 100
    assert views[-1]["result_url"] == f"/v1/tasks/{task['id']}/result"
    assert all(a["progress"] <= b["progress"] for a, b in itertools.pairwise(views))
    assert result.status_code == 200 and result.headers["content-type"] == "video/mp4"
    assert decode(result.content) == (33, (64, 32), "h264", "yuv420p")
    assert 0 <= result.content.find(b"moov") < result.content.find(b"mdat")  # faststart
    (headers, body) = receiver.calls[0]
    webhooks.verify(webhook_secret(TOKEN), headers, body)
    assert json.loads(body) == {
        "type": "task.succeeded",
        "data": {"id": task["id"], "state": "succeeded"},
    }


async def test_refusals_are_clear_4xx_answers_and_leave_nothing_behind(tmp_path: Path) -> None:
    image = make_reference(tmp_path / "a.png", (320, 320), (10, 200, 10))
    text = tmp_path / "notes.txt"
    text.write_text("this is not a picture\n" * 10)
    async with running_worker(tmp_path / "w") as (server, client):
        async with httpx.AsyncClient(base_url=server.url) as anonymous:
            for method, path in (
                ("GET", "/healthz"),
                ("POST", "/v1/tasks"),
                ("GET", "/v1/tasks/task_1"),
                ("GET", "/v1/tasks/task_1/result"),
                ("POST", "/v1/tasks/task_1/cancel"),
            ):
                answer = await anonymous.request(method, path)
                assert answer.status_code == 401, path
                assert answer.json()["error"]["code"] == "unauthorized"
                assert answer.headers["www-authenticate"].startswith("Bearer")
            wrong = await anonymous.get("/healthz", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401

        cases: list[tuple[list[Path], dict[str, Any], int, str, str]] = [
            ([image] * 4, {}, 422, "too_many_references", "1 to 3"),
            ([image], {"resolution": "1080p"}, 422, "unsupported_size", "use 720p"),
            ([image], {"aspect_ratio": "2:1"}, 422, "unsupported_size", "16:9"),
            ([image], {"duration": 12}, 422, "duration_out_of_range", "1 to 5 s"),
            ([], {}, 422, "no_references", "attach 1 to 3"),
            ([image, text], {}, 422, "invalid_media", "Reference 2 cannot be used"),
            ([image], {"prompt": ""}, 400, "invalid_request", "prompt"),
        ]
        for references, changes, status, code, words in cases:
            answer = await submit(client, references, **changes)
            assert answer.status_code == status, (code, answer.text)
            error = answer.json()["error"]
            assert error["code"] == code and words in error["message"], error

        not_multipart = await client.post("/v1/tasks", json=task_body())
        assert not_multipart.status_code == 400
        assert "multipart/form-data" in not_multipart.json()["error"]["message"]
        unknown = await client.get("/v1/tasks/task_0000")
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "unknown_task"
        health = (await client.get("/healthz")).json()

    assert health["queue_length"] == 0
    assert not any((tmp_path / "w" / "tasks").iterdir())
    assert not any((tmp_path / "w" / "uploads").iterdir())


async def test_cancel_stops_a_running_task_between_steps_and_frees_its_lane(
    tmp_path: Path,
) -> None:
    image = make_reference(tmp_path / "a.png", (320, 320), (10, 200, 10))
    async with running_worker(tmp_path / "w", steps=12) as (_, client):
        await loaded(client)
        first = (await submit(client, [image])).json()
        second = (await submit(client, [image])).json()
        assert second["queue_position"] == 1
        await wait_for(client, first["id"], {"running"}, progress=1)  # a step or more done

        waiting = await client.post(f"/v1/tasks/{second['id']}/cancel")
        cancel = await client.post(f"/v1/tasks/{first['id']}/cancel")
        again = await client.post(f"/v1/tasks/{first['id']}/cancel")
        third = (await submit(client, [image])).json()
        await wait_for(client, third["id"], {"succeeded"})
        first_view = (await client.get(f"/v1/tasks/{first['id']}")).json()
        second_view = (await client.get(f"/v1/tasks/{second['id']}")).json()
        no_result = await client.get(f"/v1/tasks/{first['id']}/result")

    assert waiting.json() == {"cancelled": True, "state": "cancelled"}
    assert cancel.json() == {"cancelled": True, "state": "cancelled"}
    assert again.json() == {"cancelled": False, "state": "cancelled"}
    assert first_view["state"] == "cancelled" and first_view["started_at"] is not None
    # It stopped a step or so after the cancel, far from its 12th and last step.
    assert 0 < first_view["progress"] < 50
    assert second_view["state"] == "cancelled" and second_view["started_at"] is None
    assert no_result.status_code == 409 and no_result.json()["error"]["code"] == "not_ready"
    assert not (tmp_path / "w" / "tasks" / first["id"] / "result.mp4").exists()


async def test_a_failing_task_leaves_the_worker_serving(tmp_path: Path) -> None:
    image = make_reference(tmp_path / "a.png", (320, 320), (10, 200, 10))
    broken = tiny_model("broken")
    async with running_worker(tmp_path / "w", model=broken) as (_, client):
        first = (await submit(client, [image])).json()
        failed = (await wait_for(client, first["id"], FINAL))[-1]
        health = await client.get("/healthz")
        second = await submit(client, [image])
        assert second.status_code == 202
        failed_too = (await wait_for(client, second.json()["id"], FINAL))[-1]

    assert failed["state"] == "failed"
    assert failed["error"].startswith("The worker failed while making the clip (RuntimeError")
    assert health.status_code == 200 and health.json()["ok"]
    assert failed_too["state"] == "failed"


async def test_health_reports_the_model_devices_queue_and_limits(tmp_path: Path) -> None:
    async with running_worker(tmp_path / "w") as (_, client):
        health = await loaded(client)

    assert health["ok"] and health["model"].endswith("model")
    assert health["devices"] == [
        {"device": "cpu", "description": "CPU", "state": "ready", "error": None, "task": None}
    ]
    assert (health["queue_length"], health["running"]) == (0, 0)
    assert health["limits"]["max_references"] == 3
    assert health["limits"]["durations"] == [1, 5]
    assert health["limits"]["sizes"]["720p"]["16:9"] == [64, 32]
    assert health["limits"]["sizes"]["720p"]["9:16"] == [32, 64]


async def left_running(data_dir: Path, references: Sequence[Path]) -> dict[str, Any]:
    """Stop a worker in the middle of a task (200 steps: it is still running when stopped);
    answer the task's record as the worker left it on disk."""
    async with running_worker(data_dir, steps=200) as (_, client):
        task_id = (await submit(client, references)).json()["id"]
        await wait_for(client, task_id, {"running"}, progress=1)
    record: dict[str, Any] = json.loads((data_dir / "tasks" / task_id / "task.json").read_text())
    assert record["state"] == "running"
    return record


async def test_a_model_that_cannot_load_fails_its_tasks_and_says_why(tmp_path: Path) -> None:
    image = make_reference(tmp_path / "a.png", (320, 320), (10, 200, 10))
    left = await left_running(tmp_path / "w", [image])
    not_a_model = tmp_path / "not-a-model"  # a folder without model_index.json
    not_a_model.mkdir()

    async with running_worker(tmp_path / "w", model=not_a_model) as (_, client):
        deadline = time.monotonic() + 30
        while (health := await client.get("/healthz")).status_code != 503:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        task = (await client.get(f"/v1/tasks/{left['id']}")).json()
        refused = await submit(client, [image])

    (device,) = health.json()["devices"]
    assert device["state"] == "failed" and "could not be loaded" in device["error"]
    assert str(not_a_model) in device["error"]
    assert task["state"] == "failed" and "could not load its model" in task["error"]
    assert refused.status_code == 503
    assert "failed to load" in refused.json()["error"]["message"]


async def test_a_task_left_running_by_a_stop_is_made_after_the_restart_with_its_seed(
    tmp_path: Path,
) -> None:
    image = make_reference(tmp_path / "a.png", (320, 320), (10, 200, 10))
    video = make_video(tmp_path / "b.mp4", seconds=1.0, size=(160, 96))
    left = await left_running(tmp_path / "w", [image, video])

    async with running_worker(tmp_path / "w") as (_, client):
        done = (await wait_for(client, left["id"], {"succeeded"}))[-1]
        result = await client.get(f"/v1/tasks/{left['id']}/result")

    assert done["seed"] == left["seed"]
    assert decode(result.content)[:2] == (33, (64, 32))

    # Finished tasks are removed once they are older than R2V_WORKER_KEEP_HOURS.
    await asyncio.sleep(0.4)
    async with running_worker(tmp_path / "w", keep_hours=0.0001) as (_, client):
        gone = await client.get(f"/v1/tasks/{left['id']}")
    assert gone.status_code == 404
    assert not (tmp_path / "w" / "tasks" / left["id"]).exists()


async def test_large_references_stream_in_and_oversized_ones_are_refused(tmp_path: Path) -> None:
    noise = tmp_path / "noise.png"  # about 3 MB: PNG cannot compress noise
    Image.frombytes("RGB", (1000, 1000), os.urandom(3 * 1000 * 1000)).save(noise)
    assert noise.stat().st_size > 2 * 1024 * 1024
    async with running_worker(tmp_path / "w", max_reference_mb=5) as (_, client):
        accepted = await submit(client, [noise])
    async with running_worker(tmp_path / "w2", max_reference_mb=2) as (_, client):
        refused = await submit(client, [noise])
        health = (await client.get("/healthz")).json()

    assert accepted.status_code == 202, accepted.text
    assert refused.status_code == 413
    assert refused.json()["error"] == {
        "code": "too_large",
        "message": "Reference 1 is larger than the 2 MB this worker accepts "
        "(R2V_WORKER_MAX_REFERENCE_MB).",
    }
    assert health["queue_length"] == 0
    assert not any((tmp_path / "w2" / "uploads").iterdir())
