"""Read the plain subset of YAML that ``docker-compose.yml`` is written in.

PyYAML is not among kreabot's dependencies, so the tests parse the compose file with this:
block mappings, block sequences of scalars, flow sequences written as JSON arrays, quoted
and plain scalars, comments. Anything else (anchors, multi-line strings, flow mappings)
raises :class:`UnsupportedYaml`, so the test fails loudly rather than misreading the file.
"""

from __future__ import annotations

import json
import re
from typing import Any

_KEY = re.compile(r"^(?P<key>[A-Za-z0-9_.-]+):(?:\s+(?P<value>.*))?$")


class UnsupportedYaml(ValueError):
    """The text uses YAML this reader does not understand."""


def _strip_comment(line: str) -> str:
    quote: str | None = None
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line.rstrip()


def _scalar(text: str) -> Any:
    text = text.strip()
    if text.startswith(("&", "*", "|", ">", "{", "!")):
        raise UnsupportedYaml(f"unsupported YAML: {text!r}")
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError:
            raise UnsupportedYaml(f"write flow sequences as JSON arrays: {text!r}") from None
    if text.startswith('"'):
        return json.loads(text)
    if text.startswith("'"):
        if not text.endswith("'") or len(text) < 2:
            raise UnsupportedYaml(f"unterminated string: {text!r}")
        return text[1:-1].replace("''", "'")
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    if text in ("true", "false"):
        return text == "true"
    if text in ("null", "~"):
        return None
    return text


def load(text: str) -> Any:
    """Parse ``text`` into dicts, lists and scalars."""
    lines: list[tuple[int, str]] = []
    for raw in text.splitlines():
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise UnsupportedYaml("tabs in indentation")
        content = _strip_comment(raw)
        if content.strip():
            lines.append((len(content) - len(content.lstrip()), content.strip()))
    value, end = _block(lines, 0, lines[0][0] if lines else 0)
    if end != len(lines):
        raise UnsupportedYaml(f"unexpected indentation at {lines[end][1]!r}")
    return value


def _block(lines: list[tuple[int, str]], start: int, indent: int) -> tuple[Any, int]:
    if start >= len(lines):
        return None, start
    if lines[start][1].startswith("- ") or lines[start][1] == "-":
        return _sequence(lines, start, indent)
    return _mapping(lines, start, indent)


def _sequence(lines: list[tuple[int, str]], start: int, indent: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    index = start
    while index < len(lines) and lines[index][0] == indent:
        content = lines[index][1]
        if not content.startswith("- "):
            break
        item = content[2:].strip()
        if _KEY.match(item):
            raise UnsupportedYaml(f"mappings inside sequences are not supported: {item!r}")
        items.append(_scalar(item))
        index += 1
    return items, index


def _mapping(lines: list[tuple[int, str]], start: int, indent: int) -> tuple[dict[str, Any], int]:
    mapping: dict[str, Any] = {}
    index = start
    while index < len(lines) and lines[index][0] == indent:
        match = _KEY.match(lines[index][1])
        if match is None:
            raise UnsupportedYaml(f"expected 'key: value', got {lines[index][1]!r}")
        key, value = match["key"], match["value"]
        if key in mapping:
            raise UnsupportedYaml(f"duplicate key {key!r}")
        index += 1
        if value is not None and value.strip():
            mapping[key] = _scalar(value)
        elif index < len(lines) and lines[index][0] > indent:
            mapping[key], index = _block(lines, index, lines[index][0])
        elif index < len(lines) and lines[index][0] == indent and lines[index][1][:2] == "- ":
            mapping[key], index = _sequence(lines, index, indent)
        else:
            mapping[key] = None
    if index < len(lines) and lines[index][0] > indent:
        raise UnsupportedYaml(f"unexpected indentation at {lines[index][1]!r}")
    return mapping, index
