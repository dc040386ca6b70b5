"""The job store on both backends (a real SQLite file, a real PostgreSQL database): round
trips, every query, the daily caps counted and inserted atomically, reopening."""

from __future__ import annotations

import asyncio
from importlib import resources
from pathlib import Path

import pytest

from bot.pixazo import build_request
from bot.storage.db import Database, open_database
from bot.storage.jobs import (
    ACTIVE_STATES,
    FINAL_STATES,
    Job,
    JobRepository,
    JobState,
    NewJob,
    Reference,
    UsageRow,
)
from bot.storage.sqlite import SqliteDatabase, migrate, open_sqlite

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


async def test_sqlite_migrations_set_user_version_and_wal(tmp_path: Path) -> None:
    db = await open_sqlite(tmp_path / "kreabot.sqlite3")
    try:
        row = await db.fetchone("PRAGMA user_version")
        assert row is not None and row[0] == latest_migration() >= 1
        assert await db.schema_version() == latest_migration()
        row = await db.fetchone("PRAGMA journal_mode")
        assert row is not None and row[0] == "wal"
        rows = await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
        assert "jobs" in {r[0] for r in rows}
        assert await migrate(db.connection) == latest_migration()  # applying again: a no-op
    finally:
        await db.close()


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


async def test_reopening_the_database_keeps_rows(target: Path | str) -> None:
    first = await open_database(target)
    try:
        repo = JobRepository(first)
        job = await repo.create(new_job(guild_id=None))
        await repo.update(job, state=JobState.FAILED, error_kind="BadRequest", error_text="nope")
    finally:
        await first.close()

    second = await open_database(target)
    try:
        assert await second.schema_version() == latest_migration()
        reloaded = await JobRepository(second).get(job.id)
    finally:
        await second.close()

    assert reloaded is not None
    assert reloaded.guild_id is None
    assert reloaded.state is JobState.FAILED
    assert (reloaded.error_kind, reloaded.error_text) == ("BadRequest", "nope")
    assert reloaded.params == job.params
    assert reloaded.refs == job.refs


# -- every query, on both backends ---------------------------------------------------------


class CapReached(Exception):
    """What the test's admit() raises to refuse."""


def cap(limit: int, asked: int = 1) -> object:
    """An admit() allowing ``limit`` images per server."""

    def admit(member_used: int, server_used: int) -> None:
        if server_used + asked > limit:
            raise CapReached(server_used)

    return admit


def assert_types(job: Job) -> None:
    """The same Python types for the same columns, whichever backend read them."""
    assert type(job.id) is int
    assert job.guild_id is None or type(job.guild_id) is int
    assert type(job.channel_id) is int and type(job.user_id) is int
    assert type(job.created_at) is float and type(job.updated_at) is float
    assert job.token_expires_at is None or type(job.token_expires_at) is float
    assert type(job.filesize_limit) is int and type(job.batch_size) is int
    assert job.batch_id is None or type(job.batch_id) is int


async def test_rows_come_back_with_the_same_types(db: Database) -> None:
    repo = JobRepository(db, clock=Clock())
    created = await repo.create(new_job(token_expires_at=1_700_000_900))
    await repo.update(created, submitted_at=1_700_000_001, message_id=2**62, batch_index=0)

    reloaded = await repo.get(created.id)
    assert reloaded is not None
    assert_types(reloaded)
    assert reloaded.message_id == 2**62 and type(reloaded.message_id) is int  # a snowflake
    assert reloaded.submitted_at == 1_700_000_001.0 and type(reloaded.submitted_at) is float
    assert reloaded.token_expires_at == 1_700_000_900.0
    assert type(reloaded.token_expires_at) is float
    assert type(reloaded.params.seed) is int


async def test_create_many_makes_a_batch_sharing_the_first_id(db: Database) -> None:
    repo = JobRepository(db, clock=Clock())
    jobs = await repo.create_many([new_job(), new_job(), new_job()])
    loose = await repo.create_many([new_job(), new_job()], grouped=False)

    first = jobs[0].id
    assert [j.batch_id for j in jobs] == [first] * 3
    assert [j.batch_index for j in jobs] == [0, 1, 2]
    assert [j.batch_size for j in jobs] == [3, 3, 3]
    assert [j.id for j in await repo.batch(first)] == [j.id for j in jobs]
    assert await repo.batch(first) == jobs
    for job in await repo.batch(first):
        assert_types(job)
    assert [(j.batch_id, j.batch_index, j.batch_size) for j in loose] == [(None, None, 1)] * 2
    reloaded = [await repo.get(j.id) for j in loose]
    assert [(j.batch_id, j.batch_size) for j in reloaded if j] == [(None, 1)] * 2
    single = await repo.create(new_job())
    assert (single.batch_id, single.batch_index, single.batch_size) == (None, None, 1)
    assert await repo.create_many([]) == []


async def test_create_many_with_admit_counts_then_inserts_or_refuses(db: Database) -> None:
    clock = Clock()
    repo = JobRepository(db, clock=clock)
    seen: list[tuple[int, int]] = []

    def admit(member_used: int, server_used: int) -> None:
        seen.append((member_used, server_used))
        if server_used >= 4:
            raise CapReached(server_used)

    await repo.create_many([new_job(), new_job()], admit=admit)
    await repo.create(new_job(user_id=444))
    await repo.create_many([new_job()], admit=admit)
    with pytest.raises(CapReached):
        await repo.create_many([new_job(), new_job()], admit=admit)

    assert seen == [(0, 0), (2, 3), (3, 4)]
    assert len(await repo.in_states([JobState.PENDING])) == 4  # the refused batch: none
    # ``since``: only images asked for from then on count.
    clock.now += 86_400
    await repo.create_many([new_job()], admit=admit, since=clock.now - 10)
    assert seen[-1] == (0, 0)


async def test_what_counts_against_the_daily_caps(db: Database) -> None:
    clock = Clock()
    repo = JobRepository(db, clock=clock)
    counted = await repo.create(new_job())
    cancelled = await repo.create(new_job())
    await repo.update(cancelled, state=JobState.CANCELLED)
    refused = await repo.create(new_job())  # failed before reaching the gateway
    await repo.update(refused, state=JobState.FAILED, error_kind="BadRequest")
    charged = await repo.create(new_job())  # failed after the gateway took it
    await repo.update(charged, state=JobState.FAILED, request_id="r-1")
    await repo.create(new_job(user_id=444))
    await repo.create(new_job(guild_id=999))
    await repo.create(new_job(guild_id=None))
    await repo.create(new_job(guild_id=None, user_id=444))

    assert await repo.requested_since(111, 0.0) == 3
    assert await repo.requested_since(111, 0.0, 333) == 2
    assert await repo.requested_since(111, clock.now + 1) == 0
    assert await repo.requested_since(None, 0.0) == 2  # direct messages: guild_id NULL
    assert await repo.requested_since(None, 0.0, 444) == 1
    assert counted.id < charged.id


async def test_update_set_message_and_complete(db: Database) -> None:
    clock = Clock()
    repo = JobRepository(db, clock=clock)
    jobs = await repo.create_many([new_job(), new_job()])

    clock.now += 1
    await repo.set_message(jobs, 7001)
    assert [j.message_id for j in jobs] == [7001, 7001]
    assert [j.updated_at for j in jobs] == [clock.now] * 2
    clock.now += 1
    await repo.complete([j.id for j in jobs], 7002)
    await repo.complete([], 7003)  # nothing to do

    for job in jobs:
        reloaded = await repo.get(job.id)
        assert reloaded is not None
        assert reloaded.state is JobState.COMPLETED
        assert (reloaded.message_id, reloaded.result_message_id) == (7001, 7002)
        assert reloaded.delivered_at == reloaded.updated_at == clock.now
    found = await repo.by_result_message(7002)
    assert found is not None and found.id == jobs[0].id  # the lowest id first
    by_own = await repo.by_result_message(7001)
    assert by_own is not None and by_own.id == jobs[0].id
    assert await repo.by_result_message(7004) is None

    clock.now += 1
    await repo.update(jobs[1], state=JobState.FAILED, error_kind=None, error_text="it's 'quoted'?")
    reloaded = await repo.get(jobs[1].id)
    assert reloaded is not None and reloaded.error_text == "it's 'quoted'?"
    assert reloaded.error_kind is None


async def test_in_states_children_for_member_and_count_by_state(db: Database) -> None:
    repo = JobRepository(db, clock=Clock())
    parent = await repo.create(new_job())
    child = await repo.create(new_job(parent_id=parent.id, variant="strong"))
    other = await repo.create(new_job(user_id=444))
    direct = await repo.create(new_job(guild_id=None))
    await repo.update(other, state=JobState.PROCESSING)
    await repo.update(child, state=JobState.COMPLETED)

    assert [j.id for j in await repo.in_states([JobState.PENDING])] == [parent.id, direct.id]
    assert [j.id for j in await repo.in_states(ACTIVE_STATES)] == [
        parent.id,
        other.id,
        direct.id,
    ]
    assert await repo.in_states([]) == []
    assert [j.id for j in await repo.in_states(FINAL_STATES)] == [child.id]
    assert [(j.id, j.variant) for j in await repo.children(parent.id)] == [(child.id, "strong")]
    assert await repo.children(child.id) == []
    assert [j.id for j in await repo.for_member(111, 333)] == [child.id, parent.id]
    assert [j.id for j in await repo.for_member(111, 333, limit=1)] == [child.id]
    assert [j.id for j in await repo.for_member(None, 333)] == [direct.id]
    counts = await repo.count_by_state()
    assert counts == {"pending": 2, "processing": 1, "completed": 1}
    assert all(type(k) is str and type(v) is int for k, v in counts.items())


async def test_usage_per_member_and_utc_day(db: Database) -> None:
    clock = Clock()
    repo = JobRepository(db, clock=clock)
    day_one = 1_700_006_399.5  # 2023-11-14 23:59:59.5 UTC
    day_two = day_one + 1.0  # 2023-11-15 00:00:00.5 UTC

    async def submitted(at: float, user_id: int = 333, **changes: object) -> None:
        job = await repo.create(new_job(user_id=user_id))
        await repo.update(job, request_id=f"r-{job.id}", submitted_at=at, **changes)

    await submitted(day_one)
    await submitted(day_one, state=JobState.FAILED, error_kind="error")
    await submitted(day_one, user_id=444, state=JobState.INTERRUPTED)
    await submitted(day_two, state=JobState.COMPLETED)
    await repo.create(new_job())  # never submitted: not in /usage
    not_sent = await repo.create(new_job())
    await repo.update(not_sent, submitted_at=day_two)  # no request id: not charged
    other = await repo.create(new_job(guild_id=999))
    await repo.update(other, request_id="r-x", submitted_at=day_one)

    rows = await repo.usage(111, since=0.0)
    assert rows == [
        UsageRow(333, "2023-11-14", 2, 1, 1),
        UsageRow(444, "2023-11-14", 1, 1, 0),
        UsageRow(333, "2023-11-15", 1, 0, 0),
    ]
    assert await repo.usage(111, since=day_two) == [UsageRow(333, "2023-11-15", 1, 0, 0)]
    assert await repo.usage(12345, since=0.0) == []


async def test_recent_generation_seconds_newest_first(db: Database) -> None:
    repo = JobRepository(db, clock=Clock())
    for seconds in (3.5, 7.25, 11.0):
        job = await repo.create(new_job())
        await repo.update(
            job, state=JobState.COMPLETED, submitted_at=100.0, finished_at=100.0 + seconds
        )
    await repo.create(new_job())  # not finished: not counted

    found = await repo.recent_generation_seconds(2)
    assert found == [11.0, 7.25]
    assert all(type(s) is float for s in found)


async def test_prune_guild_deletes_only_old_finished_jobs_of_that_server(db: Database) -> None:
    clock = Clock()
    repo = JobRepository(db, clock=clock)
    old_done = await repo.create(new_job())
    old_running = await repo.create(new_job())
    elsewhere = await repo.create(new_job(guild_id=999))
    await repo.update(old_done, state=JobState.COMPLETED)
    await repo.update(elsewhere, state=JobState.COMPLETED)
    await repo.update(old_running, state=JobState.PROCESSING)
    clock.now += 100
    variation = await repo.create(new_job(parent_id=old_done.id))
    await repo.update(variation, state=JobState.FAILED)

    assert await repo.prune_guild(111, before=clock.now) == 1
    assert await repo.get(old_done.id) is None
    assert await repo.get(old_running.id) is not None
    assert await repo.get(elsewhere.id) is not None
    survivor = await repo.get(variation.id)
    assert survivor is not None and survivor.parent_id is None  # ON DELETE SET NULL
    assert await repo.prune_guild(111, before=clock.now + 1) == 1
    assert await repo.prune_guild(111, before=clock.now + 1) == 0


# -- the caps are atomic across connections ------------------------------------------------


async def test_concurrent_admissions_never_exceed_the_cap(target: Path | str) -> None:
    """Ten requests at once, from two database handles (as from two processes: on
    PostgreSQL each has its own pool, so the requests run on up to ten connections), against
    a cap of three images: exactly three jobs are made, the seven others refused."""
    first, second = await open_database(target), await open_database(target)
    try:
        repos = [JobRepository(first), JobRepository(second)]

        async def request(number: int) -> str:
            try:
                await repos[number % 2].create_many([new_job(user_id=number)], admit=cap(3))
            except CapReached:
                return "refused"
            return "made"

        outcomes = await asyncio.gather(*(request(n) for n in range(10)))
        other_server = await repos[0].create_many([new_job(guild_id=999)], admit=cap(3))

        assert sorted(outcomes) == ["made"] * 3 + ["refused"] * 7
        assert await repos[0].requested_since(111, 0.0) == 3
        assert len(await repos[1].in_states([JobState.PENDING])) == 4
        assert len(other_server) == 1  # another server has a cap of its own
    finally:
        await first.close()
        await second.close()


async def test_a_locked_sqlite_database_is_a_plain_storage_error(tmp_path: Path) -> None:
    import sqlite3

    from bot.storage.db import StorageError, open_database

    path = tmp_path / "locked.sqlite3"
    database = await open_database(path)
    other = sqlite3.connect(path, timeout=0.1)
    try:
        assert isinstance(database, SqliteDatabase)
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


async def test_a_retry_is_claimed_once_and_a_failed_job_reopened_once(db: Database) -> None:
    from bot.storage.jobs import AlreadyRetried

    repo = JobRepository(db)
    parent = await repo.create(new_job())
    await repo.update(parent, state=JobState.FAILED, error_kind="uncertain")
    (retry,) = await repo.create_many([new_job()], retry_of=parent.id)
    with pytest.raises(AlreadyRetried):
        await repo.create_many([new_job()], retry_of=parent.id)
    claimed = await repo.get(parent.id)
    assert claimed is not None and claimed.retried_by == retry.id
    assert await repo.reopen(parent, JobState.SUBMITTED)
    assert not await repo.reopen(parent, JobState.SUBMITTED)  # no longer failed
    reopened = await repo.get(parent.id)
    assert reopened is not None and reopened.state is JobState.SUBMITTED
