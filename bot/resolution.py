"""One function resolves a job's effective parameters and records where each came from.

Precedence: command option > member preference > channel default > server default >
built-in default. No Discord here: the cog passes plain values in.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from bot.errors import UserError
from bot.parsing import parse_moodboard, parse_styles
from bot.pixazo import InvalidRequest, Moodboard, Style, TextToImageRequest, build_request
from bot.pixazo.models import MAX_STYLES
from bot.storage.config import ScopedKey, ServerConfig
from bot.storage.jobs import Reference

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
    references: list[Reference] = field(default_factory=list)
    #: The seed was drawn at random (shown as such on the result).
    random_seed: bool = False
    #: Where more of the job came from, shown on the result (e.g. ``style_from``: a link to
    #: the message whose images are the references).
    sources: dict[str, str] = field(default_factory=dict)


@dataclass
class Resolved:
    """The request to send and, for each parameter, where its value came from."""

    request: TextToImageRequest
    sources: dict[str, str]


SCOPE_SOURCES = {"channel": CHANNEL, "server": SERVER}


def _layered(
    key: ScopedKey,
    option: Any,
    prefs: dict[str, Any],
    config: ServerConfig | None,
    channel_id: int | None,
) -> tuple[Any, str]:
    """The first value set among the option, the member's preference, the channel's and the
    server's defaults, with its source; else the built-in value."""
    if option is not None:
        return option, OPTION
    if prefs.get(key) is not None:
        return prefs[key], PREFERENCE
    if config is not None:
        value, scope = config.effective(key, channel_id)
        if scope is not None:
            return value, SCOPE_SOURCES[scope]
    return BUILTIN_VALUES.get(key), BUILTIN


def expand_styles(text: str | None, config: ServerConfig | None) -> list[Style]:
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
            styles.extend(presets[item.lower()])
        else:
            styles.extend(parse_styles(item))
    if len(styles) > MAX_STYLES:
        raise UserError(f"at most {MAX_STYLES} styles can be combined, not {len(styles)}")
    return styles


def expand_moodboard(
    text: str | None, config: ServerConfig | None
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
        return value, name
    first = re.split(r"[\s:]+", text.strip(), maxsplit=1)[0]
    try:
        uuid.UUID(first)
    except ValueError:
        raise UserError(
            f"`{first[:60]}` is neither a moodboard preset of this server nor a moodboard UUID"
        ) from None
    board = parse_moodboard(text)
    return (board, None) if board is not None else None


def resolve(
    inputs: Inputs,
    *,
    config: ServerConfig | None,
    channel_id: int | None,
    prefs: dict[str, Any] | None = None,
) -> Resolved:
    """The effective request for a job. Raises :class:`UserError` when it cannot be made."""
    prefs = prefs or {}
    sources: dict[str, str] = {**inputs.sources, "seed": "random" if inputs.random_seed else OPTION}

    aspect, sources["aspect_ratio"] = _layered(
        "aspect_ratio", inputs.aspect_ratio, prefs, config, channel_id
    )
    creativity, sources["creativity"] = _layered(
        "creativity", inputs.creativity, prefs, config, channel_id
    )

    if inputs.styles:
        styles = expand_styles(inputs.styles, config)
        sources["styles"] = OPTION
    else:
        stored, sources["styles"] = _layered("styles", None, {}, config, channel_id)
        styles = list(stored or [])

    moodboards: list[Moodboard] = []
    locked = bool(config.value("moodboard_locked", channel_id)) if config else False
    default_board, board_source = _layered("moodboard", None, {}, config, channel_id)
    if inputs.moodboard and locked and default_board is not None:
        raise UserError(
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
        moodboards = [Moodboard(id=default_board.id, strength=default_board.strength)]
        sources["moodboards"] = board_source
        if default_board.name:
            sources["moodboard_name"] = default_board.name

    prompt = inputs.prompt.strip()
    suffix = prefs.get("suffix")
    if suffix:
        prompt = f"{prompt} {suffix}"
        sources["suffix"] = PREFERENCE

    try:
        request = build_request(
            prompt=prompt,
            aspect_ratio=aspect,
            creativity=creativity,
            seed=inputs.seed,
            image_style_references=[
                {"image_url": r.url, "strength": r.strength} for r in inputs.references
            ],
            styles=styles,
            moodboards=moodboards,
        )
    except InvalidRequest as exc:
        raise UserError(exc.message) from None
    return Resolved(request, sources)
