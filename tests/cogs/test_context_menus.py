"""Issue 17: "Imagine in this style" and "Avoid this style" on any message, through both fakes.

A member posts pictures; another uses Apps → the menu on that message, fills the form, and
gets a result made from those pictures. Every test checks what members saw in the fake
Discord and what the fake Pixazo gateway received.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import pytest
import pytest_asyncio

from bot.commands_sync import command_hash
from cogs.context_menus import AVOID_MENU, IMAGINE_MENU, PROMPT_FIELD, STRENGTH_FIELD
from fake_pixazo import FakePixazo
from fake_pixazo.validation import discord_url_expiry
from tests.fake_discord import (
    FakeDiscord,
    FakeMember,
    FakeMessage,
    InteractionHandle,
    Permission,
    Upload,
)
from tests.support.checks import assert_no_traceback, bot_messages, job_rows
from tests.support.images import noisy_png, png_bytes
from tests.support.scenes import (
    DAY,
    embed_fields,
    finished,
    imagine_result,
    is_ephemeral_reply,
    modal_text_inputs,
    press,
    private_reply,
    reply_text,
    synced_world,
    wait_for_submits,
)
from tests.support.world import World

PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" + b"0" * 200


@pytest_asyncio.fixture
async def clocked(tmp_path: Path) -> AsyncIterator[World]:
    """A world whose gateway judges signed-URL expiry with the world's own clock."""
    async with synced_world(tmp_path) as world:
        yield world


@contextlib.asynccontextmanager
async def world_without_message_content(tmp_path: Path) -> AsyncIterator[World]:
    """Both fakes, the application without the Message Content intent (as kreabot's
    deployments are: it asks for no privileged intent)."""
    options = {"queued_seconds": 0.02, "processing_seconds": 0.1, "long_edge": 256}
    async with FakePixazo(**options) as pixazo, FakeDiscord(privileged_intents=0) as fake:
        guild = fake.add_guild()
        with fake.patch_discord_py():
            yield World(fake, pixazo, tmp_path / "kreabot.sqlite3", guild)


async def post(
    world: World,
    *files: Upload,
    embeds: list[dict[str, Any]] | None = None,
    author: FakeMember | None = None,
    channel: Any = None,
) -> FakeMessage:
    """Someone (the server's owner by default) posts pictures in a channel."""
    return await world.discord.post_message(
        channel or world.guild.channel,
        "look at this",
        author=author or world.guild.owner,
        attachments=files,
        embeds=embeds or [],
    )


async def use_menu(
    world: World, name: str, message: FakeMessage, *, user: FakeMember | None = None
) -> InteractionHandle:
    """A member uses Apps → ``name`` on ``message``; wait for the bot's answer."""
    handle = await world.discord.message_command(name, message, user=user)
    await handle.wait_for_response()
    return handle


async def fill(
    world: World, form: InteractionHandle, prompt: str, strength: str | None = None
) -> InteractionHandle:
    """Submit the form ``form`` got (the strength left as it is unless given)."""
    assert form.response_type == 9, reply_text(form)
    values = {PROMPT_FIELD: prompt}
    if strength is not None:
        values[STRENGTH_FIELD] = strength
    submitted = await world.discord.submit_modal(form, values)
    await submitted.wait_for_response()
    return submitted


def forge_form(form: InteractionHandle, custom_id: str) -> None:
    """A tampered client submits the form under another custom_id."""
    assert form.modal is not None
    form.modal["custom_id"] = custom_id


def nothing_was_sent(world: World) -> None:
    """No submit, no job, and no public message left (a refused form's "thinking" reply is
    deleted)."""
    assert world.pixazo.submits() == []
    assert job_rows(world.db_path) == []
    public = bot_messages(world.discord, include_ephemeral=False)
    assert [m for m in public if not m.deleted] == []
    assert_no_traceback(bot_messages(world.discord))


def jump(message: FakeMessage) -> str:
    return f"https://discord.com/channels/{message.guild_id}/{message.channel_id}/{message.id}"


# --------------------------------------------------------------------------- the two menus


async def test_imagine_in_this_style_sends_both_images_and_links_the_source(world: World) -> None:
    async with world.bot():
        source = await post(
            world,
            Upload("teal.png", png_bytes("teal", (40, 30)), "image/png"),
            Upload("gold.png", png_bytes("gold", (30, 40)), "image/png"),
        )
        form = await use_menu(world, IMAGINE_MENU, source)
        assert form.modal is not None and form.modal["title"] == IMAGINE_MENU
        prompt_input, strength_input = modal_text_inputs(form)
        assert strength_input["value"] == "1" and strength_input["label"].startswith("Strength")
        assert "2 images" in prompt_input["placeholder"]
        submitted = await fill(world, form, "a harbour at night", "1.5")
        assert submitted.response_type == 5  # acknowledged at once, publicly
        result = await world.result_of(submitted)
        (body,) = await wait_for_submits(world, 1)

    references = body["image_style_references"]
    assert [r["strength"] for r in references] == [1.5, 1.5]
    urls = [r["image_url"] for r in references]
    assert "/teal.png?" in urls[0] and "/gold.png?" in urls[1]
    assert [world.discord.fetch_cdn(url) for url in urls] == source.files  # those very images
    assert body["prompt"] == "a harbour at night"
    fields = embed_fields(result)
    assert fields["Style from"] == f"[the source message]({jump(source)})"
    assert fields["Style references"] == "2 image(s) ×1.5, 1.5"
    assert result.filenames[1:] == ["ref-1.jpg", "ref-2.jpg"]  # copies kept on the result
    assert [e.get("title") for e in result.embeds[1:]] == ["Style reference ×1.5"] * 2
    assert_no_traceback(bot_messages(world.discord))


async def test_avoid_this_style_sends_negative_references_by_default(world: World) -> None:
    async with world.bot():
        source = await post(world, Upload("neon.png", png_bytes("magenta"), "image/png"))
        form = await use_menu(world, AVOID_MENU, source)
        assert form.modal is not None and form.modal["title"] == AVOID_MENU
        _, strength_input = modal_text_inputs(form)
        assert strength_input["value"] == "-1"
        result = await world.result_of(await fill(world, form, "a quiet forest"))
        (body,) = await wait_for_submits(world, 1)

    (reference,) = body["image_style_references"]
    assert reference["strength"] == -1.0 and "/neon.png?" in reference["image_url"]
    fields = embed_fields(result)
    assert fields["Avoiding the style of"] == f"[the source message]({jump(source)})"
    assert "Style from" not in fields
    assert fields["Style references"] == "avoid 1 ×-1"
    assert result.embeds[1]["title"] == "Avoid ×-1"


async def test_avoid_refuses_a_positive_strength_and_imagine_a_strength_past_2(
    world: World,
) -> None:
    async with world.bot():
        source = await post(world, Upload("a.png", png_bytes(), "image/png"))
        answers = []
        for menu, strength in ((AVOID_MENU, "1"), (IMAGINE_MENU, "2.5"), (IMAGINE_MENU, "lots")):
            submitted = await fill(world, await use_menu(world, menu, source), "x", strength)
            await submitted.wait_until_done()
            answers.append((private_reply(submitted), is_ephemeral_reply(submitted)))
    assert all(private for _, private in answers)
    assert "negative number" in str(answers[0][0])
    assert "from -2 to 2" in str(answers[1][0]) and "from -2 to 2" in str(answers[2][0])
    assert all("Nothing was sent" in str(text) for text, _ in answers)
    nothing_was_sent(world)


async def test_the_first_four_images_are_used_and_the_other_files_passed_over(
    world: World,
) -> None:
    colours = ("red", "green", "blue", "white", "black")
    async with world.bot():
        source = await post(
            world,
            Upload("notes.pdf", PDF, "application/pdf"),
            *(Upload(f"{c}.png", png_bytes(c), "image/png") for c in colours),
        )
        form = await use_menu(world, IMAGINE_MENU, source)
        assert "first 4 images" in modal_text_inputs(form)[0]["placeholder"]
        await world.result_of(await fill(world, form, "a kite"))
        (body,) = await wait_for_submits(world, 1)
    urls = [r["image_url"] for r in body["image_style_references"]]
    assert len(urls) == 4
    assert [u.split("?")[0].rsplit("/", 1)[1] for u in urls] == [f"{c}.png" for c in colours[:4]]


async def test_an_image_embed_alone_is_used_from_the_media_proxy(world: World) -> None:
    picture = png_bytes("orange", (48, 32))
    preview = world.discord.external_image(picture, filename="sunset.png")
    link = {
        "type": "article",
        "url": "https://blog.example.invalid/sunsets",
        "title": "Sunsets",
        "thumbnail": preview,
    }
    async with world.bot():
        source = await post(world, embeds=[link])
        form = await use_menu(world, IMAGINE_MENU, source)
        result = await world.result_of(await fill(world, form, "a desert road"))
        (body,) = await wait_for_submits(world, 1)

    (reference,) = body["image_style_references"]
    # The gateway gets the picture's own https address; the bot read Discord's proxy copy
    # (the picture's own address is never served), and kept a copy of it on the result.
    assert reference == {"image_url": preview["url"], "strength": 1.0}
    assert result.filenames[1:] == ["ref-1.jpg"]
    assert embed_fields(result)["Style from"] == f"[the source message]({jump(source)})"


async def test_on_a_kreabot_result_each_picture_is_used_once(world: World) -> None:
    async with world.bot():
        _, result = await imagine_result(
            world, prompt="a fox", seed=3, reference=Upload("s.png", png_bytes(), "image/png")
        )
        # Its embeds show its attachments (the image, the kept reference): not twice over.
        form = await use_menu(world, IMAGINE_MENU, result)
        assert "2 images" in modal_text_inputs(form)[0]["placeholder"]
        await world.result_of(await fill(world, form, "a wolf"))
        _, body = await wait_for_submits(world, 2)
    urls = [r["image_url"] for r in body["image_style_references"]]
    assert [u.split("?")[0].rsplit("/", 1)[1] for u in urls] == ["krea-1-3.png", "ref-1.jpg"]


async def test_server_defaults_and_the_blocklist_apply_as_for_imagine(world: World) -> None:
    async with world.bot():
        for name, options in (
            ("settings aspect set", {"value": "16:9"}),
            ("settings blocklist add", {"entry": "harbour"}),
        ):
            await (
                await world.discord.slash(name, options, user=world.guild.admin)
            ).wait_until_done()
        source = await post(world, Upload("a.png", png_bytes(), "image/png"))
        blocked = await fill(world, await use_menu(world, IMAGINE_MENU, source), "a harbour")
        await blocked.wait_until_done()
        allowed = await fill(world, await use_menu(world, IMAGINE_MENU, source), "a meadow")
        result = await world.result_of(allowed)
        (body,) = await wait_for_submits(world, 1)
    assert "does not allow" in str(private_reply(blocked)) and is_ephemeral_reply(blocked)
    assert body["aspect_ratio"] == "16:9" and body["prompt"] == "a meadow"
    assert embed_fields(result)["Aspect"] == "16:9 (server default)"


# --------------------------------------------------------------------------- bad input


async def test_a_message_with_only_a_pdf_is_refused_privately_at_once(world: World) -> None:
    async with world.bot():
        source = await post(world, Upload("report.pdf", PDF, "application/pdf"))
        menu = await use_menu(world, IMAGINE_MENU, source)
        await menu.wait_until_done()
        text = await use_menu(world, AVOID_MENU, await post(world))  # no file at all
        await text.wait_until_done()
    assert menu.response_type == 4 and menu.ephemeral  # no form to fill in vain
    answer = reply_text(menu)
    assert "no image" in answer and "report.pdf" in answer and "Nothing was sent" in answer
    assert text.ephemeral and "no image" in reply_text(text)
    nothing_was_sent(world)


async def test_a_pdf_named_like_an_image_is_refused_by_its_bytes(world: World) -> None:
    async with world.bot():
        source = await post(world, Upload("photo.png", PDF, "image/png"))
        form = await use_menu(world, IMAGINE_MENU, source)
        submitted = await fill(world, form, "a lighthouse")
        await submitted.wait_until_done()
    answer = private_reply(submitted)
    assert answer is not None and "`photo.png`" in answer and "not PNG, JPEG, WebP or GIF" in answer
    assert is_ephemeral_reply(submitted)
    assert submitted.original is not None and submitted.original.deleted  # no public trace
    nothing_was_sent(world)


async def test_an_image_over_the_size_limit_is_refused(world: World) -> None:
    big = noisy_png((64, 64))  # about 12 KiB
    preview = world.discord.external_image(big, filename="big.png")
    async with world.bot(MAX_REFERENCE_BYTES=4096):
        attached = await post(world, Upload("big.png", big, "image/png"))
        at_once = await use_menu(world, IMAGINE_MENU, attached)
        await at_once.wait_until_done()
        # An embedded picture's size is known only from its bytes: refused on submission.
        embedded = await post(world, embeds=[{"type": "image", "thumbnail": preview}])
        submitted = await fill(world, await use_menu(world, IMAGINE_MENU, embedded), "x")
        await submitted.wait_until_done()
    assert at_once.response_type == 4 and at_once.ephemeral
    assert "`big.png` is" in reply_text(at_once) and "limit" in reply_text(at_once)
    late = private_reply(submitted)
    assert late is not None and "embedded picture" in late and "4 KiB" in late
    nothing_was_sent(world)


async def test_an_image_over_the_pixel_limit_is_refused_by_its_header(world: World) -> None:
    huge = png_bytes("white", (1200, 1000))
    async with world.bot(MAX_IMAGE_PIXELS=1_000_000):
        source = await post(world, Upload("huge.png", huge, "image/png"))
        menu = await use_menu(world, IMAGINE_MENU, source)
        await menu.wait_until_done()
    assert menu.ephemeral and "1200x1000 pixels" in reply_text(menu)
    nothing_was_sent(world)


async def test_a_member_who_cannot_read_the_channel_is_refused(world: World) -> None:
    guild = world.guild
    async with world.bot():
        source = await post(world, Upload("a.png", png_bytes(), "image/png"))
        form = await use_menu(world, IMAGINE_MENU, source)
        # The member loses access to the channel before sending the form.
        world.discord.set_overwrite(guild.channel, guild.member, deny=Permission.VIEW_CHANNEL)
        submitted = await fill(world, form, "a cat")
        await submitted.wait_until_done()
    answer = private_reply(submitted)
    assert answer is not None and "cannot read the channel" in answer
    assert "Nothing was sent" in answer
    nothing_was_sent(world)


async def test_a_forged_form_naming_a_hidden_channel_or_another_server_is_refused(
    world: World,
) -> None:
    guild, fake = world.guild, world.discord
    secret = fake.add_channel(guild, "staff")
    fake.set_overwrite(secret, guild.everyone, deny=Permission.VIEW_CHANNEL)
    fake.set_overwrite(secret, guild.bot_role, allow=Permission.VIEW_CHANNEL)
    other = fake.add_guild("Elsewhere")
    async with world.bot():
        hidden = await post(world, Upload("s.png", png_bytes("red"), "image/png"), channel=secret)
        abroad = await post(
            world,
            Upload("o.png", png_bytes("blue"), "image/png"),
            author=other.owner,
            channel=other.channel,
        )
        answers = {}
        for name, target in (("hidden", hidden), ("abroad", abroad), ("gone", None)):
            mine = await post(world, Upload("m.png", png_bytes(), "image/png"))
            form = await use_menu(world, IMAGINE_MENU, mine)
            channel_id = target.channel_id if target else mine.channel_id
            message_id = target.id if target else 12345
            forge_form(form, f"krea:ctx:style:{channel_id}:{message_id}")
            submitted = await fill(world, form, "a cat")
            await submitted.wait_until_done()
            answers[name] = private_reply(submitted)
    assert "cannot read the channel" in str(answers["hidden"])
    assert "not in this server" in str(answers["abroad"])
    assert "deleted" in str(answers["gone"])
    nothing_was_sent(world)


async def test_the_bot_says_which_permission_it_lacks_before_anything_is_paid(
    world: World,
) -> None:
    guild = world.guild
    async with world.bot():
        source = await post(world, Upload("a.png", png_bytes(), "image/png"))
        form = await use_menu(world, IMAGINE_MENU, source)
        world.discord.set_overwrite(guild.channel, guild.bot_role, deny=Permission.ATTACH_FILES)
        at_once = await use_menu(world, IMAGINE_MENU, source)
        late = await fill(world, form, "a cat")
        await late.wait_until_done()
    assert at_once.ephemeral and "Attach Files" in reply_text(at_once)
    assert "Attach Files" in str(private_reply(late))
    nothing_was_sent(world)


async def test_the_menus_are_not_offered_in_dms_and_refuse_there_anyway(world: World) -> None:
    member = world.guild.member
    async with world.bot():
        for name in (IMAGINE_MENU, AVOID_MENU):
            command = world.discord.command(name, type=3)
            assert command is not None and command["contexts"] == [0]  # servers only
        dm = world.discord.dm_channel(member)
        message = await world.discord.post_message(
            dm, "hi", author=member.user, attachments=[Upload("a.png", png_bytes(), "image/png")]
        )
        with pytest.raises(LookupError):
            await world.discord.message_command(IMAGINE_MENU, message)
        stale = await world.discord.message_command(IMAGINE_MENU, message, strict=False)
        await stale.wait_for_response()
    assert stale.response_type == 4 and stale.ephemeral
    assert "in a server" in reply_text(stale) and "Nothing was sent" in reply_text(stale)
    nothing_was_sent(world)


# --------------------------------------------------------------------------- later on


async def test_regenerate_works_from_the_kept_copies_after_the_source_is_deleted(
    clocked: World,
) -> None:
    world = clocked
    async with world.bot() as bot:
        source = await post(
            world,
            Upload("teal.png", png_bytes("teal"), "image/png"),
            Upload("gold.png", png_bytes("gold"), "image/png"),
        )
        form = await use_menu(world, IMAGINE_MENU, source)
        result = await world.result_of(await fill(world, form, "a harbour", "0.8"))
        await finished(bot)
        await world.discord.delete_message(source)
        world.advance(2 * DAY)  # every signed URL of the first submit has expired

        again = await press(world, result, "krea:regen:1")
        regenerated = await world.result_of(again)
        first, second = await wait_for_submits(world, 2)

    assert second["seed"] != first["seed"]
    urls = [r["image_url"] for r in second["image_style_references"]]
    assert [r["strength"] for r in second["image_style_references"]] == [0.8, 0.8]
    assert ["/ref-1.jpg?" in urls[0], "/ref-2.jpg?" in urls[1]] == [True, True]
    assert all(str(result.channel_id) in url for url in urls)
    for url in urls:
        expiry = discord_url_expiry(url)
        assert expiry is not None and expiry > world.clock()
    assert [r.status for r in world.pixazo.submits()] == [202, 202]
    # The link to the (now deleted) source stays on the regenerated image.
    assert embed_fields(regenerated)["Style from"] == f"[the source message]({jump(source)})"


async def test_a_form_opened_before_a_restart_still_works_after_it(world: World) -> None:
    async with world.bot():
        source = await post(world, Upload("a.png", png_bytes("teal"), "image/png"))
        form = await use_menu(world, AVOID_MENU, source)
    async with world.bot():
        result = await world.result_of(await fill(world, form, "a lantern", "-0.5"))
        (body,) = await wait_for_submits(world, 1)
    (reference,) = body["image_style_references"]
    assert reference["strength"] == -0.5 and "/a.png?" in reference["image_url"]
    assert embed_fields(result)["Avoiding the style of"] == f"[the source message]({jump(source)})"


async def test_without_message_content_the_menus_images_are_used_until_a_restart(
    tmp_path: Path,
) -> None:
    async with world_without_message_content(tmp_path) as world:
        async with world.bot():
            source = await post(world, Upload("a.png", png_bytes("teal"), "image/png"))
            form = await use_menu(world, IMAGINE_MENU, source)
            result = await world.result_of(await fill(world, form, "a lantern"))
            (body,) = await wait_for_submits(world, 1)
            stale_form = await use_menu(world, IMAGINE_MENU, source)
        async with world.bot():
            stale = await fill(world, stale_form, "a lantern again")
            await stale.wait_until_done()
        # What the bot's token gets of the message: blanked, as Discord does.
        assert not world.discord.app_reads_content(source)
    assert "/a.png?" in body["image_style_references"][0]["image_url"]
    assert "Style from" in embed_fields(result)
    answer = private_reply(stale)
    assert answer is not None and "use Apps → Imagine in this style" in answer
    assert len(world.pixazo.submits()) == 1


async def test_the_command_hash_changes_with_the_context_menus(world: World) -> None:
    async with world.bot() as bot:
        synced = {(c["name"], c["type"]) for c in world.discord.commands(None)}
        assert {(IMAGINE_MENU, 3), (AVOID_MENU, 3), ("imagine", 1)} <= synced
        with_menus = command_hash(bot.tree, None)
        menu = bot.tree.get_command(AVOID_MENU, type=discord.AppCommandType.message)
        assert menu is not None
        bot.tree.remove_command(AVOID_MENU, type=menu.type)
        without = command_hash(bot.tree, None)
        bot.tree.add_command(menu)
        assert command_hash(bot.tree, None) == with_menus
    assert without != with_menus


async def test_without_message_content_an_old_form_asks_to_use_the_menu_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with world_without_message_content(tmp_path) as world, world.bot():
        # The module the bot loaded (load_extension imports it afresh): every form is "old".
        monkeypatch.setattr(sys.modules["cogs.context_menus"], "SEEN_SECONDS", 0.0)
        source = await post(world, Upload("a.png", png_bytes("teal"), "image/png"))
        late = await fill(world, await use_menu(world, AVOID_MENU, source), "a lantern")
        await late.wait_until_done()
    answer = private_reply(late)
    assert answer is not None and "more than an hour ago" in answer
    assert "use Apps → Avoid this style" in answer
    nothing_was_sent(world)
