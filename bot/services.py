"""The long-lived things kreabot is made of, in one small container.

``bot/__main__.py`` builds a :class:`Services` (see :func:`bot.__main__.build_services`) and
hands it to the thin :class:`~bot.app.KreaBot`. Each cog's ``setup`` picks the few services
it uses; no service reaches through the bot to another.

:meth:`Services.start` runs once the bot is logged in (REST works): the HTTP server, the
unfinished jobs, housekeeping, the event-loop lag monitor and the command sync (in the
background, so a slow or rate limited sync never holds up the login). :meth:`Services.stop`
undoes it before the gateway closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from bot.cluster import Cluster
from bot.commands_sync import CommandSync
from bot.delivery import DiscordDelivery
from bot.fair_use import FairUse
from bot.imaging import ImageWorker
from bot.job_service import JobService
from bot.maintenance import Maintenance
from bot.metrics import Metrics
from bot.pixazo import PixazoClient
from bot.polling import PollPlanner
from bot.runner import JobRunner
from bot.settings import Settings
from bot.storage.config import ConfigStore
from bot.storage.db import Database
from bot.storage.jobs import JobRepository
from bot.web import WebServer

log = logging.getLogger(__name__)

#: How long the background command sync may wait (e.g. for Discord's rate limits).
SYNC_TIMEOUT_SECONDS = 120.0


@dataclass
class Services:
    """Everything that lives as long as the process, built once in ``bot/__main__.py``."""

    settings: Settings
    session: aiohttp.ClientSession
    db: Database
    pixazo: PixazoClient
    jobs: JobRepository
    config: ConfigStore
    fair_use: FairUse
    metrics: Metrics
    images: ImageWorker
    delivery: DiscordDelivery
    runner: JobRunner
    cluster: Cluster
    job_service: JobService
    commands: CommandSync
    maintenance: Maintenance
    ready: Callable[[], Awaitable[object]]
    web: WebServer | None = None
    poll_planner: PollPlanner | None = None
    sync_on_start: bool = True
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _sync_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve HTTP, resume unfinished jobs, start housekeeping, the loop-lag monitor and the
        command sync."""
        if self.web is not None:
            await self.web.start()
        if self.poll_planner is not None:
            self.poll_planner.seed(await self.jobs.recent_generation_seconds(256))
        resumed = await self.cluster.start()
        if resumed:
            log.info("resumed %d unfinished job(s)", len(resumed))
        self._tasks.append(
            asyncio.create_task(self.maintenance.run(self.ready), name="maintenance")
        )
        self._tasks.append(
            asyncio.create_task(self.metrics.watch_event_loop(), name="event-loop-lag")
        )
        if self.sync_on_start:
            self._sync_task = asyncio.create_task(self._sync(), name="command-sync")
            self._tasks.append(self._sync_task)

    async def synced(self) -> None:
        """Wait until the start's command sync (if any) has finished."""
        if self._sync_task is not None:
            await asyncio.shield(self._sync_task)

    async def _sync(self) -> None:
        try:
            # Bounded: a rate limited sync gives up rather than wait for ever.
            async with asyncio.timeout(SYNC_TIMEOUT_SECONDS):
                await self.commands.sync(only_if_changed=True)
        except TimeoutError:
            log.warning("the slash command sync timed out; `python -m bot sync` retries it")
        except Exception:
            log.exception("could not sync the slash commands; `python -m bot sync` retries")

    async def stop(self) -> None:
        """Stop housekeeping, let in-flight submits persist, stop the jobs (their state is
        in the database; the next start resumes them), stop the HTTP server."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.cluster.stop()
        await self.runner.close()
        await self.cluster.leave()
        await self.delivery.close()
        await self.pixazo.close()
        if self.web is not None:
            await self.web.close()
        self.images.close()
