"""One function resolves a job's effective parameters and records where each came from.

Precedence: command option > member preference > channel default > server default >
built-in default. No Discord here: the cog passes plain values in.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from bot.parsing import parse_moodboard, parse_styles
from bot.pixazo import InvalidRequest, Moodboard, Style, TextToImageRequest, build_request
from bot.pixazo.models import MAX_STYLES
from bot.storage.settings import GuildConfig

OPTION = "option"
PREFERENCE = "your preference"
CHANNEL = "channel default"
SERVER = "server default"
BUILTIN = "default"
BUILTIN_VALUES: dict[str, Any] = {"aspect_ratio": "1:1", "creativity": "medium"}


@dataclass
class Inputs:
    """What the member typed (None = not given)."""

    prompt: str
    seed: int
    aspect_ratio: str | None = None
    creativity: str | None = None
    styles: str | None = None
    moodboard: str | None = None
    references: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Resolved:
    """The request to send and, for each parameter, where its value came from."""

    request: TextToImageRequest
    sources: dict[str, str]


def _layered(
    key: str, option: Any, prefs: dict[str, Any], channel: dict[str, Any], server: dict[str, Any]
) -> tuple[Any, str]:
    for value, source in (
        (option, OPTION),
        (prefs.get(key), PREFERENCE),
        (channel.get(key), CHANNEL),
        (server.get(key), SERVER),
    ):
        if value is not None:
            return value, source
    return BUILTIN_VALUES.get(key), BUILTIN


def expand_styles(text: str | None, config: GuildConfig | None) -> list[Style]:
    """Style ids and preset names, comma-separated, into styles (presets expanded)."""
    if not text or not text.strip():
        return []
    presets = {
        name.lower(): value for name, value in (config.style_presets if config else {}).items()
    }
    styles: list[Style] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.lower() in presets:
            styles.extend(Style.model_validate(s) for s in presets[item.lower()])
        else:
            styles.extend(parse_styles(item))
    if len(styles) > MAX_STYLES:
        raise InvalidRequest(f"at most {MAX_STYLES} styles can be combined, not {len(styles)}")
    return styles


def expand_moodboard(
    text: str | None, config: GuildConfig | None
) -> tuple[Moodboard, str | None] | None:
    """A preset name or ``uuid[:strength]`` into a moodboard and its preset name."""
    if not text or not text.strip():
        return None
    presets = {
        name.lower(): (name, value)
        for name, value in (config.moodboard_presets if config else {}).items()
    }
    key = text.strip().lower()
    if key in presets:
        name, value = presets[key]
        return Moodboard.model_validate(value), name
    first = re.split(r"[\s:]+", text.strip(), maxsplit=1)[0]
    try:
        uuid.UUID(first)
    except ValueError:
        raise InvalidRequest(
            f"`{first[:60]}` is neither a moodboard preset of this server nor a moodboard UUID"
        ) from None
    board = parse_moodboard(text)
    return (board, None) if board is not None else None


def resolve(
    inputs: Inputs,
    *,
    config: GuildConfig | None,
    channel_id: int | None,
    prefs: dict[str, Any] | None = None,
) -> Resolved:
    """The effective request for a job. Raises :class:`InvalidRequest` when it cannot be made."""
    prefs = prefs or {}
    server = config.server if config else {}
    channel = config.channel(channel_id) if config else {}
    sources: dict[str, str] = {"seed": OPTION}

    aspect, sources["aspect_ratio"] = _layered(
        "aspect_ratio", inputs.aspect_ratio, prefs, channel, server
    )
    creativity, sources["creativity"] = _layered(
        "creativity", inputs.creativity, prefs, channel, server
    )

    if inputs.styles:
        styles = expand_styles(inputs.styles, config)
        sources["styles"] = OPTION
    else:
        stored, sources["styles"] = _layered("styles", None, {}, channel, server)
        styles = [Style.model_validate(s) for s in stored or []]

    moodboards: list[Moodboard] = []
    locked = bool(channel.get("moodboard_locked", server.get("moodboard_locked", False)))
    default_board, board_source = _layered("moodboard", None, {}, channel, server)
    if inputs.moodboard and locked and default_board is not None:
        raise InvalidRequest(
            "this server applies its own moodboard to every image, so the `moodboard` "
            "option cannot change it here"
        )
    if inputs.moodboard:
        found = expand_moodboard(inputs.moodboard, config)
        if found is not None:
            moodboards = [found[0]]
            sources["moodboards"] = OPTION
            if found[1]:
                sources["moodboard_name"] = found[1]
    elif default_board is not None:
        moodboards = [Moodboard(id=default_board["id"], strength=default_board["strength"])]
        sources["moodboards"] = board_source
        if default_board.get("name"):
            sources["moodboard_name"] = default_board["name"]

    prompt = inputs.prompt.strip()
    suffix = prefs.get("suffix")
    if suffix:
        prompt = f"{prompt} {suffix}"
        sources["suffix"] = PREFERENCE

    request = build_request(
        prompt=prompt,
        aspect_ratio=aspect,
        creativity=creativity,
        seed=inputs.seed,
        image_style_references=[
            {"image_url": r["url"], "strength": r["strength"]} for r in inputs.references
        ],
        styles=styles,
        moodboards=moodboards,
    )
    return Resolved(request, sources)
