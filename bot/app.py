"""The kreabot ``Bot``: owns the services and wires cogs, buttons and the job runner."""

from __future__ import annotations

import asyncio
import hashlib
import json
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
from bot.components import DYNAMIC_ITEMS, PREFIX, UNAVAILABLE, matches_any
from bot.config import Settings
from bot.delivery import TOKEN_LIFETIME, DiscordDelivery
from bot.metrics import Metrics
from bot.moderation import blocked_entry
from bot.pixazo import InvalidRequest, PixazoClient, PollSchedule, TextToImageRequest
from bot.pixazo.models import SEED_MAX
from bot.polling import RATE_HEADROOM, PollPlanner
from bot.resolution import Inputs, Resolved, resolve
from bot.runner import JobRunner
from bot.storage.jobs import Job, JobRepository, NewJob
from bot.storage.settings import SettingsRepository
from bot.web import WebServer, webhook_url

log = logging.getLogger(__name__)

#: The cogs loaded at start, in order.
EXTENSIONS: tuple[str, ...] = ("cogs.imagine", "cogs.variations", "cogs.settings", "cogs.jobs")


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

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        """Refuse new commands while the bot shuts down (nothing half-started)."""
        if getattr(interaction.client, "accepting", True):
            return True
        if interaction.type is not discord.InteractionType.autocomplete:
            await interaction.response.send_message(
                "kreabot is restarting; please try again in a minute.", ephemeral=True
            )
        return False

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
        resume_jobs: bool = True,
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
        self.metrics = Metrics()
        self.pixazo.on_call = self.metrics.gateway_call
        self.delivery = DiscordDelivery(
            self,
            self.jobs,
            session,
            clock,
            download=self._download_media,
            settings_repo=self.guild_settings,
        )
        fixed_polls = poll_schedule or PollSchedule(
            first=settings.POLL_FIRST_SECONDS,
            interval=settings.POLL_INTERVAL_SECONDS,
            cap=settings.POLL_MAX_INTERVAL_SECONDS,
        )
        # Learns generation times to poll around them (not with an injected schedule, nor
        # with webhooks, which poll only as a safety net).
        self.poll_planner = (
            PollPlanner(fixed_polls, clock=clock)
            if settings.POLL_ADAPTIVE and poll_schedule is None and not settings.WEBHOOK_PUBLIC_URL
            else None
        )
        self.runner = JobRunner(
            self.jobs,
            self.pixazo,
            self.delivery,
            max_concurrent=settings.MAX_CONCURRENT_JOBS,
            polls_per_second=settings.STATUS_POLLS_PER_SECOND * RATE_HEADROOM,
            job_timeout=settings.JOB_TIMEOUT_SECONDS,
            max_download_bytes=settings.MAX_DOWNLOAD_BYTES,
            poll_schedule=fixed_polls,
            poll_planner=self.poll_planner,
            retry_wait=retry_wait,
            member_limit=self.member_in_flight_limit,
            breaker=Breaker(probe_after=settings.BREAKER_PROBE_SECONDS),
            queue_give_up=settings.QUEUE_GIVE_UP_SECONDS,
            webhook_url_for=self._webhook_url if settings.WEBHOOK_PUBLIC_URL else None,
            webhook_poll_schedule=PollSchedule(
                first=settings.WEBHOOK_SAFETY_POLL_SECONDS,
                interval=settings.WEBHOOK_SAFETY_POLL_SECONDS,
                factor=1.0,
                cap=settings.WEBHOOK_SAFETY_POLL_SECONDS,
            ),
            metrics=self.metrics,
            clock=clock,
        )
        self.pixazo.on_rate_limited = self._rate_limited
        self.web: WebServer | None = None
        self.accepting = True
        self.result_actions: Any = None  # set by the variations cog
        self._sync_commands = sync_commands
        self._resume_jobs = resume_jobs
        self._maintenance: asyncio.Task[None] | None = None
        self._dynamic_items: set[type[discord.ui.DynamicItem[Any]]] = set()

    async def _download_media(self, url: str) -> bytes:
        media = await self.pixazo.download(url, max_bytes=self.settings.MAX_DOWNLOAD_BYTES)
        return media.data

    def _webhook_url(self, job: Job) -> str | None:
        public, secret = self.settings.WEBHOOK_PUBLIC_URL, self.settings.WEBHOOK_SECRET
        if not public or secret is None:
            return None
        return webhook_url(public, secret.get_secret_value(), job.id)

    def _rate_limited(self, retry_after: float | None) -> None:
        self.runner.polls.pause(retry_after if retry_after is not None else 1.0)

    async def setup_hook(self) -> None:
        """Load cogs, register persistent buttons, start the HTTP server, resume unfinished
        jobs, and sync the slash commands if they changed since the last sync."""
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.add_dynamic_items(*DYNAMIC_ITEMS)
        if not self._resume_jobs:
            return
        if self.settings.HTTP_PORT is not None:
            secret = self.settings.WEBHOOK_SECRET
            self.web = WebServer(
                self,
                self.settings.HTTP_HOST,
                self.settings.HTTP_PORT,
                secret.get_secret_value() if secret else None,
            )
            await self.web.start()
        if self.poll_planner is not None:
            self.poll_planner.seed(await self.jobs.recent_generation_seconds(256))
        resumed = await self.runner.resume()
        if resumed:
            log.info("resumed %d unfinished job(s)", len(resumed))
        self._maintenance = asyncio.create_task(self._maintain(), name="maintenance")
        if self._sync_commands:
            await self.sync_commands(only_if_changed=True)

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

    async def check_allowed(
        self, guild_id: int | None, user_id: int, prompt: str, count: int = 1
    ) -> None:
        """Raise :class:`InvalidRequest` when the server's blocklist or daily caps refuse it."""
        if guild_id is None:
            return
        config = await self.guild_settings.guild(guild_id)
        if blocked_entry(prompt, config.server.get("blocklist", [])) is not None:
            raise InvalidRequest("your prompt contains a word or phrase this server does not allow")
        limits = await self.limits(guild_id)
        day_start = self.clock() // 86_400 * 86_400
        reset = f"<t:{int(day_start + 86_400)}:R>"
        member_cap, server_cap = limits["member_daily"], limits["server_daily"]
        if member_cap:
            used = await self.jobs.count_requested_since(guild_id, day_start, user_id)
            if used + count > member_cap:
                raise InvalidRequest(
                    f"you have used {used} of your {member_cap} images for today; "
                    f"the count resets {reset}"
                )
        if server_cap:
            used = await self.jobs.count_requested_since(guild_id, day_start)
            if used + count > server_cap:
                raise InvalidRequest(
                    f"this server has used {used} of its {server_cap} images for today; "
                    f"the count resets {reset}"
                )

    async def count_limit(self, guild_id: int | None, channel_id: int | None) -> int:
        """The largest batch allowed here (channel, then server setting, else 4)."""
        if guild_id is None:
            return 4
        config = await self.guild_settings.guild(guild_id)
        value = config.channel(channel_id).get("count_max") or config.server.get("count_max")
        return int(value) if value else 4

    def command_hash(self, guild: discord.abc.Snowflake | None = None) -> str:
        """A hash of the command set as Discord would receive it."""
        payload = [
            command.to_dict(self.tree) for command in self.tree._get_all_commands(guild=guild)
        ]
        text = json.dumps(sorted(payload, key=lambda c: c["name"]), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    async def sync_commands(self, guild_id: int | None = None, *, only_if_changed: bool) -> bool:
        """Register the slash commands globally, or in one guild (``guild_id`` or DEV_GUILD_ID).

        With ``only_if_changed``, nothing is sent when the command set has the hash stored at
        the last sync. Returns whether a sync was sent.
        """
        guild_id = guild_id or self.settings.DEV_GUILD_ID
        guild = discord.Object(guild_id) if guild_id else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        digest = self.command_hash(guild)
        key = f"commands_hash:{guild_id or 'global'}"
        if only_if_changed and await self.guild_settings.get_meta(key) == digest:
            log.info("slash commands unchanged since the last sync; not syncing")
            return False
        synced = await self.tree.sync(guild=guild)
        await self.guild_settings.set_meta(key, digest)
        log.info(
            "synced %d slash command(s) %s",
            len(synced),
            f"to guild {guild_id}" if guild_id else "globally",
        )
        return True

    async def _maintain(self) -> None:
        """Hourly: delete the history of servers that removed the bot long enough ago."""
        await self.wait_until_ready()  # until then no server looks present: see the pruning
        while True:
            try:
                pruned = await self.prune_removed_guilds()
                if pruned:
                    log.info("pruned %d job(s) of removed servers", pruned)
            except Exception:
                log.exception("maintenance failed")
            await asyncio.sleep(3600)

    async def on_guild_remove(self, guild: discord.Guild) -> None:
        """Forget the server's settings at once; its job history goes after RETENTION_DAYS."""
        await self.guild_settings.forget_guild(guild.id)
        await self.guild_settings.set_meta(f"removed:{guild.id}", str(self.clock()))
        log.info("guild %s removed the bot: settings deleted", guild.id)

    async def prune_removed_guilds(self) -> int:
        """Delete the job history of servers that removed the bot longer ago than retention.

        A server that added the bot back since keeps its history (and loses the mark).
        """
        cutoff = self.clock() - self.settings.RETENTION_DAYS * 86_400
        pruned = 0
        for key, value in await self.guild_settings.meta_with_prefix("removed:"):
            guild_id = int(key.split(":", 1)[1])
            if self.get_guild(guild_id) is not None:
                await self.guild_settings.delete_meta(key)
                continue
            if float(value) <= cutoff:
                pruned += await self.jobs.prune_guild(guild_id, before=float("inf"))
                await self.guild_settings.delete_meta(key)
        return pruned

    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        """Answer presses of our controls whose custom_id no item recognises."""
        if interaction.type is not discord.InteractionType.component:
            return
        data: dict[str, Any] = dict(interaction.data or {})
        custom_id = str(data.get("custom_id", ""))
        if custom_id.startswith(PREFIX) and not matches_any(custom_id, self._dynamic_items):
            await interaction.response.send_message(UNAVAILABLE, ephemeral=True)

    def add_dynamic_items(self, *items: type[discord.ui.DynamicItem[Any]]) -> None:
        """Register persistent items (and remember them to spot unknown custom_ids)."""
        super().add_dynamic_items(*items)
        self._dynamic_items.update(items)

    def remove_dynamic_items(self, *items: type[discord.ui.DynamicItem[Any]]) -> None:
        """Unregister persistent items."""
        super().remove_dynamic_items(*items)
        self._dynamic_items.difference_update(items)

    async def close(self) -> None:
        """Stop taking commands, let in-flight submits persist, stop the jobs (their state
        is in SQLite; the next start resumes them), stop the HTTP server, disconnect."""
        self.accepting = False
        if self._maintenance is not None:
            self._maintenance.cancel()
        await self.runner.close()
        if self.web is not None:
            await self.web.close()
            self.web = None
        await super().close()
