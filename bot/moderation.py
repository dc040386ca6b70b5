"""Per-server blocked words and patterns, checked before anything is submitted.

Every prompt of a server is checked against every entry of its blocklist, on the event loop,
so no entry may ever take long, whatever an admin typed and whatever a member prompts:

- ``re:<pattern>`` entries run on RE2 (``google-re2``), whose matching time is linear in the
  prompt's length for every pattern. RE2 has no look-around and no back-references; patterns
  using them are refused when they are added, with an explanation. Python's spelling is
  translated where RE2's differs (``\\w``, ``\\d`` and ``\\s`` keep their Unicode meaning,
  ``\\Z``, ``\\uXXXX``, ``\\N{name}``, ``{,n}``), so a pattern means what it meant on Python's
  ``re``. ``\\b`` and ``\\B`` are RE2's, which only know ASCII letters, digits and ``_``.
- words and phrases are RE2 programs too: the literal words (any whitespace between the
  words of a phrase) between two non-word characters (or the prompt's ends), which is a
  word boundary where Python's ``re`` saw one, in every script, without look-around.

Each entry is compiled once (a bounded cache). An entry stored before RE2 that RE2 cannot run
is skipped, with one log warning, and shown as not checked by :func:`describe`.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import re2

from bot.errors import NOTHING_CHANGED, UserError

log = logging.getLogger(__name__)

MAX_PATTERN_LENGTH = 200
#: Compiled entries kept; every prompt is checked against every entry of its server.
CACHE_ENTRIES = 512
#: Memory budget of one compiled entry (program and its lazily built DFA), in bytes. RE2
#: falls back to its (still linear) NFA when the DFA outgrows it, and refuses a pattern whose
#: program alone would not fit (``\w{50}`` fits, ``\w{100}`` does not): ``CACHE_ENTRIES``
#: times this bounds the compiled blocklists' memory (a few KiB per entry in practice).
MAX_MEMORY_PER_ENTRY = 1 << 20

#: Python's ``\w`` (``str.isalnum()`` or ``_``), ``\d`` (decimal digits) and ``\s``
#: (``str.isspace()``) in RE2's syntax, for use inside a character class.
_WORD_CHARS = r"\p{L}\p{N}_"
_DIGIT_CHARS = r"\p{Nd}"
_SPACE_CHARS = r"\t\n\x0b\f\r\x1c-\x1f\x{85}\p{Z}"
_OUTSIDE = {
    "w": f"[{_WORD_CHARS}]",
    "W": f"[^{_WORD_CHARS}]",
    "d": _DIGIT_CHARS,
    "D": r"\P{Nd}",
    "s": f"[{_SPACE_CHARS}]",
    "S": f"[^{_SPACE_CHARS}]",
    "Z": r"\z",
}
_INSIDE = {"w": _WORD_CHARS, "d": _DIGIT_CHARS, "D": r"\P{Nd}", "s": _SPACE_CHARS, "b": r"\x08"}

_WHY = "they are matched by RE2, which keeps every check fast whatever the prompt"
LOOKAROUND = (
    "kreabot's patterns cannot use look-ahead or look-behind "
    f"(`(?=…)`, `(?!…)`, `(?<=…)`, `(?<!…)`): {_WHY}; write the pattern without them"
)
BACKREFERENCE = (
    "kreabot's patterns cannot use back-references (`\\1`, `(?P=name)`): "
    f"{_WHY}; spell out what should repeat instead"
)
ATOMIC = (
    "kreabot's patterns cannot use atomic groups `(?>…)` or possessive repeats "
    f"(`a++`, `a*+`): {_WHY}; a plain group or repeat does the same here"
)
CONDITIONAL = f"kreabot's patterns cannot use conditional groups `(?(1)…)`: {_WHY}"
NEGATED_IN_CLASS = (
    "kreabot's patterns cannot use `\\W` or `\\S` inside `[…]`; "
    "use `[^…]` with `\\w` or `\\s` instead"
)
ASCII_BOUNDARY = (
    "in kreabot's patterns `\\b` and `\\B` only know English letters and digits, so they "
    "would never match around {word}; add the word itself (without re:), which respects "
    "word boundaries in every script"
)
EMPTY_MATCH = "that pattern matches an empty text, so it would block every prompt"


class _Unsupported(ValueError):
    """A pattern RE2 cannot run as Python's ``re`` would; the message is for admins."""


def _options() -> Any:
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False  # RE2 would print every refused pattern to stderr
    options.never_capture = True  # groups are never read: a smaller, faster program
    options.max_mem = MAX_MEMORY_PER_ENTRY
    return options


_OPTIONS = _options()


def engine() -> str:
    """The regular-expression engine the blocklist runs on (for tests and diagnostics)."""
    return re2.__name__


def _code_point(value: int) -> str:
    return f"\\x{{{value:x}}}"


def _escape(pattern: str, index: int, in_class: bool) -> tuple[str, int]:
    """Translate the escape at ``pattern[index]`` (a backslash); return it and where the
    pattern goes on."""
    char = pattern[index + 1 : index + 2]
    after = index + 2
    if not char:
        return "\\", after  # RE2 says "trailing \"
    table = _INSIDE if in_class else _OUTSIDE
    if char in table:
        return table[char], after
    if in_class and char in "WS":
        raise _Unsupported(NEGATED_IN_CLASS)
    if char.isdigit():
        octal = re.match(r"[0-7]{1,3}", pattern[index + 1 : index + 4])
        digits = octal.group() if octal else ""
        if char == "0" or in_class or (len(digits) == 3 and int(digits, 8) <= 0o377):
            if not digits:
                raise _Unsupported(f"`\\{char}` is not a valid escape")
            return _code_point(int(digits, 8)), index + 1 + len(digits)
        raise _Unsupported(BACKREFERENCE)
    if char in "uU":
        width = 4 if char == "u" else 8
        hex_digits = pattern[after : after + width]
        if len(hex_digits) == width and all(c in "0123456789abcdefABCDEF" for c in hex_digits):
            return _code_point(int(hex_digits, 16)), after + width
    if char == "N" and pattern[after : after + 1] == "{":
        close = pattern.find("}", after)
        if close != -1:
            try:
                return _code_point(ord(unicodedata.lookup(pattern[after + 1 : close]))), close + 1
            except KeyError:
                raise _Unsupported(f"`{pattern[index : close + 1]}` names no character") from None
    return pattern[index:after], after


def translate(pattern: str) -> str:
    """``pattern`` (Python's ``re`` syntax) in RE2's syntax, with the same meaning.

    Raises :class:`_Unsupported` for what RE2 cannot do (look-around, back-references,
    atomic groups, conditionals) with an explanation for admins."""
    out: list[str] = []
    index, in_class, boundary = 0, False, False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            piece, index = _escape(pattern, index, in_class)
            boundary = boundary or (not in_class and piece in ("\\b", "\\B"))
            out.append(piece)
            continue
        if in_class:
            if char == "]":
                in_class = False
            out.append("\\[" if char == "[" else char)  # a "[" in a class is a literal
            index += 1
            continue
        if char == "[":
            in_class = True
            start = index + 1
            if pattern[start : start + 1] == "^":
                start += 1
            if pattern[start : start + 1] == "]":  # a "]" right after "[" or "[^" is literal
                start += 1
            out.append(pattern[index:start].replace("]", "\\]"))
            index = start
            continue
        if char == "(":
            opening = pattern[index : index + 4]
            if opening.startswith(("(?=", "(?!", "(?<=", "(?<!")):
                raise _Unsupported(LOOKAROUND)
            if opening.startswith("(?P="):
                raise _Unsupported(BACKREFERENCE)
            if opening.startswith("(?>"):
                raise _Unsupported(ATOMIC)
            if opening.startswith("(?("):
                raise _Unsupported(CONDITIONAL)
        if char == "{":
            counted = re.match(r"\{,(\d+)\}", pattern[index:])
            if counted:  # Python's {,n} is {0,n}; in RE2 it would be literal text
                out.append(f"{{0,{counted.group(1)}}}")
                index += counted.end()
                continue
        out.append(char)
        index += 1
    if boundary:
        foreign = next((c for c in pattern if c.isalnum() and not c.isascii()), None)
        if foreign is not None:
            words = re.findall(r"\w+", re.sub(r"\\.", " ", pattern))
            word = next((w for w in words if foreign in w), foreign)
            raise _Unsupported(ASCII_BOUNDARY.format(word=word))
    return "".join(out)


def _compile_pattern(pattern: str) -> Any:
    """The RE2 program of a ``re:`` entry; :class:`_Unsupported` when it has none."""
    translated = translate(pattern)
    try:
        return re2.compile(translated, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else ""
        reason = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
        if "bad repetition operator" in reason and reason.rstrip().endswith("+"):
            raise _Unsupported(ATOMIC) from None  # a possessive repeat: a++, a*+, a{2}+
        if "too large" in reason or "out of memory" in reason:
            raise _Unsupported("that pattern is too large; split it into smaller ones") from None
        raise _Unsupported(f"`{pattern[:60]}` is not a valid pattern ({reason})") from None


def make_entry(text: str) -> dict[str, str]:
    """``re:<pattern>`` is a regular expression; anything else is a word or phrase.

    Raises :class:`UserError` (``message`` is for the admin) when the entry is refused."""
    text = text.strip()
    if not text:
        raise UserError("give a word, a phrase or re:<pattern>", outcome=NOTHING_CHANGED)
    if len(text) > MAX_PATTERN_LENGTH:
        raise UserError(
            f"entries are at most {MAX_PATTERN_LENGTH} characters", outcome=NOTHING_CHANGED
        )
    if text.startswith("re:"):
        pattern = text[3:]
        try:
            compiled = _compile_pattern(pattern)
        except _Unsupported as exc:
            raise UserError(str(exc), outcome=NOTHING_CHANGED) from None
        if compiled.search("") is not None:
            raise UserError(EMPTY_MATCH, outcome=NOTHING_CHANGED)
        return {"kind": "regex", "value": pattern}
    return {"kind": "word", "value": text.lower()}


# --------------------------------------------------------------------------- checking


@dataclass(frozen=True, slots=True)
class _Checker:
    """One compiled entry: ``program`` is None when the entry cannot be checked."""

    program: Any
    problem: str | None = None


#: One character that is not a word character (Python's ``\w``), or an end of the prompt:
#: consumed around a word, it is a word boundary without look-around. Case-sensitive, so
#: case folding adds no character to the class before it is negated.
_NOT_WORD = f"(?-i:[^{_WORD_CHARS}])"


def _word_program(value: str) -> Any:
    """A word or phrase (any whitespace between its words) on word boundaries, as one RE2
    program: the prompt holds it where ``(?<!\\w)word(?!\\w)`` would have matched, and
    only there, since the characters around it are matched rather than looked at."""
    parts = value.split()
    if not parts:
        raise _Unsupported("the entry is empty")
    words = f"[{_SPACE_CHARS}]+".join(re2.escape(part) for part in parts)
    return re2.compile(f"(?:^|{_NOT_WORD}){words}(?:{_NOT_WORD}|$)", _OPTIONS)


@functools.lru_cache(maxsize=CACHE_ENTRIES)
def _checker(kind: str, value: str) -> _Checker:
    words = kind != "regex"
    try:
        program = _word_program(value) if words else _compile_pattern(value)
    except (_Unsupported, re2.error) as exc:
        problem = str(exc) if isinstance(exc, _Unsupported) else "RE2 cannot compile it"
        shown = f"re:{value}" if not words else value
        log.warning("blocklist entry %r is not checked: %s", shown[:80], problem)
        return _Checker(None, problem)
    return _Checker(program)


def _checker_of(entry: dict[str, Any]) -> _Checker:
    return _checker(str(entry.get("kind", "word")), str(entry.get("value", "")))


def blocked_entry(prompt: str, entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first entry that matches ``prompt``, or None. Entries that cannot be checked
    are skipped."""
    data = prompt.encode("utf-8", "surrogatepass")
    for entry in entries:
        program = _checker_of(entry).program
        if program is not None and program.search(data) is not None:
            return entry
    return None


#: How :func:`describe` names each problem, briefly (the list of entries is one message).
_BRIEF = {
    LOOKAROUND: "it uses look-ahead or look-behind",
    BACKREFERENCE: "it uses back-references",
    ATOMIC: "it uses atomic groups or possessive repeats",
    CONDITIONAL: "it uses conditional groups",
    NEGATED_IN_CLASS: "it uses \\W or \\S inside [...]",
}


def _brief(reason: str) -> str:
    if reason in _BRIEF:
        return _BRIEF[reason]
    if reason.startswith("in kreabot's patterns `\\b`"):
        return "its \\b would never match around non-English letters"
    return "RE2 cannot run it"


def problem(entry: dict[str, Any]) -> str | None:
    """Why a stored entry is not checked (stored before kreabot ran patterns on RE2), or
    None when it is."""
    return _checker_of(entry).problem


def entry_text(entry: dict[str, Any]) -> str:
    """The text an admin types for ``entry`` (``re:<pattern>`` or the word or phrase)."""
    return f"re:{entry['value']}" if entry.get("kind") == "regex" else str(entry["value"])


def describe(entry: dict[str, Any]) -> str:
    """How an entry is shown to admins: its text, and for an entry that is not checked
    (stored before RE2), briefly why and how to remove it; never a backtick (the list
    shows each entry in backticks)."""
    text = entry_text(entry)
    reason = problem(entry)
    if reason is None:
        return text
    return (
        f"{text} (NOT CHECKED: {_brief(reason)}; "
        f"remove it with /settings blocklist remove {entry.get('value')})"
    )
