"""The gallery over a real socket: a running bot, real characters, a delivered storyboard video.

What a visitor holding a link sees, and what a visitor guessing sees: expired, altered and
another server's links answer 403 with a sentence, and nothing of a private character (its page,
its files, its thumbnail, videos made with it) can be reached by guessing a URL.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from adapters.http.gallery import ALTERED, EXPIRED, NOT_SHOWN, LinkRefused, gallery_links
from adapters.http.media import Signer
from bot.app import media_links
from tests.harness import USER, Harness, running_bot
from tests.media_factory import make_image

OTHER = replace(USER, server_id="elsewhere", user_id="stranger")
SOMEONE = replace(USER, user_id="someone", is_admin=False)


@dataclass
class Site:
    bot: Harness
    link: str
    video_job: str
    client: httpx.AsyncClient

    async def get(self, url: str) -> httpx.Response:
        return await self.client.get(url)

    def blob_of(self, page: str, kind: str) -> list[str]:
        return re.findall(rf"/{kind}/([0-9a-f]{{64}})", page)


async def gallery_link(bot: Harness, actor: object = USER) -> str:
    reply = await bot.run("gallery", actor=actor)  # type: ignore[arg-type]
    assert not reply.is_error, reply.text
    return str(reply.data["link"])


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with running_bot(tmp_path, gallery_link_hours=1) as bot:
        await bot.character("alice", voice=True)
        await bot.character("bob", video=True)
        secret = make_image(tmp_path / "secret.png", size=(300, 300), color=(10, 200, 10))
        reply = await bot.run(
            "character create", actor=SOMEONE, name="secret", image=secret, visibility="private"
        )
        assert not reply.is_error, reply.text
        shown = await bot.generate("@alice waves at @bob", duration=2)
        hidden = await bot.run("generate", actor=SOMEONE, prompt="@secret hides", duration=2)
        await bot.delivered(shown)
        assert hidden.job_id
        await bot.finished(hidden.job_id)
        async with httpx.AsyncClient() as client:
            yield Site(bot, await gallery_link(bot), shown, client)


async def test_the_page_shows_the_public_roster_and_the_videos(site: Site) -> None:
    page = await site.get(site.link)
    assert page.status_code == 200
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert "set-cookie" not in page.headers
    text = page.text
    assert 'data-name="alice"' in text and 'data-name="bob"' in text
    assert "secret" not in text
    assert text.count('class="card video"') == 1  # the private character's video is left out
    assert f'data-job="{site.video_job}"' in text
    assert "/c/alice" in text  # the prompt's @alice links to her page
    assert "storyboard" in text and "pictures" in text and "voice" in text
    thumbs = site.blob_of(text, "thumb")
    assert len(thumbs) == 3  # alice's picture, bob's video, and the video's poster frame
    for blob in thumbs:
        answer = await site.get(f"{site.link}/thumb/{blob}")
        assert answer.status_code == 200 and answer.headers["Content-Type"] == "image/jpeg"
        assert answer.content.startswith(b"\xff\xd8")
    # made once, then kept: a second look reads the same file
    cache = site.bot.app.settings.data_dir / "thumbnails"
    made = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert len(made) == 3
    for blob in thumbs:
        assert (await site.get(f"{site.link}/thumb/{blob}")).status_code == 200
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == made


async def test_videos_play_with_range_requests(site: Site) -> None:
    (blob,) = site.blob_of((await site.get(site.link)).text, "file")
    answer = await site.client.get(f"{site.link}/file/{blob}", headers={"Range": "bytes=0-99"})
    assert answer.status_code == 206 and len(answer.content) == 100
    assert answer.headers["Content-Type"] == "video/mp4"


async def test_the_filter_and_a_characters_own_page(site: Site) -> None:
    with_bob = await site.get(f"{site.link}/?character=BOB")
    assert with_bob.status_code == 200 and with_bob.text.count('class="card video"') == 1
    bob = await site.get(f"{site.link}/c/bob")
    assert bob.status_code == 200 and "<video" in bob.text
    alice = await site.get(f"{site.link}/c/alice")
    assert "<audio" in alice.text
    voice = re.findall(r'<audio[^>]+src="[^"]+/file/([0-9a-f]{64})"', alice.text)
    assert voice and (await site.get(f"{site.link}/file/{voice[0]}")).status_code == 200


async def test_nothing_of_a_private_character_is_reachable_by_guessing(site: Site) -> None:
    secret = await site.bot.app.core.roster.show(SOMEONE, "secret")
    hidden_job = [j for j in await site.bot.app.engine.recent(SOMEONE) if j.result_blob]
    guesses = [
        f"{site.link}/c/secret",
        f"{site.link}/?character=secret",
        *(f"{site.link}/{kind}/{m.blob}" for m in secret.media for kind in ("file", "thumb")),
        *(f"{site.link}/file/{j.result_blob}" for j in hidden_job),
        f"{site.link}/file/{'0' * 64}",
        f"{site.link}/file/../../r2v.sqlite3",
    ]
    assert hidden_job
    for url in guesses:
        answer = await site.get(url)
        assert answer.status_code == 403, url
        assert NOT_SHOWN in answer.text or ALTERED.split(":")[0] in answer.text, url


async def test_expired_altered_and_foreign_links_answer_403_with_a_sentence(site: Site) -> None:
    token = site.link.rsplit("/", 1)[1]
    payload, signature = token.split(".")
    altered = f"{site.link.rsplit('/', 1)[0]}/{payload}.{signature[:-2]}AA"
    answer = await site.get(altered)
    assert answer.status_code == 403
    assert ALTERED.split(":")[0] in answer.text
    other = await gallery_link(site.bot, OTHER)
    # another server's link shows that server, which has nothing of this one
    answer = await site.get(other)
    assert answer.status_code == 200 and "alice" not in answer.text
    alice = await site.bot.app.core.roster.show(USER, "alice")
    for m in alice.media:
        answer = await site.get(f"{other}/file/{m.blob}")
        assert answer.status_code == 403 and NOT_SHOWN.split(":")[0] in answer.text
    assert (await site.get(f"{other}/c/alice")).status_code == 403


async def test_an_expired_link_answers_403(tmp_path: Path) -> None:
    clock = [1_700_000_000.0]

    links = gallery_links(Signer(b"k" * 32), lambda: "http://x", 1, clock=lambda: clock[0])
    token = links.token("console:test")
    assert links.check(token) == "console:test"
    clock[0] += 3601
    with pytest.raises(LinkRefused) as refused:
        links.check(token)
    assert str(refused.value) == EXPIRED.format(how=" with /gallery")
    # and over HTTP, once the bot's own link has expired
    async with running_bot(tmp_path, gallery_link_hours=1) as bot:
        link = await gallery_link(bot)
        late = gallery_links(
            media_links(bot.app.settings, 60).signer,
            lambda: link.split("/gallery/")[0],
            1,
            clock=lambda: 0.0,
        )
        stale = late.url_for("console:test")
        assert stale is not None
        async with httpx.AsyncClient() as client:
            answer = await client.get(stale)
        assert answer.status_code == 403 and "expired" in answer.text


async def test_owners_are_shown_by_the_name_their_platform_gave(tmp_path: Path) -> None:
    named = replace(USER, platform="discord", server_id="42", user_id="1001", name="Ada L.")
    async with running_bot(tmp_path) as bot, httpx.AsyncClient() as client:
        image = make_image(tmp_path / "ada.png", size=(300, 300))
        reply = await bot.run("character create", actor=named, name="ada", image=image)
        assert not reply.is_error, reply.text
        page = (await client.get(await gallery_link(bot, named))).text
        assert "Ada L." in page
        # A later name wins: the page follows a rename on the platform.
        renamed = replace(named, name="Ada Lovelace")
        await bot.run("character list", actor=renamed)
        page = (await client.get(await gallery_link(bot, renamed))).text
        assert "Ada Lovelace" in page and "Ada L.<" not in page
