"""Registering the slash commands with Discord, only when they changed."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import discord
from discord import app_commands

from bot.storage.config import ConfigStore
from bot.storage.db import Database

log = logging.getLogger(__name__)


def command_hash(tree: app_commands.CommandTree[Any], guild: discord.abc.Snowflake | None) -> str:
    """A hash of the command set as Discord would receive it: slash commands and context
    menus alike, so adding, removing or changing either is synced."""
    payload = [command.to_dict(tree) for command in tree._get_all_commands(guild=guild)]
    # Slash commands and context menus (types 1 and 3) may share a name.
    ordered = sorted(payload, key=lambda c: (c.get("type", 1), c["name"]))
    text = json.dumps(ordered, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class CommandSync:
    """Syncs a command tree globally or to one server, remembering the last set sent."""

    def __init__(
        self,
        tree: app_commands.CommandTree[Any],
        config: ConfigStore,
        dev_guild_id: int | None = None,
        db: Database | None = None,
    ) -> None:
        self._tree = tree
        self._config = config
        self._dev_guild_id = dev_guild_id
        self._db = db

    async def sync(self, guild_id: int | None = None, *, only_if_changed: bool) -> bool:
        """Register the slash commands globally, or in one guild (``guild_id`` or DEV_GUILD_ID).

        With ``only_if_changed``, nothing is sent when the command set has the hash stored at
        the last sync. Registering in one guild removes the global commands registered by an
        earlier global sync (and a global sync removes those of the guild synced before), so
        a member never sees every command twice. Returns whether a sync was sent.

        With several processes on one database, one syncs at a time (an advisory lock); a
        process that finds another syncing skips (the other sends the same commands).
        """
        if self._db is None:
            return await self._sync(guild_id, only_if_changed=only_if_changed)
        async with self._db.try_lock("kreabot", "command-sync") as held:
            if not held:
                log.info("another process is syncing the slash commands; not syncing here")
                return False
            return await self._sync(guild_id, only_if_changed=only_if_changed)

    async def _sync(self, guild_id: int | None, *, only_if_changed: bool) -> bool:
        guild_id = guild_id or self._dev_guild_id
        guild = discord.Object(guild_id) if guild_id else None
        if guild is not None:
            self._tree.copy_global_to(guild=guild)
        digest = command_hash(self._tree, guild)
        key = f"commands_hash:{guild_id or 'global'}"
        if only_if_changed and await self._config.get_meta(key) == digest:
            log.info("slash commands unchanged since the last sync; not syncing")
            return False
        synced = await self._tree.sync(guild=guild)
        await self._config.set_meta(key, digest)
        log.info(
            "synced %d slash command(s) %s",
            len(synced),
            f"to guild {guild_id}" if guild_id else "globally",
        )
        await self._remove_the_other_registration(guild_id)
        return True

    async def _remove_the_other_registration(self, guild_id: int | None) -> None:
        """Unregister what the other kind of sync left behind (global vs one guild)."""
        previous = await self._config.get_meta("commands_guild")
        if guild_id is not None:
            if await self._config.get_meta("commands_hash:global") is not None:
                await self._tree.client.http.bulk_upsert_global_commands(self._application_id(), [])
                await self._config.delete_meta("commands_hash:global")
                log.info("removed the global commands of an earlier sync")
            await self._config.set_meta("commands_guild", str(guild_id))
        elif previous:
            await self._tree.client.http.bulk_upsert_guild_commands(
                self._application_id(), int(previous), []
            )
            await self._config.delete_meta(f"commands_hash:{previous}")
            await self._config.delete_meta("commands_guild")
            log.info("removed the commands registered in guild %s by an earlier sync", previous)

    def _application_id(self) -> int:
        application_id = self._tree.client.application_id
        if application_id is None:
            raise RuntimeError("the bot is not logged in")
        return application_id
