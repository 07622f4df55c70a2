"""A server operator's blocklist: prompts containing listed words or phrases are refused.

The file holds one word or phrase a line (``#`` starts a comment); matching ignores case and
looks for whole words, so "ass" does not refuse "class".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from bot.errors import ConfigurationError, Refusal


class PromptFilter:
    def __init__(self, phrases: Iterable[str] = ()) -> None:
        cleaned = sorted({p.strip().lower() for p in phrases if p.strip()}, key=len, reverse=True)
        self._pattern = (
            re.compile(r"(?<!\w)(" + "|".join(_phrase(p) for p in cleaned) + r")(?!\w)", re.I)
            if cleaned
            else None
        )

    @classmethod
    def from_file(cls, path: Path | None) -> PromptFilter:
        if path is None:
            return cls()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(
                f"R2V_PROMPT_BLOCKLIST names {path}, which cannot be read ({exc.strerror})."
            ) from None
        return cls(line.split("#", 1)[0] for line in text.splitlines())

    def check(self, *texts: str) -> None:
        """Refuse with ``prompt_refused`` when any text holds a blocked word or phrase."""
        if self._pattern is None:
            return
        for text in texts:
            found = self._pattern.search(text)
            if found:
                raise Refusal(
                    f"This server does not allow “{found.group(0)}” in prompts. "
                    "Rephrase the prompt and try again.",
                    code="prompt_refused",
                )


def _phrase(phrase: str) -> str:
    """A phrase as a pattern that allows any run of whitespace between its words."""
    return r"\s+".join(re.escape(word) for word in phrase.split())
