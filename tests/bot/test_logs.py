"""Secrets are redacted from every log record."""

from __future__ import annotations

import logging
import sys

import pytest

from bot.logs import RedactSecrets

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
