"""The gallery in a real browser: Debian's chromium, headless, driven by Playwright.

It loads a gallery with characters and a delivered video, takes a screenshot (the README's
``docs/gallery.png`` is made by this test with ``R2V_SCREENSHOT=docs/gallery.png``), and checks
what a visitor would notice: thumbnails loaded, a video plays, the filter works, a private
character is absent, and the page fits a phone's width.

Where no chromium (or no Playwright) is installed the test skips and says so, except under CI
(``CI`` set), where ``.ci/run`` installs both and a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from tests.harness import USER, running_bot
from tests.media_factory import make_image

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("R2V_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SOMEONE = replace(USER, user_id="someone", is_admin=False)


def _browser_missing() -> str | None:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "Playwright's Python client is not installed (pip install playwright)"
    if not Path(CHROMIUM).exists():
        return f"no chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture
def chromium() -> str:
    missing = _browser_missing()
    if missing and os.environ.get("CI"):
        pytest.fail(f"the browser tests must run in CI: {missing}")
    if missing:
        pytest.skip(missing)
    return CHROMIUM


async def test_the_gallery_in_a_browser(tmp_path: Path, chromium: str) -> None:
    from playwright.async_api import async_playwright

    async with running_bot(tmp_path) as bot:
        colours = {"alice": (220, 90, 60), "bob": (60, 140, 220), "carol": (90, 180, 90)}
        for name, colour in colours.items():
            image = make_image(tmp_path / f"{name}.png", size=(400, 400), color=colour)
            reply = await bot.run(
                "character create", name=name, image=image, description=f"{name} of the test"
            )
            assert not reply.is_error, reply.text
        await bot.character("dave", video=True)
        secret = make_image(tmp_path / "secret.png", size=(300, 300))
        await bot.run(
            "character create", actor=SOMEONE, name="secret", image=secret, visibility="private"
        )
        first = await bot.generate("@alice and @bob dance on a rooftop at dusk", duration=2)
        second = await bot.generate("@carol waves", duration=2)
        await bot.delivered(first)
        await bot.delivered(second)
        link = str((await bot.run("gallery")).data["link"])

        async with async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=chromium,
                args=[
                    "--autoplay-policy=no-user-gesture-required",
                    "--no-sandbox",  # CI runs as root
                    "--disable-dev-shm-usage",  # containers have a small /dev/shm
                ],
            )
            try:
                page = await browser.new_page(viewport={"width": 1100, "height": 900})
                await page.goto(link)
                await page.wait_for_function(
                    "[...document.images].every(i => i.complete && i.naturalWidth > 0)"
                )
                widths = await page.eval_on_selector_all(
                    "#roster img", "els => els.map(e => e.naturalWidth)"
                )
                assert len(widths) == 4 and all(w > 0 for w in widths)
                names = await page.eval_on_selector_all(
                    ".character", "els => els.map(e => e.dataset.name)"
                )
                assert names == ["alice", "bob", "carol", "dave"]
                assert "secret" not in await page.content()
                shot = os.environ.get("R2V_SCREENSHOT")
                await page.screenshot(path=shot or str(tmp_path / "gallery.png"), full_page=True)

                # a video plays: its time moves on
                video = page.locator(f'[data-job="{first}"] video')
                await video.evaluate("v => { v.muted = true; return v.play(); }")
                await page.wait_for_function(
                    "v => v.currentTime > 0.3", arg=await video.element_handle(), timeout=15000
                )

                # the filter: only carol's video is left
                await page.select_option("#character", "carol")
                await page.click("form.filter button")
                await page.wait_for_url("**character=carol**")
                jobs = await page.eval_on_selector_all(
                    ".video", "els => els.map(e => e.dataset.job)"
                )
                assert jobs == [second]

                # a phone: nothing wider than the screen
                phone = await browser.new_page(viewport={"width": 375, "height": 800})
                await phone.goto(link)
                overflow = await phone.evaluate(
                    "document.documentElement.scrollWidth - window.innerWidth"
                )
                assert overflow <= 0
            finally:
                await browser.close()
