"""Log lines: secrets redacted from every record, the JSON format, the ids of a job."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from bot.logs import (
    ContextIds,
    JsonFormatter,
    RedactSecrets,
    bind,
    current_ids,
    log_context,
    setup_logging,
    unbind,
)

SECRET = "sk-live-very-secret-1234"
TOKEN = "MTAx.discord.token"


def record(msg: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("kreabot", logging.INFO, __file__, 1, msg, args, exc_info)  # type: ignore[arg-type]


def test_secret_in_the_message_is_replaced() -> None:
    entry = record(f"calling with key {SECRET} now")
    assert RedactSecrets([SECRET]).filter(entry) is True
    assert entry.getMessage() == "calling with key [redacted] now"


def test_secret_in_the_args_is_replaced() -> None:
    entry = record("key=%s token=%r n=%d", SECRET, TOKEN, 3)
    RedactSecrets([SECRET, TOKEN]).filter(entry)
    assert entry.getMessage() == "key=[redacted] token='[redacted]' n=3"
    assert SECRET not in str(entry.args) and TOKEN not in str(entry.args)


def test_record_without_secret_is_left_alone() -> None:
    entry = record("polling %s", "job-1")
    RedactSecrets([SECRET]).filter(entry)
    assert entry.msg == "polling %s"
    assert entry.args == ("job-1",)


def test_secret_in_a_traceback_is_replaced() -> None:
    try:
        raise RuntimeError(f"bad key {SECRET}")
    except RuntimeError:
        entry = record("it failed", exc_info=sys.exc_info())
    RedactSecrets([SECRET]).filter(entry)
    text = logging.Formatter().format(entry)
    assert "bad key [redacted]" in text
    assert SECRET not in text


def test_through_a_real_logger(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("kreabot.test_logs")
    redact = RedactSecrets(["", "abc", SECRET])  # empty and too-short secrets are ignored
    logger.addFilter(redact)
    try:
        with caplog.at_level(logging.INFO, logger="kreabot.test_logs"):
            logger.info("headers: %s", {"Ocp-Apim-Subscription-Key": SECRET, "x": "abc"})
    finally:
        logger.removeFilter(redact)
    assert SECRET not in caplog.text
    assert "[redacted]" in caplog.text
    assert "'x': 'abc'" in caplog.text


# -- formats, ids, and redaction through setup_logging ----------------------------------------

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored after the test (setup_logging replaces its handlers)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    discord_level = logging.getLogger("discord").level
    try:
        yield root
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("discord").setLevel(discord_level)


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def json_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines(capsys)]


def test_json_lines_carry_time_level_logger_message_and_ids(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("INFO", secrets=[SECRET], fmt="json")
    log = logging.getLogger("bot.runner")
    log.info("job %s: submitted", 7, extra={"job_id": 7, "guild_id": 123456789012345678})
    with log_context(job_id=8, guild_id=1):
        log.warning("job %s: slow", 8, extra={"request_id": "req-1"})
        log.debug("not shown at INFO")
    log.info("no ids here")

    first, second, third = json_lines(capsys)
    assert TS.match(first["ts"]), first["ts"]
    assert first["level"] == "INFO" and first["logger"] == "bot.runner"
    assert first["message"] == "job 7: submitted"
    # Snowflakes are strings: as JSON numbers they lose digits in many log systems.
    assert first["job_id"] == "7" and first["guild_id"] == "123456789012345678"
    assert second["level"] == "WARNING"
    assert {k: second[k] for k in ("job_id", "guild_id", "request_id")} == {
        "job_id": "8",
        "guild_id": "1",
        "request_id": "req-1",
    }
    assert "interaction_id" not in second
    assert not set(third) & {"job_id", "guild_id", "request_id", "interaction_id", "exc"}


def test_json_timestamp_is_utc_with_milliseconds() -> None:
    entry = record("x")
    entry.created = 1767323045.6789  # 2026-01-02T03:04:05.678 UTC
    assert JsonFormatter().timestamp(entry) == "2026-01-02T03:04:05.678Z"


def test_extra_wins_over_the_context_and_other_extras_are_fields(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("INFO", fmt="json")
    with log_context(job_id=1, interaction_id=99):
        logging.getLogger("kreabot").info("x", extra={"job_id": 2, "attempt": 3})
    (entry,) = json_lines(capsys)
    assert entry["job_id"] == "2" and entry["interaction_id"] == "99"
    assert entry["attempt"] == 3


def test_an_exception_is_one_field_of_one_line(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("INFO", fmt="json")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("kreabot").exception("it failed", extra={"job_id": 5})
    (line,) = lines(capsys)
    entry = json.loads(line)
    assert entry["level"] == "ERROR" and entry["message"] == "it failed"
    assert entry["exc"].startswith("Traceback") and "ValueError: boom" in entry["exc"]
    assert entry["job_id"] == "5"


async def test_bind_keeps_each_tasks_ids_to_itself(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("INFO", fmt="json")
    log = logging.getLogger("bot.runner")
    started = asyncio.Event()

    async def job(job_id: int, guild_id: int) -> None:
        bind(job_id=job_id, guild_id=guild_id)
        log.info("start")
        started.set()
        await asyncio.sleep(0)
        bind(request_id=f"req-{job_id}")  # later, once the gateway answered
        log.info("submitted")

    await asyncio.gather(job(1, 10), job(2, 20))
    log.info("outside")
    entries = json_lines(capsys)
    by_message: dict[str, list[tuple[str | None, ...]]] = {}
    for entry in entries:
        ids = tuple(entry.get(k) for k in ("job_id", "guild_id", "request_id"))
        by_message.setdefault(entry["message"], []).append(ids)
    assert sorted(by_message["start"], key=str) == [("1", "10", None), ("2", "20", None)]
    assert sorted(by_message["submitted"], key=str) == [("1", "10", "req-1"), ("2", "20", "req-2")]
    assert by_message["outside"] == [(None, None, None)]
    assert current_ids() == {}


def test_log_context_nests_and_restores() -> None:
    with log_context(job_id=1, guild_id=2):
        with log_context(request_id="r", guild_id=None):
            assert current_ids() == {"job_id": 1, "request_id": "r"}
        assert current_ids() == {"job_id": 1, "guild_id": 2}
    assert current_ids() == {}
    token = bind(interaction_id=5)
    assert current_ids() == {"interaction_id": 5}
    unbind(token)
    assert current_ids() == {}
    with pytest.raises(TypeError, match="unknown log id"):
        bind(jobid=1)


def test_plain_format_is_the_default_and_shows_the_ids(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("INFO", secrets=[SECRET])  # the call bot/__main__.py makes
    log = logging.getLogger("bot.runner")
    with log_context(job_id=3, guild_id=4):
        log.info("job %s: done", 3)
    log.info("plain %s", SECRET)
    first, second = lines(capsys)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d INFO bot.runner: job 3: done", first)
    assert first.endswith(" [job_id=3 guild_id=4]")
    assert second.endswith("bot.runner: plain [redacted]")


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="plain or json"):
        setup_logging("INFO", fmt="xml")


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_no_secret_leaks_from_message_args_extra_or_traceback(
    fmt: str, root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    quoted = 'we"b\\hook-secret-ÿ'  # escaped differently by JSON and by repr()
    setup_logging("INFO", secrets=[SECRET, TOKEN, quoted], fmt=fmt)
    log = logging.getLogger("kreabot.leaks")
    log.info(f"message {SECRET}")
    log.info("args %s %r", TOKEN, {"key": SECRET})
    log.info(
        "extra",
        extra={
            "headers": {"Ocp-Apim-Subscription-Key": SECRET, "nested": [TOKEN, quoted]},
            "note": f"token={TOKEN}",
            "request_id": f"req-{SECRET}",
            "thing": Holder(SECRET),
        },
    )
    try:
        raise RuntimeError(f"bad key {SECRET} {quoted!r}")
    except RuntimeError:
        log.exception("traceback")
    log.info("stack", stack_info=True, extra={"job_id": 1})
    output = capsys.readouterr().err
    for secret in (SECRET, TOKEN, quoted, json.dumps(quoted)[1:-1], repr(quoted)[1:-1]):
        assert secret not in output
    # plain: message 1, args 2, request_id 1, traceback 2; json also shows the extras.
    assert output.count("[redacted]") >= (6 if fmt == "plain" else 11)
    if fmt == "json":
        entries = [json.loads(line) for line in output.splitlines()]
        assert [e["message"] for e in entries] == [
            "message [redacted]",
            "args [redacted] {'key': '[redacted]'}",
            "extra",
            "traceback",
            "stack",
        ]
        extra = entries[2]
        assert extra["headers"] == {
            "Ocp-Apim-Subscription-Key": "[redacted]",
            "nested": ["[redacted]", "[redacted]"],
        }
        assert extra["note"] == "token=[redacted]" and extra["request_id"] == "req-[redacted]"
        assert "bad key [redacted]" in entries[3]["exc"]
        assert entries[4]["stack"].startswith("Stack (most recent call last)")


class Holder:
    """An object whose str() holds a secret, passed in ``extra``."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def __str__(self) -> str:
        return f"Holder({self.secret})"


def test_context_ids_are_stamped_where_the_call_is_made() -> None:
    """A handler formatting in another thread (QueueHandler) still sees the job's ids."""
    entry = record("x")
    with log_context(job_id=4, guild_id=5):
        assert ContextIds().filter(entry) is True
    assert (entry.job_id, entry.guild_id) == (4, 5)  # type: ignore[attr-defined]
    assert json.loads(JsonFormatter().format(entry))["job_id"] == "4"
    given = logging.makeLogRecord({"msg": "y", "job_id": 9})
    with log_context(job_id=4):
        ContextIds().filter(given)
    assert given.job_id == 9  # type: ignore[attr-defined]
