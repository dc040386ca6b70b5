"""What the controls under a result do: regenerate, vary, remix, reframe, open, delete, retry.

The variation values (Krea 2 has no image-to-image, so the result becomes a style
reference) live in :data:`bot.job_service.VARY`. This cog only turns presses, form
submissions and reactions into calls of the job service and the delivery.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.delivery import DiscordDelivery
from bot.errors import UserError
from bot.interactions import check_can_deliver, missing_permissions, origin_of, report_error
from bot.job_service import UNAVAILABLE, JobService, Origin, Variant, new_seed
from bot.pixazo.models import SEED_MAX, SEED_MIN
from bot.settings import Settings
from bot.storage.jobs import Job

if TYPE_CHECKING:
    from bot.app import KreaBot

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
REGENERATE_EMOJI = "🔁"
#: A member's 🔁 on one message starts at most one job per this many seconds.
REACTION_COOLDOWN_SECONDS = 60.0
DELETE_EMOJI = "❌"
NOT_YOURS = (
    "Only the member who asked for this image, or someone with Manage Messages, can delete it."
)
REMIXED = re.compile(r"krea:remixed:(?P<job>[0-9]{1,18})")
PROMPT_FIELD = "krea:remix-prompt"
SEED_FIELD = "krea:remix-seed"


class RemixModal(discord.ui.Modal, title="Remix"):
    """The prompt (and seed) of a result, ready to edit.

    Its submission is handled by :meth:`VariationsCog.on_interaction` from the custom_id
    alone, so a form opened before a restart still works after it.
    """

    def __init__(self, job: Job, max_prompt: int) -> None:
        super().__init__(timeout=15 * 60, custom_id=f"krea:remixed:{job.id}")
        self.add_item(
            discord.ui.TextInput(
                label="Prompt",
                style=discord.TextStyle.paragraph,
                # As long as the longest prompt /imagine accepts; the default must fit in it.
                default=job.params.prompt[:max_prompt],
                max_length=max_prompt,
                custom_id=PROMPT_FIELD,
            )
        )
        self.add_item(
            discord.ui.TextInput(
                label="Seed (empty for a random one)",
                default=str(job.seed),
                required=False,
                max_length=len(str(SEED_MIN)),
                custom_id=SEED_FIELD,
            )
        )

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        """Answered by the cog's listener (which also works after a restart)."""


def submitted_values(components: list[dict[str, Any]]) -> dict[str, str]:
    """custom_id -> value of every text input in a modal submission (any nesting)."""
    values: dict[str, str] = {}
    for component in components:
        if "custom_id" in component and "value" in component:
            values[str(component["custom_id"])] = str(component["value"])
        values.update(submitted_values(component.get("components") or []))
        child = component.get("component")
        if isinstance(child, dict):
            values.update(submitted_values([child]))
    return values


def parse_remix(values: dict[str, str]) -> tuple[str, int]:
    """The prompt and seed of a remix form; refused when either is unusable."""
    seed_text = values.get(SEED_FIELD, "").strip()
    digits = seed_text.removeprefix("-")
    if seed_text and (
        not (digits.isascii() and digits.isdigit()) or not SEED_MIN <= int(seed_text) <= SEED_MAX
    ):
        raise UserError(f"The seed must be a whole number from {SEED_MIN} to {SEED_MAX}")
    prompt = values.get(PROMPT_FIELD, "").strip()
    if not prompt:
        raise UserError("The prompt cannot be empty")
    return prompt, int(seed_text) if seed_text else new_seed()


class VariationsCog(commands.Cog):
    """Implements :class:`bot.components.ResultActions`, the remix form and reactions."""

    def __init__(
        self,
        bot: KreaBot,
        settings: Settings,
        jobs: JobService,
        delivery: DiscordDelivery,
    ) -> None:
        self.bot = bot
        self.settings = settings
        self.jobs = jobs
        self.delivery = delivery

    async def cog_load(self) -> None:
        self.bot.result_actions = self

    async def cog_unload(self) -> None:
        self.bot.result_actions = None

    # -- ResultActions ----------------------------------------------------------------

    async def check(self, interaction: discord.Interaction[Any], action: str, job_id: int) -> Job:
        """The job a press acts on: it must be in this server, and the member may press it
        (the server's button rule; Delete: the requester or Manage Messages)."""
        origin = origin_of(interaction)
        if action != "delete":
            check_can_deliver(interaction)
        if action in ("open", "delete"):
            job = await self.jobs.load(job_id, origin)
            if action == "delete":
                if not (
                    interaction.user.id == job.user_id or interaction.permissions.manage_messages
                ):
                    raise UserError(NOT_YOURS, plain=True)
                # Only a message that shows this job: a forged custom_id on another message
                # must not delete that message.
                pressed_on = interaction.message.id if interaction.message else None
                if pressed_on not in (job.message_id, job.result_message_id):
                    raise UserError(UNAVAILABLE, plain=True)
            return job
        if action == "retry":
            return await self.jobs.retryable(job_id, origin)
        return await self.jobs.pressable(job_id, origin)

    async def act(
        self, interaction: discord.Interaction[Any], action: str, job: Job, **options: Any
    ) -> None:
        """Do what a control asks."""
        if action == "remix":
            await interaction.response.send_modal(RemixModal(job, self.settings.MAX_PROMPT_LENGTH))
        elif action == "open":
            await interaction.response.defer(thinking=True)
            if not await self.delivery.publish_open(job, interaction):
                raise UserError(UNAVAILABLE, plain=True)
        elif action == "delete":
            await self.delete(interaction, job)
        elif action == "retry":
            await interaction.response.defer(thinking=True)
            made = await self.jobs.retry(
                job, origin_of(interaction), self.delivery.announcer(interaction)
            )
            await self.delivery.retired(job)  # the Retry button is used up
            if not made:
                await interaction.delete_original_response()
                await interaction.followup.send(
                    f"🔄 Job #{job.id} reached the image service before: its request is being "
                    "checked again, and its message will show the image. Nothing new is paid.",
                    ephemeral=True,
                )
        elif action == "reframe":
            if not options.get("ratios"):
                raise UserError("Pick at least one aspect ratio.", plain=True)
            await self.derive(interaction, job, "reframe", ratios=options["ratios"])
        elif action == "vary":
            strong = options.get("mode") == "strong"
            await self.derive(interaction, job, "vary_strong" if strong else "vary_subtle")
        else:
            await self.derive(interaction, job, "regenerate", seed=new_seed())

    async def derive(
        self, interaction: discord.Interaction[Any], job: Job, variant: Variant, **changes: Any
    ) -> None:
        """Acknowledge, then start the job(s) derived from ``job``."""
        await interaction.response.defer(thinking=True)
        await self.jobs.derive(
            job, origin_of(interaction), variant, self.delivery.announcer(interaction), **changes
        )

    async def delete(self, interaction: discord.Interaction[Any], job: Job) -> None:
        """Remove the result the button is on."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        # The message the button is on: a batch's jobs point at the opened copy once
        # "open" was pressed, while the Delete under the grid must remove the grid.
        message_id = interaction.message.id if interaction.message else job.result_message_id
        if not await self.delivery.delete_result(job, message_id):
            raise UserError("I am not allowed to delete that message here.", plain=True)
        await interaction.followup.send("🗑️ Deleted.", ephemeral=True)

    # -- the remix form --------------------------------------------------------------

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        """Remix form submissions: run the edited prompt (and seed)."""
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        data: dict[str, Any] = dict(interaction.data or {})
        match = REMIXED.fullmatch(str(data.get("custom_id", "")))
        if match is None:
            return
        try:
            prompt, seed = parse_remix(submitted_values(list(data.get("components") or [])))
            job = await self.jobs.pressable(int(match["job"]), origin_of(interaction))
            await self.derive(interaction, job, "remix", prompt=prompt, seed=seed)
        except Exception as exc:
            await report_error(interaction, exc)

    # -- reactions -------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        """🔁 regenerates a result; ❌ deletes it. Same rules as the buttons."""
        emoji = str(payload.emoji)
        if emoji not in (REGENERATE_EMOJI, DELETE_EMOJI) or payload.guild_id is None:
            return
        if self.bot.user is not None and payload.user_id == self.bot.user.id:
            return
        job = await self.jobs.by_message(payload.message_id)
        if job is None or job.guild_id != payload.guild_id or job.result_message_id is None:
            return
        if emoji == DELETE_EMOJI:
            channel = await self.delivery.channel_for(job)
            allowed = payload.user_id == job.user_id
            if not allowed and payload.member is not None and hasattr(channel, "permissions_for"):
                allowed = channel.permissions_for(payload.member).manage_messages
            if allowed and not await self.delivery.delete_result(job, job.result_message_id):
                log.info("job %s: could not delete its result", job.id)
            return
        if job.channel_id != payload.channel_id:
            return
        if not await self.jobs.may_press(job, payload.user_id, payload.channel_id):
            return
        # One job per member, message and minute, whichever process sees the reaction (two
        # processes on one shard both do): taking it off and on is no free loop of paid jobs.
        key = f"reaction:{payload.message_id}:{payload.user_id}"
        if not await self.jobs.take_window(key, REACTION_COOLDOWN_SECONDS):
            log.info("reaction on job %s: member %s is cooling down", job.id, payload.user_id)
            return
        channel = await self.delivery.channel_for(job)
        guild = self.bot.get_guild(payload.guild_id)
        if guild is None or missing_permissions(channel.permissions_for(guild.me), channel):
            log.info("reaction on job %s: the bot cannot post in that channel", job.id)
            return
        # No interaction: the result goes out with the bot's token, under the server's limit.
        origin = Origin(
            guild_id=payload.guild_id,
            channel_id=payload.channel_id,
            user_id=payload.user_id,
            filesize_limit=guild.filesize_limit,
        )
        announce = self.delivery.channel_announcer(payload.channel_id, job.result_message_id)
        try:
            await self.jobs.derive(job, origin, "regenerate", announce, seed=new_seed())
        except UserError as exc:
            log.info("reaction on job %s refused: %s", job.id, exc.message)


async def setup(bot: KreaBot) -> None:
    """Load the cog."""
    services = bot.services
    await bot.add_cog(
        VariationsCog(bot, services.settings, services.job_service, services.delivery)
    )
