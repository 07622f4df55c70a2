"""A loopback fake of Replicate's predictions, files and Standard Webhooks (PROVIDERS.md).

It checks the ``Authorization: Bearer …`` header, records every request, makes predictions on
the model endpoint, moves them through starting → processing → succeeded after a number of
status polls (or when the test says), serves the result MP4 itself, serves its webhook signing
secret at ``/v1/webhooks/default/secret``, and — when a prediction carries a ``webhook`` and
``send_webhooks`` is on — POSTs the prediction for the events in its ``webhook_events_filter``,
signed with that secret by the Standard Webhooks scheme.

Knobs: those of every fake (``tests.fakes.base``), where ``fail_next`` answers submits.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from typing import Any

from aiohttp import web

from adapters import webhooks
from tests.fakes.base import FakeProvider, Recorded

TOKEN = "r8_test_token"
MODEL = "wan-video/wan-2.7-r2v"


@dataclass
class Prediction:
    id: str
    input: dict[str, Any]
    webhook: str | None
    events: list[str]
    status: str = "starting"
    polls: int = 0
    error: str | None = None
    output: Any = None


@dataclass
class UploadedFile:
    id: str
    name: str
    content_type: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


class FakeReplicate(FakeProvider):
    name = "replicate"

    def __init__(
        self,
        result: bytes,
        *,
        key: str = TOKEN,
        complete_after_polls: int | None = 2,
        send_webhooks: bool = True,
    ) -> None:
        super().__init__(result, key=key, complete_after_polls=complete_after_polls)
        self.send_webhooks = send_webhooks
        self.secret = webhooks.new_secret()
        self.predictions: dict[str, Prediction] = {}
        self.files: dict[str, UploadedFile] = {}
        self.secret_fetches = 0
        self.webhook_answers: list[tuple[str, int]] = []

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._check])
        app.router.add_post("/v1/models/{owner}/{name}/predictions", self._submit)
        app.router.add_get("/v1/predictions/{id}", self._get)
        app.router.add_post("/v1/predictions/{id}/cancel", self._cancel)
        app.router.add_get("/v1/webhooks/default/secret", self._secret)
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{id}", self._file)
        app.router.add_get("/results/{id}.mp4", self._serve_result)
        return app

    # -- what tests drive ------------------------------------------------------------------

    def submits(self) -> list[Recorded]:
        return self.requested("POST", f"/v1/models/{MODEL}/predictions")

    def only_prediction(self) -> Prediction:
        assert len(self.predictions) == 1, self.predictions
        return next(iter(self.predictions.values()))

    def set_status(self, prediction_id: str, status: str, *, error: str | None = None) -> None:
        """Move a prediction; ``succeeded`` sets its output, ``completed`` webhooks go out."""
        prediction = self.predictions[prediction_id]
        prediction.status = status
        prediction.error = error
        if status == "succeeded":
            prediction.output = f"{self.url}/results/{prediction.id}.mp4"
        if status in ("succeeded", "failed", "canceled"):
            self._notify(prediction, "completed")

    def document(self, prediction: Prediction) -> dict[str, Any]:
        """The prediction object, as the API and the webhooks send it."""
        return {
            "id": prediction.id,
            "model": MODEL,
            "version": "hidden",
            "input": prediction.input,
            "logs": "",
            "output": prediction.output,
            "error": prediction.error,
            "status": prediction.status,
            "created_at": "2026-11-01T12:00:00.000Z",
            "urls": {
                "get": f"{self.url}/v1/predictions/{prediction.id}",
                "cancel": f"{self.url}/v1/predictions/{prediction.id}/cancel",
            },
        }

    def _notify(self, prediction: Prediction, event: str) -> None:
        if not (prediction.webhook and self.send_webhooks and event in prediction.events):
            return
        self._in_background(self._post_webhook(prediction, event))

    async def _post_webhook(self, prediction: Prediction, event: str) -> None:
        assert prediction.webhook is not None
        body = json.dumps(self.document(prediction)).encode()
        headers = webhooks.signed_headers(self.secret, body)
        headers["Content-Type"] = "application/json"
        async with self._client.post(prediction.webhook, data=body, headers=headers) as response:
            self.webhook_answers.append((event, response.status))

    # -- routes ----------------------------------------------------------------------------

    @web.middleware
    async def _check(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Record every request; refuse API calls without the token."""
        await self._record(request)
        if not request.path.startswith("/results/") and (
            request.headers.get("Authorization") != f"Bearer {self.key}"
        ):
            return web.json_response(
                {"title": "Unauthenticated", "detail": "You did not pass a valid token"},
                status=401,
            )
        response: web.StreamResponse = await handler(request)
        return response

    async def _submit(self, request: web.Request) -> web.Response:
        model = f"{request.match_info['owner']}/{request.match_info['name']}"
        if model != MODEL:
            return web.json_response({"detail": "model not found"}, status=404)
        await self._hold_submit()
        status = self._take_failure("submit")
        if status is not None:
            return web.json_response({"detail": f"fault {status}"}, status=status)
        body = await request.json()
        prediction = Prediction(
            id=secrets.token_hex(10),
            input=body["input"],
            webhook=body.get("webhook"),
            events=list(body.get("webhook_events_filter") or ["start", "output", "completed"]),
        )
        self.predictions[prediction.id] = prediction
        self._notify(prediction, "start")
        return web.json_response(self.document(prediction), status=201)

    async def _get(self, request: web.Request) -> web.Response:
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return web.json_response({"detail": "Not found."}, status=404)
        prediction.polls += 1
        if prediction.status in ("starting", "processing") and self.complete_after_polls:
            if prediction.polls >= self.complete_after_polls:
                self.set_status(prediction.id, "succeeded")
            else:
                prediction.status = "processing"
        return web.json_response(self.document(prediction))

    async def _cancel(self, request: web.Request) -> web.Response:
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return web.json_response({"detail": "Not found."}, status=404)
        if prediction.status in ("starting", "processing"):
            self.set_status(prediction.id, "canceled")
        return web.json_response(self.document(prediction))

    async def _secret(self, request: web.Request) -> web.Response:
        self.secret_fetches += 1
        return web.json_response({"key": self.secret})

    async def _upload(self, request: web.Request) -> web.Response:
        """``POST /v1/files``: the multipart field ``content`` becomes a file.

        The body was already read (and recorded), so the standard library's MIME parser reads
        it here: a parser independent of the client under test.
        """
        head = f"Content-Type: {request.headers.get('Content-Type', '')}\r\n\r\n".encode()
        message = BytesParser(policy=policy.HTTP).parsebytes(head + await request.read())
        for part in message.iter_parts() if message.is_multipart() else ():
            if part.get_param("name", header="content-disposition") != "content":
                continue
            data = part.get_payload(decode=True)
            uploaded = UploadedFile(
                id=secrets.token_hex(8),
                name=part.get_filename() or "",
                content_type=part.get_content_type(),
                data=data if isinstance(data, bytes) else b"",
                headers=dict(request.headers),
            )
            self.files[uploaded.id] = uploaded
            return web.json_response(
                {
                    "id": uploaded.id,
                    "name": uploaded.name,
                    "content_type": uploaded.content_type,
                    "size": len(uploaded.data),
                    "urls": {"get": f"{self.url}/v1/files/{uploaded.id}"},
                },
                status=201,
            )
        return web.json_response({"detail": "the multipart field content is missing"}, status=400)

    async def _file(self, request: web.Request) -> web.Response:
        uploaded = self.files.get(request.match_info["id"])
        if uploaded is None:
            return web.json_response({"detail": "Not found."}, status=404)
        return web.json_response({"id": uploaded.id, "size": len(uploaded.data)})
