"""The bot killed mid-job and started again on the same database (a SQLite file; with
``KREABOT_TEST_DATABASE=postgres``, a PostgreSQL database).

The bot runs in a real subprocess (``tests.support.bot_process``) that is SIGKILLed, so no
shutdown code runs; the fake Discord and the fake gateway live in the test process and
outlive both bot processes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.bot_process import BotProcess
from tests.support.checks import assert_no_traceback, assert_pings_nobody, bot_messages, job_rows
from tests.support.stage import STARTUP_TIMEOUT, Stage, images_posted

PROMPT = "a lighthouse at dusk, oil on canvas"


#: Generous for a cold start of a Python process; every wait ends as soon as it can.
async def test_killed_while_generating_the_restarted_bot_delivers_exactly_once(
    stage: Stage,
) -> None:
    stage.pixazo.manual = True  # the job stays PROCESSING until the test finishes it
    first = await stage.start_bot()
    handle = await stage.imagine(prompt=PROMPT, seed=11)
    (accepted,) = await stage.pixazo.wait_for_jobs(1, timeout=5.0)
    await stage.pixazo.wait_for_job(accepted.request_id, "PROCESSING")
    before = await stage.row_in("submitted", "processing", within=5.0)
    assert before["request_id"] == accepted.request_id
    await handle.wait_for_original(lambda m: bool(m.content) and not m.loading)

    await first.kill()
    stage.pixazo.finish(accepted.request_id)  # the image is ready while no bot runs
    await stage.start_bot()

    result = await handle.wait_for_original(lambda m: bool(m.attachments), timeout=10.0)
    row = await stage.row_in("completed", within=10.0)

    assert images_posted(stage.discord) == [result]
    assert len(result.attachments[0].data) > 0 and result.files[0].startswith(b"\x89PNG")
    assert row["result_message_id"] == result.id
    assert row["message_id"] == result.id
    assert f"krea:regen:{row['id']}" in result.custom_ids
    # Nothing was sent twice: one submit, one job at the gateway.
    assert len(stage.pixazo.submits()) == 1
    assert len(stage.pixazo.jobs) == 1
    assert len(job_rows(stage.database)) == 1
    assert_pings_nobody(result)
    assert_no_traceback(bot_messages(stage.discord))


async def test_killed_while_submitting_the_job_is_interrupted_not_resent(stage: Stage) -> None:
    stage.pixazo.hang_after_accept_next()  # taken and charged, but the 202 never comes
    first = await stage.start_bot()
    handle = await stage.imagine(prompt=PROMPT, seed=12)
    await stage.pixazo.wait_for_jobs(1, timeout=5.0)
    await stage.row_in("submitting", within=5.0)

    await first.kill()
    await stage.start_bot()

    message = await handle.wait_for_original(lambda m: "not re-sent" in m.content, timeout=10.0)
    row = await stage.row_in("interrupted", within=5.0)
    await handle.wait_until_done(idle=0.3)

    assert row["error_kind"] == "interrupted"
    assert row["request_id"] is None
    assert "Retry" in message.content
    assert f"krea:retry:{row['id']}" in message.custom_ids
    assert PROMPT in message.content
    assert message.attachments == []
    assert images_posted(stage.discord) == []
    assert len(stage.pixazo.submits()) == 1
    assert len(stage.pixazo.jobs) == 1
    assert_pings_nobody(message)
    assert_no_traceback(bot_messages(stage.discord))


async def test_a_second_bot_on_the_same_sqlite_file_is_refused_and_the_first_keeps_working(
    stage: Stage,
) -> None:
    if not isinstance(stage.database, Path):
        pytest.skip("several processes share a PostgreSQL database (tests/test_cluster.py)")
    first = await stage.start_bot()
    second = await BotProcess.start(
        stage.discord,
        stage.pixazo,
        stage.database,
        stage.tmp_path / "second.log",
        args=["run"],
        cwd=stage.tmp_path,
    )
    code = await second.wait(STARTUP_TIMEOUT)

    assert code == 2
    assert "in use by another kreabot process" in second.log()
    assert "use PostgreSQL (DATABASE_URL)" in second.log()
    # The first one never noticed: it still answers and delivers.
    handle = await stage.imagine(prompt=PROMPT, seed=13)
    result = await handle.wait_for_original(lambda m: bool(m.attachments), timeout=10.0)
    assert images_posted(stage.discord) == [result]
    assert first.running()

    # Killed, it lets the file go: a new process takes over at once.
    await first.kill()
    await stage.start_bot()
