"""The kreabot ``Bot``: owns the services and wires cogs, buttons and the job runner."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import aiosqlite
import discord
from discord import app_commands
from discord.ext import commands

from bot.components import DYNAMIC_ITEMS, PREFIX, UNAVAILABLE, is_known_custom_id
from bot.config import Settings
from bot.delivery import TOKEN_LIFETIME, DiscordDelivery
from bot.pixazo import PixazoClient, PollSchedule, TextToImageRequest
from bot.resolution import Inputs, Resolved, resolve
from bot.runner import JobRunner
from bot.storage.jobs import Job, JobRepository, NewJob
from bot.storage.settings import SettingsRepository

log = logging.getLogger(__name__)

#: The cogs loaded at start, in order.
EXTENSIONS: tuple[str, ...] = ("cogs.imagine", "cogs.variations", "cogs.settings")


class KreaTree(app_commands.CommandTree["KreaBot"]):
    """The command tree; sorts every command error into one ephemeral reply."""

    async def on_error(
        self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError
    ) -> None:
        """Every command error ends as a short ephemeral message, never a traceback."""
        original = getattr(error, "original", error)
        if isinstance(error, app_commands.TransformerError | app_commands.CheckFailure):
            text = str(error)
        else:
            reference = f"{interaction.id:x}"[-8:]
            log.error(
                "command %s failed (ref %s)",
                interaction.command and interaction.command.qualified_name,
                reference,
                exc_info=original,
            )
            text = f"Something went wrong on our side (reference `{reference}`). Please try again."
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException:
            log.warning("could not report a command error to the member")


class KreaBot(commands.Bot):
    """A Discord bot that turns slash commands into Krea 2 images."""

    def __init__(
        self,
        settings: Settings,
        *,
        session: aiohttp.ClientSession,
        db: aiosqlite.Connection,
        clock: Callable[[], float] = time.time,
        poll_schedule: PollSchedule | None = None,
        retry_wait: float = 5.0,
        sync_commands: bool = True,
        **options: Any,
    ) -> None:
        intents = discord.Intents.default()
        intents.guild_reactions = True
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            allowed_mentions=discord.AllowedMentions.none(),
            help_command=None,
            tree_cls=KreaTree,
            **options,
        )
        self.settings = settings
        self.session = session
        self.db = db
        self.clock = clock
        self.jobs = JobRepository(db, clock)
        self.guild_settings = SettingsRepository(db, clock)
        self.pixazo = PixazoClient(
            session,
            settings.PIXAZO_API_KEY.get_secret_value(),
            base_url=settings.PIXAZO_BASE_URL,
        )
        self.delivery = DiscordDelivery(self, self.jobs, session, clock)
        self.runner = JobRunner(
            self.jobs,
            self.pixazo,
            self.delivery,
            max_concurrent=settings.MAX_CONCURRENT_JOBS,
            polls_per_second=settings.STATUS_POLLS_PER_SECOND,
            job_timeout=settings.JOB_TIMEOUT_SECONDS,
            max_download_bytes=settings.MAX_DOWNLOAD_BYTES,
            poll_schedule=poll_schedule
            or PollSchedule(
                first=settings.POLL_FIRST_SECONDS,
                interval=settings.POLL_INTERVAL_SECONDS,
                cap=settings.POLL_MAX_INTERVAL_SECONDS,
            ),
            retry_wait=retry_wait,
            clock=clock,
        )
        self.result_actions: Any = None  # set by the variations cog
        self._sync_commands = sync_commands

    async def setup_hook(self) -> None:
        """Load cogs, register persistent buttons, resume unfinished jobs, sync commands."""
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.add_dynamic_items(*DYNAMIC_ITEMS)
        resumed = await self.runner.resume()
        if resumed:
            log.info("resumed %d unfinished job(s)", len(resumed))
        if self._sync_commands:
            await self.sync_commands()

    async def launch(
        self,
        interaction: discord.Interaction[Any],
        params: TextToImageRequest,
        *,
        sources: dict[str, str] | None = None,
        refs: list[dict[str, Any]] | None = None,
        parent_id: int | None = None,
        variant: str | None = None,
        followup: bool = False,
    ) -> Job:
        """Store a job for an acknowledged interaction, show it as queued and start it.

        The first job of an interaction takes over its deferred reply; with ``followup``
        the job gets a follow-up message of its own (reframe makes several jobs at once).
        """
        assert interaction.channel_id is not None
        job = await self.jobs.create(
            NewJob(
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
                user_id=interaction.user.id,
                params=params,
                sources=sources or {},
                refs=refs or [],
                application_id=interaction.application_id,
                interaction_token=interaction.token,
                token_expires_at=self.clock() + TOKEN_LIFETIME,
                filesize_limit=interaction.filesize_limit,
                parent_id=parent_id,
                variant=variant,
            )
        )
        await self.delivery.announce(job, interaction, followup=followup)
        self.runner.start(job)
        return job

    async def resolve(self, interaction: discord.Interaction[Any], inputs: Inputs) -> Resolved:
        """The effective parameters for a job asked for in ``interaction``."""
        config = prefs = None
        if interaction.guild_id is not None:
            config = await self.guild_settings.guild(interaction.guild_id)
            prefs = await self.guild_settings.prefs(interaction.guild_id, interaction.user.id)
        return resolve(inputs, config=config, channel_id=interaction.channel_id, prefs=prefs)

    async def sync_commands(self) -> None:
        """Register the slash commands (to DEV_GUILD_ID only, when set)."""
        guild_id = self.settings.DEV_GUILD_ID
        if guild_id:
            guild = discord.Object(guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()

    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        """Answer presses of our controls whose custom_id no item recognises."""
        if interaction.type is not discord.InteractionType.component:
            return
        data: dict[str, Any] = dict(interaction.data or {})
        custom_id = str(data.get("custom_id", ""))
        if custom_id.startswith(PREFIX) and not is_known_custom_id(custom_id):
            await interaction.response.send_message(UNAVAILABLE, ephemeral=True)

    async def close(self) -> None:
        """Stop the jobs (their state is persisted) and disconnect."""
        await self.runner.close()
        await super().close()
