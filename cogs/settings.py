"""``/settings`` (server and channel defaults, presets) and ``/prefer`` (a member's own)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import NOTHING_CHANGED, UserError
from bot.fair_use import MAX_BATCH, FairUse
from bot.moderation import describe, make_entry
from bot.parsing import parse_strength
from bot.pixazo import InvalidRequest, Moodboard
from bot.pixazo.models import (
    MOODBOARD_STRENGTH_MAX,
    MOODBOARD_STRENGTH_MIN,
    AspectRatio,
    Creativity,
)
from bot.resolution import expand_moodboard, expand_styles
from bot.storage.config import SERVER, ConfigStore, ScopedKey, ServerConfig

if TYPE_CHECKING:
    from bot.app import KreaBot

NO_MENTIONS = discord.AllowedMentions.none()
Scope = Literal["server", "channel"]
PRESET_NAME = re.compile(r"^[\w][\w \-]{0,31}$")


class NotAllowed(app_commands.CheckFailure):
    """The member may not change settings here."""


@contextlib.contextmanager
def unchanged() -> Iterator[None]:
    """Refusals inside the block end as "… Nothing changed." (nothing was stored)."""
    try:
        yield
    except (UserError, InvalidRequest) as exc:
        raise UserError(exc.message, outcome=NOTHING_CHANGED) from None


async def can_manage(interaction: discord.Interaction[Any]) -> bool:
    """Manage Server, checked at run time (admins can override command permissions)."""
    if interaction.guild_id is None:
        raise NotAllowed("Settings only exist inside a server.")
    if not interaction.permissions.manage_guild:
        raise NotAllowed("You need the Manage Server permission to change kreabot's settings.")
    return True


def _channel_key(interaction: discord.Interaction[Any], scope: str) -> int:
    if scope == "channel":
        assert interaction.channel_id is not None
        return interaction.channel_id
    return SERVER


def _where(interaction: discord.Interaction[Any], scope: str) -> str:
    return f"<#{interaction.channel_id}>" if scope == "channel" else "this server"


def describe_config(config: ServerConfig, channel_id: int | None) -> str:
    """A readable summary of the effective defaults in a channel."""
    lines = []

    def fmt(key: ScopedKey, render: Any) -> None:
        label = key.replace("_", " ")
        value, scope = config.effective(key, channel_id)
        if scope is not None:
            where = "this channel" if scope == "channel" else "server"
            lines.append(f"**{label}**: {render(value)} ({where})")

    fmt("moodboard", lambda b: f"{b.name or '`' + b.id + '`'} ×{b.strength:g}")
    fmt("moodboard_locked", lambda v: "members cannot change it" if v else "members may change it")
    fmt("styles", lambda styles: ", ".join(f"`{s.id}` ×{s.strength:g}" for s in styles))
    fmt("creativity", str)
    fmt("aspect_ratio", str)
    fmt("count_max", str)
    fmt(
        "press_policy",
        lambda v: "only the requester" if v == "requester" else "anyone in the channel",
    )
    if not lines:
        lines.append("No defaults: Krea's own apply (1:1, medium creativity, no styles).")
    if config.style_presets:
        lines.append("**style presets**: " + ", ".join(sorted(config.style_presets)))
    if config.moodboard_presets:
        lines.append("**moodboard presets**: " + ", ".join(sorted(config.moodboard_presets)))
    return "\n".join(lines)


class SettingsCog(commands.Cog):
    """Server, channel and member defaults."""

    settings = app_commands.Group(
        name="settings", description="kreabot's defaults for this server", guild_only=True
    )
    moodboard = app_commands.Group(
        name="moodboard", description="Default moodboard", parent=settings
    )
    styles = app_commands.Group(name="styles", description="Default styles", parent=settings)
    creativity = app_commands.Group(
        name="creativity", description="Default creativity", parent=settings
    )
    aspect = app_commands.Group(name="aspect", description="Default aspect ratio", parent=settings)
    count_max = app_commands.Group(
        name="count_max", description="Largest batch members may ask for", parent=settings
    )
    buttons = app_commands.Group(
        name="buttons", description="Who may press variation buttons", parent=settings
    )
    preset = app_commands.Group(
        name="preset", description="Named styles and moodboards", parent=settings
    )
    blocklist = app_commands.Group(
        name="blocklist", description="Words and patterns refused in prompts", parent=settings
    )
    logchannel = app_commands.Group(
        name="logchannel", description="Where kreabot tells admins about trouble", parent=settings
    )

    def __init__(self, store: ConfigStore, fair_use: FairUse) -> None:
        self.store = store
        self.fair_use = fair_use

    async def _reply(self, interaction: discord.Interaction[Any], text: str) -> None:
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)

    async def _set(
        self, interaction: discord.Interaction[Any], scope: str, key: str, value: Any
    ) -> None:
        assert interaction.guild_id is not None
        await self.store.set(
            interaction.guild_id,
            _channel_key(interaction, scope),
            key,
            value,
            by=interaction.user.id,
        )

    async def _cleared(
        self, interaction: discord.Interaction[Any], scope: str, what: str, *keys: str
    ) -> None:
        assert interaction.guild_id is not None
        if await self.store.clear(interaction.guild_id, _channel_key(interaction, scope), *keys):
            await self._reply(
                interaction, f"✅ Cleared the default {what} for {_where(interaction, scope)}."
            )
        else:
            await self._reply(
                interaction, f"There was no default {what} for {_where(interaction, scope)}."
            )

    # -- show ------------------------------------------------------------------------

    @settings.command(name="show", description="The defaults in effect here")
    async def show(self, interaction: discord.Interaction[Any]) -> None:
        """Readable by anyone."""
        assert interaction.guild_id is not None
        config = await self.store.server(interaction.guild_id)
        text = describe_config(config, interaction.channel_id)
        await self._reply(interaction, text if len(text) <= 1900 else text[:1899] + "…")

    # -- moodboard -------------------------------------------------------------------

    @moodboard.command(name="set", description="Apply a moodboard to every image")
    @app_commands.describe(
        moodboard="A moodboard preset name or a Krea moodboard UUID",
        strength="How strongly it applies (-0.5 to 1.5, default 0.23)",
        scope="The whole server or only this channel",
        lock="Stop members from choosing another moodboard with /imagine",
    )
    @app_commands.check(can_manage)
    async def moodboard_set(
        self,
        interaction: discord.Interaction[Any],
        moodboard: app_commands.Range[str, 1, 100],
        strength: str | None = None,
        scope: Scope = "server",
        lock: bool = False,
    ) -> None:
        assert interaction.guild_id is not None
        config = await self.store.server(interaction.guild_id)
        with unchanged():
            found = expand_moodboard(moodboard, config)
            assert found is not None
            board, name = found
            if strength is not None:
                value = parse_strength(
                    strength,
                    low=MOODBOARD_STRENGTH_MIN,
                    high=MOODBOARD_STRENGTH_MAX,
                    what="moodboard",
                )
                board = Moodboard(id=board.id, strength=value)
        stored = {"id": str(board.id), "strength": board.strength, "name": name}
        await self._set(interaction, scope, "moodboard", stored)
        await self._set(interaction, scope, "moodboard_locked", lock)
        label = name or f"`{board.id}`"
        await self._reply(
            interaction,
            f"✅ Every image in {_where(interaction, scope)} now uses moodboard {label} "
            f"×{board.strength:g}" + (" (locked)." if lock else "."),
        )

    @moodboard.command(name="clear", description="Stop applying a default moodboard")
    @app_commands.check(can_manage)
    async def moodboard_clear(
        self, interaction: discord.Interaction[Any], scope: Scope = "server"
    ) -> None:
        await self._cleared(interaction, scope, "moodboard", "moodboard", "moodboard_locked")

    # -- styles ----------------------------------------------------------------------

    @styles.command(name="set", description="Apply styles to every image")
    @app_commands.describe(
        styles="Style ids (each with optional :strength) or style presets, comma-separated",
        scope="The whole server or only this channel",
    )
    @app_commands.check(can_manage)
    async def styles_set(
        self,
        interaction: discord.Interaction[Any],
        styles: app_commands.Range[str, 1, 1000],
        scope: Scope = "server",
    ) -> None:
        assert interaction.guild_id is not None
        config = await self.store.server(interaction.guild_id)
        with unchanged():
            parsed = expand_styles(styles, config)
        value = [{"id": s.id, "strength": s.strength} for s in parsed]
        await self._set(interaction, scope, "styles", value)
        listed = ", ".join(f"`{s.id}` ×{s.strength:g}" for s in parsed)
        await self._reply(
            interaction, f"✅ Default styles for {_where(interaction, scope)}: {listed}."
        )

    @styles.command(name="clear", description="Stop applying default styles")
    @app_commands.check(can_manage)
    async def styles_clear(
        self, interaction: discord.Interaction[Any], scope: Scope = "server"
    ) -> None:
        await self._cleared(interaction, scope, "styles", "styles")

    # -- simple values ---------------------------------------------------------------

    @creativity.command(name="set", description="Default creativity")
    @app_commands.check(can_manage)
    async def creativity_set(
        self,
        interaction: discord.Interaction[Any],
        value: Creativity,
        scope: Scope = "server",
    ) -> None:
        await self._set(interaction, scope, "creativity", value)
        await self._reply(
            interaction, f"✅ Default creativity for {_where(interaction, scope)}: {value}."
        )

    @creativity.command(name="clear", description="Remove the default creativity")
    @app_commands.check(can_manage)
    async def creativity_clear(
        self, interaction: discord.Interaction[Any], scope: Scope = "server"
    ) -> None:
        await self._cleared(interaction, scope, "creativity", "creativity")

    @aspect.command(name="set", description="Default aspect ratio")
    @app_commands.check(can_manage)
    async def aspect_set(
        self, interaction: discord.Interaction[Any], value: AspectRatio, scope: Scope = "server"
    ) -> None:
        await self._set(interaction, scope, "aspect_ratio", value)
        await self._reply(
            interaction, f"✅ Default aspect ratio for {_where(interaction, scope)}: {value}."
        )

    @aspect.command(name="clear", description="Remove the default aspect ratio")
    @app_commands.check(can_manage)
    async def aspect_clear(
        self, interaction: discord.Interaction[Any], scope: Scope = "server"
    ) -> None:
        await self._cleared(interaction, scope, "aspect ratio", "aspect_ratio")

    @count_max.command(name="set", description="Largest batch (/imagine count) members may ask for")
    @app_commands.check(can_manage)
    async def count_max_set(
        self,
        interaction: discord.Interaction[Any],
        value: app_commands.Range[int, 1, MAX_BATCH],
        scope: Scope = "server",
    ) -> None:
        await self._set(interaction, scope, "count_max", value)
        await self._reply(
            interaction, f"✅ Largest batch in {_where(interaction, scope)}: {value}."
        )

    @count_max.command(name="clear", description="Allow batches up to 4 again")
    @app_commands.check(can_manage)
    async def count_max_clear(
        self, interaction: discord.Interaction[Any], scope: Scope = "server"
    ) -> None:
        await self._cleared(interaction, scope, "batch limit", "count_max")

    @buttons.command(name="set", description="Who may press regenerate, vary, remix and reframe")
    @app_commands.check(can_manage)
    async def buttons_set(
        self,
        interaction: discord.Interaction[Any],
        who: Literal["anyone", "requester"],
        scope: Scope = "server",
    ) -> None:
        await self._set(interaction, scope, "press_policy", who)
        text = "only the member who asked" if who == "requester" else "anyone in the channel"
        await self._reply(
            interaction, f"✅ In {_where(interaction, scope)}, {text} may press them."
        )

    @buttons.command(name="clear", description="Let anyone press variation buttons again")
    @app_commands.check(can_manage)
    async def buttons_clear(
        self, interaction: discord.Interaction[Any], scope: Scope = "server"
    ) -> None:
        await self._cleared(interaction, scope, "button rule", "press_policy")

    # -- presets ---------------------------------------------------------------------

    @preset.command(name="add", description="Name a set of styles or a moodboard")
    @app_commands.describe(
        name="The name members will pick (letters, digits, spaces, - and _)",
        kind="What the preset holds",
        value="Styles (id[:strength], comma-separated) or a moodboard UUID[:strength]",
    )
    @app_commands.check(can_manage)
    async def preset_add(
        self,
        interaction: discord.Interaction[Any],
        name: app_commands.Range[str, 1, 32],
        kind: Literal["styles", "moodboard"],
        value: app_commands.Range[str, 1, 1000],
    ) -> None:
        assert interaction.guild_id is not None
        name = name.strip()
        if not PRESET_NAME.match(name):
            raise UserError(
                "Preset names use letters, digits, spaces, - and _", outcome=NOTHING_CHANGED
            )
        with unchanged():
            if kind == "styles":
                parsed_styles = expand_styles(value, None)
                if not parsed_styles:
                    raise UserError("give at least one style id")
                stored: Any = [{"id": s.id, "strength": s.strength} for s in parsed_styles]
            else:
                found = expand_moodboard(value, None)
                assert found is not None
                stored = {"id": str(found[0].id), "strength": found[0].strength}
        await self.store.add_preset(
            interaction.guild_id,
            "style" if kind == "styles" else "moodboard",
            name,
            stored,
            by=interaction.user.id,
        )
        await self._reply(interaction, f"✅ Preset **{name}** ({kind}) saved.")

    @preset.command(name="remove", description="Delete a preset")
    @app_commands.check(can_manage)
    async def preset_remove(
        self,
        interaction: discord.Interaction[Any],
        name: app_commands.Range[str, 1, 32],
        kind: Literal["styles", "moodboard"],
    ) -> None:
        assert interaction.guild_id is not None
        removed = await self.store.remove_preset(
            interaction.guild_id, "style" if kind == "styles" else "moodboard", name.strip()
        )
        await self._reply(
            interaction,
            f"✅ Preset **{name}** removed."
            if removed
            else f"❌ There is no {kind} preset **{name}**.",
        )

    @preset.command(name="list", description="The presets of this server")
    async def preset_list(self, interaction: discord.Interaction[Any]) -> None:
        assert interaction.guild_id is not None
        config = await self.store.server(interaction.guild_id)
        lines = [
            f"**{name}** (styles): " + ", ".join(f"`{s.id}` ×{s.strength:g}" for s in styles)
            for name, styles in config.style_presets.items()
        ] + [
            f"**{name}** (moodboard): `{board.id}` ×{board.strength:g}"
            for name, board in config.moodboard_presets.items()
        ]
        await self._reply(interaction, "\n".join(lines)[:1900] or "No presets yet.")

    # -- fair use --------------------------------------------------------------------

    @settings.command(name="limits", description="Fair-use limits for this server")
    @app_commands.describe(
        member_in_flight="Images of one member generated at once (more wait in line)",
        member_daily="Images one member may ask for per day (0 = no limit)",
        server_daily="Images the whole server may ask for per day (0 = no limit)",
        reset="Go back to the bot's defaults",
    )
    @app_commands.check(can_manage)
    async def limits(
        self,
        interaction: discord.Interaction[Any],
        member_in_flight: app_commands.Range[int, 1, 20] | None = None,
        member_daily: app_commands.Range[int, 0, 100_000] | None = None,
        server_daily: app_commands.Range[int, 0, 1_000_000] | None = None,
        reset: bool = False,
    ) -> None:
        assert interaction.guild_id is not None
        changes = {
            key: value
            for key, value in (
                ("member_in_flight", member_in_flight),
                ("member_daily", member_daily),
                ("server_daily", server_daily),
            )
            if value is not None
        }
        await self.store.set_limits(
            interaction.guild_id, changes, reset=reset, by=interaction.user.id
        )
        effective = await self.fair_use.limits(interaction.guild_id)

        def show(value: int) -> str:
            return str(value) if value else "no limit"

        await self._reply(
            interaction,
            f"Limits here: {effective.member_in_flight} image(s) per member at once, "
            f"{show(effective.member_daily)} per member per day, "
            f"{show(effective.server_daily)} per server per day.",
        )

    @blocklist.command(
        name="add", description="Refuse prompts containing a word, phrase or re:pattern"
    )
    @app_commands.check(can_manage)
    async def blocklist_add(
        self, interaction: discord.Interaction[Any], entry: app_commands.Range[str, 1, 200]
    ) -> None:
        assert interaction.guild_id is not None
        with unchanged():
            item = make_entry(entry)
        await self.store.add_block(interaction.guild_id, item, by=interaction.user.id)
        await self._reply(interaction, f"✅ Prompts matching `{describe(item)}` are refused now.")

    @blocklist.command(name="remove", description="Allow a blocked entry again")
    @app_commands.check(can_manage)
    async def blocklist_remove(
        self, interaction: discord.Interaction[Any], entry: app_commands.Range[str, 1, 200]
    ) -> None:
        assert interaction.guild_id is not None
        text = entry.strip()
        removed = await self.store.remove_block(
            interaction.guild_id,
            lambda e: describe(e) == text or e.get("value") == text,
            by=interaction.user.id,
        )
        if not removed:
            await self._reply(interaction, f"❌ `{entry[:80]}` is not on the blocklist.")
            return
        await self._reply(interaction, f"✅ Removed `{entry[:80]}` from the blocklist.")

    @blocklist.command(name="list", description="The blocked words and patterns")
    @app_commands.check(can_manage)
    async def blocklist_list(self, interaction: discord.Interaction[Any]) -> None:
        assert interaction.guild_id is not None
        config = await self.store.server(interaction.guild_id)
        entries = [f"`{describe(e)}`" for e in config.blocklist]
        await self._reply(
            interaction,
            ("Blocked: " + ", ".join(entries))[:1900] if entries else "Nothing is blocked.",
        )

    @logchannel.command(name="set", description="Tell admins about paused submissions here")
    @app_commands.check(can_manage)
    async def logchannel_set(
        self, interaction: discord.Interaction[Any], channel: discord.TextChannel
    ) -> None:
        assert interaction.guild_id is not None
        await self.store.set(
            interaction.guild_id, SERVER, "log_channel", channel.id, by=interaction.user.id
        )
        await self._reply(interaction, f"✅ kreabot will report trouble in {channel.mention}.")

    @logchannel.command(name="clear", description="Stop reporting trouble in a channel")
    @app_commands.check(can_manage)
    async def logchannel_clear(self, interaction: discord.Interaction[Any]) -> None:
        await self._cleared(interaction, "server", "log channel", "log_channel")

    # -- /prefer ---------------------------------------------------------------------

    @app_commands.command(name="prefer", description="Your own defaults in this server")
    @app_commands.describe(
        aspect="Your default aspect ratio",
        creativity="Your default creativity",
        suffix="Text appended to every prompt of yours",
        clear="Forget all your defaults",
    )
    @app_commands.guild_only()
    async def prefer(
        self,
        interaction: discord.Interaction[Any],
        aspect: AspectRatio | None = None,
        creativity: Creativity | None = None,
        suffix: app_commands.Range[str, 1, 200] | None = None,
        clear: bool = False,
    ) -> None:
        """Set, show or clear a member's defaults."""
        assert interaction.guild_id is not None
        store = self.store
        guild_id, user_id = interaction.guild_id, interaction.user.id
        if clear:
            for key in ("aspect_ratio", "creativity", "suffix"):
                await store.set_pref(guild_id, user_id, key, None)
        for key, value in (
            ("aspect_ratio", aspect),
            ("creativity", creativity),
            ("suffix", suffix),
        ):
            if value is not None:
                await store.set_pref(guild_id, user_id, key, value.strip())
        prefs = await store.prefs(guild_id, user_id)
        shown = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in prefs.items()) or "none"
        await self._reply(interaction, f"Your defaults here: {shown}.")


async def setup(bot: KreaBot) -> None:
    """Load the cog."""
    await bot.add_cog(SettingsCog(bot.services.config, bot.services.fair_use))
