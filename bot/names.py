"""Character names: the rule they follow, how they compare, and close-match suggestions."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from bot.commands import ref as command_ref
from bot.errors import Refusal

NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
NAME_RULE = "a letter, then letters, digits, _ or -, at most 32 characters"
#: Names that mean attached files in a prompt (``@ref1``) and so cannot name a character.
RESERVED = re.compile(r"ref\d+", re.IGNORECASE)


def name_key(name: str) -> str:
    """Names are unique in a server regardless of case: compare them by this key."""
    return name.casefold()


def check_name(name: str) -> str:
    name = name.strip().lstrip("@")
    if not NAME_PATTERN.fullmatch(name):
        raise Refusal(
            f"“{name}” is not a valid character name: use {NAME_RULE}.", code="invalid_name"
        )
    if RESERVED.fullmatch(name):
        raise Refusal(
            f"“{name}” is reserved: @ref1, @ref2… name the files attached to "
            f"{command_ref('generate')}. Choose another name.",
            code="invalid_name",
        )
    return name


def invalid_mention(name: str) -> Refusal:
    """A mention that could never name a character (too long): the rule, not "unknown"."""
    return Refusal(
        f"“@{name}” is not a valid character name: use {NAME_RULE}.", code="invalid_name"
    )


def suggest(name: str, candidates: Iterable[str], limit: int = 3) -> list[str]:
    """Close matches for a mistyped name: prefixes first, then similar spellings."""
    key = name_key(name)
    by_key = {name_key(c): c for c in candidates}
    prefixed = sorted(c for k, c in by_key.items() if k.startswith(key) or key.startswith(k))
    close = difflib.get_close_matches(key, list(by_key), n=limit, cutoff=0.6)
    ordered = prefixed + [by_key[k] for k in close if by_key[k] not in prefixed]
    return ordered[:limit]


def unknown_character(name: str, candidates: Iterable[str]) -> Refusal:
    hints = suggest(name, candidates)
    hint = f" Did you mean {', '.join('@' + h for h in hints)}?" if hints else ""
    return Refusal(
        f"There is no character “{name}” in this server.{hint} "
        f"{command_ref('character list')} shows the ones you can use.",
        code="unknown_character",
    )
