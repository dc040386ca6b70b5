"""Blocklist patterns: Python's backtracking ``re`` against RE2, on the patterns that froze
the bot, for growing prompts. Prints one line per pattern, engine and prompt length.

    python -m bench.blocklist

Python's ``re`` runs in a subprocess killed after ``--timeout`` seconds (it would otherwise
hang this script as it hung the bot); RE2 runs through ``bot.moderation`` as the bot does.
Not part of the test suite: the unit tests assert the engine instead of timing it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bot.moderation import blocked_entry, make_entry

#: (pattern, the prompt's repeated unit, a tail that makes the search fail)
CASES = [
    ("(?:a|a)*b", "a", "!"),
    (r"\w*\w*\w*\w*\w*y", "a", "!"),
    (r"(\w+\s?)+$", "a ", "!"),
    ("(a+)+$", "a", "!"),
]
PYTHON_LENGTHS = [10, 20, 24, 28, 40, 200, 1500]
RE2_LENGTHS = [40, 1500, 4000, 100_000]

_CHILD = """
import re, sys, time
pattern, prompt = sys.argv[1], sys.argv[2]
compiled = re.compile(pattern, re.IGNORECASE)
started = time.perf_counter()
compiled.search(prompt)
print(time.perf_counter() - started)
"""


def python_re(pattern: str, prompt: str, timeout: float) -> str:
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, pattern, prompt],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
    except subprocess.TimeoutExpired:
        return f"> {timeout:.0f} s (killed)"
    return f"{float(done.stdout) * 1000:.2f} ms"


def re2_time(pattern: str, prompt: str) -> str:
    entry = make_entry(f"re:{pattern}")
    blocked_entry("warm", [entry])  # compile once, as the bot's cache does
    started = time.perf_counter()
    rounds = 20
    for _ in range(rounds):
        assert blocked_entry(prompt, [entry]) is None
    return f"{(time.perf_counter() - started) / rounds * 1000:.3f} ms"


def word_time(word: str, prompt: str) -> str:
    entry = make_entry(word)
    blocked_entry("warm", [entry])
    started = time.perf_counter()
    rounds = 5
    for _ in range(rounds):
        assert blocked_entry(prompt, [entry]) is None
    return f"{(time.perf_counter() - started) / rounds * 1000:.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    print(f"{'pattern':24} {'engine':8} {'prompt':>8}  time per search")
    for pattern, unit, tail in CASES:
        for length in PYTHON_LENGTHS:
            prompt = (unit * length)[: length - 1] + tail
            print(f"{pattern:24} {'re':8} {length:8}  {python_re(pattern, prompt, args.timeout)}")
        for length in RE2_LENGTHS:
            prompt = (unit * length)[: length - 1] + tail
            print(f"{pattern:24} {'re2':8} {length:8}  {re2_time(pattern, prompt)}")
    # A word inside one long word: a candidate at every character, each refused by its
    # boundaries (the worst case of the word search), still linear.
    for length in RE2_LENGTHS:
        print(f"{'word a':24} {'re2':8} {length:8}  {word_time('a', 'a' * length)}")


if __name__ == "__main__":
    main()
