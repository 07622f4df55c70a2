"""A loopback AtlasCloud that follows PROVIDERS.md's AtlasCloud section.

It checks the Bearer key, records every request, takes uploads (``uploadMedia``, multipart field
``file``) and serves them back, keeps jobs that the test completes or fails (or that complete
after a number of status polls), serves the result MP4 itself, publishes its Ed25519 webhook key
in a JWKS, and — when a submit carried ``webhook_url`` and ``send_webhooks`` is on — POSTs the
one end-of-job webhook signed over ``"<timestamp>.<raw body>"``. As the real one does right after
creation, a job's first ``not_found_polls`` status look-ups answer 404.

Knobs: those of every fake (``tests.fakes.base``), where ``fail_next`` answers API calls (never
media, results or keys) and a route is a path; ``not_found_polls``, ``send_webhooks``.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.fakes.base import FakeProvider, Recorded

KEY = "atlas-test-key"
MODEL = "alibaba/wan-2.7/reference-to-video"
SUBMIT_PATH = "/api/v1/model/generateVideo"
PREDICTION_PATH = "/api/v1/model/prediction/{id}"
UPLOAD_PATH = "/api/v1/model/uploadMedia"
JWKS_PATH = "/api/v1/webhooks/jwks.json"
HEADER = "X-AtlasCloud-Webhook-"
#: Final statuses that are failures: ``failed``, and ``timeout`` and ``cancelled`` per
#: third-party clients.
_ENDED_BADLY = ("failed", "timeout", "cancelled")


@dataclass
class Upload:
    form_field: str
    filename: str
    content_type: str
    data: bytes
    request_headers: dict[str, str] = field(default_factory=dict)


@dataclass
class AtlasTask:
    id: str
    body: dict[str, Any]
    webhook: str | None
    status: str = "processing"
    polls: int = 0
    error_code: int | None = None
    error: str | None = None


def public_jwk(key: Ed25519PrivateKey, kid: str) -> dict[str, str]:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig", "alg": "EdDSA"}


def key_id(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "atlas-" + hashlib.sha256(raw).hexdigest()[:12]


def signed_headers(
    key: Ed25519PrivateKey,
    body: bytes,
    *,
    timestamp: int | None = None,
    kid: str | None = None,
    encoding: str = "base64",
    bare: bool = False,
) -> dict[str, str]:
    """AtlasCloud's webhook headers: Ed25519 over ``"<timestamp>.<raw body>"``; ``bare`` puts
    the signature in the bare ``…-Signature`` header, where it is said to move once the HMAC of
    the migration is retired."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = key.sign(f"{stamp}.".encode() + body)
    written = signature.hex() if encoding == "hex" else base64.b64encode(signature).decode()
    return {
        f"{HEADER}Signature{'' if bare else '-Ed25519'}": written,
        f"{HEADER}Key-Id": kid if kid is not None else key_id(key),
        f"{HEADER}Timestamp": stamp,
        f"{HEADER}Id": f"evt-{stamp}-{hashlib.sha256(body).hexdigest()[:8]}",
        "Content-Type": "application/json",
    }


class FakeAtlasCloud(FakeProvider):
    name = "atlascloud"

    def __init__(
        self,
        result: bytes,
        *,
        key: str = KEY,
        complete_after_polls: int | None = 2,
        send_webhooks: bool = True,
        not_found_polls: int = 0,
    ) -> None:
        super().__init__(result, key=key, complete_after_polls=complete_after_polls)
        self.send_webhooks = send_webhooks
        self.not_found_polls = not_found_polls
        self.signing_key = Ed25519PrivateKey.generate()
        self.tasks: dict[str, AtlasTask] = {}
        self.uploads: dict[str, Upload] = {}
        self.jwks_fetches = 0
        self.webhook_answers: list[int] = []
        self._ids = itertools.count(1)

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._check])
        app.router.add_post(SUBMIT_PATH, self._submit)
        app.router.add_get(PREDICTION_PATH, self._prediction)
        app.router.add_post(UPLOAD_PATH, self._upload)
        app.router.add_get(JWKS_PATH, self._jwks)
        app.router.add_get("/media/{id}", self._media)
        app.router.add_get("/outputs/{id}.mp4", self._serve_result)
        return app

    # -- what tests drive ------------------------------------------------------------------

    def submits(self) -> list[Recorded]:
        return self.requested("POST", SUBMIT_PATH)

    def only_task(self) -> AtlasTask:
        assert len(self.tasks) == 1, self.tasks
        return next(iter(self.tasks.values()))

    def complete(self, task_id: str) -> None:
        self._finish(self.tasks[task_id], "completed")

    def fail(
        self, task_id: str, *, error_code: int | None, error: str | None, status: str = "failed"
    ) -> None:
        """End the task unsuccessfully: ``failed``, or (per third-party clients) ``timeout`` or
        ``cancelled``, all final."""
        task = self.tasks[task_id]
        task.error_code, task.error = error_code, error
        self._finish(task, status)

    def webhook_body(self, task: AtlasTask) -> bytes:
        ok = task.status not in _ENDED_BADLY
        payload: dict[str, Any] = {"outputs": self._outputs(task) if ok else []}
        if not ok:
            payload["status"] = task.status
            payload["error"] = task.error
            payload["error_code"] = task.error_code
        return json.dumps(
            {
                "event_type": "video.task.terminal",
                "session_id": task.id,
                "status": "OK" if ok else "ERROR",
                "payload": payload,
            }
        ).encode()

    def _finish(self, task: AtlasTask, status: str) -> None:
        task.status = status
        if task.webhook and self.send_webhooks:
            self._in_background(self._post_webhook(task))

    async def _post_webhook(self, task: AtlasTask) -> None:
        assert task.webhook is not None
        body = self.webhook_body(task)
        headers = signed_headers(self.signing_key, body)
        async with self._client.post(task.webhook, data=body, headers=headers) as response:
            self.webhook_answers.append(response.status)

    def _outputs(self, task: AtlasTask) -> list[str]:
        return [f"{self.url}/outputs/{task.id}.mp4"]

    # -- routes ----------------------------------------------------------------------------

    @web.middleware
    async def _check(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Record every request; refuse API calls without the key, or with a fault queued."""
        await self._record(request)
        if request.path.startswith("/api/") and request.path != JWKS_PATH:
            if request.headers.get("Authorization") != f"Bearer {self.key}":
                return _error(401, "Unauthorized: invalid API key")
            status = self._take_failure(request.path)
            if status is not None:
                return _error(status, f"injected {status}")
        response: web.StreamResponse = await handler(request)
        return response

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        return web.json_response({"keys": [public_jwk(self.signing_key, key_id(self.signing_key))]})

    async def _submit(self, request: web.Request) -> web.Response:
        await self._hold_submit()
        body = self.requests[-1].json()
        problem = _invalid(body, self.url)
        if problem:
            return _error(400, problem)
        task = AtlasTask(f"atlas-{next(self._ids)}", body, body.get("webhook_url"))
        self.tasks[task.id] = task
        return web.json_response(
            {"code": 200, "message": "success", "data": {"id": task.id, "status": "processing"}}
        )

    async def _prediction(self, request: web.Request) -> web.Response:
        task = self.tasks.get(request.match_info["id"])
        if task is None:
            return _error(404, "prediction not found")
        task.polls += 1
        if task.polls <= self.not_found_polls:
            return _error(404, "prediction not found")
        if (
            task.status == "processing"
            and self.complete_after_polls is not None
            and task.polls - self.not_found_polls >= self.complete_after_polls
        ):
            self.complete(task.id)
        data: dict[str, Any] = {"id": task.id, "model": MODEL, "status": task.status}
        done = task.status in ("completed", "succeeded")
        data["outputs"] = self._outputs(task) if done else []
        if task.status in _ENDED_BADLY:
            data["error"] = task.error
            data["error_code"] = task.error_code
        # A failed job still answers HTTP 200: only data.status and data.error_code tell.
        return web.json_response({"code": 200, "message": "success", "data": data})

    async def _upload(self, request: web.Request) -> web.Response:
        recorded = self.requests[-1]
        upload = _multipart_file(recorded.headers.get("Content-Type", ""), recorded.body)
        if upload is None or upload.form_field != "file":
            return _error(400, "multipart field 'file' is required")
        upload.request_headers = recorded.headers
        upload_id = f"up-{next(self._ids)}"
        self.uploads[upload_id] = upload
        return web.json_response(
            {"code": 200, "data": {"download_url": f"{self.url}/media/{upload_id}"}}
        )

    async def _media(self, request: web.Request) -> web.Response:
        upload = self.uploads.get(request.match_info["id"])
        if upload is None:
            return web.Response(status=404)
        return web.Response(body=upload.data, content_type=upload.content_type)


def _invalid(body: Any, own_url: str) -> str | None:
    """What the fake's AtlasCloud would refuse in a submit body, per PROVIDERS.md."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    if body.get("model") != MODEL:
        return f"unknown model {body.get('model')!r}"
    if not body.get("prompt"):
        return "prompt is required"
    references = [*body.get("images", []), *body.get("videos", [])]
    if not references:
        return "images or videos are required"
    if any(not str(url).startswith(f"{own_url}/media/") for url in references):
        return "references must be uploaded with uploadMedia first"
    if body.get("resolution") not in ("720P", "1080P"):
        return "resolution must be 720P or 1080P"
    duration = body.get("duration")
    if not isinstance(duration, int) or not 2 <= duration <= 10:
        return "duration must be 2 to 10"
    return None


def _multipart_file(content_type: str, body: bytes) -> Upload | None:
    """The first file part of a ``multipart/form-data`` body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    if not message.is_multipart():
        return None
    for part in message.iter_parts():
        filename = part.get_filename()
        name = part.get_param("name", header="content-disposition")
        if filename and isinstance(name, str):
            data = part.get_payload(decode=True)
            return Upload(
                name,
                filename,
                part.get_content_type(),
                data if isinstance(data, bytes) else b"",
            )
    return None


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"code": status, "message": message}, status=status)
