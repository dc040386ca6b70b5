"""The job runner: turns stored jobs into results. It knows nothing of slash commands.

Each job runs in its own task: wait its turn (:mod:`bot.admission`), submit (paid, never
blindly repeated), poll under a shared rate limit, download once, hand the bytes to a
:class:`~bot.events.JobObserver` (the Discord side), and persist every transition so a
restart can pick the job up again. All waiting lives here: the poll schedule, the shared
pause after a 429, backoff after errors; the Pixazo client makes one request per call.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import datetime
from typing import Protocol, TypeVar

from bot.admission import BALANCE, OUTAGE, UNAUTHORIZED, Admission, Breaker, Waiter
from bot.events import DeliveryRefused, Failure, JobObserver, Progress, Published, Stage
from bot.logs import bind
from bot.metrics import Metrics
from bot.pixazo import (
    BadRequest,
    ConnectionFailed,
    DownloadedMedia,
    DownloadRejected,
    InsufficientBalance,
    JobFailed,
    PixazoClient,
    PixazoError,
    PixazoTimeout,
    RateLimited,
    ServerError,
    StatusResponse,
    Unauthorized,
    UnexpectedResponse,
)
from bot.polling import Backoff, PollPlanner, PollSchedule
from bot.ratelimit import TokenBucket
from bot.storage.db import StorageError
from bot.storage.jobs import ACTIVE_STATES, Job, JobRepository, JobState
from bot.storage.leases import LeaseStore

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What a FAILED job's error says when the model's content filter refused it. Everyday
#: words ("content", "policy") alone are not enough: "content too long" is no refusal.
REFUSAL = re.compile(
    r"\b(nsfw|safety|unsafe|flagged|moderat\w*|inappropriate|prohibited|explicit"
    r"|content[ _-](?:policy|filter|violation|moderation)|(?:policy|safety)[ _-]violation)\b",
    re.IGNORECASE,
)
#: How often a waiting job refreshes its place in line.
QUEUE_REFRESH_SECONDS = 2.0
#: States in which a webhook can make a job poll (its wake event is consumed by the poll).
WAKEABLE_STATES = (JobState.SUBMITTING, JobState.SUBMITTED, JobState.PROCESSING)
#: A waiting job's changed note is sent again on every refresh for this long: the observer
#: rate-limits its edits and may skip a note, and it shows only what it is sent.
QUEUE_RESEND_SECONDS = 5.0
#: Attempts to download and post a finished image before the job fails.
DELIVERY_ATTEMPTS = 4

PAUSED_NOTES = {
    BALANCE: (
        "the server's Pixazo balance is empty. Ask a server admin to top it up; "
        "this job continues on its own"
    ),
    OUTAGE: "the image service is failing; this job continues on its own when it recovers",
    UNAUTHORIZED: (
        "the image service refused this bot's key. A server admin has been told; "
        "this job continues on its own once it is fixed"
    ),
}
#: What a job that gave up waiting for an open breaker says, by the breaker's reason.
GAVE_UP = {BALANCE: "balance", UNAUTHORIZED: "unauthorized"}


class MemberLimits(Protocol):
    """How many jobs of a member may be at the gateway at once (the fair-use service)."""

    async def member_in_flight(self, guild_id: int | None) -> int:
        """The in-flight limit for members of ``guild_id``."""
        ...


def classify_job_failure(exc: JobFailed) -> Failure:
    """FAILED with a safety reason is a refusal; ERROR is the gateway's own fault."""
    if exc.job_status == "FAILED" and REFUSAL.search(exc.error or ""):
        return Failure("refused", exc.error or "")
    if exc.job_status == "ERROR":
        return Failure("error", exc.error or "", retryable=True)
    return Failure("failed", exc.error or "", retryable=True)


class _Requeue(Exception):
    """The submit was certainly not taken; the job goes back in line."""


class JobRunner:
    """Runs jobs concurrently under a global limit, per-member limits and a breaker."""

    def __init__(
        self,
        repo: JobRepository,
        client: PixazoClient,
        observer: JobObserver,
        *,
        limits: MemberLimits | None = None,
        max_concurrent: int = 20,
        polls_per_second: float = 10.0,
        job_timeout: float = 600.0,
        max_download_bytes: int = 50 * 1024 * 1024,
        poll_schedule: PollSchedule | None = None,
        poll_planner: PollPlanner | None = None,
        retry_wait: float = 5.0,
        breaker: Breaker | None = None,
        queue_give_up: float = 6 * 3600.0,
        webhook_url_for: Callable[[int], str] | None = None,
        webhook_poll_schedule: PollSchedule | None = None,
        metrics: Metrics | None = None,
        leases: LeaseStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        #: Shared with the other processes on the database: job leases and the breaker.
        self.leases = leases
        self.client = client
        self.observer = observer
        self.breaker = breaker or Breaker()
        self.admission = Admission(max_concurrent, self.breaker)
        self.polls = TokenBucket(polls_per_second)
        self._limits = limits
        self._job_timeout = job_timeout
        self._max_download = max_download_bytes
        self._schedule = poll_schedule or PollSchedule()
        self._planner = poll_planner
        self._retry_wait = retry_wait
        self._backoff = Backoff(base_delay=retry_wait / 2, max_delay=max(retry_wait, 30.0))
        self._queue_give_up = queue_give_up
        self._webhook_url_for = webhook_url_for
        self._webhook_schedule = webhook_poll_schedule or PollSchedule(30.0, 30.0, 1.0, 30.0)
        self.metrics = metrics
        self._clock = clock
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._jobs: dict[int, Job] = {}
        self._wakes: dict[int, asyncio.Event] = {}
        self._gateway_done: dict[int, datetime | None] = {}
        self._placed: dict[int, Waiter] = {}
        #: When the local breaker was opened by this process's own observation (wall clock).
        self._breaker_seen_at = 0.0
        self._closing = False
        self._probe_task: asyncio.Task[None] | None = None

    # -- public ------------------------------------------------------------------

    def start(self, job: Job) -> None:
        """Run ``job`` in the background (no-op if it already runs)."""
        if self._closing or job.id in self._tasks:
            return
        if job.state is JobState.PENDING and not self._closing:
            # Its place in line is taken now, in the order jobs start (by id), not when its
            # task first runs: the tasks' first reads may finish in any order.
            self._placed[job.id] = self.admission.enqueue(job.id, (job.guild_id, job.user_id), 1)
        task = asyncio.create_task(self._guarded(job), name=f"job-{job.id}")
        self._tasks[job.id] = task
        self._jobs[job.id] = job
        task.add_done_callback(functools.partial(self._forget, job.id))

    def _forget(self, job_id: int, task: asyncio.Task[None]) -> None:
        if self._tasks.get(job_id) is task:
            del self._tasks[job_id]
            self._jobs.pop(job_id, None)
            self._wakes.pop(job_id, None)
            self._gateway_done.pop(job_id, None)
            self._placed.pop(job_id, None)

    def running(self) -> int:
        """How many jobs have a task."""
        return len(self._tasks)

    def position(self, job_id: int) -> int:
        """A waiting job's 1-based place in line (0 when it is not waiting)."""
        return self.admission.position(job_id)

    def wake(self, job_id: int) -> bool:
        """Poll a running job now (a webhook arrived). False when the job is not running or
        is past polling (a duplicate webhook while the result is being posted)."""
        job = self._jobs.get(job_id)
        if job_id not in self._tasks or job is None or job.state not in WAKEABLE_STATES:
            return False
        self._wakes.setdefault(job_id, asyncio.Event()).set()
        return True

    async def cancel(self, job: Job) -> bool:
        """Cancel a job that is still waiting in line (never sent, so never paid), whichever
        process holds it: a job of another process is cancelled in the database, and that
        process drops it at its next heartbeat (its submit is refused meanwhile)."""
        job = self._jobs.get(job.id, job)
        if job.state is not JobState.PENDING:
            return False
        if not await self.repo.cancel_pending(job):
            return False
        self.admission.withdraw(job.id)
        task = self._tasks.get(job.id)
        if task is not None:
            task.cancel()
        if self.metrics is not None:
            self.metrics.job_finished(JobState.CANCELLED)
        return True

    def abandon(self, job_ids: Iterable[int]) -> list[int]:
        """Stop running jobs that are not this process's any more (another process took
        them over, or they were cancelled elsewhere), writing nothing; returns those stopped."""
        stopped = []
        for job_id in job_ids:
            task = self._tasks.get(job_id)
            if task is None:
                continue
            self.admission.withdraw(job_id)
            task.cancel()
            stopped.append(job_id)
        return stopped

    def running_ids(self) -> list[int]:
        """The jobs this process runs a task for."""
        return list(self._tasks)

    def local_state(self, job_id: int) -> JobState | None:
        """The state of a job this process runs, as it knows it."""
        job = self._jobs.get(job_id)
        return job.state if job is not None else None

    def follow_breaker(self, reason: str | None, changed_at: float) -> None:
        """Take the shared breaker's state (another process opened or closed it)."""
        if reason is not None and self.breaker.reason is None:
            self.breaker.open(reason)
            log.info("submissions paused by another process: %s", reason)
        elif reason is None and self.breaker.is_open and changed_at > self._breaker_seen_at:
            self.breaker.close()
            log.info("another process found the gateway taking requests again; resuming")
            self.admission.pump()

    async def resume(self) -> list[Job]:
        """Pick up every unfinished job after a start, in order (one process on its
        database). Returns the jobs resumed."""
        return await self.adopt(await self.repo.in_states(ACTIVE_STATES))

    async def adopt(self, jobs: Iterable[Job]) -> list[Job]:
        """Run jobs this process just claimed (after a start, or from a process that died),
        in order. A job whose paid submit was in flight is marked interrupted, never sent
        again. Returns the jobs started."""
        resumed = []
        for job in jobs:
            if job.id in self._tasks:
                continue
            if job.state is JobState.SUBMITTING:
                # The submit may have reached the gateway (and been charged): never re-send it.
                await self.repo.update(
                    job,
                    state=JobState.INTERRUPTED,
                    error_kind="interrupted",
                    finished_at=self._clock(),
                )
                await self._notify_failure(job, Failure("interrupted", retryable=True))
                continue
            if job.state in (JobState.SUBMITTED, JobState.PROCESSING):
                self.admission.add_in_flight(job.id, (job.guild_id, job.user_id))
            self.start(job)
            resumed.append(job)
        return resumed

    async def close(self, grace: float = 10.0) -> None:
        """Stop every job task; their state is persisted and they resume on the next start.

        A job whose paid submit is in flight gets up to ``grace`` seconds to learn its
        request id (so the next start polls it instead of marking it interrupted).
        """
        self._closing = True
        submitting = [
            task
            for job_id, task in self._tasks.items()
            if self._jobs.get(job_id) is not None
            and self._jobs[job_id].state is JobState.SUBMITTING
        ]
        others = [task for task in self._tasks.values() if task not in submitting]
        if self._probe_task is not None:
            others.append(self._probe_task)
        for task in others:
            task.cancel()
        if submitting:
            await asyncio.wait(submitting, timeout=grace)
        for task in submitting:
            task.cancel()
        await asyncio.gather(*others, *submitting, return_exceptions=True)

    async def join(self) -> None:
        """Wait until no job is running (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    # -- the job's life ----------------------------------------------------------

    async def _guarded(self, job: Job) -> None:
        # Every log line of this task names the job (the JSON log format has them as fields).
        bind(job_id=job.id, guild_id=job.guild_id, request_id=job.request_id)
        try:
            await self._run(job)
        except asyncio.CancelledError:
            raise
        except StorageError as exc:
            # The job's state is as last saved (it resumes from there on the next start);
            # the member is told now rather than left looking at "Queued".
            log.error("job %s: stopped, its state cannot be saved: %s", job.id, exc)
            await self._notify_failure(job, Failure("storage", str(exc)))
        except Exception:
            log.exception("job %s: unexpected error", job.id)
            try:
                await self.repo.update(
                    job, state=JobState.FAILED, error_kind="internal", finished_at=self._clock()
                )
            except Exception:
                log.exception("job %s: could not record the failure", job.id)
            await self._notify_failure(job, Failure("internal", f"job {job.id}"))
        finally:
            self.admission.withdraw(job.id)
            self.admission.release(job.id)

    async def _run(self, job: Job) -> None:
        while job.state is JobState.PENDING:
            member_limit = await self._wait_turn(job)
            if member_limit is None:
                return
            try:
                if not await self._submit(job, member_limit):
                    return
            except _Requeue:
                self.admission.release(job.id)
            if self._closing:
                return  # shutting down: the job resumes from its stored state
        if job.state in (JobState.SUBMITTED, JobState.PROCESSING):
            self.admission.add_in_flight(job.id, (job.guild_id, job.user_id))
            status = await self._poll(job)
            self.admission.release(job.id)
            if status is None:
                return
            self._gateway_done[job.id] = status.completed_at
            await self.repo.update(
                job,
                state=JobState.DELIVERING,
                media_url=status.media_urls[0],
                finished_at=self._clock(),
            )
        if job.state is JobState.DELIVERING:
            await self._deliver(job)

    async def _wait_turn(self, job: Job) -> int | None:
        """Wait in line until admitted; show the place in line while waiting. Returns the
        member's in-flight limit, or None when the job ended while waiting."""
        waiter = self._placed.pop(job.id, None)
        if waiter is None:  # put back in line after a submit that was certainly not taken
            waiter = self.admission.enqueue(job.id, (job.guild_id, job.user_id), 1)
        limit = await self._limits.member_in_flight(job.guild_id) if self._limits else 1_000_000
        self.admission.set_member_limit(job.id, limit)
        shown: tuple[str, str | None] | None = None
        changed_at = 0.0
        while not waiter.admitted.done():
            if self.breaker.is_open:
                self._schedule_probe()
                if self._clock() - job.created_at > self._queue_give_up:
                    self.admission.withdraw(job.id)
                    kind = GAVE_UP.get(self.breaker.reason or "", "gateway_down")
                    await self._fail(job, Failure(kind, "gave up waiting", True))
                    return None
                progress = Progress("paused", note=PAUSED_NOTES.get(self.breaker.reason or ""))
            else:
                progress = Progress("queued", note=self._queue_note(job.id))
            if shown != (progress.stage, progress.note):
                shown, changed_at = (progress.stage, progress.note), time.monotonic()
            if time.monotonic() - changed_at < QUEUE_RESEND_SECONDS:
                await self._progress(job, progress)
            try:
                await asyncio.wait_for(asyncio.shield(waiter.admitted), QUEUE_REFRESH_SECONDS)
            except TimeoutError:
                continue
            except asyncio.CancelledError:
                if waiter.admitted.cancelled() and not self._closing:
                    return None
                raise
        return limit

    def _queue_note(self, job_id: int) -> str | None:
        position = self.admission.position(job_id)
        if not position:
            return None
        if self.admission.blocked_by_member_limit(job_id):
            return f"#{position} in line; your other images are still being made"
        return f"#{position} in line"

    def _schedule_probe(self) -> None:
        """Make sure someone pumps the queue when the breaker's probe is due."""
        if self._probe_task is not None and not self._probe_task.done():
            return

        async def pump_later() -> None:
            delay = max(0.0, self.breaker.next_probe_at - time.monotonic())
            await asyncio.sleep(delay + 0.01)
            self.admission.pump()

        self._probe_task = asyncio.create_task(pump_later(), name="breaker-probe")

    async def _submit(self, job: Job, member_limit: int) -> bool:
        """Send the paid request. False when the job ended; raises _Requeue to wait again."""
        webhook = self._webhook_url_for(job.id) if self._webhook_url_for else None
        await self.polls.wait_unpaused()
        # The mark that a paid request is about to leave is on disk before it leaves: after
        # a crash the job is then known to be uncertain, never sent again blindly. It is
        # made only while the job is still pending and this process's, and while its member
        # has fewer jobs at the gateway than allowed, in every process together.
        try:
            claim = await self.repo.mark_submitting(job, member_limit)
        except StorageError as exc:
            log.error("job %s: not sent, its state cannot be saved: %s", job.id, exc)
            await self._notify_failure(job, Failure("storage", str(exc)))
            return False
        if claim == "lost":
            log.info("job %s: not sent, it was cancelled or taken over meanwhile", job.id)
            return False
        if claim == "busy":
            # The member's other jobs, in other processes, are at the gateway.
            self.admission.release(job.id)
            note = "waiting; your other images are still being made"
            await self._progress(job, Progress("queued", note=note))
            await asyncio.sleep(QUEUE_REFRESH_SECONDS)
            raise _Requeue
        try:
            accepted = await self._timed("submit", self.client.submit(job.params, webhook))
        except InsufficientBalance:
            await self._requeue(job, BALANCE)
        except RateLimited as exc:
            self.polls.pause(exc.retry_after or self._retry_wait)
            await self._requeue(job, None, note="the image service is busy, retrying")
        except ConnectionFailed as exc:
            if exc.sent:
                await self._transient(job)
                await self._fail(job, Failure("uncertain", exc.message, retryable=True))
                return False
            # Refused before a byte left: provably not taken, so it may go again.
            await self._transient(job)
            await self._requeue(job, None, note="the image service is unreachable, retrying")
        except (ServerError, PixazoTimeout, UnexpectedResponse) as exc:
            # A 5xx (even a proxy's), a timeout or an unreadable 2xx: the gateway may have
            # taken (and charged) it. Never sent again automatically: the member decides.
            await self._transient(job)
            await self._fail(job, Failure("uncertain", exc.message, retryable=True))
            return False
        except Unauthorized as exc:
            # A revoked key or a quota refuses every job alike: pause them all, tell the
            # admins once, and probe until the key is accepted again.
            log.error("job %s: the gateway refused the Pixazo API key (%s)", job.id, exc.status)
            await self._requeue(job, UNAUTHORIZED)
        except BadRequest as exc:
            await self._fail(job, Failure("bad_request", exc.message))
            return False
        except PixazoError as exc:
            await self._fail(job, Failure("gateway_down", exc.message, retryable=True))
            return False
        await self._gateway_answers()
        self.admission.pump()
        if not await self.repo.mark_submitted(job, accepted.request_id, accepted.polling_url):
            # Taken over while the submit was in flight (this process stalled past its
            # lease): the new holder marked it interrupted, and its member may retry.
            log.error(
                "job %s: the gateway took it as %s after another process had taken it over"
                " (it shows as interrupted)",
                job.id,
                accepted.request_id,
            )
            return False
        bind(request_id=accepted.request_id)
        log.info("job %s: submitted as %s (guild %s)", job.id, accepted.request_id, job.guild_id)
        await self._progress(job, Progress("submitted"))
        return True

    async def _requeue(self, job: Job, breaker_reason: str | None, note: str | None = None) -> None:
        previous = self.breaker.reason
        if breaker_reason is None:
            breaker_reason = previous  # a failed probe: wait for the next one
        # Open the breaker before anything else, so no other job starts a submit meanwhile.
        opened = breaker_reason is not None and self.breaker.open(breaker_reason)
        if breaker_reason is not None:
            self._breaker_seen_at = self._clock()
        await self.repo.update(job, state=JobState.PENDING)
        if breaker_reason is not None and (opened or breaker_reason != previous):
            # Newly paused, or paused for another reason (the outage ended on an empty wallet).
            await self._paused(job, breaker_reason)
        if note:
            await self._progress(job, Progress("waiting", note=note))
            await asyncio.sleep(self._retry_wait)
        raise _Requeue

    async def _transient(self, job: Job) -> None:
        """A 5xx, timeout or connection error; a streak of them opens the breaker."""
        if self.breaker.record_transient():
            await self._paused(job, OUTAGE)

    async def _paused(self, job: Job, reason: str) -> None:
        """The breaker just opened: say so once, across every process."""
        self._breaker_seen_at = self._clock()
        log.warning("submissions paused: %s", reason)
        if self.leases is not None:
            try:
                if not await self.leases.open_breaker(reason):
                    return  # another process already told the admins
            except StorageError as exc:
                log.warning("could not share the pause with other processes: %s", exc)
        await self._safely(self.observer.gateway_paused(reason), job)

    async def _gateway_answers(self) -> None:
        """A call went through: close the breaker if it was open, here and for everyone."""
        if not self.breaker.record_success():
            return
        log.info("the gateway takes requests again; resuming submissions")
        if self.leases is not None:
            try:
                await self.leases.close_breaker()
            except StorageError as exc:
                log.warning("could not share the resumption with other processes: %s", exc)

    # -- polling -----------------------------------------------------------------

    async def _poll(self, job: Job) -> StatusResponse | None:
        """Ask the job's status until it is terminal; the COMPLETED status, or None when the
        job failed (the failure is recorded and shown)."""
        assert job.request_id is not None
        wake = self._wakes.setdefault(job.id, asyncio.Event())
        started = job.submitted_at or self._clock()
        # The job's timeout counts from its submit (wall clock); the wait itself is measured
        # on the monotonic clock, so a wall clock moving forward does not cut it short.
        deadline = time.monotonic() + max(0.0, started + self._job_timeout - self._clock())
        delays = self._poll_delays(started)
        errors = 0
        last_status = "pending"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                detail = f"the job was still {last_status} after {self._job_timeout:.0f} s"
                await self._fail(job, Failure("timeout", detail, retryable=True))
                return None
            await self._sleep(wake, min(next(delays, 5.0), remaining))
            await self.polls.acquire()
            try:
                status = await self._timed(
                    "status", self.client.status(job.request_id, job.polling_url)
                )
            except RateLimited as exc:
                # One pause for every caller; the next poll waits it out in acquire().
                self.polls.pause(exc.retry_after or self._retry_wait)
                await self._progress(job, self._waiting(started, "rate limited, retrying"))
                continue
            except Unauthorized as exc:
                if self.breaker.open(UNAUTHORIZED):
                    await self._paused(job, UNAUTHORIZED)
                await self._progress(job, self._waiting(started, PAUSED_NOTES[UNAUTHORIZED]))
                log.warning("job %s: status refused (%s)", job.id, exc.status)
                await asyncio.sleep(self._backoff.delay(errors))
                errors += 1
                continue
            except (ServerError, ConnectionFailed, PixazoTimeout) as exc:
                await self._transient(job)
                note = "the image service is slow to answer, retrying"
                await self._progress(job, self._waiting(started, note))
                log.info("job %s: status poll failed (%s)", job.id, exc.message)
                await asyncio.sleep(self._backoff.delay(errors))
                errors += 1
                continue
            except PixazoError as exc:
                await self._fail(job, Failure("gateway_down", exc.message, retryable=True))
                return None
            errors = 0
            last_status = status.status
            if self.breaker.is_open:
                await self._gateway_answers()
                self.admission.pump()  # the gateway answers again: let waiting jobs go
            else:
                self.breaker.record_success()
            if status.status == "PROCESSING" and job.state is JobState.SUBMITTED:
                await self.repo.update(job, state=JobState.PROCESSING)
            if status.status == "COMPLETED" and status.media_urls:
                if self._planner is not None:
                    self._planner.observe(status)
                return status
            if status.status in ("FAILED", "ERROR"):
                failed = JobFailed(status.status, status.error, request_id=job.request_id)
                await self._fail(job, classify_job_failure(failed))
                return None
            stage: Stage = "processing" if status.status == "PROCESSING" else "queued"
            await self._progress(job, Progress(stage, self._clock() - started))

    def _waiting(self, started: float, note: str) -> Progress:
        return Progress("waiting", self._clock() - started, note)

    @staticmethod
    async def _sleep(wake: asyncio.Event, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if a webhook sets ``wake``."""
        try:
            await asyncio.wait_for(wake.wait(), delay)
        except TimeoutError:
            pass
        wake.clear()

    def _poll_delays(self, started: float) -> Iterator[float]:
        """Webhook mode's safety polls, else the planner's learned schedule, else the fixed one."""
        if self._webhook_url_for is not None:
            return self._webhook_schedule.delays()
        if self._planner is not None:
            return self._planner.delays(started)
        return self._schedule.delays()

    # -- delivery ----------------------------------------------------------------

    async def _deliver(self, job: Job) -> None:
        """Download the image once and hand it over; retry both a few times."""
        assert job.media_url is not None
        if self.leases is not None and not await self.leases.holds(job.id):
            log.info("job %s: not delivered here, another process holds it now", job.id)
            return
        media: DownloadedMedia | None = None
        for attempt in range(DELIVERY_ATTEMPTS):
            try:
                if media is None:
                    media = await self.client.download(job.media_url, max_bytes=self._max_download)
                published = await self.observer.job_result(job, media)
            except DownloadRejected as exc:
                await self._fail(job, Failure("download", exc.message))
                return
            except DeliveryRefused as exc:
                log.warning("job %s: Discord refused the result: %s", job.id, exc)
                await self._fail(job, Failure("delivery", retryable=True))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("job %s: delivery attempt %d failed: %r", job.id, attempt + 1, exc)
                await asyncio.sleep(min(30.0, self._retry_wait * 2**attempt))
                continue
            if published is None:
                log.info("job %s: image ready; waiting for the rest of its batch", job.id)
                return
            await self._completed(job, published)
            return
        await self._fail(job, Failure("delivery", retryable=True))

    async def _completed(self, job: Job, published: Published) -> None:
        """Record a publication: every job it shows is completed."""
        await self.repo.complete(published.job_ids, published.message_id)
        if self.metrics is not None:
            self.metrics.job_finished(JobState.COMPLETED, count=len(published.job_ids))
        if job.id in published.job_ids:
            job.state, job.result_message_id = JobState.COMPLETED, published.message_id
        log.info(
            "jobs %s: delivered in message %s (guild %s, request %s)",
            ",".join(map(str, published.job_ids)),
            published.message_id,
            job.guild_id,
            job.request_id,
        )
        done_at = self._gateway_done.pop(job.id, None)
        if self.metrics is not None and done_at is not None:
            self.metrics.delivery_lag.observe(max(0.0, self._clock() - done_at.timestamp()))

    # -- helpers -----------------------------------------------------------------

    async def _timed(self, kind: str, call: Awaitable[T]) -> T:
        """Await a gateway call and record its duration and outcome."""
        started, status = time.monotonic(), None
        try:
            result = await call
            status = 200
            return result
        except PixazoError as exc:
            status = exc.status
            raise
        finally:
            if self.metrics is not None:
                self.metrics.gateway_call(kind, status, time.monotonic() - started)

    async def _fail(self, job: Job, failure: Failure) -> None:
        state = JobState.INTERRUPTED if failure.kind == "uncertain" else JobState.FAILED
        await self.repo.update(
            job,
            state=state,
            error_kind=failure.kind,
            error_text=failure.detail[:1000] or None,
            finished_at=self._clock(),
        )
        log.info("job %s: %s (%s)", job.id, failure.kind, failure.detail)
        await self._notify_failure(job, failure)

    async def _notify_failure(self, job: Job, failure: Failure) -> None:
        if self.metrics is not None:
            self.metrics.job_finished(job.state, job.error_kind)
        try:
            published = await self.observer.job_failed(job, failure)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s: could not update its message", job.id)
            return
        if published is not None:
            await self._completed(job, published)

    async def _progress(self, job: Job, progress: Progress) -> None:
        await self._safely(self.observer.job_progress(job, progress), job)

    @staticmethod
    async def _safely(call: Awaitable[None], job: Job) -> None:
        try:
            await call
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s: could not update its message", job.id)
