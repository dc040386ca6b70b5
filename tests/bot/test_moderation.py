"""Blocklist entries: words and phrases on word boundaries, regular expressions, and the
patterns refused because they could hang the bot."""

from __future__ import annotations

import logging
import random
import re

import pytest

from bot.errors import NOTHING_CHANGED, UserError
from bot.moderation import (
    BACKREFERENCE,
    CACHE_ENTRIES,
    LOOKAROUND,
    MAX_PATTERN_LENGTH,
    _checker,
    _checker_of,
    blocked_entry,
    describe,
    engine,
    entry_text,
    make_entry,
    problem,
)


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


def test_a_word_is_found_after_a_longer_word_that_contains_it() -> None:
    assert blocks("gore", "gorest gore") and blocks("gore", "gore_ gore")
    assert blocks("кровь", "кровью, кровь") and not blocks("кровь", "кровью кровьё")
    assert not blocks("gore", "ёgore") and not blocks("gore", "gore٣")
    assert blocks("c++", "c++x c++") and not blocks("c++", "c++x")
    assert blocks("blue bird", "blue birds blue  bird") and blocks("a a", "a a a")
    assert not blocks("a", "a" * 5000) and blocks("a", "a" * 5000 + " a")


def test_words_match_as_pythons_lookarounds_did() -> None:
    """Random prompts: the RE2 search with boundary checks in Python finds what
    ``(?<!\\w)word(?!\\w)`` on Python's ``re`` found (safe there: a literal)."""
    rng = random.Random(16)
    alphabet = "ab AB_-.\n\u00a0кКё٣é☃"
    for value in ("ab", "a b", "кё", "b_", "a.", "é☃", "Ab  к"):
        entry = make_entry(value)
        words = r"\s+".join(re.escape(part) for part in entry["value"].split())
        old = re.compile(rf"(?<!\w){words}(?!\w)", re.IGNORECASE)
        for _ in range(400):
            before, after = ("".join(rng.choices(alphabet, k=rng.randint(0, 4))) for _ in "ab")
            spaced = rng.choice([" ", "  ", "\n", "\u00a0", "-"]).join(value.upper().split())
            prompt = before + rng.choice([spaced, value, ""]) + after
            assert blocks(value, prompt) == bool(old.search(prompt)), (value, prompt)


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


# --------------------------------------------------------------------------- RE2


def test_patterns_run_on_re2_compiled_once() -> None:
    """Every entry, word or pattern, is an RE2 program, compiled once however many prompts
    are checked against it."""
    assert engine() == "re2"
    entries = [make_entry("re:n[s5]fw"), make_entry("blue bird")]
    for entry in entries:
        assert type(_checker_of(entry).program).__module__.startswith("re2")
    _checker.cache_clear()
    for _ in range(50):
        blocked_entry("a calm lake", entries)
    info = _checker.cache_info()
    assert (info.misses, info.hits) == (2, 98)
    assert info.maxsize == CACHE_ENTRIES


@pytest.mark.parametrize(
    ("pattern", "sample"),
    [
        ("(?:a|a)*b", "aaab"),
        (r"\w*\w*\w*\w*\w*y", "ay"),
        ("(a*)*b", "ab"),
        (r"(\w+\s?)+$", "a b"),
        ("((((a*)*)*)*)b", "b"),
        ("(a|aa)+c", "aac"),
        ("(x+x+)+y", "xxy"),
    ],
)
def test_patterns_that_would_backtrack_forever_are_accepted_and_run_on_re2(
    pattern: str, sample: str
) -> None:
    """On Python's ``re`` a prompt of 40 characters against these froze the bot; RE2 matches
    in linear time (``python -m bench.blocklist`` measures it), so they are simply patterns."""
    entry = make_entry(f"re:{pattern}")
    assert entry == {"kind": "regex", "value": pattern}
    assert type(_checker_of(entry).program).__module__.startswith("re2")
    for prompt in ("a" * 5000 + "!", "x" * 5000 + "!", "a " * 2500 + "!", "é" * 3000 + "!"):
        assert blocked_entry(prompt, [entry]) is None
    assert blocked_entry("a" * 3000 + " " + sample, [entry]) is entry


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
        "((a+))+",
        "(a{2,})+",
        "(x+y?)*z",
        "(a|b+)+",
    ],
)
def test_patterns_nesting_repetitions_once_refused_are_accepted_now(pattern: str) -> None:
    """Python's ``re`` could hang on these, so they were refused; RE2 cannot. Those that
    match an empty text are still refused, for that."""
    if pattern in ("(a*)*", "([a-z]+)*"):
        with pytest.raises(UserError, match="every prompt"):
            make_entry(f"re:{pattern}")
    else:
        assert make_entry(f"re:{pattern}") == {"kind": "regex", "value": pattern}


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


@pytest.mark.parametrize(
    "pattern", ["nsfw(?=art)", "(?!safe)work", "(?<=bad )word", "(?<!good )word", "x(?=y)+"]
)
def test_look_around_is_refused_with_an_explanation(pattern: str) -> None:
    with pytest.raises(UserError) as refused:
        make_entry(f"re:{pattern}")
    assert refused.value.message == LOOKAROUND
    assert "look-ahead or look-behind" in refused.value.message
    assert refused.value.outcome == NOTHING_CHANGED


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(\w)\1{2}", r"(?P<x>a)(?P=x)", r"(ab)(c)\2"])
def test_back_references_are_refused_with_an_explanation(pattern: str) -> None:
    with pytest.raises(UserError, match="cannot use back-references"):
        make_entry(f"re:{pattern}")


@pytest.mark.parametrize("pattern", ["(?>ab)c", "a++b", "a*+b", "a?+b", "a{2}+b"])
def test_atomic_groups_and_possessive_repeats_are_refused(pattern: str) -> None:
    with pytest.raises(UserError, match="atomic groups"):
        make_entry(f"re:{pattern}")


def test_word_boundary_escapes_next_to_other_scripts_are_refused() -> None:
    """RE2's ``\\b`` only knows ASCII word characters: it would never match here."""
    with pytest.raises(UserError, match="add the word itself") as refused:
        make_entry(r"re:\bкровь\b")
    assert "кровь" in refused.value.message
    assert make_entry(r"re:\bnude\b") == {"kind": "regex", "value": r"\bnude\b"}
    assert blocks(r"re:\bnude\b", "a NUDE model") and not blocks(r"re:\bnude\b", "nudes")


def test_a_pattern_too_large_for_its_memory_budget_is_refused() -> None:
    with pytest.raises(UserError, match="too large"):
        make_entry(r"re:\w{200}")
    assert make_entry(r"re:\w{20}")


def test_python_spellings_keep_their_meaning() -> None:
    """Patterns mean what they meant on Python's ``re``: Unicode ``\\w``, ``\\d``,
    ``\\s``, ``\\Z``, ``\\uXXXX``, ``\\N{name}``, ``{,n}``, octal escapes."""
    assert blocks(r"re:кот\w+", "КОТИК спит")
    assert not blocks(r"re:кот\W", "котик")
    assert blocks(r"re:room\d+", "room ٣") is False and blocks(r"re:room\d+", "room٣")
    assert blocks(r"re:blue\sbird", "blue\u00a0bird") and blocks(r"re:a\S", "aж")
    assert blocks(r"re:[\w-]+ moon", "блад-мун moon")
    assert blocks(r"re:[\s\d]x", "\u2003x") and blocks(r"re:[\s\d]x", "٣x")
    assert not blocks(r"re:[\s\d]x", "ax")
    assert blocks(r"re:end\Z", "the end") and not blocks(r"re:end\Z", "the end.")
    assert blocks(r"re:\u00e9t\u00e9", "un ÉTÉ") and blocks(r"re:\N{SNOWMAN}", "a ☃")
    assert blocks(r"re:\101+", "AAA") and blocks(r"re:\0", "nul\0")
    assert blocks("re:ab{,2}c", "abbc") and not blocks("re:ab{,2}c", "ab{,2}c")
    assert blocks(r"re:[[]x", "a[x") and blocks("re:[]a]b", "]b")
    with pytest.raises(UserError, match=r"inside `\[…\]`"):
        make_entry(r"re:[\W_]")


def test_re2_only_syntax_is_welcome() -> None:
    assert blocks(r"re:\p{Greek}+", "ένα") and not blocks(r"re:\p{Greek}+", "one")


def test_an_entry_stored_before_re2_is_skipped_with_one_warning_and_shown_as_not_checked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _checker.cache_clear()
    old = {"kind": "regex", "value": r"(\w)\1"}
    entries = [old, make_entry("gore")]
    with caplog.at_level(logging.WARNING, logger="bot.moderation"):
        for _ in range(5):
            assert blocked_entry("aa", entries) is None
            assert blocked_entry("aa gore", entries) is entries[1]
        shown = describe(old)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not checked" in warnings[0].getMessage()
    assert problem(old) == BACKREFERENCE and problem(entries[1]) is None
    assert shown == (
        r"re:(\w)\1 (NOT CHECKED: it uses back-references; "
        r"remove it with /settings blocklist remove (\w)\1)"
    )
    assert "`" not in shown  # the list shows each entry in backticks
    assert entry_text(old) == r"re:(\w)\1" and describe(entries[1]) == "gore"
    for stored, why in (
        (r"(?<=a)b", "look-ahead or look-behind"),
        (r"\bкот\b", "never match around non-English letters"),
        ("(", "RE2 cannot run it"),
    ):
        assert "(NOT CHECKED: " in describe({"kind": "regex", "value": stored})
        assert why in describe({"kind": "regex", "value": stored})


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
    with pytest.raises(UserError, match=message):
        make_entry(text)


@pytest.mark.parametrize("pattern", ["", "(nsfw)?", "x*", "a|", "^"])
def test_a_pattern_matching_every_prompt_is_refused(pattern: str) -> None:
    """An empty match blocks every prompt: almost surely a mistake."""
    with pytest.raises(UserError, match="every prompt"):
        make_entry(f"re:{pattern}")
