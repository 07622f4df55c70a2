"""The core's front door: a plain command request in, a plain reply out.

Like slack-bolt's ``AsyncApp.async_dispatch``, adapters translate their platform's events into a
``CommandRequest`` and render the ``Reply``; everything a command decides happens here and in the
modules it calls (roster, compose, jobs), never in an adapter.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bot import commands, media
from bot.archive import Archive
from bot.compose import Composition, GenerateOptions, RefSource, compose
from bot.errors import ProviderCannotTake, R2VError, Refusal
from bot.jobs import PRICE_UNKNOWN, JobEngine, estimate_cost
from bot.models import (
    Actor,
    Character,
    CommandRequest,
    Destination,
    IncomingFile,
    Job,
    MediaKind,
    Reply,
    Visibility,
)
from bot.ports import BlobStore, PeopleStore, Provider, ServerStore
from bot.prompt_filter import PromptFilter
from bot.quotas import (
    Admission,
    ServerSettings,
    Usage,
    apply_changes,
    check_quota,
    day_start,
    resets_in,
)
from bot.roster import Roster, describe_items
from bot.status import elapsed

log = logging.getLogger(__name__)

_GENERATE = commands.CATALOG_BY_NAME["generate"]
SEED_MAX = commands.SEED_MAX

Handler = Callable[[CommandRequest, dict[str, Any]], Awaitable[Reply]]
#: A signed, expiring link naming one value (a server for /gallery, a file for an export).
LinkFor = Callable[[str], str | None]


class Core:
    def __init__(
        self,
        roster: Roster,
        engine: JobEngine,
        blobs: BlobStore,
        servers: ServerStore,
        *,
        workdir: Path,
        provider_order: Sequence[str],
        public_url: str | None = None,
        media_by_url: bool = False,
        prompt_filter: PromptFilter | None = None,
        limits: media.MediaLimits = media.DEFAULT_LIMITS,
        clock: Callable[[], float] = time.time,
        archive: Archive | None = None,
        gallery_link: LinkFor | None = None,
        export_link: LinkFor | None = None,
        people: PeopleStore | None = None,
    ) -> None:
        self.roster = roster
        self.engine = engine
        self._blobs = blobs
        self._servers = servers
        #: Providers can fetch references without our public address (presigned store links).
        self._media_by_url = media_by_url or public_url is not None
        self._filter = prompt_filter or PromptFilter()
        self._workdir = workdir
        self._provider_order = list(provider_order)
        self._limits = limits
        self._clock = clock
        self._archive = archive
        self._gallery_link = gallery_link
        self._export_link = export_link
        self._people = people
        self._names_seen: dict[tuple[str, str], str] = {}
        self._handlers: Mapping[str, Handler] = {
            "character create": self._character_create,
            "character add": self._character_add,
            "character remove": self._character_remove,
            "character show": self._character_show,
            "character list": self._character_list,
            "character rename": self._character_rename,
            "character delete": self._character_delete,
            "character export": self._character_export,
            "character import": self._character_import,
            "gallery": self._gallery,
            "generate": self._generate,
            "jobs": self._jobs,
            "usage": self._usage,
            "settings": self._settings,
            "settings channel add": self._channel_add,
            "settings channel remove": self._channel_remove,
            "cancel": self._cancel,
            "help": self._help,
        }

    async def dispatch(self, request: CommandRequest) -> Reply:
        """Run one command. Refusals come back as replies with a code; nothing escapes."""
        command = commands.find(request.command)
        if command is None:
            return Reply(
                f"There is no command /{request.command}. Try {commands.ref('help')}.",
                code="unknown_command",
            )
        await self._remember_name(request.actor)
        try:
            if command.admin_only and not request.actor.is_admin:
                raise Refusal(f"/{command.name} is for server admins.", code="not_allowed")
            options = commands.coerce(command, request.options)
            return await self._handlers[command.name](request, options)
        except R2VError as exc:
            return Reply(exc.message, code=exc.code)
        except Exception:
            log.exception("command /%s failed", command.name)
            return Reply(
                "Something went wrong on our side; the error was logged. Please try again.",
                code="internal_error",
            )

    async def _remember_name(self, actor: Actor) -> None:
        """Record the name a command came with (once per name and process), so the gallery can
        show owners by name; a failure here never stops the command."""
        if self._people is None or not actor.name:
            return
        key = (actor.server_key, actor.user_id)
        if self._names_seen.get(key) == actor.name:
            return
        try:
            await self._people.remember(actor.server_key, actor.user_id, actor.name)
            self._names_seen[key] = actor.name
        except Exception as exc:
            log.debug("could not record the name of %s: %s", actor.user_id, exc)

    # -- characters ------------------------------------------------------------------------

    async def _character_create(self, request: CommandRequest, o: dict[str, Any]) -> Reply:
        kinds = {
            "image": MediaKind.IMAGE,
            "image2": MediaKind.IMAGE,
            "image3": MediaKind.IMAGE,
            "video": MediaKind.VIDEO,
            "voice": MediaKind.VOICE,
        }
        files: list[tuple[MediaKind | None, IncomingFile]] = [
            (kind, _file(o[name])) for name, kind in kinds.items() if name in o
        ]
        character = await self.roster.create(
            request.actor,
            o["name"],
            files,
            description=o.get("description", ""),
            visibility=Visibility(o.get("visibility", "public")),
        )
        return _saved(character)

    async def _character_add(self, request: CommandRequest, o: dict[str, Any]) -> Reply:
        item = await self.roster.add(request.actor, o["name"], _file(o["file"]))
        return Reply(f"Added a {item.kind} ({item.info.describe()}) to {o['name']}.")

    async def _character_remove(self, request: CommandRequest, o: dict[str, Any]) -> Reply:
        item = await self.roster.remove(request.actor, o["name"], o["item"])
        return Reply(f"Removed {o['item']} ({item.info.describe()}) from {o['name']}.")

    async def _character_show(self, request: CommandRequest, o: dict[str, Any]) -> Reply:
        c = await self.roster.show(request.actor, o["name"])
        lines = [f"{c.name} · by {commands.mention(c.owner_id)} · {c.visibility}"]
        if c.description:
            lines.append(c.description)
        names = describe_items(c).split(", ")
        ordered = [*c.images, *([c.video] if c.video else []), *([c.voice] if c.voice else [])]
        for name, item in zip(names, ordered, strict=True):
            primary = " (primary)" if item is c.primary else ""
            lines.append(f"  {name}: {item.info.describe()}{primary}")
        return Reply("\n".join(lines), data={"character": c.name})

    async def _character_list(self, request: CommandRequest, o: dict[str, Any]) -> Reply:
        owner = o.get("owner")
        page = await self.roster.page(request.actor, owner=owner, number=o["page"])
        if not page.total and owner:
            return Reply(
                f"{commands.mention(owner)} has no characters you can see.",
                data={"characters": []},
            )
        if not page.total:
            return Reply(
                f"No characters yet. Save one with {commands.ref('character create')}.",
                data={"characters": []},
            )
        lines = [f"Characters (page {page.number} of {page.pages}, {page.total} in all):"]
        for c in page.characters:
            private = " · private" if c.visibility is Visibility.PRIVATE else ""
            by = commands.mention(c.owner_id)
            lines.append(f"  {c.name} — {_contents(c)} · by {by}{private}")
        if page.number < page.pages:
            lines.append(f"Next: {commands.ref('character list', page=page.number + 1)}")
        return Reply("\n".join(lines), data={"characters": [c.name for c in page.characters]})

    async def _character_rename(self, request: CommandRequest, o: dict[str, Any]) -> Reply:
        old, new = await self.roster.rename(request.actor, o["name"], o["new"])
        return Reply(f"Renamed {old.name} to {new}.")

    async def _character_delete(self, request: CommandRequest, o: dict[str, Any]) -> Reply:
        c = await self.roster.delete(request.actor, o["name"])
        return Reply(f"Deleted {c.name}.")

    async def _character_export(self, request: CommandRequest, o: dict[str, Any]) -> Reply:
        exported = await self._needs_archive().export(request.actor)
        link = self._export_link(exported.path.name) if self._export_link else None
        return Reply(
            f"The roster: {exported.characters} characters, {exported.files} files, "
            f"{media.describe_amount(exported.size)}.",
            data={"path": str(exported.path), "characters": exported.characters},
            file=exported.path,
            file_link=link,
        )

    async def _character_import(self, request: CommandRequest, o: dict[str, Any]) -> Reply:
        report = await self._needs_archive().import_(
            request.actor, _file(o["file"]), clashes=o.get("clashes"), dry_run=o["dry_run"]
        )
        return Reply(
            report.describe(),
            data={
                "added": list(report.added),
                "renamed": dict(report.renamed),
                "skipped": list(report.skipped),
                "applied": report.applied,
            },
        )

    async def _gallery(self, request: CommandRequest, o: dict[str, Any]) -> Reply:
        link = self._gallery_link(request.actor.server_key) if self._gallery_link else None
        if link is None:
            raise Refusal(
                "The gallery is a web page of this bot, and it has no web address yet. "
                "The bot's operator must set R2V_PUBLIC_URL.",
                code="configuration_error",
            )
        return Reply(
            f"This server's characters and videos: {link}\n"
            "Anyone with the link can look until it expires; it shows no private character.",
            data={"link": link},
        )

    def _needs_archive(self) -> Archive:
        if self._archive is None:
            raise Refusal("Exports are not set up on this bot.", code="configuration_error")
        return self._archive

    # -- generation ------------------------------------------------------------------------

    async def _generate(self, request: CommandRequest, o: dict[str, Any]) -> Reply:
        attachments, blobs = await self._attachments(o)
        try:
            return await self._make(request, o, attachments)
        except _DryRun as answer:
            await self._blobs.discard_unused(blobs)
            return answer.reply
        except BaseException:
            await self._blobs.discard_unused(blobs)
            raise

    async def _make(
        self, request: CommandRequest, o: dict[str, Any], attachments: Sequence[RefSource]
    ) -> Reply:
        """Compose, check and queue a video (``/generate``, and the re-runs of a result)."""
        actor = request.actor
        server = await self._servers.settings(actor.server_key)
        if server.channels and request.channel_id not in server.channels:
            listed = ", ".join(f"<#{c}>" for c in server.channels)
            raise Refusal(
                f"Videos are made in this server's generation channels: {listed}.",
                code="wrong_channel",
            )
        order, chosen = self._providers_for(server, o.get("provider"))
        self._filter.check(o["prompt"], o.get("negative", ""))
        if o.get("seed") is None:
            # Always a seed, so "the same video at 1080p" can ask for the same one again.
            o = {**o, "seed": secrets.randbelow(SEED_MAX + 1)}
        route = self._route(order, chosen, o, attachments, await self.roster.usable(actor))
        provider_name, provider, composition = route.name, route.provider, route.composition
        fallbacks = route.fallbacks
        if o.get("dry_run"):
            raise _DryRun(_dry_run_reply(composition, route))
        spec = replace(composition.to_spec(), fallbacks=fallbacks)
        now = self._clock()
        estimate = estimate_cost(spec, provider.capabilities)

        def within_quota(usage: Usage) -> None:
            check_quota(server, usage, actor.user_id, estimate, now)

        destination = Destination(
            platform=actor.platform,
            server_id=actor.server_id,
            channel_id=request.channel_id,
            user_id=actor.user_id,
            thread_id=request.thread_id,
        )
        job = await self.engine.create(
            actor,
            destination,
            spec,
            provider_name,
            note=route.moved,
            admit=Admission(day_start(now), within_quota),
        )
        notes = "".join(f"\n{n}" for n in composition.notes)
        moved = f" ({route.moved})" if route.moved else ""
        return Reply(f"Queued job {job.id} on {provider_name}{moved}.{notes}", job_id=job.id)

    def _route(
        self,
        order: Sequence[str],
        chosen: bool,
        o: dict[str, Any],
        attachments: Sequence[RefSource],
        characters: Mapping[str, Character],
    ) -> _Route:
        """The first provider in ``order`` that can take the request, and the request composed
        for it (a character's video stands in for its picture where the provider needs one).

        When none can, the first provider's refusal is the answer: it is the one the user asked
        for (or the server's first choice), and its words say what to change.
        """
        refusals: list[tuple[str, Refusal]] = []
        for index, name in enumerate(order):
            provider = self.engine.provider(name)
            try:
                composition = self._compose_for(name, provider, o, attachments, characters)
            except Refusal as exc:
                if exc.code == "configuration_error" and not refusals:
                    raise  # the bot's set-up, not the request: never routed around
                refusals.append((name, exc))
                continue
            first = refusals[0] if refusals else None
            moved = f"{first[0]} cannot take it: {_unsentenced(first[1].message)}" if first else ""
            # A provider the user named keeps the job to itself, unless it cannot take it.
            fallbacks = () if chosen and not refusals else tuple(order[index + 1 :])
            return _Route(name, provider, composition, fallbacks, chosen, moved)
        name, refusal = refusals[0]
        others = [f"{n}: {_unsentenced(r.message)}" for n, r in refusals[1:]]
        if others and isinstance(refusal, ProviderCannotTake):
            listed = "; ".join(others)
            raise ProviderCannotTake(
                f"{refusal.message} No other provider here can take it either ({listed})."
            )
        raise refusal

    def _compose_for(
        self,
        name: str,
        provider: Provider,
        o: dict[str, Any],
        attachments: Sequence[RefSource],
        characters: Mapping[str, Character],
    ) -> Composition:
        """The request as ``provider`` must take it, or its ``Refusal``."""
        problem = self.engine.key_problem(name)
        if problem is not None:
            raise Refusal(problem, code="configuration_error")
        if provider.capabilities.needs_public_media and not self._media_by_url:
            raise Refusal(
                f"{name} fetches the references from this bot by URL, and the bot has "
                "no public address. The bot's operator must set R2V_PUBLIC_URL.",
                code="configuration_error",
            )
        resolutions = provider.capabilities.resolutions
        options = GenerateOptions(
            duration=o["duration"],
            resolution=o.get("resolution") or ("720p" if "720p" in resolutions else resolutions[0]),
            aspect_ratio=o["aspect"],
            seed=o["seed"],
            negative_prompt=o.get("negative", ""),
        )
        return compose(
            o["prompt"],
            characters=characters,
            attachments=attachments,
            capabilities=provider.capabilities,
            options=options,
        )

    # -- results: the buttons under a delivered video ----------------------------------------

    async def rerun(
        self,
        request: CommandRequest,
        job_id: str,
        *,
        new_seed: bool = False,
        resolution: str | None = None,
        prompt: str | None = None,
    ) -> Reply:
        """Make a finished job again: another seed (re-roll), another resolution, or an edited
        prompt; same references and provider. The new job is the requester's own."""
        try:
            old = await self.job_in_server(request.actor, job_id)
            spec = old.spec
            options: dict[str, Any] = {
                "prompt": prompt if prompt is not None else spec.original_prompt,
                "duration": spec.duration,
                "resolution": resolution or spec.resolution,
                "aspect": spec.aspect_ratio,
                "seed": None if new_seed else spec.seed,
                "negative": spec.negative_prompt,
                "provider": old.provider,
            }
            options = commands.coerce(_GENERATE, options)
            attached = [
                RefSource(kind=r.kind, blob=r.blob, mime=r.mime, duration=r.duration)
                for r in spec.references
                if r.source.lower().startswith("@ref")
            ]
            return await self._make(request, options, attached)
        except _DryRun as answer:
            return answer.reply
        except R2VError as exc:
            return Reply(exc.message, code=exc.code)

    async def job_in_server(self, actor: Actor, job_id: str, *, manage: bool = False) -> Job:
        """A job of the actor's server; with ``manage``, only its owner or an admin may have it."""
        job = await self.engine.job(job_id)
        if job is None or job.server_id != actor.server_key:
            raise Refusal(f"There is no job “{job_id}” in this server.", code="unknown_job")
        if manage and job.user_id != actor.user_id and not actor.is_admin:
            raise Refusal(
                "Only the video's owner or a server admin may do that.", code="not_allowed"
            )
        return job

    async def save_character(
        self,
        actor: Actor,
        name: str,
        files: Sequence[IncomingFile],
        *,
        description: str = "",
        visibility: str = "public",
    ) -> Reply:
        """ "Save as character" on a message: every file's kind is found from its content."""
        try:
            character = await self.roster.create(
                actor,
                name,
                [(None, f) for f in files],
                description=description,
                visibility=Visibility(visibility),
            )
        except R2VError as exc:
            return Reply(exc.message, code=exc.code)
        return _saved(character)

    async def server_settings(self, actor: Actor) -> ServerSettings:
        return await self._servers.settings(actor.server_key)

    async def complete_characters(self, actor: Actor, typed: str) -> list[str]:
        """Autocomplete for character options (at most 25 names)."""
        return await self.roster.complete(actor, typed)

    def _providers_for(self, server: ServerSettings, chosen: str | None) -> tuple[list[str], bool]:
        """The providers to try in order, and whether the user chose the first.

        The order is the server's default, then the configured order (``R2V_PROVIDER``), limited
        to the providers the server allows. A provider the user chooses goes first; the others
        stay behind it only for a request it cannot take (``_route``).
        """
        available = self.engine.provider_names
        name = chosen.strip().lower() if chosen else None
        if name:
            self.engine.provider(name)  # refuses an unknown name, listing the ones set up
            if not server.allows(name):
                raise Refusal(
                    f"This server does not allow {name}. Allowed: "
                    f"{', '.join(server.allowed_providers)}.",
                    code="not_allowed",
                )
        preferred = [server.default_provider] if server.default_provider else []
        order = [
            n
            for n in dict.fromkeys([*preferred, *self._provider_order, *available])
            if n in available and server.allows(n)
        ]
        if not order:
            raise Refusal(
                "No video provider allowed in this server is set up on this bot; ask a server "
                f"admin ({commands.ref('settings', providers='…')}) or the bot's operator.",
                code="configuration_error",
            )
        configured = [n for n in order if n in self._provider_order or n in preferred]
        order = configured or order[:1]
        if name:
            return [name, *(n for n in order if n != name)], True
        return order, False

    async def _attachments(self, o: dict[str, Any]) -> tuple[list[RefSource], list[str]]:
        """Check and store the files attached to /generate (@ref1, @ref2…), in order."""
        sources: list[RefSource] = []
        blobs: list[str] = []
        try:
            for name in ("ref1", "ref2", "ref3"):
                if name not in o:
                    continue
                checked = await media.check_file(_file(o[name]), self._workdir, limits=self._limits)
                try:
                    if checked.info.kind is MediaKind.VOICE:
                        raise Refusal(
                            f"{name} is a voice clip; references must be images or videos. "
                            f"Give voices to characters with {commands.ref('character add')}.",
                            code="invalid_media",
                        )
                    blob = await self._blobs.put_file(checked.path)
                finally:
                    checked.path.unlink(missing_ok=True)
                blobs.append(blob)
                sources.append(
                    RefSource(
                        kind=checked.info.kind,
                        blob=blob,
                        mime=checked.info.mime,
                        duration=checked.info.duration,
                    )
                )
        except BaseException:
            await self._blobs.discard_unused(blobs)
            raise
        return sources, blobs

    async def _jobs(self, request: CommandRequest, o: dict[str, Any]) -> Reply:
        jobs = await self.engine.recent(request.actor)
        if not jobs:
            return Reply(
                f"You have no jobs yet. Make one with {commands.ref('generate')}.",
                data={"jobs": []},
            )
        now = self._clock()
        lines = ["Your recent jobs:"]
        for job in jobs:
            prompt = job.spec.original_prompt
            prompt = prompt if len(prompt) <= 50 else prompt[:49] + "…"
            lines.append(
                f"  {job.id} · {job.state} · {job.spec.duration}s {job.spec.resolution} · "
                f"{elapsed(now - job.created_at)} ago · “{prompt}”"
            )
        return Reply(
            "\n".join(lines), data={"jobs": [{"id": j.id, "state": str(j.state)} for j in jobs]}
        )

    async def _usage(self, request: CommandRequest, o: dict[str, Any]) -> Reply:
        actor = request.actor
        now = self._clock()
        server = await self._servers.settings(actor.server_key)
        usage = await self.engine.usage(actor.server_key, day_start(now))
        mine = usage.jobs_by_user.get(actor.user_id, 0)
        jobs_limit = f" of {server.user_daily_jobs}" if server.user_daily_jobs is not None else ""
        budget = (
            f" of ${server.daily_budget_usd:.2f}" if server.daily_budget_usd is not None else ""
        )
        lines = [
            f"Today (UTC): you made {mine}{jobs_limit} videos.",
            f"This server: {usage.jobs} videos, about ${usage.spend_usd:.2f}{budget} spent.",
            f"Counts {resets_in(now)}.",
        ]
        return Reply(
            "\n".join(lines),
            data={"user_jobs": mine, "server_jobs": usage.jobs, "spend_usd": usage.spend_usd},
        )

    async def _settings(self, request: CommandRequest, o: dict[str, Any]) -> Reply:
        actor = request.actor
        current = await self._servers.settings(actor.server_key)
        if not o:
            return self._settings_reply("This server's settings:", current)
        updated = apply_changes(current, o, self.engine.provider_names)
        await self._servers.save_settings(actor.server_key, actor.platform, updated)
        return self._settings_reply("Saved. This server's settings:", updated)

    def _settings_reply(self, title: str, settings: ServerSettings) -> Reply:
        """The settings, and the providers whose jobs the daily budget cannot limit."""
        unpriced = self.engine.unpriced_providers()
        text = f"{title}\n{settings.describe()}"
        if unpriced:
            text += f"\n  {PRICE_UNKNOWN} (set R2V_PRICES): {', '.join(unpriced)}"
        return Reply(text, data={**settings.to_dict(), "price_unknown": list(unpriced)})

    async def _channel_add(self, request: CommandRequest, o: dict[str, Any]) -> Reply:
        return await self._channels(request, o["channel"], add=True)

    async def _channel_remove(self, request: CommandRequest, o: dict[str, Any]) -> Reply:
        return await self._channels(request, o["channel"], add=False)

    async def _channels(self, request: CommandRequest, channel: str, *, add: bool) -> Reply:
        actor = request.actor
        channel = channel.strip().removeprefix("<#").removesuffix(">")
        current = await self._servers.settings(actor.server_key)
        if add:
            channels = tuple(dict.fromkeys([*current.channels, channel]))
        elif channel not in current.channels:
            raise Refusal(f"<#{channel}> is not a generation channel.", code="invalid_option")
        else:
            channels = tuple(c for c in current.channels if c != channel)
        await self._servers.save_settings(
            actor.server_key, actor.platform, replace(current, channels=channels)
        )
        if not channels:
            text = f"No generation channels now: {commands.ref('generate')} works in any channel."
        else:
            text = "Generation channels: " + ", ".join(f"<#{c}>" for c in channels) + "."
        return Reply(text, data={"channels": list(channels)})

    async def _cancel(self, request: CommandRequest, o: dict[str, Any]) -> Reply:
        job = await self.engine.cancel(request.actor, o["job"])
        return Reply(f"Cancelled job {job.id}.", job_id=job.id)

    async def _help(self, request: CommandRequest, o: dict[str, Any]) -> Reply:
        return Reply(commands.help_text(o.get("command"), is_admin=request.actor.is_admin))


def _file(value: object) -> IncomingFile:
    if not isinstance(value, IncomingFile):
        raise Refusal("Attach a file for this option.", code="invalid_option")
    return value


class _DryRun(Exception):
    """Carries a dry run's answer out of ``_make`` past the blob clean-up."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply


@dataclass(frozen=True, slots=True)
class _Route:
    """Where a request goes: the provider, the request composed for it, the providers to fall
    back on, and why it goes there (``moved``: the first choice could not take it)."""

    name: str
    provider: Provider
    composition: Composition
    fallbacks: tuple[str, ...]
    chosen: bool
    moved: str

    @property
    def why(self) -> str:
        if self.moved:
            return self.moved
        return "you chose it" if self.chosen else "first in this server's order that can take it"


def _unsentenced(message: str) -> str:
    """A refusal's first sentence, to quote inside another sentence."""
    return message.split(". ")[0].rstrip(".")


def _dry_run_reply(composition: Composition, route: _Route) -> Reply:
    slots = [
        {
            "label": r.label,
            "source": r.source,
            "kind": str(r.kind),
            "voice": r.voice_blob is not None,
        }
        for r in composition.references
    ]
    capabilities = route.provider.capabilities
    cost = estimate_cost(composition.to_spec(), capabilities)
    price = PRICE_UNKNOWN if cost is None else f"about ${cost:.2f}"
    lines = [composition.describe(), f"Provider: {route.name} ({route.why})", f"Cost: {price}"]
    return Reply(
        "\n".join(lines),
        data={
            "prompt": composition.prompt,
            "slots": slots,
            "provider": route.name,
            "why": route.why,
            "cost_estimate": cost,
        },
    )


def _saved(character: Character) -> Reply:
    return Reply(
        f"Saved {character.name}: {_contents(character)} ({character.visibility}). "
        f"Use it with @{character.name} in {commands.ref('generate')}.",
        data={"character": character.name},
    )


def _contents(c: Character) -> str:
    parts = []
    if c.images:
        parts.append(f"{len(c.images)} image" + ("s" if len(c.images) > 1 else ""))
    if c.video:
        parts.append("1 video")
    if c.voice:
        parts.append("1 voice clip")
    return ", ".join(parts)
