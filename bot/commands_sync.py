"""Registering the slash commands with Discord, only when they changed."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import discord
from discord import app_commands

from bot.storage.config import ConfigStore

log = logging.getLogger(__name__)


def command_hash(tree: app_commands.CommandTree[Any], guild: discord.abc.Snowflake | None) -> str:
    """A hash of the command set as Discord would receive it."""
    payload = [command.to_dict(tree) for command in tree._get_all_commands(guild=guild)]
    text = json.dumps(sorted(payload, key=lambda c: c["name"]), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class CommandSync:
    """Syncs a command tree globally or to one server, remembering the last set sent."""

    def __init__(
        self,
        tree: app_commands.CommandTree[Any],
        config: ConfigStore,
        dev_guild_id: int | None = None,
    ) -> None:
        self._tree = tree
        self._config = config
        self._dev_guild_id = dev_guild_id

    async def sync(self, guild_id: int | None = None, *, only_if_changed: bool) -> bool:
        """Register the slash commands globally, or in one guild (``guild_id`` or DEV_GUILD_ID).

        With ``only_if_changed``, nothing is sent when the command set has the hash stored at
        the last sync. Returns whether a sync was sent.
        """
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
        return True
