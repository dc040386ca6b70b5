"""Per-server blocked words and patterns, checked before anything is submitted."""

from __future__ import annotations

import re
from typing import Any

from bot.pixazo import InvalidRequest

MAX_PATTERN_LENGTH = 200
#: A counted repetition with a comma (``{2,}``, ``{1,5}``): it repeats a variable number of times.
_COUNTED = re.compile(r"\{\d*,\d*\}")


def _nests_repetitions(pattern: str) -> bool:
    """Whether a repeated group holds a repetition, however deep: ``(a+)+``, ``((a+))*``,
    ``(a{2,})+``. Such patterns can make a search take forever, so they are refused."""
    groups: list[bool] = []  # per open group: whether it holds a repetition
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 2
            continue
        if char == "[":  # a character class: no groups nor repetitions inside
            index += 2 if pattern[index + 1 : index + 2] == "^" else 1
            index += 1  # a ``]`` right after ``[`` or ``[^`` is a literal
            while index < len(pattern) and pattern[index] != "]":
                index += 2 if pattern[index] == "\\" else 1
        elif char == "(":
            groups.append(False)
        elif char == ")" and groups:
            repeats_inside = groups.pop()
            after = pattern[index + 1 : index + 2]
            repeated = after in ("+", "*") or bool(_COUNTED.match(pattern, index + 1))
            if repeats_inside and (repeated or after == "{"):
                return True
            if groups and (repeats_inside or repeated):
                groups[-1] = True
        elif groups and (char in "+*" or (char == "{" and _COUNTED.match(pattern, index))):
            groups[-1] = True
        index += 1
    return False


def make_entry(text: str) -> dict[str, str]:
    """``re:<pattern>`` is a regular expression; anything else is a word or phrase."""
    text = text.strip()
    if not text:
        raise InvalidRequest("give a word, a phrase or re:<pattern>")
    if len(text) > MAX_PATTERN_LENGTH:
        raise InvalidRequest(f"entries are at most {MAX_PATTERN_LENGTH} characters")
    if text.startswith("re:"):
        pattern = text[3:]
        if _nests_repetitions(pattern):
            raise InvalidRequest("that pattern nests repetitions, which can hang the bot")
        try:
            compiled = re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise InvalidRequest(f"`{pattern[:60]}` is not a valid pattern ({exc})") from None
        if compiled.search("") is not None:
            raise InvalidRequest(
                "that pattern matches an empty text, so it would block every prompt"
            )
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
