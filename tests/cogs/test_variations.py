"""Issue 4: the buttons and reactions under a result, and batches, through both fakes.

Every test checks what members see in the fake Discord and what the fake Pixazo gateway
received. The vary values are the ones documented in ``cogs/variations.py``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from bot.fair_use import REQUESTER_ONLY
from bot.job_service import VARY
from fake_pixazo.validation import discord_url_expiry
from tests.fake_discord import Permission, Upload
from tests.support.checks import assert_no_traceback, bot_messages, job_rows
from tests.support.images import png_bytes
from tests.support.scenes import (
    DAY,
    embed_fields,
    finished,
    forge,
    imagine_result,
    is_ephemeral_reply,
    modal_text_inputs,
    press,
    private_reply,
    reply_text,
    slash_reply,
    synced_world,
    wait_for_submits,
    without,
)
from tests.support.world import World

UNAVAILABLE = "This result is no longer available."
UNKNOWN_CONTROL = "This button is no longer available."
BOARD = "123e4567-e89b-12d3-a456-426614174000"
RICH = {
    "prompt": "a lighthouse at dusk",
    "seed": 42,
    "aspect": "4:3",
    "creativity": "medium",
    "styles": "ink:0.5, grain",
    "moodboard": f"{BOARD}:0.4",
}


@pytest_asyncio.fixture
async def clocked(tmp_path: Path) -> AsyncIterator[World]:
    """A world whose gateway judges signed-URL expiry with the world's own clock."""
    async with synced_world(tmp_path) as world:
        yield world


def image_url_of(body: dict[str, object], index: int = -1) -> str:
    """The URL of one style reference in a submitted body."""
    references = body["image_style_references"]
    assert isinstance(references, list)
    return str(references[index]["image_url"])


# --------------------------------------------------------------------------- the buttons


async def test_regenerate_resubmits_the_same_parameters_with_a_new_seed(world: World) -> None:
    async with world.bot():
        _, result = await imagine_result(world, **RICH)
        assert result.custom_ids == [
            "krea:regen:1",
            "krea:vary:subtle:1",
            "krea:vary:strong:1",
            "krea:remix:1",
            "krea:delete:1",
            "krea:reframe:1",
        ]
        click = await press(world, result, "krea:regen:1")
        assert click.response_type == 5  # acknowledged at once, publicly
        new = await world.result_of(click)
        original, again = await wait_for_submits(world, 2)

    assert again["seed"] != original["seed"]
    assert without(again, "seed") == without(original, "seed")
    assert again["moodboards"] == [{"id": BOARD, "strength": 0.4}]
    assert new.id != result.id and not result.deleted
    assert embed_fields(new)["Seed"] == f"`{again['seed']}`"


async def test_vary_subtle_keeps_the_seed_and_uses_the_result_strongly(world: World) -> None:
    async with world.bot():
        _, result = await imagine_result(world, **RICH)
        click = await press(world, result, "krea:vary:subtle:1")
        await world.result_of(click)
        original, varied = await wait_for_submits(world, 2)

    subtle = VARY["subtle"]
    assert (subtle.strength, subtle.creativity) == (1.2, "low")
    assert varied["seed"] == original["seed"] == 42
    assert varied["creativity"] == "low"
    assert varied["image_style_references"][-1]["strength"] == 1.2
    assert "/krea-1-42.png?" in image_url_of(varied)  # the result image itself
    assert len(varied["image_style_references"]) == 1
    unchanged = ("prompt", "aspect_ratio", "styles", "moodboards")
    assert {k: varied[k] for k in unchanged} == {k: original[k] for k in unchanged}


async def test_vary_strong_takes_a_new_seed_and_uses_the_result_lightly(world: World) -> None:
    async with world.bot():
        _, result = await imagine_result(world, **RICH)
        click = await press(world, result, "krea:vary:strong:1")
        await world.result_of(click)
        original, varied = await wait_for_submits(world, 2)

    strong = VARY["strong"]
    assert (strong.strength, strong.creativity) == (0.6, "high")
    assert varied["seed"] != original["seed"]
    assert varied["creativity"] == "high"
    assert varied["image_style_references"] == [
        {"image_url": image_url_of(varied), "strength": 0.6}
    ]
    assert "/krea-1-42.png?" in image_url_of(varied)
    assert varied["prompt"] == original["prompt"]
    assert varied["styles"] == original["styles"]


async def test_remix_opens_a_prefilled_modal_and_runs_the_edited_prompt(world: World) -> None:
    async with world.bot():
        _, result = await imagine_result(world, **RICH)
        click = await press(world, result, "krea:remix:1")
        assert click.response_type == 9
        prompt_input, seed_input = modal_text_inputs(click)
        assert prompt_input["value"] == "a lighthouse at dusk"
        assert seed_input["value"] == "42"

        submitted = await world.discord.submit_modal(
            click,
            {
                prompt_input["custom_id"]: "a lighthouse at dawn",
                seed_input["custom_id"]: "7",
            },
        )
        await submitted.wait_for_response()
        new = await world.result_of(submitted)
        original, remixed = await wait_for_submits(world, 2)

    assert remixed["prompt"] == "a lighthouse at dawn"
    assert remixed["seed"] == 7
    assert without(remixed, "prompt", "seed") == without(original, "prompt", "seed")
    assert new.embeds[0]["description"] == "a lighthouse at dawn"


async def test_a_remix_form_opened_before_a_restart_still_works_after_it(world: World) -> None:
    async with world.bot():
        _, result = await imagine_result(world, **RICH)
        click = await press(world, result, "krea:remix:1")
        prompt_input, seed_input = modal_text_inputs(click)
    async with world.bot():
        submitted = await world.discord.submit_modal(
            click,
            {prompt_input["custom_id"]: "a lighthouse in fog", seed_input["custom_id"]: "9"},
        )
        await submitted.wait_for_response()
        new = await world.result_of(submitted)
        _, remixed = await wait_for_submits(world, 2)
    assert (remixed["prompt"], remixed["seed"]) == ("a lighthouse in fog", 9)
    assert new.embeds[0]["description"] == "a lighthouse in fog"


async def test_remix_with_a_bad_seed_is_explained_and_sends_nothing(world: World) -> None:
    async with world.bot():
        _, result = await imagine_result(world, **RICH)
        click = await press(world, result, "krea:remix:1")
        prompt_input, seed_input = modal_text_inputs(click)
        submitted = await world.discord.submit_modal(
            click, {prompt_input["custom_id"]: "x", seed_input["custom_id"]: "seven"}
        )
        await submitted.wait_for_response()
        assert submitted.ephemeral
        assert "seed" in reply_text(submitted)
        await submitted.wait_until_done()
    assert len(world.submitted_bodies()) == 1


async def test_reframe_makes_one_job_per_chosen_ratio(world: World) -> None:
    async with world.bot():
        _, result = await imagine_result(world, **RICH)
        options = result.component("krea:reframe:1")
        assert options is not None
        offered = [o["value"] for o in options["options"]]
        assert "4:3" not in offered and {"16:9", "9:16"} <= set(offered)

        click = await press(world, result, "krea:reframe:1", values=["16:9", "9:16"])
        assert click.response_type == 5
        original, *reframed = await wait_for_submits(world, 3)
        messages = await world.discord.wait_for(
            lambda: (
                [m for m in click.messages if m.attachments]
                if sum(1 for m in click.messages if m.attachments) == 2
                else None
            ),
            timeout=10,
        )

    assert sorted(body["aspect_ratio"] for body in reframed) == ["16:9", "9:16"]
    for body in reframed:
        assert without(body, "aspect_ratio") == without(original, "aspect_ratio")
    assert len(world.submitted_bodies()) == 3
    aspects = sorted(embed_fields(m)["Aspect"] for m in messages)
    assert [a.split()[0] for a in aspects] == ["16:9", "9:16"]


# --------------------------------------------------------------------------- delete


async def test_delete_by_the_requester_removes_the_result(world: World) -> None:
    async with world.bot():
        _, result = await imagine_result(world, prompt="a cat", seed=1)
        click = await press(world, result, "krea:delete:1")
        await world.discord.wait_for(lambda: result.deleted, what="the result deleted")
        await click.wait_for_followup()
        assert is_ephemeral_reply(click)


async def test_delete_by_a_stranger_is_refused_and_the_message_stays(world: World) -> None:
    stranger = world.discord.add_member(world.guild, "stranger")
    async with world.bot():
        _, result = await imagine_result(world, prompt="a cat", seed=1)
        click = await press(world, result, "krea:delete:1", user=stranger)
        assert click.response_type == 4 and click.ephemeral
        assert "Manage Messages" in reply_text(click)
        await click.wait_until_done()
        assert not result.deleted
        assert world.discord.message(result.id).deleted is False


async def test_delete_by_a_member_with_manage_messages_is_allowed(world: World) -> None:
    moderator = world.discord.add_member(
        world.guild, "moderator", permissions=Permission.MANAGE_MESSAGES
    )
    async with world.bot():
        _, result = await imagine_result(world, prompt="a cat", seed=1)
        await press(world, result, "krea:delete:1", user=moderator)
        await world.discord.wait_for(lambda: result.deleted, what="the result deleted")


# --------------------------------------------------------------------------- persistence


async def test_buttons_work_after_the_bot_restarted(world: World) -> None:
    async with world.bot() as bot:
        _, result = await imagine_result(world, **RICH)
        await finished(bot)
    # A new bot process: nothing in memory, the same database.
    async with world.bot():
        click = await press(world, result, "krea:vary:subtle:1")
        assert click.response_type == 5
        new = await world.result_of(click)
        original, varied = await wait_for_submits(world, 2)
        remix = await press(world, result, "krea:remix:1")
        assert remix.response_type == 9

    assert varied["seed"] == original["seed"]
    assert varied["image_style_references"][-1]["strength"] == 1.2
    assert new.filenames[0].startswith("krea-2-")


async def test_a_restart_while_delivering_does_not_post_the_result_twice(
    clocked: World,
) -> None:
    world = clocked
    async with world.bot() as bot:
        _, result = await imagine_result(world, prompt="a fox", seed=3)
        await finished(bot)
    # As if the bot stopped after posting the image but before recording it.
    connection = sqlite3.connect(world.db_path)
    with connection:
        connection.execute("UPDATE jobs SET state = 'delivering' WHERE id = 1")
    connection.close()
    world.advance(3600)  # the interaction token is long gone
    async with world.bot() as bot:
        await finished(bot)
        assert job_rows(world.db_path)[0]["state"] == "completed"
        with_images = [m for m in bot_messages(world.discord) if m.attachments and not m.deleted]
        assert with_images == [result]
        assert "krea:regen:1" in result.custom_ids
        click = await press(world, result, "krea:regen:1")
        await world.result_of(click)
    assert len(world.submitted_bodies()) == 2


async def test_old_reference_is_refetched_before_it_is_sent(clocked: World) -> None:
    world = clocked
    async with world.bot():
        _, result = await imagine_result(
            world,
            prompt="in the style of this",
            seed=5,
            reference=Upload("style.png", png_bytes("teal"), "image/png"),
        )
        assert "ref-1.jpg" in result.filenames
        (first,) = await wait_for_submits(world, 1)
        old_url = image_url_of(first, 0)

        world.advance(2 * DAY)  # Discord's signed URLs expire after 24 h
        expiry = discord_url_expiry(old_url)
        assert expiry is not None and expiry < world.clock()

        click = await press(world, result, "krea:regen:1")
        await world.result_of(click)
        _, again = await wait_for_submits(world, 2)

        # Without the re-fetch the gateway refuses the old URL.
        body = {**first, "seed": 6}
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                world.pixazo.base_url
                + "/krea-2-large-text-to-image/v1/krea-2-large-text-to-image-request",
                json=body,
                headers={"Ocp-Apim-Subscription-Key": world.pixazo.api_key},
            ) as refused,
        ):
            assert refused.status == 400
            assert "expired" in await refused.text()

    new_url = image_url_of(again, 0)
    assert new_url != old_url
    assert "/ref-1.jpg?" in new_url  # the copy kept on the result message
    new_expiry = discord_url_expiry(new_url)
    assert new_expiry is not None and new_expiry > world.clock()
    assert again["image_style_references"][0]["strength"] == 1.0
    statuses = [r.status for r in world.pixazo.submits()]
    assert statuses[:2] == [202, 202]


async def test_vary_days_later_sends_a_fresh_url_of_the_result(clocked: World) -> None:
    world = clocked
    async with world.bot() as bot:
        _, result = await imagine_result(world, prompt="a fox", seed=3)
        await finished(bot)
    world.advance(3 * DAY)
    async with world.bot():
        click = await press(world, result, "krea:vary:strong:1")
        await world.result_of(click)
        _, varied = await wait_for_submits(world, 2)
    expiry = discord_url_expiry(image_url_of(varied))
    assert expiry is not None and expiry > world.clock()
    assert [r.status for r in world.pixazo.submits()] == [202, 202]


@pytest.mark.parametrize(
    ("custom_id", "answer"),
    [
        ("krea:regen:999999", UNAVAILABLE),
        ("krea:regen:abc", UNKNOWN_CONTROL),
        # Longer than the template allows (and than SQLite's integers).
        ("krea:regen:9999999999999999999", UNKNOWN_CONTROL),
        ("krea:vary:wild:1", UNKNOWN_CONTROL),
        ("krea:bogus", UNKNOWN_CONTROL),
        ("someone-elses-bot:button:1", UNKNOWN_CONTROL),
    ],
)
async def test_forged_custom_id_is_answered_no_longer_available(
    world: World, custom_id: str, answer: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with world.bot():
        _, result = await imagine_result(world, prompt="a cat", seed=1)
        forge(result, "krea:regen:1", custom_id)  # a tampered message carries the bad id
        click = await press(world, result, custom_id)
        assert click.response_type == 4 and click.ephemeral
        assert reply_text(click) == answer
        await click.wait_until_done()
    assert len(world.submitted_bodies()) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert world.discord.errors == []


async def test_a_button_of_a_deleted_job_row_is_no_longer_available(world: World) -> None:
    async with world.bot() as bot:
        _, result = await imagine_result(world, prompt="a cat", seed=1)
        await finished(bot)
        await bot.services.db.write("DELETE FROM jobs")
        for custom_id in ("krea:regen:1", "krea:remix:1", "krea:delete:1"):
            click = await press(world, result, custom_id)
            assert reply_text(click) == UNAVAILABLE and click.ephemeral
        select = await press(world, result, "krea:reframe:1", values=["16:9"])
        assert reply_text(select) == UNAVAILABLE
    assert not result.deleted
    assert len(world.submitted_bodies()) == 1


async def test_a_result_of_another_server_is_not_available_here(world: World) -> None:
    other = world.discord.add_guild("Other")
    async with world.bot():
        _, result = await imagine_result(world, prompt="a cat", seed=1)
        # The same custom_id, pressed on a message in another server.
        bait = await world.discord.post_message(other.channel, "hi", author=other.member)
        bait.components = result.components
        click = await press(world, bait, "krea:regen:1", user=other.member)
        assert reply_text(click) == UNAVAILABLE and click.ephemeral
    assert len(world.submitted_bodies()) == 1


async def test_new_jobs_link_back_to_their_parent(world: World) -> None:
    async with world.bot():
        _, result = await imagine_result(world, **RICH)
        click = await press(world, result, "krea:regen:1")
        new = await world.result_of(click)

    made_from = embed_fields(new)["Made from"]
    link = f"https://discord.com/channels/{world.guild.id}/{result.channel_id}/{result.id}"
    assert made_from == f"regenerate of [job #1]({link})"
    rows = job_rows(world.db_path)
    assert rows[0]["parent_id"] is None
    assert (rows[1]["parent_id"], rows[1]["variant"]) == (1, "regenerate")


# --------------------------------------------------------------------------- who may press


async def test_anyone_may_regenerate_by_default_and_the_new_job_is_theirs(world: World) -> None:
    other = world.discord.add_member(world.guild, "other")
    async with world.bot():
        _, result = await imagine_result(world, prompt="a cat", seed=1)
        click = await press(world, result, "krea:regen:1", user=other)
        new = await world.result_of(click)
    assert embed_fields(new)["Requested by"] == f"<@{other.id}>"
    assert job_rows(world.db_path)[1]["user_id"] == other.id


async def test_requester_only_setting_refuses_another_member(world: World) -> None:
    other = world.discord.add_member(world.guild, "other")
    async with world.bot() as bot:
        setting = await slash_reply(
            world, "settings buttons set", {"who": "requester"}, user=world.guild.admin
        )
        assert setting.ephemeral and reply_text(setting).startswith("✅")
        _, result = await imagine_result(world, prompt="a cat", seed=1)

        for custom_id in ("krea:regen:1", "krea:vary:subtle:1", "krea:remix:1"):
            click = await press(world, result, custom_id, user=other)
            assert click.response_type == 4 and click.ephemeral
            assert reply_text(click) == REQUESTER_ONLY
        select = await press(world, result, "krea:reframe:1", user=other, values=["16:9"])
        assert reply_text(select) == REQUESTER_ONLY

        await finished(bot)  # the result is recorded, so the reaction finds it
        await world.discord.react(result, "🔁", other)  # the same rule for reactions
        mine = await press(world, result, "krea:regen:1")  # the requester still may
        await world.result_of(mine)
        await mine.wait_until_done()
    assert len(world.submitted_bodies()) == 2


# --------------------------------------------------------------------------- reactions


async def test_regenerate_reaction_starts_a_new_job(world: World) -> None:
    other = world.discord.add_member(world.guild, "other")
    async with world.bot() as bot:
        _, result = await imagine_result(world, **RICH)
        await finished(bot)  # the result is recorded, so reactions find it
        await world.discord.react(result, "🔁", other)
        reply = await world.discord.wait_for_message(
            lambda m: m.id != result.id and bool(m.attachments), timeout=10
        )
        original, again = await wait_for_submits(world, 2)
    # The new job's message answers the result it came from.
    replies_to_result = [
        m
        for m in bot_messages(world.discord)
        if (m.message_reference or {}).get("message_id") == str(result.id)
    ]
    assert replies_to_result
    assert without(again, "seed") == without(original, "seed")
    assert again["seed"] != original["seed"]
    assert embed_fields(reply)["Requested by"] == f"<@{other.id}>"
    assert not reply.pinged_user_ids  # replying pings nobody


async def test_delete_reaction_by_the_requester_deletes(world: World) -> None:
    async with world.bot() as bot:
        _, result = await imagine_result(world, prompt="a cat", seed=1)
        await finished(bot)  # the result is recorded, so reactions find it
        await world.discord.react(result, "❌", world.guild.member)
        await world.discord.wait_for(lambda: result.deleted, what="the result deleted")


async def test_delete_reaction_by_a_stranger_is_ignored(world: World) -> None:
    stranger = world.discord.add_member(world.guild, "stranger")
    async with world.bot() as bot:
        _, result = await imagine_result(world, prompt="a cat", seed=1)
        await finished(bot)  # the result is recorded, so reactions find it
        await world.discord.react(result, "❌", stranger)
        # A later, visible action proves the reaction was handled before it.
        await world.discord.react(result, "🔁", stranger)
        await wait_for_submits(world, 2)
        await world.discord.wait_for_message(
            lambda m: m.id != result.id and bool(m.attachments), timeout=10
        )
    assert not result.deleted
    assert not world.discord.find_requests("DELETE", f"/messages/{result.id}")


# --------------------------------------------------------------------------- batches


async def test_a_batch_of_four_is_one_message_showing_each_image_once(world: World) -> None:
    async with world.bot():
        handle, grid = await imagine_result(world, prompt="four cats", seed=100, count=4)
        bodies = await wait_for_submits(world, 4)
        await handle.wait_until_done()

        assert sorted(b["seed"] for b in bodies) == [100, 101, 102, 103]
        assert all(without(b, "seed") == without(bodies[0], "seed") for b in bodies)
        results = [m for m in bot_messages(world.discord) if m.attachments]
        assert results == [grid]
        # Each image once (Discord shows the attachments as a gallery), no grid repeating them.
        assert grid.filenames == [f"krea-{i}-{99 + i}.png" for i in range(1, 5)]
        assert all("image" not in embed and "thumbnail" not in embed for embed in grid.embeds)
        assert grid.custom_ids == [
            *(f"krea:open:{i}" for i in range(1, 5)),
            *(f"krea:vary:subtle:{i}" for i in range(1, 5)),
            "krea:delete:1",
        ]
        assert "#2 `101`" in grid.embeds[0]["fields"][0]["value"]

        opened_click = await press(world, grid, "krea:open:2")
        opened = await world.result_of(opened_click)
        assert opened.filenames == ["krea-2-101.png"]
        tile = grid.files[grid.filenames.index("krea-2-101.png")]
        assert opened.files[0] == tile
        assert "krea:regen:2" in opened.custom_ids

        vary = await press(world, grid, "krea:vary:subtle:3")
        await world.result_of(vary)
        varied = (await wait_for_submits(world, 5))[4]
    assert varied["seed"] == 102
    assert "/krea-3-102.png?" in image_url_of(varied)
    assert len(world.submitted_bodies()) == 5
    assert_no_traceback(bot_messages(world.discord))


async def test_a_batch_of_four_downloads_each_image_exactly_once(world: World) -> None:
    async with world.bot() as bot:
        await imagine_result(world, prompt="four cats", seed=100, count=4)
        await finished(bot)

    downloads = world.pixazo.media_calls()
    assert len(downloads) == 4  # N images, N downloads: delivery is handed the bytes
    assert len({call.request_id for call in downloads}) == 4
    assert {r["state"] for r in job_rows(world.db_path)} == {"completed"}


async def test_delete_on_a_grid_removes_the_grid_even_after_open(world: World) -> None:
    async with world.bot():
        _, grid = await imagine_result(world, prompt="four cats", seed=100, count=4)
        opened_click = await press(world, grid, "krea:open:1")
        opened = await world.result_of(opened_click)
        await press(world, grid, "krea:delete:1")
        await world.discord.wait_for(lambda: grid.deleted, what="the grid deleted")
        assert not opened.deleted


async def test_count_above_the_server_maximum_is_refused(world: World) -> None:
    async with world.bot():
        await slash_reply(world, "settings count_max set", {"value": 2}, user=world.guild.admin)
        handle = await world.imagine(prompt="cats", count=3)
        await handle.wait_until_done()
        assert "at most 2" in (private_reply(handle) or "")
        assert handle.original is not None and handle.original.deleted  # no public trace
        _, grid = await imagine_result(world, prompt="cats", count=2, seed=9)
        assert grid.filenames == ["krea-1-9.png", "krea-2-10.png"]
    assert sorted(b["seed"] for b in world.submitted_bodies()) == [9, 10]


async def test_delete_reaction_by_a_moderator_deletes(world: World) -> None:
    moderator = world.discord.add_member(
        world.guild, "moderator", permissions=Permission.MANAGE_MESSAGES
    )
    async with world.bot() as bot:
        _, result = await imagine_result(world, prompt="a cat", seed=1)
        await finished(bot)  # the result is recorded, so the reaction finds it
        await world.discord.react(result, "❌", moderator)
        await world.discord.wait_for(lambda: result.deleted, what="the result deleted")


async def test_references_outlive_the_message_they_were_first_kept_on(clocked: World) -> None:
    world = clocked
    async with world.bot() as bot:
        _, first = await imagine_result(
            world,
            prompt="in the style of this",
            seed=5,
            reference=Upload("style.png", png_bytes("teal"), "image/png"),
        )
        click = await press(world, first, "krea:regen:1")
        second = await world.result_of(click)
        assert "ref-1.jpg" in second.filenames  # the reference travels with each result
        await press(world, first, "krea:delete:1")
        await world.discord.wait_for(lambda: first.deleted, what="the first result deleted")
        await finished(bot)

        world.advance(2 * DAY)
        again = await press(world, second, "krea:regen:2")
        await world.result_of(again)
        bodies = await wait_for_submits(world, 3)
    url = image_url_of(bodies[2], 0)
    expiry = discord_url_expiry(url)
    assert expiry is not None and expiry > world.clock()
    assert str(second.channel_id) in url and "/ref-1.jpg?" in url
    assert [r.status for r in world.pixazo.submits()] == [202, 202, 202]


async def test_vary_from_a_grid_after_the_opened_copy_was_deleted(world: World) -> None:
    async with world.bot():
        _, grid = await imagine_result(world, prompt="four cats", seed=100, count=4)
        opened = await world.result_of(await press(world, grid, "krea:open:1"))
        await press(world, opened, "krea:delete:1")
        await world.discord.wait_for(lambda: opened.deleted, what="the opened copy deleted")
        varied = await press(world, grid, "krea:vary:subtle:1")
        await world.result_of(varied)
        bodies = await wait_for_submits(world, 5)
    reference = bodies[-1]["image_style_references"][0]["image_url"]
    # The image of job 1 as it still stands on the grid message.
    assert "/krea-1-100." in reference and not grid.deleted
    assert [r.status for r in world.pixazo.submits()] == [202] * 5


async def test_retry_whose_references_are_gone_says_so_and_sends_nothing(world: World) -> None:
    async with world.bot():
        _, first = await imagine_result(
            world, prompt="a fox", seed=5, reference=Upload("ref.png", png_bytes(), "image/png")
        )
        world.pixazo.next_outcome("ERROR", "GPU worker crashed")
        failed = await press(world, first, "krea:regen:1")
        failed_message = await failed.wait_for_original(
            lambda m: "krea:retry:2" in m.custom_ids, timeout=10
        )
        # The references of job 2 live on job 1's result, which a moderator deletes.
        await world.discord.delete_message(first)
        retry = await press(world, failed_message, "krea:retry:2")
        await retry.wait_until_done()
        assert "no longer available" in reply_text(retry)
        assert "Nothing was sent" in reply_text(retry)
    assert len(world.pixazo.submits()) == 2  # the first image and the failed regenerate
