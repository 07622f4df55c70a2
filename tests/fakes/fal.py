"""A loopback fake of fal.ai's queue, REST uploads and signed webhooks (PROVIDERS.md's fal).

One aiohttp server plays all three hosts (queue, REST, JWKS), so pointing ``R2V_FAL_BASE_URL``
at it is enough. It checks the ``Authorization: Key …`` header, records every request, keeps
tasks that the test completes (or that complete after a number of status polls), serves the
result MP4 itself, and — when a submit carried ``fal_webhook`` and ``send_webhooks`` is on —
POSTs the end-of-request webhook signed with its own Ed25519 key, published in its JWKS.

Knobs: those of every fake (``tests.fakes.base``), where ``fail_next`` answers submits, and
``rotate_key``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.fakes.base import FakeProvider, Recorded

KEY = "fal-test-key"
MODEL = "fal-ai/wan/v2.7/reference-to-video"
APP = "fal-ai/wan"
USER_ID = "fal-user-42"


@dataclass
class FalTask:
    request_id: str
    input: dict[str, Any]
    webhook: str | None
    status: str = "IN_QUEUE"
    queue_position: int = 0
    polls: int = 0
    #: (HTTP status, detail) that ``response_url`` answers for a failed request.
    failure: tuple[int, Any] | None = None
    cancelled: bool = False


@dataclass
class Upload:
    file_name: str
    content_type: str
    data: bytes = b""
    put_headers: dict[str, str] = field(default_factory=dict)


def public_jwk(key: Ed25519PrivateKey) -> dict[str, str]:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": hashlib.sha256(raw).hexdigest()[:16]}


def signed_headers(
    key: Ed25519PrivateKey,
    body: bytes,
    *,
    request_id: str,
    user_id: str = USER_ID,
    timestamp: int | None = None,
) -> dict[str, str]:
    """fal's webhook headers: Ed25519 over request id, user id, timestamp, sha256(body) hex."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    message = "\n".join((request_id, user_id, stamp, hashlib.sha256(body).hexdigest()))
    return {
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": user_id,
        "X-Fal-Webhook-Timestamp": stamp,
        "X-Fal-Webhook-Signature": key.sign(message.encode()).hex(),
        "Content-Type": "application/json",
    }


class FakeFal(FakeProvider):
    name = "fal"

    def __init__(
        self,
        result: bytes,
        *,
        key: str = KEY,
        complete_after_polls: int | None = 2,
        send_webhooks: bool = True,
    ) -> None:
        super().__init__(result, key=key, complete_after_polls=complete_after_polls)
        self.send_webhooks = send_webhooks
        self.signing_key = Ed25519PrivateKey.generate()
        self.published: list[Ed25519PrivateKey] = [self.signing_key]
        self.tasks: dict[str, FalTask] = {}
        self.uploads: dict[str, Upload] = {}
        self.jwks_fetches = 0
        self.webhook_answers: list[int] = []

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._check])
        app.router.add_get("/.well-known/jwks.json", self._jwks)
        app.router.add_post("/storage/upload/initiate", self._initiate)
        app.router.add_put("/uploads/{id}", self._put)
        app.router.add_get("/files/{id}", self._file)
        app.router.add_get("/results/{id}.mp4", self._serve_result)
        app.router.add_get(f"/{APP}/requests/{{id}}/status", self._status)
        app.router.add_get(f"/{APP}/requests/{{id}}", self._response)
        app.router.add_put(f"/{APP}/requests/{{id}}/cancel", self._cancel)
        app.router.add_post("/{model:.+}", self._submit)
        return app

    # -- what tests drive ------------------------------------------------------------------

    def submits(self) -> list[Recorded]:
        return self.requested("POST", f"/{MODEL}")

    def only_task(self) -> FalTask:
        assert len(self.tasks) == 1, self.tasks
        return next(iter(self.tasks.values()))

    def complete(self, request_id: str) -> None:
        self._finish(request_id, None)

    def fail(self, request_id: str, detail: Any, status: int = 422) -> None:
        self._finish(request_id, (status, detail))

    def rotate_key(self) -> Ed25519PrivateKey:
        """A new signing key replaces the old one, in use and in the published key set."""
        self.signing_key = Ed25519PrivateKey.generate()
        self.published = [self.signing_key]
        return self.signing_key

    def webhook_body(self, task: FalTask) -> bytes:
        if task.failure is None:
            return json.dumps(
                {"request_id": task.request_id, "status": "OK", "payload": self._output(task)}
            ).encode()
        return json.dumps(
            {
                "request_id": task.request_id,
                "status": "ERROR",
                "error": "Invalid status code: 422",
                "payload": {"detail": task.failure[1]},
            }
        ).encode()

    def _finish(self, request_id: str, failure: tuple[int, Any] | None) -> None:
        task = self.tasks[request_id]
        task.status = "COMPLETED"
        task.failure = failure
        if task.webhook and self.send_webhooks:
            self._in_background(self._post_webhook(task))

    async def _post_webhook(self, task: FalTask) -> None:
        assert task.webhook is not None
        body = self.webhook_body(task)
        headers = signed_headers(self.signing_key, body, request_id=task.request_id)
        async with self._client.post(task.webhook, data=body, headers=headers) as response:
            self.webhook_answers.append(response.status)

    def _output(self, task: FalTask) -> dict[str, Any]:
        return {
            "video": {
                "url": f"{self.url}/results/{task.request_id}.mp4",
                "content_type": "video/mp4",
                "file_name": "output.mp4",
                "file_size": len(self.result),
            },
            "seed": task.input.get("seed", 1234),
        }

    # -- routes ----------------------------------------------------------------------------

    @web.middleware
    async def _check(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Record every request; refuse those to the queue or REST API without the key."""
        await self._record(request)
        public = request.path.startswith(("/.well-known/", "/uploads/", "/files/", "/results/"))
        if not public and request.headers.get("Authorization") != f"Key {self.key}":
            return web.json_response({"detail": "No user found for Key ID and Secret"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        return web.json_response({"keys": [public_jwk(k) for k in self.published]})

    async def _submit(self, request: web.Request) -> web.Response:
        if request.match_info["model"] != MODEL:
            return web.json_response({"detail": "Application not found"}, status=404)
        await self._hold_submit()
        status = self._take_failure("submit")
        if status is not None:
            return web.json_response({"detail": f"fault {status}"}, status=status)
        request_id = secrets.token_hex(8)
        self.tasks[request_id] = FalTask(
            request_id, await request.json(), request.query.get("fal_webhook")
        )
        base = f"{self.url}/{APP}/requests/{request_id}"
        return web.json_response(
            {
                "request_id": request_id,
                "response_url": base,
                "status_url": f"{base}/status",
                "cancel_url": f"{base}/cancel",
            }
        )

    async def _status(self, request: web.Request) -> web.Response:
        task = self.tasks.get(request.match_info["id"])
        if task is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        task.polls += 1
        if (
            task.status != "COMPLETED"
            and self.complete_after_polls is not None
            and task.polls >= self.complete_after_polls
        ):
            self.complete(task.request_id)
        answer: dict[str, Any] = {"status": task.status, "request_id": task.request_id}
        if task.status == "IN_QUEUE":
            answer["queue_position"] = task.queue_position
        else:
            answer["logs"] = None
        if task.status == "COMPLETED":
            answer["response_url"] = f"{self.url}/{APP}/requests/{task.request_id}"
        return web.json_response(answer, status=200 if task.status == "COMPLETED" else 202)

    async def _response(self, request: web.Request) -> web.Response:
        task = self.tasks.get(request.match_info["id"])
        if task is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        if task.status != "COMPLETED":
            return web.json_response({"detail": "Request is still in progress"}, status=400)
        if task.failure is not None:
            status, detail = task.failure
            return web.json_response({"detail": detail}, status=status)
        return web.json_response(self._output(task))

    async def _cancel(self, request: web.Request) -> web.Response:
        task = self.tasks.get(request.match_info["id"])
        if task is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        if task.status == "COMPLETED":
            return web.json_response({"status": "ALREADY_COMPLETED"}, status=400)
        task.cancelled = True
        task.status = "COMPLETED"
        task.failure = (400, "Request was cancelled")
        return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)

    async def _initiate(self, request: web.Request) -> web.Response:
        if request.query.get("storage_type") != "fal-cdn-v3":
            return web.json_response({"detail": "unknown storage type"}, status=400)
        data = await request.json()
        upload_id = secrets.token_hex(8)
        self.uploads[upload_id] = Upload(str(data["file_name"]), str(data["content_type"]))
        return web.json_response(
            {
                "upload_url": f"{self.url}/uploads/{upload_id}?signature=abc",
                "file_url": f"{self.url}/files/{upload_id}",
            }
        )

    async def _put(self, request: web.Request) -> web.Response:
        upload = self.uploads.get(request.match_info["id"])
        if upload is None:
            return web.Response(status=404)
        upload.data = await request.read()
        upload.put_headers = dict(request.headers)
        return web.Response(status=200)

    async def _file(self, request: web.Request) -> web.Response:
        upload = self.uploads.get(request.match_info["id"])
        if upload is None:
            return web.Response(status=404)
        return web.Response(body=upload.data, content_type=upload.content_type)
