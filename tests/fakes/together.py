"""A loopback Together AI video API that follows PROVIDERS.md's Together section.

It checks the Bearer key, records every request, validates the documented body (``seconds`` a
string, references under ``media``), fetches every reference from the URL it is given (as
Together does, so our signed ``/media`` links are really exercised), and answers job look-ups as
documented. A job runs once looked up and completes after ``complete_after_polls`` look-ups,
unless the test sets its state itself. Its ``outputs.video_url`` is a short link that redirects
to the MP4, which the fake serves too. Together sends no webhooks, so neither does the fake.

Knobs: those of every fake (``tests.fakes.base``), where ``fail_next`` answers API calls (not
the result links); ``redirect``, ``fetch_references`` (off for tests whose links nobody serves).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeProvider, Recorded

KEY = "together-test-key"
MODEL = "Wan-AI/wan2.7-r2v"
VIDEOS_PATH = "/v2/videos"


@dataclass
class Video:
    id: str
    body: dict[str, Any]
    status: str = "queued"
    polls: int = 0
    error: dict[str, str] | None = None
    cost: float = 0.42


class FakeTogether(FakeProvider):
    name = "together"

    def __init__(
        self, result: bytes, *, key: str = KEY, complete_after_polls: int | None = 2
    ) -> None:
        super().__init__(result, key=key, complete_after_polls=complete_after_polls)
        self.videos: dict[str, Video] = {}
        self.redirect = True
        self.fetch_references = True
        self.short_link_hits = 0
        self._ids = itertools.count(1)

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._check])
        app.router.add_post(VIDEOS_PATH, self._submit)
        app.router.add_get(VIDEOS_PATH + "/{id}", self._video)
        app.router.add_get("/s/{id}", self._short_link)
        app.router.add_get("/files/{id}.mp4", self._serve_result)
        return app

    # -- what tests drive ------------------------------------------------------------------

    def submits(self) -> list[Recorded]:
        return self.requested("POST", VIDEOS_PATH)

    def only_video(self) -> Video:
        assert len(self.videos) == 1, self.videos
        return next(iter(self.videos.values()))

    def set_status(
        self, video_id: str, status: str, *, error: dict[str, str] | None = None
    ) -> None:
        video = self.videos[video_id]
        video.status = status
        video.error = error

    def job(self, video: Video) -> dict[str, Any]:
        """The job object as ``GET /v2/videos/{id}`` answers it."""
        answer: dict[str, Any] = {
            "id": video.id,
            "object": "video",
            "model": video.body.get("model"),
            "status": video.status,
            "created_at": 1_700_000_000,
            "seconds": video.body.get("seconds"),
        }
        if video.status == "completed":
            answer["outputs"] = {"video_url": f"{self.url}/s/{video.id}", "cost": video.cost}
        if video.status == "failed":
            answer["error"] = video.error or {"code": "internal_error", "message": "failed"}
        return answer

    # -- routes ----------------------------------------------------------------------------

    @web.middleware
    async def _check(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Record every request; refuse API calls without the key, or with a fault queued."""
        await self._record(request)
        if request.path.startswith(VIDEOS_PATH):
            if request.headers.get("Authorization") != f"Bearer {self.key}":
                return _error(401, "invalid_api_key", "Invalid API key provided")
            status = self._take_failure(request.path)
            if status is not None:
                return _error(status, "injected", f"injected {status}")
        response: web.StreamResponse = await handler(request)
        return response

    async def _submit(self, request: web.Request) -> web.Response:
        await self._hold_submit()
        body = self.requests[-1].json()
        problem = _invalid(body)
        if problem:
            return _error(400, "invalid_request_error", problem)
        video = Video(f"video-{next(self._ids)}", body)
        self.videos[video.id] = video
        media = body.get("media", {})
        urls = list(media.get("reference_images", []))
        urls += [item["video"] for item in media.get("reference_videos", [])]
        for url in urls if self.fetch_references else []:
            if not await self._fetch(url):
                video.status = "failed"
                video.error = {"code": "invalid_media", "message": f"Could not download {url}"}
        return web.json_response(self.job(video))

    async def _video(self, request: web.Request) -> web.Response:
        video = self.videos.get(request.match_info["id"])
        if video is None:
            return _error(404, "not_found", "Video job not found")
        video.polls += 1
        if self.complete_after_polls is not None:
            if video.status == "queued":
                video.status = "in_progress"
            if video.status == "in_progress" and video.polls >= self.complete_after_polls:
                video.status = "completed"
        return web.json_response(self.job(video))

    async def _short_link(self, request: web.Request) -> web.StreamResponse:
        """The short ``video_url``: a redirect to where the file really is."""
        self.short_link_hits += 1
        target = f"{self.url}/files/{request.match_info['id']}.mp4?X-Signature=abc"
        if not self.redirect:
            return await self._serve_result(request)
        raise web.HTTPFound(target)


def _invalid(body: Any) -> str | None:
    """What the fake's Together would refuse in a submit body, per PROVIDERS.md."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    if body.get("model") != MODEL:
        return f"unknown model {body.get('model')!r}"
    if not body.get("prompt"):
        return "prompt is required"
    seconds = body.get("seconds")
    if not isinstance(seconds, str) or not seconds.isdigit() or not 2 <= int(seconds) <= 10:
        return "seconds must be a string holding 2 to 10"
    if body.get("resolution") not in ("720P", "1080P"):
        return "resolution must be 720P or 1080P"
    if "reference_images" in body:
        return "top-level reference_images is deprecated: use media.reference_images"
    media = body.get("media")
    if not isinstance(media, dict) or not (
        media.get("reference_images") or media.get("reference_videos")
    ):
        return "media needs reference_images or reference_videos"
    if any(not isinstance(item, dict) for item in media.get("reference_videos", [])):
        return "media.reference_videos items are objects: {video: url}"
    if any(key in media for key in ("audio", "reference_audio", "reference_voice")):
        return "this model does not accept audio inputs"
    return None


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, "type": "invalid_request_error"}},
        status=status,
    )
