"""The fake holds the bot to Discord's contract: schema, emoji, uploads and rate limits.

Each test sends a wrong body from a real discord.py client or a raw aiohttp request and
checks that the fake refuses it as Discord does, and that the corrected body passes.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any

import aiohttp
import discord
import pytest
import pytest_asyncio
from discord import app_commands

from tests.fake_discord import (
    NITRO_UPLOAD_LIMIT,
    FakeDiscord,
    FakeGuild,
    MiB,
)
from tests.fake_discord.fixtures import DEFAULT_TOKEN, run_bot
from tests.fake_discord.ratelimits import RateLimits

Command = Callable[[discord.Interaction], Coroutine[Any, Any, None]]


class Api:
    """Raw REST calls to the fake with the bot token (what discord.py would send)."""

    def __init__(self, fake: FakeDiscord, session: aiohttp.ClientSession) -> None:
        self.fake = fake
        self.session = session

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        files: dict[str, bytes] | None = None,
        token: str | None = DEFAULT_TOKEN,
        raw: bytes | None = None,
    ) -> tuple[int, Any, Mapping[str, str]]:
        headers = {"Authorization": f"Bot {token}"} if token else {}
        data: Any
        if files:
            form = aiohttp.FormData(quote_fields=False)
            form.add_field("payload_json", json.dumps(body), content_type="application/json")
            for i, (name, content) in enumerate(files.items()):
                form.add_field(f"files[{i}]", content, filename=name)
            data = form
        elif raw is not None:
            data = raw
            headers["Content-Type"] = "application/json"
        elif body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        else:
            data = None
        async with self.session.request(
            method, self.fake.api_base + path, data=data, headers=headers
        ) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None), resp.headers

    async def send(self, channel_id: int, body: Any, **kw: Any) -> tuple[int, Any, Any]:
        return await self.call("POST", f"/channels/{channel_id}/messages", body, **kw)


@pytest_asyncio.fixture
async def api(fake_discord: FakeDiscord) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(fake_discord, session)


def button_row(emoji: Any) -> list[dict[str, Any]]:
    return [
        {
            "type": 1,
            "components": [{"type": 2, "style": 2, "custom_id": "b", "emoji": emoji}],
        }
    ]


def bot_with(fake: FakeDiscord, commands: dict[str, Command], **options: Any) -> discord.Client:
    """A discord.py client whose guild commands are the given callbacks."""
    client = discord.Client(intents=options.pop("intents", discord.Intents.default()), **options)
    tree = app_commands.CommandTree(client)
    guild = discord.Object(fake.guild.id)
    for name, callback in commands.items():
        tree.add_command(
            app_commands.Command(name=name, description=name, callback=callback), guild=guild
        )

    async def setup_hook() -> None:
        await tree.sync(guild=guild)

    client.setup_hook = setup_hook  # type: ignore[method-assign]
    return client


# --------------------------------------------------------------------------- schema


async def test_schema_violations_get_discords_nested_errors(api: Api) -> None:
    channel = api.fake.guild.channel.id
    status, body, _ = await api.send(
        channel,
        {
            "content": "hi",
            "tts": "yes",
            "components": [{"type": 1, "components": [{"type": 2, "style": 9, "label": "x"}]}],
            "embeds": [{"fields": [{"value": "no name"}]}],
        },
    )
    assert status == 400
    assert body["code"] == 50035 and body["message"] == "Invalid Form Body"
    errors = body["errors"]
    assert errors["tts"]["_errors"][0]["code"] == "BOOLEAN_TYPE_CONVERT"
    style = errors["components"]["0"]["components"]["0"]["style"]["_errors"][0]
    assert style["code"] == "BASE_TYPE_CHOICES"
    assert "1, 2, 3, 4, 5, 6" in style["message"]
    assert errors["embeds"]["0"]["fields"]["0"]["name"] == {
        "_errors": [{"code": "BASE_TYPE_REQUIRED", "message": "This field is required"}]
    }
    assert api.fake.messages(channel) == []

    status, _, _ = await api.send(channel, {"content": "hi", "tts": False})
    assert status == 200


async def test_content_and_embed_field_over_their_limits(api: Api) -> None:
    channel = api.fake.guild.channel.id
    # The spec allows 4000 characters of content; bots are limited to 2000.
    status, body, _ = await api.send(channel, {"content": "x" * 2001})
    assert (status, body["code"]) == (400, 50035)
    assert body["errors"]["content"]["_errors"][0] == {
        "code": "BASE_TYPE_MAX_LENGTH",
        "message": "Must be 2000 or fewer in length.",
    }
    field = {"name": "n", "value": "v" * 1025}
    status, body, _ = await api.send(channel, {"embeds": [{"title": "t", "fields": [field]}]})
    assert status == 400
    value = body["errors"]["embeds"]["0"]["fields"]["0"]["value"]["_errors"][0]
    assert value["code"] == "BASE_TYPE_MAX_LENGTH" and "1024" in value["message"]

    assert (await api.send(channel, {"content": "x" * 2000}))[0] == 200
    field["value"] = "v" * 1024
    assert (await api.send(channel, {"embeds": [{"title": "t", "fields": [field]}]}))[0] == 200


async def test_callback_type_commands_and_invalid_json(api: Api) -> None:
    fake = api.fake
    handle = await fake.slash("anything", strict=False)
    path = f"/interactions/{handle.id}/{handle.token}/callback"
    status, body, _ = await api.call("POST", path, {"type": 3}, token=None)
    assert status == 400 and body["errors"]["type"]["_errors"][0]["code"] == "BASE_TYPE_CHOICES"
    assert handle.response is None and handle.error_codes() == [50035]

    status, body, _ = await api.call(
        "POST", path, {"type": 4, "data": {"content": "c" * 2001}}, token=None
    )
    assert body["errors"]["data"]["content"]["_errors"][0]["code"] == "BASE_TYPE_MAX_LENGTH"

    commands = f"/applications/{fake.application_id}/guilds/{fake.guild.id}/commands"
    too_long = [{"name": "n" * 33, "description": "d", "type": 1}]
    status, body, _ = await api.call("PUT", commands, too_long)
    assert status == 400
    assert body["errors"]["0"]["name"]["_errors"][0]["code"] == "BASE_TYPE_MAX_LENGTH"
    assert fake.command_syncs == 0

    status, body, _ = await api.call("PUT", commands, raw=b"{not json")
    assert (status, body["code"]) == (400, 50109)


async def test_discord_py_output_passes_the_spec(fake_discord: FakeDiscord) -> None:
    """What discord.py sends for a rich message (integer attachment ids, embeds with
    attachment:// images, views, allowed_mentions, a reply, permissions as strings) is
    accepted: the fake must not be stricter than Discord."""
    fake = fake_discord
    seen: list[discord.Message] = []

    async def rich(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        embed = discord.Embed(title="t", description="d", colour=0x123456)
        embed.set_image(url="attachment://a.png").add_field(name="f", value="v")
        embed.set_footer(text="foot").set_author(name="me")
        embed.timestamp = discord.utils.utcnow()
        view = discord.ui.View()
        view.add_item(discord.ui.Button(label="go", emoji="🔁", custom_id="go"))
        view.add_item(discord.ui.Button(label="docs", url="https://example.com"))
        select: discord.ui.Select[Any] = discord.ui.Select(
            custom_id="s", options=[discord.SelectOption(label="a", emoji="✏️")]
        )
        view.add_item(select)
        files = [discord.File(io.BytesIO(b"x" * 10), f"{n}.png") for n in "ab"]
        message = await interaction.followup.send(
            "done", embed=embed, files=files, view=view, wait=True
        )
        assert isinstance(interaction.channel, discord.TextChannel)
        reply = await message.reply(
            "and again", allowed_mentions=discord.AllowedMentions(users=False)
        )
        seen.append(await reply.edit(content="edited", attachments=[]))
        await interaction.edit_original_response(attachments=message.attachments[:1])

    permissions = app_commands.default_permissions(manage_guild=True)
    bot = bot_with(fake, {"rich": permissions(rich)})
    async with run_bot(bot, fake):
        handle = await fake.slash("rich")
        await fake.wait_for(lambda: seen, what="the reply's edit")
        await handle.wait_until_done()
    assert fake.errors == []
    assert handle.original is not None and len(handle.original.attachments) == 1


# --------------------------------------------------------------------------- emoji


async def test_a_plain_symbol_is_not_a_button_emoji(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    outcomes: list[tuple[str, int]] = []

    async def grid(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        for emoji in ("⤢", "🔁"):
            view = discord.ui.View()
            view.add_item(discord.ui.Button(label="Open", emoji=emoji, custom_id="open"))
            try:
                await interaction.followup.send("grid", view=view)
            except discord.HTTPException as exc:
                outcomes.append((emoji, exc.code))
            else:
                outcomes.append((emoji, 0))

    async with run_bot(bot_with(fake, {"grid": grid}), fake):
        handle = await fake.slash("grid")
        await fake.wait_for(lambda: len(outcomes) == 2, what="both sends")
    assert outcomes == [("⤢", 50035), ("🔁", 0)]
    error = handle.errors[0]
    assert error.errors == {
        "components": {
            "0": {
                "components": {
                    "0": {
                        "emoji": {
                            "name": {
                                "_errors": [
                                    {
                                        "code": "BUTTON_COMPONENT_INVALID_EMOJI",
                                        "message": "Invalid emoji",
                                    }
                                ]
                            }
                        }
                    }
                }
            }
        }
    }
    (sent,) = [m for m in fake.messages() if m.content == "grid"]
    assert sent.buttons()[0]["emoji"]["name"] == "🔁"


async def test_select_option_and_custom_emoji(api: Api) -> None:
    channel = api.fake.guild.channel.id
    select = {
        "type": 1,
        "components": [
            {
                "type": 3,
                "custom_id": "s",
                "options": [{"label": "a", "value": "a", "emoji": {"name": "->"}}],
            }
        ],
    }
    status, body, _ = await api.send(channel, {"components": [select]})
    assert status == 400
    option = body["errors"]["components"]["0"]["components"]["0"]["options"]["0"]
    assert option["emoji"]["name"]["_errors"][0]["code"] == "SELECT_COMPONENT_OPTION_INVALID_EMOJI"

    custom = {"id": "1234567890", "name": "krea_open"}
    assert (await api.send(channel, {"components": button_row(custom)}))[0] == 200
    assert (await api.send(channel, {"components": button_row({"name": "👍🏽"})}))[0] == 200
    status, body, _ = await api.send(channel, {"components": button_row({"name": "krea"})})
    assert status == 400


# --------------------------------------------------------------------------- uploads


async def test_upload_limits_per_attachment_bot_token_and_nitro(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    # A small guild limit keeps the uploads small (the boost tiers are tested below), and a
    # roomy channel bucket keeps discord.py from waiting out the 5 per 5 s of the 6 sends.
    fake.guild.filesize_limit = MiB
    fake.rate_limits.message_create = (20, 5.0)
    nitro = fake.add_member(fake.guild, "nitro", nitro_upload_limit=NITRO_UPLOAD_LIMIT)
    results: dict[str, Any] = {}

    async def upload(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        results["limit"] = interaction.filesize_limit
        big = discord.File(io.BytesIO(b"\0" * (MiB + MiB // 2)), "big.png")
        assert isinstance(interaction.channel, discord.TextChannel)
        try:
            await interaction.channel.send(file=big)
        except discord.HTTPException as exc:
            results["channel"] = (exc.status, exc.code)
        two = [discord.File(io.BytesIO(b"\0" * (MiB * 3 // 4)), f"{n}.png") for n in "ab"]
        results["two_halves"] = len((await interaction.channel.send(files=two)).attachments)
        big.reset()
        try:
            message = await interaction.followup.send(file=big, wait=True)
            results["followup"] = message.attachments[0].size
        except discord.HTTPException as exc:
            results["followup"] = (exc.status, exc.code)
        eleven = [discord.File(io.BytesIO(b"1"), f"{n}.txt") for n in range(11)]
        try:
            await interaction.channel.send(files=eleven)
        except discord.HTTPException as exc:
            results["eleven"] = (exc.status, exc.code)
        results["done"] = True

    async with run_bot(bot_with(fake, {"upload": upload}), fake):
        await fake.slash("upload", user=nitro)
        await fake.wait_for(lambda: results.get("done"), timeout=20, what="the uploads")
        assert results == {
            "limit": NITRO_UPLOAD_LIMIT,
            "channel": (413, 40005),  # bot token: the guild's 1 MiB, whoever asked
            "two_halves": 2,  # 1.5 MiB in all, but each file is under the limit
            "followup": MiB + MiB // 2,  # the interaction's attachment_size_limit
            "eleven": (400, 50035),  # at most 10 attachments
            "done": True,
        }
        results.clear()
        await fake.slash("upload")  # a member without Nitro: the followup is refused too
        await fake.wait_for(lambda: results.get("done"), timeout=20, what="the uploads")
        assert results["limit"] == MiB
        assert results["followup"] == (413, 40005)


async def test_boost_tier_sets_the_guild_limit(api: Api) -> None:
    fake = api.fake
    tier2: FakeGuild = fake.add_guild("boosted", premium_tier=2)
    assert tier2.filesize_limit == 50 * MiB and fake.guild.filesize_limit == 10 * MiB
    eleven = {"big.bin": b"\0" * (11 * MiB)}
    status, _, _ = await api.send(tier2.channel.id, {"content": "x"}, files=eleven)
    assert status == 200
    status, body, _ = await api.send(fake.guild.channel.id, {"content": "x"}, files=eleven)
    assert (status, body["code"]) == (413, 40005)
    many = {f"{n}.txt": b"1" for n in range(11)}
    status, body, _ = await api.send(tier2.channel.id, {"content": "x"}, files=many)
    assert status == 400 and "attachments" in body["errors"]


# --------------------------------------------------------------------------- rate limits


async def test_message_bucket_headers_and_429(api: Api) -> None:
    fake = api.fake
    channel = fake.guild.channel.id
    answers = [await api.send(channel, {"content": f"m{i}"}) for i in range(6)]
    assert [a[0] for a in answers] == [200] * 5 + [429]
    first_headers = answers[0][2]
    assert first_headers["X-RateLimit-Limit"] == "5"
    assert first_headers["X-RateLimit-Remaining"] == "4"
    assert float(first_headers["X-RateLimit-Reset-After"]) == pytest.approx(5.0, abs=0.5)
    assert float(first_headers["X-RateLimit-Reset"]) > fake.wall_time()
    assert first_headers["X-RateLimit-Bucket"]
    _, body, headers = answers[5]
    assert body["global"] is False and 0 < body["retry_after"] <= 5
    assert headers["X-RateLimit-Scope"] == "user" and headers["Via"]
    assert headers["X-RateLimit-Remaining"] == "0" and int(headers["Retry-After"]) >= 1
    assert [h.scope for h in fake.rate_limit_hits] == ["user"]
    assert len(fake.rate_limited) == 1

    # Another channel has its own bucket; edits have theirs; the clock resets the window.
    other = fake.add_channel(fake.guild, "other")
    assert (await api.send(other.id, {"content": "elsewhere"}))[0] == 200
    first = fake.messages(channel)[0]
    path = f"/channels/{channel}/messages/{first.id}"
    assert (await api.call("PATCH", path, {"content": "edited"}))[0] == 200
    fake.advance(5.1)
    assert (await api.send(channel, {"content": "later"}))[0] == 200


async def test_global_limit_and_interaction_routes_exempt(api: Api) -> None:
    fake = api.fake
    fake.rate_limits.global_per_second = 3
    answers = [await api.call("GET", f"/channels/{fake.guild.channel.id}") for _ in range(4)]
    assert [a[0] for a in answers] == [200, 200, 200, 429]
    _, body, headers = answers[3]
    assert body["global"] is True
    assert headers["X-RateLimit-Global"] == "true" and headers["X-RateLimit-Scope"] == "global"
    for _ in range(5):  # interaction callbacks do not count against the bot's global limit
        handle = await fake.slash("x", strict=False)
        path = f"/interactions/{handle.id}/{handle.token}/callback"
        assert (await api.call("POST", path, {"type": 5}, token=None))[0] == 200
    assert [h.scope for h in fake.rate_limit_hits] == ["global"]


async def test_discord_py_paces_itself_and_retries_429s() -> None:
    limits = RateLimits(message_create=(2, 0.4))
    async with FakeDiscord(rate_limits=limits) as fake:
        fake.add_guild()
        sent: list[int] = []

        async def burst(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("go", ephemeral=True)
            assert isinstance(interaction.channel, discord.TextChannel)
            for i in range(5):
                sent.append((await interaction.channel.send(f"n{i}")).id)
            # Concurrent reads: more than 4 per second trip the global limit; discord.py
            # waits `retry_after` and tries again.
            fake.rate_limits.global_per_second = 4
            await asyncio.gather(
                *(interaction.client.fetch_channel(interaction.channel.id) for _ in range(8))
            )
            sent.append(0)

        with fake.patch_discord_py():
            async with run_bot(bot_with(fake, {"burst": burst}), fake):
                await fake.slash("burst")
                await fake.wait_for(lambda: len(sent) == 6, timeout=15, what="the burst")
        posts = fake.find_requests("POST", "/messages")
        assert [p.status for p in posts] == [200] * 5
        # The headers told discord.py the bucket was empty: it waited instead of a 429.
        assert all(h.scope == "global" for h in fake.rate_limit_hits)
        assert posts[4].time - posts[0].time >= 0.7
        assert fake.rate_limit_hits, "8 concurrent reads should exceed 4/s"
        gets = fake.find_requests("GET", f"/channels/{fake.guild.channel.id}")
        assert sum(1 for g in gets if g.status == 200) == 8
