"""A draining instance (SIGTERM, rolling deploy) tells the load balancer through /healthz, and
refuses new commands with a code the user can act on."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.harness import running_bot


async def test_healthz_answers_503_while_draining_and_commands_are_refused(
    tmp_path: Path,
) -> None:
    async with running_bot(tmp_path) as h:
        assert h.public_url is not None
        async with httpx.AsyncClient(base_url=h.public_url) as client:
            healthy = await client.get("/healthz")
            assert healthy.status_code == 200 and healthy.json()["ok"] is True
            await h.character("alice")
            await h.app.engine.drain(1.0)
            draining = await client.get("/healthz")
            assert draining.status_code == 503
            assert draining.json()["draining"] is True
        reply = await h.run("generate", prompt="@alice waves")
        assert reply.code == "shutting_down"
        assert "restarting" in reply.text
