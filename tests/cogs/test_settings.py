"""Issue 5: server, channel and member defaults and presets, through both fakes.

Admins set defaults with /settings, members with /prefer; each test checks the reply the
member saw, what the next /imagine submitted at the fake gateway and what its embed says.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.fake_discord import FakeChannel, FakeMember
from tests.support.checks import job_rows
from tests.support.scenes import (
    embed_fields,
    finished,
    imagine_result,
    press,
    private_reply,
    reply_text,
    slash_reply,
    wait_for_submits,
)
from tests.support.world import World

BOARD_A = "11111111-1111-4111-8111-111111111111"
BOARD_B = "22222222-2222-4222-8222-222222222222"
BOARD_C = "33333333-3333-4333-8333-333333333333"


async def admin(world: World, name: str, options: dict[str, Any], **kwargs: Any) -> str:
    """Run a /settings command as the server's admin; return its (ephemeral) reply."""
    handle = await slash_reply(world, name, options, user=world.guild.admin, **kwargs)
    assert handle.ephemeral, f"{name} answered publicly: {reply_text(handle)!r}"
    return reply_text(handle)


async def submitted_by_imagine(
    world: World,
    *,
    channel: FakeChannel | None = None,
    user: FakeMember | None = None,
    **options: Any,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Run /imagine; return the body the gateway accepted and the result embed's fields."""
    before = len(world.submitted_bodies())
    options.setdefault("prompt", "a lighthouse")
    options.setdefault("seed", 1)
    handle = await world.discord.slash("imagine", options, channel=channel, user=user)
    await handle.wait_for_response()
    result = await world.result_of(handle)
    bodies = await wait_for_submits(world, before + 1)
    return bodies[before], embed_fields(result)


def stored_settings(db_path: Path) -> list[tuple[Any, ...]]:
    """Every row of the settings tables (to prove nothing changed)."""
    connection = sqlite3.connect(db_path)
    try:
        return [
            *connection.execute("SELECT guild_id, channel_id, key, value FROM scope_settings"),
            *connection.execute("SELECT guild_id, kind, name, value FROM presets"),
            *connection.execute("SELECT guild_id, user_id, key, value FROM member_prefs"),
        ]
    finally:
        connection.close()


# --------------------------------------------------------------------------- moodboards


async def test_admin_server_moodboard_is_submitted_for_members(world: World) -> None:
    async with world.bot():
        reply = await admin(
            world, "settings moodboard set", {"moodboard": BOARD_A, "strength": "0.7"}
        )
        assert reply.startswith("✅") and "0.7" in reply
        body, fields = await submitted_by_imagine(world, user=world.guild.member)
    assert body["moodboards"] == [{"id": BOARD_A, "strength": 0.7}]
    assert fields["Moodboard"] == f"`{BOARD_A}` ×0.7 (server default)"


async def test_channel_override_wins_over_the_server(world: World) -> None:
    art = world.discord.add_channel(world.guild, "art")
    async with world.bot():
        await admin(world, "settings moodboard set", {"moodboard": BOARD_A, "strength": "0.5"})
        await admin(
            world,
            "settings moodboard set",
            {"moodboard": BOARD_B, "strength": "0.9", "scope": "channel"},
            channel=art,
        )
        in_art, art_fields = await submitted_by_imagine(world, channel=art)
        elsewhere, general_fields = await submitted_by_imagine(world)
    assert in_art["moodboards"] == [{"id": BOARD_B, "strength": 0.9}]
    assert art_fields["Moodboard"].endswith("(channel default)")
    assert elsewhere["moodboards"] == [{"id": BOARD_A, "strength": 0.5}]
    assert general_fields["Moodboard"].endswith("(server default)")


async def test_an_explicit_option_wins_over_channel_and_server(world: World) -> None:
    art = world.discord.add_channel(world.guild, "art")
    async with world.bot():
        await admin(world, "settings moodboard set", {"moodboard": BOARD_A})
        await admin(
            world, "settings moodboard set", {"moodboard": BOARD_B, "scope": "channel"}, channel=art
        )
        await admin(world, "settings creativity set", {"value": "high"})
        await admin(world, "settings aspect set", {"value": "4:3", "scope": "channel"}, channel=art)
        body, fields = await submitted_by_imagine(
            world, channel=art, moodboard=f"{BOARD_C}:0.3", creativity="low", aspect="2:3"
        )
    assert body["moodboards"] == [{"id": BOARD_C, "strength": 0.3}]
    assert (body["creativity"], body["aspect_ratio"]) == ("low", "2:3")
    assert fields["Moodboard"] == f"`{BOARD_C}` ×0.3"  # no "default" note
    assert (fields["Creativity"], fields["Aspect"]) == ("low", "2:3")


async def test_a_locked_moodboard_cannot_be_replaced_by_members(world: World) -> None:
    async with world.bot():
        reply = await admin(world, "settings moodboard set", {"moodboard": BOARD_A, "lock": True})
        assert "locked" in reply
        handle = await world.imagine(prompt="a cat", moodboard=BOARD_B)
        await handle.wait_until_done()
        assert "moodboard" in (private_reply(handle) or "")
        body, _ = await submitted_by_imagine(world)
    assert world.submitted_bodies() == [body]
    assert body["moodboards"][0]["id"] == BOARD_A


async def test_clearing_the_moodboard_stops_applying_it(world: World) -> None:
    async with world.bot():
        await admin(world, "settings moodboard set", {"moodboard": BOARD_A})
        assert (await admin(world, "settings moodboard clear", {})).startswith("✅")
        again = await admin(world, "settings moodboard clear", {})
        assert "no default moodboard" in again
        body, fields = await submitted_by_imagine(world)
    assert body.get("moodboards", []) == []
    assert "Moodboard" not in fields


# --------------------------------------------------------------------------- who may change


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("settings moodboard set", {"moodboard": BOARD_A}),
        ("settings moodboard clear", {}),
        ("settings styles set", {"styles": "ink"}),
        ("settings creativity set", {"value": "high"}),
        ("settings aspect set", {"value": "16:9"}),
        ("settings count_max set", {"value": 1}),
        ("settings buttons set", {"who": "requester"}),
        ("settings preset add", {"name": "brand", "kind": "moodboard", "value": BOARD_A}),
        ("settings preset remove", {"name": "brand", "kind": "moodboard"}),
    ],
)
async def test_a_member_without_manage_server_is_refused(
    world: World, command: str, options: dict[str, Any]
) -> None:
    async with world.bot() as bot:
        await admin(
            world, "settings preset add", {"name": "brand", "kind": "moodboard", "value": BOARD_B}
        )
        await admin(world, "settings moodboard set", {"moodboard": "brand"})
        before = stored_settings(world.db_path)

        handle = await slash_reply(world, command, options, user=world.guild.member)
        assert handle.response_type == 4 and handle.ephemeral
        assert "Manage Server" in reply_text(handle)

        assert stored_settings(world.db_path) == before
        body, _ = await submitted_by_imagine(world)
        await finished(bot)
    assert body["moodboards"][0]["id"] == BOARD_B


async def test_settings_show_is_readable_by_anyone(world: World) -> None:
    art = world.discord.add_channel(world.guild, "art")
    async with world.bot():
        await admin(
            world, "settings preset add", {"name": "brand", "kind": "moodboard", "value": BOARD_A}
        )
        await admin(world, "settings moodboard set", {"moodboard": "brand", "strength": "0.4"})
        await admin(
            world, "settings creativity set", {"value": "low", "scope": "channel"}, channel=art
        )
        handle = await slash_reply(world, "settings show", user=world.guild.member, channel=art)
        text = reply_text(handle)
        assert handle.ephemeral
        assert "**moodboard**: brand ×0.4 (server)" in text
        assert "**creativity**: low (this channel)" in text
        assert "brand" in text.split("moodboard presets")[-1]

        empty = await slash_reply(world, "settings show", user=world.guild.member)
        assert "creativity" not in reply_text(empty)


# --------------------------------------------------------------------------- presets


async def test_autocomplete_lists_the_servers_presets(world: World) -> None:
    async with world.bot():
        await admin(
            world,
            "settings preset add",
            {"name": "brand", "kind": "moodboard", "value": f"{BOARD_A}:0.6"},
        )
        await admin(
            world,
            "settings preset add",
            {"name": "watercolor", "kind": "styles", "value": "wc1:0.8, wc2"},
        )
        await admin(
            world, "settings preset add", {"name": "warm", "kind": "styles", "value": "sun"}
        )

        boards = await world.discord.autocomplete(
            "imagine", {"prompt": "x", "moodboard": "BR"}, focused="moodboard"
        )
        await boards.wait_for_response()
        assert boards.response_type == 8
        assert boards.choices == [{"name": "brand", "value": "brand"}]

        styles = await world.discord.autocomplete(
            "imagine", {"prompt": "x", "styles": "wa"}, focused="styles"
        )
        await styles.wait_for_response()
        assert [c["value"] for c in styles.choices or []] == ["warm", "watercolor"]

        more = await world.discord.autocomplete(
            "imagine", {"prompt": "x", "styles": "ink:0.5, wat"}, focused="styles"
        )
        await more.wait_for_response()
        assert [c["value"] for c in more.choices or []] == ["ink:0.5, watercolor"]

        listed = await slash_reply(world, "settings preset list", user=world.guild.member)
        assert "**brand** (moodboard)" in reply_text(listed)
        assert "**watercolor** (styles): `wc1` ×0.8, `wc2` ×1" in reply_text(listed)

        body, fields = await submitted_by_imagine(world, styles="watercolor", moodboard="brand")
    assert body["styles"] == [{"id": "wc1", "strength": 0.8}, {"id": "wc2", "strength": 1.0}]
    assert body["moodboards"] == [{"id": BOARD_A, "strength": 0.6}]
    assert fields["Moodboard"] == "brand ×0.6"


async def test_autocomplete_offers_at_most_25_presets(world: World) -> None:
    async with world.bot() as bot:
        for index in range(30):
            await bot.services.config.add_preset(
                world.guild.id, "style", f"style{index:02d}", [{"id": f"s{index}", "strength": 1}]
            )
        handle = await world.discord.autocomplete(
            "imagine", {"prompt": "x", "styles": "style"}, focused="styles"
        )
        await handle.wait_for_response()
    assert handle.response_type == 8
    assert len(handle.choices or []) == 25


async def test_removing_a_preset(world: World) -> None:
    async with world.bot():
        await admin(
            world, "settings preset add", {"name": "brand", "kind": "moodboard", "value": BOARD_A}
        )
        assert (
            await admin(world, "settings preset remove", {"name": "brand", "kind": "moodboard"})
        ).startswith("✅")
        missing = await admin(
            world, "settings preset remove", {"name": "brand", "kind": "moodboard"}
        )
        assert "no moodboard preset" in missing
        listed = await slash_reply(world, "settings preset list")
        assert reply_text(listed) == "No presets yet."
        handle = await world.imagine(prompt="a cat", moodboard="brand")
        await handle.wait_until_done()
        assert "neither a moodboard preset" in (private_reply(handle) or "")
    assert world.submitted_bodies() == []


# --------------------------------------------------------------------------- persistence


async def test_regenerate_keeps_the_moodboard_the_job_was_made_with(world: World) -> None:
    async with world.bot():
        await admin(world, "settings moodboard set", {"moodboard": BOARD_A, "strength": "0.5"})
        _, result = await imagine_result(world, prompt="a cat", seed=1)
        await admin(world, "settings moodboard set", {"moodboard": BOARD_B, "strength": "0.9"})
        click = await press(world, result, "krea:regen:1")
        regenerated = await world.result_of(click)
        fresh, _ = await submitted_by_imagine(world)
        first, again, _ = await wait_for_submits(world, 3)
    assert first["moodboards"] == again["moodboards"] == [{"id": BOARD_A, "strength": 0.5}]
    assert fresh["moodboards"] == [{"id": BOARD_B, "strength": 0.9}]
    assert embed_fields(regenerated)["Moodboard"].startswith(f"`{BOARD_A}` ×0.5")
    rows = job_rows(world.db_path)
    assert rows[0]["params"]["moodboards"] == rows[1]["params"]["moodboards"]


async def test_settings_survive_a_restart(world: World) -> None:
    art = world.discord.add_channel(world.guild, "art")
    async with world.bot():
        await admin(
            world, "settings preset add", {"name": "brand", "kind": "moodboard", "value": BOARD_A}
        )
        await admin(world, "settings moodboard set", {"moodboard": "brand", "strength": "0.8"})
        await admin(world, "settings styles set", {"styles": "ink:0.5"})
        await admin(
            world, "settings aspect set", {"value": "16:9", "scope": "channel"}, channel=art
        )
        await slash_reply(world, "prefer", {"creativity": "raw"})
    async with world.bot():
        shown = reply_text(await slash_reply(world, "settings show", channel=art))
        assert "**moodboard**: brand ×0.8 (server)" in shown
        assert "**aspect ratio**: 16:9 (this channel)" in shown
        body, fields = await submitted_by_imagine(world, channel=art)
    assert body["moodboards"] == [{"id": BOARD_A, "strength": 0.8}]
    assert body["styles"] == [{"id": "ink", "strength": 0.5}]
    assert (body["aspect_ratio"], body["creativity"]) == ("16:9", "raw")
    assert fields["Moodboard"] == "brand ×0.8 (server default)"
    assert fields["Aspect"] == "16:9 (channel default)"
    assert fields["Creativity"] == "raw (your preference)"


# --------------------------------------------------------------------------- bad input


ELEVEN_STYLES = ", ".join(f"s{i}" for i in range(11))


@pytest.mark.parametrize(
    ("command", "options", "explanation"),
    [
        ("settings moodboard set", {"moodboard": "123e4567-nope"}, "neither a moodboard preset"),
        ("settings moodboard set", {"moodboard": "nosuchpreset"}, "neither a moodboard preset"),
        ("settings moodboard set", {"moodboard": BOARD_A, "strength": "5"}, "between -0.5 and 1.5"),
        ("settings moodboard set", {"moodboard": BOARD_A, "strength": "-0.6"}, "between -0.5"),
        ("settings moodboard set", {"moodboard": BOARD_A, "strength": "lots"}, "not a number"),
        ("settings moodboard set", {"moodboard": BOARD_A, "strength": "nan"}, "between"),
        ("settings styles set", {"styles": ELEVEN_STYLES}, "at most 10 styles"),
        ("settings styles set", {"styles": "good, bad id!"}, "not a valid style id"),
        ("settings styles set", {"styles": "ink:9"}, "between -2 and 2"),
        ("settings preset add", {"name": "x", "kind": "moodboard", "value": "nope"}, "moodboard"),
        (
            "settings preset add",
            {"name": "x", "kind": "styles", "value": ELEVEN_STYLES},
            "at most 10",
        ),
        ("settings preset add", {"name": "bad!name", "kind": "styles", "value": "ink"}, "letters"),
    ],
)
async def test_bad_input_is_explained_and_changes_nothing(
    world: World, command: str, options: dict[str, Any], explanation: str
) -> None:
    async with world.bot():
        await admin(world, "settings styles set", {"styles": "keep"})
        before = stored_settings(world.db_path)
        reply = await admin(world, command, options)
        assert reply.startswith("❌") and explanation in reply
        assert "Nothing changed" in reply
        assert stored_settings(world.db_path) == before


async def test_a_moodboard_preset_with_a_strength_is_accepted(world: World) -> None:
    async with world.bot():
        await admin(
            world,
            "settings preset add",
            {"name": "Brand Kit", "kind": "moodboard", "value": f"{BOARD_A} 0.6"},
        )
        reply = await admin(
            world, "settings moodboard set", {"moodboard": "brand kit", "strength": "1.1"}
        )
        assert reply.startswith("✅") and "Brand Kit" in reply
        body, fields = await submitted_by_imagine(world)
    assert body["moodboards"] == [{"id": BOARD_A, "strength": 1.1}]
    assert fields["Moodboard"] == "Brand Kit ×1.1 (server default)"


# --------------------------------------------------------------------------- /prefer


async def test_member_preferences_apply_to_their_images_only(world: World) -> None:
    other = world.discord.add_member(world.guild, "other")
    async with world.bot():
        await admin(world, "settings creativity set", {"value": "high"})
        handle = await slash_reply(
            world, "prefer", {"aspect": "9:16", "creativity": "low", "suffix": "in watercolor"}
        )
        assert handle.ephemeral
        shown = reply_text(handle)
        assert "aspect ratio: 9:16" in shown
        assert "creativity: low" in shown
        assert "suffix: in watercolor" in shown

        mine, my_fields = await submitted_by_imagine(world, prompt="a cat")
        theirs, their_fields = await submitted_by_imagine(world, prompt="a cat", user=other)
        explicit, _ = await submitted_by_imagine(world, prompt="a cat", aspect="1:1")
    assert (mine["aspect_ratio"], mine["creativity"]) == ("9:16", "low")
    assert mine["prompt"] == "a cat in watercolor"
    assert my_fields["Aspect"] == "9:16 (your preference)"
    assert my_fields["Creativity"] == "low (your preference)"
    assert (theirs["aspect_ratio"], theirs["creativity"], theirs["prompt"]) == (
        "1:1",
        "high",
        "a cat",
    )
    assert their_fields["Creativity"] == "high (server default)"
    assert explicit["aspect_ratio"] == "1:1" and explicit["creativity"] == "low"


async def test_prefer_clear_forgets_the_members_defaults(world: World) -> None:
    async with world.bot():
        await slash_reply(world, "prefer", {"aspect": "9:16", "suffix": "in ink"})
        cleared = await slash_reply(world, "prefer", {"clear": True})
        assert "none" in reply_text(cleared)
        body, fields = await submitted_by_imagine(world, prompt="a cat")
    assert (body["aspect_ratio"], body["prompt"]) == ("1:1", "a cat")
    assert fields["Aspect"] == "1:1 (default)"


async def test_the_embed_names_where_each_default_came_from(world: World) -> None:
    art = world.discord.add_channel(world.guild, "art")
    async with world.bot():
        await admin(world, "settings styles set", {"styles": "ink:0.5, grain"})
        await admin(world, "settings creativity set", {"value": "high"})
        await admin(
            world, "settings aspect set", {"value": "16:9", "scope": "channel"}, channel=art
        )
        _, fields = await submitted_by_imagine(world, channel=art)
    assert fields["Styles"] == "`ink` ×0.5, `grain` ×1 (server default)"
    assert fields["Creativity"] == "high (server default)"
    assert fields["Aspect"] == "16:9 (channel default)"
