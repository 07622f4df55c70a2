"""PostgreSQL for tests: a fresh schema per test on ``R2V_TEST_DATABASE_URL``."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from storage.postgres import PostgresDatabase

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def test_database_url() -> str:
    return os.environ.get("R2V_TEST_DATABASE_URL", DEFAULT_URL)


test_database_url.__test__ = False  # type: ignore[attr-defined]


async def require_postgres() -> str:
    """The URL, once a server answers there; else skip (fail under CI, where one must run)."""
    url = test_database_url()
    try:
        conn = await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        message = f"no PostgreSQL at {url} ({exc}); set R2V_TEST_DATABASE_URL"
        if os.environ.get("CI"):
            pytest.fail(message + " — CI must run the PostgreSQL suite")
        pytest.skip(message)
    await conn.close()
    return url


async def new_schema(url: str) -> str:
    schema = "t_" + secrets.token_hex(6)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    return schema


async def drop_schema(url: str, schema: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@asynccontextmanager
async def postgres_database() -> AsyncIterator[PostgresDatabase]:
    url = await require_postgres()
    schema = await new_schema(url)
    db = await PostgresDatabase.open(url, schema=schema, min_size=1, max_size=4)
    try:
        yield db
    finally:
        await db.close()
        await drop_schema(url, schema)
