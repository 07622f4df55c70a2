"""The worker's HTTP API (aiohttp), kept thin: each route turns HTTP into one call of ``Worker``.

Routes and shapes are those of ``worker.protocol``. Every route needs the bearer token (compared
in constant time). Uploads are streamed to disk part by part, a megabyte at a time in a thread,
and refused as soon as they break a limit (too many references, a file too large) without
reading the rest. Errors are ``{"error": {"code", "message"}}``: 400 for a malformed request, 401
for a wrong token, 404 for an unknown task, 409 for a result not made yet, 413 for a file too
large, 422 for a request this worker does not accept (size, length, references, media), 503 when
it cannot take work now.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

from aiohttp import BodyPartReader, web

from adapters.http import HttpServer
from bot.errors import ConfigurationError, R2VError, Refusal
from worker.protocol import (
    HEALTH_PATH,
    REFERENCE_FIELD,
    REQUEST_FIELD,
    TASKS_PATH,
    TaskRequest,
)
from worker.service import Worker

log = logging.getLogger(__name__)

WORKER_KEY = web.AppKey("worker", Worker)
MAX_REQUEST_PART = 64 * 1024
READ_CHUNK = 256 * 1024
WRITE_SIZE = 1024 * 1024

#: HTTP status by error code; other refusals are 422 (understood, but not accepted).
_STATUS = {
    "invalid_request": 400,
    "unauthorized": 401,
    "unknown_task": 404,
    "not_ready": 409,
    "too_large": 413,
    "unavailable": 503,
    "configuration_error": 503,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(worker: Worker) -> web.Application:
    token = worker.settings.token_value.encode("utf-8")

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode("utf-8"), token
        ):
            response = _error(
                "unauthorized",
                "A bearer token is required: send Authorization: Bearer <R2V_WORKER_TOKEN>, the "
                "token this worker was started with.",
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="r2v-worker"'
            return response
        try:
            return await handler(request)
        except R2VError as exc:
            return _error(exc.code, exc.message)

    app = web.Application(middlewares=[guard])
    app[WORKER_KEY] = worker
    app.router.add_post(TASKS_PATH, _create)
    app.router.add_get(TASKS_PATH + "/{task_id}", _status)
    app.router.add_get(TASKS_PATH + "/{task_id}/result", _result)
    app.router.add_post(TASKS_PATH + "/{task_id}/cancel", _cancel)
    app.router.add_get(HEALTH_PATH, _health)
    return app


def _error(code: str, message: str) -> web.Response:
    status = _STATUS.get(code, 422)
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def _create(request: web.Request) -> web.Response:
    worker = request.app[WORKER_KEY]
    if not request.content_type.startswith("multipart/"):
        raise Refusal(
            "Send the task as multipart/form-data: a “request” part (JSON) and one “reference” "
            "part per image or video.",
            code="invalid_request",
        )
    upload = await asyncio.to_thread(worker.new_upload)
    try:
        data, files = await _read_upload(request, worker, upload)
        if data is None:
            raise Refusal(
                "The “request” part (the task's JSON) is missing.", code="invalid_request"
            )
        record = await worker.submit(TaskRequest.from_json(data), files, upload)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, upload, True)
        raise
    return web.json_response(worker.view(record), status=202)


async def _read_upload(
    request: web.Request, worker: Worker, upload: Path
) -> tuple[object | None, list[Path]]:
    data: object | None = None
    files: list[Path] = []
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise Refusal("Nested multipart bodies are not accepted.", code="invalid_request")
            if part.name == REQUEST_FIELD:
                raw = await _read_small(part, MAX_REQUEST_PART)
                try:
                    data = json.loads(raw)
                except ValueError:
                    raise Refusal(
                        "The “request” part is not valid JSON.", code="invalid_request"
                    ) from None
            elif part.name == REFERENCE_FIELD:
                worker.check_reference_count(len(files) + 1)
                path = upload / f"upload-{len(files) + 1}"
                await _save(part, path, worker.settings.max_reference_bytes, len(files) + 1)
                files.append(path)
            else:
                raise Refusal(
                    f"Unknown part “{part.name}”: send one “{REQUEST_FIELD}” part and "
                    f"“{REFERENCE_FIELD}” parts.",
                    code="invalid_request",
                )
    except (ValueError, AssertionError) as exc:  # what aiohttp raises for a malformed body
        raise Refusal(
            f"The multipart body could not be read ({exc}).", code="invalid_request"
        ) from exc
    return data, files


async def _read_small(part: BodyPartReader, limit: int) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(READ_CHUNK):
        data += chunk
        if len(data) > limit:
            raise Refusal(
                f"The “request” part is over {limit // 1024} KB; it holds the task's JSON only.",
                code="invalid_request",
            )
    return bytes(data)


async def _save(part: BodyPartReader, path: Path, limit: int, number: int) -> None:
    """Stream one part to ``path``, refusing it once it is over ``limit`` bytes."""
    out: BinaryIO = await asyncio.to_thread(path.open, "wb")
    try:
        size = 0
        pending = bytearray()
        while chunk := await part.read_chunk(READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise R2VError(
                    f"Reference {number} is larger than the {limit // (1024 * 1024)} MB this "
                    "worker accepts (R2V_WORKER_MAX_REFERENCE_MB).",
                    code="too_large",
                )
            pending += chunk
            if len(pending) >= WRITE_SIZE:
                await asyncio.to_thread(out.write, bytes(pending))
                pending.clear()
        if pending:
            await asyncio.to_thread(out.write, bytes(pending))
    finally:
        await asyncio.to_thread(out.close)


async def _status(request: web.Request) -> web.Response:
    worker = request.app[WORKER_KEY]
    return web.json_response(worker.view(worker.get(request.match_info["task_id"])))


async def _result(request: web.Request) -> web.StreamResponse:
    worker = request.app[WORKER_KEY]
    path = worker.result(request.match_info["task_id"])
    return web.FileResponse(path, headers={"Content-Type": "video/mp4"})


async def _cancel(request: web.Request) -> web.Response:
    worker = request.app[WORKER_KEY]
    task_id = request.match_info["task_id"]
    cancelled = await worker.cancel(task_id)
    state = worker.get(task_id).state.value
    return web.json_response({"cancelled": cancelled, "state": state})


async def _health(request: web.Request) -> web.Response:
    health = request.app[WORKER_KEY].health()
    return web.json_response(health, status=200 if health["ok"] else 503)


class WorkerServer:
    """The worker and its HTTP API, listening on ``host:port`` (port 0: a free one)."""

    def __init__(self, worker: Worker, host: str, port: int) -> None:
        self.worker = worker
        self._http = HttpServer(build_app(worker), host, port)
        self._address = f"{host}:{port}"

    @property
    def url(self) -> str:
        return self._http.local_url

    async def start(self) -> None:
        await self.worker.start()
        try:
            await self._http.start()
        except OSError as exc:
            await self.close()
            raise ConfigurationError(
                f"The worker cannot listen on {self._address} ({exc.strerror or exc}): set "
                "R2V_WORKER_HOST and R2V_WORKER_PORT to a free address."
            ) from exc

    async def close(self) -> None:
        try:
            await self._http.close()
        finally:
            await self.worker.close()

    async def __aenter__(self) -> WorkerServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
