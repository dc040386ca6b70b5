"""Parsing members' text into styles and a moodboard."""

from __future__ import annotations

import uuid

import pytest

from bot.errors import UserError
from bot.parsing import parse_moodboard, parse_strength, parse_styles
from bot.pixazo import Moodboard, Style

BOARD = "123e4567-e89b-12d3-a456-426614174000"


@pytest.mark.parametrize("text", [None, "", "   ", ",", " , ,"])
def test_no_styles(text: str | None) -> None:
    assert parse_styles(text) == []


def test_styles_with_and_without_strength() -> None:
    assert parse_styles(" watercolor , krea/ink_v2:0.6, film.noir : -1.5 ,") == [
        Style(id="watercolor", strength=1.0),
        Style(id="krea/ink_v2", strength=0.6),
        Style(id="film.noir", strength=-1.5),
    ]


def test_ten_styles_allowed_eleven_refused() -> None:
    assert len(parse_styles(",".join(f"s{i}" for i in range(10)))) == 10
    with pytest.raises(UserError, match="at most 10 styles"):
        parse_styles(",".join(f"s{i}" for i in range(11)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bad id", "`bad id` is not a valid style id"),
        ("-dash", "`-dash` is not a valid style id"),
        ("ink:strong", "style ink strength `strong` is not a number"),
        ("ink:2.5", "style ink strength must be between -2 and 2, not `2.5`"),
        ("ink:-3", "style ink strength must be between -2 and 2, not `-3`"),
        ("ink:nan", "style ink strength must be between -2 and 2, not `nan`"),
        ("ink:inf", "style ink strength must be between -2 and 2, not `inf`"),
    ],
)
def test_bad_styles(text: str, expected: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_styles(text)
    assert expected in caught.value.message


@pytest.mark.parametrize("text", [None, "", "  "])
def test_no_moodboard(text: str | None) -> None:
    assert parse_moodboard(text) is None


@pytest.mark.parametrize(
    ("text", "strength"),
    [
        (BOARD, 0.23),
        (f"  {BOARD.upper()}  ", 0.23),
        (f"{BOARD}:0.4", 0.4),
        (f"{BOARD} 0.4", 0.4),
        (f"{BOARD}: -0.5", -0.5),
        (f"{BOARD} 1.5", 1.5),
    ],
)
def test_moodboards(text: str, strength: float) -> None:
    assert parse_moodboard(text) == Moodboard(id=uuid.UUID(BOARD), strength=strength)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("my-board", "`my-board` is not a moodboard UUID"),
        ("123e4567-e89b-12d3-a456", "is not a moodboard UUID"),
        (f"{BOARD}:1.6", "moodboard strength must be between -0.5 and 1.5, not `1.6`"),
        (f"{BOARD} -0.6", "moodboard strength must be between -0.5 and 1.5, not `-0.6`"),
        (f"{BOARD}:lots", "moodboard strength `lots` is not a number"),
        (f"{BOARD} nan", "moodboard strength must be between"),
    ],
)
def test_bad_moodboards(text: str, expected: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_moodboard(text)
    assert expected in caught.value.message


def test_parse_strength_bounds_are_inclusive() -> None:
    assert parse_strength("-2", low=-2, high=2, what="x") == -2.0
    assert parse_strength("2", low=-2, high=2, what="x") == 2.0
    with pytest.raises(UserError, match="x strength"):
        parse_strength("2.0001", low=-2, high=2, what="x")
