"""What a member would see, read back from the fakes: messages, pings, job rows."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fake_pixazo import FakePixazo
from tests.fake_discord import FakeDiscord, FakeMessage
from tests.support.postgres import query

T = TypeVar("T")


async def eventually(check: Callable[[], T | None], within: float = 5.0, what: str = "") -> T:
    """Poll ``check`` (real time) until it returns something truthy; return that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if result:
            return result
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {what or check}")
        await asyncio.sleep(0.02)


#: Text that must never reach a member: signs of a traceback or a raw exception repr.
TRACEBACK_MARKERS = (
    "Traceback",
    'File "',
    "Error(",
    "Exception(",
    "Exception:",
    "exc_info",
    "<class ",
    "Errno",
)


def bot_messages(fake: FakeDiscord, *, include_ephemeral: bool = True) -> list[FakeMessage]:
    """Every message the bot authored (deleted ones included), oldest first."""
    return [
        m
        for m in fake.messages(include_ephemeral=include_ephemeral)
        if m.author.id == fake.bot_user.id
    ]


def texts_of(message: FakeMessage) -> list[str]:
    """Every piece of text a member can read on a message, past revisions included."""
    texts = [message.content, *(revision.content for revision in message.history)]
    for embeds in [message.embeds, *(revision.embeds for revision in message.history)]:
        texts.append(json.dumps(embeds, ensure_ascii=False))
    return texts


def assert_no_traceback(messages: list[FakeMessage]) -> None:
    """No message (nor any earlier revision of one) shows a traceback or an exception repr."""
    for message in messages:
        for text in texts_of(message):
            for marker in TRACEBACK_MARKERS:
                assert marker not in text, f"{marker!r} shown to members in {text!r}"


def assert_pings_nobody(message: FakeMessage) -> None:
    """The message notifies nobody, and every revision that had text said so explicitly."""
    assert not message.pinged_everyone, message
    assert message.pinged_user_ids == set(), message
    assert message.pinged_role_ids == set(), message
    revisions: list[tuple[str, dict[str, Any] | None]] = [
        (r.content, r.allowed_mentions) for r in message.history
    ]
    revisions.append((message.content, message.allowed_mentions))
    for content, allowed in revisions:
        if not content:
            continue
        assert allowed is not None, f"no allowed_mentions sent with {content!r}"
        assert allowed.get("parse") == [], allowed
        assert not allowed.get("users"), allowed
        assert not allowed.get("roles"), allowed


def job_rows(database: Path | str) -> list[dict[str, Any]]:
    """The job table as plain dicts (``params``, ``sources``, ``refs`` decoded), by id, read
    from a SQLite file or a PostgreSQL URL."""
    if isinstance(database, str):
        rows = query(database, "SELECT * FROM jobs ORDER BY id")
    else:
        connection = sqlite3.connect(database)
        try:
            connection.row_factory = sqlite3.Row
            rows = [dict(row) for row in connection.execute("SELECT * FROM jobs ORDER BY id")]
        finally:
            connection.close()
    out = []
    for row in rows:
        data = dict(row)
        for key in ("params", "sources", "refs"):
            data[key] = json.loads(data[key])
        out.append(data)
    return out


def only_request_id(pixazo: FakePixazo) -> str:
    """The request id of the one job the gateway accepted."""
    (request_id,) = pixazo.jobs
    return request_id
