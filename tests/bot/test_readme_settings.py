"""The README's settings table names every setting the bot reads, and nothing it does not.

A setting missing from the table is one an operator cannot find; a row naming no setting is a
promise the bot does not keep. ``R2V_<PROVIDER>_…`` rows stand for one setting per provider.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices

from bot.settings import KNOWN_PROVIDERS, Settings, env_name
from worker.settings import WorkerSettings

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


def _aliases() -> set[str]:
    """Every name a bot setting is read from (some have two, e.g. ``AWS_DEFAULT_REGION``)."""
    names: set[str] = set()
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice for choice in alias.choices if isinstance(choice, str)}
    return names


#: What the table may name: the bot's settings, the names they are also read from, and the GPU
#: worker's own settings (``r2v worker``, ``R2V_WORKER_*``), which the table documents too.
READ = (
    SETTINGS | _aliases() | {f"R2V_WORKER_{name.upper()}" for name in WorkerSettings.model_fields}
)


def test_every_setting_is_in_the_readme_table() -> None:
    names, patterns = table_names()
    listed = names.union(*map(expand, patterns))
    missing = sorted(SETTINGS - listed)
    assert missing == [], f"add these to the README's settings table: {missing}"


def test_every_variable_in_the_readme_table_is_a_setting() -> None:
    names, patterns = table_names()
    assert sorted(names - READ) == []
    assert sorted(p for p in patterns if not expand(p) & READ) == []
