"""Several GPU workers behind the bot's one ``local`` provider (``R2V_LOCAL_URL=a,b``), each a
real worker on loopback with the tiny model: a job goes to the shortest queue, and a worker that
stops answering hands its job to another."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest

from tests.harness import running_bot, until
from tests.worker.test_api import AUTH, loaded, submit, wait_for
from tests.worker.tiny import TOKEN, make_reference, tiny_model, tiny_settings
from worker.server import WorkerServer
from worker.service import Worker

pytest.importorskip("torch")
pytest.importorskip("diffusers")


@asynccontextmanager
async def worker(folder: Path, steps: int) -> AsyncIterator[tuple[WorkerServer, httpx.AsyncClient]]:
    settings = tiny_settings(folder, tiny_model(), steps=steps)
    async with (
        WorkerServer(Worker(settings), "127.0.0.1", 0) as server,
        httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=30) as client,
    ):
        await loaded(client)
        yield server, client


def both(*servers: WorkerServer, **more: object) -> dict[str, object]:
    urls = ",".join(server.url for server in servers)
    return {"local_url": urls, "worker_token": TOKEN, "provider": "local", **more}


async def test_a_job_goes_to_the_worker_with_the_shortest_queue(tmp_path: Path) -> None:
    image = make_reference(tmp_path / "a.png", (320, 320), (10, 200, 10))
    async with (
        worker(tmp_path / "busy", steps=200) as (busy, busy_client),
        worker(tmp_path / "idle", steps=3) as (idle, _),
        running_bot(tmp_path, public=False, **both(busy, idle)) as h,
    ):
        running = (await submit(busy_client, [image])).json()
        waiting = (await submit(busy_client, [image])).json()
        await wait_for(busy_client, running["id"], {"running"})
        await h.character("alice")
        job_id = await h.generate("@alice waves at the camera", duration=2)
        job = await h.delivered(job_id, within=60)
        for task in (running, waiting):
            await busy_client.post(f"/v1/tasks/{task['id']}/cancel")

    assert job.task_id is not None and job.task_id.endswith(f"@{idle.url}")
    (made,) = idle.worker.store.records()
    assert job.task_id == f"{made.id}@{idle.url}"
    assert len(list(busy.worker.store.records())) == 2  # only the two sent to it directly


async def test_a_worker_that_stops_answering_hands_its_job_to_another(tmp_path: Path) -> None:
    # Listed first with both queues empty, the slow worker gets the job.
    slow = WorkerServer(
        Worker(tiny_settings(tmp_path / "slow", tiny_model(), steps=200)), "127.0.0.1", 0
    )
    await slow.start()
    stopped = False
    stack = AsyncExitStack()
    try:
        slow_client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=slow.url, headers=AUTH, timeout=30)
        )
        # One model load at a time: diffusers' loading patches torch process-wide, so two
        # loading in one process at once can trip over each other (the worker loads its
        # lanes one after another for the same reason).
        await loaded(slow_client)
        fast, _ = await stack.enter_async_context(worker(tmp_path / "fast", steps=3))
        h = await stack.enter_async_context(
            running_bot(tmp_path, public=False, **both(slow, fast, local_handover_seconds=0))
        )
        await h.character("alice")
        job_id = await h.generate("@alice dances on a rooftop", duration=2)
        await until(lambda: list(slow.worker.store.records()))
        (on_slow,) = slow.worker.store.records()
        await wait_for(slow_client, on_slow.id, {"running"})
        stopped = True
        await slow.close()  # the worker goes away mid-render
        job = await h.delivered(job_id, within=60)
        # Back on the same port with the same folder, it queues the task again; the bot's
        # next look at it cancels that copy.
        back = WorkerServer(Worker(slow.worker.settings), "127.0.0.1", port_of(slow.url))
        async with (
            back,
            httpx.AsyncClient(base_url=back.url, headers=AUTH, timeout=30) as back_client,
        ):
            await h.app.providers["local"].check_key()
            again = back.worker.store.get(on_slow.id)
            await loaded(back_client)  # its model load ends before the next test's begins
    finally:
        await stack.aclose()
        if not stopped:
            await slow.close()

    assert job.task_id == f"{on_slow.id}@{slow.url}"  # the bot's id follows the job
    (made,) = fast.worker.store.records()
    assert made.request.prompt == on_slow.request.prompt
    assert made.state.value == "succeeded"
    assert again is not None and again.state.value == "cancelled"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])
