"""Fixtures shared by the engine's tests."""

from tests.bot.test_jobs import world

__all__ = ["world"]
