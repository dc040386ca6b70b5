"""What the repositories see of a database, whichever backend holds it.

Two backends implement :class:`Database`:

* :class:`~bot.storage.sqlite.SqliteDatabase` (the default, ``DATABASE_PATH``): one file,
  one connection, every write in its own ``BEGIN IMMEDIATE`` … ``COMMIT`` under one lock.
* :class:`~bot.storage.postgres.PostgresDatabase` (``DATABASE_URL=postgresql://…``): a pool
  of connections, for several bot processes sharing one database.

SQL is written once, in the dialect both understand: ``?`` placeholders (the PostgreSQL
backend numbers them ``$1``, ``$2``… outside quotes), ``ON CONFLICT … DO UPDATE``,
``CASE WHEN`` rather than summing booleans. The few spellings that differ come from the
backend's :class:`Dialect` (``db.dialect``, or ``connection.dialect`` in a transaction).
Rows come back as ``aiosqlite.Row`` or ``asyncpg.Record``: both index by position and by
column name, unpack like tuples and turn into dicts with ``dict(row)``, and hold the same
Python types (``int``, ``float``, ``str``, ``None``) for the same columns.

Both backends apply the same numbered migrations (``migrations/`` and
``migrations_postgres/``, ``NNNN_name.sql``), each in a transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

Backend = Literal["sqlite", "postgres"]

#: Schemes of a ``DATABASE_URL`` that names a PostgreSQL database.
POSTGRES_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True)
class Dialect:
    """The pieces of SQL that differ between the backends."""

    name: Backend
    #: A comparison that is true for two NULLs: ``guild_id {null_safe_equals} ?``.
    null_safe_equals: str
    #: ``{column}`` (unix seconds) as its UTC day, a ``YYYY-MM-DD`` string.
    utc_day_template: str
    #: Appended to a ``SELECT`` inside :meth:`Database.transaction` to take the rows it
    #: returns for this transaction, passing over rows another transaction holds. Empty on
    #: SQLite, where a write transaction already excludes every other writer.
    lock_rows_skip_locked: str

    def utc_day(self, column: str) -> str:
        """The SQL expression of ``column``'s UTC day."""
        return self.utc_day_template.format(column=column)


SQLITE = Dialect(
    name="sqlite",
    null_safe_equals="IS",
    utc_day_template="date({column}, 'unixepoch')",
    lock_rows_skip_locked="",
)
POSTGRES = Dialect(
    name="postgres",
    null_safe_equals="IS NOT DISTINCT FROM",
    utc_day_template="to_char(to_timestamp({column}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    lock_rows_skip_locked="FOR UPDATE SKIP LOCKED",
)


class Row(Protocol):
    """One result row: by position (``row[0]``) or name (``row["id"]``), ``dict(row)``."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def keys(self) -> Iterable[str]: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class Written:
    """What a write did: the number of rows it inserted, changed or deleted."""

    rowcount: int


class Queryable(Protocol):
    """Something that answers queries: a database, or a connection inside a transaction."""

    @property
    def dialect(self) -> Dialect:
        """The backend's SQL spellings."""
        ...

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """Every row of a query."""
        ...

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        """The first row of a query, or None."""
        ...


class Connection(Queryable, Protocol):
    """The connection of one transaction (see :meth:`Database.transaction`)."""

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> Written:
        """One statement."""
        ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """One statement for many rows."""
        ...

    async def insert_returning_id(self, sql: str, args: Sequence[Any] = ()) -> int:
        """An ``INSERT`` (written without ``RETURNING``) of one row; returns its ``id``."""
        ...

    async def lock(self, *key: object) -> None:
        """Hold the lock named by ``key`` until the transaction ends: another transaction
        asking for the same key, in this process or another, waits until then. (SQLite:
        nothing to do, a write transaction there is already the only one.)"""
        ...


class Database(Queryable, Protocol):
    """kreabot's database: reads, and writes each in one transaction.

    Every failure of the database itself (full, locked, unreadable, gone) comes out as a
    :class:`StorageError`, whichever backend it is.
    """

    def transaction(
        self, *, durable: bool = False
    ) -> contextlib.AbstractAsyncContextManager[Connection]:
        """Run the block's statements as one transaction (rolled back if the block
        raises). ``SELECT … {dialect.lock_rows_skip_locked}`` in it claims rows.
        ``durable``: the commit is on disk when it returns, even across a power loss."""
        ...

    async def write(self, sql: str, args: Sequence[Any] = (), *, durable: bool = False) -> Written:
        """One statement in a transaction of its own."""
        ...

    async def write_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """One statement for many rows, in one transaction."""
        ...

    async def schema_version(self) -> int:
        """The number of the latest migration applied."""
        ...

    async def hold_alone(self) -> None:
        """For the bot process that runs the jobs: refuse (:class:`DatabaseOpenError`) when
        another process already runs them on a database made for one process (SQLite);
        nothing to do on PostgreSQL."""
        ...

    def try_lock(self, *key: object) -> contextlib.AbstractAsyncContextManager[bool]:
        """Try to take the lock named by ``key`` for the block, without waiting: the block
        gets True when this process holds it (no other process can meanwhile), False when
        another process does. (SQLite: always True, one process uses the file.)"""
        ...

    async def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(payload)`` for every :meth:`notify` on ``channel``, from any
        process sharing the database, until :meth:`close`. (SQLite: never called; nothing
        else shares the file.)"""
        ...

    async def notify(self, channel: str, payload: str) -> None:
        """Tell every process listening on ``channel`` (this one included)."""
        ...

    def describe(self) -> str:
        """The backend and where it is, safe to print (no password)."""
        ...

    async def ping(self) -> bool:
        """Whether the database answers."""
        ...

    async def close(self) -> None:
        """Close the connection(s) (idempotent)."""
        ...


class DatabaseOpenError(Exception):
    """The database cannot be opened; the message is one line that is safe to print."""


class StorageError(Exception):
    """The database could not do what was asked: ``kind`` is ``full``, ``locked``,
    ``unreadable`` or ``failed``; the message is safe to log (no password)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def lock_key(*key: object) -> int:
    """A signed 64-bit number for a lock name (for PostgreSQL's advisory locks).

    Two names could share a number; that only makes them wait for each other.
    """
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def migration_scripts(folder: str) -> list[tuple[int, str, str]]:
    """(number, file name, SQL) of each ``NNNN_*.sql`` in ``bot/storage/<folder>``, in
    order."""
    found = []
    for entry in resources.files("bot.storage").joinpath(folder).iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def is_postgres_url(target: str | Path) -> bool:
    """Whether ``target`` is a PostgreSQL URL rather than a SQLite file path."""
    return isinstance(target, str) and urlsplit(target).scheme in POSTGRES_SCHEMES


def url_password(url: str) -> str | None:
    """The password a database URL holds (in its user part, or ``?password=``), if any."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return None
    if password:
        return unquote(password)
    for key, value in parse_qsl(parts.query):
        if key == "password" and value:
            return value
    return None


def redact_url(url: str) -> str:
    """``url`` without its password (in the user part or the query), to print or log."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}@{host}"
    query = urlencode(
        [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)],
        safe="/*",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
