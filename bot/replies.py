"""Replying to members in the right way for the state of their interaction."""

from __future__ import annotations

from typing import Any

import discord

NO_MENTIONS = discord.AllowedMentions.none()


async def refuse(interaction: discord.Interaction[Any], text: str) -> None:
    """Tell the member what is wrong, privately; nothing was sent to Pixazo.

    After the public deferral the "thinking" reply is removed and the explanation sent
    as an ephemeral follow-up, so bad input never leaves a public message behind.
    """
    message = f"❌ {text}. Nothing was sent."
    if not interaction.response.is_done():
        await interaction.response.send_message(
            message, ephemeral=True, allowed_mentions=NO_MENTIONS
        )
        return
    try:
        await interaction.delete_original_response()
    except discord.HTTPException:
        pass
    await interaction.followup.send(message, ephemeral=True, allowed_mentions=NO_MENTIONS)
