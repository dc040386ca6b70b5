"""Parsing members' text into Krea inputs (styles, moodboards). No Discord here."""

from __future__ import annotations

import math
import re
import uuid

from bot.errors import UserError
from bot.pixazo.models import (
    DEFAULT_MOODBOARD_STRENGTH,
    MAX_STYLES,
    MOODBOARD_STRENGTH_MAX,
    MOODBOARD_STRENGTH_MIN,
    STRENGTH_MAX,
    STRENGTH_MIN,
    Moodboard,
    Style,
)

_STYLE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,199}$")


def parse_strength(text: str, *, low: float, high: float, what: str) -> float:
    """A finite number within [low, high], or :class:`UserError` saying why not."""
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{what} strength `{text}` is not a number") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise UserError(f"{what} strength must be between {low:g} and {high:g}, not `{text}`")
    return value


def parse_styles(text: str | None) -> list[Style]:
    """``"id, id2:0.6"`` -> styles. At most 10, strengths within -2..2."""
    if not text or not text.strip():
        return []
    styles: list[Style] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        style_id, _, strength_text = item.partition(":")
        style_id = style_id.strip()
        if not _STYLE_ID.match(style_id):
            raise UserError(
                f"`{style_id[:50]}` is not a valid style id (letters, digits, - _ . / only)"
            )
        strength = 1.0
        if strength_text.strip():
            strength = parse_strength(
                strength_text.strip(), low=STRENGTH_MIN, high=STRENGTH_MAX, what=f"style {style_id}"
            )
        styles.append(Style(id=style_id, strength=strength))
    if len(styles) > MAX_STYLES:
        raise UserError(f"at most {MAX_STYLES} styles can be combined, not {len(styles)}")
    return styles


def parse_moodboard(text: str | None) -> Moodboard | None:
    """``"<uuid>"``, ``"<uuid>:0.4"`` or ``"<uuid> 0.4"`` -> a moodboard."""
    if not text or not text.strip():
        return None
    parts = re.split(r"[\s:]+", text.strip(), maxsplit=1)
    try:
        board_id = uuid.UUID(parts[0])
    except ValueError:
        raise UserError(
            f"`{parts[0][:60]}` is not a moodboard UUID "
            "(it looks like 123e4567-e89b-12d3-a456-426614174000)"
        ) from None
    strength = DEFAULT_MOODBOARD_STRENGTH
    if len(parts) > 1 and parts[1].strip():
        strength = parse_strength(
            parts[1].strip(),
            low=MOODBOARD_STRENGTH_MIN,
            high=MOODBOARD_STRENGTH_MAX,
            what="moodboard",
        )
    return Moodboard(id=board_id, strength=strength)
