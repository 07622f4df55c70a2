"""The ``r2v`` command line (also ``python -m bot``): run, console, doctor, worker, version."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from bot import __version__
from bot.errors import ConfigurationError, StorageUnavailable
from bot.settings import Settings, load_settings

log = logging.getLogger("r2v")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="r2v",
        description="r2v-bot: character-consistent videos made together in chat.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="start the chat adapters whose tokens are set (else the console)")
    console = sub.add_parser("console", help="chat with the bot in this terminal")
    console.add_argument("--server", default="default", help="the server (roster) to use")
    console.add_argument("--user", default=os.environ.get("USER", "you"), help="your user name")
    console.add_argument("--admin", action="store_true", help="act as a server admin")
    console.add_argument(
        "--json", action="store_true", help="one JSON object per post on stdout, nothing else"
    )
    console.add_argument(
        "--no-wait", action="store_true", help="exit at the end of input without waiting for jobs"
    )
    sub.add_parser("doctor", help="check the set-up and say what is wrong")
    db = sub.add_parser("db", help="the database: migrate it, or show its schema version")
    db.add_argument(
        "action",
        choices=["migrate", "status"],
        help="migrate: apply missing migrations; status: the version, and what is missing",
    )
    # Its options are the worker's own (r2v worker --help), passed through untouched.
    sub.add_parser("worker", help="run the local GPU worker service", add_help=False)
    sub.add_parser("version", help="print the version")
    discord = sub.add_parser("discord", help="Discord set-up helpers")
    discord.add_argument("action", choices=["invite"], help="invite: print the bot's invite URL")
    samples = sub.add_parser("samples", help="write small sample media to try the bot with")
    samples.add_argument("folder", nargs="?", default="samples", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    command = args.command or "run"
    if command == "worker":
        from worker.cli import main as worker_main

        return worker_main(extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if command == "version":
        print(f"r2v-bot {__version__}")
        return 0
    if command == "samples":
        from bot.samples import write_samples

        for path in write_samples(args.folder):
            print(path)
        return 0
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        print(f"r2v: {exc.message}", file=sys.stderr)
        return 2
    _configure_logging(settings)
    if command == "discord":
        return _discord_invite(settings)
    if command == "doctor":
        from bot.doctor import run_doctor

        return asyncio.run(run_doctor(settings))
    if command == "db":
        from bot.app import run_db

        return _run(run_db(settings, args.action))
    if command == "run":
        if settings.chat_platforms:
            from bot.app import run_bot

            return _run(run_bot(settings))
        args = _parser().parse_args(["console"])
    return _run_console(settings, args)


def _discord_invite(settings: Settings) -> int:
    """``r2v discord invite``: the URL that adds the bot with exactly the permissions it uses."""
    if settings.discord_token is None:
        print(
            "r2v: set DISCORD_TOKEN first: the invite names the bot's application.", file=sys.stderr
        )
        return 2
    from bot.app import discord_invite

    try:
        print(asyncio.run(discord_invite(settings)))
    except ConfigurationError as exc:
        print(f"r2v: {exc.message}", file=sys.stderr)
        return 2
    return 0


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _run_console(settings: Settings, args: argparse.Namespace) -> int:
    from bot.app import run_console

    return _run(
        run_console(
            settings,
            server=args.server,
            user=args.user,
            admin=args.admin,
            as_json=args.json,
            wait=not args.no_wait,
        )
    )


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run a command to its exit status; a set-up that is wrong, or storage that cannot be
    reached, is one line on stderr and status 2, not a traceback."""
    try:
        return asyncio.run(main)
    except KeyboardInterrupt:
        return 130
    except (ConfigurationError, StorageUnavailable) as exc:
        print(f"r2v: {exc.message}", file=sys.stderr)
        return 2


def writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError:
        return False
    return True
