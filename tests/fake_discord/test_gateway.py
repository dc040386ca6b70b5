"""The fake's gateway as Discord's: intents, storms, compression, sharding; voice chat reads."""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import pytest
import pytest_asyncio
from discord import app_commands

from tests.fake_discord import (
    CHANNEL_STAGE,
    CHANNEL_VOICE,
    FakeDiscord,
    FakeGuild,
    Permission,
)
from tests.fake_discord.fixtures import DEFAULT_TOKEN, run_bot


class Recorder(discord.Client):
    """A client that records the events it handles."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.seen: list[str] = []

    async def on_message(self, message: discord.Message) -> None:
        self.seen.append(f"message:{message.content}")

    async def on_raw_typing(self, payload: Any) -> None:
        self.seen.append("typing")

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        self.seen.append(f"reaction:{payload.emoji}")

    async def on_member_update(self, before: discord.Member, after: discord.Member) -> None:
        self.seen.append("member_update")

    async def on_guild_channel_create(self, channel: discord.abc.GuildChannel) -> None:
        self.seen.append(f"channel:{channel.name}")


def intents(*names: str) -> discord.Intents:
    chosen = discord.Intents.none()
    for name in names:
        setattr(chosen, name, True)
    return chosen


# --------------------------------------------------------------------------- intents


async def test_events_of_intents_not_asked_for_never_arrive(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    guild = fake.guild
    bot = Recorder(intents=intents("guilds", "guild_reactions"))
    async with run_bot(bot, fake):
        message = await fake.post_message(guild.channel, "chatter")
        assert await fake.emit("TYPING_START", typing_event(guild)) == 0
        member_update = {**guild.member.payload(), "guild_id": str(guild.id), "nick": "x"}
        assert await fake.emit("GUILD_MEMBER_UPDATE", member_update) == 0
        await fake.react(message, "🔥")
        fake.add_channel(guild, "sentinel")  # GUILDS: arrives, after everything above
        await fake.wait_for(lambda: "channel:sentinel" in bot.seen, what="the sentinel")
        assert bot.seen == ["reaction:🔥", "channel:sentinel"]
        (session,) = [c.session for c in fake.live_connections if c.session]
        assert session.events_filtered == 3

    chatty = Recorder(intents=intents("guilds", "guild_messages", "guild_typing", "members"))
    async with run_bot(chatty, fake):
        await fake.post_message(guild.channel, "now heard")
        assert await fake.emit("TYPING_START", typing_event(guild)) == 1
        assert await fake.emit("GUILD_MEMBER_UPDATE", member_update) == 1
        await fake.wait_for(lambda: "member_update" in chatty.seen, what="the member update")
        assert chatty.seen[:2] == ["message:now heard", "typing"]


async def test_bot_member_update_and_privileged_intents(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    guild = fake.guild
    bot = Recorder(intents=intents("guilds"))
    async with run_bot(bot, fake):
        mine = {**guild.bot_member.payload(), "guild_id": str(guild.id), "nick": "krea"}
        # The bot's own member update is sent without GUILD_MEMBERS (gateway docs, Caveats).
        assert await fake.emit("GUILD_MEMBER_UPDATE", mine) == 1
        await fake.wait_for(lambda: "member_update" in bot.seen)

    fake.privileged_intents = 0  # not enabled in the developer portal
    refused = discord.Client(intents=intents("guilds", "members"))
    with pytest.raises(discord.PrivilegedIntentsRequired):
        async with run_bot(refused, fake):
            pass


def typing_event(guild: FakeGuild) -> dict[str, Any]:
    return {
        "channel_id": str(guild.channel.id),
        "guild_id": str(guild.id),
        "user_id": str(guild.member.id),
        "timestamp": 0,
        "member": guild.member.payload(),
    }


async def test_storm_is_filtered_by_intents_and_counted(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    bot = Recorder(intents=discord.Intents.default())  # no GUILD_MEMBERS: no member updates
    async with run_bot(bot, fake):
        report = await fake.storm(rate=2000, duration=0.25)
        assert report.generated == 500
        assert report.delivered == 375 and report.filtered == 125
        assert report.events_per_connection == [375]
        (conn,) = fake.live_connections
        assert report.bytes_sent > 0 and conn.compression == "zstd-stream"
        assert report.rate > 500
        await fake.wait_for(
            lambda: sum(s.startswith("message:") for s in bot.seen) == 125, timeout=10
        )
        assert sum(s.startswith("reaction:") for s in bot.seen) == 125
        assert "member_update" not in bot.seen


# --------------------------------------------------------------------------- voice and stage


async def test_reading_voice_chat_needs_connect(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    guild = fake.guild
    voice = fake.add_channel(guild, "Lounge", type=CHANNEL_VOICE)
    stage = fake.add_channel(guild, "Town hall", type=CHANNEL_STAGE)
    posted = await fake.post_message(voice, "in the voice chat")
    bot = discord.Client(intents=discord.Intents.default())
    async with run_bot(bot, fake):
        channel = bot.get_channel(voice.id)
        assert isinstance(channel, discord.VoiceChannel)
        assert isinstance(bot.get_channel(stage.id), discord.StageChannel)
        assert (await channel.fetch_message(posted.id)).content == "in the voice chat"

        fake.set_overwrite(voice, guild.bot_role, deny=Permission.CONNECT)
        await fake.wait_for(lambda: not channel.permissions_for(channel.guild.me).connect)
        with pytest.raises(discord.Forbidden) as refused:
            await channel.fetch_message(posted.id)
        assert refused.value.code == 50001
        with pytest.raises(discord.Forbidden):
            [m async for m in channel.history(limit=5)]
        stage_channel = bot.get_channel(stage.id)
        assert isinstance(stage_channel, discord.StageChannel)
        fake.set_overwrite(stage, guild.everyone, deny=Permission.CONNECT)
        with pytest.raises(discord.Forbidden):
            [m async for m in stage_channel.history(limit=5)]

        # A text channel without Read Message History: the list is empty, not refused.
        text = bot.get_channel(guild.channel.id)
        assert isinstance(text, discord.TextChannel)
        await fake.post_message(guild.channel, "old news")
        fake.set_overwrite(guild.channel, guild.bot_role, deny=Permission.READ_MESSAGE_HISTORY)
        assert [m async for m in text.history(limit=5)] == []


# --------------------------------------------------------------------------- compression


async def raw_identify(
    ws: aiohttp.ClientWebSocketResponse, receive: Any, *, shard: list[int] | None = None
) -> dict[str, Any]:
    hello = await receive()
    assert hello["op"] == 10
    identify: dict[str, Any] = {"token": DEFAULT_TOKEN, "intents": 1, "properties": {}}
    if shard is not None:
        identify["shard"] = shard
    await ws.send_json({"op": 2, "d": identify})
    result: dict[str, Any] = await receive()
    return result


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as created:
        yield created


async def test_zlib_stream_is_one_context_with_sync_flushes(
    fake_discord: FakeDiscord, session: aiohttp.ClientSession
) -> None:
    fake = fake_discord
    inflate = zlib.decompressobj()
    wire = 0

    async def receive() -> Any:
        nonlocal wire
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.BINARY
        wire += len(msg.data)
        assert msg.data.endswith(b"\x00\x00\xff\xff")  # Z_SYNC_FLUSH
        return json.loads(inflate.decompress(msg.data))

    url = f"{fake.gateway_url}?v=10&encoding=json&compress=zlib-stream"
    async with session.ws_connect(url) as ws:
        ready = await raw_identify(ws, receive)
        assert ready["t"] == "READY"
        guild_create = await receive()
        assert guild_create["t"] == "GUILD_CREATE"
        (conn,) = fake.connections
        assert conn.compression == "zlib-stream"
        assert conn.bytes_sent == wire and conn.frames_sent == 3 and conn.events_sent == 2
        plain = sum(len(json.dumps(f)) for f in (ready, guild_create))
        assert wire < plain  # the one stream shares its dictionary across frames

    async with session.ws_connect(f"{fake.gateway_url}?v=10&encoding=json") as ws:
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["op"] == 10
    assert fake.connections[1].compression is None


async def test_discord_py_reads_zstd_and_zlib_streams(
    fake_discord: FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_discord
    pytest.importorskip("zstandard")
    async with run_bot(Recorder(intents=discord.Intents.default()), fake) as bot:
        assert fake.connections[-1].compression == "zstd-stream"
        await fake.post_message(fake.guild.channel, "zstd")
        await fake.wait_for(lambda: "message:zstd" in bot.seen)

    class ZlibContext:
        """discord.py's own zlib-stream reader, used when zstandard is not installed."""

        COMPRESSION_TYPE = "zlib-stream"

        def __init__(self) -> None:
            self.buffer = bytearray()
            self.context = zlib.decompressobj()

        def decompress(self, data: bytes) -> str | None:
            self.buffer.extend(data)
            if len(data) < 4 or data[-4:] != b"\x00\x00\xff\xff":
                return None
            text = self.context.decompress(self.buffer).decode()
            self.buffer = bytearray()
            return text

    monkeypatch.setattr(discord.utils, "_ActiveDecompressionContext", ZlibContext)
    async with run_bot(Recorder(intents=discord.Intents.default()), fake) as bot:
        assert fake.connections[-1].compression == "zlib-stream"
        await fake.post_message(fake.guild.channel, "zlib")
        await fake.wait_for(lambda: "message:zlib" in bot.seen)


# --------------------------------------------------------------------------- sharding


def guilds_on_every_shard(fake: FakeDiscord, shards: int, per_shard: int = 1) -> list[FakeGuild]:
    """Add guilds until each shard has exactly `per_shard`; ids differ in their timestamp,
    so the fake's clock moves a millisecond between guilds. A guild landing on a shard that
    is already full is dropped again (call before any bot connects): how many milliseconds
    pass between two ids depends on the machine's load, so a shard could otherwise end up
    with more than `per_shard` (and a `max_guilds_per_shard` test with close code 4011)."""
    guilds = list(fake.guilds.values())

    def count(shard: int) -> int:
        return sum(1 for g in guilds if (g.id >> 22) % shards == shard)

    while any(count(s) < per_shard for s in range(shards)):
        fake.advance(0.001)
        guild = fake.add_guild(f"guild {len(guilds)}")
        if count((guild.id >> 22) % shards) >= per_shard:
            del fake.guilds[guild.id]  # that shard has its share: exactly per_shard on each
            continue
        guilds.append(guild)
    return guilds


async def test_auto_sharded_client_gets_each_guild_on_its_shard() -> None:
    async with FakeDiscord(shards=3, max_concurrency=3) as fake:
        guilds = guilds_on_every_shard(fake, 3, per_shard=2)
        answered: dict[int, int | None] = {}
        bot = discord.AutoShardedClient(intents=discord.Intents.default())
        tree = app_commands.CommandTree(bot)

        @tree.command(description="Which shard am I on")
        async def where(interaction: discord.Interaction) -> None:
            assert interaction.guild is not None
            answered[interaction.guild.id] = interaction.guild.shard_id
            await interaction.response.send_message(f"shard {interaction.guild.shard_id}")

        async def setup_hook() -> None:
            await tree.sync()

        async def no_wait(shard_id: int | None, *, initial: bool = False) -> None:
            """max_concurrency 3: the three shards may identify at once."""

        bot.setup_hook = setup_hook  # type: ignore[method-assign]
        bot.before_identify_hook = no_wait  # type: ignore[method-assign]
        with fake.patch_discord_py():
            async with run_bot(bot, fake):
                assert bot.shard_count == 3
                shards = sorted(c.session.shard for c in fake.live_connections if c.session)
                assert shards == [(0, 3), (1, 3), (2, 3)]
                for conn in fake.live_connections:
                    assert conn.session is not None
                    shard_id = conn.session.shard[0]
                    sent = {
                        int(f["d"]["id"]) for f in conn.session.buffer if f["t"] == "GUILD_CREATE"
                    }
                    assert sent == {g.id for g in guilds if (g.id >> 22) % 3 == shard_id}
                for guild in guilds:
                    handle = await fake.slash("where", guild=guild)
                    reply = await handle.wait_for_original()
                    shard_id = (guild.id >> 22) % 3
                    assert reply.content == f"shard {shard_id}"
                    (receiver,) = [
                        c
                        for c in fake.live_connections
                        if c.session
                        and any(
                            f["t"] == "INTERACTION_CREATE" and f["d"]["id"] == str(handle.id)
                            for f in c.session.buffer
                        )
                    ]
                    assert receiver.shard == (shard_id, 3)
        assert answered == {g.id: (g.id >> 22) % 3 for g in guilds}
        assert len(fake.identify_log) == 3 and not any(r.too_soon for r in fake.identify_log)


async def test_gateway_bot_and_shard_close_codes(session: aiohttp.ClientSession) -> None:
    async with FakeDiscord(shards=2, max_concurrency=1, max_guilds_per_shard=2) as fake:
        guilds_on_every_shard(fake, 2, per_shard=2)
        async with session.get(
            f"{fake.api_base}/gateway/bot", headers={"Authorization": f"Bot {DEFAULT_TOKEN}"}
        ) as resp:
            info = await resp.json(content_type=None)
        assert info["url"] == fake.gateway_url and info["shards"] == 2
        assert info["session_start_limit"]["max_concurrency"] == 1
        assert info["session_start_limit"]["remaining"] == info["session_start_limit"]["total"]

        async def opened() -> tuple[aiohttp.ClientWebSocketResponse, Any]:
            ws = await session.ws_connect(f"{fake.gateway_url}?v=10&encoding=json")

            async def receive() -> Any:
                msg = await ws.receive()
                return json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else msg

            return ws, receive

        ws, receive = await opened()
        closed = await raw_identify(ws, receive)  # no shard: every guild on one connection
        assert ws.close_code == 4011, closed
        ws, receive = await opened()
        await raw_identify(ws, receive, shard=[2, 2])
        assert ws.close_code == 4010

        fake.advance(5.1)  # a new identify window
        ws0, receive0 = await opened()
        ready = await raw_identify(ws0, receive0, shard=[0, 2])
        assert ready["t"] == "READY" and ready["d"]["shard"] == [0, 2]
        ws1, receive1 = await opened()
        await raw_identify(ws1, receive1, shard=[1, 2])  # same bucket (max_concurrency 1)
        assert [r.too_soon for r in fake.identify_log[-2:]] == [False, True]

        fake.enforce_identify_rate = True
        ws2, receive2 = await opened()
        refused = await raw_identify(ws2, receive2, shard=[1, 2])
        assert refused == {"op": 9, "d": False, "s": None, "t": None}
        fake.advance(5.1)
        ws3, receive3 = await opened()
        assert (await raw_identify(ws3, receive3, shard=[1, 2]))["t"] == "READY"
        for ws in (ws0, ws1, ws2, ws3):
            await ws.close()
