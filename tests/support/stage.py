"""Bot processes (``python -m bot run``) against both fakes: kill, SIGTERM, restart."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fake_pixazo import FakePixazo
from tests.fake_discord import FakeDiscord, FakeGuild, FakeMessage, InteractionHandle
from tests.support.bot_process import BotProcess
from tests.support.checks import bot_messages, eventually, job_rows

#: Generous for a cold start of a Python process; every wait ends as soon as it can.
STARTUP_TIMEOUT = 15.0


def images_posted(discord_fake: FakeDiscord) -> list[FakeMessage]:
    """Every live bot message that carries an image."""
    return [m for m in bot_messages(discord_fake) if m.attachments and not m.deleted]


@dataclass
class Stage:
    """Both fakes, the database, and the bot processes started so far."""

    discord: FakeDiscord
    pixazo: FakePixazo
    guild: FakeGuild
    tmp_path: Path
    processes: list[BotProcess]
    #: The database every bot process uses: a SQLite file, or a PostgreSQL URL.
    database: Path | str

    @property
    def db_path(self) -> Path:
        """The SQLite file, for a test that reads it itself (skipped on PostgreSQL)."""
        if not isinstance(self.database, Path):
            pytest.skip("reads the SQLite file itself")
        return self.database

    async def start_bot(self, **settings: str) -> BotProcess:
        """``python -m bot run`` in a process (with extra ``settings``); returns once it is
        connected."""
        connected = sum(1 for c in self.discord.connections if c.ready)
        number = len(self.processes) + 1
        # On PostgreSQL a killed process's jobs are taken once their lease lapses: short.
        settings.setdefault("LEASE_SECONDS", "3")
        process = await BotProcess.start(
            self.discord,
            self.pixazo,
            self.database,
            self.tmp_path / f"bot-{number}.log",
            args=["run"],
            cwd=self.tmp_path,
            **settings,
        )
        self.processes.append(process)
        try:
            await self.discord.wait_for(
                lambda: (
                    sum(1 for c in self.discord.connections if c.ready) > connected
                    or not process.running()
                ),
                STARTUP_TIMEOUT,
                what=f"bot process {number} to connect",
            )
        except TimeoutError:
            raise AssertionError(f"bot {number} did not connect:\n{process.log()}") from None
        assert process.running(), f"bot {number} exited:\n{process.log()}"
        return process

    async def stop(self, process: BotProcess) -> int:
        """SIGTERM, then wait for the process to exit on its own; returns the exit code."""
        process.terminate()
        return await process.wait(20.0)

    async def imagine(self, **options: Any) -> InteractionHandle:
        """A member runs /imagine; returns once the bot acknowledged it."""
        # Commands are synced in the background once the bot is logged in.
        await self.discord.wait_for(
            lambda: self.discord.command("imagine", self.guild) is not None,
            STARTUP_TIMEOUT,
            what="the commands to be synced",
        )
        handle = await self.discord.slash("imagine", options)
        await handle.wait_for_response(timeout=5.0)
        return handle

    async def row_in(self, *states: str, within: float = 5.0) -> dict[str, Any]:
        """The single job row, once it is in one of ``states``."""

        def check() -> dict[str, Any] | None:
            if isinstance(self.database, Path) and not self.database.exists():
                return None
            rows = job_rows(self.database)
            return rows[0] if rows and rows[0]["state"] in states else None

        return await eventually(check, within, f"the job to be {' or '.join(states)}")

    def logs(self) -> str:
        """The output of every bot process, for failure messages."""
        return "\n".join(f"--- bot {i + 1}\n{p.log()}" for i, p in enumerate(self.processes))


@pytest.fixture
async def stage(tmp_path: Path, database_target: Path | str) -> AsyncIterator[Stage]:
    """Both fakes on loopback, the database (see ``database_target``); every bot process
    still running at the end is killed."""
    async with (
        FakePixazo(queued_seconds=0.02, processing_seconds=0.1, long_edge=256) as pixazo,
        FakeDiscord() as discord_fake,
    ):
        guild = discord_fake.add_guild()
        created = Stage(discord_fake, pixazo, guild, tmp_path, [], database_target)
        try:
            yield created
        finally:
            for process in created.processes:
                with contextlib.suppress(ProcessLookupError, TimeoutError):
                    await process.kill()
            print(created.logs())  # shown by pytest when the test failed
