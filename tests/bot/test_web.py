"""The embedded HTTP server: /livez, /readyz (/healthz), /metrics and the Pixazo webhooks.

The real bot runs against both fakes with its HTTP server on a free loopback port; in
webhook mode the fake gateway calls that server back when a job ends, exactly as Pixazo
would (``X-Webhook-URL`` from the submit). The fake records when every status call and
every webhook happened, so "no poll before the webhook" is read from its records.
"""

from __future__ import annotations

import asyncio
import json
import platform
import re
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import discord
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from bot.__main__ import build_services
from bot.app import KreaBot
from bot.storage.db import open_database
from bot.webhooks import webhook_token, webhook_url
from tests.support.checks import bot_messages, eventually, job_rows
from tests.support.world import World

SECRET = "webhook-secret-" + "x" * 20
PROMPT = "a paper boat on a puddle, watercolour"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def webhook_mode(port: int, safety_poll: float = 30.0) -> dict[str, Any]:
    """Settings for webhook mode on ``port`` (the safety-net poll every ``safety_poll`` s)."""
    return {
        "HTTP_PORT": port,
        "HTTP_HOST": "127.0.0.1",
        "WEBHOOK_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_SAFETY_POLL_SECONDS": safety_poll,
    }


async def http(method: str, url: str, **kwargs: Any) -> tuple[int, str, str]:
    """One HTTP request: (status, content type, body text)."""
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, **kwargs) as response:
            return response.status, response.headers.get("Content-Type", ""), await response.text()


def images_posted(world: World) -> list[Any]:
    """Bot messages that carry an image."""
    return [m for m in bot_messages(world.discord) if m.attachments and not m.deleted]


async def eventually_http(url: str, status: int, within: float = 5.0) -> tuple[int, str, str]:
    """GET ``url`` until it answers ``status``."""
    last: tuple[int, str, str] | None = None

    async def attempt() -> bool:
        nonlocal last
        last = await http("GET", url)
        return last[0] == status

    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await attempt():
        if loop.time() > deadline:
            raise TimeoutError(f"{url} still answers {last}")
        await asyncio.sleep(0.05)
    assert last is not None
    return last


# -- tokens -----------------------------------------------------------------------------------


def test_webhook_token_is_an_hmac_of_the_job_id_that_reveals_no_secret() -> None:
    token = webhook_token(SECRET, 7)
    assert re.fullmatch(r"[0-9a-f]{40}", token)
    assert token == webhook_token(SECRET, 7)
    assert token != webhook_token(SECRET, 8)
    assert token != webhook_token("another-secret-entirely", 7)
    url = webhook_url("https://bot.example.org/", SECRET, 7)
    assert url == f"https://bot.example.org/webhooks/pixazo/7/{token}"
    assert SECRET not in url


# -- /livez, /readyz, /healthz ----------------------------------------------------------------

READY = {
    "status": "ok",
    "discord": True,
    "database": True,
    "breaker": {"open": False, "reason": None},
}


async def health(port: int) -> dict[str, tuple[int, Any]]:
    """GET /livez, /readyz and /healthz: {path: (status, JSON body)}; the shards of /readyz
    (with their live latency) apart, under "shards"."""
    answers: dict[str, tuple[int, Any]] = {}
    for path in ("/livez", "/readyz", "/healthz"):
        status, content_type, body = await http("GET", f"http://127.0.0.1:{port}{path}")
        assert content_type.startswith("application/json"), (path, content_type)
        answers[path] = (status, json.loads(body))
    shards = answers["/readyz"][1].pop("shards", None)
    answers["/healthz"][1].pop("shards", None)
    assert answers["/healthz"] == answers["/readyz"], "/healthz is an alias of /readyz"
    assert isinstance(shards, dict)
    answers["shards"] = (0, shards)
    return answers


async def test_live_and_ready_when_connected_the_database_answers_and_the_breaker_is_closed(
    world: World,
) -> None:
    port = free_port()
    async with world.bot(HTTP_PORT=port, HTTP_HOST="127.0.0.1"):
        answers = await health(port)

    assert answers["/livez"] == (200, {"status": "ok"})
    assert answers["/readyz"] == (200, READY)
    (shard,) = answers["shards"][1].items()  # the one shard this process runs, and its latency
    assert shard[0] == "0" and shard[1]["latency_seconds"] >= 0


async def test_before_discord_and_without_the_database_alive_but_not_ready(world: World) -> None:
    db = await open_database(world.db_path)
    async with aiohttp.ClientSession() as session:
        settings = world.settings(HTTP_PORT=free_port(), HTTP_HOST="127.0.0.1")
        bot = KreaBot(settings)  # never started
        server = build_services(settings, session=session, db=db, bot=bot).web
        assert server is not None
        await server.start()
        try:
            answers = await health(server.port)
            assert answers["/livez"] == (200, {"status": "ok"})
            assert answers["/readyz"] == (503, {**READY, "status": "unavailable", "discord": False})

            await db.close()
            answers = await health(server.port)
            assert answers["/livez"] == (200, {"status": "ok"})
            assert answers["/readyz"] == (
                503,
                {**READY, "status": "unavailable", "discord": False, "database": False},
            )
            # /metrics still answers, saying the database did not.
            samples = await scrape(server.port)
            assert samples.value("kreabot_database_up") == 0
            assert samples.labelled("kreabot_active_jobs") == {}
            assert samples.value("kreabot_discord_connected") == 0
        finally:
            await server.close()
            await bot.close()


async def test_while_the_discord_connection_is_down_alive_but_not_ready(world: World) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/readyz"
    async with world.bot(HTTP_PORT=port, HTTP_HOST="127.0.0.1"):
        assert (await health(port))["/readyz"][0] == 200
        await world.discord.close()  # Discord is gone: the bot retries, /readyz says so
        await eventually_http(url, 503)
        answers = await health(port)
        samples = await scrape(port)

    assert answers["/readyz"] == (503, {**READY, "status": "unavailable", "discord": False})
    assert answers["/livez"] == (200, {"status": "ok"})
    assert samples.value("kreabot_discord_connected") == 0


async def test_an_empty_wallet_opens_the_breaker_not_ready_but_alive_until_topped_up(
    world: World,
) -> None:
    port = free_port()
    world.pixazo.set_balance(0)  # every submit answers 402
    async with world.bot(HTTP_PORT=port, HTTP_HOST="127.0.0.1", BREAKER_PROBE_SECONDS=0.5):
        handle = await world.imagine(prompt=PROMPT, seed=2)
        await handle.wait_for_original(lambda m: "balance is empty" in m.content)
        paused = await health(port)
        waiting = await scrape_until(
            port,
            lambda m: (
                m.value("kreabot_queue_depth") == 1
                and m.value("kreabot_active_jobs", state="pending") == 1
            ),
        )

        world.pixazo.set_balance(None)  # an admin topped the wallet up
        await world.result_of(handle)
        await bot_idle(port)
        resumed = await health(port)
        done = await scrape(port)

    assert paused["/readyz"] == (
        503,
        {**READY, "status": "unavailable", "breaker": {"open": True, "reason": "balance"}},
    )
    assert paused["/livez"] == (200, {"status": "ok"})
    assert waiting.labelled("kreabot_breaker_open") == {
        "balance": 1,
        "outage": 0,
        "unauthorized": 0,
    }
    assert waiting.value("kreabot_jobs_completed_total") == 0
    assert waiting.value("kreabot_pixazo_errors_total", call="submit", status="402") >= 1
    assert resumed["/readyz"] == (200, READY)
    assert set(done.labelled("kreabot_breaker_open").values()) == {0}
    assert done.value("kreabot_jobs_completed_total") == 1
    assert done.value("kreabot_queue_depth") == 0


# -- /metrics ---------------------------------------------------------------------------------


@dataclass
class Scrape:
    """One /metrics answer, parsed by prometheus_client's own parser."""

    content_type: str
    text: str
    families: dict[str, Metric]

    def value(self, sample: str, **labels: str) -> float:
        """The value of the one sample named ``sample`` with exactly these labels."""
        found = [
            s.value
            for family in self.families.values()
            for s in family.samples
            if s.name == sample and s.labels == labels
        ]
        assert len(found) == 1, f"{sample}{labels}: {found}"
        return found[0]

    def labelled(self, family: str, label: str | None = None) -> dict[str, float]:
        """{label value: sample value} of a family with one label (besides ``le``)."""
        result = {}
        for s in self.families[family].samples if family in self.families else []:
            ((_, value),) = [(k, v) for k, v in s.labels.items() if label in (None, k)]
            result[value] = s.value
        return result


async def scrape(port: int, accept: str | None = None) -> Scrape:
    """GET /metrics and parse it."""
    headers = {"Accept": accept} if accept else {}
    status, content_type, text = await http(
        "GET", f"http://127.0.0.1:{port}/metrics", headers=headers
    )
    assert status == 200, text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return Scrape(content_type, text, families)


async def scrape_until(port: int, check: Any, within: float = 5.0) -> Scrape:
    """Scrape until ``check(scrape)`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        found = await scrape(port)
        if check(found):
            return found
        if loop.time() > deadline:
            raise TimeoutError(f"the metrics never matched:\n{found.text}")
        await asyncio.sleep(0.05)


async def bot_idle(port: int) -> Scrape:
    """Scrape until no job is active any more."""
    return await scrape_until(
        port, lambda m: set(m.labelled("kreabot_active_jobs").values()) == {0}
    )


def pyproject_version() -> str:
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    return str(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"])


async def test_metrics_after_a_job_show_its_outcome_latencies_and_an_idle_queue(
    world: World,
) -> None:
    port = free_port()
    world.pixazo.fail_next("status", status=500)  # one gateway error, then it recovers
    settings = {"MAX_CONCURRENT_JOBS": 7, "STATUS_POLLS_PER_SECOND": 8}
    async with world.bot(HTTP_PORT=port, HTTP_HOST="127.0.0.1", **settings) as bot:
        handle = await world.imagine(prompt=PROMPT, seed=3)
        await world.result_of(handle)
        await bot.services.runner.join()
        samples = await bot_idle(port)

    assert samples.content_type == "text/plain; version=0.0.4; charset=utf-8"
    families = samples.families
    # The job: completed once, nothing else, and nothing is left active, waiting or in flight.
    assert families["kreabot_jobs_completed"].type == "counter"
    assert samples.value("kreabot_jobs_completed_total") == 1
    assert set(samples.labelled("kreabot_jobs_failed").values()) == {0}
    assert set(samples.labelled("kreabot_jobs_interrupted").values()) == {0}
    assert samples.value("kreabot_jobs_cancelled_total") == 0
    # Active states only (the completed job is history, read from the database).
    assert samples.labelled("kreabot_active_jobs") == {
        "pending": 0,
        "submitting": 0,
        "submitted": 0,
        "processing": 0,
        "delivering": 0,
    }
    assert samples.value("kreabot_queue_depth") == 0
    assert samples.value("kreabot_pixazo_in_flight_jobs") == 0
    assert samples.value("kreabot_pixazo_max_in_flight_jobs") == 7
    assert samples.labelled("kreabot_breaker_open") == {
        "balance": 0,
        "outage": 0,
        "unauthorized": 0,
    }
    # The gateway: one submit, every status call timed and counted against the limit.
    polls = len(world.pixazo.status_calls())
    assert polls >= 2
    duration = "kreabot_pixazo_request_duration_seconds"
    assert families[duration].type == "histogram"
    assert samples.value(f"{duration}_count", call="submit") == 1
    assert samples.value(f"{duration}_count", call="status") == polls
    for call in ("submit", "status"):
        buckets = [
            s.value
            for s in families[duration].samples
            if s.name.endswith("_bucket") and s.labels["call"] == call
        ]
        assert buckets == sorted(buckets), "buckets are cumulative"
        assert buckets[-1] == samples.value(f"{duration}_count", call=call)
        assert samples.value(f"{duration}_sum", call=call) > 0
    assert samples.value("kreabot_pixazo_errors_total", call="status", status="500") == 1
    assert samples.value("kreabot_pixazo_status_polls_total") == polls
    assert samples.value("kreabot_pixazo_status_poll_limit_per_second") == 8
    assert samples.value("kreabot_delivery_lag_seconds_count") == 1
    # Discord, the database, webhooks (none: polling mode).
    assert samples.value("kreabot_discord_connected") == 1
    assert samples.value("kreabot_database_up") == 1
    assert set(samples.labelled("kreabot_webhooks").values()) == {0}
    # discord.py heartbeats as soon as it connects: shard 0's latency is measured.
    (latency,) = samples.labelled("kreabot_discord_gateway_latency_seconds", "shard").items()
    assert latency[0] == "0" and 0 <= latency[1] < 5
    assert families["kreabot_event_loop_lag_seconds"].type == "histogram"
    assert families["kreabot_discord_rate_limited"].type == "counter"
    # What runs: kreabot, discord.py, Python; the process and the interpreter.
    (build,) = families["kreabot_build_info"].samples
    assert build.labels == {
        "version": pyproject_version(),
        "discord_py": discord.__version__,
        "python": platform.python_version(),
    }
    assert samples.value("process_resident_memory_bytes") > 10 * 1024 * 1024
    assert samples.value("process_open_fds") > 0
    assert samples.value("process_cpu_seconds_total") > 0
    assert families["python_info"].samples


async def test_metrics_count_discord_429s_by_route_without_any_token(world: World) -> None:
    port = free_port()
    # The job's first edit of its message (through the interaction's webhook) gets a 429.
    world.discord.rate_limit_next("/messages/@original", retry_after=0.05, method="PATCH")
    async with world.bot(HTTP_PORT=port, HTTP_HOST="127.0.0.1") as bot:
        handle = await world.imagine(prompt=PROMPT, seed=4)
        await world.result_of(handle)
        await bot.services.runner.join()
        samples = await scrape(port)

    (limited,) = world.discord.rate_limited
    assert limited.status == 429
    route = "PATCH /webhooks/{id}/{token}/messages/@original"
    assert samples.labelled("kreabot_discord_rate_limited", "route") == {route: 1}
    assert samples.value("kreabot_discord_rate_limited_total", route=route, scope="user") == 1
    assert handle.token not in samples.text
    assert str(world.discord.application_id) not in samples.text


async def test_metrics_speak_openmetrics_when_the_scraper_asks(world: World) -> None:
    port = free_port()
    async with world.bot(HTTP_PORT=port, HTTP_HOST="127.0.0.1"):
        samples = await scrape(port, accept="application/openmetrics-text; version=1.0.0")
    assert samples.content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert samples.text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(samples.text)}
    assert "kreabot_jobs_completed" in families and "kreabot_breaker_open" in families


# -- webhooks ---------------------------------------------------------------------------------


async def test_webhook_mode_delivers_without_polling_before_the_webhook(world: World) -> None:
    port = free_port()
    async with world.bot(**webhook_mode(port)) as bot:  # safety-net poll only every 30 s
        handle = await world.imagine(prompt=PROMPT, seed=4)
        result = await world.result_of(handle, timeout=10.0)
        await bot.services.runner.join()

    (job,) = world.pixazo.jobs.values()
    (row,) = job_rows(world.db_path)
    # The submit asked Pixazo to call this job's own URL back; the URL reveals no secret.
    assert job.webhook_url == webhook_url(f"http://127.0.0.1:{port}", SECRET, row["id"])
    assert world.pixazo.submits()[0].headers["X-Webhook-URL"] == job.webhook_url
    assert SECRET not in job.webhook_url
    (delivery,) = world.pixazo.webhook_deliveries
    assert delivery.status == 200
    # One status call, after the job ended at the gateway: the webhook caused it.
    (status_call,) = world.pixazo.status_calls(job.request_id)
    assert job.terminal_at is not None and status_call.time >= job.terminal_at
    assert images_posted(world) == [result]
    assert row["state"] == "completed"
    assert dict(bot.services.metrics.webhooks) == {"woke": 1}


async def test_forged_webhooks_are_ignored_and_cause_no_status_call(world: World) -> None:
    port = free_port()
    world.pixazo.manual = True  # the job stays PROCESSING until the test finishes it
    async with world.bot(**webhook_mode(port)) as bot:
        handle = await world.imagine(prompt=PROMPT, seed=5)
        (job,) = await world.pixazo.wait_for_jobs(1)
        await world.pixazo.wait_for_job(job.request_id, "PROCESSING")
        assert job.webhook_url is not None
        job_id = int(urlsplit(job.webhook_url).path.split("/")[3])
        base = f"http://127.0.0.1:{port}/webhooks/pixazo"
        genuine = webhook_token(SECRET, job_id)
        forged = [
            f"{base}/{job_id}/{'0' * 40}",  # a guess
            f"{base}/{job_id}/{genuine[:-1]}",  # almost right
            f"{base}/{job_id}/{webhook_token('a-different-secret-value', job_id)}",
            f"{base}/{job_id + 1}/{genuine}",  # another job's path with this job's token
            f"{base}/{job_id}/%C3%A9t%C3%A9",  # not even ASCII
            f"{base}/not-a-number/{genuine}",
            f"{base}/{'9' * 5000}/{genuine}",  # too many digits for int()
        ]
        body = {"request_id": job.request_id, "status": "COMPLETED", "output": None}
        for url in forged:
            status, _, _ = await http("POST", url, json=body)
            assert status == 404, url
        await asyncio.sleep(0.3)
        assert world.pixazo.status_calls() == [], "a forged webhook made the bot poll"
        assert bot.services.metrics.webhooks["forged"] == len(forged)
        samples = await scrape(port)
        assert samples.value("kreabot_webhooks_total", outcome="forged") == len(forged)

        # The genuine URL, even with a lying body, makes exactly one confirming status call.
        status, _, _ = await http("POST", job.webhook_url, json=body)
        assert status == 200
        (confirm,) = await world.pixazo.wait_for_status_calls(1)
        assert confirm.status == 200
        await asyncio.sleep(0.2)
        assert images_posted(world) == [], "the body is not trusted: the job is PROCESSING"

        world.pixazo.finish(job.request_id)  # now the gateway calls back for real
        result = await world.result_of(handle, timeout=10.0)
        await bot.services.runner.join()

    assert images_posted(world) == [result]
    assert len(world.pixazo.status_calls()) == 2


async def test_a_duplicate_webhook_posts_the_result_once(world: World) -> None:
    port = free_port()
    world.pixazo.webhook_next("duplicate")
    world.pixazo.delay_next("media", 0.5)  # the result takes a while to post
    async with world.bot(**webhook_mode(port)) as bot:
        handle = await world.imagine(prompt=PROMPT, seed=6)
        deliveries = await world.pixazo.wait_for_webhooks(2)
        (job,) = world.pixazo.jobs.values()
        assert job.webhook_url is not None
        # A third copy while the result is being posted: acknowledged, nothing to wake.
        await eventually(
            lambda: job_rows(world.db_path)[0]["state"] == "delivering", 5.0, "delivery"
        )
        status, _, _ = await http("POST", job.webhook_url, json=deliveries[0].body)
        assert status == 200
        assert bot.services.metrics.webhooks["ignored"] >= 1
        result = await world.result_of(handle, timeout=10.0)
        await bot.services.runner.join()
        # And a fourth, late copy: the job is done, so nothing is polled or posted.
        status, _, _ = await http("POST", job.webhook_url, json=deliveries[0].body)
        assert status == 200
        await asyncio.sleep(0.2)  # room for a second post, were there one

    assert [d.copy for d in deliveries] == [1, 2]
    assert all(d.status == 200 for d in deliveries)
    assert images_posted(world) == [result]
    (row,) = job_rows(world.db_path)
    assert row["state"] == "completed" and row["result_message_id"] == result.id
    assert len(world.pixazo.status_calls()) == 1
    assert len(world.pixazo.media_calls()) == 1
    # The second copy may land while the first one's status call is still in flight.
    assert sum(bot.services.metrics.webhooks.values()) == 4
    assert (
        bot.services.metrics.webhooks["woke"] in (1, 2)
        and bot.services.metrics.webhooks["ignored"] >= 2
    )


async def test_a_lost_webhook_is_caught_by_the_safety_net_poll(world: World) -> None:
    port = free_port()
    world.pixazo.webhook_next("drop")
    async with world.bot(**webhook_mode(port, safety_poll=1.0)) as bot:
        handle = await world.imagine(prompt=PROMPT, seed=7)
        result = await world.result_of(handle, timeout=10.0)
        await bot.services.runner.join()

    (job,) = world.pixazo.jobs.values()
    assert job.webhook_mode == "drop" and world.pixazo.webhook_deliveries == []
    assert images_posted(world) == [result]
    # Polled at the slow safety pace, not the fast schedule: one call, a second after submit.
    (submit,) = world.pixazo.submits()
    (status_call,) = world.pixazo.status_calls(job.request_id)
    assert status_call.time - submit.time >= 0.9
    assert dict(bot.services.metrics.webhooks) == {}


@pytest.mark.parametrize("secret", [None, SECRET])
async def test_webhooks_for_unknown_jobs_are_answered_but_wake_nothing(
    world: World, secret: str | None
) -> None:
    port = free_port()
    settings: dict[str, Any] = {"HTTP_PORT": port, "HTTP_HOST": "127.0.0.1"}
    if secret:
        settings["WEBHOOK_SECRET"] = secret
    async with world.bot(**settings) as bot:
        url = f"http://127.0.0.1:{port}/webhooks/pixazo/99/{webhook_token(SECRET, 99)}"
        status, _, _ = await http("POST", url, data=b"not json at all")
        if secret is None:  # no secret, no webhook can be genuine
            assert status == 404
            assert dict(bot.services.metrics.webhooks) == {"forged": 1}
        else:
            assert status == 200
            assert dict(bot.services.metrics.webhooks) == {"ignored": 1}
    assert world.pixazo.requests == []


async def test_a_webhook_that_beats_the_submit_answer_is_not_lost(world: World) -> None:
    port = free_port()
    world.pixazo.hang_after_accept_next(seconds=0.6)  # the job ends before its 202 arrives
    async with world.bot(**webhook_mode(port)) as bot:  # safety-net poll only every 30 s
        handle = await world.imagine(prompt=PROMPT, seed=8)
        result = await world.result_of(handle, timeout=5.0)
        await bot.services.runner.join()

    (submit,) = world.pixazo.submits()
    (delivery,) = world.pixazo.webhook_deliveries
    assert submit.responded_at is not None and delivery.time < submit.responded_at
    assert len(world.pixazo.status_calls()) == 1
    assert images_posted(world) == [result]
