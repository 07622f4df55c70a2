"""aiohttp routes, kept thin: each translates HTTP into one call of the core and back.

- ``POST /hooks/{provider}/{job_id}?t={token}``: a provider's callback. Answered at once (the
  engine only wakes the job; the status look-up and any download happen after the answer);
  401 for a bad token or signature, 404 for an unknown job, 413 for a body over 1 MB.
- ``GET /healthz``: JSON — database reachable, unfinished jobs, version.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from bot import __version__
from bot.errors import ConfigurationError, WebhookRejected
from bot.jobs import JobEngine, UnknownJob

log = logging.getLogger(__name__)

MAX_WEBHOOK_BYTES = 1024 * 1024

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]
ENGINE_KEY = web.AppKey("engine", JobEngine)


def build_app(
    engine: JobEngine,
    health: HealthCheck,
    *,
    routes: Sequence[web.RouteDef] = (),
    metrics: Callable[[], bytes] | None = None,
    metrics_type: str = "text/plain; version=0.0.4; charset=utf-8",
) -> web.Application:
    app = web.Application(client_max_size=MAX_WEBHOOK_BYTES)
    app[ENGINE_KEY] = engine

    async def healthz(request: web.Request) -> web.Response:
        status = await health()
        status.setdefault("version", __version__)
        return web.json_response(status, status=200 if status.get("ok") else 503)

    app.router.add_post("/hooks/{provider}/{job_id}", _webhook)
    app.router.add_get("/healthz", healthz)
    if metrics is not None:
        exposition = metrics

        async def metrics_route(request: web.Request) -> web.Response:
            response = web.Response(body=exposition())
            response.headers["Content-Type"] = metrics_type
            return response

        app.router.add_get("/metrics", metrics_route)
    app.router.add_routes(routes)
    return app


async def _webhook(request: web.Request) -> web.Response:
    if (request.content_length or 0) > MAX_WEBHOOK_BYTES:
        return web.json_response({"error": "body over 1 MB"}, status=413)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return web.json_response({"error": "body over 1 MB"}, status=413)
    provider = request.match_info["provider"]
    job_id = request.match_info["job_id"]
    token = request.query.get("t", "")
    try:
        await request.app[ENGINE_KEY].on_webhook(
            provider, job_id, token, dict(request.headers), body
        )
    except UnknownJob:
        return web.json_response({"error": "unknown job"}, status=404)
    except WebhookRejected as exc:
        log.warning("webhook for %s/%s refused: %s", provider, job_id, exc.message)
        return web.json_response({"error": "rejected"}, status=401)
    return web.json_response({"ok": True}, status=202)


class HttpServer:
    """Runs the application on a host and port; port 0 picks a free one (see ``port``)."""

    def __init__(
        self, app: web.Application, host: str, port: int, *, sock: socket.socket | None = None
    ) -> None:
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._host = host
        self._port = port
        self._sock = sock
        self.port = sock.getsockname()[1] if sock is not None else port

    async def start(self) -> None:
        """Listen; with a socket given (already bound, e.g. by a test), listen on it."""
        await self._runner.setup()
        site: web.BaseSite
        if self._sock is not None:
            site = web.SockSite(self._runner, self._sock)
        else:
            site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ConfigurationError(
                f"port {self._port} is in use (another r2v, or another program, listens on "
                f"{self._host}:{self._port}); stop it or set R2V_HTTP_PORT to a free port."
            ) from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]

    @property
    def local_url(self) -> str:
        host = "127.0.0.1" if self._host in {"0.0.0.0", "", "::"} else self._host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        await self._runner.cleanup()
