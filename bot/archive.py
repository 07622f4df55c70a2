"""A server's roster as a ZIP (``/character export``), and such a ZIP added to a server
(``/character import``).

The ZIP holds ``manifest.json`` (versioned: ``format``, ``version``, the characters with their
names, descriptions, visibility, owners and media list with sha256) and each media file under
``media/<sha256><ext>``. Files go in and out of the ZIP streamed between disk files in a thread,
never whole in memory.

An import trusts nothing in the ZIP: the manifest is read with a size cap and checked field by
field, every file's size is checked against its kind's limit before it is read, its bytes must
match the manifest's sha256, and then it goes through ``media.check_file`` exactly as an
attachment does when a character is saved. Only when every file and name passed is anything
stored; a failure while storing removes what was stored (all or nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import re
import shutil
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from bot import media
from bot.errors import Refusal
from bot.models import (
    MIME_EXTENSIONS,
    Actor,
    Character,
    CharacterMedia,
    IncomingFile,
    MediaKind,
    NewCharacter,
    Visibility,
)
from bot.names import check_name, name_key
from bot.ports import BlobStore, CharacterStore
from bot.roster import PER_CHARACTER

FORMAT: Final = "r2v-roster"
VERSION: Final = 1
MANIFEST: Final = "manifest.json"
MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024
MAX_DESCRIPTION: Final = 300
_SHA256: Final = re.compile(r"[0-9a-f]{64}")
_CHUNK: Final = 1024 * 1024
_ZIP_MAGIC: Final = b"PK\x03\x04"


class ClashPolicy:
    SKIP: Final = "skip"
    RENAME: Final = "rename"


@dataclass(frozen=True, slots=True)
class Exported:
    path: Path
    characters: int
    files: int
    size: int


@dataclass(frozen=True, slots=True)
class _Entry:
    kind: MediaKind
    file: str
    sha256: str


@dataclass(frozen=True, slots=True)
class _Planned:
    name: str
    original: str
    description: str
    visibility: Visibility
    owner: str
    entries: tuple[_Entry, ...]


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import added (or would add), renamed and skipped; ``applied`` once stored."""

    added: tuple[str, ...]
    renamed: Mapping[str, str]
    skipped: tuple[str, ...]
    applied: bool

    def describe(self) -> str:
        verb = "Imported" if self.applied else "Would import"
        lines = [f"{verb} {len(self.added)} character{'s' if len(self.added) != 1 else ''}"]
        if self.added:
            lines[0] += ": " + ", ".join(self.added)
        lines[0] += "."
        if self.renamed:
            pairs = ", ".join(f"{old} as {new}" for old, new in self.renamed.items())
            lines.append(f"Renamed (name taken): {pairs}.")
        if self.skipped:
            lines.append(f"Skipped (name taken): {', '.join(self.skipped)}.")
        return "\n".join(lines)


def _invalid(text: str) -> Refusal:
    return Refusal(f"This is not a roster export we can import: {text}", code="invalid_archive")


class Archive:
    def __init__(
        self,
        characters: CharacterStore,
        blobs: BlobStore,
        workdir: Path,
        exports_dir: Path,
        *,
        limits: media.MediaLimits = media.DEFAULT_LIMITS,
        max_per_server: int = 1000,
        max_archive_bytes: int = 2 * 1024 * 1024 * 1024,
        keep_exports_seconds: float = 24 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = characters
        self._blobs = blobs
        self._workdir = workdir
        self.exports_dir = exports_dir
        self._limits = limits
        self._max_per_server = max_per_server
        self._max_archive_bytes = max_archive_bytes
        self._keep = keep_exports_seconds
        self._clock = clock

    # -- export ----------------------------------------------------------------------------

    async def export(self, actor: Actor) -> Exported:
        """Write the server's whole roster (private characters too: admins only) to a ZIP."""
        roster = await self._store.list(actor.server_key)
        files: dict[str, Path] = {}
        for character in roster:
            for item in character.media:
                files[_member(item.blob, item.info.mime)] = await self._blobs.local_path(item.blob)
        now = self._clock()
        stamp = datetime.datetime.fromtimestamp(now, datetime.UTC)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "exported_at": stamp.isoformat().replace("+00:00", "Z"),
            "server": {"platform": actor.platform, "id": actor.server_id},
            "characters": [_character_entry(c) for c in roster],
        }
        safe = re.sub(r"[^A-Za-z0-9_-]", "-", actor.server_id)[:40]
        name = f"roster-{actor.platform}-{safe}-{stamp:%Y%m%d-%H%M%S}.zip"
        path = await asyncio.to_thread(
            _write_zip, self.exports_dir, name, manifest, files, now - self._keep
        )
        size = (await asyncio.to_thread(path.stat)).st_size
        return Exported(path, len(roster), len(files), size)

    # -- import ----------------------------------------------------------------------------

    async def import_(
        self,
        actor: Actor,
        file: IncomingFile,
        *,
        clashes: str | None = None,
        dry_run: bool = False,
    ) -> ImportReport:
        """Check the ZIP and every file in it; then, unless a dry run, store it all or nothing.

        A name the server already has is a clash: with no ``clashes`` policy the import is
        refused (``name_taken``) with what it would add and what clashes, and nothing changes.
        """
        received = await media.receive(file, self._workdir, self._max_archive_bytes)
        checked: list[list[media.CheckedFile]] = []
        try:
            with await asyncio.to_thread(_open_zip, received) as archive:
                manifest = await asyncio.to_thread(_read_manifest, archive)
                planned = _plan(manifest, actor.platform)
                report, kept = await self._resolve(actor, planned, clashes)
                for character in kept:
                    checked.append([])
                    for entry in character.entries:
                        checked[-1].append(await self._check_entry(archive, character, entry))
            if not dry_run and kept:
                await self._apply(actor, kept, checked)
                return ImportReport(report.added, report.renamed, report.skipped, applied=True)
            return report
        finally:
            await asyncio.to_thread(_remove, [received, *(c.path for cs in checked for c in cs)])

    async def _resolve(
        self, actor: Actor, planned: Sequence[_Planned], clashes: str | None
    ) -> tuple[ImportReport, list[_Planned]]:
        existing = {name_key(c.name) for c in await self._store.list(actor.server_key)}
        taken = set(existing)
        kept: list[_Planned] = []
        renamed: dict[str, str] = {}
        skipped: list[str] = []
        clashing: list[str] = []
        for character in planned:
            if name_key(character.name) not in taken:
                taken.add(name_key(character.name))
                kept.append(character)
                continue
            clashing.append(character.name)
            if clashes == ClashPolicy.SKIP:
                skipped.append(character.name)
            elif clashes == ClashPolicy.RENAME:
                new = _free_name(character.name, taken)
                taken.add(name_key(new))
                renamed[character.name] = new
                kept.append(_renamed(character, new))
        if clashing and clashes is None:
            adds = [c.name for c in planned if c.name not in clashing]
            raise Refusal(
                f"This server already has {_listed(clashing)} (names ignore case). Nothing was "
                f"imported. It would add {_listed(adds) or 'nothing else'}. Import again with "
                "clashes:skip to leave those out, or clashes:rename to add them with a suffix.",
                code="name_taken",
            )
        if len(existing) + len(kept) > self._max_per_server:
            raise Refusal(
                f"Importing {len(kept)} characters would pass this server's limit of "
                f"{self._max_per_server}. Nothing was imported.",
                code="limit_reached",
            )
        report = ImportReport(tuple(c.name for c in kept), renamed, tuple(skipped), False)
        return report, kept

    async def _check_entry(
        self, archive: zipfile.ZipFile, character: _Planned, entry: _Entry
    ) -> media.CheckedFile:
        """Copy one member out (size-capped, hash checked) and check it as a save does."""
        where = f"{character.original}'s {entry.kind} ({entry.file})"
        max_bytes = self._limits.max_bytes(entry.kind)
        raw = await asyncio.to_thread(_extract, archive, entry, max_bytes, self._workdir, where)
        try:
            checked = await media.check_file(
                media.local_incoming(raw), self._workdir, expect=entry.kind, limits=self._limits
            )
        except Refusal as exc:
            raise Refusal(f"{where}: {exc.message}", code=exc.code) from None
        try:
            # Videos and voices are kept byte for byte (their hash was checked on the way out);
            # an image is saved again, so its bytes may differ from the export's.
            if (
                checked.info.kind is MediaKind.IMAGE
                and await asyncio.to_thread(_sha256, checked.path) != entry.sha256
                and await asyncio.to_thread(media.is_clean_image, raw, checked.info.mime)
            ):
                # Its own bytes are pixels alone: keep them, and so their hash.
                await asyncio.to_thread(shutil.copyfile, raw, checked.path)
                size = (await asyncio.to_thread(checked.path.stat)).st_size
                checked = media.CheckedFile(checked.path, replace(checked.info, size=size))
        finally:
            await asyncio.to_thread(_remove, [raw])
        return checked

    async def _apply(
        self,
        actor: Actor,
        kept: Sequence[_Planned],
        checked: Sequence[Sequence[media.CheckedFile]],
    ) -> None:
        await self._store.ensure_server(actor.server_key, actor.platform)
        blobs: list[str] = []
        try:
            drafts = []
            for character, files in zip(kept, checked, strict=True):
                items = []
                for position, item in enumerate(files):
                    blob = await self._blobs.put_file(item.path)
                    blobs.append(blob)
                    items.append(
                        CharacterMedia(
                            kind=item.info.kind, blob=blob, info=item.info, position=position
                        )
                    )
                drafts.append(
                    NewCharacter(
                        character.name,
                        character.owner or actor.user_id,
                        character.description,
                        character.visibility,
                        tuple(items),
                    )
                )
            # One transaction: a crash or a clash leaves no character of the import behind.
            await self._store.create_many(actor.server_key, drafts)
        except BaseException:
            await self._blobs.discard_unused(blobs)
            raise


# -- the manifest ----------------------------------------------------------------------------


def _member(blob: str, mime: str) -> str:
    return f"media/{blob}{MIME_EXTENSIONS.get(mime, '.bin')}"


def _character_entry(c: Character) -> dict[str, Any]:
    return {
        "name": c.name,
        "description": c.description,
        "visibility": c.visibility.value,
        "owner": c.owner_id,
        "media": [
            {
                "kind": m.kind.value,
                "file": _member(m.blob, m.info.mime),
                "sha256": m.blob,
                "mime": m.info.mime,
                "size": m.info.size,
            }
            for m in c.media
        ],
    }


def _plan(manifest: Mapping[str, Any], platform: str) -> list[_Planned]:
    """Check the manifest field by field; answer the characters it describes."""
    if manifest.get("format") != FORMAT:
        raise _invalid(f"its manifest is not an {FORMAT} manifest.")
    version = manifest.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _invalid("its manifest has no version number.")
    if version > VERSION:
        raise _invalid(f"it is version {version}; this bot reads versions up to {VERSION}.")
    if version < 1:
        raise _invalid(f"version {version} does not exist.")
    server = manifest.get("server")
    same_platform = isinstance(server, dict) and server.get("platform") == platform
    characters = manifest.get("characters")
    if not isinstance(characters, list) or not characters:
        raise _invalid("its manifest lists no characters.")
    planned: list[_Planned] = []
    seen: set[str] = set()
    for number, raw in enumerate(characters, start=1):
        planned.append(_planned(raw, number, same_platform))
        key = name_key(planned[-1].name)
        if key in seen:
            raise _invalid(f"it lists “{planned[-1].name}” twice.")
        seen.add(key)
    return planned


def _planned(raw: object, number: int, same_platform: bool) -> _Planned:
    where = f"character {number}"
    if not isinstance(raw, dict):
        raise _invalid(f"{where} is not an object.")
    name = raw.get("name")
    if not isinstance(name, str):
        raise _invalid(f"{where} has no name.")
    try:
        name = check_name(name)
    except Refusal as exc:
        raise _invalid(f"{where}: {exc.message}") from None
    where = f"“{name}”"
    description = raw.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise _invalid(f"{where} has a description that is not text of at most 300 characters.")
    try:
        visibility = Visibility(raw.get("visibility", "public"))
    except ValueError:
        raise _invalid(f"{where} has a visibility other than public or private.") from None
    owner = raw.get("owner")
    if not isinstance(owner, str) or not owner or len(owner) > 200:
        raise _invalid(f"{where} has no owner.")
    items = raw.get("media")
    if not isinstance(items, list) or not items:
        raise _invalid(f"{where} lists no media.")
    entries = tuple(_entry(item, where) for item in items)
    counts = {kind: sum(1 for e in entries if e.kind is kind) for kind in MediaKind}
    for kind, most in PER_CHARACTER.items():
        if counts[kind] > most:
            raise _invalid(f"{where} has {counts[kind]} {kind} items; at most {most} are kept.")
    if not counts[MediaKind.IMAGE] and not counts[MediaKind.VIDEO]:
        raise _invalid(f"{where} has no image or video.")
    return _Planned(
        name=name,
        original=name,
        description=description.strip(),
        visibility=visibility,
        # A user id of another platform names no one here: the importing admin owns those.
        owner=owner if same_platform else "",
        entries=tuple(sorted(entries, key=lambda e: list(MediaKind).index(e.kind))),
    )


def _entry(raw: object, where: str) -> _Entry:
    if not isinstance(raw, dict):
        raise _invalid(f"{where} has a media item that is not an object.")
    try:
        kind = MediaKind(str(raw.get("kind")))
    except ValueError:
        raise _invalid(f"{where} has a media item of no known kind.") from None
    file, digest = raw.get("file"), raw.get("sha256")
    if not isinstance(file, str) or not file:
        raise _invalid(f"{where} has a media item with no file.")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise _invalid(f"{where}'s {file} has no sha256 (64 hex digits).")
    return _Entry(kind, file, digest)


def _renamed(character: _Planned, new: str) -> _Planned:
    return _Planned(
        new,
        character.original,
        character.description,
        character.visibility,
        character.owner,
        character.entries,
    )


def _free_name(name: str, taken: set[str]) -> str:
    """``name-2``, ``name-3``…: the first that is free, cut to fit 32 characters."""
    for number in range(2, 10_000):
        suffix = f"-{number}"
        candidate = name[: 32 - len(suffix)] + suffix
        if name_key(candidate) not in taken:
            return candidate
    raise Refusal(f"No free name was found for {name}.", code="name_taken")


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names)


# -- files (in threads) ------------------------------------------------------------------------


def _write_zip(
    folder: Path,
    name: str,
    manifest: Mapping[str, Any],
    files: Mapping[str, Path],
    older_than: float,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("roster-*.zip"):
        with contextlib.suppress(OSError):
            if old.stat().st_mtime < older_than:
                old.unlink()
    target = folder / name
    partial = target.with_suffix(".part")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
            text = json.dumps(manifest, ensure_ascii=False, indent=2)
            archive.writestr(MANIFEST, text, compress_type=zipfile.ZIP_DEFLATED)
            for member, source in files.items():
                archive.write(source, member)  # copied in chunks from the file
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


def _open_zip(path: Path) -> zipfile.ZipFile:
    with path.open("rb") as handle:
        if handle.read(4) != _ZIP_MAGIC:
            raise _invalid("it is not a ZIP file.")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise _invalid("the ZIP is damaged or incomplete.") from None


def _read_manifest(archive: zipfile.ZipFile) -> Mapping[str, Any]:
    try:
        info = archive.getinfo(MANIFEST)
    except KeyError:
        raise _invalid(f"it has no {MANIFEST}.") from None
    if info.file_size > MAX_MANIFEST_BYTES:
        raise _invalid(f"its {MANIFEST} is larger than 4 MB.")
    try:
        with archive.open(info) as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
        manifest = json.loads(data)
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError):
        raise _invalid(f"its {MANIFEST} is not readable JSON.") from None
    if not isinstance(manifest, dict) or len(data) > MAX_MANIFEST_BYTES:
        raise _invalid(f"its {MANIFEST} is not a JSON object.")
    return manifest


def _extract(
    archive: zipfile.ZipFile, entry: _Entry, max_bytes: int, workdir: Path, where: str
) -> Path:
    try:
        info = archive.getinfo(entry.file)
    except KeyError:
        raise _invalid(f"{where} is not in the ZIP.") from None
    if info.file_size > max_bytes:
        raise Refusal(
            f"{where} is {media.describe_amount(info.file_size)}; {entry.kind} files may be at "
            f"most {media.describe_amount(max_bytes)}.",
            code="invalid_media",
        )
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / f"{media.IMPORT_PREFIX}{entry.sha256[:16]}-{time.monotonic_ns()}.part"
    digest = hashlib.sha256()
    count = 0
    try:
        with archive.open(info) as source, target.open("wb") as out:
            while chunk := source.read(_CHUNK):
                count += len(chunk)
                if count > max_bytes:  # a member that inflates past what its header said
                    raise _invalid(f"{where} is larger than its ZIP entry says.")
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != entry.sha256:
            raise _invalid(f"{where} does not match its sha256 in the manifest.")
    except (zipfile.BadZipFile, OSError, RuntimeError):
        target.unlink(missing_ok=True)
        raise _invalid(f"{where} cannot be read from the ZIP: it is damaged.") from None
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
