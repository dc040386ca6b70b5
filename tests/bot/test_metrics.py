"""The metrics facade on its own: what each service records, read back from its registry.

The runner runs against the fake gateway and a real SQLite file, with an in-memory observer
in place of Discord; the counters are read with ``registry.get_sample_value``, the way the
exposition reads them. End to end (the bot, /metrics scraped and parsed) is in test_web.py.
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

import bot.runner
from bot.events import Failure, Progress, Published
from bot.metrics import Metrics, Snapshot, discord_route
from bot.pixazo import DownloadedMedia, PixazoClient, build_request
from bot.polling import PollSchedule
from bot.runner import JobRunner
from bot.storage.db import open_database
from bot.storage.jobs import Job, JobRepository, JobState, NewJob
from fake_pixazo import FakePixazo

API_KEY = "metrics-test-key"
FAST = PollSchedule(first=0.01, interval=0.01, factor=1.0, cap=0.01)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    """One sample's value as the exposition shows it (None: no such sample)."""
    return metrics.registry.get_sample_value(name, labels)


# -- Discord routes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        (
            "PATCH",
            "/api/v10/webhooks/1234567890/aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDp0b2tlbg/messages/@original",
            "PATCH /webhooks/{id}/{token}/messages/@original",
        ),
        (
            "post",
            "/api/v10/interactions/1234567890/aW50ZXJhY3Rpb24tdG9rZW4/callback",
            "POST /interactions/{id}/{token}/callback",
        ),
        ("POST", "/api/v10/channels/42/messages", "POST /channels/{id}/messages"),
        (
            "PUT",
            "/api/v10/channels/42/messages/43/reactions/%F0%9F%94%81/@me",
            "PUT /channels/{id}/messages/{id}/reactions/{emoji}/@me",
        ),
        (
            "PUT",
            "/api/v10/applications/7/guilds/8/commands",
            "PUT /applications/{id}/guilds/{id}/commands",
        ),
        ("GET", "/api/v9/users/@me", "GET /users/@me"),
        ("GET", "/gateway/bot", "GET /gateway/bot"),  # no API prefix: taken as it is
        ("GET", "/api/v10/guilds/8/Some.Odd-Value", "GET /guilds/{id}/{param}"),
    ],
)
def test_a_discord_request_is_labelled_by_its_route_template(
    method: str, path: str, route: str
) -> None:
    assert discord_route(method, path) == route


def test_only_429s_are_counted_and_no_token_reaches_a_label() -> None:
    metrics = Metrics()
    token_path = "/api/v10/webhooks/1/c2VjcmV0LWludGVyYWN0aW9uLXRva2Vu/messages/@original"
    metrics.discord_response("PATCH", token_path, 200, None)
    metrics.discord_response("PATCH", token_path, 404, None)
    metrics.discord_response("PATCH", token_path, 429, "user")
    metrics.discord_response("POST", "/api/v10/channels/5/messages", 429, "shared")
    metrics.discord_response("POST", "/api/v10/channels/6/messages", 429, "shared")

    route = "PATCH /webhooks/{id}/{token}/messages/@original"
    name = "kreabot_discord_rate_limited_total"
    assert sample(metrics, name, route=route, scope="user") == 1
    assert sample(metrics, name, route="POST /channels/{id}/messages", scope="shared") == 2
    exposition, _ = metrics.render(Snapshot(None, 0, 0, None, False))
    assert b"c2VjcmV0" not in exposition


# -- the facade -------------------------------------------------------------------------------


def test_each_metrics_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.job_finished("completed", count=2)
    first.webhook("woke")

    assert sample(first, "kreabot_jobs_completed_total") == 2
    assert sample(second, "kreabot_jobs_completed_total") == 0
    assert first.webhooks == {"woke": 1} and second.webhooks == {}


def test_gateway_calls_are_timed_and_their_errors_counted_by_status() -> None:
    metrics = Metrics(status_polls_per_second=10)
    metrics.gateway_call("submit", 200, 0.2)
    metrics.gateway_call("status", 200, 0.05)
    metrics.gateway_call("status", 429, 0.01)
    metrics.gateway_call("status", None, 1.0)  # no answer at all

    duration = "kreabot_pixazo_request_duration_seconds"
    assert sample(metrics, f"{duration}_count", call="submit") == 1
    assert sample(metrics, f"{duration}_count", call="status") == 3
    assert sample(metrics, f"{duration}_bucket", call="status", le="0.05") == 2
    assert sample(metrics, "kreabot_pixazo_status_polls_total") == 3
    assert sample(metrics, "kreabot_pixazo_status_poll_limit_per_second") == 10
    errors = "kreabot_pixazo_errors_total"
    assert sample(metrics, errors, call="status", status="429") == 1
    assert sample(metrics, errors, call="status", status="connection") == 1
    assert sample(metrics, errors, call="submit", status="200") is None


def test_a_snapshot_sets_the_state_gauges_and_an_unknown_breaker_reason_shows_too() -> None:
    metrics = Metrics()
    metrics.update(Snapshot({"pending": 3, "processing": 1}, 3, 1, "balance", True, [(0, 0.04)]))

    assert sample(metrics, "kreabot_active_jobs", state="pending") == 3
    assert sample(metrics, "kreabot_active_jobs", state="submitting") == 0
    assert sample(metrics, "kreabot_breaker_open", reason="balance") == 1
    assert sample(metrics, "kreabot_breaker_open", reason="outage") == 0
    assert sample(metrics, "kreabot_discord_gateway_latency_seconds", shard="0") == 0.04

    # The next scrape: the breaker closed, another reason seen, the latency not measured.
    metrics.update(Snapshot({}, 0, 0, "maintenance", False, [(0, float("inf"))]))
    assert sample(metrics, "kreabot_breaker_open", reason="balance") == 0
    assert sample(metrics, "kreabot_breaker_open", reason="maintenance") == 1
    assert sample(metrics, "kreabot_active_jobs", state="pending") == 0
    assert sample(metrics, "kreabot_discord_gateway_latency_seconds", shard="0") is None


async def test_the_loop_lag_monitor_sees_a_blocked_event_loop() -> None:
    metrics = Metrics()
    watcher = asyncio.create_task(metrics.watch_event_loop(interval=0.02))
    try:
        await asyncio.sleep(0.1)  # a few quiet measures first
        time.sleep(0.3)  # noqa: ASYNC251 -- blocking the loop is the point
        await asyncio.sleep(0.1)
    finally:
        watcher.cancel()
    count = sample(metrics, "kreabot_event_loop_lag_seconds_count")
    assert count is not None and count >= 3
    # The measure spanning the block was over 0.25 s late.
    over = count - (sample(metrics, "kreabot_event_loop_lag_seconds_bucket", le="0.25") or 0)
    assert over >= 1
    assert (sample(metrics, "kreabot_event_loop_lag_seconds_sum") or 0) >= 0.25


# -- the runner records how each job ended ----------------------------------------------------


@dataclass
class Observer:
    """The Discord side, in memory: posts every result, notes every failure."""

    failures: list[Failure] = field(default_factory=list)

    async def job_progress(self, job: Job, progress: Progress) -> None:
        pass

    async def job_result(self, job: Job, media: DownloadedMedia) -> Published | None:
        return Published(9000 + job.id, (job.id,))

    async def job_failed(self, job: Job, failure: Failure) -> Published | None:
        self.failures.append(failure)
        return None

    async def gateway_paused(self, reason: str) -> None:
        pass


@dataclass
class Rig:
    fake: FakePixazo
    repo: JobRepository
    runner: JobRunner
    metrics: Metrics

    async def job(self, prompt: str = "a lighthouse") -> Job:
        new = NewJob(guild_id=1, channel_id=2, user_id=3, params=build_request(prompt=prompt))
        return await self.repo.create(new)

    async def run(self, *jobs: Job) -> None:
        for job in jobs:
            self.runner.start(job)
        async with asyncio.timeout(5):
            await self.runner.join()


@pytest.fixture
async def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    monkeypatch.setattr(bot.runner, "QUEUE_REFRESH_SECONDS", 0.05)
    db = await open_database(tmp_path / "jobs.sqlite3")
    async with (
        FakePixazo(api_key=API_KEY, queued_seconds=0.01, processing_seconds=0.03) as fake,
        aiohttp.ClientSession() as session,
    ):
        client = PixazoClient(
            session, API_KEY, base_url=fake.base_url, request_timeout=1.0, submit_timeout=0.5
        )
        repo = JobRepository(db)
        metrics = Metrics()
        options: dict[str, Any] = {"poll_schedule": FAST, "retry_wait": 0.01, "max_concurrent": 1}
        runner = JobRunner(
            repo, client, Observer(), polls_per_second=1000.0, metrics=metrics, **options
        )
        try:
            yield Rig(fake, repo, runner, metrics)
        finally:
            await runner.close(grace=0.5)
            await db.close()


async def test_completed_failed_and_interrupted_jobs_are_counted_by_outcome(rig: Rig) -> None:
    completed = await rig.job("fine")
    await rig.run(completed)
    rig.fake.next_outcome("FAILED", "Blocked by the NSFW filter")
    refused = await rig.job("refused")
    await rig.run(refused)
    rig.fake.hang_after_accept_next()  # taken (and charged); the answer never comes
    uncertain = await rig.job("uncertain")
    await rig.run(uncertain)

    assert sample(rig.metrics, "kreabot_jobs_completed_total") == 1
    assert sample(rig.metrics, "kreabot_jobs_failed_total", kind="refused") == 1
    assert sample(rig.metrics, "kreabot_jobs_interrupted_total", kind="uncertain") == 1
    assert sample(rig.metrics, "kreabot_jobs_cancelled_total") == 0
    # Each counted once, as the database has them.
    states = {job.id: (await rig.repo.get(job.id)) for job in (completed, refused, uncertain)}
    assert [s.state if s else None for s in states.values()] == [
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.INTERRUPTED,
    ]


async def test_a_cancelled_job_and_one_interrupted_by_a_restart_are_counted(rig: Rig) -> None:
    rig.fake.next_outcome(manual=True)
    first, second = await rig.job("first"), await rig.job("second")
    rig.runner.start(first)
    rig.runner.start(second)
    await rig.fake.wait_for_submits(1)
    await asyncio.sleep(0.05)
    assert await rig.runner.cancel(second)
    (submit,) = rig.fake.submits()
    rig.fake.finish(submit.request_id)
    await rig.run()
    # A job whose submit was in flight when the bot died: interrupted at the next start.
    died = await rig.job("died mid-submit")
    await rig.repo.update(died, state=JobState.SUBMITTING)
    await rig.runner.resume()
    await rig.run()

    assert sample(rig.metrics, "kreabot_jobs_cancelled_total") == 1
    assert sample(rig.metrics, "kreabot_jobs_completed_total") == 1
    assert sample(rig.metrics, "kreabot_jobs_interrupted_total", kind="interrupted") == 1
