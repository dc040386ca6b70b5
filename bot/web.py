"""The optional embedded HTTP server: /healthz, /metrics and the Pixazo webhook receiver."""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from bot.app import KreaBot

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/pixazo/{job_id}/{token}"
#: The text exposition format, as Prometheus asks for it.
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def webhook_token(secret: str, job_id: int) -> str:
    """The unguessable part of a job's webhook URL: an HMAC of its id."""
    return hmac.new(secret.encode(), f"job:{job_id}".encode(), hashlib.sha256).hexdigest()[:40]


def webhook_url(public_url: str, secret: str, job_id: int) -> str:
    """The URL Pixazo calls back for one job."""
    path = WEBHOOK_PATH.format(job_id=job_id, token=webhook_token(secret, job_id))
    return public_url.rstrip("/") + path


class WebServer:
    """Serves health, metrics and webhooks for one bot."""

    def __init__(self, bot: KreaBot, host: str, port: int, secret: str | None) -> None:
        self.bot = bot
        self.host = host
        self.port = port
        self._secret = secret
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
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def healthz(self, request: web.Request) -> web.Response:
        """200 when connected to Discord and the database answers, else 503."""
        # ``ws`` outlives a dropped connection (discord.py reconnects with a new one): ask
        # whether its socket is open.
        ws = self.bot.ws
        connected = ws is not None and ws.open and not self.bot.is_closed() and self.bot.user
        try:
            async with self.bot.db.execute("SELECT 1") as cursor:
                database = await cursor.fetchone() is not None
        except Exception:
            database = False
        ok = bool(connected and database)
        body = {
            "status": "ok" if ok else "unavailable",
            "discord": bool(connected),
            "database": database,
        }
        return web.json_response(body, status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text format."""
        states = await self.bot.jobs.count_by_state()
        text = self.bot.metrics.render(states)
        return web.Response(text=text, headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    async def webhook(self, request: web.Request) -> web.Response:
        """A Pixazo callback. Trusts nothing but the token: the runner confirms by polling."""
        raw_id, token = request.match_info["job_id"], request.match_info["token"]
        job_id = int(raw_id) if raw_id.isascii() and raw_id.isdigit() and len(raw_id) < 20 else None
        # As bytes: compare_digest refuses str with non-ASCII characters (a forged path may).
        if (
            job_id is None
            or not self._secret
            or not hmac.compare_digest(token.encode(), webhook_token(self._secret, job_id).encode())
        ):
            self.bot.metrics.webhooks["forged"] += 1
            log.warning("ignored a webhook with a bad token for job %r", raw_id[:40])
            return web.Response(status=404)
        woken = self.bot.runner.wake(job_id)
        self.bot.metrics.webhooks["woke" if woken else "ignored"] += 1
        log.info("job %s: webhook received (%s)", job_id, "woke" if woken else "not running")
        return web.Response(status=200, text="ok")
