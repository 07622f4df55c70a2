"""The database: migrations, pragmas, and transactions that no other statement can slip into."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.errors import ConfigurationError
from storage.db import MIGRATIONS, Database, split_statements


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "r2v.sqlite3")
    yield database
    await database.close()


async def _schema(db: Database) -> list[tuple[str, str]]:
    rows = await db.fetchall("SELECT name, sql FROM sqlite_master ORDER BY name")
    return [(row["name"], row["sql"]) for row in rows]


async def test_open_creates_the_folder_and_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "data" / "deeper" / "r2v.sqlite3"
    db = await Database.open(path)
    try:
        assert path.exists()
        assert await db.schema_version() == len(MIGRATIONS)
        tables = {name for name, _ in await _schema(db)}
        assert tables >= {
            "servers",
            "characters",
            "character_media",
            "jobs",
            "job_events",
            "job_blobs",
        }
    finally:
        await db.close()


async def test_opening_again_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "r2v.sqlite3"
    db = await Database.open(path)
    await db.execute(
        "INSERT INTO servers (id, platform, created_at) VALUES ('console:x', 'console', 1)"
    )
    schema = await _schema(db)
    await db.close()

    db = await Database.open(path)
    try:
        assert await db.schema_version() == len(MIGRATIONS)
        assert await _schema(db) == schema
        row = await db.fetchone("SELECT platform FROM servers WHERE id = 'console:x'")
        assert row is not None and row["platform"] == "console"
    finally:
        await db.close()


async def test_wal_and_foreign_keys_are_on(db: Database) -> None:
    mode = await db.fetchone("PRAGMA journal_mode")
    assert mode is not None and mode[0] == "wal"
    keys = await db.fetchone("PRAGMA foreign_keys")
    assert keys is not None and keys[0] == 1
    with pytest.raises(sqlite3.IntegrityError):
        await db.execute(
            "INSERT INTO characters (server_id, name, name_key, owner_id, visibility)"
            " VALUES ('nowhere:1', 'a', 'a', 'u', 'public')"
        )


async def test_a_failing_migration_leaves_the_database_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "r2v.sqlite3"
    db = await Database.open(path, migrations=MIGRATIONS)
    await db.close()
    broken = (*MIGRATIONS, "CREATE TABLE extra (x INTEGER); CREATE TABLE extra (x INTEGER);")

    with pytest.raises(sqlite3.OperationalError, match="already exists"):
        await Database.open(path, migrations=broken)

    db = await Database.open(path, migrations=MIGRATIONS)
    try:
        assert await db.schema_version() == len(MIGRATIONS)
        assert "extra" not in {name for name, _ in await _schema(db)}
    finally:
        await db.close()


async def test_a_failing_first_migration_leaves_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "r2v.sqlite3"
    with pytest.raises(sqlite3.OperationalError):
        await Database.open(path, migrations=["CREATE TABLE a (x); INSERT INTO nope VALUES (1);"])
    db = await Database.open(path, migrations=[])
    try:
        assert await db.schema_version() == 0
        assert await _schema(db) == []
    finally:
        await db.close()


async def test_a_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r2v.sqlite3"
    db = await Database.open(path, migrations=(*MIGRATIONS, "CREATE TABLE extra (x);"))
    await db.close()
    newer, known = len(MIGRATIONS) + 1, len(MIGRATIONS)

    with pytest.raises(ConfigurationError) as refused:
        await Database.open(path)
    assert f"version {newer}" in refused.value.message
    assert f"up to {known}" in refused.value.message


async def test_a_transaction_commits_or_rolls_back_as_a_whole(db: Database) -> None:
    await db.execute("CREATE TABLE t (x TEXT)")
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO t VALUES ('a')")
        await tx.execute("INSERT INTO t VALUES ('b')")
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES ('c')")
            raise RuntimeError("stop")

    assert [row["x"] for row in await db.fetchall("SELECT x FROM t ORDER BY x")] == ["a", "b"]


async def test_another_coroutine_cannot_slip_into_an_open_transaction(db: Database) -> None:
    await db.execute("CREATE TABLE t (x TEXT)")
    inside = asyncio.Event()

    async def transaction_that_fails() -> None:
        with pytest.raises(RuntimeError):
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES ('tx')")
                inside.set()
                await asyncio.sleep(0.05)
                raise RuntimeError("roll back")

    async def lone_statement() -> None:
        await inside.wait()
        await db.execute("INSERT INTO t VALUES ('lone')")

    await asyncio.gather(transaction_that_fails(), lone_statement())

    # Had the lone INSERT joined the open transaction, the rollback would have taken it too.
    assert [row["x"] for row in await db.fetchall("SELECT x FROM t")] == ["lone"]


async def test_a_transaction_handle_is_dead_after_its_block(db: Database) -> None:
    async with db.transaction() as tx:
        pass
    with pytest.raises(RuntimeError):
        await tx.execute("SELECT 1")


async def test_two_connections_to_one_file_take_turns(tmp_path: Path) -> None:
    path = tmp_path / "r2v.sqlite3"
    first, second = await Database.open(path), await Database.open(path)
    try:
        await first.execute("CREATE TABLE t (x INTEGER)")

        async def add(db: Database, value: int) -> None:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES (?)", (value,))
                await asyncio.sleep(0.02)

        await asyncio.gather(*(add(db, i) for i in range(3) for db in (first, second)))
        row = await first.fetchone("SELECT count(*) FROM t")
        assert row is not None and row[0] == 6
    finally:
        await first.close()
        await second.close()


def test_split_statements_keeps_semicolons_inside_strings_and_triggers() -> None:
    script = """
        CREATE TABLE t (x TEXT DEFAULT 'a;b');  -- a comment; with a semicolon
        CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN
            UPDATE t SET x = 'c;d' WHERE rowid = new.rowid;
        END;
        INSERT INTO t DEFAULT VALUES
    """
    statements = split_statements(script)

    assert len(statements) == 3
    assert "CREATE TRIGGER" in statements[1] and statements[1].endswith("END;")
    conn = sqlite3.connect(":memory:")
    for statement in statements:
        conn.execute(statement)
    assert conn.execute("SELECT x FROM t").fetchall() == [("c;d",)]


async def test_blob_in_use_sees_characters_and_jobs(db: Database) -> None:
    blob = "ab" * 32
    assert not await db.blob_in_use(blob)
    await db.execute(
        "INSERT INTO servers (id, platform, created_at) VALUES ('console:x', 'console', 1)"
    )
    await db.execute(
        "INSERT INTO characters (id, server_id, name, name_key, owner_id, visibility)"
        " VALUES (1, 'console:x', 'a', 'a', 'u', 'public')"
    )
    await db.execute(
        "INSERT INTO character_media (character_id, kind, position, blob, mime, size)"
        " VALUES (1, 'image', 0, ?, 'image/png', 10)",
        (blob,),
    )
    assert await db.blob_in_use(blob)
    await db.execute("DELETE FROM characters WHERE id = 1")
    assert not await db.blob_in_use(blob)
