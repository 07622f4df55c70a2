"""The gallery's web pages and the download links of roster exports, behind signed links.

``GET /gallery/{token}/`` shows one server's public roster and videos (``bot.gallery`` decides
what); ``…/c/{name}`` one character; ``…/thumb/{blob}`` a thumbnail or poster frame;
``…/file/{blob}`` a file itself (HTTP Range, so videos play and seek). ``GET /exports/{token}`` is
an exported roster ZIP too large to upload to chat.

A link names its server (or its file) and when it stops working, signed with the ``/media``
links' secret under a key derived for each purpose (``Signer.derive``), so a link of one kind is
never accepted as another. An expired, altered or foreign link answers 403 with a sentence saying
which; so does anything the page does not show (another server's, a private character's, a name
or hash guessed), with one sentence for all of those so that a guess learns nothing.

The pages carry no script, no cookie and no account; the token in the URL is the only key, so
every answer asks browsers not to pass it on (``Referrer-Policy: no-referrer``) and not to index.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web

from adapters.http.media import RemoteBlobs, Signer, serve_blob
from bot.gallery import Gallery, ServedFile
from bot.models import MediaKind
from bot.ports import BlobStore
from bot.thumbnails import Thumbnails

_BLOB: Final = re.compile(r"[0-9a-f]{64}")
_EXPORT_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,120}\.zip")
TEMPLATES: Final = Path(__file__).parent / "templates"

EXPIRED: Final = "This link has expired. Ask the bot for a new one{how}."
ALTERED: Final = (
    "This link is not valid: it was changed or cut short. Ask the bot for a new one{how}."
)
NOT_SHOWN: Final = (
    "This link does not open that: a gallery shows only the public characters of its own "
    "server and their videos."
)
GONE: Final = "This export is no longer kept. Make a new one with /character export."
_HEADERS: Final = {
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
}
_KEEP_DAY: Final = "private, max-age=86400"
_KEEP_HOUR: Final = "private, max-age=3600"
_PAGE_HEADERS: Final = {
    **_HEADERS,
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LinkRefused(Exception):
    def __init__(self, sentence: str) -> None:
        super().__init__(sentence)
        self.sentence = sentence


class SignedLinks:
    """Links that name one value (a server, a file name) until a moment, under a base URL."""

    def __init__(
        self,
        signer: Signer,
        base_url: Callable[[], str | None],
        prefix: str,
        ttl_seconds: int,
        *,
        how: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signer = signer
        self._base = base_url
        self._prefix = prefix
        self._ttl = ttl_seconds
        self._how = how
        self._clock = clock

    def token(self, value: str) -> str:
        expires = int(self._clock()) + self._ttl
        return self._signer.sign(json.dumps([value, expires]).encode("utf-8"))

    def url_for(self, value: str) -> str | None:
        base = self._base()
        if base is None:
            return None
        return f"{base.rstrip('/')}/{self._prefix}/{self.token(value)}"

    def check(self, token: str) -> str:
        """The value a token names; ``LinkRefused`` (with its sentence) when it is not valid."""
        payload = self._signer.verify(token)
        try:
            value, expires = json.loads(payload) if payload is not None else (None, None)
        except (ValueError, TypeError):
            value = expires = None
        if not isinstance(value, str) or not isinstance(expires, int):
            raise LinkRefused(ALTERED.format(how=self._how))
        if expires < self._clock():
            raise LinkRefused(EXPIRED.format(how=self._how))
        return value


#: What each kind of signed link names, where it points, and what a refusal tells to run.
_LINK_KINDS = {
    "gallery": ("gallery", " with /gallery"),  # one server (its storage key)
    "export": ("exports", " with /character export"),  # one ZIP in the exports folder
}


def signed_links(
    kind: str,
    signer: Signer,
    base_url: Callable[[], str | None],
    hours: int,
    *,
    clock: Callable[[], float] = time.time,
) -> SignedLinks:
    """``/gallery`` or ``/exports`` links, signed under a key of their own (``kind``)."""
    route, how = _LINK_KINDS[kind]
    return SignedLinks(signer.derive(kind), base_url, route, hours * 3600, how=how, clock=clock)


def gallery_links(
    signer: Signer,
    base_url: Callable[[], str | None],
    hours: int,
    *,
    clock: Callable[[], float] = time.time,
) -> SignedLinks:
    return signed_links("gallery", signer, base_url, hours, clock=clock)


def export_links(signer: Signer, base_url: Callable[[], str | None], hours: int) -> SignedLinks:
    return signed_links("export", signer, base_url, hours)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["date"] = _date
    env.filters["amount"] = _amount
    env.filters["seconds"] = lambda s: "" if s is None else f"{s:.1f} s"
    env.filters["path"] = lambda s: quote(str(s), safe="")
    return env


def _date(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _amount(cost: float | None) -> str:
    return "free" if not cost else f"${cost:.2f}"


def gallery_routes(
    gallery: Gallery,
    links: SignedLinks,
    blobs: BlobStore,
    thumbnails: Thumbnails,
    exports: SignedLinks | None = None,
    exports_dir: Path | None = None,
    remote: RemoteBlobs | None = None,
) -> list[web.RouteDef]:
    """The gallery's routes, and the export downloads when an exports folder is given.
    ``remote`` (an object store) lets files be streamed from it, as ``/media`` does."""
    env = _environment()

    def render(name: str, status: int = 200, **values: Any) -> web.Response:
        body = env.get_template(name).render(**values)
        return web.Response(
            text=body, status=status, content_type="text/html", headers=_PAGE_HEADERS
        )

    def refused(sentence: str) -> web.Response:
        return render("refused.html", status=403, sentence=sentence)

    def server_of(request: web.Request) -> tuple[str, str]:
        token = request.match_info["token"]
        return links.check(token), f"/gallery/{token}"

    async def shown_file(request: web.Request) -> ServedFile:
        server, _ = server_of(request)
        blob = request.match_info["blob"]
        served = await gallery.file(server, blob) if _BLOB.fullmatch(blob) else None
        if served is None:
            raise LinkRefused(NOT_SHOWN)
        return served

    async def index(request: web.Request) -> web.StreamResponse:
        server, base = server_of(request)
        character = request.query.get("character") or None
        page = await gallery.page(
            server,
            character=character,
            page=_number(request.query.get("page")),
            roster_page=_number(request.query.get("roster")),
        )
        if character and page.character is None:
            return refused(NOT_SHOWN)

        def link(**changes: object) -> str:
            query: dict[str, object] = {"character": page.character or ""}
            query.update(page=page.videos.number, roster=page.roster.number)
            query.update(changes)
            kept = {k: v for k, v in query.items() if v not in ("", None, 1)}
            return f"{base}/" + (f"?{urlencode(kept)}" if kept else "")

        return render("gallery.html", base=base, page=page, link=link)

    async def character(request: web.Request) -> web.StreamResponse:
        server, base = server_of(request)
        card = await gallery.character(server, request.match_info["name"])
        if card is None:
            return refused(NOT_SHOWN)
        return render("character.html", base=base, card=card, MediaKind=MediaKind)

    async def thumbnail(request: web.Request) -> web.StreamResponse:
        served = await shown_file(request)
        if served.kind is MediaKind.VOICE:
            raise LinkRefused(NOT_SHOWN)
        picture = await thumbnails.get(
            served.blob, partial(blobs.local_path, served.blob), served.kind, served.mime
        )
        return web.FileResponse(
            picture,
            headers={
                **_HEADERS,
                "Content-Type": "image/jpeg",
                "Cache-Control": _KEEP_DAY,
            },
        )

    async def file(request: web.Request) -> web.StreamResponse:
        served = await shown_file(request)
        headers = {**_HEADERS, "Content-Type": served.mime, "Cache-Control": _KEEP_HOUR}
        return await serve_blob(request, served.blob, headers, blobs.local_path, remote)

    async def export(request: web.Request) -> web.StreamResponse:
        assert exports is not None and exports_dir is not None
        name = exports.check(request.match_info["token"])
        path = exports_dir / name
        if not _EXPORT_NAME.fullmatch(name) or not await asyncio.to_thread(path.is_file):
            raise LinkRefused(GONE)
        return web.FileResponse(
            path,
            headers={
                **_HEADERS,
                "Content-Type": "application/zip",
                "Content-Disposition": f'attachment; filename="{name}"',
                "Cache-Control": "private, no-store",
            },
        )

    def guarded(handler: Handler) -> Handler:
        """A refused link or file answers 403 with its sentence, from any handler."""

        async def run(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except LinkRefused as exc:
                return refused(exc.sentence)

        return run

    routes = [
        web.get("/gallery/{token}/", guarded(index)),
        web.get("/gallery/{token}", guarded(index)),
        web.get("/gallery/{token}/c/{name}", guarded(character)),
        web.get("/gallery/{token}/thumb/{blob}", guarded(thumbnail)),
        web.get("/gallery/{token}/file/{blob}", guarded(file)),
    ]
    if exports is not None and exports_dir is not None:
        routes.append(web.get("/exports/{token}", guarded(export)))
    return routes


def _number(raw: str | None) -> int:
    try:
        return max(1, min(int(raw or 1), 100_000))
    except ValueError:
        return 1


__all__ = [
    "LinkRefused",
    "SignedLinks",
    "export_links",
    "gallery_links",
    "gallery_routes",
]
