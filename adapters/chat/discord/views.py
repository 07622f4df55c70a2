"""The buttons under a delivered video, and the forms (modals) the bot opens.

Result buttons are dynamic items: the job id rides in each button's ``custom_id`` and the item is
registered once at start, so a button on a message posted before a restart still works. Forms
are rendered from the catalog's ``character create`` command (its labels, limits and choices).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final, Protocol, cast

import discord

from adapters.chat.discord.files import Attachment
from bot import commands
from bot.commands import OptionType
from bot.models import Job

#: Discord lets a text input hold this many characters at most.
TEXT_INPUT_MAX: Final = 4000
#: The seconds a form stays answerable (an interaction token lives 15 minutes).
FORM_TIMEOUT: Final = 15 * 60
_RESULT_ID: Final = re.compile(
    r"r2v:(?P<action>reroll|hd|edit|delete):(?P<job>[A-Za-z0-9_-]{1,64})"
)
_CREATE: Final = commands.CATALOG_BY_NAME["character create"]
_GENERATE: Final = commands.CATALOG_BY_NAME["generate"]


class ResultActions(Protocol):
    """What the buttons and forms ask of the bot (``interactions.Interactions`` does it)."""

    async def rerun(
        self,
        interaction: discord.Interaction[Any],
        job_id: str,
        *,
        new_seed: bool = False,
        resolution: str | None = None,
        prompt: str | None = None,
    ) -> None: ...

    async def edit_prompt(self, interaction: discord.Interaction[Any], job_id: str) -> None: ...

    async def delete_result(self, interaction: discord.Interaction[Any], job_id: str) -> None: ...

    async def save_character(
        self,
        interaction: discord.Interaction[Any],
        *,
        name: str,
        description: str,
        visibility: str,
        attachments: Sequence[Attachment],
    ) -> None: ...


def actions_of(interaction: discord.Interaction[Any]) -> ResultActions:
    """The bot's actions, kept on the client (``client.R2VClient.r2v_actions``)."""
    actions = getattr(interaction.client, "r2v_actions", None)
    if actions is None:
        raise RuntimeError("the Discord adapter was not started")
    return cast(ResultActions, actions)


class ResultButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=_RESULT_ID,
):
    """One button under a video: Re-roll (new seed), 1080p (same seed), Edit prompt, Delete."""

    LOOKS: Final[dict[str, tuple[str, discord.ButtonStyle]]] = {
        "reroll": ("Re-roll", discord.ButtonStyle.primary),
        "hd": ("1080p", discord.ButtonStyle.secondary),
        "edit": ("Edit prompt", discord.ButtonStyle.secondary),
        "delete": ("Delete", discord.ButtonStyle.danger),
    }

    def __init__(self, action: str, job_id: str) -> None:
        label, style = self.LOOKS[action]
        super().__init__(
            discord.ui.Button(label=label, style=style, custom_id=f"r2v:{action}:{job_id}")
        )
        self.action = action
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> ResultButton:
        return cls(match["action"], match["job"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        actions = actions_of(interaction)
        if self.action == "reroll":
            await actions.rerun(interaction, self.job_id, new_seed=True)
        elif self.action == "hd":
            await actions.rerun(interaction, self.job_id, resolution="1080p")
        elif self.action == "edit":
            await actions.edit_prompt(interaction, self.job_id)
        else:
            await actions.delete_result(interaction, self.job_id)


def result_view(job: Job) -> discord.ui.View:
    """The buttons for a delivered job (1080p only when it is not 1080p already)."""
    view = discord.ui.View(timeout=None)
    for action in ResultButton.LOOKS:
        if action == "hd" and job.spec.resolution == "1080p":
            continue
        view.add_item(ResultButton(action, job.id))
    return view


class EditPromptForm(discord.ui.Modal, title="Edit the prompt"):
    """The job's prompt, pre-filled; submitting makes the video again with the new words."""

    def __init__(self, job_id: str, prompt: str) -> None:
        super().__init__(timeout=FORM_TIMEOUT)
        option = _GENERATE.option("prompt")
        limit = min(TEXT_INPUT_MAX, (option.max_length if option else None) or TEXT_INPUT_MAX)
        self.job_id = job_id
        self.prompt: discord.ui.TextInput[EditPromptForm] = discord.ui.TextInput(
            style=discord.TextStyle.paragraph, default=prompt, max_length=limit
        )
        self.add_item(
            discord.ui.Label(
                text="Prompt", description=option.help if option else None, component=self.prompt
            )
        )

    async def on_submit(self, interaction: discord.Interaction[Any], /) -> None:
        await actions_of(interaction).rerun(interaction, self.job_id, prompt=self.prompt.value)


class CharacterForm(discord.ui.Modal, title="Save a character"):
    """``/character create`` as a form: a name, files, a description and who may use it.

    With ``attachments`` (Save as character on a message) the files are the message's and the
    form asks for the rest only.
    """

    def __init__(
        self,
        *,
        name: str = "",
        description: str = "",
        visibility: str | None = None,
        attachments: Sequence[Attachment] | None = None,
    ) -> None:
        super().__init__(timeout=FORM_TIMEOUT)
        self._given = list(attachments or ())
        self.name = _text(_CREATE.option("name"), default=name, required=True)
        self.add_item(_label("name", self.name))
        self.files: discord.ui.FileUpload[CharacterForm] | None = None
        if attachments is None:
            slots = commands.attachment_options(_CREATE)
            self.files = discord.ui.FileUpload(min_values=1, max_values=len(slots))
            self.add_item(
                discord.ui.Label(text="Files", description=_CREATE.help[:100], component=self.files)
            )
        self.description = _text(_CREATE.option("description"), default=description, required=False)
        self.add_item(_label("description", self.description))
        choice = _CREATE.option("visibility")
        self.visibility: discord.ui.Select[CharacterForm] | None = None
        if choice is not None and choice.type is OptionType.CHOICE:
            chosen = visibility or choice.default
            self.visibility = discord.ui.Select(
                options=[
                    discord.SelectOption(label=c, value=c, default=c == chosen)
                    for c in choice.choices
                ],
                min_values=1,
                max_values=1,
            )
            self.add_item(_label("visibility", self.visibility))

    async def on_submit(self, interaction: discord.Interaction[Any], /) -> None:
        uploaded = [
            Attachment(a.url, a.filename, a.size, a.content_type)
            for a in (self.files.values if self.files is not None else [])
        ]
        chosen = self.visibility.values if self.visibility is not None else []
        default = _CREATE.option("visibility")
        await actions_of(interaction).save_character(
            interaction,
            name=self.name.value,
            description=self.description.value,
            visibility=chosen[0] if chosen else str(default.default if default else "public"),
            attachments=self._given + uploaded,
        )


def _text(
    option: commands.Option | None, *, default: str = "", required: bool
) -> discord.ui.TextInput[Any]:
    limit = option.max_length if option and option.max_length else TEXT_INPUT_MAX
    return discord.ui.TextInput(
        style=discord.TextStyle.short if limit <= 100 else discord.TextStyle.paragraph,
        default=default or None,
        required=required,
        max_length=min(limit, TEXT_INPUT_MAX),
    )


def _label(option_name: str, component: discord.ui.Item[Any]) -> discord.ui.Label[Any]:
    option = _CREATE.option(option_name)
    return discord.ui.Label(
        text=option_name.capitalize(),
        description=option.help[:100] if option else None,
        component=component,
    )
