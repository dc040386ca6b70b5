"""The cluster service with real runners, each "process" its own connection pool to one
real PostgreSQL database (and the fake gateway on loopback): the poll budget split between
the live processes, the breaker followed, a job cancelled elsewhere dropped, a lapsed job
taken over and one shared submit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from bot.cluster import Cluster
from bot.pixazo import PixazoClient, build_request
from bot.polling import PollSchedule
from bot.runner import JobRunner
from bot.storage.db import open_database
from bot.storage.jobs import Job, JobRepository, JobState, NewJob
from bot.storage.leases import Lease, LeaseStore
from fake_pixazo import FakePixazo
from tests.bot.test_runner import API_KEY, Observer

FAST = PollSchedule(first=0.01, interval=0.01, factor=1.0, cap=0.01)
POLLS = 12.0
LEASE = 2.0


@dataclass
class Node:
    """One bot process's services around its runner."""

    name: str
    leases: LeaseStore
    jobs: JobRepository
    runner: JobRunner
    observer: Observer
    cluster: Cluster


async def eventually(check: Callable[[], Any], within: float = 5.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not (result := check()):
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)
    return result


@pytest.fixture
async def nodes(postgres_url: str) -> AsyncIterator[Callable[..., Any]]:
    async with AsyncExitStack() as stack:
        fake = await stack.enter_async_context(
            FakePixazo(api_key=API_KEY, queued_seconds=0.01, processing_seconds=0.03)
        )
        session = await stack.enter_async_context(aiohttp.ClientSession())
        made: list[Node] = []

        async def node(name: str, **runner_options: Any) -> Node:
            db = await open_database(postgres_url)
            stack.push_async_callback(db.close)
            leases = LeaseStore(db, Lease(name, LEASE))
            jobs = JobRepository(db, lease=leases.lease)
            observer = Observer()
            client = PixazoClient(session, API_KEY, base_url=fake.base_url)
            runner_options.setdefault("poll_schedule", FAST)
            runner_options.setdefault("retry_wait", 0.01)
            runner = JobRunner(
                jobs, client, observer, polls_per_second=POLLS, leases=leases, **runner_options
            )
            cluster = Cluster(
                db, leases, jobs, runner, polls_per_second=POLLS, exclusive=False, scan_seconds=0.1
            )
            created = Node(name, leases, jobs, runner, observer, cluster)
            made.append(created)
            return created

        node.fake = fake  # type: ignore[attr-defined]
        try:
            yield node
        finally:
            for created in made:
                await created.cluster.stop()
                await created.runner.close(grace=0.2)


def new_job(prompt: str = "a lighthouse", user_id: int = 7) -> NewJob:
    return NewJob(
        guild_id=1, channel_id=2, user_id=user_id, params=build_request(prompt=prompt, seed=1)
    )


async def test_the_poll_budget_is_split_between_the_live_processes(
    nodes: Callable[..., Any],
) -> None:
    a, b, c = [await nodes(name) for name in ("a", "b", "c")]
    for node in (a, b, c):
        await node.cluster.start()
    await eventually(lambda: all(n.runner.polls.rate == POLLS / 3 for n in (a, b, c)), 3.0)

    await c.cluster.stop()
    await c.cluster.leave()  # gone: the others poll at half the budget each
    await eventually(lambda: a.runner.polls.rate == b.runner.polls.rate == POLLS / 2, 3.0)
    assert a.cluster.live_processes == 2


async def test_an_empty_wallet_seen_by_one_process_pauses_the_others_and_is_told_once(
    nodes: Callable[..., Any],
) -> None:
    fake = nodes.fake  # type: ignore[attr-defined]
    a, b = await nodes("a"), await nodes("b")
    await a.cluster.start()
    await b.cluster.start()
    fake.set_balance(0)
    job = await a.jobs.create(new_job())
    a.runner.start(job)

    await eventually(lambda: a.observer.pauses == ["balance"])
    await eventually(lambda: b.runner.breaker.reason == "balance", 3.0)
    # B sends nothing while paused, and tells nobody: A did.
    waiting = await b.jobs.create(new_job("waits", user_id=8))
    b.runner.start(waiting)
    await asyncio.sleep(0.3)
    assert [r.status for r in fake.submits()] == [402]
    assert b.observer.pauses == []

    fake.set_balance(None)
    b.runner.breaker.next_probe_at = 0  # B's probe is due now
    b.runner.admission.pump()
    await eventually(lambda: b.observer.results, 5.0)
    await eventually(lambda: a.runner.breaker.reason is None, 3.0)  # A follows B's success
    await eventually(lambda: a.observer.results, 5.0)
    assert sorted(r.status for r in fake.submits()) == [202, 202, 402]


async def test_a_job_cancelled_by_another_process_is_dropped_and_never_sent(
    nodes: Callable[..., Any],
) -> None:
    fake = nodes.fake  # type: ignore[attr-defined]
    a = await nodes("a", max_concurrent=1)
    b = await nodes("b")
    await a.cluster.start()
    fake.manual = True
    first = await a.jobs.create(new_job("first"))
    queued = await a.jobs.create(new_job("queued", user_id=8))
    a.runner.start(first)
    a.runner.start(queued)  # waits in line behind the first
    await eventually(lambda: a.runner.position(queued.id) == 1)

    assert await b.runner.cancel(await reload(b, queued))  # /jobs → Cancel, on process B

    await eventually(lambda: queued.id not in a.runner.running_ids(), 3.0)
    fake.finish(next(iter(fake.jobs)))
    await eventually(lambda: a.observer.results, 5.0)
    assert [r.body["prompt"] for r in fake.submits()] == ["first"]
    assert (await reload(a, queued)).state is JobState.CANCELLED


async def test_a_lapsed_job_is_taken_over_and_finished_once(nodes: Callable[..., Any]) -> None:
    fake = nodes.fake  # type: ignore[attr-defined]
    dead = await nodes("dead")
    fake.manual = True
    job = await dead.jobs.create(new_job())
    dead.runner.start(job)
    await eventually(lambda: fake.jobs)
    await eventually(lambda: dead.runner.local_state(job.id) is JobState.PROCESSING)
    await dead.runner.close(grace=0.1)  # the process "dies": no lease released, no heartbeat

    heir = await nodes("heir")
    await heir.cluster.start()  # the lease still runs: nothing to take yet
    assert heir.runner.running_ids() == []
    await eventually(lambda: heir.runner.running_ids() == [job.id], LEASE + 2)
    fake.finish(next(iter(fake.jobs)))
    await eventually(lambda: heir.observer.results, 5.0)

    assert len(fake.submits()) == 1
    row = await reload(heir, job)
    assert row.state is JobState.COMPLETED and row.owner == "heir"
    assert heir.cluster.taken_over == 1


async def reload(node: Node, job: Job) -> Job:
    found = await node.jobs.get(job.id)
    assert found is not None
    return found
