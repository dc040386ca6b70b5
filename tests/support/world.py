"""The real bot wired to the fake Discord and the fake Pixazo gateway, for end-to-end tests."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.__main__ import build_services
from bot.app import KreaBot
from bot.polling import PollSchedule
from bot.settings import Settings
from bot.storage.db import open_database
from fake_pixazo import FakePixazo
from tests.fake_discord import FakeDiscord, FakeGuild, FakeMessage, InteractionHandle
from tests.fake_discord.fixtures import DEFAULT_TOKEN, run_bot

FAST_POLLS = PollSchedule(first=0.05, interval=0.05, factor=1.0, cap=0.05)


@dataclass
class World:
    """Both fakes, a database and a clock the test can move forward.

    ``database`` is a SQLite file, or the URL of a PostgreSQL database (``world`` with
    ``KREABOT_TEST_DATABASE=postgres``).
    """

    discord: FakeDiscord
    pixazo: FakePixazo
    database: Path | str
    guild: FakeGuild
    offset: float = 0.0
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def db_path(self) -> Path:
        """The SQLite file, for a test that reads it itself (skipped on PostgreSQL)."""
        if not isinstance(self.database, Path):
            pytest.skip("reads the SQLite file itself")
        return self.database

    def clock(self) -> float:
        """The bot's wall clock (moves with :meth:`advance`)."""
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        """Move both the bot's clock and the fake Discord's clock forward."""
        self.offset += seconds
        self.discord.advance(seconds)

    def settings(self, **overrides: Any) -> Settings:
        """Settings pointing at the fakes."""
        values: dict[str, Any] = {
            "DISCORD_TOKEN": DEFAULT_TOKEN,
            "PIXAZO_API_KEY": self.pixazo.api_key,
            "PIXAZO_BASE_URL": self.pixazo.base_url,
            **(
                {"DATABASE_PATH": self.database}
                if isinstance(self.database, Path)
                else {"DATABASE_URL": self.database}
            ),
            **self.overrides,
            **overrides,
        }
        return Settings(_env_file=None, **values)

    @contextlib.asynccontextmanager
    async def bot(self, **overrides: Any) -> AsyncIterator[KreaBot]:
        """Run the real bot (setup_hook, cogs, tree) until the block ends."""
        db = await open_database(self.database)
        try:
            async with aiohttp.ClientSession() as session:
                settings = self.settings(**overrides)
                bot = KreaBot(settings)
                services = build_services(
                    settings,
                    session=session,
                    db=db,
                    bot=bot,
                    clock=self.clock,
                    poll_schedule=FAST_POLLS,
                    retry_wait=0.05,
                )
                bot.use(services)
                async with run_bot(bot, self.discord):
                    await services.synced()
                    yield bot
        finally:
            await db.close()

    async def imagine(self, **options: Any) -> InteractionHandle:
        """Dispatch /imagine and wait for its initial response."""
        handle = await self.discord.slash("imagine", options)
        await handle.wait_for_response()
        return handle

    async def result_of(self, handle: InteractionHandle, timeout: float = 10.0) -> FakeMessage:
        """The job's message once it holds an image."""
        return await handle.wait_for_original(lambda m: bool(m.attachments), timeout=timeout)

    def submitted_bodies(self) -> list[dict[str, Any]]:
        """The bodies of the submits the gateway accepted."""
        return [r.body for r in self.pixazo.submits() if r.status == 202 and r.body is not None]


@contextlib.asynccontextmanager
async def make_world(
    tmp_path: Path,
    *,
    database: Path | str | None = None,
    discord_options: dict[str, Any] | None = None,
    **pixazo_options: Any,
) -> AsyncIterator[World]:
    """Start both fakes (discord.py patched to the fake Discord); the bot's database is
    ``database`` (a SQLite file or a PostgreSQL URL), by default a new file in ``tmp_path``."""
    options = {"queued_seconds": 0.02, "processing_seconds": 0.1, "long_edge": 256}
    options.update(pixazo_options)
    async with (
        FakePixazo(**options) as pixazo,
        FakeDiscord(**(discord_options or {})) as discord_fake,
    ):
        guild = discord_fake.add_guild()
        with discord_fake.patch_discord_py():
            yield World(discord_fake, pixazo, database or tmp_path / "kreabot.sqlite3", guild)
