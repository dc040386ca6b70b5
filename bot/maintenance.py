"""Housekeeping: forget servers that removed the bot, and their history after retention."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from bot.storage.config import ConfigStore
from bot.storage.jobs import JobRepository

log = logging.getLogger(__name__)

#: How often removed servers' history is looked at.
PRUNE_EVERY_SECONDS = 3600.0


class Maintenance:
    """Deletes a removed server's settings at once and its job history after retention."""

    def __init__(
        self,
        config: ConfigStore,
        jobs: JobRepository,
        retention_days: int,
        *,
        is_present: Callable[[int], bool | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._jobs = jobs
        self._retention = retention_days * 86_400
        self._is_present = is_present
        self._clock = clock

    async def server_removed(self, guild_id: int) -> None:
        """Forget the server's settings at once; its job history goes after retention."""
        await self._config.forget_server(guild_id)
        await self._config.set_meta(f"removed:{guild_id}", str(self._clock()))
        log.info("guild %s removed the bot: settings deleted", guild_id)

    async def prune_removed_servers(self) -> int:
        """Delete the job history of servers that removed the bot longer ago than retention.

        A server that added the bot back since keeps its history (and loses the mark). A
        server on a shard another process runs is left to that process (``is_present``
        answers None: this process cannot see it).
        """
        cutoff = self._clock() - self._retention
        pruned = 0
        for key, value in await self._config.meta_with_prefix("removed:"):
            guild_id = int(key.split(":", 1)[1])
            present = self._is_present(guild_id)
            if present is None:
                continue
            if present:
                await self._config.delete_meta(key)
                continue
            if float(value) <= cutoff:
                pruned += await self._jobs.prune_guild(guild_id, before=float("inf"))
                await self._config.delete_meta(key)
        return pruned

    async def run(self, ready: Callable[[], Awaitable[object]]) -> None:
        """Prune every hour, once ``ready`` (until then no server looks present)."""
        await ready()
        while True:
            try:
                pruned = await self.prune_removed_servers()
                if pruned:
                    log.info("pruned %d job(s) of removed servers", pruned)
                await self._config.prune_windows()
            except Exception:
                log.exception("maintenance failed")
            await asyncio.sleep(PRUNE_EVERY_SECONDS)
