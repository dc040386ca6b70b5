"""PixazoClient against the fake gateway, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import io
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from bot.pixazo import (
    BadRequest,
    ConnectionFailed,
    DownloadRejected,
    InsufficientBalance,
    NotFound,
    PixazoClient,
    PixazoTimeout,
    RateLimited,
    ServerError,
    StatusResponse,
    TextToImageRequest,
    Unauthorized,
    build_request,
)
from fake_pixazo import KEY_HEADER, WEBHOOK_HEADER, FakePixazo, image_size

from .helpers import API_KEY

BOARD = "123e4567-e89b-12d3-a456-426614174000"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_client(
    fake: FakePixazo | None,
    session: aiohttp.ClientSession,
    *,
    base_url: str | None = None,
    api_key: str = API_KEY,
    submit_timeout: float = 2.0,
) -> PixazoClient:
    url = base_url if base_url is not None else fake.base_url if fake else ""
    return PixazoClient(
        session, api_key, base_url=url, request_timeout=2.0, submit_timeout=submit_timeout
    )


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def wait_terminal(client: PixazoClient, request_id: str) -> StatusResponse:
    """Ask the status until the job ends (the runner's poll loop, reduced to its core)."""
    async with asyncio.timeout(5):
        while True:
            status = await client.status(request_id)
            if status.terminal:
                return status
            await asyncio.sleep(0.01)


async def generate(client: PixazoClient, request: TextToImageRequest) -> bytes:
    """Submit, wait for completion and download the image."""
    accepted = await client.submit(request)
    done = await wait_terminal(client, accepted.request_id)
    assert done.output is not None
    media = await client.download(done.output.media_url[0])
    return media.data


# -- 1. serialisation ---------------------------------------------------------------------


async def test_every_parameter_is_serialised_as_the_reference_shows(
    fake: FakePixazo, client: PixazoClient
) -> None:
    request = build_request(
        prompt="A Van Gogh-tinged Provencal farmhouse under starry nights",
        aspect_ratio="2.35:1",
        creativity="high",
        seed=1234567,
        image_style_references=[
            {"image_url": "https://cdn.example.com/a.png", "strength": 0.75},
            {"image_url": "https://cdn.example.com/b.jpg?size=large", "strength": -1.5},
        ],
        styles=[{"id": "krea/watercolor", "strength": 0.6}, {"id": "film-noir", "strength": -2}],
        moodboards=[{"id": uuid.UUID(BOARD.upper()), "strength": 0.4}],
    )

    accepted = await client.submit(request)

    [record] = fake.submits()
    assert record.status == 202
    assert record.method == "POST"
    assert record.path == "/krea-2-large-text-to-image/v1/krea-2-large-text-to-image-request"
    assert record.body == {
        "prompt": "A Van Gogh-tinged Provencal farmhouse under starry nights",
        "aspect_ratio": "2.35:1",
        "creativity": "high",
        "seed": 1234567,
        "image_style_references": [
            {"image_url": "https://cdn.example.com/a.png", "strength": 0.75},
            {"image_url": "https://cdn.example.com/b.jpg?size=large", "strength": -1.5},
        ],
        "styles": [
            {"id": "krea/watercolor", "strength": 0.6},
            {"id": "film-noir", "strength": -2.0},
        ],
        "moodboards": [{"id": BOARD, "strength": 0.4}],
    }
    assert isinstance(record.body["seed"], int)
    assert record.headers["Content-Type"] == "application/json"
    assert record.headers["Cache-Control"] == "no-cache"
    assert record.headers[KEY_HEADER] == API_KEY
    assert WEBHOOK_HEADER not in record.headers
    assert accepted.request_id == record.request_id
    assert accepted.status == "QUEUED"
    assert accepted.polling_url == fake.status_url(accepted.request_id)


async def test_defaults_are_sent_and_seed_omitted(fake: FakePixazo, client: PixazoClient) -> None:
    await client.submit(build_request(prompt="A farmhouse"))

    [record] = fake.submits()
    assert record.body == {
        "prompt": "A farmhouse",
        "aspect_ratio": "1:1",
        "creativity": "medium",
        "image_style_references": [],
        "styles": [],
        "moodboards": [],
    }
    assert "seed" not in record.body


async def test_webhook_header_only_when_given(fake: FakePixazo, client: PixazoClient) -> None:
    hook = fake.base_url + "/webhook/callback"
    await client.submit(build_request(prompt="with a hook"), webhook_url=hook)
    await client.submit(build_request(prompt="without a hook"))

    with_hook, without_hook = fake.submits()
    assert with_hook.headers[WEBHOOK_HEADER] == hook
    assert WEBHOOK_HEADER not in without_hook.headers


async def test_status_uses_the_key_and_the_gateway_polling_url(
    fake: FakePixazo, client: PixazoClient
) -> None:
    accepted = await client.submit(build_request(prompt="p"))
    status = await client.status(accepted.request_id)

    [call] = fake.status_calls(accepted.request_id)
    assert call.method == "GET"
    assert call.path == f"/v2/requests/status/{accepted.request_id}"
    assert call.headers[KEY_HEADER] == API_KEY
    assert status.request_id == accepted.request_id
    assert status.model_id == "krea-2-large-text-to-image"


async def test_foreign_polling_url_is_ignored_so_the_key_stays_home(
    fake: FakePixazo, client: PixazoClient
) -> None:
    accepted = await client.submit(build_request(prompt="p"))
    foreign = f"https://attacker.example/v2/requests/status/{accepted.request_id}"

    status = await client.status(accepted.request_id, polling_url=foreign)

    assert status.request_id == accepted.request_id
    assert len(fake.status_calls(accepted.request_id)) == 1


# -- 3. HTTP errors mapped to typed errors ---------------------------------------------------


async def test_400_from_the_gateway_is_bad_request_with_its_message(
    fake: FakePixazo, client: PixazoClient
) -> None:
    expired = "https://cdn.discordapp.com/attachments/1/2/a.png?ex=5f5e1000&is=5f5e0000&hm=ab"
    request = build_request(prompt="p", image_style_references=[{"image_url": expired}])

    with pytest.raises(BadRequest) as caught:
        await client.submit(request)

    assert caught.value.status == 400
    assert caught.value.message == (
        "could not fetch image_style_references[0].image_url: URL expired"
    )
    assert len(fake.submits()) == 1
    assert fake.jobs == {}


async def test_400_model_not_found(fake: FakePixazo, client: PixazoClient) -> None:
    message = "Model 'krea-2-large-text-to-image' not found or is disabled"
    fake.fail_next("submit", 400, {"error": "Model not found", "message": message})

    with pytest.raises(BadRequest) as caught:
        await client.submit(build_request(prompt="p"))

    assert caught.value.message == message


async def test_wrong_key_is_unauthorized_without_the_key_in_the_message(
    fake: FakePixazo, session: aiohttp.ClientSession
) -> None:
    wrong_key = "sk-wrong-0123456789abcdef"
    client = make_client(fake, session, api_key=wrong_key)

    with pytest.raises(Unauthorized) as caught:
        await client.submit(build_request(prompt="p"))

    assert caught.value.status == 401
    assert wrong_key not in str(caught.value)
    assert wrong_key not in repr(caught.value)
    assert fake.jobs == {}


@pytest.mark.parametrize("status", [401, 403])
async def test_401_and_403_are_unauthorized_even_when_the_gateway_echoes_the_key(
    status: int, fake: FakePixazo, client: PixazoClient
) -> None:
    fake.fail_next(
        "submit", status, {"error": "Unauthorized", "message": f"Key {API_KEY} is not allowed"}
    )

    with pytest.raises(Unauthorized) as caught:
        await client.submit(build_request(prompt="p"))

    assert caught.value.status == status
    assert API_KEY not in str(caught.value)
    assert API_KEY not in caught.value.message


async def test_403_on_status_is_unauthorized(fake: FakePixazo, client: PixazoClient) -> None:
    fake.fail_next("status", 403)
    with pytest.raises(Unauthorized):
        await client.status("krea-2-large-text-to-image_x")
    assert len(fake.status_calls()) == 1


async def test_402_is_insufficient_balance(fake: FakePixazo, client: PixazoClient) -> None:
    fake.set_balance(0)

    with pytest.raises(InsufficientBalance) as caught:
        await client.submit(build_request(prompt="p"))

    assert caught.value.status == 402
    assert caught.value.message == "Your wallet does not have enough balance."
    assert len(fake.submits()) == 1


async def test_429_is_rate_limited_with_retry_after(fake: FakePixazo, client: PixazoClient) -> None:
    fake.fail_next("status", 429, headers={"Retry-After": "7"})

    with pytest.raises(RateLimited) as caught:
        await client.status("krea-2-large-text-to-image_x")

    assert caught.value.status == 429
    assert caught.value.retry_after == 7.0
    assert caught.value.transient


async def test_429_on_submit_is_one_request_and_provably_not_taken(
    fake: FakePixazo, client: PixazoClient
) -> None:
    fake.fail_next("submit", 429, headers={"Retry-After": "3"}, times=5)

    with pytest.raises(RateLimited) as caught:
        await client.submit(build_request(prompt="p"))

    assert caught.value.retry_after == 3.0
    assert caught.value.not_taken  # the runner may send it again
    assert len(fake.submits()) == 1  # the client itself never retries
    assert fake.jobs == {}


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_on_submit_is_server_error_and_not_retried(
    status: int, fake: FakePixazo, client: PixazoClient
) -> None:
    fake.fail_next("submit", status)

    with pytest.raises(ServerError) as caught:
        await client.submit(build_request(prompt="p"))

    assert caught.value.status == status
    assert str(status) in caught.value.message
    assert not caught.value.not_taken
    assert len(fake.submits()) == 1


async def test_html_502_from_a_proxy_is_server_error(
    fake: FakePixazo, client: PixazoClient
) -> None:
    fake.fail_next("submit", 502, text="<html><body>Bad gateway</body></html>")

    with pytest.raises(ServerError, match="Bad gateway"):
        await client.submit(build_request(prompt="p"))


async def test_404_on_status_is_not_found(fake: FakePixazo, client: PixazoClient) -> None:
    with pytest.raises(NotFound) as caught:
        await client.status("krea-2-large-text-to-image_unknown")

    assert caught.value.status == 404
    assert "krea-2-large-text-to-image_unknown" in caught.value.message
    assert len(fake.status_calls()) == 1


async def test_5xx_on_status_is_one_transient_request(
    fake: FakePixazo, client: PixazoClient
) -> None:
    accepted = await client.submit(build_request(prompt="p"))
    fake.fail_next("status", 503)

    with pytest.raises(ServerError) as caught:
        await client.status(accepted.request_id)

    assert caught.value.transient  # the runner polls again later
    assert [c.status for c in fake.status_calls()] == [503]
    assert (await client.status(accepted.request_id)).request_id == accepted.request_id


# -- 5. what a submit error says about the money ---------------------------------------------


async def test_submit_read_timeout_may_have_been_taken(
    fake: FakePixazo, session: aiohttp.ClientSession
) -> None:
    client = make_client(fake, session, submit_timeout=0.2)
    fake.hang_after_accept_next()

    started = time.monotonic()
    with pytest.raises(PixazoTimeout) as caught:
        await client.submit(build_request(prompt="p"))

    assert time.monotonic() - started < 1.5
    assert not caught.value.not_taken
    assert len(fake.submits()) == 1
    assert len(fake.jobs) == 1  # the gateway took (and charged) it: a retry would double-charge


async def test_submit_connection_dropped_after_sending_may_have_been_taken(
    fake: FakePixazo, client: PixazoClient
) -> None:
    fake.drop_next("submit")

    with pytest.raises(ConnectionFailed) as caught:
        await client.submit(build_request(prompt="p"))

    assert caught.value.sent is True and not caught.value.not_taken
    assert len(fake.submits()) == 1


async def test_submit_connection_refused_was_provably_not_taken(
    session: aiohttp.ClientSession,
) -> None:
    client = make_client(None, session, base_url=f"http://127.0.0.1:{closed_port()}")

    with pytest.raises(ConnectionFailed) as caught:
        await client.submit(build_request(prompt="p"))

    assert caught.value.sent is False and caught.value.not_taken
    assert API_KEY not in caught.value.message


# -- 6. FAILED and ERROR ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job_status", "error"), [("FAILED", "Content flagged"), ("ERROR", "GPU worker crashed")]
)
async def test_status_reports_failed_and_error_with_their_text(
    job_status: Any, error: str, fake: FakePixazo, client: PixazoClient
) -> None:
    fake.next_outcome(job_status, error)
    accepted = await client.submit(build_request(prompt="p"))

    done = await wait_terminal(client, accepted.request_id)

    assert (done.status, done.error) == (job_status, error)
    assert done.request_id == accepted.request_id


# -- 7. downloads ----------------------------------------------------------------------------


@pytest.fixture
async def other_origin() -> AsyncIterator[tuple[str, list[web.Request]]]:
    """A second loopback server (another origin) that serves a chunked image and records."""
    seen: list[web.Request] = []

    async def chunked(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for index in range(8):
            head = PNG_SIGNATURE if index == 0 else b""
            await response.write(head + b"\0" * (1024 - len(head)))
        await response.write_eof()
        return response

    async def html_says_png(request: web.Request) -> web.Response:
        return web.Response(body=b"<html>" + b"x" * 100, headers={"Content-Type": "image/png"})

    async def png_says_octets(request: web.Request) -> web.Response:
        body = PNG_SIGNATURE + b"\0" * 100
        return web.Response(body=body, headers={"Content-Type": "application/octet-stream"})

    app = web.Application()
    app.router.add_get("/chunked.png", chunked)
    app.router.add_get("/html-says-png", html_says_png)
    app.router.add_get("/png-says-octets", png_says_octets)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", seen
    finally:
        await runner.cleanup()


async def completed_media_url(fake: FakePixazo, client: PixazoClient, **fields: Any) -> str:
    accepted = await client.submit(build_request(prompt="a red fox", **fields))
    job = await fake.wait_for_job(accepted.request_id)
    assert job.status == "COMPLETED"
    return fake.media_url(accepted.request_id)


async def test_download_of_the_fake_png(fake: FakePixazo, client: PixazoClient) -> None:
    fake.long_edge = 96
    url = await completed_media_url(fake, client, aspect_ratio="16:9")

    media = await client.download(url)

    assert media.content_type == "image/png"
    assert media.data.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(media.data)) as image:
        assert image.size == image_size("16:9", 96) == (96, 54)
    [call] = fake.media_calls()
    assert KEY_HEADER not in call.headers


async def test_download_over_the_cap_is_refused(fake: FakePixazo, client: PixazoClient) -> None:
    url = await completed_media_url(fake, client)

    with pytest.raises(DownloadRejected, match="cap"):
        await client.download(url, max_bytes=1024)

    assert len(fake.media_calls()) == 1


async def test_streamed_download_over_the_cap_is_refused(
    other_origin: tuple[str, list[web.Request]], session: aiohttp.ClientSession
) -> None:
    base, seen = other_origin
    client = make_client(None, session, base_url=base)

    with pytest.raises(DownloadRejected, match="cap"):
        await client.download(base + "/chunked.png", max_bytes=4096)
    ok = await client.download(base + "/chunked.png", max_bytes=8192)

    assert len(ok.data) == 8192
    assert len(seen) == 2


async def test_a_download_is_judged_by_its_bytes_not_the_cdn_content_type(
    other_origin: tuple[str, list[web.Request]], session: aiohttp.ClientSession
) -> None:
    base, _ = other_origin
    client = make_client(None, session, base_url=base)

    with pytest.raises(DownloadRejected, match="not an image"):
        await client.download(base + "/html-says-png")  # says image/png, is HTML
    media = await client.download(base + "/png-says-octets")  # is a PNG, whatever it says
    assert media.content_type == "image/png" and media.data.startswith(PNG_SIGNATURE)


async def test_non_image_download_is_refused(fake: FakePixazo, client: PixazoClient) -> None:
    url = await completed_media_url(fake, client)
    fake.fail_next("media", 200, text="<html>Sign in to continue</html>")

    with pytest.raises(DownloadRejected, match="text/html"):
        await client.download(url)


async def test_non_https_download_from_another_origin_is_refused_unsent(
    fake: FakePixazo,
    client: PixazoClient,
    other_origin: tuple[str, list[web.Request]],
) -> None:
    base, seen = other_origin

    with pytest.raises(DownloadRejected, match="https"):
        await client.download(base + "/chunked.png")

    assert seen == []
    assert fake.requests == []


# -- 8. determinism --------------------------------------------------------------------------


async def test_same_seed_same_bytes_other_seed_other_bytes(
    fake: FakePixazo, session: aiohttp.ClientSession
) -> None:
    fake.long_edge = 64
    client = make_client(fake, session)
    params: dict[str, Any] = {
        "prompt": "a lighthouse",
        "aspect_ratio": "4:5",
        "styles": [{"id": "ink", "strength": 0.5}],
    }

    first = await generate(client, build_request(seed=42, **params))
    again = await generate(client, build_request(seed=42, **params))
    other = await generate(client, build_request(seed=43, **params))

    assert first.startswith(PNG_SIGNATURE)
    assert first == again
    assert other != first
    assert len(fake.jobs) == 3
