"""The job runner on its own: a real SQLite file, the fake gateway on loopback, and an
in-memory observer in place of Discord. Every state a job can pass through, and every way
out of it, in a few hundred milliseconds each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import bot.runner
from bot.admission import BALANCE, UNAUTHORIZED, Breaker
from bot.events import DeliveryRefused, Failure, Progress, Published
from bot.pixazo import DownloadedMedia, JobFailed, PixazoClient, build_request
from bot.pixazo.client import SUBMIT_PATH
from bot.polling import PollSchedule
from bot.runner import JobRunner, classify_job_failure
from bot.storage.db import Database, open_database
from bot.storage.jobs import Job, JobRepository, JobState, NewJob
from fake_pixazo import FakePixazo
from tests.support.images import png_bytes

API_KEY = "runner-test-key"
FAST = PollSchedule(first=0.01, interval=0.01, factor=1.0, cap=0.01)


class RecordingRepository(JobRepository):
    """The real repository, remembering every state it wrote, per job, in order."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.states: dict[int, list[JobState]] = {}

    async def update(self, job: Job, **changes: Any) -> Job:
        if "state" in changes:
            self.states.setdefault(job.id, []).append(changes["state"])
        return await super().update(job, **changes)

    async def mark_submitting(self, job: Job, member_limit: int) -> Any:
        claim = await super().mark_submitting(job, member_limit)
        if claim == "go":
            self.states.setdefault(job.id, []).append(JobState.SUBMITTING)
        return claim

    async def mark_submitted(self, job: Job, request_id: str, polling_url: str | None) -> bool:
        taken = await super().mark_submitted(job, request_id, polling_url)
        if taken:
            self.states.setdefault(job.id, []).append(JobState.SUBMITTED)
        return taken

    async def cancel_pending(self, job: Job) -> bool:
        cancelled = await super().cancel_pending(job)
        if cancelled:
            self.states.setdefault(job.id, []).append(JobState.CANCELLED)
        return cancelled

    async def complete(self, job_ids: Any, message_id: int) -> None:
        job_ids = tuple(job_ids)
        for job_id in job_ids:
            self.states.setdefault(job_id, []).append(JobState.COMPLETED)
        await super().complete(job_ids, message_id)


@dataclass
class Observer:
    """What the runner told the outside world, in memory."""

    progress: list[tuple[int, Progress]] = field(default_factory=list)
    results: list[tuple[int, DownloadedMedia]] = field(default_factory=list)
    failures: list[tuple[int, Failure]] = field(default_factory=list)
    pauses: list[str] = field(default_factory=list)
    #: Raise this many times from job_result before accepting (a flaky Discord).
    result_errors: int = 0
    #: Hold every result (as a batch's job waiting for the others does).
    hold: bool = False

    async def job_progress(self, job: Job, progress: Progress) -> None:
        self.progress.append((job.id, progress))

    async def job_result(self, job: Job, media: DownloadedMedia) -> Published | None:
        if self.result_errors:
            self.result_errors -= 1
            raise RuntimeError("Discord is having a moment")
        self.results.append((job.id, media))
        return None if self.hold else Published(9000 + job.id, (job.id,))

    async def job_failed(self, job: Job, failure: Failure) -> Published | None:
        self.failures.append((job.id, failure))
        return None

    async def gateway_paused(self, reason: str) -> None:
        self.pauses.append(reason)

    def stages(self, job_id: int) -> list[str]:
        return [p.stage for jid, p in self.progress if jid == job_id]


@dataclass
class Rig:
    """A runner wired to the fake gateway, a real database and the in-memory observer."""

    fake: FakePixazo
    repo: RecordingRepository
    observer: Observer
    runner: JobRunner
    client: PixazoClient

    async def job(self, prompt: str = "a lighthouse", **fields: Any) -> Job:
        """Store a pending job."""
        new = NewJob(
            guild_id=1, channel_id=2, user_id=3, params=build_request(prompt=prompt, seed=7)
        )
        for key, value in fields.items():
            setattr(new, key, value)
        return await self.repo.create(new)

    async def run(self, job: Job, timeout: float = 5.0) -> Job:
        """Start ``job``, wait until the runner is done with it, return it as stored."""
        self.runner.start(job)
        async with asyncio.timeout(timeout):
            await self.runner.join()
        stored = await self.repo.get(job.id)
        assert stored is not None
        return stored


def make_runner(
    repo: JobRepository, client: PixazoClient, observer: Observer, **options: Any
) -> JobRunner:
    options.setdefault("poll_schedule", FAST)
    options.setdefault("retry_wait", 0.01)
    options.setdefault("polls_per_second", 1000.0)
    return JobRunner(repo, client, observer, **options)


@pytest.fixture(autouse=True)
def quick_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiting jobs look at the queue every 50 ms instead of every 2 s."""
    monkeypatch.setattr(bot.runner, "QUEUE_REFRESH_SECONDS", 0.05)


@pytest.fixture
async def rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    options: dict[str, Any] = getattr(request, "param", {})
    db = await open_database(tmp_path / "jobs.sqlite3")
    async with (
        FakePixazo(api_key=API_KEY, queued_seconds=0.01, processing_seconds=0.03) as fake,
        aiohttp.ClientSession() as session,
    ):
        client = PixazoClient(
            session, API_KEY, base_url=fake.base_url, request_timeout=1.0, submit_timeout=0.5
        )
        repo = RecordingRepository(db)
        observer = Observer()
        runner = make_runner(repo, client, observer, **options)
        try:
            yield Rig(fake, repo, observer, runner, client)
        finally:
            await runner.close(grace=0.5)
            await db.close()


# -- the way through ---------------------------------------------------------------------------


async def test_a_job_goes_pending_submitting_submitted_processing_delivering_completed(
    rig: Rig,
) -> None:
    job = await rig.job()

    done = await rig.run(job)

    assert rig.repo.states[job.id] == [
        JobState.SUBMITTING,
        JobState.SUBMITTED,
        JobState.PROCESSING,
        JobState.DELIVERING,
        JobState.COMPLETED,
    ]
    assert done.state is JobState.COMPLETED and done.result_message_id == 9000 + job.id
    assert done.request_id is not None and done.media_url is not None
    assert done.submitted_at is not None and done.delivered_at is not None
    ((result_id, media),) = rig.observer.results
    assert result_id == job.id and media.data.startswith(b"\x89PNG")
    assert len(rig.fake.submits()) == 1
    assert len(rig.fake.media_calls()) == 1  # downloaded once, handed over as bytes
    assert rig.observer.stages(job.id)[0] == "submitted"  # admitted at once: never queued
    assert "processing" in rig.observer.stages(job.id)
    assert rig.observer.failures == []


async def test_a_held_result_stays_delivering_until_its_batch_is_posted(rig: Rig) -> None:
    rig.observer.hold = True
    job = await rig.job()

    done = await rig.run(job)

    assert done.state is JobState.DELIVERING
    assert rig.repo.states[job.id][-1] is JobState.DELIVERING
    assert len(rig.observer.results) == 1 and len(rig.fake.media_calls()) == 1


async def test_a_flaky_publish_is_retried_with_the_bytes_downloaded_once(rig: Rig) -> None:
    rig.observer.result_errors = 2
    job = await rig.job()

    done = await rig.run(job)

    assert done.state is JobState.COMPLETED
    assert len(rig.fake.media_calls()) == 1


async def test_a_publish_that_never_works_fails_with_a_retry(rig: Rig) -> None:
    rig.observer.result_errors = 10
    job = await rig.job()

    done = await rig.run(job)

    assert done.state is JobState.FAILED and done.error_kind == "delivery"
    ((_, failure),) = rig.observer.failures
    assert failure.kind == "delivery" and failure.retryable


# -- the gateway says no -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "kind", "retryable"),
    [
        ("FAILED", "Content flagged by the safety checker", "refused", False),
        ("FAILED", "Out of memory", "failed", True),
        ("ERROR", "GPU worker crashed", "error", True),
    ],
)
async def test_failed_and_error_jobs_end_failed_with_their_reason(
    rig: Rig, status: Any, error: str, kind: str, retryable: bool
) -> None:
    rig.fake.next_outcome(status, error)
    job = await rig.job()

    done = await rig.run(job)

    assert rig.repo.states[job.id][-1] is JobState.FAILED
    assert (done.error_kind, done.error_text) == (kind, error)
    ((_, failure),) = rig.observer.failures
    assert (failure.kind, failure.detail, failure.retryable) == (kind, error, retryable)
    assert rig.fake.media_calls() == []


@pytest.mark.parametrize(("status", "kind"), [(400, "bad_request")])
async def test_a_refused_submit_fails_the_job_without_sending_it_again(
    rig: Rig, status: int, kind: str
) -> None:
    rig.fake.fail_next("submit", status)
    job = await rig.job()

    done = await rig.run(job)

    assert rig.repo.states[job.id] == [JobState.SUBMITTING, JobState.FAILED]
    assert done.error_kind == kind and done.request_id is None
    assert len(rig.fake.submits()) == 1


async def test_a_submit_that_may_have_been_taken_is_interrupted_never_resent(rig: Rig) -> None:
    rig.fake.hang_after_accept_next()  # taken and charged; the 202 never comes
    job = await rig.job()

    done = await rig.run(job)

    assert rig.repo.states[job.id] == [JobState.SUBMITTING, JobState.INTERRUPTED]
    assert done.error_kind == "uncertain"
    ((_, failure),) = rig.observer.failures
    assert failure.kind == "uncertain" and failure.retryable
    assert len(rig.fake.submits()) == 1 and len(rig.fake.jobs) == 1


async def test_a_connection_dropped_after_the_submit_left_is_interrupted(rig: Rig) -> None:
    rig.fake.drop_next("submit")
    job = await rig.job()

    done = await rig.run(job)

    assert done.state is JobState.INTERRUPTED and done.error_kind == "uncertain"
    assert len(rig.fake.submits()) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_a_5xx_to_a_submit_may_have_been_charged_and_is_never_sent_again(
    rig: Rig, status: int
) -> None:
    rig.fake.fail_next("submit", status, text="<html>Bad gateway</html>")
    job = await rig.job()

    done = await rig.run(job)

    assert rig.repo.states[job.id] == [JobState.SUBMITTING, JobState.INTERRUPTED]
    assert done.error_kind == "uncertain"
    assert len(rig.fake.submits()) == 1  # exactly one paid request, whatever came back
    ((_, failure),) = rig.observer.failures
    assert failure.retryable


async def test_an_unreadable_2xx_to_a_submit_is_uncertain_too(rig: Rig) -> None:
    rig.fake.fail_next("submit", 202, text="<html>accepted?</html>")
    job = await rig.job()

    done = await rig.run(job)

    assert done.state is JobState.INTERRUPTED and done.error_kind == "uncertain"
    assert len(rig.fake.submits()) == 1


@pytest.mark.parametrize("status", [429])
async def test_a_submit_the_gateway_did_not_take_goes_back_in_line_and_is_sent_again(
    rig: Rig, status: int
) -> None:
    rig.fake.fail_next("submit", status, headers={"Retry-After": "0.05"})
    job = await rig.job()

    done = await rig.run(job)

    assert rig.repo.states[job.id][:3] == [
        JobState.SUBMITTING,
        JobState.PENDING,
        JobState.SUBMITTING,
    ]
    assert done.state is JobState.COMPLETED
    assert [r.status for r in rig.fake.submits()] == [status, 202]
    assert len(rig.fake.jobs) == 1
    assert "waiting" in rig.observer.stages(job.id)


async def test_an_empty_wallet_pauses_tells_the_admins_once_and_resumes(rig: Rig) -> None:
    rig.runner.breaker = Breaker(probe_after=0.05)
    rig.runner.admission.breaker = rig.runner.breaker
    rig.fake.set_balance(0)
    job = await rig.job()
    rig.runner.start(job)
    await rig.fake.wait_for(lambda: len(rig.fake.submits()) >= 2, what="a probe after the 402")

    rig.fake.set_balance(None)
    async with asyncio.timeout(5):
        await rig.runner.join()

    done = await rig.repo.get(job.id)
    assert done is not None and done.state is JobState.COMPLETED
    assert rig.observer.pauses == [BALANCE]
    assert "paused" in rig.observer.stages(job.id)
    assert [r.status for r in rig.fake.submits()][-1] == 202
    assert len(rig.fake.jobs) == 1


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_key_pauses_every_job_with_one_notice_until_it_works(
    rig: Rig, status: int
) -> None:
    rig.runner.breaker = Breaker(probe_after=0.05)
    rig.runner.admission.breaker = rig.runner.breaker
    rig.fake.fail_next("submit", status, times=3)  # the key was revoked, then fixed
    jobs = [await rig.job("first"), await rig.job("second")]
    for job in jobs:
        rig.runner.start(job)
    async with asyncio.timeout(5):
        await rig.runner.join()

    assert rig.observer.pauses == [UNAUTHORIZED]  # one notice for every job
    for job in jobs:
        done = await rig.repo.get(job.id)
        assert done is not None and done.state is JobState.COMPLETED
        assert "paused" in rig.observer.stages(job.id) or job is jobs[0]
    assert [r.status for r in rig.fake.submits()] == [status] * 3 + [202, 202]
    assert rig.observer.failures == []


@pytest.mark.parametrize("rig", [{"queue_give_up": 0.1}], indirect=True)
async def test_a_job_paused_too_long_gives_up_with_a_retry(rig: Rig) -> None:
    rig.runner.breaker.open(BALANCE)
    job = await rig.job()

    done = await rig.run(job)

    assert done.state is JobState.FAILED and done.error_kind == "balance"
    assert rig.fake.submits() == []


# -- polling -----------------------------------------------------------------------------------


async def test_status_errors_are_polled_through(rig: Rig) -> None:
    rig.fake.next_outcome(processing_seconds=0.2)
    rig.fake.fail_next("status", 503, times=2)
    job = await rig.job()

    done = await rig.run(job)

    assert done.state is JobState.COMPLETED
    statuses = [c.status for c in rig.fake.status_calls()]
    assert statuses[:2] == [503, 503] and statuses[-1] == 200
    assert len(rig.fake.submits()) == 1


async def test_a_429_on_a_poll_pauses_every_poll_for_its_retry_after(rig: Rig) -> None:
    rig.fake.next_outcome(processing_seconds=0.05)
    rig.fake.fail_next("status", 429, headers={"Retry-After": "0.3"})
    job = await rig.job()

    await rig.run(job)

    first, second, *_ = rig.fake.status_calls()
    assert first.status == 429
    assert second.time - first.time >= 0.29


@pytest.mark.parametrize("rig", [{"job_timeout": 0.2}], indirect=True)
async def test_a_job_the_gateway_never_finishes_times_out(rig: Rig) -> None:
    rig.fake.next_outcome(manual=True)
    job = await rig.job()

    done = await rig.run(job)

    assert rig.repo.states[job.id][-1] is JobState.FAILED
    assert done.error_kind == "timeout"
    assert rig.fake.media_calls() == []


@pytest.mark.parametrize(
    "rig", [{"poll_schedule": PollSchedule(first=5.0, interval=5.0, cap=5.0)}], indirect=True
)
async def test_a_webhook_wakes_the_poll_at_once(rig: Rig) -> None:
    rig.fake.next_outcome(manual=True)
    job = await rig.job()
    rig.runner.start(job)
    (submit,) = await rig.fake.wait_for_submits(1)
    await rig.fake.wait_for_job(submit.request_id, "PROCESSING")
    await asyncio.sleep(0.05)  # the runner is sleeping its 5 s now
    rig.fake.finish(submit.request_id)

    started = time.monotonic()
    assert rig.runner.wake(job.id)
    async with asyncio.timeout(2):
        await rig.runner.join()

    assert time.monotonic() - started < 1.0
    assert len(rig.fake.status_calls()) == 1
    assert not rig.runner.wake(job.id)  # nothing runs any more


@pytest.mark.parametrize("rig", [{"max_download_bytes": 1024}], indirect=True)
async def test_an_image_over_the_download_cap_fails_the_job(rig: Rig) -> None:
    job = await rig.job()

    done = await rig.run(job)

    assert done.state is JobState.FAILED and done.error_kind == "download"
    assert rig.observer.results == []


# -- the queue, cancelling, restarts -----------------------------------------------------------


@pytest.mark.parametrize("rig", [{"max_concurrent": 1}], indirect=True)
async def test_a_queued_job_can_be_cancelled_and_is_never_sent(rig: Rig) -> None:
    rig.fake.next_outcome(manual=True)
    first = await rig.job("first")
    second = await rig.job("second")
    rig.runner.start(first)
    rig.runner.start(second)
    await rig.fake.wait_for_submits(1)
    await asyncio.sleep(0.05)
    assert rig.runner.position(second.id) == 1

    assert await rig.runner.cancel(second)
    assert not await rig.runner.cancel(first)  # already at the gateway

    (submit,) = rig.fake.submits()
    rig.fake.finish(submit.request_id)
    async with asyncio.timeout(5):
        await rig.runner.join()
    cancelled = await rig.repo.get(second.id)
    assert cancelled is not None and cancelled.state is JobState.CANCELLED
    assert len(rig.fake.submits()) == 1
    assert "#1 in line" in [p.note for jid, p in rig.observer.progress if jid == second.id]


async def test_after_a_restart_a_submitting_job_is_interrupted_and_a_submitted_one_finishes(
    rig: Rig,
) -> None:
    accepted = await rig.client.submit(build_request(prompt="already sent", seed=1))
    sent = await rig.job("already sent")
    await rig.repo.update(
        sent,
        state=JobState.SUBMITTED,
        request_id=accepted.request_id,
        polling_url=accepted.polling_url,
        submitted_at=time.time(),
    )
    in_flight = await rig.job("in flight")
    await rig.repo.update(in_flight, state=JobState.SUBMITTING)

    resumed = await rig.runner.resume()
    async with asyncio.timeout(5):
        await rig.runner.join()

    assert [job.id for job in resumed] == [sent.id]
    interrupted = await rig.repo.get(in_flight.id)
    finished = await rig.repo.get(sent.id)
    assert interrupted is not None and interrupted.state is JobState.INTERRUPTED
    assert finished is not None and finished.state is JobState.COMPLETED
    assert [f.kind for _, f in rig.observer.failures] == ["interrupted"]
    assert len(rig.fake.submits()) == 1  # nothing was sent again


# -- what the gateway answers is read leniently ------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("Blocked by the content policy", "refused"),
        ("NSFW content detected", "refused"),
        ("The content is too long for the model", "failed"),
        ("Retry policy exhausted upstream", "failed"),
    ],
)
def test_a_refusal_is_told_apart_from_everyday_words(error: str, kind: str) -> None:
    failure = classify_job_failure(JobFailed("FAILED", error, request_id="r"))
    assert failure.kind == kind


async def test_odd_but_usable_answers_still_deliver_the_paid_job(tmp_path: Path) -> None:
    """A gateway that answers with only a request id, an unknown status, a media_url string and
    a timestamp that does not parse: the job is tracked and delivered all the same."""
    statuses = iter(["WARMING_UP", "processing"])
    seen: list[str] = []

    async def submit(request: web.Request) -> web.Response:
        seen.append("submit")
        return web.json_response({"request_id": "odd-1", "status": None})

    async def status(request: web.Request) -> web.Response:
        seen.append("status")
        name = next(statuses, None)
        if name is not None:
            return web.json_response({"status": name, "output": []})
        base = f"http://{request.host}"
        return web.json_response(
            {
                "status": "COMPLETED",
                "output": {"media_url": f"{base}/out.png"},
                "completed_at": "sometime",
            }
        )

    async def media(request: web.Request) -> web.Response:
        seen.append("media")
        return web.Response(body=png_bytes("green"), content_type="application/octet-stream")

    app = web.Application()
    app.router.add_post(SUBMIT_PATH, submit)
    app.router.add_get("/v2/requests/status/{request_id}", status)
    app.router.add_get("/out.png", media)
    server = web.AppRunner(app)
    await server.setup()
    await web.TCPSite(server, "127.0.0.1", 0).start()
    base_url = f"http://127.0.0.1:{server.addresses[0][1]}"
    db = await open_database(tmp_path / "odd.sqlite3")
    try:
        async with aiohttp.ClientSession() as session:
            client = PixazoClient(session, API_KEY, base_url=base_url)
            repo = RecordingRepository(db)
            observer = Observer()
            runner = make_runner(repo, client, observer)
            job = await repo.create(
                NewJob(guild_id=1, channel_id=2, user_id=3, params=build_request(prompt="p"))
            )
            runner.start(job)
            async with asyncio.timeout(5):
                await runner.join()
            done = await repo.get(job.id)
    finally:
        await db.close()
        await server.cleanup()
    assert done is not None and done.state is JobState.COMPLETED
    assert done.request_id == "odd-1" and done.polling_url is None
    assert seen.count("submit") == 1 and seen.count("media") == 1
    ((_, media_result),) = observer.results
    assert media_result.content_type == "image/png"


async def test_a_result_discord_refuses_for_good_fails_at_once(rig: Rig) -> None:
    attempts = 0

    async def refused(job: Job, media: DownloadedMedia) -> Published | None:
        nonlocal attempts
        attempts += 1
        raise DeliveryRefused("400 50035: Invalid Form Body")

    rig.observer.job_result = refused  # type: ignore[method-assign]
    job = await rig.job()

    done = await rig.run(job)

    assert attempts == 1  # the same body would be refused again: not retried
    assert done.state is JobState.FAILED and done.error_kind == "delivery"
