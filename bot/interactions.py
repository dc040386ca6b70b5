"""Answering members: one path for errors, whatever they pressed or typed.

:func:`report_error` turns any exception into one private, plain message: a
:class:`~bot.errors.UserError` says what went wrong and what to do; anything else is logged
with a reference and answered with a short apology naming it. The command tree's
``on_error`` and every component (:class:`GuardedItem`) use it, so no traceback and no
"interaction failed" ever reaches a member.
"""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands

from bot.errors import UserError
from bot.job_service import Origin
from bot.pixazo import InvalidRequest
from bot.storage.db import StorageError

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
#: How a storage problem is named to members.
STORAGE_WORDS = {"full": "full", "locked": "busy", "unreadable": "unreadable"}


def origin_of(interaction: discord.Interaction[Any]) -> Origin:
    """Who asks, where, and how to answer them later."""
    assert interaction.channel_id is not None
    return Origin(
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id,
        user_id=interaction.user.id,
        filesize_limit=interaction.filesize_limit,
        application_id=interaction.application_id,
        token=interaction.token,
    )


#: What the bot needs in a channel to deliver there (now, and with its own token after the
#: interaction's 15 minutes), and to fetch its references again later.
DELIVERY_PERMISSIONS = (
    ("view_channel", "View Channel"),
    ("send_messages", "Send Messages"),
    ("embed_links", "Embed Links"),
    ("attach_files", "Attach Files"),
    ("read_message_history", "Read Message History"),
)


def missing_permissions(permissions: discord.Permissions, channel: object | None) -> list[str]:
    """The names of the permissions the bot lacks in ``channel`` to deliver images there."""
    needed = list(DELIVERY_PERMISSIONS)
    if isinstance(channel, discord.Thread):
        needed[1] = ("send_messages_in_threads", "Send Messages in Threads")
    if isinstance(channel, discord.VoiceChannel | discord.StageChannel):
        needed.append(("connect", "Connect"))  # reading a voice channel's chat needs it
    return [label for attribute, label in needed if not getattr(permissions, attribute)]


def check_can_deliver(interaction: discord.Interaction[Any]) -> None:
    """Refuse, before anything is paid, when the bot could not post the result here."""
    missing = missing_permissions(interaction.app_permissions, interaction.channel)
    if missing:
        names = ", ".join(missing)
        raise UserError(
            f"I cannot post images in this channel: I am missing the {names} "
            f"permission{'s' if len(missing) > 1 else ''} here. Ask a server admin to give "
            "kreabot these permissions in this channel (Edit Channel → Permissions)"
        )


def describe_error(interaction: discord.Interaction[Any], error: BaseException) -> str:
    """What the member is told about ``error`` (unexpected ones are logged here)."""
    original = getattr(error, "original", None) or error.__cause__
    if isinstance(original, UserError | InvalidRequest):
        error = original
    if isinstance(error, UserError):
        return error.render()
    if isinstance(error, InvalidRequest):  # refused locally by the Pixazo models
        return UserError(error.message).render()
    failure = original if isinstance(original, StorageError) else error
    if isinstance(failure, StorageError):
        log.error("interaction %s: storage problem: %s", interaction.id, failure)
        state = STORAGE_WORDS.get(failure.kind, "failing")
        return UserError(
            f"kreabot cannot save your request right now (its database is {state})",
            outcome="Nothing was sent. Try again in a few minutes; if it lasts, tell an admin.",
        ).render()
    if isinstance(error, app_commands.TransformerError | app_commands.CheckFailure):
        return str(error)
    reference = f"{interaction.id:x}"[-8:]
    log.error("interaction %s failed (ref %s)", interaction.id, reference, exc_info=error)
    return f"Something went wrong on our side (reference `{reference}`). Please try again."


async def reply_privately(interaction: discord.Interaction[Any], text: str) -> None:
    """Tell the member alone, in whatever way the interaction still allows.

    After a public deferral the "thinking" reply is removed and the text sent as an
    ephemeral follow-up, so an error never leaves a public message behind.
    """
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(
                text, ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return
        if interaction.type is discord.InteractionType.application_command or (
            interaction.response.type is discord.InteractionResponseType.deferred_channel_message
        ):
            try:
                await interaction.delete_original_response()
            except discord.HTTPException:
                pass
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
    except discord.HTTPException:
        log.warning("could not tell member %s why their request failed", interaction.user.id)


#: Discord's code for an interaction another client already answered.
ALREADY_ANSWERED = 40060


async def report_error(interaction: discord.Interaction[Any], error: BaseException) -> None:
    """The one way an error ends: a private, plain message. Except when another process
    answered the interaction first (two processes on one shard, as during a rolling
    restart, both get every event): it is that process's, and nothing was done here."""
    cause = getattr(error, "original", error)
    if isinstance(cause, discord.HTTPException) and cause.code == ALREADY_ANSWERED:
        log.info("interaction %s: answered by another process", interaction.id)
        return
    await reply_privately(interaction, describe_error(interaction, error))


class GuardedItem:
    """Mixin for persistent items: every error of ``run`` ends in :func:`report_error`.

    discord.py's dynamic items swallow exceptions silently (the member sees "interaction
    failed"); items put their work in ``run`` instead of ``callback``.
    """

    async def run(self, interaction: discord.Interaction[Any]) -> None:
        """What pressing the item does."""
        raise NotImplementedError

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        try:
            await self.run(interaction)
        except Exception as exc:
            await report_error(interaction, exc)
