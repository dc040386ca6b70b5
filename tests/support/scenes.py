"""Helpers for end-to-end scenes: one clock for every fake, clicks, replies, embeds, submits.

`synced_world` builds the usual :class:`World` but makes the fake Pixazo gateway read the
same clock as the bot and the fake Discord, so `World.advance` also moves the time at which
the gateway judges Discord's signed ``ex`` expiries.
"""

# The test-facing helpers take `timeout=` like the fakes do.

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bot.app import KreaBot
from tests.fake_discord import MESSAGE_FLAG_EPHEMERAL, FakeMember, FakeMessage, InteractionHandle
from tests.fake_discord.models import walk_components
from tests.support.world import World, make_world

#: Unix seconds in a day.
DAY = 24 * 3600.0


@contextlib.asynccontextmanager
async def synced_world(tmp_path: Path, **pixazo_options: Any) -> AsyncIterator[World]:
    """A :func:`make_world` whose fake Pixazo shares the world's (advanceable) clock."""
    holder: list[World] = []

    def clock() -> float:
        return holder[0].clock() if holder else time.time()

    async with make_world(tmp_path, clock=clock, **pixazo_options) as world:
        holder.append(world)
        yield world


async def imagine_result(world: World, **options: Any) -> tuple[InteractionHandle, FakeMessage]:
    """Run /imagine (as ``user=`` if given) and wait for the message holding its image."""
    user = options.pop("user", None)
    handle = await world.discord.slash("imagine", options, user=user)
    await handle.wait_for_response()
    return handle, await world.result_of(handle)


async def press(
    world: World,
    message: FakeMessage,
    custom_id: str,
    *,
    user: FakeMember | None = None,
    values: list[str] | None = None,
    strict: bool = True,
) -> InteractionHandle:
    """Click a component of ``message`` and wait for the bot's initial response."""
    handle = await world.discord.click(message, custom_id, user=user, values=values, strict=strict)
    await handle.wait_for_response()
    return handle


async def slash_reply(
    world: World, name: str, options: dict[str, Any] | None = None, **kwargs: Any
) -> InteractionHandle:
    """Run a slash command and wait for its initial response."""
    handle = await world.discord.slash(name, options or {}, **kwargs)
    await handle.wait_for_response()
    return handle


def reply_text(handle: InteractionHandle) -> str:
    """The text of an immediate reply (type 4), else of the first follow-up or the original."""
    response = handle.response
    assert response is not None, f"{handle!r} got no response"
    if response.type == 4:
        return str((response.data or {}).get("content") or "")
    for message in handle.messages:
        if message.content:
            return message.content
    return ""


def private_reply(handle: InteractionHandle) -> str | None:
    """The text the bot sent to the member alone: an ephemeral reply or follow-up, else None.

    Read from the requests the bot made, so it also covers an ephemeral follow-up sent
    after the bot deleted its public "thinking" reply.
    """
    if handle.response_type == 4 and handle.ephemeral:
        return reply_text(handle)
    for request in handle.requests:
        payload = request.json if isinstance(request.json, dict) else {}
        if request.method == "POST" and not request.path.endswith("/callback"):
            if int(payload.get("flags") or 0) & MESSAGE_FLAG_EPHEMERAL:
                return str(payload.get("content") or "")
    return None


def is_ephemeral_reply(handle: InteractionHandle) -> bool:
    """Whether the member alone saw the answer (ephemeral reply or ephemeral follow-up)."""
    if handle.ephemeral:
        return True
    messages = [m for m in handle.messages if not m.deleted]
    return bool(messages) and all(m.ephemeral for m in messages)


async def wait_for_submits(world: World, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The bodies of the first ``count`` accepted submits, once that many arrived."""

    def check() -> list[dict[str, Any]] | None:
        bodies = world.submitted_bodies()
        return bodies if len(bodies) >= count else None

    return await world.pixazo.wait_for(check, timeout=timeout, what=f"{count} accepted submits")


async def finished(bot: KreaBot) -> None:
    """Wait until the bot's runner has no job left (every state written)."""
    await bot.services.runner.join()


def forge(message: FakeMessage, old: str, new: str) -> None:
    """Rewrite the custom_id ``old`` of a component on ``message`` to ``new`` (tampering)."""
    for component in walk_components(message.components):
        if component.get("custom_id") == old:
            component["custom_id"] = new
            return
    raise LookupError(f"no component {old!r} on {message!r}")


def modal_text_inputs(handle: InteractionHandle) -> list[dict[str, Any]]:
    """The text inputs of the modal sent in response to ``handle``, in order."""
    modal = handle.modal
    assert modal is not None, f"{handle!r} got no modal"
    return [c for c in walk_components(modal.get("components") or []) if c.get("type") == 4]


def embed_fields(message: FakeMessage, index: int = 0) -> dict[str, str]:
    """The fields of one embed of ``message``, name -> value."""
    embed = message.embeds[index]
    return {field["name"]: field["value"] for field in embed.get("fields", [])}


def without(body: dict[str, Any], *keys: str) -> dict[str, Any]:
    """``body`` minus ``keys``."""
    return {k: v for k, v in body.items() if k not in keys}
