"""Interactions in, core calls out: slash commands, autocomplete, the context menu, buttons, forms.

Every interaction is answered within Discord's 3 seconds before anything slow: commands and
buttons are deferred (an ephemeral "thinking…") first, and only then are attachments downloaded
and the core called; forms are opened at once, as a form must be the first answer. Replies are
ephemeral: the public part of a job is its status message and its video.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Collection, Mapping, Sequence
from typing import Any, Final

import discord
import httpx
from discord import app_commands
from discord.utils import DEFAULT_FILE_SIZE_LIMIT_BYTES

from adapters.chat.base import file_or_link
from adapters.chat.discord.commands import MAX_CHOICES, SAVE_AS_CHARACTER, CommandSet, Invocation
from adapters.chat.discord.context import actor_of, place_of, reply_content, request_of
from adapters.chat.discord.delivery import capped
from adapters.chat.discord.files import CDN_HOSTS, Attachment, attachment_file
from adapters.chat.discord.views import TEXT_INPUT_MAX, CharacterForm, EditPromptForm
from bot.commands import OptionType
from bot.core import Core
from bot.errors import R2VError, Refusal
from bot.models import IncomingFile, Reply

log = logging.getLogger(__name__)

#: The content types "Save as character" takes from a message (the core checks the bytes).
_MEDIA_TYPES: Final = ("image/", "video/", "audio/")
_FAILED = Reply(
    "Something went wrong on our side; the error was logged. Please try again.",
    code="internal_error",
)


class Interactions:
    """The bot's answers to every interaction it registered; the views call back into it."""

    def __init__(
        self,
        core: Core,
        commands: CommandSet,
        downloads: httpx.AsyncClient,
        *,
        max_upload_bytes: int | None = None,
        file_hosts: Collection[str] = CDN_HOSTS,
    ) -> None:
        self._core = core
        self._commands = commands
        self._downloads = downloads
        self._max_upload = max_upload_bytes
        self._file_hosts = file_hosts

    async def handle(self, interaction: discord.Interaction[Any]) -> None:
        """Answer an application command or autocomplete (buttons and forms reach the views)."""
        if interaction.type is discord.InteractionType.application_command:
            await self._guarded(interaction, self._command(interaction))
        elif interaction.type is discord.InteractionType.autocomplete:
            await self._guarded(interaction, self._autocomplete(interaction))

    # -- commands --------------------------------------------------------------------------

    async def _command(self, interaction: discord.Interaction[Any]) -> None:
        data: Mapping[str, Any] = interaction.data or {}
        if interaction.guild_id is None:
            await self._refuse(interaction, Refusal("Use this bot in a server.", code="no_server"))
            return
        if data.get("type") == discord.AppCommandType.message.value:
            if data.get("name") == SAVE_AS_CHARACTER:
                await self._save_from_message(interaction, data)
                return
            invocation = None
        else:
            invocation = self._commands.read(data)
        if invocation is None:
            await self._refuse(
                interaction,
                Refusal("That command is out of date; try it again.", code="unknown_command"),
            )
            return
        if invocation.command.name == "character create" and not invocation.attachments:
            # With no file attached, the form with upload fields is the way to add them.
            given = invocation.values
            await interaction.response.send_modal(
                CharacterForm(
                    name=str(given.get("name", "")),
                    description=str(given.get("description", "")),
                    visibility=given.get("visibility"),
                )
            )
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            options = self._options(invocation)
        except Refusal as exc:
            reply = Reply(exc.message, code=exc.code)
        else:
            request = request_of(interaction, invocation.command.name, options)
            reply = await self._core.dispatch(request)
        await self._answer(interaction, reply)

    def _options(self, invocation: Invocation) -> dict[str, Any]:
        """Option values for the core; attachments become downloads that start when read."""
        return {
            name: self._file(value) if isinstance(value, Attachment) else value
            for name, value in invocation.values.items()
        }

    def _file(self, attachment: Attachment) -> IncomingFile:
        return attachment_file(self._downloads, attachment, hosts=self._file_hosts)

    async def _autocomplete(self, interaction: discord.Interaction[Any]) -> None:
        invocation = self._commands.read(interaction.data or {})
        names: list[str] = []
        if invocation is not None and invocation.focused and interaction.guild_id is not None:
            option = invocation.command.option(invocation.focused)
            if option is not None and option.type is OptionType.CHARACTER:
                typed = str(invocation.values.get(invocation.focused) or "")
                names = await self._core.complete_characters(actor_of(interaction), typed)
        await interaction.response.autocomplete(
            [app_commands.Choice(name=n, value=n) for n in names[:MAX_CHOICES]]
        )

    async def _save_from_message(
        self, interaction: discord.Interaction[Any], data: Mapping[str, Any]
    ) -> None:
        target = str(data.get("target_id", ""))
        message = ((data.get("resolved") or {}).get("messages") or {}).get(target) or {}
        attachments = [
            Attachment.from_payload(a)
            for a in message.get("attachments") or []
            # The core tells kinds from the bytes; only files said to be something else are left.
            if a.get("content_type") is None or str(a["content_type"]).startswith(_MEDIA_TYPES)
        ]
        if not attachments:
            await self._refuse(
                interaction,
                Refusal(
                    "That message has no image, video or audio attachment to save. Use it on a "
                    "message with pictures, a video or a voice clip attached.",
                    code="no_media",
                ),
            )
            return
        await interaction.response.send_modal(CharacterForm(attachments=attachments))

    # -- what the buttons and forms do (views.ResultActions) -------------------------------

    async def rerun(
        self,
        interaction: discord.Interaction[Any],
        job_id: str,
        *,
        new_seed: bool = False,
        resolution: str | None = None,
        prompt: str | None = None,
    ) -> None:
        async def work() -> None:
            await interaction.response.defer(ephemeral=True, thinking=True)
            request = request_of(interaction, "generate", {})
            reply = await self._core.rerun(
                request, job_id, new_seed=new_seed, resolution=resolution, prompt=prompt
            )
            await self._answer(interaction, reply)

        await self._guarded(interaction, work())

    async def edit_prompt(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        async def work() -> None:
            try:
                job = await self._core.job_in_server(actor_of(interaction), job_id)
            except R2VError as exc:
                await self._refuse(interaction, exc)
                return
            prompt = job.spec.original_prompt
            if len(prompt) > TEXT_INPUT_MAX:
                await self._refuse(
                    interaction,
                    Refusal(
                        f"This prompt is longer than the {TEXT_INPUT_MAX} characters a form "
                        "holds; write the new one with /generate.",
                        code="prompt_too_long",
                    ),
                )
                return
            await interaction.response.send_modal(EditPromptForm(job_id, prompt))

        await self._guarded(interaction, work())

    async def delete_result(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        async def work() -> None:
            await interaction.response.defer(ephemeral=True, thinking=True)
            try:
                await self._core.job_in_server(actor_of(interaction), job_id, manage=True)
            except R2VError as exc:
                await self._answer(interaction, Reply(exc.message, code=exc.code))
                return
            if interaction.message is not None:
                await interaction.message.delete()
            await self._answer(interaction, Reply(f"Deleted the video of job {job_id}."))

        await self._guarded(interaction, work())

    async def save_character(
        self,
        interaction: discord.Interaction[Any],
        *,
        name: str,
        description: str,
        visibility: str,
        attachments: Sequence[Attachment],
    ) -> None:
        async def work() -> None:
            await interaction.response.defer(ephemeral=True, thinking=True)
            try:
                files = [self._file(a) for a in attachments]
            except Refusal as exc:
                reply = Reply(exc.message, code=exc.code)
            else:
                reply = await self._core.save_character(
                    actor_of(interaction),
                    name,
                    files,
                    description=description,
                    visibility=visibility,
                )
            await self._answer(interaction, reply)

        await self._guarded(interaction, work())

    # -- answering -------------------------------------------------------------------------

    async def _answer(self, interaction: discord.Interaction[Any], reply: Reply) -> None:
        """Show the core's reply in place of the deferred "thinking…"; a new job's reply
        points to the thread its status message lives in."""
        extra = ""
        if reply.job_id and not reply.is_error:
            with contextlib.suppress(R2VError):
                job = await self._core.job_in_server(actor_of(interaction), reply.job_id)
                thread_id = job.destination.thread_id
                if thread_id and thread_id != place_of(interaction)[1]:
                    extra = f"\nFollow it in <#{thread_id}>."
        upload, link = await file_or_link(reply, self._upload_limit(interaction))
        content = reply_content(reply, extra + link)
        if upload is None:
            await interaction.edit_original_response(content=content)
        else:
            file = discord.File(upload, filename=upload.name)
            await interaction.edit_original_response(content=content, attachments=[file])

    def _upload_limit(self, interaction: discord.Interaction[Any]) -> int:
        """What a reply may upload: the guild's limit where it is known (its boost tier), else
        the smallest any guild has; never more than the adapter's own cap."""
        guild = interaction.guild
        limit = guild.filesize_limit if guild is not None else DEFAULT_FILE_SIZE_LIMIT_BYTES
        return capped(limit, self._max_upload)

    async def _refuse(self, interaction: discord.Interaction[Any], error: R2VError) -> None:
        """An ephemeral refusal as the interaction's first answer."""
        await interaction.response.send_message(
            reply_content(Reply(error.message, code=error.code)), ephemeral=True
        )

    async def _guarded(self, interaction: discord.Interaction[Any], work: Awaitable[None]) -> None:
        """Run ``work``; on an unexpected error, log it and tell the user, never stay silent."""
        try:
            await work
        except Exception:
            log.exception("Discord interaction %s failed", interaction.id)
            try:
                if interaction.response.is_done():
                    await interaction.edit_original_response(content=reply_content(_FAILED))
                else:
                    await interaction.response.send_message(reply_content(_FAILED), ephemeral=True)
            except discord.HTTPException:
                log.warning("could not tell the user about the failure", exc_info=True)
