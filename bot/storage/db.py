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
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
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


class StorageError(Exception):
    """The database could not do what was asked: full, locked, unreadable. ``kind`` is one of
    ``full``, ``locked``, ``unreadable``, ``failed``; the message is safe to log."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def storage_error(exc: sqlite3.Error) -> StorageError:
    """A :class:`StorageError` naming what went wrong with SQLite."""
    text = str(exc)
    lowered = text.lower()
    if "full" in lowered:
        return StorageError("full", f"the database is full (the disk has no room?): {text}")
    if "locked" in lowered or "busy" in lowered:
        return StorageError("locked", f"the database is locked by another process: {text}")
    if isinstance(exc, sqlite3.DatabaseError) and (
        "malformed" in lowered or "not a database" in lowered or "disk i/o" in lowered
    ):
        return StorageError("unreadable", f"the database file cannot be read: {text}")
    return StorageError("failed", f"a database operation failed: {text}")


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise storage_error(exc) from exc


def latest_schema_version() -> int:
    """The schema version the newest migration brings a database to."""
    return max((number for number, _ in _migrations()), default=0)


class Database:
    """kreabot's database connection: reads, and writes each in one transaction.

    Every SQLite error comes out as a :class:`StorageError` (full, locked, unreadable), so a
    failed write is told to the member and logged plainly instead of ending as a traceback.
    """

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.connection = connection
        self._write_lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def transaction(self, *, durable: bool = False) -> AsyncIterator[aiosqlite.Connection]:
        """Run the block's statements as one transaction, alone among writers. ``durable``:
        the commit is on disk when it returns, even across a power loss (``synchronous=FULL``
        for this transaction; NORMAL survives a crash of the process, not of the machine)."""
        async with self._write_lock:
            with _translated():
                if durable:
                    await self.connection.execute("PRAGMA synchronous=FULL")
                try:
                    await self.connection.execute("BEGIN IMMEDIATE")
                    try:
                        yield self.connection
                    except BaseException:
                        await self.connection.rollback()
                        raise
                    await self.connection.commit()
                finally:
                    if durable:
                        await self.connection.execute("PRAGMA synchronous=NORMAL")

    async def write(
        self, sql: str, args: Sequence[Any] = (), *, durable: bool = False
    ) -> aiosqlite.Cursor:
        """One statement in a transaction of its own; returns its cursor (rowcount...)."""
        async with self.transaction(durable=durable) as connection:
            return await connection.execute(sql, args)

    async def write_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """One statement for many rows, in one transaction."""
        async with self.transaction() as connection:
            await connection.executemany(sql, rows)

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        """Every row of a query."""
        with _translated():
            async with self.connection.execute(sql, args) as cursor:
                return list(await cursor.fetchall())

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> aiosqlite.Row | None:
        """The first row of a query, or None."""
        with _translated():
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
    """Open (creating if needed) the database in WAL mode and bring its schema up to date.

    Raises :class:`StorageError` when the file cannot be used (not a database, unreadable)."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: the sqlite3 module starts no transaction on its own; every write
    # is wrapped in an explicit one (see Database.transaction).
    connection = await aiosqlite.connect(str(path), isolation_level=None)
    try:
        with _translated():
            connection.row_factory = aiosqlite.Row
            await connection.execute("PRAGMA journal_mode=WAL")
            await connection.execute("PRAGMA synchronous=NORMAL")
            await connection.execute("PRAGMA foreign_keys=ON")
            await connection.execute("PRAGMA busy_timeout=5000")
            await migrate(connection)
    except BaseException:
        await connection.close()
        raise
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
