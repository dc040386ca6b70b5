"""``/imagine``: turns a slash command into a durable generation job."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.pixazo import InvalidRequest
from bot.pixazo.models import SEED_MAX, STRENGTH_MAX, STRENGTH_MIN
from bot.replies import refuse
from bot.resolution import Inputs

if TYPE_CHECKING:
    from bot.app import KreaBot

#: Content types accepted for reference images.
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif")
#: Largest ``count`` a server can allow.
MAX_COUNT = 4
#: Strength sent for the ``avoid`` attachment: pushes away from that look.
AVOID_STRENGTH = -1.0

CREATIVITY_CHOICES = [
    app_commands.Choice(name="raw: minimal interpretation, most literal", value="raw"),
    app_commands.Choice(name="low: strict adherence to the prompt", value="low"),
    app_commands.Choice(name="medium: balanced (default)", value="medium"),
    app_commands.Choice(name="high: highly creative drift", value="high"),
]
NO_MENTIONS = discord.AllowedMentions.none()
AspectOption = Literal["1:1", "4:3", "3:2", "16:9", "2.35:1", "4:5", "2:3", "9:16"]


def reference_entry(attachment: discord.Attachment, strength: float, role: str) -> dict[str, Any]:
    """How a reference attachment is remembered on the job."""
    return {
        "role": role,
        "url": attachment.url,
        "proxy_url": attachment.proxy_url,
        "filename": attachment.filename,
        "content_type": attachment.content_type,
        "size": attachment.size,
        "strength": strength,
    }


def human_size(size: int) -> str:
    """``10485760`` -> ``10 MiB``; ``1536`` -> ``1.5 KiB``."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


def check_image(attachment: discord.Attachment, option: str, max_bytes: int) -> None:
    """Refuse anything but a png/jpeg/webp/gif under the cap."""
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    is_image = content_type in IMAGE_TYPES or (
        not content_type and attachment.filename.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not is_image:
        raise InvalidRequest(
            f"`{option}` must be a PNG, JPEG, WebP or GIF image; "
            f"`{attachment.filename[:80]}` is {content_type or 'not an image'}"
        )
    if attachment.size > max_bytes:
        raise InvalidRequest(
            f"`{option}` is {human_size(attachment.size)}; the limit is {human_size(max_bytes)}"
        )


class ImagineCog(commands.Cog):
    """The /imagine command."""

    def __init__(self, bot: KreaBot) -> None:
        self.bot = bot

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
        prompt: app_commands.Range[str, 1, 1500],
        aspect: AspectOption | None = None,
        creativity: app_commands.Choice[str] | None = None,
        seed: app_commands.Range[int, 0, SEED_MAX] | None = None,
        reference: discord.Attachment | None = None,
        reference2: discord.Attachment | None = None,
        reference3: discord.Attachment | None = None,
        reference4: discord.Attachment | None = None,
        reference_strength: app_commands.Range[float, STRENGTH_MIN, STRENGTH_MAX] = 1.0,
        avoid: discord.Attachment | None = None,
        styles: app_commands.Range[str, 1, 1000] | None = None,
        moodboard: app_commands.Range[str, 1, 100] | None = None,
        count: app_commands.Range[int, 1, MAX_COUNT] = 1,
    ) -> None:
        """Validate locally, acknowledge at once, then hand a durable job to the runner."""
        settings = self.bot.settings
        try:
            if len(prompt) > settings.MAX_PROMPT_LENGTH:
                raise InvalidRequest(
                    f"the prompt is {len(prompt)} characters; the limit is "
                    f"{settings.MAX_PROMPT_LENGTH}"
                )
            if not prompt.strip():
                raise InvalidRequest("the prompt is empty")
            refs: list[dict[str, Any]] = []
            for option, attachment in (
                ("reference", reference),
                ("reference2", reference2),
                ("reference3", reference3),
                ("reference4", reference4),
            ):
                if attachment is not None:
                    check_image(attachment, option, settings.MAX_REFERENCE_BYTES)
                    refs.append(reference_entry(attachment, reference_strength, "reference"))
            if avoid is not None:
                check_image(avoid, "avoid", settings.MAX_REFERENCE_BYTES)
                refs.append(reference_entry(avoid, AVOID_STRENGTH, "avoid"))
        except InvalidRequest as exc:
            await refuse(interaction, exc.message)
            return
        # Acknowledge before any database or network work.
        await interaction.response.defer(thinking=True)
        inputs = Inputs(
            prompt=prompt,
            seed=seed if seed is not None else secrets.randbelow(SEED_MAX + 1),
            aspect_ratio=aspect,
            creativity=creativity.value if creativity else None,
            styles=styles,
            moodboard=moodboard,
            references=refs,
        )
        try:
            resolved = await self.bot.resolve(interaction, inputs)
        except InvalidRequest as exc:
            await refuse(interaction, exc.message)
            return
        if seed is None:
            resolved.sources["seed"] = "random"
        allowed = await self.bot.count_limit(interaction.guild_id, interaction.channel_id)
        try:
            if count > allowed:
                raise InvalidRequest(
                    f"this server allows at most {allowed} image(s) per command, not {count}"
                )
            await self.bot.check_allowed(
                interaction.guild_id, interaction.user.id, resolved.request.prompt, count
            )
        except InvalidRequest as exc:
            await refuse(interaction, exc.message)
            return
        await self.bot.launch(
            interaction, resolved.request, sources=resolved.sources, refs=refs, count=count
        )

    @imagine.autocomplete("styles")
    async def styles_autocomplete(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        """Style presets of this server, completing the last comma-separated item."""
        if interaction.guild_id is None:
            return []
        config = await self.bot.guild_settings.guild(interaction.guild_id)
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
        config = await self.bot.guild_settings.guild(interaction.guild_id)
        names = [n for n in config.moodboard_presets if current.strip().lower() in n.lower()]
        return [app_commands.Choice(name=n, value=n) for n in names[:25]]


async def setup(bot: KreaBot) -> None:
    """Load the cog."""
    await bot.add_cog(ImagineCog(bot))
