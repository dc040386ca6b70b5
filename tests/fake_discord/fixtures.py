"""Pytest fixtures and helpers for running a real discord.py bot against `FakeDiscord`.

Use them from any conftest with ``from tests.fake_discord.fixtures import fake_discord``
(or ``pytest_plugins = ["tests.fake_discord.fixtures"]`` in the root conftest).

- `fake_discord`: a started `FakeDiscord` with one guild (`fake_discord.guild`) and discord.py
  patched to talk to it; everything is closed/restored after the test.
- `run_bot(bot, fake, token=...)`: async context manager that starts `bot` in a task, waits
  until it is connected and every guild of the fake is cached, yields it, and closes it.
"""

# The test-facing API takes `timeout=` as the brief asks (asyncio.timeout would be clumsier).

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

import discord
import pytest_asyncio

from tests.fake_discord.server import FakeDiscord

ClientT = TypeVar("ClientT", bound=discord.Client)

DEFAULT_TOKEN = "fake-bot-token"


@pytest_asyncio.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    """A running fake Discord with one default guild; discord.py points at it."""
    async with FakeDiscord() as fake:
        fake.add_guild()
        with fake.patch_discord_py():
            yield fake


def _connected(bot: discord.Client) -> bool:
    if isinstance(bot, discord.AutoShardedClient):  # one websocket per shard, no `bot.ws`
        shards = bot.shards
        return (
            bool(shards)
            and len(shards) == len(bot.shard_ids or range(bot.shard_count or 0))
            and not any(shard.is_closed() for shard in shards.values())
        )
    return bot.ws is not None and bot.ws.open


def _guilds_cached(bot: discord.Client, fake: FakeDiscord) -> bool:
    if not _connected(bot) or bot.user is None:
        return False
    for guild_id in fake.guilds:
        guild = bot.get_guild(guild_id)
        if guild is None or guild.unavailable or guild.me is None:
            return False
    return True


@contextlib.asynccontextmanager
async def run_bot(
    bot: ClientT,
    fake: FakeDiscord,
    *,
    token: str = DEFAULT_TOKEN,
    timeout: float = 10.0,
    wait_ready: bool = False,
) -> AsyncIterator[ClientT]:
    """Run `bot` against `fake` for the duration of the block.

    Waits until the gateway connection is up and every guild of the fake is cached (so
    `interaction.guild`, `bot.get_channel()` work). With `wait_ready`, also waits for
    `on_ready` (about 2 s after the last GUILD_CREATE in discord.py). On exit the bot is closed
    and its task awaited; an exception that ended the bot's task early is re-raised.
    """
    task = asyncio.create_task(bot.start(token), name="fake-discord-bot")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while not _guilds_cached(bot, fake) or (wait_ready and not bot.is_ready()):
            if task.done():
                task.result()  # raises the bot's startup error
                raise RuntimeError("bot stopped before it was connected")
            if loop.time() > deadline:
                raise TimeoutError(f"bot not connected to the fake within {timeout}s")
            await asyncio.sleep(0.01)
        yield bot
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bot.close(), timeout)
        if not task.done():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, timeout)
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
