"""A real discord.py `commands.Bot` against the fake Discord, end to end on loopback."""

from __future__ import annotations

import asyncio
import io
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.fake_discord import FakeDiscord, FakeMessage, MiB, Permission, Upload
from tests.fake_discord.fixtures import run_bot

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x02\x00\x00\x00\x03" + b"\x00" * 32


@dataclass
class Probe:
    """Shared between a test and the bot it runs: gates to hold the bot, what it saw."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    gate2: asyncio.Event = field(default_factory=asyncio.Event)
    errors: list[tuple[str, int, int]] = field(default_factory=list)
    seen: list[Any] = field(default_factory=list)
    reactions: list[discord.RawReactionActionEvent] = field(default_factory=list)

    def fail(self, where: str, exc: discord.HTTPException) -> None:
        self.errors.append((where, exc.status, exc.code))


class RegenButton(discord.ui.DynamicItem[discord.ui.Button], template=r"krea:regen:(?P<job>\d+)"):
    """A persistent button whose state lives in its custom_id."""

    def __init__(self, job: int) -> None:
        super().__init__(discord.ui.Button(label="Regenerate", custom_id=f"krea:regen:{job}"))
        self.job = job

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> RegenButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"regenerating job {self.job}", ephemeral=True)


class PromptModal(discord.ui.Modal, title="Edit prompt"):
    prompt: discord.ui.TextInput[PromptModal] = discord.ui.TextInput(
        label="Prompt", custom_id="krea:modal:prompt"
    )

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"new prompt: {self.prompt.value}")


class MenuView(discord.ui.View):
    """An in-memory view: works only while the process that sent it runs."""

    @discord.ui.select(
        custom_id="menu:pick", options=[discord.SelectOption(label=x) for x in ("a", "b", "c")]
    )
    async def pick(self, interaction: discord.Interaction, select: discord.ui.Select[Any]) -> None:
        await interaction.response.edit_message(content=f"picked {','.join(select.values)}")

    @discord.ui.button(label="Go", custom_id="menu:go")
    async def go(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await interaction.response.defer()
        await interaction.edit_original_response(content="went")


def make_bot(fake: FakeDiscord, probe: Probe) -> commands.Bot:
    """A bot with one guild command per scenario."""
    bot = commands.Bot(command_prefix=commands.when_mentioned, intents=discord.Intents.default())
    guild = discord.Object(fake.guild.id)

    @app_commands.command(description="Generate an image")
    async def imagine(
        interaction: discord.Interaction, prompt: str, image: discord.Attachment | None = None
    ) -> None:
        probe.seen.append((interaction, image))
        await interaction.response.defer(thinking=True)
        view = discord.ui.View(timeout=None)
        view.add_item(RegenButton(42))
        await interaction.followup.send(
            f"Done: {prompt}", file=discord.File(io.BytesIO(PNG), "result.png"), view=view
        )
        assert isinstance(interaction.channel, discord.TextChannel)
        await interaction.channel.send(f"posted {prompt}")

    @app_commands.command(description="Waits for the test before answering")
    async def slow(interaction: discord.Interaction) -> None:
        await probe.gate.wait()
        try:
            await interaction.response.defer()
        except discord.HTTPException as exc:
            probe.fail("defer", exc)
            return
        await probe.gate2.wait()
        try:
            await interaction.followup.send("late result")
        except discord.HTTPException as exc:
            probe.fail("followup", exc)

    @app_commands.command(description="Answers twice")
    async def twice(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("first")
        try:  # a fresh InteractionResponse bypasses discord.py's own guard
            await discord.InteractionResponse(interaction).send_message("second")
        except discord.HTTPException as exc:
            probe.fail("second", exc)

    @app_commands.command(description="Uploads size_mib MiB")
    async def big(interaction: discord.Interaction, size_mib: int) -> None:
        await interaction.response.defer()
        probe.seen.append(interaction.filesize_limit)
        data = b"\0" * (size_mib * MiB)
        try:
            await interaction.followup.send(file=discord.File(io.BytesIO(data), "big.bin"))
        except discord.HTTPException as exc:
            probe.fail("upload", exc)

    @app_commands.command(description="Posts text to the channel")
    async def post(interaction: discord.Interaction, text: str) -> None:
        await interaction.response.send_message("posting", ephemeral=True)
        assert isinstance(interaction.channel, discord.TextChannel)
        try:
            message = await interaction.channel.send(
                text, allowed_mentions=discord.AllowedMentions.none()
            )
        except discord.HTTPException as exc:
            probe.fail("send", exc)
            return
        probe.seen.append(message)
        await probe.gate.wait()
        try:
            await message.edit(content="edited")
        except discord.HTTPException as exc:
            probe.fail("edit", exc)

    @app_commands.command(description="Opens a modal")
    async def form(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(PromptModal())

    @app_commands.command(description="Picks a style")
    async def style(interaction: discord.Interaction, name: str) -> None:
        await interaction.response.send_message(f"style {name}")

    @style.autocomplete("name")
    async def style_names(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        names = ["anime", "photo", "painting"]
        return [app_commands.Choice(name=n, value=n) for n in names if n.startswith(current)]

    @app_commands.command(description="A button whose custom_id is too long")
    async def badbutton(interaction: discord.Interaction) -> None:
        view = discord.ui.View()
        view.add_item(discord.ui.Button(label="x", custom_id="x" * 101))
        try:
            await interaction.response.send_message("bad", view=view)
        except discord.HTTPException as exc:
            probe.fail("badbutton", exc)

    @app_commands.command(description="A select and a button in a plain View")
    async def menu(interaction: discord.Interaction) -> None:
        view = MenuView()
        await interaction.response.send_message("choose", view=view)

    @app_commands.command(description="Replies to a message and tries a too-long embed")
    async def reply(interaction: discord.Interaction, message_id: str) -> None:
        await interaction.response.defer(ephemeral=True)
        assert isinstance(interaction.channel, discord.TextChannel)
        target = await interaction.channel.fetch_message(int(message_id))
        await target.reply("replying", mention_author=False)
        try:
            await interaction.channel.send(embed=discord.Embed(title="t" * 257))
        except discord.HTTPException as exc:
            probe.fail("embed", exc)
        await interaction.edit_original_response(content="done")

    @bot.event
    async def on_raw_reaction_add(payload: discord.RawReactionActionEvent) -> None:
        probe.reactions.append(payload)

    async def setup_hook() -> None:
        bot.add_dynamic_items(RegenButton)
        commands_: list[app_commands.Command[Any, ..., None]] = [
            imagine,
            slow,
            twice,
            big,
            post,
            form,
            style,
            badbutton,
            menu,
            reply,
        ]
        for command in commands_:
            bot.tree.add_command(command, guild=guild)
        await bot.tree.sync(guild=guild)

    bot.setup_hook = setup_hook  # type: ignore[method-assign]
    return bot


@pytest.fixture
def probe() -> Probe:
    return Probe()


async def test_slash_defer_followup_file_channel_message_and_button(
    fake_discord: FakeDiscord, probe: Probe
) -> None:
    fake = fake_discord
    guild = fake.guild
    async with run_bot(make_bot(fake, probe), fake) as bot:
        assert fake.command_syncs == 1
        assert {c["name"] for c in fake.commands(guild)} >= {"imagine", "slow", "form"}
        assert bot.get_channel(guild.channel.id) is not None

        handle = await fake.slash(
            "imagine", {"prompt": "a cat", "image": Upload("in.png", PNG, "image/png")}
        )
        response = await handle.wait_for_response()
        assert response.type == 5
        followup = await handle.wait_for_followup()
        assert followup.content == "Done: a cat"
        assert followup.files == [PNG]
        assert followup.attachments[0].content_type == "image/png"
        assert (followup.attachments[0].width, followup.attachments[0].height) == (2, 3)
        assert followup is handle.original  # the first followup replaced "thinking..."
        assert not followup.loading
        posted = await fake.wait_for_message(lambda m: m.content == "posted a cat")
        assert posted.channel_id == guild.channel.id and posted.webhook_id is None

        interaction, image = probe.seen[0]
        assert interaction.guild.id == guild.id
        assert interaction.channel.id == guild.channel.id
        assert interaction.permissions.send_messages
        assert not interaction.permissions.manage_guild
        assert image.filename == "in.png" and image.size == len(PNG)
        assert fake.fetch_cdn(image.url) == PNG
        assert image.url.startswith(
            f"https://cdn.discordapp.com/attachments/{guild.channel.id}/{image.id}/in.png?ex="
        )

        click = await fake.click(followup, followup.custom_id_matching("krea:regen:"))
        answer = await click.wait_for_response()
        assert answer.type == 4
        assert click.original is not None
        assert click.original.content == "regenerating job 42"
        assert click.original.ephemeral
        assert fake.errors == []


async def test_initial_response_after_3_seconds_is_10062(
    fake_discord: FakeDiscord, probe: Probe
) -> None:
    fake = fake_discord
    async with run_bot(make_bot(fake, probe), fake):
        handle = await fake.slash("slow")
        fake.advance(3.5)
        probe.gate.set()
        error = await handle.wait_for_error(10062)
        assert error.status == 404
        await fake.wait_for(lambda: probe.errors)
        assert probe.errors == [("defer", 404, 10062)]
        assert handle.response is None


async def test_followup_after_15_minutes_is_50027(fake_discord: FakeDiscord, probe: Probe) -> None:
    fake = fake_discord
    async with run_bot(make_bot(fake, probe), fake):
        probe.gate.set()
        handle = await fake.slash("slow")
        await handle.wait_for_response()
        fake.advance(15 * 60 + 1)
        probe.gate2.set()
        await handle.wait_for_error(50027)
        await fake.wait_for(lambda: probe.errors)
        assert probe.errors == [("followup", 401, 50027)]


async def test_second_initial_response_is_40060(fake_discord: FakeDiscord, probe: Probe) -> None:
    fake = fake_discord
    async with run_bot(make_bot(fake, probe), fake):
        handle = await fake.slash("twice")
        await handle.wait_for_error(40060)
        await fake.wait_for(lambda: probe.errors)
        assert probe.errors == [("second", 400, 40060)]
        assert handle.original is not None and handle.original.content == "first"


async def test_upload_over_the_limit_is_40005(fake_discord: FakeDiscord, probe: Probe) -> None:
    fake = fake_discord
    async with run_bot(make_bot(fake, probe), fake):
        handle = await fake.slash("big", {"size_mib": 11})
        await handle.wait_for_error(40005)
        await fake.wait_for(lambda: probe.errors)
        assert probe.errors == [("upload", 413, 40005)]
        assert probe.seen == [10 * MiB]

        small_limit = await fake.slash("big", {"size_mib": 2}, attachment_size_limit=MiB)
        await small_limit.wait_for_error(40005)
        ok = await fake.slash("big", {"size_mib": 1}, attachment_size_limit=2 * MiB)
        message = await ok.wait_for_followup()
        assert len(message.files[0]) == MiB


async def test_429_is_retried_by_discord_py(fake_discord: FakeDiscord, probe: Probe) -> None:
    fake = fake_discord
    channel = fake.guild.channel
    async with run_bot(make_bot(fake, probe), fake):
        fake.rate_limit_next(f"/channels/{channel.id}/messages", retry_after=0.2)
        handle = await fake.slash("post", {"text": f"hi {fake.guild.member.mention}"})
        message = await fake.wait_for_message(lambda m: m.content.startswith("hi"))
        assert len(fake.rate_limited) == 1
        posts = fake.find_requests("POST", f"/channels/{channel.id}/messages")
        assert len(posts) == 2
        assert posts[1].time - posts[0].time >= 0.2
        assert message.allowed_mentions == {"parse": []}
        assert message.pinged_user_ids == set()
        assert handle.original is not None and handle.original.ephemeral


async def test_edit_of_a_deleted_message_is_10008(fake_discord: FakeDiscord, probe: Probe) -> None:
    fake = fake_discord
    async with run_bot(make_bot(fake, probe), fake):
        await fake.slash("post", {"text": "progress 10%"})
        message = await fake.wait_for_message(lambda m: m.content == "progress 10%")
        await fake.delete_message(message)
        probe.gate.set()
        await fake.wait_for(lambda: probe.errors)
        assert probe.errors == [("edit", 404, 10008)]


async def test_component_limits_are_enforced(fake_discord: FakeDiscord, probe: Probe) -> None:
    fake = fake_discord
    async with run_bot(make_bot(fake, probe), fake):
        handle = await fake.slash("badbutton")
        error = await handle.wait_for_error(50035)
        assert "custom_id" in str(error.errors)
        await fake.wait_for(lambda: probe.errors)
        assert probe.errors == [("badbutton", 400, 50035)]
        assert handle.response is None  # a rejected response does not acknowledge


async def test_modal_and_autocomplete(fake_discord: FakeDiscord, probe: Probe) -> None:
    fake = fake_discord
    async with run_bot(make_bot(fake, probe), fake):
        opened = await fake.slash("form")
        await opened.wait_for_response()
        assert opened.modal is not None and opened.modal["title"] == "Edit prompt"
        submitted = await fake.submit_modal(opened, {"krea:modal:prompt": "a dog"})
        reply = await submitted.wait_for_original()
        assert reply.content == "new prompt: a dog"

        typed = await fake.autocomplete("style", {"name": "p"}, focused="name")
        await typed.wait_for_response()
        assert typed.choices == [
            {"name": "photo", "value": "photo"},
            {"name": "painting", "value": "painting"},
        ]


async def test_reactions_and_channel_permissions(fake_discord: FakeDiscord, probe: Probe) -> None:
    fake = fake_discord
    guild = fake.guild
    async with run_bot(make_bot(fake, probe), fake):
        handle = await fake.slash("imagine", {"prompt": "x"})
        message = await handle.wait_for_followup()
        await fake.react(message, "👍", guild.member)
        await fake.wait_for(lambda: probe.reactions)
        assert str(probe.reactions[0].emoji) == "👍"
        assert probe.reactions[0].user_id == guild.member.id
        assert message.reactions == {"👍": [guild.member.id]}

        fake.set_overwrite(guild.channel, guild.bot_role, deny=Permission.SEND_MESSAGES)
        await fake.slash("post", {"text": "blocked"})
        await fake.wait_for(lambda: probe.errors)
        assert probe.errors == [("send", 403, 50013)]
        assert fake.last_message(guild.channel) is not None
        assert all(m.content != "blocked" for m in fake.messages(guild.channel))


async def test_cdn_urls_expire_and_are_re_signed(fake_discord: FakeDiscord, probe: Probe) -> None:
    fake = fake_discord
    async with run_bot(make_bot(fake, probe), fake) as bot:
        handle = await fake.slash("imagine", {"prompt": "x"})
        message = await handle.wait_for_followup()
        channel = bot.get_channel(message.channel_id)
        assert isinstance(channel, discord.TextChannel)
        fetched = await channel.fetch_message(message.id)
        old_url = fetched.attachments[0].url
        async with aiohttp.ClientSession() as session:
            async with session.get(fetched.attachments[0].proxy_url) as resp:
                assert resp.status == 200
                assert await resp.read() == PNG
            fake.advance(24 * 3600 + 5)
            async with session.get(fetched.attachments[0].proxy_url) as resp:
                assert resp.status == 404
        with pytest.raises(LookupError):
            fake.fetch_cdn(old_url)
        refetched = await channel.fetch_message(message.id)
        assert refetched.attachments[0].url != old_url
        assert fake.fetch_cdn(refetched.attachments[0].url) == PNG


async def test_resume_after_drop_and_a_new_bot_process(
    fake_discord: FakeDiscord, probe: Probe
) -> None:
    fake = fake_discord
    async with run_bot(make_bot(fake, probe), fake):
        assert fake.identify_count == 1
        await fake.drop_connections()
        # Dispatched while the bot is reconnecting: buffered and replayed on RESUME.
        during = await fake.slash("imagine", {"prompt": "during the drop"})
        await fake.wait_for(lambda: fake.resume_count == 1)
        assert (await during.wait_for_followup()).content == "Done: during the drop"
        await fake.wait_for_message(lambda m: m.content == "posted during the drop")
        assert fake.identify_count == 1

    # A restarted process: new Bot, same token, same fake.
    second = Probe()
    async with run_bot(make_bot(fake, second), fake):
        assert fake.identify_count == 2
        assert fake.command_syncs == 2
        handle = await fake.slash("imagine", {"prompt": "after restart"})
        message = await handle.wait_for_followup()
        assert len(second.seen) == 1
        # Buttons of messages sent by the previous process still work (DynamicItem).
        old: FakeMessage = next(m for m in fake.messages() if m.content == "Done: during the drop")
        click = await fake.click(old, old.custom_id_matching("krea:regen:"))
        await click.wait_for_response()
        assert message.content == "Done: after restart"
        await fake.wait_for_message(lambda m: m.content == "posted after restart")


async def test_plain_view_select_and_deferred_update(
    fake_discord: FakeDiscord, probe: Probe
) -> None:
    fake = fake_discord
    async with run_bot(make_bot(fake, probe), fake):
        handle = await fake.slash("menu")
        message = await handle.wait_for_original()
        # click() waits until discord.py has read the response that created the message.
        picked = await fake.click(message, "menu:pick", values=["b", "c"])
        assert (await picked.wait_for_response()).type == 7
        assert message.content == "picked b,c"
        assert message.history[0].content == "choose"

        went = await fake.click(message, label="Go")
        assert (await went.wait_for_response()).type == 6
        await fake.wait_for(lambda: message.content == "went")
        assert message.edit_count == 2
        assert fake.errors == []


async def test_reply_and_embed_limit(fake_discord: FakeDiscord, probe: Probe) -> None:
    fake = fake_discord
    guild = fake.guild
    async with run_bot(make_bot(fake, probe), fake):
        asked = await fake.post_message(guild.channel, "please draw", author=guild.admin)
        handle = await fake.slash("reply", {"message_id": str(asked.id)})
        await handle.wait_for_original(lambda m: m.content == "done")
        reply = await fake.wait_for_message(lambda m: m.content == "replying")
        assert reply.message_reference is not None
        assert reply.message_reference["message_id"] == str(asked.id)
        assert reply.type == 19
        assert reply.pinged_user_ids == set()  # mention_author=False
        assert probe.errors == [("embed", 400, 50035)]
        error = next(e for e in fake.errors if e.code == 50035)
        assert error.errors == {
            "embeds": {
                "0": {
                    "title": {
                        "_errors": [
                            {
                                "code": "BASE_TYPE_MAX_LENGTH",
                                "message": "Must be 256 or fewer in length.",
                            }
                        ]
                    }
                }
            }
        }


async def test_gateway_reconnect_invalid_session_and_guild_delete(
    fake_discord: FakeDiscord, probe: Probe
) -> None:
    fake = fake_discord
    guild = fake.guild
    bot = make_bot(fake, probe)

    async def no_identify_delay(shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before every re-IDENTIFY; not needed on loopback."""

    bot.before_identify_hook = no_identify_delay  # type: ignore[method-assign]
    async with run_bot(bot, fake):
        await fake.send_reconnect()
        await fake.wait_for(lambda: fake.resume_count == 1)
        await fake.invalidate_sessions()
        await fake.wait_for(lambda: fake.identify_count == 2)
        await fake.wait_for(lambda: bot.get_guild(guild.id) is not None)
        handle = await fake.slash("style", {"name": "anime"})
        assert (await handle.wait_for_original()).content == "style anime"

        await fake.remove_guild(guild)
        await fake.wait_for(lambda: bot.get_guild(guild.id) is None)
