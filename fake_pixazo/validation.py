"""Strict validation of Krea 2 Large submit bodies, as the fake gateway applies it.

This module is deliberately independent of the bot's own client (``bot.pixazo``): it is
written from the API reference alone, so that the fake is an independent check of the
client. Every problem with a body is collected (not just the first one), so that a 400
names every invalid field and why.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

ASPECT_RATIOS: Final[tuple[str, ...]] = (
    "1:1",
    "4:3",
    "3:2",
    "16:9",
    "2.35:1",
    "4:5",
    "2:3",
    "9:16",
)
CREATIVITY_LEVELS: Final[tuple[str, ...]] = ("raw", "low", "medium", "high")

DEFAULT_ASPECT_RATIO: Final = "1:1"
DEFAULT_CREATIVITY: Final = "medium"
DEFAULT_REFERENCE_STRENGTH: Final = 1.0
DEFAULT_STYLE_STRENGTH: Final = 1.0
DEFAULT_MOODBOARD_STRENGTH: Final = 0.23

MAX_IMAGE_STYLE_REFERENCES: Final = 10
MAX_STYLES: Final = 10
MAX_MOODBOARDS: Final = 1

TOP_LEVEL_FIELDS: Final = frozenset(
    {
        "prompt",
        "aspect_ratio",
        "creativity",
        "seed",
        "image_style_references",
        "styles",
        "moodboards",
    }
)

_UUID_RE: Final = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


@dataclass(frozen=True)
class ImageStyleReference:
    """One entry of ``image_style_references``, with its default filled in."""

    image_url: str
    strength: float


@dataclass(frozen=True)
class StyleReference:
    """One entry of ``styles`` (a Krea LoRA preset), with its default filled in."""

    id: str
    strength: float


@dataclass(frozen=True)
class MoodboardReference:
    """One entry of ``moodboards``, with its default filled in."""

    id: str
    strength: float


@dataclass(frozen=True)
class GenerationParams:
    """A validated submit body with every default filled in."""

    prompt: str
    aspect_ratio: str = DEFAULT_ASPECT_RATIO
    creativity: str = DEFAULT_CREATIVITY
    seed: int | None = None
    image_style_references: tuple[ImageStyleReference, ...] = ()
    styles: tuple[StyleReference, ...] = ()
    moodboards: tuple[MoodboardReference, ...] = ()

    def canonical_json(self) -> str:
        """Return a stable JSON rendering of every input that shapes the image."""
        data = {
            "prompt": self.prompt,
            "aspect_ratio": self.aspect_ratio,
            "creativity": self.creativity,
            "seed": self.seed,
            "image_style_references": [
                {"image_url": r.image_url, "strength": r.strength}
                for r in self.image_style_references
            ],
            "styles": [{"id": s.id, "strength": s.strength} for s in self.styles],
            "moodboards": [{"id": m.id, "strength": m.strength} for m in self.moodboards],
        }
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class ValidationFailed(Exception):
    """A submit body broke the contract; ``problems`` lists each invalid field and why."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The text the fake puts in the 400 response's ``message``."""
        return "Invalid request: " + "; ".join(self.problems)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _describe(value: object) -> str:
    text = json.dumps(value) if _is_jsonable(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_jsonable(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return False
    return True


def _check_strength(
    entry: dict[str, Any], where: str, default: float, problems: list[str]
) -> float:
    if "strength" not in entry:
        return default
    value = entry["strength"]
    if not _is_number(value):
        problems.append(f"{where}.strength: must be a number (got {_describe(value)})")
        return default
    if not math.isfinite(value):
        problems.append(f"{where}.strength: must be a finite number (got {_describe(value)})")
        return default
    return float(value)


def _check_entry_object(
    entry: object, where: str, allowed: frozenset[str], problems: list[str]
) -> dict[str, Any] | None:
    if not isinstance(entry, dict):
        problems.append(f"{where}: must be an object (got {_describe(entry)})")
        return None
    for key in sorted(set(entry) - allowed):
        problems.append(f"{where}.{key}: unknown field")
    return entry


def _check_list(body: dict[str, Any], name: str, limit: int, problems: list[str]) -> list[Any]:
    if name not in body:
        return []
    value = body[name]
    if not isinstance(value, list):
        problems.append(f"{name}: must be a list (got {_describe(value)})")
        return []
    if len(value) > limit:
        problems.append(f"{name}: at most {limit} entries allowed (got {len(value)})")
    return value


def _check_https_url(value: object, where: str, problems: list[str]) -> str | None:
    if not isinstance(value, str):
        problems.append(f"{where}: must be an HTTPS URL string (got {_describe(value)})")
        return None
    parts = urlsplit(value)
    if parts.scheme.lower() != "https" or not parts.netloc:
        problems.append(f"{where}: must be an HTTPS URL (got {_describe(value)})")
        return None
    return value


def validate_request(body: object) -> GenerationParams:
    """Validate a parsed submit body against the contract and fill in defaults.

    Raises :class:`ValidationFailed` naming every invalid field (unknown fields at the top
    level or inside entries included) when the body breaks the contract.
    """
    if not isinstance(body, dict):
        raise ValidationFailed([f"body: must be a JSON object (got {_describe(body)})"])
    problems: list[str] = [f"{key}: unknown field" for key in sorted(set(body) - TOP_LEVEL_FIELDS)]

    prompt = body.get("prompt")
    if "prompt" not in body:
        problems.append("prompt: is required")
    elif not isinstance(prompt, str):
        problems.append(f"prompt: must be a string (got {_describe(prompt)})")
    elif not prompt.strip():
        problems.append("prompt: must not be empty")

    aspect_ratio = body.get("aspect_ratio", DEFAULT_ASPECT_RATIO)
    if aspect_ratio not in ASPECT_RATIOS or not isinstance(aspect_ratio, str):
        problems.append(
            f"aspect_ratio: must be one of {', '.join(ASPECT_RATIOS)}"
            f" (got {_describe(aspect_ratio)})"
        )

    creativity = body.get("creativity", DEFAULT_CREATIVITY)
    if creativity not in CREATIVITY_LEVELS or not isinstance(creativity, str):
        problems.append(
            f"creativity: must be one of {', '.join(CREATIVITY_LEVELS)}"
            f" (got {_describe(creativity)})"
        )

    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        problems.append(f"seed: must be an integer (got {_describe(seed)})")
    elif "seed" in body and seed is None:
        problems.append("seed: must be an integer (got null)")

    references: list[ImageStyleReference] = []
    for index, raw in enumerate(
        _check_list(body, "image_style_references", MAX_IMAGE_STYLE_REFERENCES, problems)
    ):
        where = f"image_style_references[{index}]"
        entry = _check_entry_object(raw, where, frozenset({"image_url", "strength"}), problems)
        if entry is None:
            continue
        url: str | None = None
        if "image_url" not in entry:
            problems.append(f"{where}.image_url: is required")
        else:
            url = _check_https_url(entry["image_url"], f"{where}.image_url", problems)
        strength = _check_strength(entry, where, DEFAULT_REFERENCE_STRENGTH, problems)
        if url is not None:
            references.append(ImageStyleReference(image_url=url, strength=strength))

    styles: list[StyleReference] = []
    for index, raw in enumerate(_check_list(body, "styles", MAX_STYLES, problems)):
        where = f"styles[{index}]"
        entry = _check_entry_object(raw, where, frozenset({"id", "strength"}), problems)
        if entry is None:
            continue
        style_id = entry.get("id")
        if "id" not in entry:
            problems.append(f"{where}.id: is required")
        elif not isinstance(style_id, str) or not style_id.strip():
            problems.append(f"{where}.id: must be a non-empty string (got {_describe(style_id)})")
        strength = _check_strength(entry, where, DEFAULT_STYLE_STRENGTH, problems)
        if isinstance(style_id, str) and style_id.strip():
            styles.append(StyleReference(id=style_id, strength=strength))

    moodboards: list[MoodboardReference] = []
    for index, raw in enumerate(_check_list(body, "moodboards", MAX_MOODBOARDS, problems)):
        where = f"moodboards[{index}]"
        entry = _check_entry_object(raw, where, frozenset({"id", "strength"}), problems)
        if entry is None:
            continue
        board_id = entry.get("id")
        if "id" not in entry:
            problems.append(f"{where}.id: is required")
        elif not isinstance(board_id, str) or not _UUID_RE.match(board_id):
            problems.append(f"{where}.id: must be a UUID string (got {_describe(board_id)})")
        strength = _check_strength(entry, where, DEFAULT_MOODBOARD_STRENGTH, problems)
        if isinstance(board_id, str) and _UUID_RE.match(board_id):
            moodboards.append(MoodboardReference(id=board_id, strength=strength))

    if problems:
        raise ValidationFailed(problems)
    assert isinstance(prompt, str) and isinstance(aspect_ratio, str) and isinstance(creativity, str)
    return GenerationParams(
        prompt=prompt,
        aspect_ratio=aspect_ratio,
        creativity=creativity,
        seed=seed,
        image_style_references=tuple(references),
        styles=tuple(styles),
        moodboards=tuple(moodboards),
    )


def discord_url_expiry(url: str) -> int | None:
    """Return the unix expiry of a Discord signed attachment URL (its hex ``ex``), if any."""
    values = parse_qs(urlsplit(url).query).get("ex")
    if not values:
        return None
    try:
        return int(values[0], 16)
    except ValueError:
        return None


def expired_reference_problems(params: GenerationParams, now: float) -> list[str]:
    """Name each image style reference the gateway could not fetch because its URL expired.

    Stands in for the real gateway failing to download an expired Discord CDN URL: a URL
    whose query carries ``ex`` (hex unix seconds) earlier than ``now`` is unfetchable.
    """
    problems = []
    for index, reference in enumerate(params.image_style_references):
        expiry = discord_url_expiry(reference.image_url)
        if expiry is not None and expiry < now:
            problems.append(
                f"could not fetch image_style_references[{index}].image_url: URL expired"
            )
    return problems
