"""Operations: deliberate command sync, graceful shutdown on SIGTERM, privacy on removal.

The SIGTERM scenes run the production entry point (``python -m bot run``, through
``tests.support.bot_process`` which only points discord.py at the fake Discord) in a real
subprocess, send it SIGTERM as ``docker stop`` does, and start it again on the same SQLite
file. The fakes live in the test process and outlive every bot process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path

import pytest

import bot.app
from bot.storage.config import Defaults
from tests.support.bot_process import BotProcess
from tests.support.checks import assert_no_traceback, bot_messages, job_rows
from tests.support.scenes import DAY, reply_text
from tests.support.stage import Stage, eventually, images_posted
from tests.support.world import World

PROMPT = "a lighthouse at dusk, oil on canvas"


# -- command sync -----------------------------------------------------------------------------


async def test_commands_sync_once_then_only_when_the_command_set_changes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with world.bot():
        pass
    assert world.discord.command_syncs == 1
    (first,) = world.discord.sync_log
    assert first.guild_id is None and {"imagine", "jobs", "usage"} <= set(first.names)

    async with world.bot():  # a restart with the same commands
        pass
    assert world.discord.command_syncs == 1

    # A deploy that drops a cog changes the command set: synced again, once.
    fewer = tuple(e for e in bot.app.EXTENSIONS if e != "cogs.jobs")
    monkeypatch.setattr(bot.app, "EXTENSIONS", fewer)
    async with world.bot():
        pass
    assert world.discord.command_syncs == 2
    assert "jobs" not in world.discord.sync_log[-1].names
    assert world.discord.command("jobs") is None
    async with world.bot():
        pass
    assert world.discord.command_syncs == 2


async def test_dev_guild_commands_sync_to_that_guild_once(world: World) -> None:
    async with world.bot(DEV_GUILD_ID=world.guild.id):
        pass
    async with world.bot(DEV_GUILD_ID=world.guild.id):
        pass

    (record,) = world.discord.sync_log
    assert record.guild_id == world.guild.id
    assert world.discord.commands(None) == []
    assert world.discord.command("imagine", world.guild) is not None


async def test_switching_between_global_and_dev_guild_never_registers_commands_twice(
    world: World,
) -> None:
    async with world.bot():  # an ordinary start: global commands
        pass
    assert world.discord.command("imagine") is not None

    async with world.bot(DEV_GUILD_ID=world.guild.id):  # testing in one server
        pass
    assert world.discord.commands(None) == []  # the global copies are gone
    assert [c["name"] for c in world.discord.commands(world.guild) if c["name"] == "imagine"]

    async with world.bot():  # back to global
        pass
    assert world.discord.commands(world.guild) == []
    assert world.discord.command("imagine") is not None


async def test_the_sync_coroutine_always_syncs_and_records_the_hash(world: World) -> None:
    from bot.__main__ import sync

    settings = world.settings()
    assert await sync(settings, world.guild.id) == 0
    assert await sync(settings, world.guild.id) == 0  # deliberate: sent even if unchanged

    assert [r.guild_id for r in world.discord.sync_log] == [world.guild.id] * 2
    assert world.discord.identify_count == 0
    # A bot started with DEV_GUILD_ID on that guild finds the hash and does not sync again.
    async with world.bot(DEV_GUILD_ID=world.guild.id):
        pass
    assert world.discord.command_syncs == 2


# -- graceful shutdown, in process ------------------------------------------------------------


async def test_while_closing_new_commands_are_refused_and_a_submit_in_flight_persists(
    world: World,
) -> None:
    world.pixazo.hang_after_accept_next(seconds=1.0)  # the 202 comes a second late
    async with world.bot() as kreabot:
        await world.imagine(prompt=PROMPT, seed=21)
        await eventually(
            lambda: [r for r in job_rows(world.db_path) if r["state"] == "submitting"],
            5.0,
            "the submit to be in flight",
        )
        closing = asyncio.create_task(kreabot.close())
        await asyncio.sleep(0.1)
        late = await world.discord.slash("imagine", {"prompt": "one more, please"})
        await late.wait_for_response()
        await asyncio.wait_for(closing, 15.0)

    assert late.ephemeral and "restarting" in reply_text(late)
    (row,) = job_rows(world.db_path)  # the late command made no job
    (accepted,) = world.pixazo.jobs.values()
    assert row["state"] == "submitted" and row["request_id"] == accepted.request_id
    assert len(world.pixazo.submits()) == 1


# -- SIGTERM, in a real process ---------------------------------------------------------------


def assert_clean_exit(stage: Stage, process: BotProcess, code: int) -> None:
    """Exit code 0, the shutdown logged, no traceback, the database closed properly."""
    log = process.log()
    assert code == 0, log
    assert "shutting down: in-flight jobs are kept" in log
    assert log.rstrip().endswith("stopped: the gateway and the database are closed"), log
    assert "Traceback" not in log and "ERROR" not in log, log
    # The last connection to close checkpoints the WAL and removes it: a clean close.
    assert not stage.db_path.with_name(stage.db_path.name + "-wal").exists()
    # The gateway connection was closed by the bot, not dropped.
    assert all(c.ws.closed for c in stage.discord.connections)


async def test_sigterm_mid_job_then_restart_delivers_exactly_once(stage: Stage) -> None:
    stage.pixazo.manual = True  # the job stays PROCESSING until the test finishes it
    first = await stage.start_bot()
    handle = await stage.imagine(prompt=PROMPT, seed=31)
    (accepted,) = await stage.pixazo.wait_for_jobs(1, timeout=5.0)
    await stage.pixazo.wait_for_job(accepted.request_id, "PROCESSING")
    await stage.row_in("submitted", "processing")
    await handle.wait_for_original(lambda m: bool(m.content) and not m.loading)

    code = await stage.stop(first)

    assert_clean_exit(stage, first, code)
    row = await stage.row_in("submitted", "processing")  # kept, not failed
    assert row["request_id"] == accepted.request_id and row["error_kind"] is None
    assert images_posted(stage.discord) == []

    stage.pixazo.finish(accepted.request_id)  # the image is ready while no bot runs
    await stage.start_bot()

    result = await handle.wait_for_original(lambda m: bool(m.attachments), timeout=10.0)
    row = await stage.row_in("completed", within=10.0)
    await asyncio.sleep(0.3)  # room for a duplicate, were there one
    assert images_posted(stage.discord) == [result]
    assert row["result_message_id"] == result.id
    assert len(stage.pixazo.submits()) == 1 and len(stage.pixazo.jobs) == 1
    assert_no_traceback(bot_messages(stage.discord))


async def test_sigterm_during_a_submit_waits_for_its_request_id(stage: Stage) -> None:
    stage.pixazo.hang_after_accept_next(seconds=1.0)  # taken at once, the 202 a second late
    first = await stage.start_bot()
    handle = await stage.imagine(prompt=PROMPT, seed=32)
    (accepted,) = await stage.pixazo.wait_for_jobs(1, timeout=5.0)
    await stage.row_in("submitting")

    code = await stage.stop(first)

    assert_clean_exit(stage, first, code)
    # The grace period let the submit learn its request id: resumable, not interrupted.
    row = await stage.row_in("submitted", "processing")
    assert row["request_id"] == accepted.request_id

    await stage.start_bot()
    result = await handle.wait_for_original(lambda m: bool(m.attachments), timeout=10.0)
    await stage.row_in("completed", within=10.0)
    await asyncio.sleep(0.3)
    assert images_posted(stage.discord) == [result]
    assert len(stage.pixazo.submits()) == 1 and len(stage.pixazo.jobs) == 1
    assert not any("not re-sent" in m.content for m in bot_messages(stage.discord))


async def test_json_logs_name_the_job_server_and_request_of_each_line(stage: Stage) -> None:
    process = await stage.start_bot(LOG_FORMAT="json")
    handle = await stage.imagine(prompt=PROMPT, seed=5)
    await handle.wait_for_original(lambda m: bool(m.attachments), timeout=10.0)
    row = await stage.row_in("completed")
    assert await stage.stop(process) == 0

    lines = [json.loads(line) for line in process.log().splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "message"} <= set(entry) for entry in lines)
    submitted = next(entry for entry in lines if "submitted as" in entry["message"])
    assert submitted["job_id"] == str(row["id"])
    assert submitted["guild_id"] == str(stage.guild.id)
    assert submitted["request_id"] == row["request_id"]
    assert submitted["ts"].endswith("Z")
    assert not any(stage.pixazo.api_key in line for line in process.log().splitlines())


async def test_sigterm_when_idle_exits_at_once(stage: Stage) -> None:
    process = await stage.start_bot()
    loop = asyncio.get_running_loop()
    started = loop.time()

    code = await stage.stop(process)

    assert_clean_exit(stage, process, code)
    assert loop.time() - started < 5.0


# -- privacy ----------------------------------------------------------------------------------


def meta(db_path: Path) -> dict[str, str]:
    """The bot-wide facts table."""
    with contextlib.closing(sqlite3.connect(db_path)) as connection:
        return dict(connection.execute("SELECT key, value FROM meta").fetchall())


def settings_rows(db_path: Path, guild_id: int) -> int:
    """How many settings, presets and preferences a server has."""
    with contextlib.closing(sqlite3.connect(db_path)) as connection:
        return sum(
            connection.execute(
                f"SELECT COUNT(*) FROM {table} WHERE guild_id = ?", (guild_id,)
            ).fetchone()[0]
            for table in ("scope_settings", "presets", "member_prefs")
        )


async def test_removal_deletes_settings_at_once_and_history_after_retention(
    world: World,
) -> None:
    other = world.discord.add_guild("Other Guild")
    gone = world.guild
    async with world.bot(RETENTION_DAYS=30) as kreabot:
        for guild in (gone, other):
            await kreabot.services.config.set(guild.id, 0, "aspect", "16:9", by=guild.admin.id)
            await kreabot.services.config.set_pref(guild.id, guild.member.id, "creativity", "high")
            handle = await world.discord.slash("imagine", {"prompt": PROMPT}, guild=guild)
            await handle.wait_for_response()
            await world.result_of(handle)
        await kreabot.services.runner.join()

        await world.discord.remove_guild(gone)
        await eventually(lambda: f"removed:{gone.id}" in meta(world.db_path), 5.0, "removal")

        assert settings_rows(world.db_path, gone.id) == 0  # at once
        assert (await kreabot.services.config.server(gone.id)).server == Defaults()  # cache too
        assert settings_rows(world.db_path, other.id) == 2
        assert (
            await kreabot.services.maintenance.prune_removed_servers() == 0
        )  # history kept for now

        world.advance(29 * DAY)
        assert await kreabot.services.maintenance.prune_removed_servers() == 0
        assert {r["guild_id"] for r in job_rows(world.db_path)} == {gone.id, other.id}

        world.advance(1 * DAY + 60)
        assert await kreabot.services.maintenance.prune_removed_servers() == 1
        assert [r["guild_id"] for r in job_rows(world.db_path)] == [other.id]
        assert f"removed:{gone.id}" not in meta(world.db_path)
        assert await kreabot.services.maintenance.prune_removed_servers() == 0


async def test_a_server_that_added_the_bot_back_keeps_its_history(world: World) -> None:
    async with world.bot(RETENTION_DAYS=1) as kreabot:
        handle = await world.imagine(prompt=PROMPT)
        await world.result_of(handle)
        await kreabot.services.runner.join()
        # Removed, then added back: the mark is there but the bot is in the server again.
        guild = kreabot.get_guild(world.guild.id)
        assert guild is not None
        await kreabot.on_guild_remove(guild)
        world.advance(2 * DAY)

        assert await kreabot.services.maintenance.prune_removed_servers() == 0
        assert len(job_rows(world.db_path)) == 1
        assert not [k for k in meta(world.db_path) if k.startswith("removed:")]
