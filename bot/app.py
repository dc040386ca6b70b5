"""The kreabot ``Bot``: owns the services and wires cogs, buttons and the job runner."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import aiosqlite
import discord
from discord import app_commands
from discord.ext import commands

from bot.admission import Breaker
from bot.components import DYNAMIC_ITEMS, PREFIX, UNAVAILABLE, is_known_custom_id
from bot.config import Settings
from bot.delivery import TOKEN_LIFETIME, DiscordDelivery
from bot.pixazo import PixazoClient, PollSchedule, TextToImageRequest
from bot.pixazo.models import SEED_MAX
from bot.resolution import Inputs, Resolved, resolve
from bot.runner import JobRunner
from bot.storage.jobs import Job, JobRepository, NewJob
from bot.storage.settings import SettingsRepository

log = logging.getLogger(__name__)

#: The cogs loaded at start, in order.
EXTENSIONS: tuple[str, ...] = ("cogs.imagine", "cogs.variations", "cogs.settings")


@dataclass(frozen=True)
class ChannelOrigin:
    """Where a job asked for without an interaction (a reaction) comes from."""

    guild_id: int | None
    channel_id: int
    user_id: int
    reply_to: int | None = None
    filesize_limit: int = 10 * 1024 * 1024


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
        self.delivery = DiscordDelivery(
            self,
            self.jobs,
            session,
            clock,
            download=self._download_media,
            settings_repo=self.guild_settings,
        )
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
            member_limit=self.member_in_flight_limit,
            breaker=Breaker(probe_after=settings.BREAKER_PROBE_SECONDS),
            queue_give_up=settings.QUEUE_GIVE_UP_SECONDS,
            clock=clock,
        )
        self.result_actions: Any = None  # set by the variations cog
        self._sync_commands = sync_commands

    async def _download_media(self, url: str) -> bytes:
        media = await self.pixazo.download(url, max_bytes=self.settings.MAX_DOWNLOAD_BYTES)
        return media.data

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
        origin: discord.Interaction[Any] | ChannelOrigin,
        params: TextToImageRequest,
        *,
        sources: dict[str, str] | None = None,
        refs: list[dict[str, Any]] | None = None,
        parent_id: int | None = None,
        variant: str | None = None,
        followup: bool = False,
        count: int = 1,
    ) -> list[Job]:
        """Store the job(s) asked for, show them as queued and start them.

        From an acknowledged interaction the first job takes over its deferred reply; with
        ``followup`` it gets a follow-up message of its own (reframe makes several jobs at
        once). From a :class:`ChannelOrigin` (a reaction) the job message is a channel
        message. ``count`` > 1 makes a batch: seeds ``seed, seed+1, ...`` sharing one message.
        """
        interaction = origin if isinstance(origin, discord.Interaction) else None
        assert origin.channel_id is not None
        if isinstance(origin, ChannelOrigin):
            user_id, filesize_limit = origin.user_id, origin.filesize_limit
        else:
            user_id, filesize_limit = origin.user.id, origin.filesize_limit
        jobs: list[Job] = []
        sources = dict(sources or {})
        if count > 1:
            sources["count"] = str(count)
        for index in range(count):
            batch_params = params
            if count > 1:
                seed = ((params.seed or 0) + index) % (SEED_MAX + 1)
                batch_params = params.model_copy(update={"seed": seed})
            jobs.append(
                await self.jobs.create(
                    NewJob(
                        guild_id=origin.guild_id,
                        channel_id=origin.channel_id,
                        user_id=user_id,
                        params=batch_params,
                        sources=sources,
                        refs=refs or [],
                        application_id=interaction.application_id if interaction else None,
                        interaction_token=interaction.token if interaction else None,
                        token_expires_at=self.clock() + TOKEN_LIFETIME if interaction else None,
                        filesize_limit=filesize_limit,
                        parent_id=parent_id,
                        variant=variant,
                        batch_id=jobs[0].id if jobs else None,
                        batch_index=index if count > 1 else None,
                    )
                )
            )
        if count > 1:
            await self.jobs.update(jobs[0], batch_id=jobs[0].id, batch_index=0)
        if isinstance(origin, ChannelOrigin):
            await self.delivery.announce_in_channel(jobs, reply_to=origin.reply_to)
        else:
            await self.delivery.announce(jobs, origin, followup=followup)
        for job in jobs:
            self.runner.start(job)
        return jobs

    async def resolve(self, interaction: discord.Interaction[Any], inputs: Inputs) -> Resolved:
        """The effective parameters for a job asked for in ``interaction``."""
        config = prefs = None
        if interaction.guild_id is not None:
            config = await self.guild_settings.guild(interaction.guild_id)
            prefs = await self.guild_settings.prefs(interaction.guild_id, interaction.user.id)
        return resolve(inputs, config=config, channel_id=interaction.channel_id, prefs=prefs)

    async def limits(self, guild_id: int | None) -> dict[str, int]:
        """The fair-use limits in a server: its overrides, else the environment's."""
        values = {
            "member_in_flight": self.settings.MEMBER_MAX_IN_FLIGHT,
            "member_daily": self.settings.MEMBER_DAILY_IMAGES,
            "server_daily": self.settings.SERVER_DAILY_IMAGES,
        }
        if guild_id is not None:
            config = await self.guild_settings.guild(guild_id)
            values.update(config.server.get("limits", {}))
        return values

    async def member_in_flight_limit(self, job: Job) -> int:
        """How many jobs of this job's member may be at the gateway at once."""
        return (await self.limits(job.guild_id))["member_in_flight"]

    async def count_limit(self, guild_id: int | None, channel_id: int | None) -> int:
        """The largest batch allowed here (channel, then server setting, else 4)."""
        if guild_id is None:
            return 4
        config = await self.guild_settings.guild(guild_id)
        value = config.channel(channel_id).get("count_max") or config.server.get("count_max")
        return int(value) if value else 4

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
