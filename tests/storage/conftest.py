"""One storage contract, two databases: every test that takes ``database`` runs on SQLite and on
PostgreSQL (``R2V_TEST_DATABASE_URL``, default the local server's ``test`` database), each
PostgreSQL test in a schema of its own. Where no PostgreSQL answers, those tests skip with the
reason, except under CI, where they fail: CI's machine runs PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.sql import SqlDatabase
from tests.postgres import postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlDatabase]:
    if request.param == "sqlite":
        from storage.db import Database

        db = await Database.open(tmp_path / "r2v.sqlite3")
        yield db
        await db.close()
        return
    async with postgres_database() as pg:
        yield pg


async def another_connection(db: SqlDatabase) -> SqlDatabase:
    """A second, independent handle on the same database, as another process would have."""
    from storage.db import Database
    from storage.postgres import PostgresDatabase

    if isinstance(db, Database):
        return await Database.open(db.path)
    assert isinstance(db, PostgresDatabase)
    return await PostgresDatabase.open(db.dsn, schema=db.schema, min_size=1, max_size=2)
