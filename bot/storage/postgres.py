"""The PostgreSQL backend (``DATABASE_URL=postgresql://…``): a pool of asyncpg connections,
for several bot processes sharing one database.

The repositories' SQL is the one they write for SQLite: ``?`` placeholders become ``$1``,
``$2``… here (outside quoted strings, quoted names and comments; so PostgreSQL's own ``?``
JSON operators cannot be written in it: use ``jsonb_exists()``). Each statement outside
:meth:`PostgresDatabase.transaction` runs in a transaction of its own (PostgreSQL's
autocommit). Transactions use PostgreSQL's default isolation, READ COMMITTED: each
statement sees every transaction committed before it started, which is what
:meth:`PostgresConnection.lock` relies on (see there).

Migrations (``migrations_postgres/NNNN_*.sql``, numbered like SQLite's) are recorded in the
``schema_version`` table, one row per migration, each applied in a transaction with its
row; the whole run holds an advisory lock, so processes starting at once migrate one after
the other (the later ones find nothing left to do).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any

import asyncpg

from bot.storage.interface import (
    POSTGRES,
    DatabaseOpenError,
    Dialect,
    Row,
    StorageError,
    Written,
    lock_key,
    migration_scripts,
    redact_url,
    url_password,
)

log = logging.getLogger(__name__)

MIGRATIONS = "migrations_postgres"
#: The advisory lock held while migrating.
MIGRATION_LOCK = lock_key("kreabot", "migrations")
#: Connections one process keeps open at most.
POOL_SIZE = 10
#: Seconds to wait for a connection to the server.
CONNECT_TIMEOUT = 10.0
#: Seconds closing waits for connections in use before cutting them.
CLOSE_TIMEOUT = 10.0


@functools.lru_cache(maxsize=1024)
def numbered(sql: str) -> str:
    """``sql`` with each ``?`` placeholder numbered ``$1``, ``$2``… (asyncpg's style), those
    inside '…' strings, "…" names and -- or /* */ comments left alone."""
    out: list[str] = []
    count = 0
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"":
            end = i + 1
            while end < n:
                if sql[end] == ch:
                    if end + 1 < n and sql[end + 1] == ch:  # '' or "" inside: an escape
                        end += 2
                        continue
                    break
                end += 1
            out.append(sql[i : end + 1])
            i = end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end])
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(sql[i:end])
            i = end
        elif ch == "?":
            count += 1
            out.append(f"${count}")
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _rowcount(status: str) -> int:
    """The row count of a command status such as ``UPDATE 3`` or ``INSERT 0 1``."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def storage_error(exc: BaseException) -> StorageError:
    """A :class:`StorageError` naming what went wrong with PostgreSQL."""
    text = str(exc)
    if isinstance(exc, asyncpg.exceptions.DiskFullError | asyncpg.exceptions.OutOfMemoryError):
        return StorageError("full", f"the database is full (the server has no room?): {text}")
    if isinstance(
        exc, asyncpg.exceptions.LockNotAvailableError | asyncpg.exceptions.DeadlockDetectedError
    ):
        return StorageError("locked", f"the database is busy: {text}")
    if isinstance(exc, asyncpg.InterfaceError | OSError | TimeoutError):
        return StorageError("failed", f"the database cannot be reached: {text}")
    return StorageError("failed", f"a database operation failed: {text}")


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """PostgreSQL's (and the connection's) errors, as :class:`StorageError`."""
    try:
        yield
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise storage_error(exc) from exc


class PostgresConnection:
    """The connection inside one :meth:`PostgresDatabase.transaction`."""

    dialect: Dialect = POSTGRES

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> Written:
        """One statement."""
        return Written(_rowcount(await self.connection.execute(numbered(sql), *args)))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """One statement for many rows."""
        await self.connection.executemany(numbered(sql), [tuple(row) for row in rows])

    async def insert_returning_id(self, sql: str, args: Sequence[Any] = ()) -> int:
        """An ``INSERT`` of one row; returns its ``id`` (``RETURNING id``)."""
        return int(await self.connection.fetchval(f"{numbered(sql)} RETURNING id", *args))

    async def lock(self, *key: object) -> None:
        """Wait for, then hold until this transaction ends, the advisory lock of ``key``
        (``pg_advisory_xact_lock``): every process asking for the same key takes its turn.

        Taken before the statements it guards: under READ COMMITTED they then see what the
        previous holder committed, since it committed before its lock was released.
        """
        await self.connection.execute("SELECT pg_advisory_xact_lock($1)", lock_key(*key))

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """Every row of a query."""
        return list(await self.connection.fetch(numbered(sql), *args))

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        """The first row of a query, or None."""
        row: Row | None = await self.connection.fetchrow(numbered(sql), *args)
        return row


class PostgresDatabase:
    """kreabot's PostgreSQL database: a pool; each write or transaction on one
    connection of it."""

    dialect: Dialect = POSTGRES

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self.pool = pool
        self._url = url
        self._where = redact_url(url)
        self._closed = False
        #: The connection LISTENing for notifications (opened by the first listen()).
        self._listener: asyncpg.Connection | None = None
        self._listening: dict[str, Callable[[str], None]] = {}
        self._relisten: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def transaction(self, *, durable: bool = False) -> AsyncIterator[PostgresConnection]:
        """Run the block's statements as one transaction on one connection: committed when
        it ends, rolled back if it raises. (Every commit is durable on PostgreSQL, whose
        ``synchronous_commit`` is on by default: ``durable`` asks nothing more.)"""
        with translated():
            async with self.pool.acquire() as connection, connection.transaction():
                yield PostgresConnection(connection)

    async def write(self, sql: str, args: Sequence[Any] = (), *, durable: bool = False) -> Written:
        """One statement in a transaction of its own."""
        with translated():
            return Written(_rowcount(await self.pool.execute(numbered(sql), *args)))

    async def write_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """One statement for many rows, in one transaction."""
        async with self.transaction() as connection:
            await connection.executemany(sql, rows)

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """Every row of a query."""
        with translated():
            return list(await self.pool.fetch(numbered(sql), *args))

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        """The first row of a query, or None."""
        with translated():
            row: Row | None = await self.pool.fetchrow(numbered(sql), *args)
        return row

    async def schema_version(self) -> int:
        """The latest migration recorded in ``schema_version``."""
        return int(await self.pool.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))

    async def hold_alone(self) -> None:
        """Nothing to hold: processes share a PostgreSQL database."""

    @contextlib.asynccontextmanager
    async def try_lock(self, *key: object) -> AsyncIterator[bool]:
        """``pg_try_advisory_lock`` on a connection of its own, held for the block."""
        number = lock_key(*key)
        with translated():
            connection = await self.pool.acquire()
        try:
            with translated():
                held = bool(await connection.fetchval("SELECT pg_try_advisory_lock($1)", number))
            try:
                yield held
            finally:
                if held:
                    with contextlib.suppress(
                        asyncpg.PostgresError, asyncpg.InterfaceError, OSError
                    ):
                        await connection.execute("SELECT pg_advisory_unlock($1)", number)
        finally:
            await self.pool.release(connection)

    async def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        """``LISTEN`` on a connection kept for it (outside the pool); re-opened, and every
        channel listened to again, when it breaks."""
        self._listening[channel] = callback
        with translated():
            if self._listener is None or self._listener.is_closed():
                await self._open_listener()
            else:
                await self._listener.add_listener(channel, self._on_notification)

    async def _open_listener(self) -> None:
        connection: asyncpg.Connection = await asyncpg.connect(
            self._url,
            timeout=CONNECT_TIMEOUT,
            server_settings={"application_name": "kreabot-listen"},
        )
        for channel in self._listening:
            await connection.add_listener(channel, self._on_notification)
        connection.add_termination_listener(self._on_listener_lost)
        self._listener = connection

    def _on_notification(self, connection: object, pid: int, channel: str, payload: object) -> None:
        callback = self._listening.get(channel)
        if callback is not None:
            try:
                callback(str(payload))
            except Exception:
                log.exception("a notification on %s could not be handled", channel)

    def _on_listener_lost(self, connection: object) -> None:
        if self._closed or (self._relisten is not None and not self._relisten.done()):
            return
        log.warning("the database connection listening for notifications was lost; reopening")
        self._relisten = asyncio.get_running_loop().create_task(self._reopen_listener())

    async def _reopen_listener(self) -> None:
        delay = 1.0
        while not self._closed:
            try:
                await self._open_listener()
                log.info("listening for notifications again")
                return
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("could not listen for notifications yet (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(30.0, delay * 2)

    async def notify(self, channel: str, payload: str) -> None:
        """``pg_notify(channel, payload)``."""
        with translated():
            await self.pool.execute("SELECT pg_notify($1, $2)", channel, payload)

    def describe(self) -> str:
        """``PostgreSQL <url without its password>``."""
        return f"PostgreSQL {self._where}"

    async def ping(self) -> bool:
        """Whether the database answers."""
        try:
            return await self.pool.fetchval("SELECT 1", timeout=5.0) == 1
        except Exception:
            return False

    async def close(self) -> None:
        """Close the pool (idempotent); connections still in use after CLOSE_TIMEOUT are
        cut."""
        if self._closed:
            return
        self._closed = True
        if self._relisten is not None:
            self._relisten.cancel()
        if self._listener is not None and not self._listener.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.close(), CLOSE_TIMEOUT)
        try:
            await asyncio.wait_for(self.pool.close(), CLOSE_TIMEOUT)
        except TimeoutError:
            self.pool.terminate()


async def open_postgres(url: str) -> PostgresDatabase:
    """Connect to the database ``url`` names and bring its schema up to date."""
    where = redact_url(url)
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=POOL_SIZE,
            timeout=CONNECT_TIMEOUT,
            server_settings={"application_name": "kreabot"},
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseOpenError(
            f"PostgreSQL {where} cannot be opened ({_reason(exc, url)})"
        ) from None
    except ValueError as exc:  # a URL asyncpg cannot read
        raise DatabaseOpenError(
            f"PostgreSQL {where} is not a usable URL ({_reason(exc, url)})"
        ) from None
    try:
        await migrate(pool)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        pool.terminate()
        raise DatabaseOpenError(
            f"PostgreSQL {where} cannot be migrated ({_reason(exc, url)})"
        ) from exc
    except BaseException:
        pool.terminate()
        raise
    return PostgresDatabase(pool, url)


def _reason(exc: BaseException, url: str) -> str:
    """The first line of why connecting failed, the URL's password blanked out should it
    appear in it."""
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    password = url_password(url)
    return text.replace(password, "***") if password else text


async def migrate(pool: asyncpg.Pool) -> int:
    """Apply every migration newer than the latest in ``schema_version``, each in its own
    transaction, holding the migration lock meanwhile; returns the schema version."""
    async with pool.acquire() as connection:
        await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            await connection.execute(
                """CREATE TABLE IF NOT EXISTS schema_version (
                       version    INTEGER PRIMARY KEY,
                       name       TEXT NOT NULL,
                       applied_at DOUBLE PRECISION NOT NULL
                   )"""
            )
            version = int(
                await connection.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            )
            for number, name, script in migration_scripts(MIGRATIONS):
                if number <= version:
                    continue
                log.info("applying database migration %04d", number)
                async with connection.transaction():
                    await connection.execute(script)  # no arguments: several statements
                    await connection.execute(
                        "INSERT INTO schema_version (version, name, applied_at) "
                        "VALUES ($1, $2, $3)",
                        number,
                        name,
                        time.time(),
                    )
                version = number
        finally:
            # (Were the connection broken, the server has let the lock go already.)
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return version
