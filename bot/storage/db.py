"""kreabot's database: open the backend the settings name.

``DATABASE_URL=postgresql://…`` opens PostgreSQL (:mod:`bot.storage.postgres`); without it,
the SQLite file ``DATABASE_PATH`` (:mod:`bot.storage.sqlite`), the default. The repositories
see either through :class:`Database` (:mod:`bot.storage.interface`).
"""

from __future__ import annotations

from pathlib import Path

from bot.settings import Settings
from bot.storage.interface import (
    Connection,
    Database,
    DatabaseOpenError,
    Dialect,
    Queryable,
    Row,
    StorageError,
    Written,
    is_postgres_url,
    migration_scripts,
    redact_url,
)
from bot.storage.postgres import PostgresDatabase, open_postgres
from bot.storage.sqlite import SqliteDatabase, open_sqlite

__all__ = [
    "Connection",
    "Database",
    "DatabaseOpenError",
    "Dialect",
    "PostgresDatabase",
    "Queryable",
    "Row",
    "SqliteDatabase",
    "StorageError",
    "Written",
    "database_target",
    "latest_schema_version",
    "open_configured",
    "open_database",
    "redact_url",
]


async def open_database(target: str | Path) -> Database:
    """Open the database ``target`` names and bring its schema up to date: a
    ``postgresql://`` URL, else the path of a SQLite file (created if needed).

    Raises :class:`DatabaseOpenError` (a message safe to print) when it cannot be opened.
    """
    if is_postgres_url(target):
        return await open_postgres(str(target))
    return await open_sqlite(target)


def database_target(settings: Settings) -> str | Path:
    """What the settings name: ``DATABASE_URL`` when set, else ``DATABASE_PATH``."""
    if settings.DATABASE_URL is not None:
        return settings.DATABASE_URL.get_secret_value()
    return settings.DATABASE_PATH


async def open_configured(settings: Settings) -> Database:
    """Open the database the settings name (see :func:`database_target`)."""
    return await open_database(database_target(settings))


def latest_schema_version() -> int:
    """The schema version the newest migration brings a database to (the same number on
    both backends: their migration sets match)."""
    return max((number for number, _, _ in migration_scripts("migrations")), default=0)
