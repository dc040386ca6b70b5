"""The SQLite backend: one connection, one writer at a time, numbered migrations.

Every write runs in its own explicit transaction (``BEGIN IMMEDIATE`` … ``COMMIT``, or
``ROLLBACK`` when a statement fails) under one lock, so one coroutine's failed statement can
never roll back, or commit half of, another coroutine's work. Reads need no lock (WAL mode:
readers never block the writer). ``BEGIN IMMEDIATE`` takes the file's write lock, so a
transaction is also the only writer among processes sharing the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from bot.storage.interface import (
    SQLITE,
    DatabaseOpenError,
    Dialect,
    Row,
    StorageError,
    Written,
    migration_scripts,
)

log = logging.getLogger(__name__)

MIGRATIONS = "migrations"


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
def translated() -> Iterator[None]:
    """SQLite's errors, as :class:`StorageError`."""
    try:
        yield
    except sqlite3.Error as exc:
        raise storage_error(exc) from exc


class SqliteConnection:
    """The connection inside one :meth:`SqliteDatabase.transaction`."""

    dialect: Dialect = SQLITE

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.connection = connection

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> Written:
        """One statement."""
        async with self.connection.execute(sql, args) as cursor:
            return Written(cursor.rowcount)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """One statement for many rows."""
        await self.connection.executemany(sql, rows)

    async def insert_returning_id(self, sql: str, args: Sequence[Any] = ()) -> int:
        """An ``INSERT`` of one row; returns its rowid."""
        async with self.connection.execute(sql, args) as cursor:
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    async def lock(self, *key: object) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` made this transaction the only writer."""

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """Every row of a query."""
        with translated():
            async with self.connection.execute(sql, args) as cursor:
                return list(await cursor.fetchall())

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        """The first row of a query, or None."""
        with translated():
            async with self.connection.execute(sql, args) as cursor:
                return await cursor.fetchone()


class SqliteDatabase:
    """kreabot's SQLite database: reads, and writes each in one transaction."""

    dialect: Dialect = SQLITE

    def __init__(self, connection: aiosqlite.Connection, path: str | Path = "") -> None:
        self.connection = connection
        self.path = path
        self._reader = SqliteConnection(connection)
        self._write_lock = asyncio.Lock()
        self._alone: int | None = None

    @contextlib.asynccontextmanager
    async def transaction(self, *, durable: bool = False) -> AsyncIterator[SqliteConnection]:
        """Run the block's statements as one transaction, alone among writers. ``durable``:
        the commit is on disk when it returns, even across a power loss
        (``synchronous=FULL`` for this transaction; NORMAL survives a crash of the process,
        not of the machine)."""
        async with self._write_lock:
            with translated():
                if durable:
                    await self.connection.execute("PRAGMA synchronous=FULL")
                try:
                    await self.connection.execute("BEGIN IMMEDIATE")
                    try:
                        yield SqliteConnection(self.connection)
                    except BaseException:
                        await self.connection.rollback()
                        raise
                    await self.connection.commit()
                finally:
                    if durable:
                        await self.connection.execute("PRAGMA synchronous=NORMAL")

    async def write(self, sql: str, args: Sequence[Any] = (), *, durable: bool = False) -> Written:
        """One statement in a transaction of its own."""
        async with self.transaction(durable=durable) as connection:
            return await connection.execute(sql, args)

    async def write_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """One statement for many rows, in one transaction."""
        async with self.transaction() as connection:
            await connection.executemany(sql, rows)

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """Every row of a query."""
        return await self._reader.fetchall(sql, args)

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        """The first row of a query, or None."""
        return await self._reader.fetchone(sql, args)

    async def schema_version(self) -> int:
        """``PRAGMA user_version``: the latest migration applied."""
        row = await self.fetchone("PRAGMA user_version")
        return int(row[0]) if row else 0

    async def hold_alone(self) -> None:
        """Hold the file's process lock (``<file>.lock``, ``flock``) until :meth:`close`: a
        second bot process on the same file is refused when it starts, as one process uses
        an SQLite file (the system lets the lock go when the process ends, even killed)."""
        if self._alone is not None or str(self.path) in ("", ":memory:"):
            return
        path = Path(self.path)
        try:
            fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise DatabaseOpenError(f"SQLite {path} cannot be locked ({exc})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DatabaseOpenError(
                f"SQLite {path} is in use by another kreabot process: one process per SQLite "
                "file (stop the other one); to run several processes, use PostgreSQL "
                "(DATABASE_URL)"
            ) from None
        self._alone = fd

    @contextlib.asynccontextmanager
    async def try_lock(self, *key: object) -> AsyncIterator[bool]:
        """Always held: one process uses an SQLite file."""
        yield True

    async def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        """Nothing to listen to: no other process shares the file."""

    async def notify(self, channel: str, payload: str) -> None:
        """No other process to tell."""

    def describe(self) -> str:
        """``SQLite <path>``."""
        return f"SQLite {self.path}"

    async def ping(self) -> bool:
        """Whether the database answers."""
        try:
            return await self.fetchone("SELECT 1") is not None
        except Exception:
            return False

    async def close(self) -> None:
        """Close the connection (idempotent) and let the process lock go."""
        await self.connection.close()
        if self._alone is not None:
            os.close(self._alone)  # closing the descriptor releases the flock
            self._alone = None


async def open_sqlite(path: str | Path) -> SqliteDatabase:
    """Open (creating if needed) the database in WAL mode and bring its schema up to date."""
    try:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseOpenError(f"SQLite {path} cannot be opened ({exc})") from exc
    # isolation_level=None: the sqlite3 module starts no transaction on its own; every
    # write is wrapped in an explicit one (see SqliteDatabase.transaction).
    connection = aiosqlite.connect(str(path), isolation_level=None)
    try:
        await connection
    except (OSError, sqlite3.Error) as exc:
        await _worker_stopped(connection)
        raise DatabaseOpenError(f"SQLite {path} cannot be opened ({exc})") from exc
    try:
        connection.row_factory = aiosqlite.Row
        await connection.execute("PRAGMA journal_mode=WAL")
        await connection.execute("PRAGMA synchronous=NORMAL")
        await connection.execute("PRAGMA foreign_keys=ON")
        await connection.execute("PRAGMA busy_timeout=5000")
        await migrate(connection)
    except (OSError, sqlite3.Error) as exc:
        await connection.close()
        raise DatabaseOpenError(f"SQLite {path} cannot be opened ({exc})") from exc
    except BaseException:
        await connection.close()
        raise
    return SqliteDatabase(connection, path)


async def _worker_stopped(connection: aiosqlite.Connection) -> None:
    """Wait for the worker thread of a connection that failed to open: aiosqlite stops it
    without waiting, and its last answer must find the event loop still running."""
    thread = getattr(connection, "_thread", None)
    if isinstance(thread, threading.Thread) and thread.is_alive():
        await asyncio.to_thread(thread.join, 5.0)


async def migrate(db: aiosqlite.Connection) -> int:
    """Apply every migration newer than ``PRAGMA user_version``, each in its own transaction."""
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    version = int(row[0]) if row else 0
    for number, _, script in migration_scripts(MIGRATIONS):
        if number <= version:
            continue
        log.info("applying database migration %04d", number)
        await db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
        version = number
    return version
