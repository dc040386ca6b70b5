"""Blocklist entries: words and phrases on word boundaries, regular expressions, and the
patterns refused because they could hang the bot."""

from __future__ import annotations

import time

import pytest

from bot.moderation import MAX_PATTERN_LENGTH, blocked_entry, describe, make_entry
from bot.pixazo import InvalidRequest


def blocks(entry: str, prompt: str) -> bool:
    """Whether a blocklist holding only ``entry`` refuses ``prompt``."""
    return blocked_entry(prompt, [make_entry(entry)]) is not None


# --------------------------------------------------------------------------- words


@pytest.mark.parametrize(
    "prompt",
    ["gore", "Gore", "GORE everywhere", "a scene of gore.", "(gore)", "gore-fest", "so much gore!"],
)
def test_a_word_blocks_itself_in_any_case_and_next_to_punctuation(prompt: str) -> None:
    assert blocks("gore", prompt)


@pytest.mark.parametrize(
    "prompt", ["Al Gore's kitchen", "gorest", "mangored", "gore_fest", "g o r e", ""]
)
def test_a_word_does_not_block_longer_words_that_contain_it(prompt: str) -> None:
    assert blocks("gore", prompt) == (prompt == "Al Gore's kitchen")


def test_word_boundaries_around_words_of_other_scripts() -> None:
    assert blocks("кровь", "много крови") is False
    assert blocks("кровь", "много кровь!") is True
    assert blocks("cat", "concatenate the catalogue") is False
    assert blocks("cat", "a cat on a mat") is True


def test_entries_with_symbols_are_matched_literally() -> None:
    assert blocks("c++", "learn c++ today")
    assert not blocks("c++", "learn c today")
    assert blocks("a.b", "see a.b")
    assert not blocks("a.b", "see axb")  # the dot is not a wildcard


def test_a_phrase_matches_across_any_whitespace_but_not_in_pieces() -> None:
    assert blocks("Blue  Bird", "a blue bird sings")
    assert blocks("blue bird", "a BLUE\n\tbird sings")
    assert not blocks("blue bird", "a blue sky, a bird")
    assert not blocks("blue bird", "a bluebird")
    assert not blocks("blue bird", "a blue birdhouse")


def test_words_are_stored_trimmed_and_lowercase() -> None:
    assert make_entry("  Blue Bird ") == {"kind": "word", "value": "blue bird"}
    assert describe(make_entry("Blue Bird")) == "blue bird"


# --------------------------------------------------------------------------- patterns


def test_a_regex_entry_searches_anywhere_ignoring_case() -> None:
    entry = make_entry(r"re:n[s5]fw\d*")
    assert entry == {"kind": "regex", "value": r"n[s5]fw\d*"}
    assert describe(entry) == r"re:n[s5]fw\d*"
    prompts = ["NSFW art", "n5fw42", "xxnsfwxx"]
    assert all(blocked_entry(p, [entry]) is entry for p in prompts)
    assert blocked_entry("safe for work", [entry]) is None


def test_the_first_matching_entry_is_reported() -> None:
    entries = [make_entry("dog"), make_entry("re:ca+t"), make_entry("bird")]
    assert blocked_entry("a caaat and a bird", entries) == entries[1]
    assert blocked_entry("a fish", entries) is None
    assert blocked_entry("anything", []) is None


def test_a_broken_stored_pattern_is_skipped_not_fatal() -> None:
    entries = [{"kind": "regex", "value": "("}, make_entry("gore")]
    assert blocked_entry("gore", entries) == entries[1]
    assert blocked_entry("calm", entries) is None


@pytest.mark.parametrize(
    "pattern",
    [
        "(a+)+",
        "(a*)*",
        "(a+)*b",
        r"(\w+\s?)+$",
        "(?:x+)+",
        "([a-z]+)*",
        "(a+){2,}",
        "(ab+c)+",
        "((a+))+",  # the repetition one group further in
        "(a{2,})+",  # a counted repetition inside
        "(x+y?)*z",
        "(a|b+)+",
    ],
)
def test_patterns_nesting_repetitions_are_refused(pattern: str) -> None:
    with pytest.raises(InvalidRequest, match="nests repetitions"):
        make_entry(f"re:{pattern}")


@pytest.mark.parametrize(
    "pattern",
    [
        "(ab)+",
        "a+b*",
        "(cat|dog)s?",
        r"\(a+\)+",  # escaped parentheses are no group
        "[(]a+[)]+",  # nor are parentheses in a character class
        "(?:blood|gore)+",
        "x{1,3}(yz)?",
        r"\bnude\b",
    ],
)
def test_harmless_patterns_are_accepted(pattern: str) -> None:
    assert make_entry(f"re:{pattern}") == {"kind": "regex", "value": pattern}


def test_an_accepted_pattern_runs_quickly_on_a_long_prompt() -> None:
    entry = make_entry(r"re:(ab)+c")
    started = time.perf_counter()
    assert blocked_entry("ab" * 2000 + "x", [entry]) is None
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("re:(unclosed", "not a valid pattern"),
        ("re:a{2,1}", "not a valid pattern"),
        ("   ", "give a word"),
        ("x" * (MAX_PATTERN_LENGTH + 1), "at most"),
    ],
)
def test_bad_entries_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        make_entry(text)


@pytest.mark.parametrize("pattern", ["", "(nsfw)?", "x*", "a|", "^"])
def test_a_pattern_matching_every_prompt_is_refused(pattern: str) -> None:
    """An empty match blocks every prompt: almost surely a mistake."""
    with pytest.raises(InvalidRequest, match="every prompt"):
        make_entry(f"re:{pattern}")
