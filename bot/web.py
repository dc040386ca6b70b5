"""The optional embedded HTTP server: /healthz, /metrics and the Pixazo webhook receiver.

It holds no service: it is handed the few callables it needs (is the bot healthy, the
metrics text, wake a job) when it is built in ``bot/__main__.py``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.metrics import Metrics
from bot.webhooks import WEBHOOK_PATH, verify

log = logging.getLogger(__name__)

#: The text exposition format, as Prometheus asks for it.
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Each check /healthz reports, by name: True when it passes.
HealthChecks = Callable[[], Awaitable[dict[str, bool]]]
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


class WebServer:
    """Serves health, metrics and webhooks."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        health: HealthChecks,
        metrics_text: Callable[[], Awaitable[str]],
        wake: Callable[[int], bool],
        metrics: Metrics,
        webhook_secret: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._health = health
        self._metrics_text = metrics_text
        self._wake = wake
        self._metrics = metrics
        self._secret = webhook_secret
        self._refusals = RefusalBudget()
        self._refused_log = SampledLog()
        self._runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=1024 * 1024)
        self.app.router.add_get("/healthz", self.healthz)
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

    async def healthz(self, request: web.Request) -> web.Response:
        """200 when every check passes (connected to Discord, the database answers), else 503."""
        checks = await self._health()
        ok = all(checks.values())
        body = {"status": "ok" if ok else "unavailable", **checks}
        return web.json_response(body, status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text format."""
        text = await self._metrics_text()
        return web.Response(text=text, headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    async def webhook(self, request: web.Request) -> web.Response:
        """A Pixazo callback. Trusts nothing but the token: the runner confirms by polling."""
        address = request.remote or "?"
        if self._refusals.exhausted(address):
            self._metrics.webhooks["throttled"] += 1
            return web.Response(status=429, headers={"Retry-After": "60"})
        raw_id, token = request.match_info["job_id"], request.match_info["token"]
        job_id = verify(self._secret, raw_id, token)
        if job_id is None:
            self._refusals.spend(address)
            self._metrics.webhooks["forged"] += 1
            self._refused_log.warning(
                "ignored a webhook with a bad token for job %r from %s", raw_id[:40], address
            )
            return web.Response(status=404)
        woken = self._wake(job_id)
        self._metrics.webhooks["woke" if woken else "ignored"] += 1
        log.info("job %s: webhook received (%s)", job_id, "woke" if woken else "not running")
        return web.Response(status=200, text="ok")
