"""Shared fixtures: the end-to-end world (both fakes), the fake Discord fixtures, and a
throwaway PostgreSQL server (see :mod:`tests.support.postgres`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.postgres import (
    PG_BIN_VARIABLE,
    PostgresServer,
    end_to_end_backend,
    find_bindir,
    postgres_required,
)
from tests.support.stage import stage
from tests.support.world import World, make_world

__all__ = ["stage", "world"]  # ``stage``: bot processes against both fakes


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole run, started by the first test that needs it.

    Skipped when PostgreSQL is not installed, unless KREABOT_REQUIRE_POSTGRES=1."""
    bindir = find_bindir()
    if bindir is None:
        message = (
            "PostgreSQL's server (initdb, pg_ctl, postgres) is not installed: "
            f"apt-get install postgresql, or set {PG_BIN_VARIABLE} to its bin folder"
        )
        if postgres_required():
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer.start(bindir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    url = postgres_server.create_database()
    try:
        yield url
    finally:
        postgres_server.drop_database(url)


@pytest.fixture
def database_target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """The end-to-end tests' database: a new SQLite file, or with
    KREABOT_TEST_DATABASE=postgres a new PostgreSQL database (its URL)."""
    if end_to_end_backend() == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return tmp_path / "kreabot.sqlite3"


@pytest_asyncio.fixture
async def world(tmp_path: Path, database_target: Path | str) -> AsyncIterator[World]:
    """Both fakes running, discord.py pointed at the fake Discord, a fresh database."""
    async with make_world(tmp_path, database=database_target) as created:
        yield created
