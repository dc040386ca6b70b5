"""The bot killed mid-job and started again on the same SQLite file.

The bot runs in a real subprocess (``tests.support.bot_process``) that is SIGKILLed, so no
shutdown code runs; the fake Discord and the fake gateway live in the test process and
outlive both bot processes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bot.fake_pixazo import FakePixazo
from tests.fake_discord import FakeDiscord, FakeGuild, FakeMessage, InteractionHandle
from tests.support.bot_process import BotProcess
from tests.support.checks import assert_no_traceback, assert_pings_nobody, bot_messages, job_rows

T = TypeVar("T")

PROMPT = "a lighthouse at dusk, oil on canvas"
#: Generous for a cold start of a Python process; every wait ends as soon as it can.
STARTUP_TIMEOUT = 15.0


@dataclass
class Stage:
    """Both fakes, the database file, and the bot processes started so far."""

    discord: FakeDiscord
    pixazo: FakePixazo
    guild: FakeGuild
    tmp_path: Path
    processes: list[BotProcess]

    @property
    def db_path(self) -> Path:
        """The database both bot processes use."""
        return self.tmp_path / "kreabot.sqlite3"

    async def start_bot(self) -> BotProcess:
        """Start a bot process and wait until it is connected to the fake Discord."""
        connected = sum(1 for c in self.discord.connections if c.ready)
        number = len(self.processes) + 1
        process = await BotProcess.start(
            self.discord, self.pixazo, self.db_path, self.tmp_path / f"bot-{number}.log"
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

    async def imagine(self, **options: Any) -> InteractionHandle:
        """A member runs /imagine; returns once the bot acknowledged it."""
        assert self.discord.command("imagine", self.guild) is not None, "commands not synced"
        handle = await self.discord.slash("imagine", options)
        await handle.wait_for_response(timeout=5.0)
        return handle

    def logs(self) -> str:
        """The output of every bot process, for failure messages."""
        return "\n".join(f"--- bot {i + 1}\n{p.log()}" for i, p in enumerate(self.processes))


@pytest.fixture
async def stage(tmp_path: Path) -> AsyncIterator[Stage]:
    """Both fakes on loopback; every bot process is killed at the end."""
    async with (
        FakePixazo(queued_seconds=0.02, processing_seconds=0.1, long_edge=256) as pixazo,
        FakeDiscord() as discord_fake,
    ):
        guild = discord_fake.add_guild()
        created = Stage(discord_fake, pixazo, guild, tmp_path, [])
        try:
            yield created
        finally:
            for process in created.processes:
                with contextlib.suppress(ProcessLookupError, TimeoutError):
                    await process.kill()
            print(created.logs())  # shown by pytest when the test failed


async def eventually(check: Callable[[], T | None], within: float, what: str) -> T:
    """Poll ``check`` (real time) until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if result:
            return result
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


async def row_in_state(stage: Stage, states: tuple[str, ...], within: float) -> dict[str, Any]:
    """Wait until the single job row is in one of ``states``."""

    def check() -> dict[str, Any] | None:
        rows = job_rows(stage.db_path) if stage.db_path.exists() else []
        return rows[0] if rows and rows[0]["state"] in states else None

    return await eventually(check, within, f"the job to be {' or '.join(states)}")


def images_posted(stage: Stage) -> list[FakeMessage]:
    """Every live bot message that carries an image."""
    return [m for m in bot_messages(stage.discord) if m.attachments and not m.deleted]


async def test_killed_while_generating_the_restarted_bot_delivers_exactly_once(
    stage: Stage,
) -> None:
    stage.pixazo.manual = True  # the job stays PROCESSING until the test finishes it
    first = await stage.start_bot()
    handle = await stage.imagine(prompt=PROMPT, seed=11)
    (accepted,) = await stage.pixazo.wait_for_jobs(1, timeout=5.0)
    await stage.pixazo.wait_for_job(accepted.request_id, "PROCESSING")
    before = await row_in_state(stage, ("submitted", "processing"), within=5.0)
    assert before["request_id"] == accepted.request_id
    await handle.wait_for_original(lambda m: bool(m.content) and not m.loading)

    await first.kill()
    stage.pixazo.finish(accepted.request_id)  # the image is ready while no bot runs
    await stage.start_bot()

    result = await handle.wait_for_original(lambda m: bool(m.attachments), timeout=10.0)
    row = await row_in_state(stage, ("completed",), within=10.0)

    assert images_posted(stage) == [result]
    assert len(result.attachments[0].data) > 0 and result.files[0].startswith(b"\x89PNG")
    assert row["result_message_id"] == result.id
    assert row["message_id"] == result.id
    assert f"krea:regen:{row['id']}" in result.custom_ids
    # Nothing was sent twice: one submit, one job at the gateway.
    assert len(stage.pixazo.submits()) == 1
    assert len(stage.pixazo.jobs) == 1
    assert len(job_rows(stage.db_path)) == 1
    assert_pings_nobody(result)
    assert_no_traceback(bot_messages(stage.discord))


async def test_killed_while_submitting_the_job_is_interrupted_not_resent(stage: Stage) -> None:
    stage.pixazo.hang_after_accept_next()  # taken and charged, but the 202 never comes
    first = await stage.start_bot()
    handle = await stage.imagine(prompt=PROMPT, seed=12)
    await stage.pixazo.wait_for_jobs(1, timeout=5.0)
    await row_in_state(stage, ("submitting",), within=5.0)

    await first.kill()
    await stage.start_bot()

    message = await handle.wait_for_original(lambda m: "not re-sent" in m.content, timeout=10.0)
    row = await row_in_state(stage, ("interrupted",), within=5.0)
    await handle.wait_until_done(idle=0.3)

    assert row["error_kind"] == "interrupted"
    assert row["request_id"] is None
    assert "Retry" in message.content
    assert f"krea:retry:{row['id']}" in message.custom_ids
    assert PROMPT in message.content
    assert message.attachments == []
    assert images_posted(stage) == []
    assert len(stage.pixazo.submits()) == 1
    assert len(stage.pixazo.jobs) == 1
    assert_pings_nobody(message)
    assert_no_traceback(bot_messages(stage.discord))
