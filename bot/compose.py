"""Composing a request: a prompt's ``@names`` become labelled reference slots a provider accepts.

Reference-to-video models are told which reference is which only through labels written in the
prompt ("Image 1 waves at Video 1"), and each provider spells those labels its own way. People
write ``@alice`` instead; this module turns one into the other, picks the media behind each name
and checks the request against the provider's limits, so that a request that would be refused
(and perhaps billed) is refused here first, with a message the user can act on.

It is pure logic: it reads values, answers a ``Composition`` or raises ``Refusal``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from bot.commands import ref as command_ref
from bot.errors import ProviderCannotTake, Refusal
from bot.models import Character, CharacterMedia, JobReference, JobSpec, MediaKind
from bot.names import NAME_PATTERN, RESERVED, invalid_mention, name_key, suggest, unknown_character
from bot.ports import Capabilities, LabelStyle

MAX_SEED = 2_147_483_647

#: ``@@`` (a literal ``@``) or a mention. A mention is not preceded by a word character, so an
#: address such as ``me@example.com`` is left alone. The name is read to its end even past the
#: 32 characters a name may have: a longer one is then refused as unknown instead of being cut.
MENTION = re.compile(r"@@|(?<!\w)@(?P<name>[A-Za-z][A-Za-z0-9_-]*)")


@dataclass(frozen=True, slots=True)
class RefSource:
    """A file attached to /generate, named @ref1, @ref2… in attachment order."""

    kind: MediaKind
    blob: str
    mime: str
    duration: float | None = None


@dataclass(frozen=True, slots=True)
class GenerateOptions:
    """The options of /generate besides the prompt, as given (``compose`` checks them)."""

    duration: int = 5
    resolution: str = "720p"
    aspect_ratio: str = "16:9"
    seed: int | None = None
    negative_prompt: str = ""


@dataclass(frozen=True, slots=True)
class Composition:
    """A checked request: the prompt in the provider's labels and the references in slot order."""

    prompt: str
    original_prompt: str
    references: tuple[JobReference, ...]
    options: GenerateOptions
    label_style: LabelStyle
    notes: tuple[str, ...] = ()
    template: str = ""

    def to_spec(self) -> JobSpec:
        """The job's fixed request, as stored with the job and submitted."""
        return JobSpec(
            prompt=self.prompt,
            original_prompt=self.original_prompt,
            references=self.references,
            duration=self.options.duration,
            resolution=self.options.resolution,
            aspect_ratio=self.options.aspect_ratio,
            seed=self.options.seed,
            negative_prompt=self.options.negative_prompt,
            template=self.template,
        )

    def describe(self) -> str:
        """A summary for a dry run: what the provider would be sent, one slot a line."""
        lines = [f"Prompt: {self.prompt}"]
        for ref in self.references:
            details = [ref.kind.value]
            if ref.duration is not None and ref.kind is MediaKind.VIDEO:
                details.append(f"{ref.duration:.1f} s")
            if ref.voice_blob is not None:
                details.append("voice")
            lines.append(f"{ref.label} ← {ref.source} ({', '.join(details)})")
        options = self.options
        settings = [f"{options.duration} s", options.resolution, options.aspect_ratio]
        if options.seed is not None:
            settings.append(f"seed {options.seed}")
        lines.append(", ".join(settings))
        if options.negative_prompt:
            lines.append(f"Negative prompt: {options.negative_prompt}")
        lines.extend(f"Note: {note}" for note in self.notes)
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class _Slot:
    """A reference slot before it has a label (labels depend on every slot's kind)."""

    source: str
    media_kind: MediaKind
    blob: str
    mime: str
    duration: float | None
    voice: CharacterMedia | None = None
    mentioned: bool = True
    #: The character's other pictures and video, for a provider that needs another kind.
    alternates: tuple[CharacterMedia, ...] = ()

    def alternate(self, kind: MediaKind) -> _Slot | None:
        """This slot filled with the character's first item of ``kind`` (``None``: it has none)."""
        item = next((m for m in self.alternates if m.kind is kind), None)
        if item is None:
            return None
        return replace(
            self, media_kind=kind, blob=item.blob, mime=item.info.mime, duration=item.info.duration
        )


def compose(
    prompt: str,
    *,
    characters: Mapping[str, Character],
    attachments: Sequence[RefSource],
    capabilities: Capabilities,
    options: GenerateOptions,
    label_style: LabelStyle | None = None,
) -> Composition:
    """Turn a /generate prompt into a provider-ready request, or refuse it.

    ``characters`` maps ``name_key(name)`` to the characters this user may use. Checks run in
    the order a user fixes things: options, then the names, then how many references, then the
    duration (which depends on whether a reference is a video), then the rewritten prompt's length.
    """
    options = _checked_options(options, capabilities)
    pieces, slots = _read_mentions(prompt, characters, attachments)
    slots.extend(_unmentioned(attachments, slots))
    slots = _fit_kinds(slots, capabilities)
    _check_slot_count(slots, capabilities)
    _check_duration(options.duration, slots, capabilities)

    style = label_style if label_style is not None else capabilities.label_style
    labels = _labels([slot.media_kind for slot in slots], style)
    template = "".join(
        f"{{{piece}}}" if isinstance(piece, int) else piece.replace("{", "{{").replace("}", "}}")
        for piece in pieces
    )
    rewritten = template.format(*labels)
    _check_prompt_length(rewritten, capabilities)

    notes: list[str] = []
    carried = capabilities.voice
    voiced = [slot.source for slot in slots if slot.voice is not None]
    if voiced and not carried:
        notes.append(
            f"voices dropped: {capabilities.name} takes no voice ({', '.join(voiced)} "
            "will be silent)"
        )
    unmentioned = [
        (slot, label) for slot, label in zip(slots, labels, strict=True) if not slot.mentioned
    ]
    if unmentioned:
        listed = ", ".join(f"{slot.source} as {label}" for slot, label in unmentioned)
        notes.append(
            f"attached but not mentioned in the prompt, so sent without being named: {listed}; "
            "write @ref1, @ref2… in the prompt to say what each file is"
        )

    references = tuple(
        JobReference(
            label=label,
            kind=slot.media_kind,
            blob=slot.blob,
            mime=slot.mime,
            source=slot.source,
            voice_blob=slot.voice.blob if slot.voice is not None and carried else None,
            voice_mime=slot.voice.info.mime if slot.voice is not None and carried else None,
            duration=slot.duration,
        )
        for slot, label in zip(slots, labels, strict=True)
    )
    return Composition(
        prompt=rewritten,
        original_prompt=prompt,
        references=references,
        options=options,
        label_style=style,
        notes=tuple(notes),
        template=template,
    )


def relabel(template: str, kinds: Sequence[MediaKind], style: LabelStyle) -> tuple[str, list[str]]:
    """A composed prompt in another label style, and the slots' new labels (for failover)."""
    labels = _labels(kinds, style)
    return template.format(*labels), labels


def _checked_options(options: GenerateOptions, capabilities: Capabilities) -> GenerateOptions:
    """Check the options that do not depend on the references; answer them in canonical spelling."""
    resolution = _choose("resolution", options.resolution, capabilities.resolutions)
    aspect_ratio = _choose("aspect_ratio", options.aspect_ratio, capabilities.aspect_ratios)
    if options.seed is not None and not 0 <= options.seed <= MAX_SEED:
        raise Refusal(
            f"seed {options.seed} is not accepted: use a whole number from 0 to {MAX_SEED}, "
            "or leave it out for a random one.",
            code="invalid_option",
        )
    negative = len(options.negative_prompt)
    if negative > capabilities.max_negative_chars:
        raise Refusal(
            f"The negative prompt is {negative} characters long; {capabilities.name} accepts at "
            f"most {capabilities.max_negative_chars}. Shorten it by "
            f"{negative - capabilities.max_negative_chars}.",
            code="prompt_too_long",
        )
    return replace(options, resolution=resolution, aspect_ratio=aspect_ratio)


def _choose(option: str, value: str, accepted: Sequence[str]) -> str:
    """The accepted spelling of ``value`` (compared without case), or a refusal listing them."""
    wanted = value.strip().casefold()
    for candidate in accepted:
        if candidate.casefold() == wanted:
            return candidate
    raise Refusal(
        f"{option} “{value}” is not accepted: choose {_either(accepted)}.",
        code="invalid_option",
    )


def _read_mentions(
    prompt: str, characters: Mapping[str, Character], attachments: Sequence[RefSource]
) -> tuple[list[str | int], list[_Slot]]:
    """Split the prompt into text and slot numbers, one slot per distinct mention.

    Every problem with the names is collected first, so one refusal can name them all.
    """
    pieces: list[str | int] = []
    slots: list[_Slot] = []
    slot_of: dict[str, int] = {}
    unknown: dict[str, str] = {}
    bad_files: list[str] = []
    voices: list[str] = []
    faceless: list[str] = []

    position = 0
    for match in MENTION.finditer(prompt):
        pieces.append(prompt[position : match.start()])
        position = match.end()
        name = match.group("name")
        if name is None:
            pieces.append("@")
            continue
        file_index = int(name[3:]) if RESERVED.fullmatch(name) else None
        key = f"ref{file_index}" if file_index is not None else name_key(name)
        if key in slot_of:
            pieces.append(slot_of[key])
            continue
        if file_index is not None:
            if not 1 <= file_index <= len(attachments):
                bad_files.append(f"@{name}")
                continue
            source = attachments[file_index - 1]
            if source.kind is not MediaKind.IMAGE and source.kind is not MediaKind.VIDEO:
                voices.append(f"@{key}")
                continue
            slot = _Slot(f"@{key}", source.kind, source.blob, source.mime, source.duration)
        else:
            if not NAME_PATTERN.fullmatch(name):
                raise invalid_mention(name)
            character = characters.get(key)
            if character is None:
                unknown.setdefault(key, name)
                continue
            primary = character.primary
            if primary is None:
                faceless.append(f"@{character.name}")
                continue
            slot = _Slot(
                f"@{character.name}",
                primary.kind,
                primary.blob,
                primary.info.mime,
                primary.info.duration,
                voice=character.voice,
                alternates=tuple(m for m in character.media if m.kind.is_visual and m != primary),
            )
        slot_of[key] = len(slots)
        pieces.append(len(slots))
        slots.append(slot)
    pieces.append(prompt[position:])

    if unknown:
        raise _unknown_characters(list(unknown.values()), [c.name for c in characters.values()])
    if bad_files:
        raise Refusal(
            f"{_either(bad_files, 'and')} {'names' if len(bad_files) == 1 else 'name'} no file: "
            f"{_attached(len(attachments))}.",
            code="invalid_option",
        )
    if voices:
        raise _voice_attached(voices)
    if faceless:
        raise Refusal(
            f"{_either(faceless, 'and')} {'has' if len(faceless) == 1 else 'have'} no image or "
            "video to show what they look like, only a voice. Add an image or a video with "
            f"{command_ref('character add')}, or leave them out of the prompt.",
            code="character_without_media",
        )
    return pieces, slots


def _unmentioned(attachments: Sequence[RefSource], slots: Sequence[_Slot]) -> list[_Slot]:
    """Attached files the prompt does not mention: still sent, after the mentioned ones."""
    mentioned = {slot.source for slot in slots}
    extra: list[_Slot] = []
    voices: list[str] = []
    for number, source in enumerate(attachments, start=1):
        ref = f"@ref{number}"
        if ref in mentioned:
            continue
        if source.kind is not MediaKind.IMAGE and source.kind is not MediaKind.VIDEO:
            voices.append(ref)
            continue
        extra.append(
            _Slot(ref, source.kind, source.blob, source.mime, source.duration, mentioned=False)
        )
    if voices:
        raise _voice_attached(voices)
    return extra


def _check_slot_count(slots: Sequence[_Slot], capabilities: Capabilities) -> None:
    if not slots:
        raise Refusal(
            "There is nothing to make the video from: mention a character with @name or attach "
            "an image or video.",
            code="no_references",
        )
    limit = capabilities.max_references
    if len(slots) > limit:
        counted = ", ".join(
            slot.source if slot.mentioned else f"{slot.source} (attached)" for slot in slots
        )
        raise Refusal(
            f"This request has {len(slots)} references ({counted}), but {capabilities.name} "
            f"takes at most {limit}. Mention fewer characters or attach fewer files.",
            code="too_many_references",
        )
    for kind in (MediaKind.IMAGE, MediaKind.VIDEO):
        least, most = capabilities.kind_range(kind)
        sources = [slot.source for slot in slots if slot.media_kind is kind]
        if len(sources) < least:
            missing = [_lacking(slot, kind) for slot in slots if slot.media_kind is not kind]
            raise ProviderCannotTake(
                f"{capabilities.name} needs at least {_count(least, kind)}; "
                f"{'; '.join(missing)}. Mention a character that has a {kind.value}, attach "
                f"one, or choose another provider.",
            )
        if most is not None and len(sources) > most:
            raise Refusal(
                f"This request has {len(sources)} {kind.value} references "
                f"({', '.join(sources)}), but {capabilities.name} takes at most {most}.",
                code="too_many_references",
            )


def _fit_kinds(slots: Sequence[_Slot], capabilities: Capabilities) -> list[_Slot]:
    """The media that stand for each character with this provider.

    A character's first picture or video stands for it, unless the provider needs a kind the
    request lacks (WaveSpeed needs a reference video) or has no room for more of that kind, and
    the character holds the other kind: then that one goes instead.
    """
    fitted = list(slots)

    def count(kind: MediaKind) -> int:
        return sum(1 for slot in fitted if slot.media_kind is kind)

    kinds = (MediaKind.VIDEO, MediaKind.IMAGE)
    for kind in kinds:
        for index, slot in enumerate(fitted):
            other = slot.media_kind
            if count(kind) >= capabilities.kind_range(kind)[0]:
                break
            switched = slot.alternate(kind)
            if other is not kind and switched and count(other) > capabilities.kind_range(other)[0]:
                fitted[index] = switched
    for kind in kinds:
        most = capabilities.kind_range(kind)[1]
        other = MediaKind.IMAGE if kind is MediaKind.VIDEO else MediaKind.VIDEO
        room = capabilities.kind_range(other)[1]
        for index in reversed(range(len(fitted))):
            if most is None or count(kind) <= most:
                break
            switched = fitted[index].alternate(other)
            if (
                fitted[index].media_kind is kind
                and switched
                and (room is None or count(other) < room)
            ):
                fitted[index] = switched
    return fitted


def _lacking(slot: _Slot, kind: MediaKind) -> str:
    """Why a slot cannot give the provider a reference of ``kind``."""
    if not slot.source.startswith("@ref"):
        held = "pictures" if slot.media_kind is MediaKind.IMAGE else "a video"
        return f"{slot.source} has only {held}"
    return f"{slot.source} is {'a picture' if slot.media_kind is MediaKind.IMAGE else 'a video'}"


def _count(number: int, kind: MediaKind) -> str:
    """``one reference video``, ``2 reference images``."""
    return f"one reference {kind.value}" if number == 1 else f"{number} reference {kind.value}s"


def _check_duration(duration: int, slots: Sequence[_Slot], capabilities: Capabilities) -> None:
    has_video = any(slot.media_kind is MediaKind.VIDEO for slot in slots)
    low, high = capabilities.durations_for(has_video)
    if capabilities.accepts_duration(duration, has_video):
        return
    if low <= duration <= high and capabilities.durations is not None:
        allowed = [str(d) for d in capabilities.durations if low <= d <= high]
        raise Refusal(
            f"{capabilities.name} makes videos of {', '.join(allowed)} s only; "
            f"{duration} s is not one of them.",
            code="duration_out_of_range",
        )
    if has_video:
        videos = ", ".join(s.source for s in slots if s.media_kind is MediaKind.VIDEO)
        reason = f"with a reference video ({videos}), {capabilities.name} makes {low}–{high} s"
        other_low, other_high = capabilities.durations_for(False)
        if other_low <= duration <= other_high:
            reason += f" (with images alone, up to {other_high} s)"
    else:
        reason = f"{capabilities.name} makes {low}–{high} s"
    raise Refusal(
        f"A duration of {duration} s is out of range: {reason}. Choose a duration from {low} to "
        f"{high}.",
        code="duration_out_of_range",
    )


def _check_prompt_length(rewritten: str, capabilities: Capabilities) -> None:
    length, limit = len(rewritten), capabilities.max_prompt_chars
    if length > limit:
        raise Refusal(
            f"The prompt is {length} characters long once @names become the provider's labels "
            f"(such as “Image 1”); {capabilities.name} accepts at most {limit}. Shorten it by "
            f"{length - limit}.",
            code="prompt_too_long",
        )


def _labels(kinds: Sequence[MediaKind], style: LabelStyle) -> list[str]:
    """Each slot's label in the given style, in slot order."""
    if style is LabelStyle.CHARACTER:
        return [f"character{number}" for number in range(1, len(kinds) + 1)]
    if style is LabelStyle.VIDEOS_FIRST:
        order = [i for i, k in enumerate(kinds) if k is MediaKind.VIDEO]
        order += [i for i, k in enumerate(kinds) if k is not MediaKind.VIDEO]
        labels = [""] * len(kinds)
        for number, index in enumerate(order, start=1):
            labels[index] = f"{_word(kinds[index])} {number}"
        return labels
    gap = " " if style is LabelStyle.SEPARATE else ""
    counts: dict[MediaKind, int] = {}
    labels = []
    for kind in kinds:
        counts[kind] = counts.get(kind, 0) + 1
        labels.append(f"{_word(kind)}{gap}{counts[kind]}")
    return labels


def _word(kind: MediaKind) -> str:
    return "Video" if kind is MediaKind.VIDEO else "Image"


def _unknown_characters(names: Sequence[str], candidates: Sequence[str]) -> Refusal:
    """One refusal naming every unknown name, each with its own close matches."""
    if len(names) == 1:
        return unknown_character(names[0], candidates)
    described = []
    for name in names:
        hints = suggest(name, candidates)
        hint = f" (did you mean {_either(['@' + h for h in hints])}?)" if hints else ""
        described.append(f"“{name}”{hint}")
    return Refusal(
        f"There are no characters {_either(described, 'or')} in this server. "
        f"{command_ref('character list')} shows the ones you can use.",
        code="unknown_character",
    )


def _voice_attached(refs: Sequence[str]) -> Refusal:
    return Refusal(
        f"{_either(refs, 'and')} {'is a voice clip' if len(refs) == 1 else 'are voice clips'}: "
        f"files attached to {command_ref('generate')} must be images or videos. A voice "
        "belongs to a character: save it with "
        f"{command_ref('character create', name='…', image='…', voice='…')} "
        "and mention the character.",
        code="invalid_option",
    )


def _attached(count: int) -> str:
    if count == 0:
        return "no file is attached to this command"
    named = _either([f"@ref{n}" for n in range(1, count + 1)], "and")
    return f"{count} {'file is' if count == 1 else 'files are'} attached to this command ({named})"


def _either(values: Iterable[str], last: str = "or") -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    items = list(values)
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {last} {items[-1]}"
