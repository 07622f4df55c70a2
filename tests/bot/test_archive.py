"""Roster export and import through the core, on a running bot: a ZIP out of one server, into
another, the same roster; and imports that must be refused (or reported) changing nothing."""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from tests.harness import USER, Harness, running_bot
from tests.media_factory import make_image

NEW = replace(USER, server_id="new-home")
MEMBER = replace(USER, user_id="member", is_admin=False)


async def roster(bot: Harness, actor: Any = USER) -> dict[str, tuple[str, ...]]:
    characters = await bot.app.core.roster._store.list(actor.server_key)
    return {c.name: tuple(m.blob for m in c.media) for c in characters}


async def export(bot: Harness, tmp: Path) -> Path:
    jpeg = make_image(tmp / "carol.jpg", size=(400, 300), fmt="JPEG", exif=True)
    await bot.character("alice", voice=True)
    await bot.character("bob", video=True)
    reply = await bot.run("character create", name="carol", image=jpeg, visibility="private")
    assert not reply.is_error, reply.text
    reply = await bot.run("character export")
    assert not reply.is_error, reply.text
    assert reply.file is not None and reply.file.parent == bot.app.settings.outbox_dir
    return reply.file


def rewrite(source: Path, target: Path, change: Any) -> Path:
    """A copy of an export with its manifest and files changed by ``change(manifest, files)``."""
    with zipfile.ZipFile(source) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        files = {n: archive.read(n) for n in archive.namelist() if n != "manifest.json"}
    change(manifest, files)
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        for name, data in files.items():
            archive.writestr(name, data)
    return target


async def test_export_then_import_into_a_new_server_gives_the_same_roster(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as bot:
        path = await export(bot, tmp_path)
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read("manifest.json"))
        assert manifest["format"] == "r2v-roster" and manifest["version"] == 1
        assert [c["name"] for c in manifest["characters"]] == ["alice", "bob", "carol"]
        assert manifest["characters"][2]["visibility"] == "private"
        reply = await bot.run("character import", actor=NEW, file=path)
        assert not reply.is_error, reply.text
        assert reply.data["added"] == ["alice", "bob", "carol"]
        assert await roster(bot, NEW) == await roster(bot, USER)
        moved = await bot.app.core.roster._store.get(NEW.server_key, "carol")
        assert moved is not None and moved.owner_id == USER.user_id
        assert moved.visibility.value == "private"


async def test_a_clash_is_refused_unless_skipped_or_renamed(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as bot:
        path = await export(bot, tmp_path)
        before = await roster(bot)
        reply = await bot.run("character import", file=path)
        assert reply.code == "name_taken"
        assert "alice, bob, carol" in reply.text and "Nothing was imported" in reply.text
        assert await roster(bot) == before
        dry = await bot.run("character import", file=path, clashes="rename", dry_run="true")
        assert not dry.is_error and dry.data["applied"] is False
        assert dry.data["renamed"] == {"alice": "alice-2", "bob": "bob-2", "carol": "carol-2"}
        assert await roster(bot) == before
        skipped = await bot.run("character import", file=path, clashes="skip")
        assert skipped.data["skipped"] == ["alice", "bob", "carol"] and not skipped.data["added"]
        renamed = await bot.run("character import", file=path, clashes="rename")
        assert renamed.data["added"] == ["alice-2", "bob-2", "carol-2"], renamed.text
        after = await roster(bot)
        assert after["alice-2"] == before["alice"]


async def test_a_disguised_file_refuses_the_whole_import(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as bot:
        path = await export(bot, tmp_path)

        def disguise(manifest: dict[str, Any], files: dict[str, bytes]) -> None:
            # bob's "video" is really an HTML page, with its hash updated to match
            import hashlib

            fake = b"<html><script>alert(1)</script></html>" * 40
            item = manifest["characters"][1]["media"][0]
            files.pop(item["file"])
            item["sha256"] = hashlib.sha256(fake).hexdigest()
            item["file"] = f"media/{item['sha256']}.mp4"
            files[item["file"]] = fake

        bad = rewrite(path, tmp_path / "disguised.zip", disguise)
        reply = await bot.run("character import", actor=NEW, file=bad)
        assert reply.code == "invalid_media", reply.text
        assert "bob's video" in reply.text
        assert await roster(bot, NEW) == {}


async def test_bad_archives_are_refused_with_what_is_wrong(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as bot:
        path = await export(bot, tmp_path)

        def newer(m: dict[str, Any], f: dict[str, bytes]) -> None:
            m["version"] = 7

        def bad_name(m: dict[str, Any], f: dict[str, bytes]) -> None:
            m["characters"][0]["name"] = "1 bad name"

        def tampered(m: dict[str, Any], f: dict[str, bytes]) -> None:
            name = m["characters"][0]["media"][0]["file"]
            f[name] = f[name][:-10] + b"0123456789"

        def missing(m: dict[str, Any], f: dict[str, bytes]) -> None:
            f.pop(m["characters"][2]["media"][0]["file"])

        cases = {
            "newer": (newer, "version 7"),
            "bad_name": (bad_name, "not a valid character name"),
            "tampered": (tampered, "does not match its sha256"),
            "missing": (missing, "is not in the ZIP"),
        }
        for label, (change, words) in cases.items():
            bad = rewrite(path, tmp_path / f"{label}.zip", change)
            reply = await bot.run("character import", actor=NEW, file=bad)
            assert reply.code == "invalid_archive", (label, reply.text)
            assert words in reply.text, (label, reply.text)
        not_zip = make_image(tmp_path / "photo.png")
        reply = await bot.run("character import", actor=NEW, file=not_zip)
        assert reply.code == "invalid_archive" and "not a ZIP" in reply.text
        assert await roster(bot, NEW) == {}


async def test_only_admins_export_and_import(tmp_path: Path) -> None:
    async with running_bot(tmp_path) as bot:
        reply = await bot.run("character export", actor=MEMBER)
        assert reply.code == "not_allowed"
