"""Message context menus, link-preview images and the Message Content rule in the fake Discord.

A real discord.py bot registers a message command (Apps → "Peek"), and the fake delivers it
as Discord does: type 2 with ``data.type`` 3, ``data.target_id`` and the message in
``data.resolved.messages``. Without the Message Content intent the same message fetched
with the bot's token comes back blanked, as Discord's gateway page says.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import discord
import pytest
import pytest_asyncio
from discord import app_commands
from discord.ext import commands

from tests.fake_discord import FakeDiscord, Intent, Upload
from tests.fake_discord.fixtures import run_bot

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x02\x00\x00\x00\x03" + b"\x00" * 32


@dataclass
class Seen:
    """What the bot saw of each message it was given or fetched."""

    targets: list[discord.Message] = field(default_factory=list)
    fetched: list[discord.Message] = field(default_factory=list)
    contexts: list[tuple[int | None, int]] = field(default_factory=list)


class Ask(discord.ui.Modal, title="Ask"):
    """A one-field form."""

    text: discord.ui.TextInput[Ask] = discord.ui.TextInput(label="Text", custom_id="ask:text")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"got {self.text.value}", ephemeral=True)


def make_bot(seen: Seen, *, guild_only: bool = True) -> commands.Bot:
    """A bot with two global message commands: "Peek" (fetches the message again with its
    own token, then answers) and "Ask" (opens a form)."""
    bot = commands.Bot(command_prefix=commands.when_mentioned, intents=discord.Intents.default())

    async def peek(interaction: discord.Interaction, message: discord.Message) -> None:
        seen.targets.append(message)
        seen.contexts.append((interaction.guild_id, interaction.channel_id or 0))
        channel = interaction.channel
        if isinstance(channel, discord.TextChannel):
            seen.fetched.append(await channel.fetch_message(message.id))
        await interaction.response.send_message(
            f"{len(message.attachments)} file(s), {len(message.embeds)} embed(s)", ephemeral=True
        )

    async def ask(interaction: discord.Interaction, message: discord.Message) -> None:
        await interaction.response.send_modal(Ask())

    async def setup_hook() -> None:
        for name, callback in (("Peek", peek), ("Ask", ask)):
            menu = app_commands.ContextMenu(name=name, callback=callback)
            if guild_only:
                app_commands.guild_only(menu)
            bot.tree.add_command(menu)
        await bot.tree.sync()

    bot.setup_hook = setup_hook  # type: ignore[method-assign]
    return bot


@pytest_asyncio.fixture
async def no_content_fake() -> AsyncIterator[FakeDiscord]:
    """A fake Discord whose application has no privileged intent enabled (the default for a
    new app, and kreabot's: it asks for none)."""
    async with FakeDiscord(privileged_intents=0) as fake:
        fake.add_guild()
        with fake.patch_discord_py():
            yield fake


async def test_a_message_command_carries_its_target_in_full(fake_discord: FakeDiscord) -> None:
    fake, seen = fake_discord, Seen()
    preview = fake.external_image(PNG, filename="cat.png")
    async with run_bot(make_bot(seen), fake):
        (synced,) = [c for c in fake.commands(None) if c["name"] == "Peek"]
        assert synced["type"] == 3 and synced["contexts"] == [0]
        assert fake.command("Peek", type=3) is synced and fake.command("Peek") is None
        message = await fake.post_message(
            content="look",
            attachments=[Upload("a.png", PNG, "image/png")],
            embeds=[{"type": "image", "url": preview["url"], "thumbnail": preview}],
        )
        handle = await fake.message_command("Peek", message)
        await handle.wait_for_response()

    data = handle.payload["data"]
    assert (handle.payload["type"], data["type"], data["target_id"]) == (2, 3, str(message.id))
    assert set(data["resolved"]["messages"]) == {str(message.id)}
    assert handle.payload["context"] == 0 and "member" in handle.payload
    (target,) = seen.targets
    assert target.id == message.id and target.content == "look"
    assert [a.filename for a in target.attachments] == ["a.png"]
    thumbnail = target.embeds[0].thumbnail
    assert thumbnail.proxy_url == preview["proxy_url"] and thumbnail.width == 2
    assert seen.contexts == [(fake.guild.id, fake.guild.channel.id)]
    assert handle.ephemeral
    assert seen.fetched[0].attachments  # the app has Message Content here (the default)


async def test_a_form_opened_from_a_message_command_is_submitted_without_a_message(
    fake_discord: FakeDiscord,
) -> None:
    fake = fake_discord
    async with run_bot(make_bot(Seen()), fake):
        message = await fake.post_message(content="x")
        opened = await fake.message_command("Ask", message)
        await opened.wait_for_response()
        assert opened.response_type == 9
        submitted = await fake.submit_modal(opened, {"ask:text": "hello"})
        await submitted.wait_for_response()
    assert submitted.payload["type"] == 5 and "message" not in submitted.payload
    assert submitted.payload["data"]["custom_id"] == opened.modal["custom_id"]  # type: ignore[index]
    assert (submitted.response.data or {})["content"] == "got hello"  # type: ignore[union-attr]


async def test_discord_offers_a_message_command_only_where_it_is_allowed(
    fake_discord: FakeDiscord,
) -> None:
    fake, seen = fake_discord, Seen()
    member = fake.guild.member
    async with run_bot(make_bot(seen), fake):
        message = await fake.post_message(content="x")
        with pytest.raises(LookupError, match="never synced"):
            await fake.message_command("Nope", message)
        dm = fake.dm_channel(member)
        in_dm = await fake.post_message(dm, "hi", author=member.user)
        with pytest.raises(LookupError, match="context 1"):
            await fake.message_command("Peek", in_dm)  # guild-only: not offered in DMs
        await fake.delete_message(message)
        with pytest.raises(LookupError, match="no message"):
            await fake.message_command("Peek", message)

        # A stale client may still send it: the interaction comes from the DM.
        handle = await fake.message_command("Peek", in_dm, strict=False)
        await handle.wait_for_response()
    payload = handle.payload
    assert "guild_id" not in payload and "member" not in payload
    assert payload["user"]["id"] == str(member.id) and payload["context"] == 1
    assert payload["channel"]["type"] == 1
    assert seen.contexts == [(None, dm.id)]
    assert seen.targets[0].content == "hi"


async def test_without_message_content_a_fetch_is_blanked_but_the_target_is_not(
    no_content_fake: FakeDiscord,
) -> None:
    fake, seen = no_content_fake, Seen()
    preview = fake.external_image(PNG)
    async with run_bot(make_bot(seen), fake) as bot:
        flags = bot.application_flags
        assert not (flags.gateway_message_content or flags.gateway_message_content_limited)
        message = await fake.post_message(
            content="secret",
            attachments=[Upload("a.png", PNG, "image/png")],
            embeds=[{"type": "article", "title": "t", "image": preview}],
        )
        handle = await fake.message_command("Peek", message)
        await handle.wait_for_response()
        mention = await fake.post_message(
            content=f"<@{fake.bot_user.id}> see", attachments=[Upload("b.png", PNG)]
        )
        await (await fake.message_command("Peek", mention)).wait_for_response()

    target, fetched = seen.targets[0], seen.fetched[0]
    assert (target.content, len(target.attachments), len(target.embeds)) == ("secret", 1, 1)
    assert (fetched.content, fetched.attachments, fetched.embeds) == ("", [], [])
    assert fetched.id == message.id and fetched.author.id == message.author.id
    assert seen.fetched[1].attachments  # a message mentioning the app is not blanked
    assert not fake.app_reads_content(message) and fake.app_reads_content(mention)


async def test_the_app_flags_follow_its_privileged_intents(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    assert fake.privileged_intents & Intent.MESSAGE_CONTENT
    async with run_bot(make_bot(Seen()), fake) as bot:
        assert bot.application_flags.gateway_message_content_limited
        info = await bot.application_info()
    assert info.flags.gateway_message_content_limited


async def test_a_link_preview_image_is_served_by_the_media_proxy_only(
    fake_discord: FakeDiscord,
) -> None:
    preview = fake_discord.external_image(PNG, filename="cat.png")
    assert preview["url"].startswith("https://images.example.invalid/")
    assert preview["content_type"] == "image/png"
    assert (preview["width"], preview["height"]) == (2, 3)
    async with aiohttp.ClientSession() as session:
        async with session.get(preview["proxy_url"]) as response:
            assert response.status == 200 and await response.read() == PNG
        async with session.get(preview["proxy_url"].replace("/external/", "/external/0")) as gone:
            assert gone.status == 404


async def test_an_embed_showing_an_attachment_is_rendered_with_its_signed_urls(
    fake_discord: FakeDiscord,
) -> None:
    fake, seen = fake_discord, Seen()
    async with run_bot(make_bot(seen), fake) as bot:
        channel = bot.get_channel(fake.guild.channel.id)
        assert isinstance(channel, discord.TextChannel)
        embed = discord.Embed(title="t").set_image(url="attachment://a.png")
        sent = await channel.send(embed=embed, file=discord.File(io.BytesIO(PNG), "a.png"))
        stored = fake.message(sent.id)
        await (await fake.message_command("Peek", stored)).wait_for_response()
    assert stored.embeds[0]["image"] == {"url": "attachment://a.png"}  # as the bot sent it
    for message in (sent, seen.targets[0], seen.fetched[0]):
        image, (attachment,) = message.embeds[0].image, message.attachments
        assert (image.url, image.proxy_url) == (attachment.url, attachment.proxy_url)
        assert (image.width, image.height) == (2, 3)
