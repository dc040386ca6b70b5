"""An async client for the Pixazo Krea 2 Large API. It knows nothing of Discord.

It is an API client and nothing else: :meth:`PixazoClient.submit`, :meth:`~PixazoClient.status`
and :meth:`~PixazoClient.download` each make exactly one HTTP request, over one request path
(:meth:`PixazoClient._request`) with one error map (:meth:`PixazoClient._raise_for_status`).
It never sleeps and never retries: every error says whether the request provably was not
taken (:attr:`~bot.pixazo.errors.PixazoError.not_taken`), and the caller (the job runner)
decides what to try again and when.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from pydantic import ValidationError

from .errors import (
    BadRequest,
    ConnectionFailed,
    DownloadRejected,
    InsufficientBalance,
    NotFound,
    PixazoTimeout,
    RateLimited,
    ServerError,
    Unauthorized,
    UnexpectedResponse,
)
from .models import StatusResponse, SubmitResponse, TextToImageRequest
from .safety import PrivateAddress, PublicOnlyResolver

log = logging.getLogger(__name__)

SUBMIT_PATH = "/krea-2-large-text-to-image/v1/krea-2-large-text-to-image-request"
STATUS_PATH = "/v2/requests/status/{request_id}"
DEFAULT_BASE_URL = "https://gateway.pixazo.ai"
DEFAULT_MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
#: Redirects a media download may follow (each hop checked like the first URL).
MAX_MEDIA_REDIRECTS = 3


@dataclass(frozen=True)
class DownloadedMedia:
    """Bytes of a generated image and their MIME type."""

    data: bytes
    content_type: str


def sniff_image_type(head: bytes) -> str | None:
    """The MIME type of image bytes by their magic number (PNG, JPEG, WebP), else None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


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
    """Submits Krea 2 Large jobs, asks their status and downloads results; one request each.

    The aiohttp session is injected and owned by the caller. The API key is sent only to
    the configured gateway origin, and submits and status calls follow no redirect (the key
    would travel with it). Media from any other host is fetched over HTTPS from public
    addresses only, through a small session of the client's own (:meth:`close` it).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        request_timeout: float = 30.0,
        submit_timeout: float = 60.0,
    ) -> None:
        self._session = session
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        self._origin = (parts.scheme, parts.netloc)
        self._request_timeout = aiohttp.ClientTimeout(total=request_timeout, connect=10)
        self._submit_timeout = aiohttp.ClientTimeout(total=submit_timeout, connect=10)
        self._media_session: aiohttp.ClientSession | None = None

    def _untrusted_session(self) -> aiohttp.ClientSession:
        """The session for hosts other than the gateway: public addresses only."""
        if self._media_session is None or self._media_session.closed:
            connector = aiohttp.TCPConnector(resolver=PublicOnlyResolver(), limit=20)
            self._media_session = aiohttp.ClientSession(connector=connector)
        return self._media_session

    async def close(self) -> None:
        """Close the client's own media session (the injected one is the caller's)."""
        if self._media_session is not None:
            await self._media_session.close()
            self._media_session = None

    def __repr__(self) -> str:
        return f"PixazoClient(base_url={self.base_url!r})"

    # -- the one request path ----------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "Cache-Control": "no-cache",
            "Ocp-Apim-Subscription-Key": self._api_key,
        }

    def _same_origin(self, url: str) -> bool:
        parts = urlsplit(url)
        return (parts.scheme, parts.netloc) == self._origin

    @contextlib.asynccontextmanager
    async def _request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        time_limit: aiohttp.ClientTimeout,
        headers: dict[str, str] | None = None,
        body: Any = None,
        session: aiohttp.ClientSession | None = None,
        redirects_ok: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request (following no redirect) and hand over its (successful) response;
        every failure becomes a :class:`~bot.pixazo.errors.PixazoError` the same way, whoever
        reads the body. A redirect is an error unless ``redirects_ok`` (the caller follows
        it, checking where it goes)."""
        try:
            async with (session or self._session).request(
                method, url, json=body, headers=headers, timeout=time_limit, allow_redirects=False
            ) as response:
                if 300 <= response.status < 400 and not redirects_ok:
                    raise UnexpectedResponse(
                        f"{what} answered with a redirect ({response.status}); not followed, "
                        "so the API key stays with the gateway",
                        status=response.status,
                    )
                await self._raise_for_status(response)
                yield response
        except aiohttp.ClientConnectorError as exc:
            if isinstance(getattr(exc, "os_error", None), PrivateAddress):
                raise DownloadRejected(f"refusing to fetch from {exc.host}: not public") from exc
            # The connection was never made: not a byte of the request left.
            raise ConnectionFailed(f"cannot connect to {what}: {exc}", sent=False) from exc
        except TimeoutError as exc:
            raise PixazoTimeout(f"{what} did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise ConnectionFailed(f"the connection to {what} failed: {exc}", sent=True) from exc

    async def _read_json(self, response: aiohttp.ClientResponse, what: str) -> Any:
        try:
            return await response.json(content_type=None)
        except ValueError as exc:
            raise UnexpectedResponse(f"{what}: the answer is not JSON") from exc

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
        """The one error map: an HTTP status to a typed error."""
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
            raise RateLimited(text or "Too Many Requests", retry_after=retry_after)
        if status >= 500:
            raise ServerError(f"gateway error {status}: {text}", status=status)
        raise UnexpectedResponse(f"unexpected status {status}: {text}", status=status)

    # -- the API -----------------------------------------------------------------------

    async def submit(
        self, request: TextToImageRequest, webhook_url: str | None = None
    ) -> SubmitResponse:
        """Send a generate request (paid). One attempt: the caller decides on retries."""
        headers = self._headers()
        if webhook_url:
            headers["X-Webhook-URL"] = webhook_url
        async with self._request(
            "POST",
            self.base_url + SUBMIT_PATH,
            "the gateway",
            time_limit=self._submit_timeout,
            headers=headers,
            body=request.to_body(),
        ) as response:
            if response.status not in (200, 202):
                raise UnexpectedResponse(
                    f"unexpected status {response.status}", status=response.status
                )
            payload = await self._read_json(response, "submit")
        try:
            return SubmitResponse.model_validate(payload)
        except ValidationError as exc:
            raise UnexpectedResponse(f"malformed submit response: {exc}") from exc

    def status_url(self, request_id: str, polling_url: str | None = None) -> str:
        """The URL to poll: the gateway's polling_url when it is on the gateway's origin."""
        if polling_url and self._same_origin(polling_url):
            return polling_url
        return self.base_url + STATUS_PATH.format(request_id=request_id)

    async def status(self, request_id: str, polling_url: str | None = None) -> StatusResponse:
        """The job's status (free). One attempt."""
        async with self._request(
            "GET",
            self.status_url(request_id, polling_url),
            "the gateway",
            time_limit=self._request_timeout,
            headers=self._headers(),
        ) as response:
            payload = await self._read_json(response, "status")
        try:
            return StatusResponse.model_validate(payload)
        except ValidationError as exc:
            raise UnexpectedResponse(f"malformed status response: {exc}") from exc

    async def download(
        self, media_url: str, *, max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    ) -> DownloadedMedia:
        """Download a result image (one attempt, a few redirects at most): from the gateway's
        origin, or over HTTPS from a public address; capped; an image by its bytes (a CDN's
        Content-Type is not trusted either way)."""
        url = media_url
        for _hop in range(MAX_MEDIA_REDIRECTS + 1):
            trusted = self._same_origin(url)
            if not trusted and urlsplit(url).scheme != "https":
                raise DownloadRejected("refusing to download media from a non-https URL")
            session = self._session if trusted else self._untrusted_session()
            async with self._request(
                "GET",
                url,
                "the media host",
                time_limit=self._request_timeout,
                session=session,
                redirects_ok=True,
            ) as response:
                if 300 <= response.status < 400:
                    location = response.headers.get("Location")
                    if not location:
                        raise DownloadRejected("the media host redirected nowhere")
                    url = urljoin(url, location)
                    continue
                return await self._read_image(response, max_bytes)
        raise DownloadRejected(f"the media redirected more than {MAX_MEDIA_REDIRECTS} times")

    @staticmethod
    async def _read_image(response: aiohttp.ClientResponse, max_bytes: int) -> DownloadedMedia:
        """The body of a media response, capped, and an image by its first bytes."""
        declared = response.content_length
        if declared is not None and declared > max_bytes:
            raise DownloadRejected(f"the image is {declared} bytes, over the {max_bytes} byte cap")
        # BytesIO.getvalue() hands over its buffer without a copy: peak memory stays about
        # one image, where a list of chunks plus join() needs two.
        buffer = io.BytesIO()
        size = 0
        kind: str | None = None
        head = b""
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > max_bytes:
                raise DownloadRejected(f"the image is over the {max_bytes} byte cap")
            buffer.write(chunk)
            if kind is None and len(head) < 12:
                head += chunk[: 12 - len(head)]
                if len(head) < 12:
                    continue
                kind = sniff_image_type(head)
                if kind is None:
                    declared_type = response.content_type or "?"
                    raise DownloadRejected(f"the media is not an image ({declared_type})")
        if kind is None:
            raise DownloadRejected("the media is not an image (too short)")
        return DownloadedMedia(buffer.getvalue(), kind)


__all__ = ["DownloadedMedia", "PixazoClient", "parse_retry_after", "sniff_image_type"]
