"""The SQLite database: one connection, one writer at a time, numbered migrations.

Every write runs in its own explicit transaction (``BEGIN IMMEDIATE`` … ``COMMIT``, or
``ROLLBACK`` when a statement fails) under one lock, so one coroutine's failed statement can
never roll back, or commit half of, another coroutine's work. Reads need no lock (WAL mode:
readers never block the writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

log = logging.getLogger(__name__)


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("bot.storage").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), entry.read_text(encoding="utf-8")))
    return sorted(found)


def latest_schema_version() -> int:
    """The schema version the newest migration brings a database to."""
    return max((number for number, _ in _migrations()), default=0)


class Database:
    """kreabot's database connection: reads, and writes each in one transaction."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.connection = connection
        self._write_lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """Run the block's statements as one transaction, alone among writers."""
        async with self._write_lock:
            await self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield self.connection
            except BaseException:
                await self.connection.rollback()
                raise
            await self.connection.commit()

    async def write(self, sql: str, args: Sequence[Any] = ()) -> aiosqlite.Cursor:
        """One statement in a transaction of its own; returns its cursor (rowcount...)."""
        async with self.transaction() as connection:
            return await connection.execute(sql, args)

    async def write_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """One statement for many rows, in one transaction."""
        async with self.transaction() as connection:
            await connection.executemany(sql, rows)

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        """Every row of a query."""
        async with self.connection.execute(sql, args) as cursor:
            return list(await cursor.fetchall())

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> aiosqlite.Row | None:
        """The first row of a query, or None."""
        async with self.connection.execute(sql, args) as cursor:
            return await cursor.fetchone()

    async def ping(self) -> bool:
        """Whether the database answers."""
        try:
            return await self.fetchone("SELECT 1") is not None
        except Exception:
            return False

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        await self.connection.close()


async def open_database(path: str | Path) -> Database:
    """Open (creating if needed) the database in WAL mode and bring its schema up to date."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: the sqlite3 module starts no transaction on its own; every write
    # is wrapped in an explicit one (see Database.transaction).
    connection = await aiosqlite.connect(str(path), isolation_level=None)
    connection.row_factory = aiosqlite.Row
    await connection.execute("PRAGMA journal_mode=WAL")
    await connection.execute("PRAGMA synchronous=NORMAL")
    await connection.execute("PRAGMA foreign_keys=ON")
    await connection.execute("PRAGMA busy_timeout=5000")
    await migrate(connection)
    return Database(connection)


async def migrate(db: aiosqlite.Connection) -> int:
    """Apply every migration newer than ``PRAGMA user_version``, each in its own transaction."""
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    version = int(row[0]) if row else 0
    for number, script in _migrations():
        if number <= version:
            continue
        log.info("applying database migration %04d", number)
        await db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
        version = number
    return version
