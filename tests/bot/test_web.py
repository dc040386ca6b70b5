"""The embedded HTTP server: /healthz, /metrics and the Pixazo webhook receiver.

The real bot runs against both fakes with its HTTP server on a free loopback port; in
webhook mode the fake gateway calls that server back when a job ends, exactly as Pixazo
would (``X-Webhook-URL`` from the submit). The fake records when every status call and
every webhook happened, so "no poll before the webhook" is read from its records.
"""

from __future__ import annotations

import asyncio
import re
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

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


# -- /healthz ---------------------------------------------------------------------------------


async def test_healthz_is_200_when_connected_and_the_database_answers(world: World) -> None:
    port = free_port()
    async with world.bot(HTTP_PORT=port, HTTP_HOST="127.0.0.1"):
        status, content_type, body = await http("GET", f"http://127.0.0.1:{port}/healthz")

    assert status == 200
    assert content_type.startswith("application/json")
    assert body == '{"status": "ok", "discord": true, "database": true}'


async def test_healthz_is_503_before_discord_and_without_the_database(world: World) -> None:
    db = await open_database(world.db_path)
    async with aiohttp.ClientSession() as session:
        settings = world.settings(HTTP_PORT=free_port(), HTTP_HOST="127.0.0.1")
        bot = KreaBot(settings)  # never started
        server = build_services(settings, session=session, db=db, bot=bot).web
        assert server is not None
        await server.start()
        try:
            url = f"http://127.0.0.1:{server.port}/healthz"
            status, _, body = await http("GET", url)
            assert status == 503
            assert body == '{"status": "unavailable", "discord": false, "database": true}'

            await db.close()
            status, _, body = await http("GET", url)
            assert status == 503
            assert body == '{"status": "unavailable", "discord": false, "database": false}'
        finally:
            await server.close()
            await bot.close()


# -- /metrics ---------------------------------------------------------------------------------

SAMPLE = re.compile(
    r'^(?P<name>[a-z_]+)(?:\{(?P<labels>[a-z_]+="[^"]*")\})? (?P<value>[0-9.e+-]+)$'
)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {'name{label="v"}': value}, checking its grammar."""
    samples: dict[str, float] = {}
    families: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            families[name] = kind
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        name = match["name"]
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in families else name
        assert family in families, f"{name} has no # TYPE"
        key = f"{name}{{{match['labels']}}}" if match["labels"] else name
        samples[key] = float(match["value"])
    return samples


async def test_metrics_expose_jobs_latencies_and_gateway_errors(world: World) -> None:
    port = free_port()
    world.pixazo.fail_next("status", status=500)  # one gateway error, then it recovers
    async with world.bot(HTTP_PORT=port, HTTP_HOST="127.0.0.1") as bot:
        handle = await world.imagine(prompt=PROMPT, seed=3)
        await world.result_of(handle)
        await bot.services.runner.join()
        status, content_type, text = await http("GET", f"http://127.0.0.1:{port}/metrics")

    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    samples = parse_metrics(text)
    assert samples['kreabot_jobs{state="completed"}'] == 1
    assert samples['kreabot_gateway_errors_total{status="500"}'] == 1
    assert samples["kreabot_submit_seconds_count"] == 1
    polls = len(world.pixazo.status_calls())
    assert polls >= 2 and samples["kreabot_poll_seconds_count"] == polls
    assert samples["kreabot_delivery_lag_seconds_count"] == 1
    for histogram in ("kreabot_submit_seconds", "kreabot_poll_seconds"):
        buckets = [v for k, v in samples.items() if k.startswith(f"{histogram}_bucket")]
        assert buckets == sorted(buckets), "buckets are cumulative"
        assert samples[f'{histogram}_bucket{{le="+Inf"}}'] == samples[f"{histogram}_count"]
        assert samples[f"{histogram}_sum"] > 0


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
        _, _, text = await http("GET", f"http://127.0.0.1:{port}/metrics")
        assert f'kreabot_webhooks_total{{outcome="forged"}} {len(forged)}' in text

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


async def test_healthz_is_503_while_the_gateway_connection_is_down(world: World) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/healthz"
    async with world.bot(HTTP_PORT=port, HTTP_HOST="127.0.0.1"):
        assert (await http("GET", url))[0] == 200
        await world.discord.close()  # Discord is gone: the bot retries, /healthz says so
        _, _, body = await eventually_http(url, 503)
        assert body == '{"status": "unavailable", "discord": false, "database": true}'


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
