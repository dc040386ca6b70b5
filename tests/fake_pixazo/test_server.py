"""The fake Pixazo gateway, exercised over real loopback HTTP with a raw aiohttp session."""

from __future__ import annotations

import asyncio
import io
import json
import re
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from fake_pixazo import SUBMIT_PATH, FakePixazo, image_size

KEY = "secret-key"
HEADERS = {"Ocp-Apim-Subscription-Key": KEY, "Content-Type": "application/json"}
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
REQUEST_ID = re.compile(r"^krea-2-large-text-to-image_[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-")


@pytest.fixture
async def fake() -> AsyncIterator[FakePixazo]:
    async with FakePixazo(api_key=KEY, queued_seconds=0.01, processing_seconds=0.03) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def submit(
    http: aiohttp.ClientSession,
    fake: FakePixazo,
    body: Any,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST a body to the submit endpoint; returns (status, JSON body)."""
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    headers = HEADERS if headers is None else headers
    async with http.post(fake.submit_url, data=data, headers=headers) as response:
        assert response.headers["Content-Type"] == "application/json"
        return response.status, await response.json()


async def poll_until_terminal(
    http: aiohttp.ClientSession, polling_url: str
) -> tuple[list[str], dict[str, Any]]:
    """Poll a job until terminal; returns the statuses seen and the last body."""
    seen: list[str] = []
    for _ in range(200):
        async with http.get(polling_url, headers=HEADERS) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/json"
            body = await response.json()
        if not seen or seen[-1] != body["status"]:
            seen.append(body["status"])
        if body["status"] in ("COMPLETED", "FAILED", "ERROR"):
            return seen, body
        await asyncio.sleep(0.005)
    raise AssertionError("job never finished")


async def generate_png(
    http: aiohttp.ClientSession, fake: FakePixazo, body: dict[str, Any]
) -> bytes:
    status, accepted = await submit(http, fake, body)
    assert status == 202
    _, final = await poll_until_terminal(http, accepted["polling_url"])
    async with http.get(final["output"]["media_url"][0]) as response:
        assert response.status == 200
        return await response.read()


# ------------------------------------------------------------------ authentication


@pytest.mark.parametrize("headers", [{}, {"Ocp-Apim-Subscription-Key": "wrong"}])
async def test_submit_and_status_need_the_key(
    fake: FakePixazo, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    status, body = await submit(http, fake, {"prompt": "a cat"}, headers=headers)
    assert status == 401
    assert body["error"] == "Unauthorized" and body["message"]
    async with http.get(fake.status_url("nope"), headers=headers) as response:
        assert response.status == 401
    assert fake.jobs == {}
    assert [r.status for r in fake.requests] == [401, 401]


async def test_scripted_403(fake: FakePixazo, http: aiohttp.ClientSession) -> None:
    fake.fail_next("submit", status=403)
    status, body = await submit(http, fake, {"prompt": "a cat"})
    assert status == 403 and body["error"] == "Forbidden"
    assert fake.submits()[0].fault == "fail"
    status, _ = await submit(http, fake, {"prompt": "a cat"})
    assert status == 202


# ------------------------------------------------------------------ validation

MOODBOARD = str(uuid.uuid4())
GOOD_REF = {"image_url": "https://cdn.example.com/a.png", "strength": 0.5}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"prompt": "x", "negative_prompt": "y"}, ["negative_prompt: unknown field"]),
        (
            {"prompt": "x", "styles": [{"id": "s", "weight": 1}]},
            ["styles[0].weight: unknown field"],
        ),
        (
            {"prompt": "x", "image_style_references": [GOOD_REF] * 11},
            ["image_style_references: at most 10 entries"],
        ),
        (
            {"prompt": "x", "moodboards": [{"id": MOODBOARD}, {"id": MOODBOARD}]},
            ["moodboards: at most 1 entries"],
        ),
        (
            {"prompt": "x", "moodboards": [{"id": "not-a-uuid"}]},
            ["moodboards[0].id: must be a UUID"],
        ),
        ({"prompt": "x", "aspect_ratio": "5:4"}, ["aspect_ratio: must be one of"]),
        ({"prompt": "x", "creativity": "wild"}, ["creativity: must be one of"]),
        ({"prompt": ""}, ["prompt: must not be empty"]),
        ({"prompt": "   "}, ["prompt: must not be empty"]),
        ({"aspect_ratio": "1:1"}, ["prompt: is required"]),
        ({"prompt": 3}, ["prompt: must be a string"]),
        ({"prompt": "x", "seed": True}, ["seed: must be an integer"]),
        ({"prompt": "x", "seed": 1.5}, ["seed: must be an integer"]),
        (
            {"prompt": "x", "styles": [{"id": "s", "strength": "strong"}]},
            ["styles[0].strength: must be a number"],
        ),
        (
            {"prompt": "x", "image_style_references": [{"image_url": "http://x.com/a.png"}]},
            ["image_style_references[0].image_url: must be an HTTPS URL"],
        ),
        (
            {"prompt": "x", "image_style_references": [{"strength": 1}]},
            ["image_style_references[0].image_url: is required"],
        ),
        ({"prompt": "x", "styles": [{"id": " "}]}, ["styles[0].id: must be a non-empty string"]),
        ({"prompt": "x", "styles": "s"}, ["styles: must be a list"]),
        (["prompt"], ["body: must be a JSON object"]),
        ('{"prompt": "x", "styles": [{"id": "s", "strength": NaN}]}', ["must be a finite number"]),
        ("{not json", ["Request body must be a JSON object"]),
        (
            {"prompt": "", "aspect_ratio": "7:7", "extra": 1, "moodboards": [{"id": "x"}]},
            ["prompt:", "aspect_ratio:", "extra: unknown field", "moodboards[0].id:"],
        ),
    ],
)
async def test_invalid_bodies_are_rejected_naming_each_field(
    fake: FakePixazo, http: aiohttp.ClientSession, body: Any, expected: list[str]
) -> None:
    status, response = await submit(http, fake, body)
    assert status == 400
    assert response["error"] == "Bad Request"
    for fragment in expected:
        assert fragment in response["message"]
    assert fake.jobs == {}


async def test_full_valid_body_is_accepted(fake: FakePixazo, http: aiohttp.ClientSession) -> None:
    body = {
        "prompt": "A Van Gogh-tinged Provencal farmhouse under starry nights",
        "aspect_ratio": "2.35:1",
        "creativity": "high",
        "seed": 42,
        "image_style_references": [GOOD_REF, {"image_url": "https://x.io/b.png", "strength": -1}],
        "styles": [{"id": "oil-paint"}, {"id": "film", "strength": 0.3}],
        "moodboards": [{"id": MOODBOARD}],
    }
    status, accepted = await submit(http, fake, body)
    assert status == 202
    job = fake.jobs[accepted["request_id"]]
    assert job.body == body
    assert job.params.moodboards[0].strength == 0.23
    assert job.params.styles[0].strength == 1.0


# ------------------------------------------------------------------ the happy path


@pytest.mark.parametrize(
    ("aspect_ratio", "size"), [("16:9", (512, 288)), ("9:16", (288, 512)), ("2.35:1", (512, 218))]
)
async def test_job_flows_to_completed_and_serves_a_png_of_the_right_size(
    fake: FakePixazo, http: aiohttp.ClientSession, aspect_ratio: str, size: tuple[int, int]
) -> None:
    status, accepted = await submit(http, fake, {"prompt": "a cat", "aspect_ratio": aspect_ratio})
    assert status == 202
    request_id = accepted["request_id"]
    assert REQUEST_ID.match(request_id)
    assert accepted == {
        "request_id": request_id,
        "status": "QUEUED",
        "polling_url": f"{fake.base_url}/v2/requests/status/{request_id}",
    }

    async with http.get(accepted["polling_url"], headers=HEADERS) as response:
        first = await response.json()
    assert first["status"] in ("QUEUED", "PROCESSING")
    assert first["output"] is None and first["completed_at"] is None

    seen, final = await poll_until_terminal(http, accepted["polling_url"])
    assert seen[-1] == "COMPLETED"
    assert set(seen) <= {"QUEUED", "PROCESSING", "COMPLETED"}
    assert list(final) == [
        "request_id",
        "status",
        "model_id",
        "error",
        "output",
        "created_at",
        "updated_at",
        "completed_at",
    ]
    assert final["model_id"] == "krea-2-large-text-to-image"
    assert final["error"] is None
    assert final["output"] == {
        "media_url": [f"{fake.base_url}/media/{request_id}/output.png"],
        "media_type": "image/png",
    }
    for key in ("created_at", "updated_at", "completed_at"):
        assert ISO_MS.match(final[key])

    async with http.get(final["output"]["media_url"][0]) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "image/png"
        png = await response.read()
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        assert image.size == size == image_size(aspect_ratio, 512)

    job = fake.jobs[request_id]
    assert job.terminal_at is not None
    assert job.status_times["QUEUED"] <= job.status_times["PROCESSING"] <= job.terminal_at
    assert [r.status for r in fake.status_calls(request_id)] == [200] * len(
        fake.status_calls(request_id)
    )
    assert fake.media_calls(request_id)[0].status == 200


async def test_same_seed_same_bytes_and_different_seed_different_bytes(
    fake: FakePixazo, http: aiohttp.ClientSession
) -> None:
    body = {"prompt": "a lighthouse", "seed": 7, "aspect_ratio": "4:3"}
    first = await generate_png(http, fake, body)
    again = await generate_png(http, fake, body)
    other = await generate_png(http, fake, {**body, "seed": 8})
    assert first == again
    assert first != other


async def test_noisy_images_and_long_edge(http: aiohttp.ClientSession) -> None:
    async with FakePixazo(
        api_key=KEY, queued_seconds=0, processing_seconds=0, long_edge=256
    ) as fake:
        plain = await generate_png(http, fake, {"prompt": "fog", "seed": 1})
        fake.noisy = True
        noisy = await generate_png(http, fake, {"prompt": "fog", "seed": 1})
    with Image.open(io.BytesIO(noisy)) as image:
        assert image.size == (256, 256)
    assert len(noisy) > 150_000 > 10 * len(plain)


async def test_unknown_request_id_and_unknown_route_answer_json_404(
    fake: FakePixazo, http: aiohttp.ClientSession
) -> None:
    async with http.get(fake.status_url("krea-2-large-text-to-image_nope"), headers=HEADERS) as r:
        assert r.status == 404 and r.headers["Content-Type"] == "application/json"
        assert (await r.json())["error"] == "Not Found"
    async with http.get(fake.media_url("nope")) as r:
        assert r.status == 404
    async with http.get(fake.base_url + "/elsewhere") as r:
        assert r.status == 404 and r.headers["Content-Type"] == "application/json"


# ------------------------------------------------------------------ outcomes and balance


async def test_scripted_failed_and_error_outcomes(http: aiohttp.ClientSession) -> None:
    async with FakePixazo(
        api_key=KEY, queued_seconds=0, processing_seconds=0.01, balance=5
    ) as fake:
        fake.outcome_for(contains="forbidden", status="FAILED", error="Content flagged")
        fake.next_outcome("ERROR", "GPU worker crashed")

        _, crashed = await submit(http, fake, {"prompt": "a forbidden thing"})
        _, flagged = await submit(http, fake, {"prompt": "another FORBIDDEN thing"})
        _, fine = await submit(http, fake, {"prompt": "a dog"})
        assert fake.balance == 2

        _, crashed_body = await poll_until_terminal(http, crashed["polling_url"])
        _, flagged_body = await poll_until_terminal(http, flagged["polling_url"])
        _, fine_body = await poll_until_terminal(http, fine["polling_url"])

    assert (crashed_body["status"], crashed_body["error"]) == ("ERROR", "GPU worker crashed")
    assert (flagged_body["status"], flagged_body["error"]) == ("FAILED", "Content flagged")
    assert fine_body["status"] == "COMPLETED"
    for body in (crashed_body, flagged_body):
        assert body["output"] is None and ISO_MS.match(body["completed_at"])
    assert fake.balance == 3  # the ERROR job was refunded
    assert fake.jobs[crashed["request_id"]].refunded


async def test_balance_exhausted_gives_402(http: aiohttp.ClientSession) -> None:
    async with FakePixazo(api_key=KEY, balance=1) as fake:
        assert (await submit(http, fake, {"prompt": "one"}))[0] == 202
        status, body = await submit(http, fake, {"prompt": "two"})
        assert status == 402
        assert body == {
            "error": "Insufficient Balance",
            "message": "Your wallet does not have enough balance.",
        }
        fake.set_balance(1)
        assert (await submit(http, fake, {"prompt": "three"}))[0] == 202
        assert [s.status for s in fake.submits()] == [202, 402, 202]
        assert len(fake.jobs) == 2


# ------------------------------------------------------------------ faults


async def test_scripted_429_with_retry_after(fake: FakePixazo, http: aiohttp.ClientSession) -> None:
    _, accepted = await submit(http, fake, {"prompt": "a cat"})
    fake.fail_next("status", status=429, headers={"Retry-After": "1"})
    async with http.get(accepted["polling_url"], headers=HEADERS) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "1"
        assert (await response.json())["error"] == "Too Many Requests"
    async with http.get(accepted["polling_url"], headers=HEADERS) as response:
        assert response.status == 200
    calls = fake.status_calls(accepted["request_id"])
    assert [(c.status, c.fault) for c in calls] == [(429, "fail"), (200, None)]


async def test_rate_limit_answers_429_with_retry_after(http: aiohttp.ClientSession) -> None:
    async with FakePixazo(api_key=KEY, rate_limit=2) as fake:
        statuses = []
        for _ in range(3):
            async with http.get(fake.status_url("x"), headers=HEADERS) as response:
                statuses.append(response.status)
                retry_after = response.headers.get("Retry-After")
        assert statuses == [404, 404, 429]
        assert retry_after == "1"


async def test_non_json_fault_body(fake: FakePixazo, http: aiohttp.ClientSession) -> None:
    fake.fail_next("any", status=502, text="<html>Bad gateway</html>")
    async with http.post(fake.submit_url, json={"prompt": "x"}, headers=HEADERS) as response:
        assert response.status == 502
        assert response.content_type == "text/html"


async def test_delay_and_drop(fake: FakePixazo, http: aiohttp.ClientSession) -> None:
    fake.delay_next("status", 0.2)
    started = time.monotonic()
    async with http.get(fake.status_url("x"), headers=HEADERS) as response:
        assert response.status == 404
    assert time.monotonic() - started >= 0.2

    # aiohttp re-sends an idempotent request once when a reused keep-alive connection
    # drops, so drop both tries.
    fake.drop_next("status", times=2)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(fake.status_url("x"), headers=HEADERS) as response:
            await response.read()
    dropped = fake.status_calls()[1:]
    assert [(c.status, c.fault) for c in dropped] == [(None, "drop")] * len(dropped)
    assert 1 <= len(dropped) <= 2


async def test_hang_after_accept_creates_and_charges_the_job(http: aiohttp.ClientSession) -> None:
    async with FakePixazo(api_key=KEY, balance=3, queued_seconds=0, processing_seconds=0) as fake:
        fake.hang_after_accept_next()
        with pytest.raises(TimeoutError):
            async with http.post(
                fake.submit_url,
                json={"prompt": "paid"},
                headers=HEADERS,
                timeout=aiohttp.ClientTimeout(total=0.3),
            ):
                pass
        (job,) = await fake.wait_for_jobs(1)
        assert job.prompt == "paid" and job.charged and fake.balance == 2
        assert fake.submits()[0].status is None
        assert fake.submits()[0].request_id == job.request_id
        await fake.wait_for_job(job.request_id)
        # The next submit is answered normally.
        assert (await submit(http, fake, {"prompt": "next"}))[0] == 202


async def test_hang_after_accept_with_late_answer(
    fake: FakePixazo, http: aiohttp.ClientSession
) -> None:
    fake.hang_after_accept_next(seconds=0.2)
    started = time.monotonic()
    status, accepted = await submit(http, fake, {"prompt": "slow"})
    assert status == 202 and time.monotonic() - started >= 0.2
    assert accepted["request_id"] in fake.jobs


# ------------------------------------------------------------------ expired Discord URLs


async def test_expired_discord_reference_is_rejected(http: aiohttp.ClientSession) -> None:
    now = 1_760_000_000
    async with FakePixazo(api_key=KEY, clock=lambda: now) as fake:

        def ref(expiry: int) -> dict[str, Any]:
            url = f"https://cdn.discordapp.com/attachments/1/2/a.png?ex={expiry:x}&is=00&hm=ab"
            return {"image_url": url}

        status, body = await submit(
            http,
            fake,
            {"prompt": "x", "image_style_references": [ref(now + 60), ref(now - 1)]},
        )
        assert status == 400
        assert body["message"] == (
            "could not fetch image_style_references[1].image_url: URL expired"
        )
        status, _ = await submit(
            http, fake, {"prompt": "x", "image_style_references": [ref(now + 60)]}
        )
        assert status == 202


# ------------------------------------------------------------------ webhooks


class Receiver:
    """A tiny webhook receiver on loopback that answers with scripted statuses."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.statuses = list(statuses or [])
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _receive(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def submit_with_webhook(
    http: aiohttp.ClientSession, fake: FakePixazo, url: str, prompt: str = "hooked"
) -> str:
    status, accepted = await submit(
        http, fake, {"prompt": prompt}, headers={**HEADERS, "X-Webhook-URL": url}
    )
    assert status == 202
    return str(accepted["request_id"])


async def test_webhook_is_delivered_with_the_status_body(
    fake: FakePixazo, http: aiohttp.ClientSession
) -> None:
    async with Receiver() as receiver:
        request_id = await submit_with_webhook(http, fake, receiver.url)
        assert fake.jobs[request_id].webhook_url == receiver.url
        (delivery,) = await fake.wait_for_webhooks(1)
    assert receiver.bodies == [fake.status_body(request_id)]
    assert receiver.bodies[0]["status"] == "COMPLETED"
    assert delivery.ok and delivery.request_id == request_id
    assert fake.status_calls() == []  # nobody polled


async def test_duplicate_dropped_and_retried_webhooks(
    fake: FakePixazo, http: aiohttp.ClientSession
) -> None:
    fake.webhook_backoff = (0.01, 0.01)
    async with Receiver(statuses=[200, 200, 500, 503, 200]) as receiver:
        fake.webhook_next("duplicate")
        twice = await submit_with_webhook(http, fake, receiver.url, "twice")
        await fake.wait_for_webhooks(2)

        fake.webhook_next("drop")
        dropped = await submit_with_webhook(http, fake, receiver.url, "dropped")
        await fake.wait_for_job(dropped)

        retried = await submit_with_webhook(http, fake, receiver.url, "retried")
        await fake.wait_for_webhooks(3)

    assert [b["request_id"] for b in receiver.bodies] == [twice, twice, retried, retried, retried]
    assert fake.jobs[dropped].webhook_mode == "drop"
    attempts = [(d.copy, d.attempt, d.status) for d in fake.webhook_deliveries]
    assert attempts == [(1, 1, 200), (2, 1, 200), (1, 1, 500), (1, 2, 503), (1, 3, 200)]


# ------------------------------------------------------------------ manual mode


async def test_manual_mode_waits_for_finish(http: aiohttp.ClientSession) -> None:
    async with FakePixazo(api_key=KEY, manual=True, queued_seconds=0) as fake:
        _, accepted = await submit(http, fake, {"prompt": "held"})
        request_id = accepted["request_id"]
        await fake.wait_for_job(request_id, "PROCESSING")
        await asyncio.sleep(0.05)
        async with http.get(accepted["polling_url"], headers=HEADERS) as response:
            assert (await response.json())["status"] == "PROCESSING"

        job = fake.finish(request_id, status="FAILED", error="Nope")
        assert job.terminal_at is not None
        async with http.get(accepted["polling_url"], headers=HEADERS) as response:
            body = await response.json()
        assert (body["status"], body["error"]) == ("FAILED", "Nope")
        with pytest.raises(ValueError):
            fake.finish(request_id)


async def test_wait_for_times_out_with_a_clear_message(fake: FakePixazo) -> None:
    with pytest.raises(TimeoutError, match="3 submits"):
        await fake.wait_for_submits(3, timeout=0.05)


# ------------------------------------------------------------------ command line


async def test_command_line_prints_base_url_and_key(http: aiohttp.ClientSession) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fake_pixazo",
        "--port",
        "0",
        "--api-key",
        "demo-key",
        "--quiet",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 10)).decode()
        match = re.search(r"PIXAZO_BASE_URL=(\S+) PIXAZO_API_KEY=(\S+)", line)
        assert match, line
        base_url, key = match.groups()
        async with http.post(
            base_url + SUBMIT_PATH,
            json={"prompt": "hello"},
            headers={"Ocp-Apim-Subscription-Key": key},
        ) as response:
            assert response.status == 202
    finally:
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 10) == 0
