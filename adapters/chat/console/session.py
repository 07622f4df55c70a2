"""Reading console lines, turning them into core requests, and printing the replies."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from adapters.chat.console.chat import ConsoleOutput
from adapters.local_files import local_file
from bot import commands
from bot.core import Core
from bot.errors import R2VError
from bot.models import Actor, CommandRequest, Reply

PROMPT = "r2v> "


def _read_lines(stream: TextIO) -> asyncio.Queue[str]:
    """Lines of ``stream`` as they come ("" at its end), read by a daemon thread: a blocked
    read must not keep a stopping process (SIGTERM) from exiting, as an executor thread would."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()

    def read() -> None:
        while True:
            try:
                line = stream.readline()
            except (OSError, ValueError):
                line = ""
            try:
                loop.call_soon_threadsafe(queue.put_nowait, line)
            except RuntimeError:  # the loop has closed
                return
            if not line:
                return

    threading.Thread(target=read, name="console-input", daemon=True).start()
    return queue


BANNER = (
    "r2v console — type /help for the commands, Ctrl-D to quit.\n"
    'Try: /character create name:alice image:./alice.png, then /generate prompt:"@alice waves"'
)


def to_request(line: str, actor: Actor, *, base: Path) -> CommandRequest:
    """A console line as a core request; attachment options become local files."""
    parsed = commands.parse_line(line)
    options: dict[str, Any] = {}
    for name, value in parsed.values.items():
        option = parsed.command.option(name)
        if option is not None and option.type is commands.OptionType.ATTACHMENT and value:
            path = Path(value).expanduser()
            options[name] = local_file(path if path.is_absolute() else base / path)
        else:
            options[name] = value
    return CommandRequest(
        actor=actor, command=parsed.command.name, options=options, channel_id="console"
    )


async def run_console(
    core: Core,
    output: ConsoleOutput,
    actor: Actor,
    *,
    stdin: TextIO | None = None,
    interactive: bool = False,
    wait: bool = True,
) -> None:
    """Run commands from ``stdin`` one after another; at its end wait for unfinished jobs."""
    lines = _read_lines(stdin or sys.stdin)
    base = Path.cwd()
    if interactive:
        print(BANNER, file=sys.stderr)
    while True:
        if interactive:
            sys.stderr.write(PROMPT)
            sys.stderr.flush()
        line = await lines.get()
        if not line:
            break
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            request = to_request(text, actor, base=base)
        except R2VError as exc:
            output.reply(Reply(exc.message, code=exc.code))
            continue
        output.reply(await core.dispatch(request))
    if wait:
        await core.engine.wait_idle()
