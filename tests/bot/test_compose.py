"""The composer: what a user's /generate prompt becomes, and what it refuses and why."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypedDict, Unpack

import pytest

from bot.compose import Composition, GenerateOptions, RefSource, compose
from bot.errors import Refusal
from bot.models import Character, CharacterMedia, MediaInfo, MediaKind
from bot.names import name_key
from bot.ports import Capabilities, LabelStyle

WAN = Capabilities(name="wan")

_MIMES = {MediaKind.IMAGE: "image/png", MediaKind.VIDEO: "video/mp4", MediaKind.VOICE: "audio/wav"}


def media(kind: MediaKind, blob: str, position: int = 0) -> CharacterMedia:
    duration = None if kind is MediaKind.IMAGE else 4.0
    info = MediaInfo(kind=kind, mime=_MIMES[kind], size=1000, duration=duration)
    return CharacterMedia(kind=kind, blob=blob, info=info, position=position)


def character(name: str, *kinds: MediaKind, voice: bool = False) -> Character:
    """A character whose media are the given kinds (an image when none), plus a voice if asked."""
    items = [
        media(kind, f"{name}-{kind}-{i}", i) for i, kind in enumerate(kinds or [MediaKind.IMAGE])
    ]
    if voice:
        items.append(media(MediaKind.VOICE, f"{name}-voice", len(items)))
    return Character(id=1, server_id="s", name=name, owner_id="u", media=tuple(items))


def roster(*people: Character) -> dict[str, Character]:
    return {name_key(c.name): c for c in people}


ALICE = character("Alice", voice=True)
BOB = character("bob")
VIC = character("vic", MediaKind.VIDEO, MediaKind.IMAGE)
DOT = character("dot")
ROSTER = roster(ALICE, BOB, VIC, DOT)


class Args(TypedDict, total=False):
    """What a test may vary about one /generate: the roster, files, provider and options."""

    characters: Mapping[str, Character]
    attachments: Sequence[RefSource]
    capabilities: Capabilities
    label_style: LabelStyle
    duration: int
    resolution: str
    aspect_ratio: str
    seed: int
    negative_prompt: str


def run(prompt: str, **args: Unpack[Args]) -> Composition:
    return compose(
        prompt,
        characters=args.get("characters", ROSTER),
        attachments=args.get("attachments", ()),
        capabilities=args.get("capabilities", WAN),
        label_style=args.get("label_style"),
        options=GenerateOptions(
            duration=args.get("duration", 5),
            resolution=args.get("resolution", "720p"),
            aspect_ratio=args.get("aspect_ratio", "16:9"),
            seed=args.get("seed"),
            negative_prompt=args.get("negative_prompt", ""),
        ),
    )


def refused(prompt: str, code: str, **args: Unpack[Args]) -> str:
    """Compose, expecting a refusal with ``code``; answer its message."""
    with pytest.raises(Refusal) as caught:
        run(prompt, **args)
    assert caught.value.code == code, caught.value.message
    return caught.value.message


def image(n: int) -> RefSource:
    return RefSource(MediaKind.IMAGE, f"file-image-{n}", "image/jpeg")


def video(n: int) -> RefSource:
    return RefSource(MediaKind.VIDEO, f"file-video-{n}", "video/mp4", duration=3.5)


# Labels ---------------------------------------------------------------------------------------

MIXED = "@alice meets @vic, then @bob joins"  # image, video, image


@pytest.mark.parametrize(
    ("style", "expected_prompt", "expected_labels"),
    [
        (
            LabelStyle.SEPARATE,
            "Image 1 meets Video 1, then Image 2 joins",
            ["Image 1", "Video 1", "Image 2"],
        ),
        (
            LabelStyle.VIDEOS_FIRST,
            "Image 2 meets Video 1, then Image 3 joins",
            ["Image 2", "Video 1", "Image 3"],
        ),
        (
            LabelStyle.COMPACT,
            "Image1 meets Video1, then Image2 joins",
            ["Image1", "Video1", "Image2"],
        ),
        (
            LabelStyle.CHARACTER,
            "character1 meets character2, then character3 joins",
            ["character1", "character2", "character3"],
        ),
    ],
)
def test_each_label_style_names_mixed_slots_in_order_of_mention(
    style: LabelStyle, expected_prompt: str, expected_labels: list[str]
) -> None:
    result = run(MIXED, capabilities=Capabilities(name="p", label_style=style))

    assert result.prompt == expected_prompt
    assert result.original_prompt == MIXED
    assert result.label_style is style
    assert [r.label for r in result.references] == expected_labels
    assert [r.source for r in result.references] == ["@Alice", "@vic", "@bob"]
    assert [r.kind for r in result.references] == [
        MediaKind.IMAGE,
        MediaKind.VIDEO,
        MediaKind.IMAGE,
    ]


def test_videos_first_numbers_every_video_before_any_image() -> None:
    files = [image(1), video(2), video(3)]
    result = run(
        "@ref1, @ref2 and @ref3 and @vic", attachments=files, label_style=LabelStyle.VIDEOS_FIRST
    )

    assert result.prompt == "Image 4, Video 1 and Video 2 and Video 3"
    assert [r.source for r in result.references] == ["@ref1", "@ref2", "@ref3", "@vic"]


def test_label_style_argument_overrides_the_providers_own() -> None:
    capabilities = Capabilities(name="p", label_style=LabelStyle.CHARACTER)

    result = run(MIXED, capabilities=capabilities, label_style=LabelStyle.COMPACT)

    assert result.prompt == "Image1 meets Video1, then Image2 joins"
    assert result.label_style is LabelStyle.COMPACT


def test_a_characters_slot_is_its_first_visual_item() -> None:
    result = run("@vic")

    (ref,) = result.references
    assert (ref.kind, ref.blob, ref.mime, ref.duration) == (
        MediaKind.VIDEO,
        "vic-video-0",
        "video/mp4",
        4.0,
    )


# Voices ---------------------------------------------------------------------------------------


def test_a_characters_voice_rides_with_its_slot() -> None:
    result = run("@bob greets @alice")

    bob, alice = result.references
    assert (alice.voice_blob, alice.voice_mime) == ("Alice-voice", "audio/wav")
    assert (bob.voice_blob, bob.voice_mime) == (None, None)
    assert result.notes == ()


def test_voices_are_dropped_with_a_note_when_the_provider_takes_none() -> None:
    result = run("@alice sings", capabilities=Capabilities(name="segmind", voice=False))

    (alice,) = result.references
    assert alice.voice_blob is None and alice.voice_mime is None
    assert alice.blob == "Alice-image-0"
    (note,) = result.notes
    assert note.startswith("voices dropped: segmind takes no voice")
    assert "@Alice" in note


# Slot counts ----------------------------------------------------------------------------------

SIX = roster(*(character(name) for name in ["a1", "a2", "a3", "a4", "a5", "a6"]))


def test_six_mentions_exceed_the_limit_of_five() -> None:
    message = refused("@a1 @a2 @a3 @a4 @a5 @a6", "too_many_references", characters=SIX)

    assert "6 references" in message and "at most 5" in message
    assert "@a6" in message


def test_five_mentions_fit_the_limit_of_five() -> None:
    result = run("@a1 @a2 @a3 @a4 @a5", characters=SIX)

    assert len(result.references) == 5


def test_a_lower_limit_comes_from_the_providers_capabilities() -> None:
    three = Capabilities(name="small", max_references=3)

    message = refused("@a1 @a2 @a3 @a4", "too_many_references", characters=SIX, capabilities=three)
    assert "small takes at most 3" in message and "4 references" in message

    assert len(run("@a1 @a2 @a3", characters=SIX, capabilities=three).references) == 3


def test_unmentioned_attachments_count_towards_the_limit() -> None:
    message = refused(
        "@a1 @a2 @a3 @a4 @a5", "too_many_references", characters=SIX, attachments=[image(1)]
    )

    assert "@ref1 (attached)" in message


def test_nothing_to_reference_is_refused() -> None:
    message = refused("a sunset over the sea", "no_references")

    assert "@name" in message and "attach an image or video" in message


# Mentions -------------------------------------------------------------------------------------


def test_repeated_mentions_in_any_case_share_one_slot_and_label() -> None:
    result = run("@alice hugs @BOB, then @ALICE waves and @Bob laughs")

    assert result.prompt == "Image 1 hugs Image 2, then Image 1 waves and Image 2 laughs"
    assert [r.source for r in result.references] == ["@Alice", "@bob"]


def test_an_unknown_name_is_refused_with_close_suggestions() -> None:
    message = refused("@alcie waves", "unknown_character")

    assert "alcie" in message and "@Alice" in message


def test_several_unknown_names_are_refused_together() -> None:
    message = refused("@alcie and @bbo and @alice and @alcie", "unknown_character")

    assert "“alcie” (did you mean @Alice?)" in message
    assert "“bbo” (did you mean @bob?)" in message
    assert message.count("alcie") == 1


def test_a_name_longer_than_any_name_is_refused_not_cut_short() -> None:
    long_name = "alice" + "x" * 40

    message = refused(f"@{long_name} waves", "invalid_name")
    assert long_name in message and "at most 32 characters" in message


def test_double_at_is_a_literal_at_and_not_a_mention() -> None:
    result = run("@alice tags @@bob and @@@bob on a sign")

    assert result.prompt == "Image 1 tags @bob and @Image 2 on a sign"
    assert [r.source for r in result.references] == ["@Alice", "@bob"]


def test_an_email_address_is_not_a_mention() -> None:
    people = roster(ALICE, character("example"))

    result = run("@alice writes to me@example.com", characters=people)

    assert result.prompt == "Image 1 writes to me@example.com"
    assert [r.source for r in result.references] == ["@Alice"]


def test_a_character_without_a_picture_is_refused() -> None:
    ghost = Character(
        id=9, server_id="s", name="ghost", owner_id="u", media=(media(MediaKind.VOICE, "g"),)
    )

    message = refused("@ghost whispers", "character_without_media", characters=roster(ghost))
    assert "@ghost" in message


# Attached files -------------------------------------------------------------------------------


def test_ref_mentions_name_attached_files_in_attachment_order() -> None:
    files = [video(1), image(2)]

    result = run("@REF2 walks past @alice holding @ref1; @Ref2 smiles", attachments=files)

    assert result.prompt == "Image 1 walks past Image 2 holding Video 1; Image 1 smiles"
    assert [(r.source, r.blob, r.mime) for r in result.references] == [
        ("@ref2", "file-image-2", "image/jpeg"),
        ("@Alice", "Alice-image-0", "image/png"),
        ("@ref1", "file-video-1", "video/mp4"),
    ]
    assert result.references[2].duration == 3.5
    assert result.notes == ()


def test_a_ref_beyond_the_attached_files_is_refused_saying_how_many_there_are() -> None:
    message = refused("@ref3 and @ref1", "invalid_option", attachments=[image(1), image(2)])

    assert "@ref3" in message and "2 files are attached" in message


def test_a_ref_with_nothing_attached_is_refused() -> None:
    message = refused("@ref1 dances", "invalid_option")

    assert "no file is attached" in message


def test_unmentioned_attachments_are_appended_without_a_label_in_the_prompt() -> None:
    files = [image(1), video(2), image(3)]

    result = run("@alice dances with @ref2", attachments=files)

    assert result.prompt == "Image 1 dances with Video 1"
    assert [(r.source, r.label) for r in result.references] == [
        ("@Alice", "Image 1"),
        ("@ref2", "Video 1"),
        ("@ref1", "Image 2"),
        ("@ref3", "Image 3"),
    ]
    (note,) = result.notes
    assert "@ref1 as Image 2" in note and "@ref3 as Image 3" in note


def test_attachments_alone_are_enough_to_generate() -> None:
    result = run("a quiet street", attachments=[image(1)])

    assert result.prompt == "a quiet street"
    assert [r.source for r in result.references] == ["@ref1"]


@pytest.mark.parametrize("prompt", ["@ref1 speaks", "a song"])
def test_a_voice_clip_attachment_is_refused(prompt: str) -> None:
    clip = RefSource(MediaKind.VOICE, "clip", "audio/wav", duration=3.0)

    message = refused(prompt, "invalid_option", attachments=[clip])
    assert "@ref1 is a voice clip" in message


# Durations ------------------------------------------------------------------------------------


@pytest.mark.parametrize("duration", [2, 10, 15])
def test_images_alone_allow_two_to_fifteen_seconds(duration: int) -> None:
    assert run("@alice", duration=duration).options.duration == duration


@pytest.mark.parametrize("duration", [1, 16])
def test_images_alone_refuse_outside_two_to_fifteen_seconds(duration: int) -> None:
    message = refused("@alice", "duration_out_of_range", duration=duration)

    assert "2–15 s" in message and "with a reference video" not in message


@pytest.mark.parametrize("duration", [2, 10])
def test_a_reference_video_allows_two_to_ten_seconds(duration: int) -> None:
    assert run("@vic", duration=duration).options.duration == duration


def test_a_characters_video_limits_the_duration_to_ten_seconds() -> None:
    message = refused("@alice and @vic", "duration_out_of_range", duration=12)

    assert "with a reference video (@vic)" in message and "2–10 s" in message
    assert "up to 15 s" in message


def test_an_attached_video_limits_the_duration_even_unmentioned() -> None:
    message = refused("@alice", "duration_out_of_range", attachments=[video(1)], duration=11)

    assert "with a reference video (@ref1)" in message


# Options --------------------------------------------------------------------------------------


def test_bad_resolution_is_refused_naming_the_accepted_ones() -> None:
    message = refused("@alice", "invalid_option", resolution="4k")

    assert "resolution" in message and "720p or 1080p" in message


def test_resolution_is_matched_without_case_and_answered_in_the_providers_spelling() -> None:
    assert run("@alice", resolution="1080P").to_spec().resolution == "1080p"


def test_bad_aspect_ratio_is_refused_naming_the_accepted_ones() -> None:
    message = refused("@alice", "invalid_option", aspect_ratio="21:9")

    assert "aspect_ratio" in message and "16:9, 9:16, 1:1, 4:3 or 3:4" in message


@pytest.mark.parametrize("seed", [-1, 2_147_483_648])
def test_a_seed_out_of_range_is_refused(seed: int) -> None:
    message = refused("@alice", "invalid_option", seed=seed)

    assert "seed" in message and "0 to 2147483647" in message


@pytest.mark.parametrize("seed", [0, 2_147_483_647])
def test_seeds_at_the_bounds_are_accepted(seed: int) -> None:
    assert run("@alice", seed=seed).to_spec().seed == seed


# Prompt length --------------------------------------------------------------------------------


def test_the_prompt_limit_counts_the_rewritten_prompt() -> None:
    people = roster(character("a"))
    # Each "@a " (3 characters) becomes "Image 1 " (8): this fits before rewriting, not after.
    prompt = "@a " * 1000 + "x" * 1990
    assert len(prompt) == 4990

    message = refused(prompt, "prompt_too_long", characters=people)
    assert "9990 characters" in message and "at most 5000" in message


def test_a_rewritten_prompt_exactly_at_the_limit_is_accepted() -> None:
    people = roster(character("a"))
    prompt = "@a " + "x" * (5000 - len("Image 1 "))

    assert len(run(prompt, characters=people).prompt) == 5000
    refused(prompt + "x", "prompt_too_long", characters=people)


def test_a_negative_prompt_over_its_limit_is_refused() -> None:
    message = refused("@alice", "prompt_too_long", negative_prompt="n" * 501)

    assert "negative prompt" in message and "500" in message
    assert run("@alice", negative_prompt="n" * 500).to_spec().negative_prompt == "n" * 500


# Order of checks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "resolution", "duration", "code"),
    [
        ("@nobody " * 6, "4k", 99, "invalid_option"),
        ("@nobody @a1 @a2 @a3 @a4 @a5 @a6", "720p", 99, "unknown_character"),
        ("@a1 @a2 @a3 @a4 @a5 @a6", "720p", 99, "too_many_references"),
        ("@a1 " * 2000, "720p", 99, "duration_out_of_range"),
        ("@a1 " * 2000, "720p", 5, "prompt_too_long"),
    ],
)
def test_checks_run_options_names_count_duration_then_length(
    prompt: str, resolution: str, duration: int, code: str
) -> None:
    refused(prompt, code, characters=SIX, resolution=resolution, duration=duration)


# The result -----------------------------------------------------------------------------------


def test_the_spec_and_the_dry_run_summary_show_what_is_sent() -> None:
    result = run(
        "@alice walks with @vic",
        attachments=[image(1)],
        duration=8,
        resolution="1080p",
        aspect_ratio="9:16",
        seed=42,
        negative_prompt="blur",
    )

    spec = result.to_spec()
    assert spec.prompt == "Image 1 walks with Video 1"
    assert spec.original_prompt == "@alice walks with @vic"
    assert spec.references == result.references
    assert (spec.duration, spec.resolution, spec.aspect_ratio, spec.seed) == (
        8,
        "1080p",
        "9:16",
        42,
    )
    assert spec.negative_prompt == "blur"

    lines = result.describe().splitlines()
    assert lines[:4] == [
        "Prompt: Image 1 walks with Video 1",
        "Image 1 ← @Alice (image, voice)",
        "Video 1 ← @vic (video, 4.0 s)",
        "Image 2 ← @ref1 (image)",
    ]
    assert "8 s, 1080p, 9:16, seed 42" in lines
    assert "Negative prompt: blur" in lines
    assert lines[-1].startswith("Note: ") and "@ref1 as Image 2" in lines[-1]


# What the provider needs of each kind ----------------------------------------------------------

NEEDS_VIDEO = Capabilities(name="wavespeed", min_videos=1, max_images=1)
PICTURES_ONLY = Capabilities(name="worker", max_videos=0, min_images=1)


def test_a_provider_that_needs_a_video_gets_the_characters_video() -> None:
    both = character("ann", MediaKind.IMAGE, MediaKind.VIDEO)
    (ref,) = run("@ann waves", characters=roster(both), capabilities=NEEDS_VIDEO).references
    assert (ref.kind, ref.blob) == (MediaKind.VIDEO, "ann-video-1")


def test_a_provider_that_takes_no_video_gets_the_characters_picture() -> None:
    (ref,) = run("@vic waves", capabilities=PICTURES_ONLY).references
    assert (ref.kind, ref.blob) == (MediaKind.IMAGE, "vic-image-1")


def test_a_second_picture_is_swapped_for_a_video_when_only_one_picture_fits() -> None:
    both = character("ann", MediaKind.IMAGE, MediaKind.VIDEO)
    result = run("@bob and @ann", characters=roster(BOB, both), capabilities=NEEDS_VIDEO).references
    assert [r.kind for r in result] == [MediaKind.IMAGE, MediaKind.VIDEO]


def test_pictures_alone_are_refused_naming_who_has_no_video() -> None:
    message = refused(
        "@bob meets @ref1",
        "provider_cannot_take",
        attachments=[image(1)],
        capabilities=Capabilities(name="wavespeed", min_videos=1),
    )
    assert message.startswith(
        "wavespeed needs at least one reference video; @bob has only pictures; @ref1 is a picture."
    )


def test_the_same_check_reads_any_capability_the_provider_declares() -> None:
    assert PICTURES_ONLY.misfit([MediaKind.IMAGE, MediaKind.VIDEO], 5, "720p", "16:9") == (
        "takes at most 0 reference videos"
    )
    assert NEEDS_VIDEO.misfit([MediaKind.IMAGE], 5, "720p", "16:9") == (
        "needs at least 1 reference video"
    )
    assert NEEDS_VIDEO.misfit([MediaKind.VIDEO], 5, "480p", "16:9") == "makes 720p or 1080p only"
    assert NEEDS_VIDEO.misfit([MediaKind.VIDEO, MediaKind.IMAGE], 5, "720p", "16:9") is None
