"""The optional embedded HTTP server: /healthz, /metrics and the Pixazo webhook receiver.

It holds no service: it is handed the few callables it needs (is the bot healthy, the
metrics text, wake a job) when it is built in ``bot/__main__.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.metrics import Metrics
from bot.webhooks import WEBHOOK_PATH, verify

log = logging.getLogger(__name__)

#: The text exposition format, as Prometheus asks for it.
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Each check /healthz reports, by name: True when it passes.
HealthChecks = Callable[[], Awaitable[dict[str, bool]]]


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
        raw_id, token = request.match_info["job_id"], request.match_info["token"]
        job_id = verify(self._secret, raw_id, token)
        if job_id is None:
            self._metrics.webhooks["forged"] += 1
            log.warning("ignored a webhook with a bad token for job %r", raw_id[:40])
            return web.Response(status=404)
        woken = self._wake(job_id)
        self._metrics.webhooks["woke" if woken else "ignored"] += 1
        log.info("job %s: webhook received (%s)", job_id, "woke" if woken else "not running")
        return web.Response(status=200, text="ok")
