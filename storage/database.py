"""Choosing the database from ``R2V_DATABASE_URL``: SQLite (default) or PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bot.errors import ConfigurationError
from storage.sql import SqlDatabase


def migrations_for(dialect: str) -> Sequence[str]:
    from storage.migrations import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS

    return POSTGRES_MIGRATIONS if dialect == "postgresql" else SQLITE_MIGRATIONS


def sqlite_path(url: str | None, data_dir: Path) -> Path | None:
    """The SQLite file the URL names (``None`` for a PostgreSQL URL)."""
    if not url:
        return data_dir / "r2v.sqlite3"
    scheme = urlsplit(url).scheme
    if scheme in {"postgres", "postgresql"}:
        return None
    if scheme != "sqlite":
        raise ConfigurationError(
            f"R2V_DATABASE_URL={url!r} is not accepted: expected sqlite:///path/to/file or "
            "postgresql://user@host:port/database."
        )
    # sqlite:///relative/file and sqlite:////absolute/file, as SQLAlchemy spells them.
    path = unquote(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else ""
    if not path:
        raise ConfigurationError(
            f"R2V_DATABASE_URL={url!r} names no file: write sqlite:///data/r2v.sqlite3."
        )
    return Path(path).expanduser().absolute()


async def open_database(
    url: str | None,
    data_dir: Path,
    *,
    migrate: bool = True,
    schema: str | None = None,
    application_name: str = "r2v-bot",
) -> SqlDatabase:
    """Open the database the settings name and (unless ``migrate`` is false) migrate it."""
    path = sqlite_path(url, data_dir)
    if path is None:
        assert url is not None
        from storage.postgres import PostgresDatabase

        return await PostgresDatabase.open(
            url, schema=schema, migrate=migrate, application_name=application_name
        )
    from storage.db import Database

    if not migrate:
        return await Database.open(path, migrations=None)
    return await Database.open(path)


class DataFolderLock:
    """One process per SQLite data folder: an exclusive ``flock`` on ``r2v.pid``, held for the
    process's life (the kernel drops it when the process dies, SIGKILL included)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "r2v.pid"
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl
        import os

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise ConfigurationError(
                f"Another r2v-bot (pid {other}) is already running on the data folder "
                f"{self.path.parent}. Stop it, or give this one another R2V_DATA_DIR; several "
                "instances need PostgreSQL (R2V_DATABASE_URL)."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        import os

        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
