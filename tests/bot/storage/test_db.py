"""The database interface on both backends: transactions, locks, types, migrations (the
same schema from both sets), errors that never show a password."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import bot.storage.postgres
import bot.storage.sqlite
from bot.storage.db import Database, DatabaseOpenError, open_database, redact_url
from bot.storage.interface import lock_key, migration_scripts
from bot.storage.postgres import numbered

PASSWORD = "pw-that-must-not-show"


# -- SQL written once ----------------------------------------------------------------------


def test_placeholders_are_numbered_outside_strings_names_and_comments() -> None:
    assert numbered("SELECT * FROM t WHERE a = ? AND b IN (?, ?)") == (
        "SELECT * FROM t WHERE a = $1 AND b IN ($2, $3)"
    )
    assert numbered("SELECT '?', 'it''s ?', \"odd?name\", ? -- a ? here\n, ? /* and ? */") == (
        "SELECT '?', 'it''s ?', \"odd?name\", $1 -- a ? here\n, $2 /* and ? */"
    )
    assert numbered("SELECT key FROM meta WHERE key LIKE ? || '%'") == (
        "SELECT key FROM meta WHERE key LIKE $1 || '%'"
    )
    assert numbered("SELECT 1") == "SELECT 1"


def test_lock_keys_are_stable_signed_64_bit_numbers() -> None:
    key = lock_key("admit", 111)
    assert key == lock_key("admit", 111) != lock_key("admit", 112)
    assert -(2**63) <= key < 2**63
    assert lock_key("admit", None) != lock_key("admit", 0)


def test_redact_url_keeps_everything_but_the_password() -> None:
    assert redact_url(f"postgresql://kreabot:{PASSWORD}@db.example.org:5432/kreabot") == (
        "postgresql://kreabot@db.example.org:5432/kreabot"
    )
    assert redact_url(f"postgres://u:{PASSWORD}@[::1]/db?sslmode=require&password={PASSWORD}") == (
        "postgres://u@[::1]/db?sslmode=require&password=***"
    )
    assert redact_url("postgresql://kreabot@/db?host=/tmp/sock") == (
        "postgresql://kreabot@/db?host=/tmp/sock"
    )


# -- transactions, on both -----------------------------------------------------------------


async def test_a_failed_transaction_leaves_nothing(db: Database) -> None:
    await db.write("INSERT INTO meta (key, value) VALUES (?, ?)", ("kept", "1"))
    with pytest.raises(RuntimeError):
        async with db.transaction() as connection:
            await connection.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("gone", "2"))
            await connection.execute("UPDATE meta SET value = ? WHERE key = ?", ("3", "kept"))
            raise RuntimeError("the block failed")

    rows = await db.fetchall("SELECT key, value FROM meta ORDER BY key")
    assert [tuple(row) for row in rows] == [("kept", "1")]
    assert (await db.write("UPDATE meta SET value = ? WHERE key = ?", ("4", "nope"))).rowcount == 0


async def test_statements_of_one_transaction(db: Database) -> None:
    async with db.transaction() as connection:
        first = await connection.insert_returning_id(
            "INSERT INTO jobs (channel_id, user_id, state, params, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (1, 2, "pending", "{}", 1.0, 1.0),
        )
        second = await connection.insert_returning_id(
            "INSERT INTO jobs (channel_id, user_id, state, params, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (1, 3, "pending", "{}", 2.0, 2.0),
        )
        await connection.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)", [("a", "1"), ("b", "2")]
        )
        changed = await connection.execute("UPDATE jobs SET state = ? WHERE user_id > ?", ("x", 0))
        seen = await connection.fetchone("SELECT COUNT(*) FROM jobs WHERE state = ?", ("x",))
        listed = await connection.fetchall("SELECT key FROM meta ORDER BY key")

    assert type(first) is int and second == first + 1
    assert changed.rowcount == 2
    assert seen is not None and seen[0] == 2 and type(seen[0]) is int
    assert [row["key"] for row in listed] == ["a", "b"]
    row = await db.fetchone(
        "SELECT id, channel_id, created_at, state FROM jobs WHERE id = ?", (first,)
    )
    assert row is not None
    assert dict(row) == {"id": first, "channel_id": 1, "created_at": 1.0, "state": "x"}
    assert [type(value) for value in row] == [int, int, float, str]
    assert await db.fetchone("SELECT id FROM jobs WHERE id = ?", (second + 1,)) is None


async def test_one_lock_key_at_a_time(db: Database) -> None:
    order: list[str] = []
    first_holds = asyncio.Event()

    async def first() -> None:
        async with db.transaction() as connection:
            await connection.lock("admit", 111)
            first_holds.set()
            await asyncio.sleep(0.2)
            order.append("first")

    async def second() -> None:
        await first_holds.wait()
        async with db.transaction() as connection:
            await connection.lock("admit", 111)
            order.append("second")

    await asyncio.gather(first(), second())
    assert order == ["first", "second"]


async def test_claiming_rows_skips_those_another_transaction_holds(db: Database) -> None:
    await db.write_many("INSERT INTO meta (key, value) VALUES (?, ?)", [("a", "1"), ("b", "2")])
    claim = f"SELECT key FROM meta ORDER BY key LIMIT 1 {db.dialect.lock_rows_skip_locked}"
    first_holds, second_done = asyncio.Event(), asyncio.Event()
    claimed: dict[str, list[str]] = {}

    async def first() -> None:
        async with db.transaction() as connection:
            claimed["first"] = [row[0] for row in await connection.fetchall(claim)]
            first_holds.set()
            if db.dialect.name == "postgres":  # SQLite: the second waits for the first
                await asyncio.wait_for(second_done.wait(), 5.0)

    async def second() -> None:
        await first_holds.wait()
        async with db.transaction() as connection:
            claimed["second"] = [row[0] for row in await connection.fetchall(claim)]
        second_done.set()

    await asyncio.gather(first(), second())
    if db.dialect.name == "postgres":
        assert claimed == {"first": ["a"], "second": ["b"]}
    else:  # one writer at a time: the first's claim has ended when the second runs
        assert claimed == {"first": ["a"], "second": ["a"]}


async def test_ping_describe_and_close(db: Database, target: Path | str) -> None:
    assert await db.ping() is True
    assert db.describe() == (
        f"SQLite {target}" if isinstance(target, Path) else f"PostgreSQL {target}"
    )
    other = await open_database(target)
    await other.close()
    await other.close()  # idempotent
    assert await other.ping() is False


# -- migrations ----------------------------------------------------------------------------


def test_both_migration_sets_have_the_same_files() -> None:
    sqlite = [(number, name) for number, name, _ in migration_scripts("migrations")]
    postgres = [(number, name) for number, name, _ in migration_scripts("migrations_postgres")]
    assert sqlite == postgres
    assert [number for number, _ in sqlite] == list(range(1, len(sqlite) + 1))


#: The type families the two backends' column types belong to.
FAMILIES = {
    "INTEGER": "integer",
    "REAL": "real",
    "TEXT": "text",
    "bigint": "integer",
    "integer": "integer",
    "double precision": "real",
    "text": "text",
}


async def schema(db: Database) -> dict[str, Any]:
    """Every table of kreabot's (the migration bookkeeping left out): its columns in order,
    each (name, type family, NOT NULL), its primary key; and the index names."""
    tables: dict[str, Any] = {}
    if db.dialect.name == "sqlite":
        names = [
            row[0]
            for row in await db.fetchall(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        for name in names:
            info = await db.fetchall(f"PRAGMA table_info({name})")
            key = [row["name"] for row in sorted(info, key=lambda r: r["pk"]) if row["pk"]]
            columns = [
                # A primary key column cannot be NULL (SQLite's rowid, or as PostgreSQL has it).
                (row["name"], FAMILIES[row["type"]], bool(row["notnull"] or row["pk"]))
                for row in info
            ]
            tables[name] = {"columns": columns, "key": key}
        indexes = await db.fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'index' "
            "AND name NOT LIKE 'sqlite_autoindex%'"
        )
    else:
        names = [
            row[0]
            for row in await db.fetchall(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema() AND table_name != 'schema_version' "
                "ORDER BY table_name"
            )
        ]
        for name in names:
            info = await db.fetchall(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = ? "
                "ORDER BY ordinal_position",
                (name,),
            )
            key = await db.fetchall(
                "SELECT k.column_name FROM information_schema.table_constraints c "
                "JOIN information_schema.key_column_usage k "
                "ON k.constraint_name = c.constraint_name AND k.table_name = c.table_name "
                "WHERE c.table_name = ? AND c.constraint_type = 'PRIMARY KEY' "
                "AND c.table_schema = current_schema() ORDER BY k.ordinal_position",
                (name,),
            )
            tables[name] = {
                "columns": [(row[0], FAMILIES[row[1]], row[2] == "NO") for row in info],
                "key": [row[0] for row in key],
            }
        indexes = await db.fetchall(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
            "AND indexname NOT LIKE '%_pkey'"
        )
    return {"tables": tables, "indexes": sorted(row[0] for row in indexes)}


async def test_both_backends_end_with_the_same_schema(tmp_path: Path, postgres_url: str) -> None:
    sqlite = await open_database(tmp_path / "kreabot.sqlite3")
    postgres = await open_database(postgres_url)
    try:
        on_sqlite, on_postgres = await schema(sqlite), await schema(postgres)
        assert await sqlite.schema_version() == await postgres.schema_version() >= 4
    finally:
        await sqlite.close()
        await postgres.close()

    assert set(on_sqlite["tables"]) == {
        "jobs",
        "scope_settings",
        "presets",
        "member_prefs",
        "meta",
        "processes",
        "breaker",
        "cooldowns",
    }
    assert on_postgres == on_sqlite


async def test_postgres_records_each_migration_once(postgres_url: str) -> None:
    # Three processes starting at once: the advisory lock has them migrate in turn.
    handles = await asyncio.gather(*(open_database(postgres_url) for _ in range(3)))
    try:
        rows = await handles[0].fetchall(
            "SELECT version, name, applied_at FROM schema_version ORDER BY version"
        )
        expected = [(number, name) for number, name, _ in migration_scripts("migrations_postgres")]
        assert [(row[0], row[1]) for row in rows] == expected
        assert all(type(row[2]) is float for row in rows)
        assert await bot.storage.postgres.migrate(handles[1].pool) == len(expected)  # type: ignore[attr-defined]
    finally:
        for handle in handles:
            await handle.close()


async def test_a_failing_migration_is_rolled_back_whole(
    target: Path | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = await open_database(target)
    version = await db.schema_version()
    await db.close()
    module = bot.storage.postgres if isinstance(target, str) else bot.storage.sqlite
    real = migration_scripts(module.MIGRATIONS)
    broken = "CREATE TABLE half_done (a INTEGER);\nSELECT no_such_function();\n"
    monkeypatch.setattr(
        module,
        "migration_scripts",
        lambda folder: [*real, (version + 1, f"{version + 1:04d}_broken.sql", broken)],
    )

    with pytest.raises(DatabaseOpenError, match="no_such_function"):
        await open_database(target)

    monkeypatch.undo()
    db = await open_database(target)
    try:
        assert await db.schema_version() == version
        with pytest.raises(Exception, match="half_done"):
            await db.fetchall("SELECT * FROM half_done")
    finally:
        await db.close()


# -- errors --------------------------------------------------------------------------------


async def test_an_unreachable_postgres_is_one_safe_line(tmp_path: Path) -> None:
    url = f"postgresql://kreabot:{PASSWORD}@/kreabot?host={tmp_path / 'nothing-here'}"
    with pytest.raises(DatabaseOpenError) as caught:
        await open_database(url)
    message = str(caught.value)
    assert message.startswith("PostgreSQL postgresql://kreabot@/kreabot?host=")
    assert "cannot be opened" in message
    assert PASSWORD not in message and "\n" not in message
    assert caught.value.__cause__ is None  # the driver's exception (and its URL) not chained


async def test_a_missing_postgres_database_is_named(postgres_url: str) -> None:
    url = postgres_url.replace("://kreabot@", f"://kreabot:{PASSWORD}@").replace(
        "/kreabot_test_", "/no_such_database_"
    )
    with pytest.raises(DatabaseOpenError, match="no_such_database_") as caught:
        await open_database(url)
    assert PASSWORD not in str(caught.value)


async def test_a_sqlite_file_that_cannot_be_opened(tmp_path: Path) -> None:
    (tmp_path / "a-directory").mkdir()
    with pytest.raises(DatabaseOpenError, match=r"^SQLite .*a-directory cannot be opened"):
        await open_database(tmp_path / "a-directory")
