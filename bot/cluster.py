"""This process among the others sharing its database: its leases and heartbeat, taking
over the jobs of a process that died, the shared breaker and poll budget, and webhooks for
jobs another process runs.

Every process runs the same :class:`Cluster`. On SQLite it is the only process on its file
(``exclusive``): on start it takes every unfinished job at once, as a restarted bot always
did. On PostgreSQL it takes, on start and then every ``scan`` seconds, the jobs whose
lease lapsed: their process died (a process that stops cleanly lets its leases go, so its
jobs are taken at once). Its heartbeat, every quarter of a lease:

* renews its jobs' leases and its own row in ``processes``;
* stops the jobs that are not its own any more (cancelled, or taken over after this
  process stalled past its lease);
* follows the breaker another process opened or closed;
* splits ``STATUS_POLLS_PER_SECOND`` between the live processes.

A Pixazo webhook may reach any process (behind one load balancer): the job's owner is
woken through PostgreSQL's ``LISTEN``/``NOTIFY``, or, when the job has no live owner, the
receiving process takes it over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable

from bot.metrics import Metrics
from bot.runner import JobRunner
from bot.storage.db import Database, StorageError
from bot.storage.jobs import Job, JobRepository, JobState
from bot.storage.leases import LeaseStore

log = logging.getLogger(__name__)

#: The notification channel that wakes a job's owner.
WAKE_CHANNEL = "kreabot_wake"
#: Seconds between two looks for jobs whose lease lapsed (at most).
SCAN_SECONDS = 1.0
#: Added to Discord's identify interval between processes (the identify leaves a moment
#: after its turn is written).
IDENTIFY_MARGIN = 0.25


def process_id() -> str:
    """A name for this process in the database: host, pid and a random part (a restarted
    process, or one in a container reusing pids, is never mistaken for its predecessor)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


class Cluster:
    """This process's part in sharing the work with the others on its database."""

    def __init__(
        self,
        db: Database,
        leases: LeaseStore,
        repo: JobRepository,
        runner: JobRunner,
        *,
        polls_per_second: float,
        shards: str = "",
        exclusive: bool,
        scan_seconds: float = SCAN_SECONDS,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._metrics = metrics
        self._db = db
        self.leases = leases
        self._repo = repo
        self._runner = runner
        self._polls_per_second = polls_per_second
        self._shards = shards
        self.exclusive = exclusive
        self._heartbeat = leases.lease.seconds / 4
        self._scan = min(scan_seconds, self._heartbeat)
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        #: Processes alive at the last heartbeat (this one included).
        self.live_processes = 1
        #: Jobs this process took over from others since it started.
        self.taken_over = 0

    @property
    def owner(self) -> str:
        """This process's id."""
        return self.leases.owner

    async def start(self) -> list[Job]:
        """Join: register, listen for wake-ups, take the jobs that need a process (every
        unfinished one when exclusive) and start the heartbeat. Returns the jobs started."""
        if self.exclusive:
            await self._db.hold_alone()  # a second process on the file would steal its jobs
        await self.leases.register(self._shards)
        if not self.exclusive:
            await self._db.listen(WAKE_CHANNEL, self._on_wake)
        started = await self._take(everything=self.exclusive)
        self._task = asyncio.create_task(self._run(), name="cluster-heartbeat")
        return started

    async def stop(self) -> None:
        """Stop the heartbeat (call before the runner closes)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def leave(self) -> None:
        """Let every lease go (call once the runner closed): the jobs are taken at once by
        another process, or by this one when it starts again."""
        try:
            released = await self.leases.leave()
        except Exception as exc:  # closing goes on: the leases lapse instead
            log.warning("could not release this process's jobs (they lapse instead): %r", exc)
            return
        if released:
            log.info("released %d unfinished job(s) for the next process", released)

    async def identify_turn(self, bucket: int, interval: float) -> None:
        """Wait until this process may identify a shard of ``bucket`` (``shard_id %
        max_concurrency``): Discord allows one per bucket every ``interval`` seconds, for
        the whole bot, so the processes take turns through the database."""
        if self.exclusive:
            return
        while True:
            try:
                wait = await self.leases.identify_slot(bucket, interval + IDENTIFY_MARGIN)
            except StorageError as exc:
                log.warning("identifying without the other processes' turns: %s", exc)
                return
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    async def wake(self, job_id: int) -> bool:
        """A webhook for ``job_id`` arrived here: poll it now, wherever it runs. False when
        no process has it to wake (it is finished, or not known)."""
        if self._runner.wake(job_id):
            return True
        held = await self.leases.holder(job_id)
        if held is None:
            return False
        owner, live = held
        if owner == self.owner:
            return False  # ours, and past polling (its image is being posted)
        if owner is not None and live:
            await self._db.notify(WAKE_CHANNEL, str(job_id))
            return True
        # Its process is gone: take it (and whatever else lapsed) now.
        started = await self._take()
        return any(job.id == job_id for job in started)

    # -- the loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        next_beat = 0.0
        while True:
            try:
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self._heartbeat
                    await self._beat()
                if not self.exclusive:
                    await self._take()
            except asyncio.CancelledError:
                raise
            except StorageError as exc:
                log.warning("cluster heartbeat: the database did not answer: %s", exc)
            except Exception:
                log.exception("cluster heartbeat failed")
            await asyncio.sleep(self._heartbeat if self.exclusive else self._scan)

    async def _beat(self) -> None:
        beat = await self.leases.beat()
        self.live_processes = max(1, beat.live_processes)
        self._runner.polls.set_rate(self._polls_per_second / self.live_processes)
        running = [i for i in self._runner.running_ids() if i not in beat.renewed]
        if running:
            await self._drop_lost(running)
        shared = await self.leases.breaker()
        self._runner.follow_breaker(shared.reason, shared.changed_at)

    async def _drop_lost(self, job_ids: list[int]) -> None:
        """Stop running jobs that were taken over or cancelled elsewhere."""
        lost = []
        for job_id, (owner, state) in (await self.leases.owners(job_ids)).items():
            local = self._runner.local_state(job_id)
            taken = owner is not None and owner != self.owner and state != "completed"
            cancelled = state == JobState.CANCELLED.value and local is JobState.PENDING
            if taken or cancelled:
                lost.append(job_id)
        for job_id in self._runner.abandon(lost):
            log.warning("job %s: dropped here, it is not this process's any more", job_id)

    async def _take(self, *, everything: bool = False) -> list[Job]:
        """Claim the jobs that need a process and run them."""
        claimed = await self.leases.claim(everything=everything)
        if not claimed:
            return []
        running = set(self._runner.running_ids())
        jobs = [job for job in await self._repo.many(claimed) if job.id not in running]
        started = await self._runner.adopt(jobs)
        if not everything:
            self.taken_over += len(jobs)
            if self._metrics is not None:
                self._metrics.jobs_taken_over.inc(len(jobs))
            log.info("took over %d job(s) whose process stopped", len(jobs))
        return started

    def _on_wake(self, payload: str) -> None:
        if payload.isdigit():
            self._runner.wake(int(payload))
