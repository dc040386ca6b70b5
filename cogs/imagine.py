"""``/imagine``: turns a slash command into durable generation jobs."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.delivery import DiscordDelivery
from bot.errors import UserError
from bot.fair_use import MAX_BATCH
from bot.interactions import check_can_deliver, origin_of
from bot.job_service import JobService
from bot.pixazo.models import (
    CREATIVITY_LEVELS,
    MAX_PROMPT_LENGTH,
    RANDOM_SEED_MAX,
    SEED_MAX,
    SEED_MIN,
    STRENGTH_MAX,
    STRENGTH_MIN,
    AspectRatio,
)
from bot.resolution import Inputs
from bot.settings import Settings
from bot.storage.config import ConfigStore
from bot.storage.jobs import Reference

if TYPE_CHECKING:
    from bot.app import KreaBot

#: Content types accepted for reference images.
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif")
#: Strength sent for the ``avoid`` attachment: pushes away from that look.
AVOID_STRENGTH = -1.0

#: What each of Krea's creativity levels does, as the choices show it.
CREATIVITY_HELP = {
    "raw": "minimal interpretation, most literal",
    "low": "strict adherence to the prompt",
    "medium": "balanced (default)",
    "high": "highly creative drift",
}
CREATIVITY_CHOICES = [
    app_commands.Choice(name=f"{level}: {CREATIVITY_HELP[level]}", value=level)
    for level in CREATIVITY_LEVELS
]


def reference_of(attachment: discord.Attachment, strength: float, role: str) -> Reference:
    """How a reference attachment is remembered on the job."""
    return Reference.model_validate(
        {
            "role": role,
            "url": attachment.url,
            "proxy_url": attachment.proxy_url,
            "filename": attachment.filename,
            "content_type": attachment.content_type,
            "size": attachment.size,
            "strength": strength,
        }
    )


def human_size(size: int) -> str:
    """``10485760`` -> ``10 MiB``; ``1536`` -> ``1.5 KiB``."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


def check_image(
    attachment: discord.Attachment, option: str, max_bytes: int, max_pixels: int
) -> None:
    """Refuse, from what Discord says of it, anything but a png/jpeg/webp/gif under the caps
    (its bytes are checked too, once the command is acknowledged)."""
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    is_image = content_type in IMAGE_TYPES or (
        not content_type and attachment.filename.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not is_image:
        raise UserError(
            f"`{option}` must be a PNG, JPEG, WebP or GIF image; "
            f"`{attachment.filename[:80]}` is {content_type or 'not an image'}"
        )
    if attachment.size > max_bytes:
        raise UserError(
            f"`{option}` is {human_size(attachment.size)}; the limit is {human_size(max_bytes)}"
        )
    if attachment.width and attachment.height and attachment.width * attachment.height > max_pixels:
        raise UserError(
            f"`{option}` is {attachment.width}x{attachment.height} pixels; the limit is "
            f"{max_pixels / 1e6:g} megapixels"
        )


class ImagineCog(commands.Cog):
    """The /imagine command."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobService,
        delivery: DiscordDelivery,
        config: ConfigStore,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.delivery = delivery
        self.config = config

    @app_commands.command(name="imagine", description="Generate an image with Krea 2")
    @app_commands.describe(
        prompt="What to draw: be descriptive",
        aspect="Aspect ratio of the image",
        creativity="How loosely the model reads the prompt",
        seed="Seed for a reproducible image (random if empty)",
        reference="An image whose style guides the result",
        reference2="A second style reference",
        reference3="A third style reference",
        reference4="A fourth style reference",
        reference_strength="How strongly the references pull (-2 to 2, default 1)",
        avoid="An image whose look the result should move away from",
        styles="Style ids or presets, comma-separated, each id with optional :strength",
        moodboard="A moodboard preset, or a Krea moodboard UUID with optional :strength",
        count="How many images (1-4), shown as one grid",
    )
    @app_commands.choices(creativity=CREATIVITY_CHOICES)
    @app_commands.guild_only()
    async def imagine(
        self,
        interaction: discord.Interaction[Any],
        prompt: app_commands.Range[str, 1, MAX_PROMPT_LENGTH],
        aspect: AspectRatio | None = None,
        creativity: app_commands.Choice[str] | None = None,
        seed: app_commands.Range[int, SEED_MIN, SEED_MAX] | None = None,
        reference: discord.Attachment | None = None,
        reference2: discord.Attachment | None = None,
        reference3: discord.Attachment | None = None,
        reference4: discord.Attachment | None = None,
        reference_strength: app_commands.Range[float, STRENGTH_MIN, STRENGTH_MAX] = 1.0,
        avoid: discord.Attachment | None = None,
        styles: app_commands.Range[str, 1, 1000] | None = None,
        moodboard: app_commands.Range[str, 1, 100] | None = None,
        count: app_commands.Range[int, 1, MAX_BATCH] = 1,
    ) -> None:
        """Validate locally, acknowledge at once, then hand durable jobs to the runner."""
        limit = self.settings.MAX_PROMPT_LENGTH
        if len(prompt) > limit:
            raise UserError(f"the prompt is {len(prompt)} characters; the limit is {limit}")
        if not prompt.strip():
            raise UserError("the prompt is empty")
        check_can_deliver(interaction)
        references: list[Reference] = []
        attachments: list[tuple[str, discord.Attachment]] = []
        for option, attachment, strength, role in (
            ("reference", reference, reference_strength, "reference"),
            ("reference2", reference2, reference_strength, "reference"),
            ("reference3", reference3, reference_strength, "reference"),
            ("reference4", reference4, reference_strength, "reference"),
            ("avoid", avoid, AVOID_STRENGTH, "avoid"),
        ):
            if attachment is not None:
                check_image(
                    attachment,
                    option,
                    self.settings.MAX_REFERENCE_BYTES,
                    self.settings.MAX_IMAGE_PIXELS,
                )
                references.append(reference_of(attachment, strength, role))
                attachments.append((option, attachment))
        # Acknowledge before any database or network work.
        await interaction.response.defer(thinking=True)
        for option, attachment in attachments:
            await self.delivery.probe_attachment(
                attachment.proxy_url or attachment.url, f"`{option}`"
            )
        inputs = Inputs(
            prompt=prompt,
            seed=seed if seed is not None else secrets.randbelow(RANDOM_SEED_MAX + 1),
            aspect_ratio=aspect,
            creativity=creativity.value if creativity else None,
            styles=styles,
            moodboard=moodboard,
            references=references,
            random_seed=seed is None,
        )
        await self.jobs.imagine(
            origin_of(interaction), inputs, self.delivery.announcer(interaction), count=count
        )

    @imagine.autocomplete("styles")
    async def styles_autocomplete(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        """Style presets of this server, completing the last comma-separated item."""
        if interaction.guild_id is None:
            return []
        config = await self.config.server(interaction.guild_id)
        head, _, last = current.rpartition(",")
        prefix = f"{head}, " if head else ""
        names = [n for n in config.style_presets if last.strip().lower() in n.lower()]
        return [
            app_commands.Choice(name=f"{prefix}{n}"[:100], value=f"{prefix}{n}"[:100])
            for n in names[:25]
        ]

    @imagine.autocomplete("moodboard")
    async def moodboard_autocomplete(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        """Moodboard presets of this server."""
        if interaction.guild_id is None:
            return []
        config = await self.config.server(interaction.guild_id)
        names = [n for n in config.moodboard_presets if current.strip().lower() in n.lower()]
        return [app_commands.Choice(name=n, value=n) for n in names[:25]]


async def setup(bot: KreaBot) -> None:
    """Load the cog."""
    services = bot.services
    await bot.add_cog(
        ImagineCog(services.settings, services.job_service, services.delivery, services.config)
    )
