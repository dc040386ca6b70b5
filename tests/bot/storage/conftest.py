"""The storage fixtures, each test run on both backends: a SQLite file and a PostgreSQL
database (a fresh one per test, on the session's throwaway server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.storage.db import Database, open_database

BACKENDS = ("sqlite", "postgres")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test: ``sqlite`` or ``postgres``."""
    name: str = request.param
    return name


@pytest.fixture
def target(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where the database is: a new SQLite file, or a new PostgreSQL database's URL. Open it
    again with :func:`open_database` to see what another process would."""
    if backend == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return tmp_path / "data" / "kreabot.sqlite3"


@pytest.fixture
async def db(target: Path | str) -> AsyncIterator[Database]:
    """The database, migrated."""
    database = await open_database(target)
    try:
        yield database
    finally:
        await database.close()
