"""``/jobs`` (a member's jobs, cancelling queued ones) and ``/usage`` (what the server spent)."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.delivery import DiscordDelivery, jump_url
from bot.interactions import GuardedItem
from bot.job_service import JobService
from bot.settings import Settings
from bot.storage.jobs import Job, JobRepository, JobState

if TYPE_CHECKING:
    from bot.app import KreaBot

NO_MENTIONS = discord.AllowedMentions.none()
RUNNING = (JobState.SUBMITTING, JobState.SUBMITTED, JobState.PROCESSING, JobState.DELIVERING)
#: Calendar days (UTC) each /usage period counts, today included.
PERIODS = {"today": 1, "7 days": 7, "30 days": 30}
STATE_LABELS = {
    JobState.PENDING: "queued",
    JobState.SUBMITTING: "sending",
    JobState.SUBMITTED: "sent",
    JobState.PROCESSING: "generating",
    JobState.DELIVERING: "posting",
    JobState.COMPLETED: "done",
    JobState.FAILED: "failed",
    JobState.INTERRUPTED: "interrupted",
    JobState.CANCELLED: "cancelled",
}


def job_line(job: Job, position: int = 0) -> str:
    """One line of /jobs: state, prompt and a jump link."""
    message_id = job.result_message_id or job.message_id
    link = f" · [open]({jump_url(job.guild_id, job.channel_id, message_id)})" if message_id else ""
    where = f" #{position} in line" if position else ""
    prompt = " ".join(job.params.prompt.split())
    prompt = discord.utils.escape_markdown(prompt if len(prompt) <= 60 else prompt[:59] + "…")
    return f"`#{job.id}` {STATE_LABELS[job.state]}{where}: {prompt}{link}"


class CancelSelect(
    GuardedItem,
    discord.ui.DynamicItem[discord.ui.Select[Any]],
    template=r"krea:cancel:(?P<user>[0-9]{1,20})",
):
    """Pick queued jobs of yours to cancel (they were never sent, so never paid)."""

    def __init__(self, user_id: int, jobs: list[Job] | None = None) -> None:
        options = [
            discord.SelectOption(
                label=f"Cancel #{job.id}", value=str(job.id), description=job.params.prompt[:90]
            )
            for job in (jobs or [])[:25]
        ] or [discord.SelectOption(label="(nothing queued)", value="0")]
        super().__init__(
            discord.ui.Select(
                placeholder="Cancel queued jobs…",
                min_values=1,
                max_values=len(options),
                options=options,
                custom_id=f"krea:cancel:{user_id}",
            )
        )
        self.user_id = user_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> CancelSelect:
        return cls(int(match["user"]))

    async def run(self, interaction: discord.Interaction[Any]) -> None:
        cog = interaction.client.get_cog(JobsCog.__cog_name__)
        if not isinstance(cog, JobsCog):
            return
        if interaction.user.id != self.user_id:
            await interaction.response.send_message("These are not your jobs.", ephemeral=True)
            return
        await cog.cancel(interaction, [int(v) for v in self.item.values if v.isdigit()])


class JobsCog(commands.Cog):
    """Members' view of their jobs and admins' view of the bill."""

    def __init__(
        self,
        bot: KreaBot,
        settings: Settings,
        jobs: JobService,
        store: JobRepository,
        delivery: DiscordDelivery,
    ) -> None:
        self.bot = bot
        self.settings = settings
        self.job_service = jobs
        self.store = store
        self.delivery = delivery

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(CancelSelect)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(CancelSelect)

    async def cancel(self, interaction: discord.Interaction[Any], job_ids: list[int]) -> None:
        """Cancel queued jobs of the member and say which could not be."""
        await interaction.response.defer(ephemeral=True, thinking=True)  # answer within 3 s
        cancelled, kept = await self.job_service.cancel(job_ids, interaction.user.id)
        for job in cancelled:
            await self.delivery.cancelled(job)
        parts = []
        if cancelled:
            parts.append("Cancelled " + ", ".join(f"#{j.id}" for j in cancelled) + ".")
        if kept:
            parts.append(
                ", ".join(f"#{j.id}" for j in kept) + " already reached the image service and "
                "cannot be cancelled."
            )
        await interaction.followup.send(" ".join(parts) or "Nothing to cancel.", ephemeral=True)

    @app_commands.command(name="jobs", description="Your running, queued and recent images")
    @app_commands.guild_only()
    async def jobs(self, interaction: discord.Interaction[Any]) -> None:
        """List a member's jobs with jump links; queued ones can be cancelled."""
        recent = await self.job_service.member_jobs(interaction.guild_id, interaction.user.id)
        positions = {job.id: position for job, position in recent}
        jobs = [job for job, _ in recent]
        queued = sorted((j for j in jobs if j.state is JobState.PENDING), key=lambda j: j.id)
        running = [j for j in jobs if j.state in RUNNING]
        done = [j for j in jobs if j.state not in RUNNING and j.state is not JobState.PENDING][:10]
        sections = []
        if running:
            sections.append("**Running**\n" + "\n".join(job_line(j) for j in running))
        if queued:
            sections.append(
                "**Queued**\n" + "\n".join(job_line(j, positions[j.id]) for j in queued)
            )
        if done:
            sections.append("**Recent**\n" + "\n".join(job_line(j) for j in done))
        text = "\n\n".join(sections) or "You have no images here yet. Try `/imagine`."
        view = discord.utils.MISSING
        if queued:
            view = discord.ui.View(timeout=None)
            view.add_item(CancelSelect(interaction.user.id, queued))
        await interaction.response.send_message(
            text[:2000], ephemeral=True, view=view, allowed_mentions=NO_MENTIONS
        )

    @app_commands.command(name="usage", description="Images and estimated cost in this server")
    @app_commands.describe(period="How far back to count")
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.guild_only()
    async def usage(
        self,
        interaction: discord.Interaction[Any],
        period: Literal["today", "7 days", "30 days"] = "7 days",
    ) -> None:
        """Per member and per day: images submitted, failures and estimated cost."""
        if not interaction.permissions.manage_guild:
            await interaction.response.send_message(
                "You need the Manage Server permission to see the usage.", ephemeral=True
            )
            return
        assert interaction.guild_id is not None
        now = self.store.clock()
        since = now // 86_400 * 86_400 - (PERIODS[period] - 1) * 86_400
        rows = await self.store.usage(interaction.guild_id, since)
        price = self.settings.PRICE_PER_IMAGE
        per_member: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
        per_day: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for row in rows:
            for bucket in (per_member[row.user_id], per_day[row.day]):
                bucket[0] += row.submitted
                bucket[1] += row.failed
                bucket[2] += row.not_charged

        def line(label: str, counts: list[int]) -> str:
            cost = (counts[0] - counts[2]) * price
            return f"{label}: {counts[0]} image(s), {counts[1]} failed, ≈ ${cost:.2f}"

        total = [sum(v[i] for v in per_member.values()) for i in range(3)]
        embed = discord.Embed(title=f"Usage ({period})", description=line("Total", total))
        if per_member:
            members = sorted(per_member.items(), key=lambda kv: -kv[1][0])[:20]
            embed.add_field(
                name="Per member",
                value="\n".join(line(f"<@{uid}>", counts) for uid, counts in members)[:1024],
                inline=False,
            )
            embed.add_field(
                name="Per day",
                value="\n".join(line(day, counts) for day, counts in sorted(per_day.items()))[
                    :1024
                ],
                inline=False,
            )
        embed.set_footer(text=f"${price:.2f} per image; jobs that ended in ERROR are not charged")
        await interaction.response.send_message(
            embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS
        )


async def setup(bot: KreaBot) -> None:
    """Load the cog."""
    services = bot.services
    await bot.add_cog(
        JobsCog(bot, services.settings, services.job_service, services.jobs, services.delivery)
    )
