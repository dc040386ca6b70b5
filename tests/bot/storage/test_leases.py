"""Leases, heartbeats and the shared breaker on both backends, with two or more "processes"
(each its own connection to the database, its own owner id): who holds a job, taking
over lapsed ones without ever splitting a batch or sharing a job, and the in-flight limit
counted across processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bot.pixazo import build_request
from bot.storage.db import Database, open_database
from bot.storage.jobs import Job, JobRepository, JobState, NewJob
from bot.storage.leases import Lease, LeaseStore

LEASE = 20.0


class Clock:
    """A clock the test moves by hand, shared by every process of a test."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Process:
    """One bot process's view of the database: its connection, repository and leases."""

    def __init__(self, db: Database, name: str, clock: Clock) -> None:
        self.db = db
        self.leases = LeaseStore(db, Lease(name, LEASE), clock)
        self.jobs = JobRepository(db, clock, lease=self.leases.lease)


def new_job(user_id: int = 333, guild_id: int = 111) -> NewJob:
    return NewJob(
        guild_id=guild_id,
        channel_id=222,
        user_id=user_id,
        params=build_request(prompt="a lighthouse", seed=1),
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def processes(target: Path | str, clock: Clock) -> AsyncIterator[list[Process]]:
    """Three processes on one database (on SQLite, three connections to one file)."""
    dbs = [await open_database(target) for _ in range(3)]
    try:
        yield [Process(db, f"host:{i}", clock) for i, db in enumerate(dbs)]
    finally:
        for db in dbs:
            await db.close()


async def owner_of(db: Database, job_id: int) -> str | None:
    row = await db.fetchone("SELECT owner FROM jobs WHERE id = ?", (job_id,))
    assert row is not None
    return row[0]


async def test_new_jobs_are_their_creators_until_the_lease_lapses(
    processes: list[Process], clock: Clock
) -> None:
    a, b, _ = processes
    jobs = [await a.jobs.create(new_job()) for _ in range(3)]

    assert [await owner_of(b.db, job.id) for job in jobs] == ["host:0"] * 3
    assert await b.leases.claim() == []  # A's lease runs
    clock.now += LEASE - 1
    assert await b.leases.claim() == []

    clock.now += 2  # A died: nobody renewed
    assert await b.leases.claim() == [job.id for job in jobs]
    assert [await owner_of(a.db, job.id) for job in jobs] == ["host:1"] * 3
    # A, back from a stall, renews nothing of them and may not send them.
    assert (await a.leases.beat()).renewed == set()
    assert await a.jobs.mark_submitting(jobs[0], member_limit=5) == "lost"
    assert await b.jobs.mark_submitting(jobs[0], member_limit=5) == "go"


async def test_a_heartbeat_keeps_the_jobs_and_counts_the_live_processes(
    processes: list[Process], clock: Clock
) -> None:
    a, b, c = processes
    for process in processes:
        await process.leases.register("")
    job = await a.jobs.create(new_job())
    finished = await a.jobs.create(new_job())
    await a.jobs.update(finished, state=JobState.COMPLETED)

    for _ in range(5):  # a heartbeat every quarter of a lease, for more than a lease
        clock.now += LEASE / 4
        beat = await a.leases.beat()
        await b.leases.beat()
        assert await c.leases.claim() == []
    assert beat.renewed == {job.id}  # finished jobs need no lease
    assert beat.live_processes == 2  # C has not beaten for more than a lease: presumed dead

    assert (await c.leases.beat()).live_processes == 3


async def test_a_batch_is_taken_whole_or_not_at_all(processes: list[Process], clock: Clock) -> None:
    a, b, _ = processes
    batch = await a.jobs.create_many([new_job() for _ in range(3)])
    single = await a.jobs.create(new_job())
    clock.now += LEASE + 1
    # One job of the batch is still held (its holder renewed it alone, say).
    await a.db.write(
        "UPDATE jobs SET lease_expires_at = ? WHERE id = ?", (clock.now + LEASE, batch[2].id)
    )

    assert await b.leases.claim() == [single.id]
    clock.now += LEASE + 1
    await b.leases.beat()  # B keeps what it holds
    assert await b.leases.claim() == [job.id for job in batch]


async def test_processes_claiming_at_once_share_out_the_jobs_without_overlap(
    processes: list[Process], clock: Clock
) -> None:
    dead = processes[0]
    created = [await dead.jobs.create(new_job(user_id=i)) for i in range(120)]
    created += await dead.jobs.create_many([new_job(user_id=999) for _ in range(4)])
    clock.now += LEASE + 1

    claims = await asyncio.gather(*(p.leases.claim() for p in processes[1:] for _ in range(3)))

    taken = [job_id for claim in claims for job_id in claim]
    assert sorted(taken) == [job.id for job in created]  # each exactly once
    holders = {await owner_of(dead.db, job.id) for job in created[-4:]}
    assert len(holders) == 1  # the batch has one holder


async def test_leaving_lets_another_process_take_the_jobs_at_once(
    processes: list[Process],
) -> None:
    a, b, _ = processes
    await a.leases.register("0,1")
    jobs = [await a.jobs.create(new_job()) for _ in range(2)]
    done = await a.jobs.create(new_job())
    await a.jobs.update(done, state=JobState.FAILED)

    assert await a.leases.leave() == 2
    assert await b.leases.claim() == [job.id for job in jobs]
    assert await a.db.fetchone("SELECT 1 FROM processes WHERE id = 'host:0'") is None


async def test_the_in_flight_limit_holds_across_processes(processes: list[Process]) -> None:
    a, b, c = processes
    mine = [await p.jobs.create(new_job(user_id=7)) for p in (a, b, c) for _ in range(4)]
    other = await a.jobs.create(new_job(user_id=8))
    owners = {job.id: p for p in (a, b, c) for job in mine if job.owner == p.leases.owner}
    assert len(owners) == len(mine)

    claims = await asyncio.gather(
        *(owners[job.id].jobs.mark_submitting(job, member_limit=3) for job in mine)
    )

    assert sorted(claims) == ["busy"] * 9 + ["go"] * 3
    rows = await a.db.fetchall("SELECT COUNT(*) FROM jobs WHERE state = 'submitting'")
    assert rows[0][0] == 3
    # Another member is not held up; the member's fourth goes once one of the three is done.
    assert await a.jobs.mark_submitting(other, member_limit=3) == "go"
    sent = [job for job, claim in zip(mine, claims, strict=True) if claim == "go"]
    waiting = next(job for job, claim in zip(mine, claims, strict=True) if claim == "busy")
    await owners[sent[0].id].jobs.update(sent[0], state=JobState.DELIVERING)
    assert await owners[waiting.id].jobs.mark_submitting(waiting, member_limit=3) == "go"


async def test_a_job_cancelled_elsewhere_is_not_sent_and_its_request_id_is_fenced(
    processes: list[Process], clock: Clock
) -> None:
    a, b, _ = processes
    job = await a.jobs.create(new_job())
    assert await b.jobs.cancel_pending(await reload(b, job))
    assert not await b.jobs.cancel_pending(await reload(b, job))
    assert await a.jobs.mark_submitting(job, member_limit=2) == "lost"

    sending = await a.jobs.create(new_job())
    assert await a.jobs.mark_submitting(sending, member_limit=2) == "go"
    clock.now += LEASE + 1
    assert await b.leases.claim() == [sending.id]  # A stalled past its lease mid-submit
    assert not await a.jobs.mark_submitted(sending, "req-late", None)
    row = await b.db.fetchone("SELECT state, request_id FROM jobs WHERE id = ?", (sending.id,))
    assert row is not None and (row[0], row[1]) == ("submitting", None)


async def reload(process: Process, job: Job) -> Job:
    found = await process.jobs.get(job.id)
    assert found is not None
    return found


async def test_holds_renews_one_job_only_while_it_is_this_process(
    processes: list[Process], clock: Clock
) -> None:
    a, b, _ = processes
    job = await a.jobs.create(new_job())
    assert await a.leases.holds(job.id)
    assert await b.leases.holder(job.id) == ("host:0", True)
    clock.now += LEASE + 1
    assert await b.leases.holder(job.id) == ("host:0", False)
    assert await b.leases.claim() == [job.id]
    assert not await a.leases.holds(job.id)
    await b.jobs.update(await reload(b, job), state=JobState.COMPLETED)
    assert await b.leases.holder(job.id) is None


async def test_the_shared_breaker_is_opened_and_closed_once(processes: list[Process]) -> None:
    a, b, c = processes
    opened = await asyncio.gather(*(p.leases.open_breaker("balance") for p in processes))
    assert sorted(opened) == [False, False, True]  # one process tells the admins
    shared = await c.leases.breaker()
    assert shared.reason == "balance"
    assert await b.leases.open_breaker("outage")  # another reason: worth telling again
    assert not await c.leases.open_breaker("outage")

    closed = await asyncio.gather(*(p.leases.close_breaker() for p in processes))
    assert sorted(closed) == [False, False, True]
    assert (await a.leases.breaker()).reason is None


async def test_one_process_at_a_time_holds_a_named_lock(
    processes: list[Process], backend: str
) -> None:
    a, b, _ = processes
    async with a.db.try_lock("kreabot", "command-sync") as first:
        async with b.db.try_lock("kreabot", "command-sync") as second:
            assert first
            # SQLite: one process uses the file, so every holder is the only one.
            assert second is (backend == "sqlite")
    async with b.db.try_lock("kreabot", "command-sync") as again:
        assert again


async def test_a_notification_reaches_every_listening_process(
    processes: list[Process], backend: str
) -> None:
    if backend == "sqlite":
        pytest.skip("nothing else shares an SQLite file: nothing to notify")
    a, b, c = processes
    heard: dict[str, list[str]] = {"b": [], "c": []}
    got = asyncio.Event()

    def hear(name: str) -> Callable[[str], None]:
        def callback(payload: str) -> None:
            heard[name].append(payload)
            if heard["b"] and heard["c"]:
                got.set()

        return callback

    await b.db.listen("kreabot_wake", hear("b"))
    await c.db.listen("kreabot_wake", hear("c"))
    await a.db.notify("kreabot_wake", "42")
    await asyncio.wait_for(got.wait(), 5.0)
    assert heard == {"b": ["42"], "c": ["42"]}
