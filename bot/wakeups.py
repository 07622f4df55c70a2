"""Wake-ups within one process: a fan-out of payloads to every listener.

SQLite has one instance, so its wake-ups never leave the process; PostgreSQL's ``LISTEN``
connection hands what it hears to the same fan-out. Payloads are job ids, or ``*``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


class LocalWakeups:
    """``Wakeups`` within one process (SQLite's one instance, tests), and the fan-out a
    PostgreSQL listener publishes into."""

    def __init__(self) -> None:
        self._listeners: set[asyncio.Queue[str]] = set()

    def publish(self, payload: str) -> None:
        for queue in self._listeners:
            queue.put_nowait(payload)

    async def notify(self, payload: str) -> None:
        self.publish(payload)

    async def listen(self) -> AsyncIterator[str]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._listeners.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._listeners.discard(queue)
