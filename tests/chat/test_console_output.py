"""The console writes the core's command references in its own syntax, with no marker left."""

from __future__ import annotations

import io
import json

from adapters.chat.console.chat import ConsoleOutput
from bot.commands import REF_END, REF_START, mention, ref
from bot.models import Reply


def test_command_references_read_as_console_lines() -> None:
    text = f"Next: {ref('character list', page=2)}"
    for as_json in (False, True):
        stream = io.StringIO()
        ConsoleOutput(stream, as_json=as_json).reply(Reply(text))
        written = stream.getvalue()
        shown = json.loads(written)["text"] if as_json else written
        assert "Next: /character list page:2" in shown
        assert REF_START not in written and REF_END not in written


def test_people_read_as_at_names() -> None:
    stream = io.StringIO()
    ConsoleOutput(stream).reply(Reply(f"alice · by {mention('ann')}"))
    assert stream.getvalue() == "alice · by @ann\n"
