"""``r2v worker`` (also ``python -m worker``): run the GPU worker until SIGINT or SIGTERM.

Settings come from ``R2V_WORKER_*`` (and ``.env``); the few options here override them for one
run. A setting that is wrong, or a missing ``gpu`` extra, is one line on stderr and exit status 2;
the model loads after the server is up, so ``/healthz`` answers while it does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from bot.errors import ConfigurationError
from worker.pipeline import gpu_packages_missing
from worker.server import WorkerServer
from worker.service import Worker
from worker.settings import WorkerSettings, load_worker_settings

log = logging.getLogger("r2v.worker")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="r2v worker",
        description="Serve Wan 2.1 VACE reference-to-video on this machine's GPUs for the bot "
        "(set R2V_LOCAL_URL and the same R2V_WORKER_TOKEN on the bot's side).",
    )
    parser.add_argument("--host", help="address to listen on (R2V_WORKER_HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (R2V_WORKER_PORT)")
    parser.add_argument("--model", help="model id or folder (R2V_WORKER_MODEL)")
    parser.add_argument("--devices", help="auto, or e.g. cuda:0,cuda:1 (R2V_WORKER_DEVICES)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(argv) if argv is not None else None)
    overrides: dict[str, Any] = {
        name: value
        for name, value in vars(args).items()
        if value is not None and name in WorkerSettings.model_fields
    }
    try:
        settings = load_worker_settings(**overrides)
    except ConfigurationError as exc:
        print(f"r2v worker: {exc.message}", file=sys.stderr)
        return 2
    missing = gpu_packages_missing()
    if missing is not None:
        print(f"r2v worker: {missing}.", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return asyncio.run(serve(settings))
    except KeyboardInterrupt:
        return 130
    except ConfigurationError as exc:
        print(f"r2v worker: {exc.message}", file=sys.stderr)
        return 2


async def serve(settings: WorkerSettings) -> int:
    """Serve until SIGINT or SIGTERM; tasks left running are resumed at the next start."""
    server = WorkerServer(Worker(settings), settings.host, settings.port)
    await server.start()
    log.info("r2v worker listening on %s (model %s)", server.url, settings.model)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("r2v worker stopping")
        await server.close()
    return 0
