"""An async client for the Pixazo Krea 2 Large API. It knows nothing of Discord."""

from __future__ import annotations

import asyncio
import io
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from pydantic import ValidationError

from .errors import (
    BadRequest,
    ConnectionFailed,
    DownloadRejected,
    InsufficientBalance,
    JobFailed,
    NotFound,
    PixazoError,
    PixazoTimeout,
    RateLimited,
    ServerError,
    Unauthorized,
    UnexpectedResponse,
)
from .models import StatusResponse, SubmitResponse, TextToImageRequest

log = logging.getLogger(__name__)

SUBMIT_PATH = "/krea-2-large-text-to-image/v1/krea-2-large-text-to-image-request"
STATUS_PATH = "/v2/requests/status/{request_id}"
DEFAULT_BASE_URL = "https://gateway.pixazo.ai"
DEFAULT_MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter for calls that are safe to repeat."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to sleep before retry number ``attempt`` (0-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay * 3)
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


@dataclass(frozen=True)
class PollSchedule:
    """Delays between status polls: ``first``, then growing by ``factor`` up to ``cap``."""

    first: float = 2.0
    interval: float = 1.0
    factor: float = 1.3
    cap: float = 5.0

    def delays(self) -> Iterator[float]:
        """An endless iterator of delays in seconds."""
        yield self.first
        delay = self.interval
        while True:
            yield delay
            delay = min(self.cap, delay * self.factor)


@dataclass(frozen=True)
class DownloadedMedia:
    """Bytes of a generated image and their MIME type."""

    data: bytes
    content_type: str


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form), or None."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


class PixazoClient:
    """Submits Krea 2 Large jobs, polls their status and downloads results.

    The aiohttp session is injected and owned by the caller. The API key is sent
    only to the configured gateway origin.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        retry: RetryPolicy | None = None,
        request_timeout: float = 30.0,
        submit_timeout: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._session = session
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        self._origin = (parts.scheme, parts.netloc)
        self._retry = retry or RetryPolicy()
        self._request_timeout = aiohttp.ClientTimeout(total=request_timeout, connect=10)
        self._submit_timeout = aiohttp.ClientTimeout(total=submit_timeout, connect=10)
        self._sleep = sleep
        self._polling_urls: dict[str, str] = {}
        #: Called after every submit and status call with (kind, HTTP status or None, seconds).
        self.on_call: Callable[[str, int | None, float], None] | None = None
        #: Called on every 429 with its Retry-After (so every caller can slow down together).
        self.on_rate_limited: Callable[[float | None], None] | None = None

    def _record(self, kind: str, status: int | None, started: float) -> None:
        if self.on_call is not None:
            self.on_call(kind, status, time.monotonic() - started)

    def __repr__(self) -> str:
        return f"PixazoClient(base_url={self.base_url!r})"

    # -- helpers -----------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "Cache-Control": "no-cache",
            "Ocp-Apim-Subscription-Key": self._api_key,
        }

    def _same_origin(self, url: str) -> bool:
        parts = urlsplit(url)
        return (parts.scheme, parts.netloc) == self._origin

    def status_url(self, request_id: str, polling_url: str | None = None) -> str:
        """The URL to poll: the gateway's polling_url when it is on the gateway's origin."""
        url = polling_url or self._polling_urls.get(request_id)
        if url and self._same_origin(url):
            return url
        return self.base_url + STATUS_PATH.format(request_id=request_id)

    @staticmethod
    async def _error_text(response: aiohttp.ClientResponse) -> str:
        try:
            body = await response.json(content_type=None)
        except (aiohttp.ContentTypeError, ValueError):
            text = (await response.text(errors="replace"))[:300]
            return text.strip() or response.reason or "no details"
        if isinstance(body, dict):
            message = body.get("message") or body.get("error")
            if message:
                return str(message)[:500]
        return str(body)[:300]

    async def _raise_for_status(self, response: aiohttp.ClientResponse) -> None:
        status = response.status
        if status < 400:
            return
        text = await self._error_text(response)
        if self._api_key:  # the gateway's text is untrusted: it may echo the key back
            text = text.replace(self._api_key, "[redacted]")
        if status == 400:
            raise BadRequest(text, status=status)
        if status in (401, 403):
            raise Unauthorized(
                "the gateway refused the Pixazo API key" + (f" ({text})" if text else ""),
                status=status,
            )
        if status == 402:
            raise InsufficientBalance(text or "Insufficient Balance", status=status)
        if status == 404:
            raise NotFound(text, status=status)
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if self.on_rate_limited is not None:
                self.on_rate_limited(retry_after)
            raise RateLimited(text or "Too Many Requests", retry_after=retry_after)
        if status >= 500:
            raise ServerError(f"gateway error {status}: {text}", status=status)
        raise UnexpectedResponse(f"unexpected status {status}: {text}", status=status)

    async def _with_retries(self, call: Callable[[], Awaitable[Any]], what: str) -> Any:
        attempt = 0
        while True:
            try:
                return await call()
            except (RateLimited, ServerError, ConnectionFailed, PixazoTimeout) as exc:
                if attempt + 1 >= self._retry.attempts:
                    raise
                retry_after = exc.retry_after if isinstance(exc, RateLimited) else None
                delay = self._retry.delay(attempt, retry_after)
                log.info("%s failed (%s); retrying in %.2fs", what, exc.message, delay)
                await self._sleep(delay)
                attempt += 1

    # -- the API -----------------------------------------------------------------

    async def submit(
        self, request: TextToImageRequest, webhook_url: str | None = None
    ) -> SubmitResponse:
        """Send a generate request. Paid: retried only when the gateway surely did not take it."""
        headers = self._headers()
        if webhook_url:
            headers["X-Webhook-URL"] = webhook_url
        body = request.to_body()
        url = self.base_url + SUBMIT_PATH

        async def once() -> SubmitResponse:
            started, status = time.monotonic(), None
            try:
                async with self._session.post(
                    url, json=body, headers=headers, timeout=self._submit_timeout
                ) as response:
                    status = response.status
                    await self._raise_for_status(response)
                    if response.status != 202 and response.status != 200:
                        raise UnexpectedResponse(
                            f"unexpected status {response.status}", status=response.status
                        )
                    payload = await response.json(content_type=None)
            except aiohttp.ClientConnectorError as exc:
                raise ConnectionFailed(f"cannot connect to the gateway: {exc}", sent=False) from exc
            except TimeoutError as exc:
                raise PixazoTimeout("the gateway did not answer the submit in time") from exc
            except aiohttp.ClientError as exc:
                raise ConnectionFailed(
                    f"connection to the gateway failed: {exc}", sent=True
                ) from exc
            finally:
                self._record("submit", status, started)
            try:
                result = SubmitResponse.model_validate(payload)
            except ValidationError as exc:
                raise UnexpectedResponse(f"malformed submit response: {exc}") from exc
            self._polling_urls[result.request_id] = result.polling_url
            return result

        attempt = 0
        while True:
            try:
                return await once()
            except (RateLimited, ConnectionFailed) as exc:
                safe = isinstance(exc, RateLimited) or (
                    isinstance(exc, ConnectionFailed) and not exc.sent
                )
                if not safe or attempt + 1 >= self._retry.attempts:
                    raise
                retry_after = exc.retry_after if isinstance(exc, RateLimited) else None
                delay = self._retry.delay(attempt, retry_after)
                log.info("submit not taken (%s); retrying in %.2fs", exc.message, delay)
                await self._sleep(delay)
                attempt += 1

    async def status_once(self, request_id: str, polling_url: str | None = None) -> StatusResponse:
        """One status call, without retries."""
        url = self.status_url(request_id, polling_url)
        started, status = time.monotonic(), None
        try:
            async with self._session.get(
                url, headers=self._headers(), timeout=self._request_timeout
            ) as response:
                status = response.status
                await self._raise_for_status(response)
                payload = await response.json(content_type=None)
        except aiohttp.ClientConnectorError as exc:
            raise ConnectionFailed(f"cannot connect to the gateway: {exc}", sent=False) from exc
        except TimeoutError as exc:
            raise PixazoTimeout("the gateway did not answer the status call in time") from exc
        except aiohttp.ClientError as exc:
            raise ConnectionFailed(f"connection to the gateway failed: {exc}", sent=True) from exc
        finally:
            self._record("status", status, started)
        try:
            return StatusResponse.model_validate(payload)
        except ValidationError as exc:
            raise UnexpectedResponse(f"malformed status response: {exc}") from exc

    async def status(self, request_id: str, polling_url: str | None = None) -> StatusResponse:
        """The job's status; retried on 429 (honouring Retry-After), 5xx and connection errors."""
        result: StatusResponse = await self._with_retries(
            lambda: self.status_once(request_id, polling_url), "status poll"
        )
        return result

    async def wait(
        self,
        request_id: str,
        *,
        polling_url: str | None = None,
        max_wait: float = 600.0,
        schedule: PollSchedule | Iterable[float] | None = None,
        on_status: Callable[[StatusResponse], Awaitable[None]] | None = None,
        wake: asyncio.Event | None = None,
        before_poll: Callable[[], Awaitable[None]] | None = None,
    ) -> StatusResponse:
        """Poll until the job is terminal and return its COMPLETED status.

        Raises :class:`JobFailed` for FAILED/ERROR and :class:`PixazoTimeout` when
        ``max_wait`` seconds pass. ``wake``, when set by someone (e.g. a webhook), cuts the
        current sleep short; ``before_poll`` is awaited before each status call (a shared
        rate limit, for example).
        """
        delays: Iterator[float]
        if schedule is None:
            delays = PollSchedule().delays()
        elif isinstance(schedule, PollSchedule):
            delays = schedule.delays()
        else:
            delays = iter(schedule)
        deadline = time.monotonic() + max_wait
        last_status: str | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PixazoTimeout(
                    f"the job was still {last_status or 'pending'} after {max_wait:.0f} s"
                )
            delay = min(next(delays, 5.0), remaining)
            if wake is not None:
                try:
                    await asyncio.wait_for(wake.wait(), delay)
                except TimeoutError:
                    pass
                wake.clear()
            else:
                await self._sleep(delay)
            if before_poll is not None:
                await before_poll()
            result = await self.status(request_id, polling_url)
            last_status = result.status
            if on_status is not None:
                await on_status(result)
            if result.status == "COMPLETED":
                return result
            if result.status in ("FAILED", "ERROR"):
                raise JobFailed(result.status, result.error, request_id=request_id)

    async def download(
        self, media_url: str, *, max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    ) -> DownloadedMedia:
        """Download a result image: https or the gateway's origin only, image/* only, capped."""
        parts = urlsplit(media_url)
        if parts.scheme != "https" and not self._same_origin(media_url):
            raise DownloadRejected("refusing to download media from a non-https URL")

        async def once() -> DownloadedMedia:
            # BytesIO.getvalue() hands over its buffer without a copy: peak memory stays
            # about one image, where a list of chunks plus join() needs two.
            buffer = io.BytesIO()
            size = 0
            try:
                async with self._session.get(media_url, timeout=self._request_timeout) as response:
                    await self._raise_for_status(response)
                    content_type = response.content_type or ""
                    if not content_type.startswith("image/"):
                        raise DownloadRejected(f"the media is not an image ({content_type or '?'})")
                    declared = response.content_length
                    if declared is not None and declared > max_bytes:
                        raise DownloadRejected(
                            f"the image is {declared} bytes, over the {max_bytes} byte cap"
                        )
                    async for chunk in response.content.iter_chunked(64 * 1024):
                        size += len(chunk)
                        if size > max_bytes:
                            raise DownloadRejected(f"the image is over the {max_bytes} byte cap")
                        buffer.write(chunk)
            except aiohttp.ClientConnectorError as exc:
                raise ConnectionFailed(
                    f"cannot connect to the media host: {exc}", sent=False
                ) from exc
            except TimeoutError as exc:
                raise PixazoTimeout("the media download took too long") from exc
            except aiohttp.ClientError as exc:
                raise ConnectionFailed(f"the media download failed: {exc}", sent=True) from exc
            return DownloadedMedia(buffer.getvalue(), content_type)

        result: DownloadedMedia = await self._with_retries(once, "download")
        return result


__all__ = ["PixazoClient", "PixazoError", "PollSchedule", "RetryPolicy"]
