"""A loopback fake of WaveSpeed's API, following PROVIDERS.md, for the client's tests.

It checks the Bearer key, records every request, keeps tasks (the test finishes them, or they
finish after a number of status polls), hands out upload links and stores what is PUT to them,
serves the result MP4 itself, and POSTs webhooks signed the way WaveSpeed signs them (``v3,<hex>``
HMAC-SHA256 keyed by the secret's text after ``whsec_``). Knobs: those of every fake
(``tests.fakes.base``), where a route is ``"submit"``, ``"status"``, ``"secret"``, ``"upload"``
or ``"put"``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from aiohttp import web

from tests.fakes.base import FakeProvider

SUBMIT_PATH = "/api/v3/alibaba/wan-2.7/reference-to-video"
MODEL = "alibaba/wan-2.7/reference-to-video"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def sign_v3(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """WaveSpeed's signature header value for a webhook body."""
    key = secret.removeprefix("whsec_").encode()
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"v3,{digest}"


def signed_headers(
    secret: str, body: bytes, *, timestamp: int | None = None, msg_id: str | None = None
) -> dict[str, str]:
    msg_id = msg_id or "msg_" + secrets.token_hex(8)
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": sign_v3(secret, msg_id, stamp, body),
    }


@dataclass
class Task:
    id: str
    body: dict[str, Any]
    webhook: str | None
    status: str = "created"
    error: str | None = None
    polls: int = 0


@dataclass
class Submit:
    """One submit as received: its JSON body and query string."""

    body: dict[str, Any]
    query: dict[str, str]


@dataclass
class Upload:
    """One file: what the upload request declared, and the bytes PUT for it."""

    token: str
    filename: str
    size: int
    content_type: str
    data: bytes | None = None
    put_headers: dict[str, str] = field(default_factory=dict)


class FakeWaveSpeed(FakeProvider):
    """``async with FakeWaveSpeed(result_mp4) as fake:`` — then point the client at ``fake.url``.

    ``complete_after_polls``: a task reads ``processing`` from its first status poll and
    ``completed`` from this poll on (``None``: only ``finish`` ends it).
    ``secret_shape``: how ``GET /api/v3/webhook/secret`` answers — ``{"data": {"secret"}}``
    (``"object"``) or the string itself as ``data`` (``"bare"``).
    """

    name = "wavespeed"

    def __init__(
        self,
        result: bytes,
        *,
        key: str = "ws-test-key",
        secret: str | None = None,
        secret_shape: Literal["object", "bare"] = "object",
        complete_after_polls: int | None = 2,
        send_webhooks: bool = True,
    ) -> None:
        super().__init__(result, key=key, complete_after_polls=complete_after_polls)
        self.secret = secret or "whsec_" + secrets.token_urlsafe(24)
        self.secret_shape = secret_shape
        self.send_webhooks = send_webhooks
        self.tasks: dict[str, Task] = {}
        self.submits: list[Submit] = []
        self.uploads: dict[str, Upload] = {}
        self.webhook_answers: list[int] = []
        self.status_reads = 0
        self._submitted = asyncio.Condition()

    # -- what tests drive ------------------------------------------------------------------

    async def task(self, number: int = 1, within: float = 10.0) -> Task:
        """The ``number``-th task made, waiting for it to be submitted."""
        async with self._submitted:
            await asyncio.wait_for(
                self._submitted.wait_for(lambda: len(self.tasks) >= number), within
            )
        return list(self.tasks.values())[number - 1]

    async def finish(
        self, task_id: str, status: str = "completed", error: str | None = None
    ) -> int | None:
        """End a task; answer the bot's reply to the webhook (``None`` when none was sent)."""
        task = self.tasks[task_id]
        task.status, task.error = status, error
        return await self._notify(task)

    def webhook_body(self, task: Task) -> bytes:
        """The webhook body WaveSpeed sends: the prediction, not wrapped in an envelope."""
        return json.dumps(self._prediction(task)).encode()

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._check])
        app.router.add_post(SUBMIT_PATH, self._submit)
        app.router.add_get("/api/v3/predictions/{id}/result", self._status)
        app.router.add_get("/api/v3/webhook/secret", self._secret)
        app.router.add_post("/api/v3/media/uploads", self._upload)
        app.router.add_put("/storage/{token}", self._put)
        app.router.add_get("/files/{token}/{name}", self._file)
        app.router.add_get("/results/{id}.mp4", self._result)
        return app

    # -- routes ----------------------------------------------------------------------------

    @web.middleware
    async def _check(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Record every request; refuse API calls without the key."""
        await self._record(request)
        authorized = request.headers.get("Authorization") == f"Bearer {self.key}"
        if request.path.startswith("/api/") and not authorized:
            return web.json_response({"code": 401, "message": "Unauthorized"}, status=401)
        return await handler(request)

    def _failure(self, route: str) -> web.Response | None:
        status = self._take_failure(route)
        if status is None:
            return None
        return web.json_response(
            {"code": status, "message": f"fake failure {status}"}, status=status
        )

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.submits.append(Submit(body, dict(request.query)))
        await self._hold_submit()
        failure = self._failure("submit")
        if failure is not None:
            return failure
        videos = body.get("videos") if isinstance(body, dict) else None
        if not isinstance(videos, list) or not videos:
            # The model's page marks ``videos`` required: pictures alone are refused (and a
            # real account may be billed for the attempt).
            return web.json_response(
                {"code": 400, "message": "videos is required and must not be empty"}, status=400
            )
        task = Task("ws_" + secrets.token_hex(6), body, request.query.get("webhook"))
        async with self._submitted:
            self.tasks[task.id] = task
            self._submitted.notify_all()
        return web.json_response(
            {"code": 200, "message": "success", "data": self._prediction(task)}
        )

    async def _status(self, request: web.Request) -> web.StreamResponse:
        failure = self._failure("status")
        if failure is not None:
            return failure
        task = self.tasks.get(request.match_info["id"])
        if task is None:
            return web.json_response({"code": 404, "message": "prediction not found"}, status=404)
        self.status_reads += 1
        task.polls += 1
        if task.status in ("created", "processing") and self.complete_after_polls is not None:
            task.status = "completed" if task.polls >= self.complete_after_polls else "processing"
        return web.json_response(
            {"code": 200, "message": "success", "data": self._prediction(task)}
        )

    async def _secret(self, request: web.Request) -> web.StreamResponse:
        failure = self._failure("secret")
        if failure is not None:
            return failure
        data: Any = {"secret": self.secret} if self.secret_shape == "object" else self.secret
        return web.json_response({"code": 200, "message": "success", "data": data})

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        failure = self._failure("upload")
        if failure is not None:
            return failure
        asked = await request.json()
        token = secrets.token_hex(8)
        upload = Upload(
            token, str(asked["filename"]), int(asked["size"]), str(asked["content_type"])
        )
        self.uploads[token] = upload
        name = quote(upload.filename)
        return web.json_response(
            {
                "code": 200,
                "message": "success",
                "data": {
                    "upload": {
                        "method": "PUT",
                        "url": f"{self.url}/storage/{token}?signature=fake",
                        "headers": {"Content-Type": upload.content_type},
                    },
                    "download_url": f"{self.url}/files/{token}/{name}",
                },
            }
        )

    async def _put(self, request: web.Request) -> web.StreamResponse:
        failure = self._failure("put")
        if failure is not None:
            return failure
        upload = self.uploads.get(request.match_info["token"])
        if upload is None:
            return web.Response(status=404)
        upload.put_headers = dict(request.headers)
        if "Authorization" in request.headers:
            # Pre-signed storage links refuse a second credential, as S3-style stores do.
            return web.Response(status=400, text="only one auth mechanism allowed")
        data = await request.read()
        if len(data) != upload.size:
            return web.Response(status=400, text="size differs from the declared size")
        upload.data = data
        return web.Response(status=200)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        upload = self.uploads.get(request.match_info["token"])
        if upload is None or upload.data is None:
            return web.Response(status=404)
        return web.Response(body=upload.data, content_type=upload.content_type)

    async def _result(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["id"] not in self.tasks:
            return web.Response(status=404)
        return await self._serve_result(request)

    # -- helpers ---------------------------------------------------------------------------

    def _prediction(self, task: Task) -> dict[str, Any]:
        outputs = [f"{self.url}/results/{task.id}.mp4"] if task.status == "completed" else []
        return {
            "id": task.id,
            "model": MODEL,
            "status": task.status,
            "outputs": outputs,
            "error": task.error or "",
            "urls": {"get": f"{self.url}/api/v3/predictions/{task.id}/result"},
            "has_nsfw_contents": [],
            "created_at": "2026-11-21T12:00:00Z",
        }

    async def _notify(self, task: Task) -> int | None:
        """POST the signed webhook for a task that ended (WaveSpeed sends none before that)."""
        if not (self.send_webhooks and task.webhook):
            return None
        body = self.webhook_body(task)
        async with self._client.post(
            task.webhook, data=body, headers=signed_headers(self.secret, body)
        ) as response:
            self.webhook_answers.append(response.status)
            return response.status
