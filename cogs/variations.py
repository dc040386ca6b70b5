"""What the buttons under a result do: regenerate, vary, remix, reframe, delete, retry.

Vary values (Krea 2 has no image-to-image, so the result becomes a style reference):

* subtle: same seed, the result as a reference at strength 1.2, creativity ``low``;
* strong: new seed, the result as a reference at strength 0.6, creativity ``high``.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.app import ChannelOrigin
from bot.components import UNAVAILABLE
from bot.pixazo import ImageStyleReference, InvalidRequest, TextToImageRequest
from bot.pixazo.models import SEED_MAX
from bot.replies import refuse
from bot.storage.jobs import Job, JobState

if TYPE_CHECKING:
    from bot.app import KreaBot

log = logging.getLogger(__name__)

VARY = {
    "subtle": {"strength": 1.2, "creativity": "low", "new_seed": False},
    "strong": {"strength": 0.6, "creativity": "high", "new_seed": True},
}
NO_MENTIONS = discord.AllowedMentions.none()
REQUESTER_ONLY = "On this server only the member who asked for an image can make new ones from it."
REGENERATE_EMOJI = "🔁"
DELETE_EMOJI = "❌"


class ReferencesGone(Exception):
    """A reference image can no longer be fetched with a valid URL."""


def new_seed() -> int:
    """A random seed in Krea's range."""
    return secrets.randbelow(SEED_MAX + 1)


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
                default=job.params.prompt[:4000],
                max_length=min(4000, max_prompt),
                custom_id=PROMPT_FIELD,
            )
        )
        self.add_item(
            discord.ui.TextInput(
                label="Seed (empty for a random one)",
                default=str(job.seed),
                required=False,
                max_length=10,
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


class VariationsCog(commands.Cog):
    """Implements :class:`bot.components.ResultActions`."""

    def __init__(self, bot: KreaBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.result_actions = self

    async def cog_unload(self) -> None:
        self.bot.result_actions = None

    # -- permission and lookup ------------------------------------------------------

    async def _load(self, interaction: discord.Interaction[Any], job_id: int) -> Job | None:
        job = await self.bot.jobs.get(job_id)
        if job is None or (
            interaction.guild_id is not None and job.guild_id != interaction.guild_id
        ):
            await interaction.response.send_message(UNAVAILABLE, ephemeral=True)
            return None
        return job

    # -- ResultActions ----------------------------------------------------------------

    async def regenerate(self, interaction: discord.Interaction[Any], job_id: int) -> None:
        """Same parameters, new random seed."""
        await self.derive(interaction, job_id, "regenerate", seed=new_seed())

    async def vary(self, interaction: discord.Interaction[Any], job_id: int, mode: str) -> None:
        """The result as a style reference (see the module docstring for the values)."""
        await self.derive(interaction, job_id, f"vary_{mode}")

    async def remix(self, interaction: discord.Interaction[Any], job_id: int) -> None:
        """Open a modal with the prompt and seed."""
        job = await self._load(interaction, job_id)
        if job is None:
            return
        if not await self.may_press(job, interaction.user.id, interaction.channel_id):
            await interaction.response.send_message(REQUESTER_ONLY, ephemeral=True)
            return
        await interaction.response.send_modal(RemixModal(job, self.bot.settings.MAX_PROMPT_LENGTH))

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        """Remix form submissions: run the edited prompt (and seed)."""
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        data: dict[str, Any] = dict(interaction.data or {})
        match = REMIXED.fullmatch(str(data.get("custom_id", "")))
        if match is None:
            return
        values = submitted_values(list(data.get("components") or []))
        seed_text = values.get(SEED_FIELD, "").strip()
        if seed_text and (not seed_text.isdigit() or int(seed_text) > SEED_MAX):
            await interaction.response.send_message(
                f"❌ The seed must be a whole number from 0 to {SEED_MAX}. Nothing was sent.",
                ephemeral=True,
            )
            return
        prompt = values.get(PROMPT_FIELD, "").strip()
        if not prompt:
            await interaction.response.send_message(
                "❌ The prompt cannot be empty. Nothing was sent.", ephemeral=True
            )
            return
        seed = int(seed_text) if seed_text else new_seed()
        await self.derive(interaction, int(match["job"]), "remix", prompt=prompt, seed=seed)

    async def reframe(
        self, interaction: discord.Interaction[Any], job_id: int, ratios: list[str]
    ) -> None:
        """One new job per chosen aspect ratio, same prompt, seed and style inputs."""
        if not ratios:
            await interaction.response.send_message(
                "Pick at least one aspect ratio.", ephemeral=True
            )
            return
        await self.derive(interaction, job_id, "reframe", ratios=ratios)

    async def retry(self, interaction: discord.Interaction[Any], job_id: int) -> None:
        """Send a failed or interrupted job again as a new job."""
        job = await self.bot.jobs.get(job_id)
        if job is not None and job.state not in (JobState.FAILED, JobState.INTERRUPTED):
            await interaction.response.send_message(
                "This job does not need a retry.", ephemeral=True
            )
            return
        await self.derive(interaction, job_id, "retry")

    async def open(self, interaction: discord.Interaction[Any], job_id: int) -> None:
        """Post one image of a batch full size, with the buttons of a single result."""
        job = await self._load(interaction, job_id)
        if job is None:
            return
        await interaction.response.defer(thinking=True)
        found = await self.find_image(job)
        if found is None:
            await interaction.edit_original_response(content=UNAVAILABLE)
            return
        async with self.bot.session.get(found[1].proxy_url) as response:
            response.raise_for_status()
            data = await response.read()
        await self.bot.delivery.publish_open(job, interaction, data)

    async def delete(self, interaction: discord.Interaction[Any], job_id: int) -> None:
        """Remove the result: the requester or a member with Manage Messages only."""
        job = await self._load(interaction, job_id)
        if job is None:
            return
        if interaction.user.id != job.user_id and not interaction.permissions.manage_messages:
            await interaction.response.send_message(
                "Only the member who asked for this image, or someone with Manage Messages, "
                "can delete it.",
                ephemeral=True,
            )
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        # The message the button is on: a batch's jobs point at the opened copy once
        # "open" was pressed, while the Delete under the grid must remove the grid.
        message_id = interaction.message.id if interaction.message else job.result_message_id
        channel = await self.bot.delivery.channel_for(job)
        try:
            if message_id:
                await channel.get_partial_message(message_id).delete()
        except discord.NotFound:
            pass
        except discord.Forbidden:
            await interaction.followup.send(
                "I am not allowed to delete that message here.", ephemeral=True
            )
            return
        await interaction.followup.send("🗑️ Deleted.", ephemeral=True)

    # -- reactions -------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        """🔁 regenerates a result; ❌ deletes it. Same rules as the buttons."""
        emoji = str(payload.emoji)
        if emoji not in (REGENERATE_EMOJI, DELETE_EMOJI) or payload.guild_id is None:
            return
        if self.bot.user is not None and payload.user_id == self.bot.user.id:
            return
        job = await self.bot.jobs.by_result_message(payload.message_id)
        if job is None or job.guild_id != payload.guild_id or job.result_message_id is None:
            return
        channel = await self.bot.delivery.channel_for(job)
        if emoji == DELETE_EMOJI:
            allowed = payload.user_id == job.user_id
            if not allowed and payload.member is not None and hasattr(channel, "permissions_for"):
                allowed = channel.permissions_for(payload.member).manage_messages
            if allowed:
                try:
                    await channel.get_partial_message(job.result_message_id).delete()
                except discord.HTTPException:
                    log.info("job %s: could not delete its result", job.id)
            return
        if not await self.may_press(job, payload.user_id, payload.channel_id):
            return
        origin = ChannelOrigin(
            guild_id=payload.guild_id,
            channel_id=payload.channel_id,
            user_id=payload.user_id,
            reply_to=job.result_message_id,
            filesize_limit=job.filesize_limit,
        )
        await self.start_derived(origin, job, "regenerate", seed=new_seed())

    # -- making new jobs ------------------------------------------------------------

    async def derive(
        self,
        interaction: discord.Interaction[Any],
        job_id: int,
        variant: str,
        *,
        prompt: str | None = None,
        seed: int | None = None,
        ratios: list[str] | None = None,
    ) -> None:
        """Acknowledge, then start the job(s) derived from ``job_id``."""
        job = await self._load(interaction, job_id)
        if job is None:
            return
        if not await self.may_press(job, interaction.user.id, interaction.channel_id):
            await interaction.response.send_message(REQUESTER_ONLY, ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        await self.start_derived(interaction, job, variant, prompt=prompt, seed=seed, ratios=ratios)

    async def may_press(self, job: Job, user_id: int, channel_id: int | None) -> bool:
        """Whether ``user_id`` may make new images from ``job`` (the server's button rule)."""
        if user_id == job.user_id or job.guild_id is None:
            return True
        config = await self.bot.guild_settings.guild(job.guild_id)
        policy = config.channel(channel_id).get("press_policy") or config.server.get("press_policy")
        return policy != "requester"

    async def start_derived(
        self,
        origin: discord.Interaction[Any] | ChannelOrigin,
        job: Job,
        variant: str,
        *,
        prompt: str | None = None,
        seed: int | None = None,
        ratios: list[str] | None = None,
    ) -> None:
        """Start the job(s) derived from ``job`` (the origin is already acknowledged)."""
        user_id = origin.user_id if isinstance(origin, ChannelOrigin) else origin.user.id
        try:
            await self.bot.check_allowed(
                job.guild_id, user_id, prompt or job.params.prompt, len(ratios or [None])
            )
        except InvalidRequest as exc:
            if isinstance(origin, discord.Interaction):
                await refuse(origin, exc.message)
            return
        try:
            references = await self.current_references(job)
            if variant.startswith("vary_"):
                references.append(await self.result_reference(job, VARY[variant[5:]]))
        except ReferencesGone as exc:
            text = f"❌ {exc} Nothing was sent."
            if isinstance(origin, discord.Interaction):
                await origin.edit_original_response(content=text, allowed_mentions=NO_MENTIONS)
            return
        base = job.params.model_copy(
            update={"image_style_references": tuple(ref for ref, _ in references)}
        )
        refs = [entry for _, entry in references]
        changes: dict[str, Any] = {}
        if prompt is not None:
            changes["prompt"] = prompt
        if seed is not None:
            changes["seed"] = seed
        if variant.startswith("vary_"):
            settings = VARY[variant[5:]]
            changes["creativity"] = settings["creativity"]
            if settings["new_seed"]:
                changes["seed"] = new_seed()
        first = True
        targets: list[str | None] = list(ratios) if ratios else [None]
        for ratio in targets:
            update = dict(changes)
            if ratio is not None:
                update["aspect_ratio"] = ratio
            params = TextToImageRequest.model_validate({**base.model_dump(), **update})
            sources = {k: v for k, v in job.sources.items() if k != "count"}
            sources.update({key: "option" for key in update})
            await self.bot.launch(
                origin,
                params,
                sources=sources,
                refs=refs,
                parent_id=job.id,
                variant=variant,
                followup=not first,
            )
            first = False

    async def current_references(
        self, job: Job
    ) -> list[tuple[ImageStyleReference, dict[str, Any]]]:
        """The job's references with URLs that are valid now (re-fetched from their message)."""
        result = []
        for entry in job.refs:
            url = None
            if entry.get("message_id"):
                url = await self.bot.delivery.fresh_attachment_url(
                    job, entry["message_id"], entry["filename"], proxy=False
                )
            if url is None:
                raise ReferencesGone(
                    "The reference images of this result are no longer available "
                    "(its message was deleted)."
                )
            strength = float(entry.get("strength", 1.0))
            result.append((ImageStyleReference(image_url=url, strength=strength), entry))
        return result

    async def result_reference(
        self, job: Job, settings: dict[str, Any]
    ) -> tuple[ImageStyleReference, dict[str, Any]]:
        """The result image itself as a style reference, with a freshly signed URL.

        It is looked for in the result message, then in the job's own message (a batch's
        grid keeps every image), so deleting an opened copy does not lose it.
        """
        found = await self.find_image(job)
        if found is not None:
            message_id, attachment = found
            entry = {
                "role": "result",
                "message_id": message_id,
                "filename": attachment.filename,
                "strength": settings["strength"],
            }
            return ImageStyleReference(
                image_url=attachment.url, strength=settings["strength"]
            ), entry
        raise ReferencesGone("The image of this result is no longer available.")

    async def find_image(self, job: Job) -> tuple[int, discord.Attachment] | None:
        """The job's image, freshly signed: in its result message, else in its own message
        (a batch's grid keeps every image). None when both are gone."""
        channel = await self.bot.delivery.channel_for(job)
        for message_id in dict.fromkeys(m for m in (job.result_message_id, job.message_id) if m):
            try:
                message = await channel.fetch_message(message_id)
            except discord.NotFound:
                continue
            for attachment in message.attachments:
                if attachment.filename.startswith(f"krea-{job.id}-"):
                    return message_id, attachment
        return None


async def setup(bot: KreaBot) -> None:
    """Load the cog."""
    await bot.add_cog(VariationsCog(bot))
