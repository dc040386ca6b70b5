"""What the real Discord and the real gateway would do, and what members and admins see.

The fake Discord here holds the bot to Discord's own spec (every body validated against
``openapi.json``, emoji, per-attachment upload limits, rate limits, intents). These scenes
are the places where the bot once disagreed with it.
"""

from __future__ import annotations

from typing import Any

import pytest

from bot.pixazo.models import RANDOM_SEED_MAX
from tests.fake_discord import NITRO_UPLOAD_LIMIT, Permission, Upload
from tests.fake_discord.models import CHANNEL_VOICE
from tests.support.checks import bot_messages, job_rows
from tests.support.images import png_bytes
from tests.support.scenes import (
    finished,
    imagine_result,
    is_ephemeral_reply,
    modal_text_inputs,
    press,
    private_reply,
    slash_reply,
)
from tests.support.world import World

PROMPT = "a lantern in the fog"
TEN_MIB = 10 * 1024 * 1024


def deny(world: World, channel: Any, permission: int) -> None:
    """Take ``permission`` away from the bot in ``channel``."""
    world.discord.set_overwrite(channel, world.guild.bot_member, deny=permission)


# --------------------------------------------------------------------------- permissions


@pytest.mark.parametrize(
    ("permission", "name"),
    [
        (Permission.ATTACH_FILES, "Attach Files"),
        (Permission.EMBED_LINKS, "Embed Links"),
        (Permission.READ_MESSAGE_HISTORY, "Read Message History"),
    ],
)
async def test_imagine_is_refused_before_paying_where_the_bot_cannot_deliver(
    world: World, permission: int, name: str
) -> None:
    deny(world, world.guild.channel, permission)
    async with world.bot():
        handle = await world.imagine(prompt=PROMPT)
        await handle.wait_until_done()

    text = private_reply(handle) or ""
    assert name in text and "Nothing was sent" in text
    assert is_ephemeral_reply(handle)
    assert world.pixazo.requests == [] and job_rows(world.db_path) == []


async def test_a_button_is_refused_before_paying_where_the_bot_cannot_deliver(
    world: World,
) -> None:
    async with world.bot() as bot:
        _, result = await imagine_result(world, prompt=PROMPT, seed=3)
        await finished(bot)
        deny(world, world.guild.channel, Permission.ATTACH_FILES)
        await world.discord.wait_for(
            lambda: (
                bot.get_channel(world.guild.channel.id) is not None
                and not bot.get_channel(world.guild.channel.id)  # type: ignore[union-attr]
                .permissions_for(bot.get_guild(world.guild.id).me)  # type: ignore[union-attr]
                .attach_files
            ),
            what="the bot to see the new overwrite",
        )
        click = await press(world, result, "krea:regen:1")
    assert "Attach Files" in (private_reply(click) or "")
    assert len(world.pixazo.submits()) == 1


# --------------------------------------------------------------------------- voice chats


async def test_imagine_works_in_a_voice_channels_chat(world: World) -> None:
    voice = world.discord.add_channel(world.guild, "Lounge", type=CHANNEL_VOICE)
    async with world.bot():
        handle = await world.discord.slash("imagine", {"prompt": PROMPT, "seed": 1}, channel=voice)
        await handle.wait_for_response()
        result = await world.result_of(handle)
        click = await press(world, result, "krea:vary:subtle:1")  # re-reads the result
        varied = await world.result_of(click)
    assert result.channel_id == voice.id and varied.attachments
    assert len(world.pixazo.submits()) == 2


async def test_a_voice_chat_without_connect_is_refused_up_front(world: World) -> None:
    voice = world.discord.add_channel(world.guild, "Lounge", type=CHANNEL_VOICE)
    deny(world, voice, Permission.CONNECT)
    async with world.bot():
        handle = await world.discord.slash("imagine", {"prompt": PROMPT}, channel=voice)
        await handle.wait_until_done()
    assert "Connect" in (private_reply(handle) or "")
    assert world.pixazo.requests == []


# --------------------------------------------------------------------------- attachments


async def test_a_pdf_named_png_is_refused_by_its_bytes_before_anything_is_paid(
    world: World,
) -> None:
    fake_png = Upload("cat.png", b"%PDF-1.7\n" + b"0" * 2000, "image/png")
    async with world.bot():
        handle = await world.imagine(prompt=PROMPT, reference=fake_png)
        await handle.wait_until_done()

    text = private_reply(handle) or ""
    assert "`reference`" in text and "Nothing was sent" in text
    assert is_ephemeral_reply(handle)
    assert world.pixazo.requests == [] and job_rows(world.db_path) == []


# --------------------------------------------------------------------------- intents


async def test_the_bot_asks_only_for_the_events_it_handles(world: World) -> None:
    async with world.bot() as bot:
        report = await world.discord.storm(rate=500.0, duration=0.4)
        identified = world.discord.identify_log[-1]
        assert identified.accepted
    intents = bot.intents
    assert intents.guilds and intents.guild_reactions
    assert not (intents.guild_messages or intents.guild_typing or intents.members)
    assert not intents.message_content and not intents.presences
    assert report.generated > 0
    # Only the reactions of the storm reach the bot; messages, typing, members never do.
    assert report.delivered < report.generated / 2


# --------------------------------------------------------------------------- long output


async def test_settings_show_stays_under_discords_limit(world: World) -> None:
    admin = world.guild.admin
    async with world.bot():
        for index in range(70):
            name = f"preset-{index:02d}-" + "x" * 20
            await slash_reply(
                world,
                "settings preset add",
                {"name": name[:32], "kind": "styles", "value": f"style-{index}"},
                user=admin,
            )
        shown = await slash_reply(world, "settings show", {})
    text = str((shown.response.data or {}).get("content")) if shown.response else ""
    assert 0 < len(text) <= 2000 and text.endswith("…")
    assert world.discord.errors == []


async def test_the_remix_form_takes_as_long_a_prompt_as_imagine(world: World) -> None:
    async with world.bot(MAX_PROMPT_LENGTH=3000):
        long_prompt = "a very long prompt " * 150  # 2850 characters
        _, result = await imagine_result(world, prompt=long_prompt, seed=4)
        form = await press(world, result, "krea:remix:1")
    prompt_input, _ = modal_text_inputs(form)
    assert prompt_input["max_length"] == 3000
    assert prompt_input["value"] == long_prompt.strip()
    assert world.discord.errors == []


# --------------------------------------------------------------------------- seeds


async def test_seeds_the_bot_picks_fit_32_bits_and_a_members_big_seed_is_kept(
    world: World,
) -> None:
    async with world.bot():
        await imagine_result(world, prompt=PROMPT)
        await imagine_result(world, prompt=PROMPT, seed=2**40 + 7)
    picked, given = (b["seed"] for b in world.submitted_bodies())
    assert 0 <= picked <= RANDOM_SEED_MAX
    assert given == 2**40 + 7


# --------------------------------------------------------------------------- uploads


async def test_a_reaction_started_job_uses_the_servers_upload_limit(world: World) -> None:
    nitro = world.discord.add_member(world.guild, "nitro", nitro_upload_limit=NITRO_UPLOAD_LIMIT)
    other = world.discord.add_member(world.guild, "other")
    world.pixazo.long_edge = 2048
    world.pixazo.noisy = True  # a PNG over the 10 MiB of a server without boosts
    async with world.bot() as bot:
        _, result = await imagine_result(world, prompt=PROMPT, seed=8, user=nitro)
        await finished(bot)
        await world.discord.react(result, "🔁", other)
        reply = await world.discord.wait_for_message(
            lambda m: m.id != result.id and bool(m.attachments), timeout=20
        )
    assert result.attachments[0].size > TEN_MIB  # the member's Nitro limit allowed it as is
    assert result.filenames[0].endswith(".png")
    assert reply.attachments[0].size <= TEN_MIB  # the bot's token: the server's limit
    assert world.discord.errors == []


# --------------------------------------------------------------------------- Discord's spec


async def test_nothing_the_bot_sent_in_a_rich_scene_was_refused(world: World) -> None:
    upload = Upload("ref.png", png_bytes("blue", (64, 64)), "image/png")
    async with world.bot():
        _, single = await imagine_result(world, prompt=PROMPT, reference=upload, seed=1)
        _, batch = await imagine_result(world, prompt=PROMPT, count=4, seed=10)
        for custom_id in ("krea:open:3", "krea:vary:subtle:4"):
            await world.result_of(await press(world, batch, custom_id))
        await world.result_of(await press(world, single, "krea:vary:strong:1"))
        await slash_reply(world, "jobs", {})
    assert world.discord.errors == [], world.discord.errors
    assert all(m.attachments for m in (single, batch))
    assert len(bot_messages(world.discord)) >= 5


# --------------------------------------------------------------------------- errors


async def test_an_unexpected_error_after_the_deferral_stays_private(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.job_service import JobService

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the database is on fire")

    monkeypatch.setattr(JobService, "imagine", broken)
    async with world.bot():
        handle = await world.imagine(prompt=PROMPT)
        await handle.wait_until_done()

    text = private_reply(handle) or ""
    assert "Something went wrong on our side" in text and "reference" in text
    assert "fire" not in text and "RuntimeError" not in text
    assert handle.original is not None and handle.original.deleted  # no public "thinking"
    assert [m for m in bot_messages(world.discord, include_ephemeral=False) if not m.deleted] == []


# --------------------------------------------------------------------------- shards


async def test_a_bot_on_the_recommended_shards_serves_every_server(tmp_path: Any) -> None:
    from tests.support.world import make_world

    async with make_world(tmp_path, discord_options={"shards": 2, "max_concurrency": 2}) as world:
        while len({(g.id >> 22) % 2 for g in world.discord.guilds.values()}) < 2:
            world.discord.advance(0.001)
            world.discord.add_guild(f"guild {len(world.discord.guilds)}")
        async with world.bot() as bot:
            assert bot.shard_count == 2 and set(bot.shard_latencies()) == {0, 1}
            for guild in world.discord.guilds.values():
                handle = await world.discord.slash("imagine", {"prompt": PROMPT}, guild=guild)
                await handle.wait_for_response()
                assert (await world.result_of(handle)).attachments
        identified = world.discord.identify_log[-2:]
    assert sorted(r.shard for r in identified) == [(0, 2), (1, 2)]
    assert not any(r.too_soon for r in identified)  # two buckets: no wait, no refusal
