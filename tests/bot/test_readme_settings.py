"""The README's settings table names every setting the bot reads, and nothing it does not.

A setting missing from the table is one an operator cannot find; a row naming no setting is a
promise the bot does not keep. ``R2V_<PROVIDER>_…`` rows stand for one setting per provider.
"""

from __future__ import annotations

import re
from pathlib import Path

from bot.settings import KNOWN_PROVIDERS, Settings, env_name

README = Path(__file__).resolve().parents[2] / "README.md"
_NAME = re.compile(r"`([A-Z][A-Z0-9_<>]*)`")


def table_names() -> tuple[set[str], set[str]]:
    """The variables named in the first column of the table under ``## Settings``: plain
    names, and ``<PROVIDER>`` patterns."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Settings", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    patterns: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            for name in _NAME.findall(line.split("|")[1]):
                (patterns if "<PROVIDER>" in name else names).add(name)
    return names, patterns


def expand(pattern: str) -> set[str]:
    return {pattern.replace("<PROVIDER>", p.upper()) for p in KNOWN_PROVIDERS}


SETTINGS = {env_name(f) for f in Settings.model_fields}


def test_every_setting_is_in_the_readme_table() -> None:
    names, patterns = table_names()
    listed = names.union(*map(expand, patterns))
    missing = sorted(SETTINGS - listed)
    assert missing == [], f"add these to the README's settings table: {missing}"


def test_every_variable_in_the_readme_table_is_a_setting() -> None:
    names, patterns = table_names()
    assert sorted(names - SETTINGS) == []
    assert sorted(p for p in patterns if not expand(p) & SETTINGS) == []
