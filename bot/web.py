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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bot.metrics import Metrics
from bot.webhooks import WEBHOOK_PATH, verify

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Readiness:
    """What ``/readyz`` checks, read when it is asked."""

    discord: bool
    database: bool
    #: Why submissions are paused (``balance``, ``outage``, ``unauthorized``), None if not.
    breaker_reason: str | None

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
        wake: Callable[[int], bool],
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
        raw_id, token = request.match_info["job_id"], request.match_info["token"]
        job_id = verify(self._secret, raw_id, token)
        if job_id is None:
            self._metrics.webhook("forged")
            log.warning("ignored a webhook with a bad token for job %r", raw_id[:40])
            return web.Response(status=404)
        woken = self._wake(job_id)
        self._metrics.webhook("woke" if woken else "ignored")
        log.info("job %s: webhook received (%s)", job_id, "woke" if woken else "not running")
        return web.Response(status=200, text="ok")
