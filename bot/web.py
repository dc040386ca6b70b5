"""The optional embedded HTTP server: health, /metrics and the Pixazo webhook receiver.

It holds no service: it is handed the few callables it needs (how ready the bot is, the
metrics exposition, wake a job) when it is built in ``bot/__main__.py``.

* ``/livez``: 200 whenever the process and its event loop answer; nothing else is checked.
  What a supervisor (Docker's HEALTHCHECK) restarts on: restarting cannot fix anything
  ``/readyz`` reports (Discord being down, an empty wallet).
* ``/readyz``: 200 only when connected to Discord, the database answers and the breaker is
  closed (submissions flow), else 503; the JSON body shows every check either way.
* ``/healthz``: the same as ``/readyz`` (its name before ``/livez`` and ``/readyz`` existed).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bot.metrics import Metrics
from bot.storage.interface import StorageError
from bot.webhooks import WEBHOOK_PATH, verify

log = logging.getLogger(__name__)


#: Refused webhook calls an address may make in a burst, and how fast that allowance comes
#: back (per second). Pixazo's genuine callbacks are never refused, so they cost nothing.
REFUSED_BURST, REFUSED_PER_SECOND = 20.0, 1.0
#: Addresses remembered for that accounting (the oldest are forgotten first).
ADDRESS_MEMORY = 4096
#: At most this many refused calls are logged per minute; the rest are counted.
REFUSED_LOG_PER_MINUTE = 5


class RefusalBudget:
    """Per source address, a token bucket of refused calls: an address that keeps sending
    forged webhooks is answered 429 at once, before any HMAC work, and no other address is
    slowed down. Bounded memory: an LRU of addresses."""

    def __init__(
        self,
        burst: float = REFUSED_BURST,
        per_second: float = REFUSED_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._burst, self._rate, self._clock = burst, per_second, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, address: str) -> float:
        tokens, at = self._buckets.get(address, (self._burst, self._clock()))
        return min(self._burst, tokens + (self._clock() - at) * self._rate)

    def exhausted(self, address: str) -> bool:
        """Whether ``address`` used up its refusals."""
        return self._level(address) < 1.0

    def spend(self, address: str) -> None:
        """One refused call from ``address``."""
        self._buckets[address] = (self._level(address) - 1.0, self._clock())
        self._buckets.move_to_end(address)
        while len(self._buckets) > ADDRESS_MEMORY:
            self._buckets.popitem(last=False)


class SampledLog:
    """Logs at most a few lines a minute for a noisy event, then says how many it skipped."""

    def __init__(
        self, per_minute: int = REFUSED_LOG_PER_MINUTE, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._per_minute, self._clock = per_minute, clock
        self._window, self._logged, self.skipped = 0.0, 0, 0

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        if now - self._window >= 60.0:
            if self.skipped:
                log.warning("(%d more refused webhook calls in the last minute)", self.skipped)
            self._window, self._logged, self.skipped = now, 0, 0
        if self._logged < self._per_minute:
            self._logged += 1
            log.warning(message, *args)
        else:
            self.skipped += 1


@dataclass(frozen=True)
class Readiness:
    """What ``/readyz`` checks, read when it is asked."""

    discord: bool
    database: bool
    #: Why submissions are paused (``balance``, ``outage``, ``unauthorized``), None if not.
    breaker_reason: str | None
    #: The gateway shards this process runs, with their latency in seconds.
    shards: dict[int, float] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        """Whether the bot can take and make images now."""
        return self.discord and self.database and self.breaker_reason is None

    def body(self) -> dict[str, Any]:
        """The JSON ``/readyz`` answers with."""
        return {
            "status": "ok" if self.ready else "unavailable",
            "discord": self.discord,
            "database": self.database,
            "breaker": {"open": self.breaker_reason is not None, "reason": self.breaker_reason},
            "shards": {
                str(shard): {"latency_seconds": round(latency, 4) if latency == latency else None}
                for shard, latency in sorted(self.shards.items())
            },
        }


#: Reads the bot's readiness.
ReadinessCheck = Callable[[], Awaitable[Readiness]]
#: The metrics exposition for a scraper's ``Accept`` header: (body, content type).
Exposition = Callable[[str | None], Awaitable[tuple[bytes, str]]]


class WebServer:
    """Serves health, metrics and webhooks."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        readiness: ReadinessCheck,
        exposition: Exposition,
        wake: Callable[[int], Awaitable[bool]],
        metrics: Metrics,
        webhook_secret: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._readiness = readiness
        self._exposition = exposition
        self._wake = wake
        self._metrics = metrics
        self._secret = webhook_secret
        self._refusals = RefusalBudget()
        self._refused_log = SampledLog()
        self._runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=1024 * 1024)
        self.app.router.add_get("/livez", self.livez)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/healthz", self.readyz)
        self.app.router.add_get("/metrics", self.metrics)
        self.app.router.add_post(WEBHOOK_PATH, self.webhook)

    async def start(self) -> None:
        """Listen on ``host:port`` (port 0 picks a free one; see :attr:`port`)."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        log.info("HTTP server listening on %s:%s", self.host, self.port)

    async def close(self) -> None:
        """Stop listening (idempotent)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def livez(self, request: web.Request) -> web.Response:
        """200: the process is alive and its event loop runs this handler."""
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """200 when connected to Discord, the database answers and the breaker is closed;
        else 503. The body shows each check and the breaker's reason."""
        readiness = await self._readiness()
        return web.json_response(readiness.body(), status=200 if readiness.ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        """The Prometheus exposition (OpenMetrics when the scraper asks for it)."""
        body, content_type = await self._exposition(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def webhook(self, request: web.Request) -> web.Response:
        """A Pixazo callback. Trusts nothing but the token: the runner confirms by polling."""
        address = request.remote or "?"
        if self._refusals.exhausted(address):
            self._metrics.webhook("throttled")
            return web.Response(status=429, headers={"Retry-After": "60"})
        raw_id, token = request.match_info["job_id"], request.match_info["token"]
        job_id = verify(self._secret, raw_id, token)
        if job_id is None:
            self._refusals.spend(address)
            self._metrics.webhook("forged")
            self._refused_log.warning(
                "ignored a webhook with a bad token for job %r from %s", raw_id[:40], address
            )
            return web.Response(status=404)
        try:
            woken = await self._wake(job_id)
        except StorageError as exc:
            # Pixazo calls again (or the safety poll finds the result): nothing is lost.
            log.warning("job %s: webhook not handled, the database did not answer: %s", job_id, exc)
            return web.Response(status=503, headers={"Retry-After": "5"})
        self._metrics.webhook("woke" if woken else "ignored")
        log.info("job %s: webhook received (%s)", job_id, "woke" if woken else "not running")
        return web.Response(status=200, text="ok")
