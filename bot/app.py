"""The kreabot ``Bot``: Discord wiring only (intents, cogs, persistent items, errors).

The services it speaks for are built in ``bot/__main__.py`` and handed over with
:meth:`KreaBot.use`; each cog's ``setup`` takes the few it needs from there.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.components import (
    DYNAMIC_ITEMS,
    UNKNOWN_CONTROL,
    ResultActions,
    custom_ids_on,
    matches_any,
)
from bot.interactions import report_error
from bot.settings import Settings

if TYPE_CHECKING:
    from bot.services import Services

log = logging.getLogger(__name__)

#: The cogs loaded at start, in order.
EXTENSIONS: tuple[str, ...] = (
    "cogs.imagine",
    "cogs.context_menus",
    "cogs.variations",
    "cogs.settings",
    "cogs.jobs",
)
RESTARTING = "kreabot is restarting; please try again in a minute."
#: Seconds between two identifies of one max_concurrency bucket (Discord's rule).
IDENTIFY_INTERVAL = 5.0


class KreaTree(app_commands.CommandTree["KreaBot"]):
    """The command tree; every command error ends as one private message."""

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        """Refuse new commands while the bot shuts down (nothing half-started)."""
        if getattr(interaction.client, "accepting", True):
            return True
        if interaction.type is not discord.InteractionType.autocomplete:
            await interaction.response.send_message(RESTARTING, ephemeral=True)
        return False

    async def on_error(
        self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError
    ) -> None:
        """A :class:`~bot.errors.UserError` says what to do; anything else apologises."""
        await report_error(interaction, error)


class KreaBot(commands.AutoShardedBot):
    """A Discord bot that turns slash commands into Krea 2 images (one or many shards)."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        # Only what the bot handles: servers and channels (GUILDS) and 🔁/❌ on results
        # (GUILD_MESSAGE_REACTIONS). No messages, typing or presences of busy servers, no
        # message cache, no member lists.
        shards = settings.own_shards()
        if shards is not None:
            options["shard_ids"] = shards  # with SHARD_COUNT: this process's part
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_reactions = True
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            allowed_mentions=discord.AllowedMentions.none(),
            help_command=None,
            tree_cls=KreaTree,
            max_messages=None,
            member_cache_flags=discord.MemberCacheFlags.none(),
            chunk_guilds_at_startup=False,
            shard_count=settings.SHARD_COUNT,
            **options,
        )
        self._identified: dict[int, float] = {}
        self._max_concurrency: int | None = None
        self.settings = settings
        self.accepting = True
        #: What the result controls do (set by the variations cog).
        self.result_actions: ResultActions | None = None
        self._services: Services | None = None
        self._start_services = False
        self._started = False
        self._dynamic_items: set[type[discord.ui.DynamicItem[Any]]] = set()

    def use(self, services: Services, *, start: bool = True) -> None:
        """The services the cogs speak for; with ``start``, they start once logged in
        (``python -m bot sync`` only needs the commands: it passes False)."""
        self._services = services
        self._start_services = start

    @property
    def services(self) -> Services:
        """The services handed over with :meth:`use` (for the cogs' ``setup``)."""
        if self._services is None:
            raise RuntimeError("KreaBot.use(services) must be called before the bot starts")
        return self._services

    async def setup_hook(self) -> None:
        """Load cogs, register persistent buttons, then start the services."""
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.add_dynamic_items(*DYNAMIC_ITEMS)
        if self._start_services:
            await self.services.start()
            self._started = True

    async def on_guild_remove(self, guild: discord.Guild) -> None:
        """Forget the server's settings at once; its job history goes after retention."""
        await self.services.maintenance.server_removed(guild.id)

    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        """Answer, within Discord's 3 s, every press no item will handle: a custom_id no item
        knows, or one that is not on the message it claims to come from (forged)."""
        if interaction.type is not discord.InteractionType.component:
            return
        data: dict[str, Any] = dict(interaction.data or {})
        custom_id = str(data.get("custom_id", ""))
        known = matches_any(custom_id, self._dynamic_items)
        if known and custom_id in custom_ids_on(interaction.message):
            return  # its item answers
        if not interaction.response.is_done():
            await interaction.response.send_message(UNKNOWN_CONTROL, ephemeral=True)

    def add_dynamic_items(self, *items: type[discord.ui.DynamicItem[Any]]) -> None:
        """Register persistent items (and remember them to spot unknown custom_ids)."""
        super().add_dynamic_items(*items)
        self._dynamic_items.update(items)

    def remove_dynamic_items(self, *items: type[discord.ui.DynamicItem[Any]]) -> None:
        """Unregister persistent items."""
        super().remove_dynamic_items(*items)
        self._dynamic_items.difference_update(items)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """Identify as fast as Discord allows: shards of one ``max_concurrency`` bucket at
        least 5 s apart, in every process (discord.py's default waits 5 s before each)."""
        if self._max_concurrency is None:
            try:
                self._max_concurrency = max(
                    1, (await self.fetch_session_start_limits()).max_concurrency
                )
            except (discord.HTTPException, discord.GatewayNotFound, KeyError, TypeError):
                self._max_concurrency = 1
        bucket = (shard_id or 0) % self._max_concurrency
        loop = asyncio.get_running_loop()
        last = self._identified.get(bucket)
        if last is not None and (wait := last + IDENTIFY_INTERVAL - loop.time()) > 0:
            await asyncio.sleep(wait)
        if self._services is not None:  # and after the other processes on the database
            await self._services.cluster.identify_turn(bucket, IDENTIFY_INTERVAL)
        self._identified[bucket] = loop.time()

    def shard_latencies(self) -> dict[int, float]:
        """Each shard this process runs and its gateway latency in seconds."""
        return {shard_id: latency for shard_id, latency in self.latencies}

    def guilds_by_shard(self) -> list[tuple[int, int]]:
        """Each shard this process runs and how many servers are on it."""
        counts = dict.fromkeys(self.shards, 0)
        for guild in self.guilds:
            counts[guild.shard_id] = counts.get(guild.shard_id, 0) + 1
        return sorted(counts.items())

    def connected(self) -> bool:
        """Whether the gateway connection is open and the bot logged in."""
        # A shard's ``ws`` outlives a dropped connection (discord.py reconnects with a new
        # one): ask whether each socket is open.
        if self.is_closed() or self.user is None or not self.shards:
            return False
        return all(not shard.is_closed() for shard in self.shards.values())

    async def close(self) -> None:
        """Stop taking commands, stop the services (jobs persist), disconnect."""
        self.accepting = False
        if self._started:
            self._started = False
            await self.services.stop()
        if not hasattr(self, "_AutoShardedClient__queue"):
            # Never entered (``async with`` / ``start`` set up the shards' queue): discord.py's
            # AutoShardedClient.close() would fail on the missing queue.
            await self.http.close()
            return
        await super().close()
