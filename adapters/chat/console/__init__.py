"""The console chat: a terminal (or a script on stdin) talking to the bot."""

from adapters.chat.console.chat import ConsoleChat, ConsoleOutput
from adapters.chat.console.session import run_console

__all__ = ["ConsoleChat", "ConsoleOutput", "run_console"]
