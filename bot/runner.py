"""The job runner: turns stored jobs into results. It knows nothing of slash commands.

Each job runs in its own task: wait its turn (:mod:`bot.admission`), submit (paid, never
blindly repeated), poll under a shared rate limit, download, hand the image to a
:class:`JobObserver` (the Discord side), and persist every transition so a restart can
pick the job up again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from bot.admission import BALANCE, OUTAGE, Admission, Breaker
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
    PollSchedule,
    RateLimited,
    ServerError,
    StatusResponse,
    Unauthorized,
)
from bot.polling import PollPlanner
from bot.ratelimit import TokenBucket
from bot.storage.jobs import ACTIVE_STATES, Job, JobRepository, JobState

log = logging.getLogger(__name__)

#: Words in a FAILED job's error that mean the model's content filter refused it.
SAFETY_WORDS = ("safety", "nsfw", "content", "flagged", "moderation", "policy", "inappropriate")
#: 5xx answers to a submit that come from the gateway's proxy: the request never reached
#: the model, so sending it again later cannot charge twice.
NOT_TAKEN_STATUSES = (502, 503, 504)
#: How often a waiting job refreshes its place in line.
QUEUE_REFRESH_SECONDS = 2.0
#: States in which a webhook can make a job poll (its wake event is consumed by the poll).
WAKEABLE_STATES = (JobState.SUBMITTING, JobState.SUBMITTED, JobState.PROCESSING)
#: A waiting job's changed note is sent again on every refresh for this long: the observer
#: rate-limits its edits and may skip a note, and it shows only what it is sent.
QUEUE_RESEND_SECONDS = 5.0

PAUSED_NOTES = {
    BALANCE: (
        "the server's Pixazo balance is empty. Ask a server admin to top it up; "
        "this job continues on its own"
    ),
    OUTAGE: "the image service is failing; this job continues on its own when it recovers",
}


@dataclass(frozen=True)
class Progress:
    """Where a running job stands, for its message."""

    stage: str  # queued | submitted | processing | waiting | paused
    elapsed: float = 0.0
    note: str | None = None


@dataclass(frozen=True)
class Failure:
    """Why a job did not produce an image. ``kind`` picks the wording shown to members."""

    kind: str
    detail: str = ""
    retryable: bool = False


class JobObserver(Protocol):
    """What the runner tells the outside world (implemented by the Discord side)."""

    async def job_progress(self, job: Job, progress: Progress) -> None:
        """The job moved; show it (implementations rate-limit their edits)."""

    async def job_result(self, job: Job, media: DownloadedMedia) -> int | None:
        """The image exists: post it and return the id of the message that holds it."""

    async def job_failed(self, job: Job, failure: Failure) -> None:
        """The job ended without an image: say why."""

    async def gateway_paused(self, reason: str) -> None:
        """Submissions stopped (the breaker opened); tell the admins once."""


def classify_job_failure(exc: JobFailed) -> Failure:
    """FAILED with a safety reason is a refusal; ERROR is the gateway's own fault."""
    text = (exc.error or "").lower()
    if exc.job_status == "FAILED" and any(word in text for word in SAFETY_WORDS):
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
        max_concurrent: int = 20,
        polls_per_second: float = 10.0,
        job_timeout: float = 600.0,
        max_download_bytes: int = 50 * 1024 * 1024,
        poll_schedule: PollSchedule | None = None,
        poll_planner: PollPlanner | None = None,
        retry_wait: float = 5.0,
        member_limit: Callable[[Job], Awaitable[int]] | None = None,
        breaker: Breaker | None = None,
        queue_give_up: float = 6 * 3600.0,
        webhook_url_for: Callable[[Job], str | None] | None = None,
        webhook_poll_schedule: PollSchedule | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        self.client = client
        self.observer = observer
        self.breaker = breaker or Breaker()
        self.admission = Admission(max_concurrent, self.breaker)
        self.polls = TokenBucket(polls_per_second)
        self._job_timeout = job_timeout
        self._max_download = max_download_bytes
        self._schedule = poll_schedule or PollSchedule()
        self._planner = poll_planner
        self._retry_wait = retry_wait
        self._member_limit = member_limit
        self._queue_give_up = queue_give_up
        self._webhook_url_for = webhook_url_for
        self._webhook_schedule = webhook_poll_schedule or PollSchedule(30.0, 30.0, 1.0, 30.0)
        self.metrics = metrics
        self._clock = clock
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._jobs: dict[int, Job] = {}
        self._wakes: dict[int, asyncio.Event] = {}
        self._closing = False
        self._probe_task: asyncio.Task[None] | None = None
        self._gateway_done: dict[int, datetime | None] = {}

    # -- public ------------------------------------------------------------------

    def start(self, job: Job) -> None:
        """Run ``job`` in the background (no-op if it already runs)."""
        if self._closing or job.id in self._tasks:
            return
        task = asyncio.create_task(self._guarded(job), name=f"job-{job.id}")
        self._tasks[job.id] = task
        self._jobs[job.id] = job
        task.add_done_callback(functools.partial(self._forget, job.id))

    def _forget(self, job_id: int, task: asyncio.Task[None]) -> None:
        if self._tasks.get(job_id) is task:
            del self._tasks[job_id]
            self._jobs.pop(job_id, None)

    def running(self) -> int:
        """How many jobs have a task."""
        return len(self._tasks)

    def wake(self, job_id: int) -> bool:
        """Poll a running job now (a webhook arrived). False when the job is not running or
        is past polling (a duplicate webhook while the result is being posted)."""
        job = self._jobs.get(job_id)
        if job_id not in self._tasks or job is None or job.state not in WAKEABLE_STATES:
            return False
        self._wakes.setdefault(job_id, asyncio.Event()).set()
        return True

    async def cancel(self, job: Job) -> bool:
        """Cancel a job that is still waiting in line (never sent, so never paid)."""
        if job.state is not JobState.PENDING or not self.admission.withdraw(job.id):
            return False
        task = self._tasks.get(job.id)
        if task is not None:
            task.cancel()
        await self.repo.update(job, state=JobState.CANCELLED, finished_at=self._clock())
        return True

    async def resume(self) -> list[Job]:
        """Pick up every unfinished job after a start, in order. Returns the jobs resumed."""
        resumed = []
        for job in await self.repo.in_states(ACTIVE_STATES):
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
        try:
            await self._run(job)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s: unexpected error", job.id)
            try:
                await self.repo.update(
                    job, state=JobState.FAILED, error_kind="internal", finished_at=self._clock()
                )
                await self._notify_failure(job, Failure("internal", f"job {job.id}"))
            except Exception:
                log.exception("job %s: could not record the failure", job.id)
        finally:
            self.admission.withdraw(job.id)
            self.admission.release(job.id)

    async def _run(self, job: Job) -> None:
        while job.state is JobState.PENDING:
            if not await self._wait_turn(job):
                return
            try:
                if not await self._submit(job):
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
            assert status.output is not None
            self._gateway_done[job.id] = status.completed_at
            await self.repo.update(
                job,
                state=JobState.DELIVERING,
                media_url=status.output.media_url[0],
                finished_at=self._clock(),
            )
        if job.state is JobState.DELIVERING:
            await self._deliver(job)

    async def _wait_turn(self, job: Job) -> bool:
        """Wait in line until admitted; show the place in line while waiting."""
        limit = await self._member_limit(job) if self._member_limit else 1_000_000
        waiter = self.admission.enqueue(job.id, (job.guild_id, job.user_id), limit)
        shown: tuple[str, str | None] | None = None
        changed_at = 0.0
        while not waiter.admitted.done():
            if self.breaker.is_open:
                self._schedule_probe()
                if self._clock() - job.created_at > self._queue_give_up:
                    self.admission.withdraw(job.id)
                    kind = "balance" if self.breaker.reason == BALANCE else "gateway_down"
                    await self._fail(job, Failure(kind, "gave up waiting", True))
                    return False
                stage, note = "paused", PAUSED_NOTES.get(self.breaker.reason or "", None)
            else:
                stage, note = "queued", self._queue_note(job.id)
            if shown != (stage, note):
                shown, changed_at = (stage, note), time.monotonic()
            if time.monotonic() - changed_at < QUEUE_RESEND_SECONDS:
                await self._progress(job, Progress(stage, note=note))
            try:
                await asyncio.wait_for(asyncio.shield(waiter.admitted), QUEUE_REFRESH_SECONDS)
            except TimeoutError:
                continue
            except asyncio.CancelledError:
                if waiter.admitted.cancelled() and not self._closing:
                    return False
                raise
        return True

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

    async def _submit(self, job: Job) -> bool:
        """Send the paid request. False when the job ended; raises _Requeue to wait again."""
        webhook = self._webhook_url_for(job) if self._webhook_url_for else None
        await self.polls.wait_unpaused()
        await self.repo.update(job, state=JobState.SUBMITTING)
        try:
            accepted = await self.client.submit(job.params, webhook_url=webhook)
        except InsufficientBalance:
            await self._requeue(job, BALANCE)
        except RateLimited as exc:
            self.polls.pause(exc.retry_after or self._retry_wait)
            await self._requeue(job, None, note="rate limited, retrying")
        except ConnectionFailed as exc:
            if exc.sent:
                await self._fail(job, Failure("uncertain", exc.message, retryable=True))
                return False
            await self._transient(job)
            await self._requeue(job, None, note="the image service is unreachable, retrying")
        except ServerError as exc:
            await self._transient(job)
            if exc.status in NOT_TAKEN_STATUSES:
                await self._requeue(job, None, note="the image service is busy, retrying")
            await self._fail(job, Failure("gateway_down", exc.message, retryable=True))
            return False
        except PixazoTimeout as exc:
            await self._transient(job)
            await self._fail(job, Failure("uncertain", exc.message, retryable=True))
            return False
        except Unauthorized as exc:
            log.error("job %s: the gateway refused the Pixazo API key (%s)", job.id, exc.status)
            await self._fail(job, Failure("unauthorized", retryable=True))
            return False
        except BadRequest as exc:
            await self._fail(job, Failure("bad_request", exc.message))
            return False
        except PixazoError as exc:
            await self._fail(job, Failure("gateway_down", exc.message, retryable=True))
            return False
        if self.breaker.record_success():
            log.info("the gateway takes requests again; resuming submissions")
        self.admission.pump()
        await self.repo.update(
            job,
            state=JobState.SUBMITTED,
            request_id=accepted.request_id,
            polling_url=accepted.polling_url,
            submitted_at=self._clock(),
        )
        log.info("job %s: submitted as %s (guild %s)", job.id, accepted.request_id, job.guild_id)
        await self._progress(job, Progress("submitted"))
        return True

    async def _requeue(self, job: Job, breaker_reason: str | None, note: str | None = None) -> None:
        previous = self.breaker.reason
        if breaker_reason is None:
            breaker_reason = previous  # a failed probe: wait for the next one
        # Open the breaker before anything else, so no other job starts a submit meanwhile.
        opened = breaker_reason is not None and self.breaker.open(breaker_reason)
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
        """The breaker just opened: say so once."""
        log.warning("submissions paused: %s", reason)
        await self._safely(self.observer.gateway_paused(reason), job)

    async def _poll(self, job: Job) -> StatusResponse | None:
        assert job.request_id is not None
        wake = self._wakes.setdefault(job.id, asyncio.Event())
        started = job.submitted_at or self._clock()

        async def on_status(status: StatusResponse) -> None:
            if self.breaker.record_success():
                self.admission.pump()  # the gateway answers again: let waiting jobs go
            elapsed = self._clock() - started
            if status.status == "PROCESSING" and job.state is JobState.SUBMITTED:
                await self.repo.update(job, state=JobState.PROCESSING)
            if not status.terminal:
                await self._progress(job, Progress(status.status.lower(), elapsed))

        try:
            while True:
                remaining = started + self._job_timeout - self._clock()
                try:
                    status = await self.client.wait(
                        job.request_id,
                        polling_url=job.polling_url,
                        max_wait=max(remaining, 0.0),
                        schedule=self._poll_delays(started),
                        on_status=on_status,
                        wake=wake,
                        before_poll=self.polls.acquire,
                    )
                    if self._planner is not None:
                        self._planner.observe(status)
                    return status
                except (RateLimited, ServerError, ConnectionFailed) as exc:
                    if isinstance(exc, RateLimited):
                        self.polls.pause(exc.retry_after or self._retry_wait)
                        note = "rate limited, retrying"
                    else:
                        await self._transient(job)
                        note = "the image service is slow to answer, retrying"
                    await self._progress(job, Progress("waiting", self._clock() - started, note))
                    await asyncio.sleep(self._retry_wait)
        except JobFailed as exc:
            await self._fail(job, classify_job_failure(exc))
        except PixazoTimeout:
            await self._fail(job, Failure("timeout", retryable=True))
        except PixazoError as exc:
            await self._fail(job, Failure("gateway_down", exc.message, retryable=True))
        finally:
            self._wakes.pop(job.id, None)
        return None

    def _poll_delays(self, started: float) -> PollSchedule | Iterable[float]:
        """Webhook mode's safety polls, else the planner's learned schedule, else the fixed one."""
        if self._webhook_url_for is not None:
            return self._webhook_schedule
        if self._planner is not None:
            return self._planner.delays(started)
        return self._schedule

    async def _deliver(self, job: Job) -> None:
        assert job.media_url is not None
        for attempt in range(4):
            try:
                media = await self.client.download(job.media_url, max_bytes=self._max_download)
                message_id = await self.observer.job_result(job, media)
            except DownloadRejected as exc:
                await self._fail(job, Failure("download", exc.message))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("job %s: delivery attempt %d failed: %r", job.id, attempt + 1, exc)
                await asyncio.sleep(min(30.0, self._retry_wait * 2**attempt))
                continue
            await self.repo.update(
                job,
                state=JobState.COMPLETED,
                result_message_id=message_id or job.result_message_id,
                delivered_at=self._clock(),
            )
            log.info(
                "job %s: delivered in message %s (guild %s, request %s)",
                job.id,
                message_id,
                job.guild_id,
                job.request_id,
            )
            done_at = self._gateway_done.pop(job.id, None)
            if self.metrics is not None and done_at is not None:
                self.metrics.delivery_lag.observe(max(0.0, self._clock() - done_at.timestamp()))
            return
        await self._fail(job, Failure("delivery", retryable=True))

    # -- helpers -----------------------------------------------------------------

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
        await self._safely(self.observer.job_failed(job, failure), job)

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
