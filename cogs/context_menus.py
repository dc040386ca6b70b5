"""Message context menus: "Imagine in this style" and "Avoid this style".

On a message with pictures (right-click or long-press → Apps), a form asks for the prompt
and, optionally, the strength; the message's images (its attachments, then the pictures of
its embeds, such as a link preview's) become the job's style references, at most four,
pushing towards their look or, for "Avoid", away from it. The job is made by
:meth:`JobService.imagine` like ``/imagine``'s, under the same defaults, caps, blocklist and
queue, and the result links back to the message.

The form's custom_id carries only ids (kind, channel, message), so a form opened before a
restart still works after it. A custom_id is a claim, not a proof: on submission the message
is fetched again with the bot's token and must be in the member's server, in a channel they
can read, before anything of it is used; its images are checked by their bytes.

Without the Message Content intent (kreabot asks for none) Discord blanks the attachments
and embeds of other members' messages fetched with the bot's token; only the message a
context menu is used on comes in full. So the images the menu was shown are remembered for
the member, in memory for an hour, and used when that fetch comes back blanked. A form opened
before a restart (or longer ago) then asks to use the menu again (with the intent, the fetch
shows the images).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot.app import RESTARTING, KreaBot
from bot.delivery import PROBE_BYTES, Channel, DiscordDelivery, jump_url
from bot.errors import UserError
from bot.imaging import NOT_AN_IMAGE, ImageIncomplete, ImageRejected
from bot.interactions import check_can_deliver, origin_of, reply_privately, report_error
from bot.job_service import JobService, new_seed
from bot.pixazo.models import STRENGTH_MAX, STRENGTH_MIN
from bot.resolution import Inputs
from bot.settings import Settings
from bot.storage.jobs import Reference
from cogs.imagine import IMAGE_EXTENSIONS, human_size
from cogs.variations import submitted_values

log = logging.getLogger(__name__)

IMAGINE_MENU = "Imagine in this style"
AVOID_MENU = "Avoid this style"
FORM = re.compile(
    r"krea:ctx:(?P<kind>style|avoid):(?P<channel>[0-9]{1,20}):(?P<message>[0-9]{1,20})"
)
PROMPT_FIELD = "krea:ctx-prompt"
STRENGTH_FIELD = "krea:ctx-strength"
#: Style references taken from one message (as many as ``/imagine`` takes).
MAX_SOURCE_IMAGES = 4
#: How long the images a menu was shown are remembered for its form, and how many forms.
SEEN_SECONDS = 3600.0
SEEN_MAX = 1000
SNOWFLAKE_MAX = 2**64 - 1

IN_SERVERS_ONLY = "these commands work on messages in a server, not in direct messages"
NOT_HERE = "that message is not in this server"
GONE = "that message was deleted, so its images cannot be used"
YOU_CANNOT_READ = "you cannot read the channel of that message"
I_CANNOT_READ = (
    "I cannot read that message: I need the View Channel and Read Message History "
    "permissions in <#{channel}>"
)
FORGOTTEN = (
    "I can no longer see that message's images (the form was opened more than an hour ago, "
    "or before kreabot restarted): use Apps → {menu} on the message again"
)


@dataclass(frozen=True)
class Kind:
    """What one of the two menus does with the images."""

    key: Literal["style", "avoid"]
    menu: str
    role: Literal["reference", "avoid"]
    default_strength: float
    #: The source key of the job (a link to the message), shown on the result.
    source: str
    negative_only: bool

    def strength_label(self) -> str:
        """The form's label of the strength field (at most 45 characters)."""
        top = "below 0" if self.negative_only else f"{STRENGTH_MAX:g}"
        return f"Strength, {STRENGTH_MIN:g} to {top} (default {self.default_strength:g})"

    def allows(self, strength: float) -> bool:
        """Whether ``strength`` can be sent for this kind."""
        if not (math.isfinite(strength) and STRENGTH_MIN <= strength <= STRENGTH_MAX):
            return False
        return strength < 0 or not self.negative_only

    def strength_rule(self) -> str:
        """How a wrong strength is explained."""
        if self.negative_only:
            return (
                f"the strength must be a negative number, down to {STRENGTH_MIN:g} "
                f"(to pull towards a style, use Apps → {IMAGINE_MENU})"
            )
        return f"the strength must be a number from {STRENGTH_MIN:g} to {STRENGTH_MAX:g}"


KINDS = {
    "style": Kind("style", IMAGINE_MENU, "reference", 1.0, "style_from", negative_only=False),
    "avoid": Kind("avoid", AVOID_MENU, "avoid", -1.0, "avoid_style_of", negative_only=True),
}


@dataclass(frozen=True)
class SourceImage:
    """One picture of a message: ``url`` is sent to the gateway, ``fetch_url`` (Discord's
    media proxy) is what the bot reads; ``size`` is Discord's count of its bytes, when known."""

    name: str
    url: str
    fetch_url: str
    filename: str | None = None
    content_type: str | None = None
    size: int | None = None
    width: int | None = None
    height: int | None = None


def _looks_like_image(attachment: discord.Attachment) -> bool:
    """Whether Discord describes an attachment as a picture (its bytes decide later)."""
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    if content_type:
        return content_type.startswith("image/")
    return attachment.filename.lower().endswith(IMAGE_EXTENSIONS) or bool(attachment.width)


def _described(attachment: discord.Attachment) -> str:
    content_type = (attachment.content_type or "").split(";")[0].strip()
    return f"`{attachment.filename[:80]}` is {content_type or 'not an image'}"


def source_images(message: discord.Message) -> tuple[list[SourceImage], list[str]]:
    """The pictures of ``message`` in order (attachments, then each embed's image and
    thumbnail, each picture once), and how the other files are described."""
    images: list[SourceImage] = []
    others: list[str] = []
    seen_paths: set[str] = set()
    for attachment in message.attachments:
        seen_paths.update(urlsplit(u).path for u in (attachment.url, attachment.proxy_url) if u)
        if not _looks_like_image(attachment):
            others.append(_described(attachment))
            continue
        images.append(
            SourceImage(
                name=f"`{attachment.filename[:80]}`",
                url=attachment.url,
                fetch_url=attachment.proxy_url or attachment.url,
                filename=attachment.filename,
                content_type=attachment.content_type,
                size=attachment.size,
                width=attachment.width,
                height=attachment.height,
            )
        )
    pictures = [
        picture
        for embed in message.embeds
        for picture in (embed.image, embed.thumbnail)
        # Only what Discord's media proxy serves is read: never an address a member chose.
        if picture.proxy_url and picture.url
    ]
    for number, picture in enumerate(pictures, start=1):
        url, proxy_url = str(picture.url), str(picture.proxy_url)
        paths = {urlsplit(url).path, urlsplit(proxy_url).path}
        if paths & seen_paths:
            continue  # an embed showing one of the attachments
        seen_paths.update(paths)
        images.append(
            SourceImage(
                name=f"the embedded picture {number}"
                if len(pictures) > 1
                else "the embedded picture",
                # The gateway fetches the picture itself; an http:// one through the proxy.
                url=url if url.startswith("https://") else proxy_url,
                fetch_url=proxy_url,
                width=picture.width,
                height=picture.height,
            )
        )
    return images, others


def parse_form(values: dict[str, str], kind: Kind, max_prompt: int) -> tuple[str, float]:
    """The prompt and strength of a submitted form; refused when either is unusable."""
    prompt = values.get(PROMPT_FIELD, "").strip()
    if not prompt:
        raise UserError("the prompt is empty")
    if len(prompt) > max_prompt:
        raise UserError(f"the prompt is {len(prompt)} characters; the limit is {max_prompt}")
    text = values.get(STRENGTH_FIELD, "").strip().replace(",", ".")
    if not text:
        return prompt, kind.default_strength
    try:
        strength = float(text)
    except ValueError:
        strength = math.nan
    if not kind.allows(strength):
        raise UserError(kind.strength_rule())
    return prompt, strength


class StyleForm(discord.ui.Modal):
    """The prompt (and strength) for the images of one message.

    Its submission is handled by :meth:`ContextMenusCog.on_interaction` from the custom_id
    alone, so a form opened before a restart still works after it.
    """

    def __init__(self, kind: Kind, message: discord.Message, images: int, max_prompt: int):
        super().__init__(
            title=kind.menu,
            timeout=15 * 60,
            custom_id=f"krea:ctx:{kind.key}:{message.channel.id}:{message.id}",
        )
        used = min(images, MAX_SOURCE_IMAGES)
        which = f"first {used}" if images > used else str(used)
        toward = "in" if kind.role == "reference" else "away from"
        self.add_item(
            discord.ui.TextInput(
                label="Prompt",
                style=discord.TextStyle.paragraph,
                placeholder=f"What to draw, {toward} the style of its {which} "
                f"image{'s' if used > 1 else ''}",
                max_length=max_prompt,
                custom_id=PROMPT_FIELD,
            )
        )
        self.add_item(
            discord.ui.TextInput(
                label=kind.strength_label(),
                default=f"{kind.default_strength:g}",
                required=False,
                max_length=8,
                custom_id=STRENGTH_FIELD,
            )
        )

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        """Answered by the cog's listener (which also works after a restart)."""


class ContextMenusCog(commands.Cog):
    """The two message context menus and their forms."""

    def __init__(
        self, bot: KreaBot, settings: Settings, jobs: JobService, delivery: DiscordDelivery
    ) -> None:
        self.bot = bot
        self.settings = settings
        self.jobs = jobs
        self.delivery = delivery
        #: (member, message) -> (when, the images the menu was shown), newest last.
        self._seen: OrderedDict[tuple[int, int], tuple[float, list[SourceImage]]] = OrderedDict()
        self.menus = [
            app_commands.guild_only(
                app_commands.ContextMenu(name=IMAGINE_MENU, callback=self.imagine_in_style)
            ),
            app_commands.guild_only(
                app_commands.ContextMenu(name=AVOID_MENU, callback=self.avoid_style)
            ),
        ]

    async def cog_load(self) -> None:
        for menu in self.menus:
            self.bot.tree.add_command(menu)

    async def cog_unload(self) -> None:
        for menu in self.menus:
            self.bot.tree.remove_command(menu.name, type=menu.type)

    # -- the menus -------------------------------------------------------------------

    async def imagine_in_style(
        self, interaction: discord.Interaction[Any], message: discord.Message
    ) -> None:
        """Apps → Imagine in this style."""
        await self.open_form(interaction, message, KINDS["style"])

    async def avoid_style(
        self, interaction: discord.Interaction[Any], message: discord.Message
    ) -> None:
        """Apps → Avoid this style."""
        await self.open_form(interaction, message, KINDS["avoid"])

    async def open_form(
        self, interaction: discord.Interaction[Any], message: discord.Message, kind: Kind
    ) -> None:
        """Refuse at once what cannot work (a DM, a channel the bot cannot post in, a message
        without a usable picture), else ask for the prompt."""
        if interaction.guild_id is None:
            raise UserError(IN_SERVERS_ONLY)
        check_can_deliver(interaction)
        images, others = source_images(message)
        self._screen(images, others)
        self._remember(interaction.user.id, message.id, images)
        await interaction.response.send_modal(
            StyleForm(kind, message, len(images), self.settings.MAX_PROMPT_LENGTH)
        )

    # -- the form --------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        """Submissions of the forms, from their custom_id (also after a restart)."""
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        data: dict[str, Any] = dict(interaction.data or {})
        match = FORM.fullmatch(str(data.get("custom_id", "")))
        if match is None:
            return
        if not getattr(self.bot, "accepting", True):
            await reply_privately(interaction, RESTARTING)
            return
        try:
            values = submitted_values(list(data.get("components") or []))
            await self.submit(
                interaction,
                KINDS[match["kind"]],
                int(match["channel"]),
                int(match["message"]),
                values,
            )
        except Exception as exc:
            await report_error(interaction, exc)

    async def submit(
        self,
        interaction: discord.Interaction[Any],
        kind: Kind,
        channel_id: int,
        message_id: int,
        values: dict[str, str],
    ) -> None:
        """Check the claim of the form, then make the job from the message's images."""
        prompt, strength = parse_form(values, kind, self.settings.MAX_PROMPT_LENGTH)
        if interaction.guild_id is None:
            raise UserError(IN_SERVERS_ONLY)
        check_can_deliver(interaction)
        message = await self._source_message(interaction, channel_id, message_id)
        images, others = source_images(message)
        if not images and not self._reads_content():
            # Blanked by Discord: use what the menu showed this member, if it is recent.
            recalled = self._recall(interaction.user.id, message.id)
            if recalled is None:
                raise UserError(FORGOTTEN.format(menu=kind.menu))
            images = recalled
        self._screen(images, others)
        await interaction.response.defer(thinking=True)
        chosen = await self._usable(images)
        references = [
            Reference(
                role=kind.role,
                url=image.url,
                proxy_url=image.fetch_url,
                filename=image.filename,
                content_type=image.content_type,
                size=image.size,
                strength=strength,
            )
            for image in chosen
        ]
        inputs = Inputs(
            prompt=prompt,
            seed=new_seed(),
            references=references,
            random_seed=True,
            sources={kind.source: jump_url(interaction.guild_id, message.channel.id, message.id)},
        )
        await self.jobs.imagine(
            origin_of(interaction), inputs, self.delivery.announcer(interaction)
        )

    # -- the source message ----------------------------------------------------------

    async def _source_message(
        self, interaction: discord.Interaction[Any], channel_id: int, message_id: int
    ) -> discord.Message:
        """The message a form names, fetched again with the bot's token: in this server, in a
        channel the member can read."""
        guild = interaction.guild
        if guild is None or max(channel_id, message_id) > SNOWFLAKE_MAX:
            raise UserError(NOT_HERE)
        channel: object = guild.get_channel_or_thread(channel_id)
        if channel is None:
            try:
                channel = await self.bot.fetch_channel(channel_id)
            except (discord.NotFound, discord.Forbidden):
                channel = None
        in_guild = getattr(getattr(channel, "guild", None), "id", None) == guild.id
        if not in_guild or not isinstance(channel, Channel):  # text, thread, voice or stage
            log.info(
                "member %s sent a form naming channel %s, not one of server %s",
                interaction.user.id,
                channel_id,
                guild.id,
            )
            raise UserError(NOT_HERE)
        if channel.id == interaction.channel_id:
            permissions = interaction.permissions  # Discord's own count for the member here
        elif isinstance(interaction.user, discord.Member):
            permissions = channel.permissions_for(interaction.user)
        else:
            permissions = discord.Permissions.none()
        if not (permissions.view_channel and permissions.read_message_history):
            log.info(
                "member %s cannot read channel %s; form refused", interaction.user.id, channel.id
            )
            raise UserError(YOU_CANNOT_READ)
        try:
            return await channel.fetch_message(message_id)
        except discord.NotFound:
            raise UserError(GONE) from None
        except discord.Forbidden:
            raise UserError(I_CANNOT_READ.format(channel=channel.id)) from None

    def _reads_content(self) -> bool:
        """Whether the app has the Message Content intent (fetched messages come in full)."""
        try:
            flags = self.bot.application_flags
        except AttributeError:
            return False
        return bool(
            flags and (flags.gateway_message_content or flags.gateway_message_content_limited)
        )

    def _remember(self, user_id: int, message_id: int, images: list[SourceImage]) -> None:
        now = time.monotonic()
        self._seen[(user_id, message_id)] = (now, images)
        self._seen.move_to_end((user_id, message_id))
        while len(self._seen) > SEEN_MAX or (
            self._seen and next(iter(self._seen.values()))[0] < now - SEEN_SECONDS
        ):
            self._seen.popitem(last=False)

    def _recall(self, user_id: int, message_id: int) -> list[SourceImage] | None:
        found = self._seen.get((user_id, message_id))
        if found is None or found[0] < time.monotonic() - SEEN_SECONDS:
            return None
        return found[1]

    # -- the images ------------------------------------------------------------------

    def _screen(self, images: list[SourceImage], others: list[str]) -> None:
        """Refuse, from what Discord says of them, a message without pictures or whose first
        pictures are over the caps (their bytes are checked once the form is acknowledged)."""
        if not images:
            why = f" ({', '.join(others[:3])})" if others else ""
            raise UserError(f"that message has no image to take a style from{why}")
        for image in images[:MAX_SOURCE_IMAGES]:
            self._check_declared(image)

    def _check_declared(self, image: SourceImage, size: int | None = None) -> None:
        limit = self.settings.MAX_REFERENCE_BYTES
        size = size if size is not None else image.size
        if size is not None and size > limit:
            raise UserError(
                f"{image.name} is {human_size(size)}; the limit for a style reference is "
                f"{human_size(limit)}"
            )
        pixels = self.settings.MAX_IMAGE_PIXELS
        if image.width and image.height and image.width * image.height > pixels:
            raise UserError(
                f"{image.name} is {image.width}x{image.height} pixels; the limit is "
                f"{pixels / 1e6:g} megapixels"
            )

    async def _usable(self, images: list[SourceImage]) -> list[SourceImage]:
        """The first pictures that are images by their bytes (PNG, JPEG, WebP or GIF, under
        the caps), at most four; files that are not images are passed over."""
        chosen: list[SourceImage] = []
        not_images: list[str] = []
        for image in images:
            if len(chosen) == MAX_SOURCE_IMAGES:
                break
            if await self._probe(image):
                chosen.append(image)
            else:
                not_images.append(image.name)
        if not chosen:
            raise UserError(
                f"that message has no image to take a style from ({', '.join(not_images[:3])} "
                f"{'is' if len(not_images) == 1 else 'are'} not PNG, JPEG, WebP or GIF)"
            )
        return chosen

    async def _probe(self, image: SourceImage) -> bool:
        """Read the start of a picture (and learn its size): False when its bytes are not an
        image; refused when it is one over a cap, damaged, or unreadable."""
        headers = {"Range": f"bytes=0-{PROBE_BYTES - 1}"}
        limit = self.settings.MAX_REFERENCE_BYTES
        try:
            async with self.delivery.session.get(
                image.fetch_url, headers=headers, timeout=aiohttp.ClientTimeout(total=20)
            ) as response:
                response.raise_for_status()
                head = await response.content.read(PROBE_BYTES)
                size = _total_size(response)
                if size is None:  # no length given: count, up to just past the limit
                    size = len(head)
                    while size <= limit and (chunk := await response.content.read(1 << 16)):
                        size += len(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UserError(f"{image.name} could not be read from Discord; try again") from exc
        try:
            await self.delivery.images.probe(head, partial=True)
        except ImageIncomplete:
            pass  # a header past the first 64 KiB: checked again when it is used
        except ImageRejected as exc:
            if exc.message == NOT_AN_IMAGE:
                return False
            raise UserError(f"{image.name} cannot be used: {exc.message}") from None
        self._check_declared(image, size)
        return True


def _total_size(response: aiohttp.ClientResponse) -> int | None:
    """The whole file's size: from ``Content-Range`` (a 206) or ``Content-Length`` (a 200)."""
    if response.status == 206:
        total = response.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    return response.content_length


async def setup(bot: KreaBot) -> None:
    """Load the cog."""
    services = bot.services
    await bot.add_cog(
        ContextMenusCog(bot, services.settings, services.job_service, services.delivery)
    )
