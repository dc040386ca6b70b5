"""Unit tests of `resolve()`: option > member preference > channel > server > built-in."""

from __future__ import annotations

from typing import Any

import pytest

from bot.errors import UserError
from bot.resolution import (
    BUILTIN,
    CHANNEL,
    OPTION,
    PREFERENCE,
    SERVER,
    Inputs,
    expand_moodboard,
    expand_styles,
    resolve,
)
from bot.storage.config import ServerConfig
from bot.storage.jobs import Reference

CHANNEL_ID = 555
OTHER_CHANNEL = 556
BOARD_A = "11111111-1111-4111-8111-111111111111"
BOARD_B = "22222222-2222-4222-8222-222222222222"
BOARD_C = "33333333-3333-4333-8333-333333333333"


def config(
    server: dict[str, Any] | None = None,
    channel: dict[str, Any] | None = None,
    **presets: Any,
) -> ServerConfig:
    """A server's configuration with optional overrides for `CHANNEL_ID`."""
    return ServerConfig.model_validate(
        {
            "server": server or {},
            "channels": {CHANNEL_ID: channel} if channel else {},
            "style_presets": presets.get("styles", {}),
            "moodboard_presets": presets.get("moodboards", {}),
        }
    )


def inputs(**values: Any) -> Inputs:
    """Inputs with a prompt and a seed."""
    values.setdefault("prompt", "a lighthouse")
    values.setdefault("seed", 42)
    return Inputs(**values)


def board_ids(resolved: Any) -> list[tuple[str, float]]:
    """The moodboards of a resolved request, as (id, strength)."""
    return [(str(m.id), m.strength) for m in resolved.request.moodboards]


LAYERED = config(
    server={
        "aspect_ratio": "4:3",
        "creativity": "high",
        "styles": [{"id": "server-style", "strength": 1.0}],
        "moodboard": {"id": BOARD_A, "strength": 0.5, "name": None},
    },
    channel={
        "aspect_ratio": "16:9",
        "creativity": "low",
        "styles": [{"id": "channel-style", "strength": 0.4}],
        "moodboard": {"id": BOARD_B, "strength": 0.9, "name": "brand"},
    },
)
PREFS = {"aspect_ratio": "9:16", "creativity": "raw", "suffix": "in ink"}


def test_builtin_defaults_when_nothing_is_configured() -> None:
    resolved = resolve(inputs(), config=None, channel_id=CHANNEL_ID)
    request = resolved.request
    assert (request.aspect_ratio, request.creativity, request.seed) == ("1:1", "medium", 42)
    assert request.styles == () and request.moodboards == ()
    assert resolved.sources["aspect_ratio"] == BUILTIN
    assert resolved.sources["creativity"] == BUILTIN
    assert resolved.sources["seed"] == OPTION
    assert "moodboards" not in resolved.sources


def test_server_defaults_apply_in_a_channel_without_overrides() -> None:
    resolved = resolve(inputs(), config=LAYERED, channel_id=OTHER_CHANNEL)
    assert resolved.request.aspect_ratio == "4:3"
    assert resolved.request.creativity == "high"
    assert [s.id for s in resolved.request.styles] == ["server-style"]
    assert board_ids(resolved) == [(BOARD_A, 0.5)]
    for key in ("aspect_ratio", "creativity", "styles", "moodboards"):
        assert resolved.sources[key] == SERVER, key


def test_channel_overrides_win_over_the_server() -> None:
    resolved = resolve(inputs(), config=LAYERED, channel_id=CHANNEL_ID)
    assert resolved.request.aspect_ratio == "16:9"
    assert resolved.request.creativity == "low"
    assert [(s.id, s.strength) for s in resolved.request.styles] == [("channel-style", 0.4)]
    assert board_ids(resolved) == [(BOARD_B, 0.9)]
    for key in ("aspect_ratio", "creativity", "styles", "moodboards"):
        assert resolved.sources[key] == CHANNEL, key
    assert resolved.sources["moodboard_name"] == "brand"


def test_member_preferences_win_over_channel_and_server() -> None:
    resolved = resolve(inputs(), config=LAYERED, channel_id=CHANNEL_ID, prefs=PREFS)
    assert resolved.request.aspect_ratio == "9:16"
    assert resolved.request.creativity == "raw"
    assert resolved.request.prompt == "a lighthouse in ink"
    assert resolved.sources["aspect_ratio"] == PREFERENCE
    assert resolved.sources["creativity"] == PREFERENCE
    assert resolved.sources["suffix"] == PREFERENCE
    # Preferences do not touch what they do not cover.
    assert board_ids(resolved) == [(BOARD_B, 0.9)]
    assert resolved.sources["moodboards"] == CHANNEL


def test_command_options_win_over_everything() -> None:
    resolved = resolve(
        inputs(
            aspect_ratio="2:3",
            creativity="medium",
            styles="opt-style:0.3",
            moodboard=f"{BOARD_C}:0.2",
        ),
        config=LAYERED,
        channel_id=CHANNEL_ID,
        prefs=PREFS,
    )
    request = resolved.request
    assert (request.aspect_ratio, request.creativity) == ("2:3", "medium")
    assert [(s.id, s.strength) for s in request.styles] == [("opt-style", 0.3)]
    assert board_ids(resolved) == [(BOARD_C, 0.2)]
    for key in ("aspect_ratio", "creativity", "styles", "moodboards"):
        assert resolved.sources[key] == OPTION, key
    assert "moodboard_name" not in resolved.sources


def test_each_parameter_resolves_on_its_own() -> None:
    partial = config(server={"creativity": "high"}, channel={"aspect_ratio": "3:2"})
    resolved = resolve(
        inputs(styles="x"), config=partial, channel_id=CHANNEL_ID, prefs={"suffix": "soft"}
    )
    assert resolved.sources == {
        "seed": OPTION,
        "aspect_ratio": CHANNEL,
        "creativity": SERVER,
        "styles": OPTION,
        "suffix": PREFERENCE,
    }
    assert resolved.request.prompt == "a lighthouse soft"


def test_presets_expand_in_options() -> None:
    presets = config(
        styles={"Watercolor": [{"id": "wc1", "strength": 0.8}, {"id": "wc2", "strength": 1.0}]},
        moodboards={"Brand": {"id": BOARD_A, "strength": 0.6}},
    )
    resolved = resolve(
        inputs(styles="watercolor, extra:0.5", moodboard="brand"),
        config=presets,
        channel_id=CHANNEL_ID,
    )
    assert [(s.id, s.strength) for s in resolved.request.styles] == [
        ("wc1", 0.8),
        ("wc2", 1.0),
        ("extra", 0.5),
    ]
    assert board_ids(resolved) == [(BOARD_A, 0.6)]
    assert resolved.sources["moodboard_name"] == "Brand"


def test_references_are_sent_with_their_strength() -> None:
    refs = [Reference(url="https://cdn.example/a.png?ex=1", strength=0.7)]
    resolved = resolve(inputs(references=refs), config=None, channel_id=None)
    assert [(r.image_url, r.strength) for r in resolved.request.image_style_references] == [
        ("https://cdn.example/a.png?ex=1", 0.7)
    ]


def test_a_locked_moodboard_refuses_the_option() -> None:
    locked = config(
        server={"moodboard": {"id": BOARD_A, "strength": 0.5}, "moodboard_locked": True}
    )
    with pytest.raises(UserError, match="moodboard"):
        resolve(inputs(moodboard=BOARD_B), config=locked, channel_id=CHANNEL_ID)
    kept = resolve(inputs(), config=locked, channel_id=CHANNEL_ID)
    assert board_ids(kept) == [(BOARD_A, 0.5)]


def test_an_unlocked_moodboard_can_be_replaced() -> None:
    unlocked = config(
        server={"moodboard": {"id": BOARD_A, "strength": 0.5}, "moodboard_locked": False}
    )
    resolved = resolve(inputs(moodboard=BOARD_B), config=unlocked, channel_id=CHANNEL_ID)
    assert board_ids(resolved) == [(BOARD_B, 0.23)]  # Krea's default strength


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not-a-uuid", "neither a moodboard preset"),
        ("unknownpreset", "neither a moodboard preset"),
        (f"{BOARD_A}:7", "between -0.5 and 1.5"),
        (f"{BOARD_A}:lots", "not a number"),
    ],
)
def test_bad_moodboards_are_explained(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        expand_moodboard(text, config())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (", ".join(f"s{i}" for i in range(11)), "at most 10"),
        ("bad id!", "not a valid style id"),
        ("ok:9", "between -2 and 2"),
        ("ok:x", "not a number"),
    ],
)
def test_bad_styles_are_explained(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        expand_styles(text, config())


def test_presets_count_towards_the_style_limit() -> None:
    many = config(styles={"big": [{"id": f"s{i}", "strength": 1.0} for i in range(8)]})
    assert len(expand_styles("big, a, b", many)) == 10
    with pytest.raises(UserError, match="at most 10"):
        expand_styles("big, a, b, c", many)
