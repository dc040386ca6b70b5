"""A fake Pixazo gateway for Krea 2 Large, served by aiohttp on loopback.

It plays the gateway exactly as ``shared/api/krea-2-large-api.md`` describes, and lets a
test script faults, outcomes and timing, and inspect everything it was sent. It does not
import the bot's own client (``bot.pixazo``), so it is an independent check of it.

Endpoints (relative to ``base_url``, e.g. ``http://127.0.0.1:PORT``)::

    POST /krea-2-large-text-to-image/v1/krea-2-large-text-to-image-request   (key checked)
    GET  /v2/requests/status/{request_id}                                    (key checked)
    GET  /media/{request_id}/output.png                                      (public, like a CDN)

Order of checks on a keyed request: scripted fault -> key (401) -> rate limit (429) ->
body validation (400) -> expired reference URLs (400) -> balance (402) -> 202.
Every JSON response has ``Content-Type: application/json`` exactly.

Basic use::

    async with FakePixazo(api_key="k", queued_seconds=0.01, processing_seconds=0.05) as fake:
        ...  # point the client at fake.base_url with key "k"
        await fake.wait_for_submits(1)
        job = await fake.wait_for_job(fake.submits()[0].request_id)
        assert job.status == "COMPLETED"

Construction options: ``api_key``, ``queued_seconds``, ``processing_seconds`` (time a job
spends in each state; jobs advance on their own, so webhooks fire with nobody polling),
``long_edge`` and ``noisy`` (the PNG), ``balance`` (``None`` = unlimited; each accepted
submit costs 1, a job ending in ``ERROR`` is refunded, "System error - not charged"),
``clock`` (unix seconds, used for timestamps and the Discord ``ex`` expiry check),
``rate_limit`` (requests per second across the keyed endpoints, token bucket; over it ->
429 with ``Retry-After``), ``manual`` (jobs stay PROCESSING until :meth:`FakePixazo.finish`),
``webhook_backoff`` (sleeps between webhook attempts) and ``webhook_timeout``.
The timing, ``long_edge``, ``noisy``, ``manual`` and ``rate_limit`` attributes may be
changed at any time; a job takes their values when it is submitted.

Recording:

* ``fake.requests``: every :class:`RecordedRequest` (method, path, headers, parsed JSON
  body or ``None``, monotonic arrival time, response status or ``None`` if none was sent,
  the fault applied, the request id concerned).
* ``fake.submits()``, ``fake.status_calls(request_id=None)``, ``fake.media_calls(...)``.
* ``fake.jobs``: request id -> :class:`Job` (body, params, status, webhook url, outcome,
  wall-clock timestamps, ``status_times`` monotonic time each status was entered,
  ``terminal_at``).
* ``fake.webhook_deliveries``: every webhook POST attempt (:class:`WebhookDelivery`).

Faults, each consumed by the next ``times`` requests to an endpoint kind
(``"submit" | "status" | "media" | "any"``); a request consumes at most one fault, the
oldest that matches::

    fake.fail_next("status", status=429, headers={"Retry-After": "1"})
    fake.fail_next("submit", status=502, text="<html>Bad gateway</html>")
    fake.delay_next("submit", 5.0)          # sleep, then handle normally
    fake.drop_next("status")                # close the connection, no response
    fake.hang_after_accept_next()           # submit: job created and charged, no response
    fake.hang_after_accept_next(seconds=3)  # ... or the 202 comes 3 s late
    fake.clear_faults()

Outcomes (default ``COMPLETED``), decided when a job is submitted; a ``next_outcome`` script
wins over an ``outcome_for`` rule. Both can also set per-job timing and manual mode::

    fake.outcome_for(contains="forbidden", status="FAILED", error="Content flagged")
    fake.next_outcome("ERROR", "GPU worker crashed", times=1)
    fake.next_outcome(processing_seconds=2.0)     # a slow (but successful) job
    fake.finish(request_id, status="FAILED", error="...")  # end a job now (manual mode or not)
    fake.set_balance(0)

Webhooks: when the submit carried ``X-Webhook-URL``, the full status body is POSTed to it
when the job goes terminal. A 5xx/429 answer or connection error is retried after each of
``webhook_backoff``'s sleeps (so a receiver that fails scripts the "fail" case); a 2xx or
other 4xx ends delivery. ``fake.webhook_next(mode, times=1, delay_seconds=1.0)`` scripts the
next deliveries: ``"normal"``, ``"drop"`` (never sent), ``"duplicate"`` (sent twice),
``"delay"`` (sent after ``delay_seconds``).

Waiting (each raises ``TimeoutError`` naming what it waited for)::

    await fake.wait_for_submits(2, timeout=5)       # submit requests received
    await fake.wait_for_jobs(1)                     # jobs accepted
    await fake.wait_for_job(request_id)             # job terminal (or status="PROCESSING")
    await fake.wait_for_status_calls(3, request_id)
    await fake.wait_for_webhooks(1)                 # successful webhook POSTs
    await fake.wait_for(lambda: ..., what="...")    # any predicate over the fake's state
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from types import TracebackType
from typing import Any, Final, Literal, TypeVar, cast, get_args

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from fake_pixazo.images import DEFAULT_LONG_EDGE, render_png
from fake_pixazo.validation import (
    GenerationParams,
    ValidationFailed,
    expired_reference_problems,
    validate_request,
)

log = logging.getLogger(__name__)

MODEL_ID: Final = "krea-2-large-text-to-image"
SUBMIT_PATH: Final = "/krea-2-large-text-to-image/v1/krea-2-large-text-to-image-request"
STATUS_PATH_PREFIX: Final = "/v2/requests/status/"
MEDIA_PATH_PREFIX: Final = "/media/"
KEY_HEADER: Final = "Ocp-Apim-Subscription-Key"
WEBHOOK_HEADER: Final = "X-Webhook-URL"

DEFAULT_API_KEY: Final = "test-key"
DEFAULT_QUEUED_SECONDS: Final = 0.05
DEFAULT_PROCESSING_SECONDS: Final = 0.2
DEFAULT_WEBHOOK_BACKOFF: Final[tuple[float, ...]] = (0.1, 0.3)

JobStatus = Literal["QUEUED", "PROCESSING", "COMPLETED", "FAILED", "ERROR"]
TerminalStatus = Literal["COMPLETED", "FAILED", "ERROR"]
EndpointKind = Literal["submit", "status", "media", "any"]
RequestKind = Literal["submit", "status", "media", "other"]
WebhookMode = Literal["normal", "drop", "duplicate", "delay"]
FaultAction = Literal["fail", "delay", "drop", "hang"]

TERMINAL_STATUSES: Final[frozenset[str]] = frozenset(get_args(TerminalStatus))
_DEFAULT_ERRORS: Final[dict[str, str]] = {
    "FAILED": "Generation failed",
    "ERROR": "Internal server error",
}
_ERROR_BODIES: Final[dict[int, dict[str, str]]] = {
    401: {
        "error": "Unauthorized",
        "message": "Access denied due to invalid subscription key. "
        "Make sure to provide a valid key for an active subscription.",
    },
    402: {"error": "Insufficient Balance", "message": "Your wallet does not have enough balance."},
    403: {"error": "Forbidden", "message": "Access to this API has been disabled for your key."},
    429: {"error": "Too Many Requests", "message": "Rate limit is exceeded. Try again later."},
    500: {"error": "Internal Server Error", "message": "An unexpected error occurred."},
    502: {"error": "Bad Gateway", "message": "The upstream model service did not respond."},
    503: {"error": "Service Unavailable", "message": "The service is temporarily unavailable."},
    504: {"error": "Gateway Timeout", "message": "The upstream model service timed out."},
}

_T = TypeVar("_T")
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class RecordedRequest:
    """One HTTP request the fake received, and what it answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    body: Any
    """The parsed JSON body, or ``None`` when there was no body or it was not JSON."""
    raw_body: bytes
    time: float
    """``time.monotonic()`` when the request arrived."""
    kind: RequestKind
    status: int | None = None
    """The HTTP status sent, or ``None`` when no response was sent (dropped, hanging)."""
    responded_at: float | None = None
    fault: FaultAction | None = None
    request_id: str | None = None
    """For a submit, the job it created; for status and media calls, the id asked about."""


@dataclass(frozen=True)
class Outcome:
    """How a job will end."""

    status: TerminalStatus = "COMPLETED"
    error: str | None = None


@dataclass
class Job:
    """A generation job the fake accepted."""

    request_id: str
    body: dict[str, Any]
    params: GenerationParams
    webhook_url: str | None
    outcome: Outcome
    manual: bool
    queued_seconds: float
    processing_seconds: float
    long_edge: int
    noisy: bool
    created_at: float
    """Unix seconds (per the fake's clock) when the job was accepted."""
    status: JobStatus = "QUEUED"
    error: str | None = None
    updated_at: float = 0.0
    completed_at: float | None = None
    status_times: dict[str, float] = field(default_factory=dict)
    """``time.monotonic()`` when the job entered each status."""
    charged: bool = False
    refunded: bool = False
    webhook_mode: WebhookMode | None = None
    png: bytes | None = field(default=None, repr=False)

    @property
    def prompt(self) -> str:
        """The job's prompt."""
        return self.params.prompt

    @property
    def is_terminal(self) -> bool:
        """True once the job is COMPLETED, FAILED or ERROR."""
        return self.status in TERMINAL_STATUSES

    @property
    def terminal_at(self) -> float | None:
        """``time.monotonic()`` when the job became terminal, or ``None``."""
        return self.status_times.get(self.status) if self.is_terminal else None


@dataclass
class WebhookDelivery:
    """One webhook POST attempt."""

    request_id: str
    url: str
    body: dict[str, Any]
    copy: int
    """1, or 2 for the second copy of a duplicated webhook."""
    attempt: int
    """1 for the first try, then 2, 3, ... for retries."""
    time: float
    status: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        """True when the receiver answered 2xx."""
        return self.status is not None and 200 <= self.status < 300


@dataclass
class _Fault:
    kind: EndpointKind
    action: FaultAction
    remaining: int
    status: int = 500
    body: Any = None
    text: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float | None = None


@dataclass
class _JobScript:
    outcome: Outcome
    queued_seconds: float | None
    processing_seconds: float | None
    manual: bool | None
    remaining: int = 1


@dataclass
class _WebhookScript:
    mode: WebhookMode
    delay_seconds: float
    remaining: int


def json_response(
    status: int, payload: Any, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response whose Content-Type is exactly ``application/json`` (no charset)."""
    return web.Response(
        status=status,
        body=json.dumps(payload).encode("utf-8"),
        content_type="application/json",
        headers=headers,
    )


def iso_timestamp(unix_seconds: float) -> str:
    """Format unix seconds like the gateway: ``2026-03-31T10:00:15.000Z``."""
    moment = datetime.fromtimestamp(unix_seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _uuid7() -> uuid.UUID:
    """A time-ordered UUID (version 7), like the gateway's ``019d...`` request ids."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value &= ~(0xF << 76)
    value |= 0x7 << 76
    value &= ~(0x3 << 62)
    value |= 0x2 << 62
    return uuid.UUID(int=value)


def _check_times(times: int) -> None:
    if times < 1:
        raise ValueError("times must be at least 1")


class FakePixazo:
    """A scriptable, recording fake of the Pixazo gateway for Krea 2 Large.

    See the module docstring for the endpoints, options and scripting API.
    """

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        queued_seconds: float = DEFAULT_QUEUED_SECONDS,
        processing_seconds: float = DEFAULT_PROCESSING_SECONDS,
        long_edge: int = DEFAULT_LONG_EDGE,
        noisy: bool = False,
        balance: int | None = None,
        clock: Callable[[], float] = time.time,
        rate_limit: float | None = None,
        manual: bool = False,
        webhook_backoff: tuple[float, ...] = DEFAULT_WEBHOOK_BACKOFF,
        webhook_timeout: float = 5.0,
    ) -> None:
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError("rate_limit must be positive")
        self.api_key = api_key
        self.queued_seconds = queued_seconds
        self.processing_seconds = processing_seconds
        self.long_edge = long_edge
        self.noisy = noisy
        self.clock = clock
        self.rate_limit = rate_limit
        self.manual = manual
        self.webhook_backoff = tuple(webhook_backoff)
        self.webhook_timeout = webhook_timeout

        self.requests: list[RecordedRequest] = []
        self.jobs: dict[str, Job] = {}
        self.webhook_deliveries: list[WebhookDelivery] = []

        self._balance = balance
        self._faults: list[_Fault] = []
        self._next_scripts: list[_JobScript] = []
        self._contains_rules: list[tuple[str, _JobScript]] = []
        self._webhook_scripts: list[_WebhookScript] = []
        self._job_tasks: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._tokens = 0.0
        self._tokens_at = 0.0
        self._tokens_rate: float | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._base_url: str | None = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` of the running server (what PIXAZO_BASE_URL should be)."""
        if self._base_url is None:
            raise RuntimeError("FakePixazo is not started")
        return self._base_url

    @property
    def submit_url(self) -> str:
        """The full URL of the submit endpoint."""
        return self.base_url + SUBMIT_PATH

    def status_url(self, request_id: str) -> str:
        """The polling URL of a job."""
        return self.base_url + STATUS_PATH_PREFIX + request_id

    def media_url(self, request_id: str) -> str:
        """The URL a completed job's PNG is served from."""
        return f"{self.base_url}{MEDIA_PATH_PREFIX}{request_id}/output.png"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving on ``host:port`` (0 picks a free port) and return ``base_url``."""
        if self._runner is not None:
            raise RuntimeError("FakePixazo is already started")
        self._closing.clear()
        self._tokens_rate = None
        self._tokens_at = time.monotonic()
        runner = web.AppRunner(self._build_app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        self._session = aiohttp.ClientSession()
        bound_host, bound_port = runner.addresses[0][:2]
        url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        self._base_url = f"http://{url_host}:{bound_port}"
        log.info("fake Pixazo gateway listening on %s", self._base_url)
        return self._base_url

    async def close(self) -> None:
        """Stop the server, abandon hanging responses and cancel pending jobs and webhooks."""
        self._closing.set()
        tasks = [*self._job_tasks.values(), *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._job_tasks.clear()
        self._background.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> FakePixazo:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ----------------------------------------------------------------- scripting

    @property
    def balance(self) -> int | None:
        """Remaining submits the wallet can pay for (``None`` = unlimited)."""
        return self._balance

    def set_balance(self, balance: int | None) -> None:
        """Set the wallet balance; at 0, submits get 402 Insufficient Balance."""
        self._balance = balance

    def fail_next(
        self,
        kind: EndpointKind = "any",
        status: int = 500,
        body: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        text: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests of ``kind`` with ``status`` instead of handling them.

        ``body`` is sent as JSON (default: a gateway-like ``{"error", "message"}`` body for
        the status); ``text`` sends a non-JSON body instead (e.g. a proxy's HTML page).
        """
        _check_times(times)
        self._faults.append(
            _Fault(
                kind,
                "fail",
                times,
                status=status,
                body=body,
                text=text,
                headers=dict(headers or {}),
            )
        )

    def delay_next(
        self, kind: EndpointKind = "any", seconds: float = 1.0, *, times: int = 1
    ) -> None:
        """Sleep ``seconds`` before handling the next ``times`` requests of ``kind``.

        The request is handled after the sleep even if the client gave up meanwhile (a
        delayed submit still creates, and charges, a job).
        """
        _check_times(times)
        self._faults.append(_Fault(kind, "delay", times, seconds=seconds))

    def drop_next(self, kind: EndpointKind = "any", *, times: int = 1) -> None:
        """Close the connection without any response for the next ``times`` requests of ``kind``.

        Note that aiohttp's client re-sends an idempotent request (GET) once when a reused
        keep-alive connection is dropped, so it takes ``times=2`` to make one GET fail.
        """
        _check_times(times)
        self._faults.append(_Fault(kind, "drop", times))

    def hang_after_accept_next(self, *, seconds: float | None = None, times: int = 1) -> None:
        """Accept (create and charge) the next ``times`` valid submits, then withhold the 202.

        With ``seconds=None`` no response ever comes (the connection is dropped when the fake
        closes); otherwise the 202 is sent after ``seconds``.
        """
        _check_times(times)
        self._faults.append(_Fault("submit", "hang", times, seconds=seconds))

    def clear_faults(self) -> None:
        """Forget every fault not yet consumed."""
        self._faults.clear()

    def next_outcome(
        self,
        status: TerminalStatus = "COMPLETED",
        error: str | None = None,
        *,
        times: int = 1,
        queued_seconds: float | None = None,
        processing_seconds: float | None = None,
        manual: bool | None = None,
    ) -> None:
        """Script how the next ``times`` accepted jobs end (and optionally their timing)."""
        _check_times(times)
        script = self._job_script(status, error, queued_seconds, processing_seconds, manual)
        script.remaining = times
        self._next_scripts.append(script)

    def outcome_for(
        self,
        *,
        contains: str,
        status: TerminalStatus = "FAILED",
        error: str | None = None,
        queued_seconds: float | None = None,
        processing_seconds: float | None = None,
        manual: bool | None = None,
    ) -> None:
        """Script how every job whose prompt contains ``contains`` (any case) ends."""
        script = self._job_script(status, error, queued_seconds, processing_seconds, manual)
        self._contains_rules.append((contains.casefold(), script))

    def clear_outcomes(self) -> None:
        """Forget every outcome script and rule."""
        self._next_scripts.clear()
        self._contains_rules.clear()

    def webhook_next(
        self, mode: WebhookMode, *, times: int = 1, delay_seconds: float = 1.0
    ) -> None:
        """Script the next ``times`` webhooks: normal, drop, duplicate or delay."""
        _check_times(times)
        if mode not in get_args(WebhookMode):
            raise ValueError(f"unknown webhook mode {mode!r}")
        self._webhook_scripts.append(_WebhookScript(mode, delay_seconds, times))

    def finish(
        self, request_id: str, status: TerminalStatus = "COMPLETED", error: str | None = None
    ) -> Job:
        """End a job now with ``status`` (cancelling its timer); returns the job.

        The way to end jobs in manual mode, but it works on any job not yet terminal.
        """
        job = self.jobs.get(request_id)
        if job is None:
            raise KeyError(f"no job {request_id!r}")
        if job.is_terminal:
            raise ValueError(f"job {request_id} is already {job.status}")
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status must be one of {sorted(TERMINAL_STATUSES)}")
        task = self._job_tasks.pop(request_id, None)
        if task is not None:
            task.cancel()
        if job.status == "QUEUED":
            self._set_status(job, "PROCESSING")
        self._terminate(job, Outcome(status, self._error_text(status, error)))
        return job

    # ----------------------------------------------------------------- recording

    def calls(self, kind: RequestKind, request_id: str | None = None) -> list[RecordedRequest]:
        """Recorded requests of one kind, optionally only those about ``request_id``."""
        return [
            r
            for r in self.requests
            if r.kind == kind and (request_id is None or r.request_id == request_id)
        ]

    def submits(self) -> list[RecordedRequest]:
        """Every submit request received (``.body`` and ``.status`` and ``.request_id``)."""
        return self.calls("submit")

    def status_calls(self, request_id: str | None = None) -> list[RecordedRequest]:
        """Every status poll received, optionally only those for ``request_id``."""
        return self.calls("status", request_id)

    def media_calls(self, request_id: str | None = None) -> list[RecordedRequest]:
        """Every media download received, optionally only those for ``request_id``."""
        return self.calls("media", request_id)

    def status_body(self, request_id: str) -> dict[str, Any]:
        """The body the status endpoint would return for a job right now."""
        return self._status_body(self.jobs[request_id])

    # ----------------------------------------------------------------- waiting

    async def wait_for(
        self,
        predicate: Callable[[], _T],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 (a per-wait deadline reads best in tests)
        what: str = "condition",
    ) -> _T:
        """Wait until ``predicate()`` is truthy (re-checked on every change) and return it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_for_submits(
        self,
        n: int,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 (a per-wait deadline reads best in tests)
    ) -> list[RecordedRequest]:
        """Wait until at least ``n`` submit requests have been received; return them all."""
        await self.wait_for(lambda: len(self.submits()) >= n, timeout=timeout, what=f"{n} submits")
        return self.submits()

    async def wait_for_jobs(
        self,
        n: int,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 (a per-wait deadline reads best in tests)
    ) -> list[Job]:
        """Wait until at least ``n`` jobs have been accepted; return them all, oldest first."""
        await self.wait_for(lambda: len(self.jobs) >= n, timeout=timeout, what=f"{n} jobs")
        return list(self.jobs.values())

    async def wait_for_job(
        self,
        request_id: str,
        status: JobStatus | None = None,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 (a per-wait deadline reads best in tests)
    ) -> Job:
        """Wait until a job is terminal (or, with ``status``, has that status); return it."""

        def ready() -> bool:
            job = self.jobs.get(request_id)
            if job is None:
                return False
            return job.is_terminal if status is None else job.status == status

        await self.wait_for(ready, timeout=timeout, what=f"job {request_id} {status or 'terminal'}")
        return self.jobs[request_id]

    async def wait_for_status_calls(
        self,
        n: int,
        request_id: str | None = None,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 (a per-wait deadline reads best in tests)
    ) -> list[RecordedRequest]:
        """Wait until at least ``n`` status polls (for ``request_id``, if given) were received."""
        await self.wait_for(
            lambda: len(self.status_calls(request_id)) >= n,
            timeout=timeout,
            what=f"{n} status calls",
        )
        return self.status_calls(request_id)

    async def wait_for_webhooks(
        self,
        n: int,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 (a per-wait deadline reads best in tests)
        successful_only: bool = True,
    ) -> list[WebhookDelivery]:
        """Wait until ``n`` webhook POSTs succeeded (or were attempted); return those."""

        def matching() -> list[WebhookDelivery]:
            return [d for d in self.webhook_deliveries if d.ok or not successful_only]

        await self.wait_for(lambda: len(matching()) >= n, timeout=timeout, what=f"{n} webhooks")
        return matching()

    # ----------------------------------------------------------------- internals: state

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    def _error_text(status: TerminalStatus, error: str | None) -> str | None:
        if status == "COMPLETED":
            return None
        return error if error is not None else _DEFAULT_ERRORS[status]

    def _job_script(
        self,
        status: TerminalStatus,
        error: str | None,
        queued_seconds: float | None,
        processing_seconds: float | None,
        manual: bool | None,
    ) -> _JobScript:
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status must be one of {sorted(TERMINAL_STATUSES)}")
        if status == "COMPLETED" and error is not None:
            raise ValueError("a COMPLETED outcome cannot carry an error")
        return _JobScript(
            Outcome(status, self._error_text(status, error)),
            queued_seconds,
            processing_seconds,
            manual,
        )

    def _script_for(self, params: GenerationParams) -> _JobScript | None:
        if self._next_scripts:
            script = self._next_scripts[0]
            script.remaining -= 1
            if script.remaining <= 0:
                self._next_scripts.pop(0)
            return script
        prompt = params.prompt.casefold()
        for needle, script in self._contains_rules:
            if needle in prompt:
                return script
        return None

    def _take_fault(self, kind: RequestKind, actions: tuple[FaultAction, ...]) -> _Fault | None:
        for index, fault in enumerate(self._faults):
            if fault.action in actions and fault.kind in (kind, "any") and kind != "other":
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._faults[index]
                return fault
        return None

    def _create_job(
        self, body: dict[str, Any], params: GenerationParams, webhook_url: str | None
    ) -> Job:
        script = self._script_for(params)

        def pick(scripted: _T | None, default: _T) -> _T:
            return default if scripted is None else scripted

        now = self.clock()
        job = Job(
            request_id=f"{MODEL_ID}_{_uuid7()}",
            body=body,
            params=params,
            webhook_url=webhook_url,
            outcome=script.outcome if script else Outcome(),
            manual=pick(script.manual if script else None, self.manual),
            queued_seconds=pick(script.queued_seconds if script else None, self.queued_seconds),
            processing_seconds=pick(
                script.processing_seconds if script else None, self.processing_seconds
            ),
            long_edge=self.long_edge,
            noisy=self.noisy,
            created_at=now,
            updated_at=now,
            status_times={"QUEUED": time.monotonic()},
        )
        if self._balance is not None:
            self._balance -= 1
            job.charged = True
        self.jobs[job.request_id] = job
        self._job_tasks[job.request_id] = asyncio.create_task(self._run_job(job))
        self._notify()
        return job

    async def _run_job(self, job: Job) -> None:
        await asyncio.sleep(job.queued_seconds)
        self._set_status(job, "PROCESSING")
        if job.manual:
            self._job_tasks.pop(job.request_id, None)
            return
        await asyncio.sleep(job.processing_seconds)
        self._job_tasks.pop(job.request_id, None)
        self._terminate(job, job.outcome)

    def _set_status(self, job: Job, status: JobStatus) -> None:
        job.status = status
        job.updated_at = self.clock()
        job.status_times[status] = time.monotonic()
        log.info("job %s is %s", job.request_id, status)
        self._notify()

    def _terminate(self, job: Job, outcome: Outcome) -> None:
        job.error = outcome.error
        job.completed_at = self.clock()
        self._set_status(job, outcome.status)
        job.updated_at = job.completed_at
        if outcome.status == "ERROR" and job.charged and self._balance is not None:
            self._balance += 1
            job.refunded = True
        if job.webhook_url:
            mode: WebhookMode = "normal"
            delay = 0.0
            if self._webhook_scripts:
                script = self._webhook_scripts[0]
                mode, delay = script.mode, script.delay_seconds
                script.remaining -= 1
                if script.remaining <= 0:
                    self._webhook_scripts.pop(0)
            job.webhook_mode = mode
            if mode != "drop":
                self._spawn(self._deliver_webhook(job, self._status_body(job), mode, delay))

    def _status_body(self, job: Job) -> dict[str, Any]:
        output = None
        if job.status == "COMPLETED":
            output = {"media_url": [self.media_url(job.request_id)], "media_type": "image/png"}
        return {
            "request_id": job.request_id,
            "status": job.status,
            "model_id": MODEL_ID,
            "error": job.error,
            "output": output,
            "created_at": iso_timestamp(job.created_at),
            "updated_at": iso_timestamp(job.updated_at),
            "completed_at": None if job.completed_at is None else iso_timestamp(job.completed_at),
        }

    # ----------------------------------------------------------------- internals: webhooks

    async def _deliver_webhook(
        self, job: Job, body: dict[str, Any], mode: WebhookMode, delay: float
    ) -> None:
        if mode == "delay":
            await asyncio.sleep(delay)
        for copy in (1, 2) if mode == "duplicate" else (1,):
            await self._post_webhook(job, body, copy)

    async def _post_webhook(self, job: Job, body: dict[str, Any], copy: int) -> None:
        assert job.webhook_url is not None and self._session is not None
        payload = json.dumps(body).encode("utf-8")
        attempts = 1 + len(self.webhook_backoff)
        for attempt in range(1, attempts + 1):
            status: int | None = None
            error: str | None = None
            try:
                async with self._session.post(
                    job.webhook_url,
                    data=payload,
                    headers={"Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=self.webhook_timeout),
                ) as response:
                    status = response.status
                    await response.read()
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            self.webhook_deliveries.append(
                WebhookDelivery(
                    job.request_id,
                    job.webhook_url,
                    body,
                    copy,
                    attempt,
                    time.monotonic(),
                    status,
                    error,
                )
            )
            log.info("webhook for %s -> %s", job.request_id, status if error is None else error)
            self._notify()
            retryable = status is None or status >= 500 or status == 429
            if not retryable or attempt == attempts:
                return
            await asyncio.sleep(self.webhook_backoff[attempt - 1])

    # ----------------------------------------------------------------- internals: HTTP

    def _build_app(self) -> web.Application:
        @web.middleware
        async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
            return await self._handle(request, handler)

        app = web.Application(middlewares=[middleware], client_max_size=16 * 1024 * 1024)
        # The middleware dispatches matched routes itself (passing the request's record);
        # the router only names them.
        app.router.add_post(SUBMIT_PATH, _routed_by_middleware, name="submit")
        app.router.add_get(
            STATUS_PATH_PREFIX + "{request_id}", _routed_by_middleware, name="status"
        )
        app.router.add_get(
            MEDIA_PATH_PREFIX + "{request_id}/output.png", _routed_by_middleware, name="media"
        )
        return app

    async def _handle(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        name = request.match_info.route.name
        kind: RequestKind = (
            cast(RequestKind, name) if name in ("submit", "status", "media") else "other"
        )
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=CIMultiDict(request.headers),
            body=body,
            raw_body=raw,
            time=time.monotonic(),
            kind=kind,
            request_id=request.match_info.get("request_id"),
        )
        self.requests.append(record)
        self._notify()

        response = await self._respond(request, handler, kind, record)
        if response is not None:
            record.status = response.status
            record.responded_at = time.monotonic()
            log.info("%s %s -> %s", request.method, request.path, response.status)
            self._notify()
            return response
        log.info("%s %s -> connection dropped", request.method, request.path)
        self._notify()
        return self._drop(request)

    async def _respond(
        self, request: web.Request, handler: _Handler, kind: RequestKind, record: RecordedRequest
    ) -> web.StreamResponse | None:
        """The response to send, or ``None`` to drop the connection."""
        fault = self._take_fault(kind, ("fail", "delay", "drop"))
        if fault is not None:
            record.fault = fault.action
            if fault.action == "drop":
                return None
            if fault.action == "fail":
                return self._fault_response(fault)
            if await self._sleep_unless_closing(fault.seconds):
                return None
        if kind in ("submit", "status"):
            denied = self._check_key(request) or self._check_rate_limit()
            if denied is not None:
                return denied
        try:
            if kind == "submit":
                response = await self._submit(request, record)
            elif kind == "status":
                response = await self._status(request)
            elif kind == "media":
                response = await self._media(request)
            else:
                response = await handler(request)
        except web.HTTPException as exc:
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return json_response(
                exc.status,
                {"error": exc.reason, "message": f"No route for {request.method} {request.path}"},
                headers,
            )
        except Exception:
            log.exception("fake Pixazo handler crashed on %s %s", request.method, request.path)
            return json_response(500, _ERROR_BODIES[500])
        if response is _DROP:
            return None
        return response

    @staticmethod
    def _drop(request: web.Request) -> web.Response:
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=499)

    async def _sleep_unless_closing(self, seconds: float | None) -> bool:
        """Sleep ``seconds`` (forever if ``None``); True if the fake started closing."""
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            return False
        return True

    @staticmethod
    def _fault_response(fault: _Fault) -> web.Response:
        if fault.text is not None:
            return web.Response(
                status=fault.status,
                text=fault.text,
                content_type="text/html",
                headers=fault.headers,
            )
        body = fault.body
        if body is None:
            body = _ERROR_BODIES.get(
                fault.status,
                {"error": HTTPStatus(fault.status).phrase, "message": "Scripted failure."},
            )
        return json_response(fault.status, body, fault.headers)

    def _check_key(self, request: web.Request) -> web.Response | None:
        key = request.headers.get(KEY_HEADER)
        if key == self.api_key:
            return None
        if not key:
            message = (
                "Access denied due to missing subscription key. "
                "Make sure to include subscription key when making requests to an API."
            )
        else:
            message = _ERROR_BODIES[401]["message"]
        return json_response(401, {"error": "Unauthorized", "message": message})

    def _check_rate_limit(self) -> web.Response | None:
        rate = self.rate_limit
        if rate is None:
            return None
        now = time.monotonic()
        capacity = max(1.0, rate)
        if self._tokens_rate != rate:  # first use, or the limit was changed: start full
            self._tokens_rate, self._tokens = rate, capacity
        self._tokens = min(capacity, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        retry_after = max(1, math.ceil((1.0 - self._tokens) / rate))
        return json_response(
            429,
            {
                "error": "Too Many Requests",
                "message": f"Rate limit is exceeded. Try again in {retry_after} seconds.",
            },
            {"Retry-After": str(retry_after)},
        )

    async def _submit(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        if record.body is None:
            return json_response(
                400, {"error": "Bad Request", "message": "Request body must be a JSON object."}
            )
        try:
            params = validate_request(record.body)
        except ValidationFailed as exc:
            return json_response(400, {"error": "Bad Request", "message": exc.message})
        unfetchable = expired_reference_problems(params, self.clock())
        if unfetchable:
            return json_response(400, {"error": "Bad Request", "message": "; ".join(unfetchable)})
        if self._balance is not None and self._balance <= 0:
            return json_response(402, _ERROR_BODIES[402])

        job = self._create_job(record.body, params, request.headers.get(WEBHOOK_HEADER) or None)
        record.request_id = job.request_id
        response = json_response(
            202,
            {
                "request_id": job.request_id,
                "status": "QUEUED",
                "polling_url": self.status_url(job.request_id),
            },
        )
        hang = self._take_fault("submit", ("hang",))
        if hang is not None:
            record.fault = "hang"
            if hang.seconds is None or await self._sleep_unless_closing(hang.seconds):
                await self._sleep_unless_closing(None)
                return _DROP
        return response

    async def _status(self, request: web.Request) -> web.StreamResponse:
        request_id = request.match_info["request_id"]
        job = self.jobs.get(request_id)
        if job is None:
            return json_response(
                404, {"error": "Not Found", "message": f"Request '{request_id}' not found."}
            )
        return json_response(200, self._status_body(job))

    async def _media(self, request: web.Request) -> web.StreamResponse:
        request_id = request.match_info["request_id"]
        job = self.jobs.get(request_id)
        if job is None or job.status != "COMPLETED":
            return json_response(
                404, {"error": "Not Found", "message": f"No media for request '{request_id}'."}
            )
        if job.png is None:
            job.png = await asyncio.to_thread(
                render_png, job.params, long_edge=job.long_edge, noisy=job.noisy
            )
        return web.Response(
            body=job.png,
            content_type="image/png",
            headers={"Cache-Control": "public, max-age=31536000, immutable"},
        )


_DROP: Final = web.Response(status=499)
"""Sentinel a handler returns to have the connection dropped instead of answered."""


async def _routed_by_middleware(request: web.Request) -> web.StreamResponse:
    raise AssertionError("FakePixazo's middleware handles this route")  # pragma: no cover
