"""Per-server blocked words and patterns, checked before anything is submitted."""

from __future__ import annotations

import re
from typing import Any

from bot.pixazo import InvalidRequest

MAX_PATTERN_LENGTH = 200
#: Nested quantifiers like (a+)+ can make a pattern take forever; refuse them.
_CATASTROPHIC = re.compile(r"\([^)]*[+*][^)]*\)[+*{]")


def make_entry(text: str) -> dict[str, str]:
    """``re:<pattern>`` is a regular expression; anything else is a word or phrase."""
    text = text.strip()
    if not text:
        raise InvalidRequest("give a word, a phrase or re:<pattern>")
    if len(text) > MAX_PATTERN_LENGTH:
        raise InvalidRequest(f"entries are at most {MAX_PATTERN_LENGTH} characters")
    if text.startswith("re:"):
        pattern = text[3:]
        if _CATASTROPHIC.search(pattern):
            raise InvalidRequest("that pattern nests repetitions, which can hang the bot")
        try:
            re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise InvalidRequest(f"`{pattern[:60]}` is not a valid pattern ({exc})") from None
        return {"kind": "regex", "value": pattern}
    return {"kind": "word", "value": text.lower()}


def _compiled(entry: dict[str, Any]) -> re.Pattern[str]:
    if entry.get("kind") == "regex":
        return re.compile(str(entry["value"]), re.IGNORECASE)
    words = r"\s+".join(re.escape(part) for part in str(entry["value"]).split())
    return re.compile(rf"(?<!\w){words}(?!\w)", re.IGNORECASE)


def blocked_entry(prompt: str, entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first entry that matches ``prompt``, or None."""
    for entry in entries:
        try:
            if _compiled(entry).search(prompt):
                return entry
        except re.error:
            continue
    return None


def describe(entry: dict[str, Any]) -> str:
    """How an entry is shown to admins."""
    return f"re:{entry['value']}" if entry.get("kind") == "regex" else str(entry["value"])
