"""The job store on a real SQLite file: migrations, round trips, reopening."""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

import pytest

from bot.pixazo import build_request
from bot.storage.db import Database, migrate, open_database
from bot.storage.jobs import ACTIVE_STATES, JobRepository, JobState, NewJob, Reference

BOARD = "123e4567-e89b-12d3-a456-426614174000"


def latest_migration() -> int:
    folder = resources.files("bot.storage").joinpath("migrations")
    return max(int(entry.name[:4]) for entry in folder.iterdir() if entry.name.endswith(".sql"))


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "kreabot.sqlite3"


@pytest.fixture
async def db(db_path: Path) -> AsyncIterator[Database]:
    connection = await open_database(db_path)
    try:
        yield connection
    finally:
        await connection.close()


def new_job(**overrides: object) -> NewJob:
    params = build_request(
        prompt="a lighthouse at dusk",
        aspect_ratio="9:16",
        creativity="low",
        seed=987654321,
        image_style_references=[
            {"image_url": "https://cdn.discordapp.com/attachments/1/2/a.png?ex=1", "strength": -0.5}
        ],
        styles=[{"id": "krea/ink", "strength": 0.7}],
        moodboards=[{"id": BOARD, "strength": 0.3}],
    )
    fields: dict[str, object] = {
        "guild_id": 111,
        "channel_id": 222,
        "user_id": 333,
        "params": params,
        "sources": {"seed": "random", "styles": "option"},
        "refs": [Reference(filename="a.png", size=1234, url="https://cdn.example/a.png")],
        "application_id": 555,
        "interaction_token": "itok",
        "token_expires_at": 1_700_000_900.0,
    }
    fields.update(overrides)
    return NewJob(**fields)  # type: ignore[arg-type]


async def test_migrations_set_user_version_and_wal(db: Database) -> None:
    row = await db.fetchone("PRAGMA user_version")
    assert row is not None and row[0] == latest_migration() >= 1
    row = await db.fetchone("PRAGMA journal_mode")
    assert row is not None and row[0] == "wal"
    rows = await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
    tables = {r[0] for r in rows}
    assert "jobs" in tables
    assert await migrate(db.connection) == latest_migration()  # applying again is a no-op


async def test_job_round_trips(db: Database) -> None:
    clock = Clock()
    repo = JobRepository(db, clock=clock)
    new = new_job()

    created = await repo.create(new)

    assert created.id >= 1
    assert created.state is JobState.PENDING
    assert created.params == new.params
    assert created.params.to_body() == new.params.to_body()
    assert created.seed == 987654321
    assert created.sources == new.sources
    assert created.refs == new.refs
    assert created.created_at == created.updated_at == clock.now
    assert created.token_valid(1_700_000_100.0)
    assert not created.token_valid(1_700_001_000.0)

    clock.now += 5
    await repo.update(
        created,
        state=JobState.SUBMITTED,
        request_id="krea-2-large-text-to-image_abc",
        polling_url="https://gateway.pixazo.ai/v2/requests/status/krea-2-large-text-to-image_abc",
        submitted_at=clock.now,
        refs=[Reference(filename="a.png", size=1234, message_id=44, role="avoid")],
    )
    assert created.state is JobState.SUBMITTED  # applied to the object too

    reloaded = await repo.get(created.id)
    assert reloaded is not None
    assert reloaded.state is JobState.SUBMITTED
    assert reloaded.request_id == "krea-2-large-text-to-image_abc"
    assert reloaded.submitted_at == reloaded.updated_at == clock.now
    assert (reloaded.refs[0].message_id, reloaded.refs[0].role) == (44, "avoid")
    assert reloaded.params == new.params
    assert reloaded == created

    assert await repo.get(created.id + 100) is None


async def test_update_refuses_unknown_columns(db: Database) -> None:
    repo = JobRepository(db)
    job = await repo.create(new_job())
    with pytest.raises(ValueError, match="params"):
        await repo.update(job, params=job.params)
    reloaded = await repo.get(job.id)
    assert reloaded is not None and reloaded.updated_at == job.updated_at


async def test_states_children_and_result_message(db: Database) -> None:
    repo = JobRepository(db)
    parent = await repo.create(new_job())
    child = await repo.create(new_job(parent_id=parent.id, variant="subtle"))
    done = await repo.create(new_job())
    await repo.update(done, state=JobState.COMPLETED, result_message_id=9001)

    active = await repo.in_states(ACTIVE_STATES)
    assert [j.id for j in active] == [parent.id, child.id]
    assert [j.id for j in await repo.children(parent.id)] == [child.id]
    found = await repo.by_result_message(9001)
    assert found is not None and found.id == done.id


async def test_reopening_the_file_keeps_rows(db_path: Path) -> None:
    first = await open_database(db_path)
    try:
        repo = JobRepository(first)
        job = await repo.create(new_job(guild_id=None))
        await repo.update(job, state=JobState.FAILED, error_kind="BadRequest", error_text="nope")
    finally:
        await first.close()

    second = await open_database(db_path)
    try:
        row = await second.fetchone("PRAGMA user_version")
        assert row is not None and row[0] == latest_migration()
        reloaded = await JobRepository(second).get(job.id)
    finally:
        await second.close()

    assert reloaded is not None
    assert reloaded.guild_id is None
    assert reloaded.state is JobState.FAILED
    assert (reloaded.error_kind, reloaded.error_text) == ("BadRequest", "nope")
    assert reloaded.params == job.params
    assert reloaded.refs == job.refs


async def test_a_locked_or_full_database_is_a_plain_storage_error(db_path: Path) -> None:
    import sqlite3

    from bot.storage.db import StorageError

    database = await open_database(db_path)
    other = sqlite3.connect(db_path, timeout=0.1)
    try:
        await database.connection.execute("PRAGMA busy_timeout=100")
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StorageError) as locked:
            await JobRepository(database).create(new_job())
        assert locked.value.kind == "locked" and "locked" in str(locked.value)
        other.rollback()
        job = await JobRepository(database).create(new_job())  # and it works again
        assert job.id >= 1
    finally:
        other.close()
        await database.close()
