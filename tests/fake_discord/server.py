"""A wire-level fake Discord: REST API v10 and gateway on loopback, for an unmodified discord.py.

Quick start::

    async with FakeDiscord() as fake:
        guild = fake.add_guild()                    # owner, admin, member, bot, #general
        with fake.patch_discord_py():               # Route.BASE + DEFAULT_GATEWAY -> fake
            async with run_bot(bot, fake):          # from tests.fake_discord.fixtures
                handle = await fake.slash("imagine", {"prompt": "a cat"})
                await handle.wait_for_response()    # CallbackRecord(type=5, ...)
                msg = await handle.wait_for_followup()
                assert msg.files[0].startswith(b"\\x89PNG")
                click = await fake.click(msg, msg.custom_id_matching("krea:regen:"))

World building (call before the bot connects; later calls also send the gateway events):
    `FakeDiscord(*, token, rate_limits=RateLimits(...), shards=1, max_concurrency=1,
    max_guilds_per_shard=2500, enforce_identify_rate=False, privileged_intents=...)`.
    `add_guild(name=..., channels=("general",), everyone_permissions=..., bot_permissions=...,
    premium_tier=0, filesize_limit=None) -> FakeGuild` (upload limit from the boost tier) with
    `.owner`, `.admin` (Manage Guild), `.member`, `.bot_member`, `.channel`;
    `add_channel(guild, name, type=CHANNEL_TEXT | CHANNEL_VOICE | CHANNEL_STAGE)`, `add_role`,
    `add_member(guild, name, *, nitro_upload_limit=None)`, `set_overwrite`, `remove_guild`.
    `fake.bot_user`, `fake.application_id`.

Interactions (each returns an `InteractionHandle`, see models.py):
    `slash(name, options, *, guild, channel, user, attachment_size_limit)` — `name` may be
    "group sub" or "cmd sub"; option types come from the synced command (else inferred from
    the Python value; `Upload(...)` -> attachment option resolved with a signed CDN URL).
    `attachment_size_limit` defaults to max(guild's limit, the member's Nitro limit).
    `autocomplete(name, options, focused=...)`, `click(message, custom_id, *, values, user)`,
    `submit_modal(handle_that_got_the_modal, {custom_id: value}, *, user)`,
    `message_command(name, message, *, user)` (a message context menu: Apps -> `name`; in
    a DM channel from `dm_channel(user)` too).

Other events: `emit(event, data) -> sessions reached` (filtered by the intents each session
    identified with and routed to the guild's shard; `dispatch` is the same without the
    result), `react(message, emoji, user)`, `unreact(...)`, `post_message(channel, content,
    author, attachments=[Upload], embeds=[...])` (`external_image(data)` is an embed image
    served by the media proxy, as in a link preview), `delete_message(message)`,
    `await storm(rate=2000, duration=1.0, *, guild, kinds=STORM_KINDS) -> StormReport`
    (busy-server chatter for benchmarks).

Reading back: `messages(channel=None, include_deleted=..., include_ephemeral=...)`,
    `message(id)`, `last_message(channel)`, `requests`, `find_requests(method, route)`,
    `errors`, `rate_limited`, `rate_limit_hits` (real 429s: scope, bucket, retry_after),
    `command_syncs`, `sync_log`, `commands(guild)`, `interactions`, `connections` (each with
    `shard`, `compression`, `events_sent`, `frames_sent`, `bytes_sent`), `identify_count`,
    `identify_log`, `resume_count`, `events_filtered`, `fetch_cdn(url)`.
    `await wait_for(predicate, timeout)`, `await wait_for_message(predicate, channel=...)`,
    `await wait_for_connections(n)`.

Control: `clock()`, `advance(seconds)`, `wall_time()`, `rate_limit_next(route_substring,
    retry_after=0.2)` (a scripted 429), `rate_limits` (change limits while running),
    `validate_schemas`, `drop_connections(code=4000)` (clients RESUME), `send_reconnect()`,
    `invalidate_sessions()`.

Enforced (Discord's status and code; README.md beside this file says where each rule comes
from): request bodies against Discord's OpenAPI schemas (400/50035 with nested errors, spec.py;
invalid JSON 400/50109), component emoji (50035 BUTTON_COMPONENT_INVALID_EMOJI), 3 s initial
response (404/10062), one initial response (400/40060), 15 min token (401/50027),
message/embeds/components/modal/choices limits (400/50035), empty message (400/50006), uploads
over the limit per attachment (413/40005), at most 10 attachments, rate limits (429 with
Discord's headers, ratelimits.py), unknown message (404/10008), unknown channel (404/10003),
channel permissions for bot-token sends and reads, Connect for voice/stage chat reads
(403/50001, 403/50013), editing others' messages (403/50005), messages blanked for an app
without the Message Content intent (`privileged_intents`; `app_reads_content`). Gateway:
intents (intents.py), shards (4010, 4011), identify rate per max_concurrency bucket (recorded;
op 9 if enforced), privileged intents (4014), zlib-stream/zstd-stream transport compression
when asked for.
"""

# The test-facing API takes `timeout=` as the brief asks (asyncio.timeout would be clumsier).

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import json
import mimetypes
import re
import secrets
import struct
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yarl
from aiohttp import WSMsgType, web

from tests.fake_discord.intents import Intent, event_guild_id, required_intent
from tests.fake_discord.models import (
    BOOST_TIER_UPLOAD_LIMITS,
    CDN_URL_LIFETIME,
    CHANNEL_STAGE,
    CHANNEL_VOICE,
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    DEFAULT_FILESIZE_LIMIT,
    INTERACTION_RESPONSE_DEADLINE,
    INTERACTION_TOKEN_LIFETIME,
    JSON,
    MESSAGE_FLAG_COMPONENTS_V2,
    MESSAGE_FLAG_EPHEMERAL,
    MESSAGE_FLAG_LOADING,
    MESSAGE_FLAG_SUPPRESS_EMBEDS,
    ApiErrorRecord,
    CallbackRecord,
    DiscordApiError,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    InteractionHandle,
    MessageRevision,
    Permission,
    PermissionOverwrite,
    RecordedRequest,
    StoredAttachment,
    Upload,
    UploadedFile,
)
from tests.fake_discord.ratelimits import RateLimiter, RateLimitHit, RateLimits
from tests.fake_discord.spec import check_request, has_request_schema
from tests.fake_discord.validation import FormErrors, check_choices, check_message, check_modal

T = TypeVar("T")

DISCORD_EPOCH_MS = 1420070400000
API_PREFIXES = ("/api/v10", "/api/v9")
EDITABLE_FLAGS = MESSAGE_FLAG_SUPPRESS_EMBEDS | MESSAGE_FLAG_COMPONENTS_V2
VOICE_CHANNEL_TYPES = (CHANNEL_VOICE, CHANNEL_STAGE)
SENDABLE_FLAGS = EDITABLE_FLAGS | MESSAGE_FLAG_EPHEMERAL | (1 << 12)  # 1<<12 suppress notif.
#: How long Discord remembers a nonce for ``enforce_nonce`` ("the past few minutes").
NONCE_WINDOW = 5 * 60.0
IDENTIFY_WINDOW = 5.0  # seconds per identify bucket (gateway docs, "max_concurrency")
SESSION_START_TOTAL = 1000  # identifies per 24 h (gateway docs, "Session Start Limit")
#: The bot's permissions in its DM with a user (`app_permissions` of a BOT_DM interaction).
DM_APP_PERMISSIONS = (
    Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.READ_MESSAGE_HISTORY
    | Permission.ADD_REACTIONS
)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _image_size(data: bytes) -> tuple[int | None, int | None]:
    """Width and height of a PNG, GIF, WEBP or JPEG image, else (None, None)."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            w, h = struct.unpack(">II", data[16:24])
            return w, h
        if data[:6] in (b"GIF87a", b"GIF89a"):
            w, h = struct.unpack("<HH", data[6:10])
            return w, h
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and data[12:16] == b"VP8X":
            w = int.from_bytes(data[24:27], "little") + 1
            h = int.from_bytes(data[27:30], "little") + 1
            return w, h
        if data[:2] == b"\xff\xd8":
            i = 2
            while i + 9 < len(data):
                if data[i] != 0xFF:
                    i += 1
                    continue
                marker = data[i + 1]
                if marker in (0xC0, 0xC1, 0xC2):
                    h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                    return w, h
                length = struct.unpack(">H", data[i + 2 : i + 4])[0]
                i += 2 + length
    except (struct.error, IndexError):
        pass
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:
        return None, None


# --------------------------------------------------------------------------- gateway bookkeeping


@dataclass
class GatewaySession:
    """A gateway session (created by IDENTIFY, continued by RESUME)."""

    id: str
    token: str
    intents: int
    seq: int = 0
    buffer: list[JSON] = field(default_factory=list)
    connection: GatewayConnection | None = None
    invalidated: bool = False
    shard: tuple[int, int] = (0, 1)
    # Events not sent to this session because it did not identify with their intent.
    events_filtered: int = 0

    def gets_guild(self, guild_id: int) -> bool:
        """Whether `guild_id` is routed to this session's shard: `(guild_id >> 22) % count`
        (https://discord.com/developers/docs/events/gateway#sharding-sharding-formula)."""
        shard_id, count = self.shard
        return count <= 1 or (guild_id >> 22) % count == shard_id


@dataclass
class GatewayConnection:
    """One websocket connection from a client.

    With `?compress=zlib-stream` every frame is a binary chunk of one zlib stream per
    connection, each ending in a Z_SYNC_FLUSH; with `zstd-stream` (when `zstandard` is
    importable) each frame is a flushed block of one zstd stream; otherwise frames are JSON
    text (https://discord.com/developers/docs/events/gateway#transport-compression).
    `events_sent`, `frames_sent` and `bytes_sent` count what went over the wire.
    """

    ws: web.WebSocketResponse
    query: dict[str, str]
    opened_at: float
    session: GatewaySession | None = None
    identify: JSON | None = None
    resumed: bool = False
    closed: bool = False
    heartbeats: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    events_sent: int = 0
    frames_sent: int = 0
    bytes_sent: int = 0
    compression: str | None = field(init=False, default=None)
    _encode: Callable[[bytes], bytes] | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        asked = self.query.get("compress")
        if asked == "zlib-stream":
            zlib_context = zlib.compressobj()
            self.compression = asked
            self._encode = lambda data: (
                zlib_context.compress(data) + zlib_context.flush(zlib.Z_SYNC_FLUSH)
            )
        elif asked == "zstd-stream":
            try:
                import zstandard
            except ImportError:  # the fake cannot compress it: plain JSON, which clients read
                return
            zstd_context = zstandard.ZstdCompressor().compressobj()
            self.compression = asked
            self._encode = lambda data: (
                zstd_context.compress(data) + zstd_context.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
            )

    async def send(self, payload: JSON) -> None:
        """Send one gateway payload (compressed if the client asked for it)."""
        text = json.dumps(payload)  # ASCII: len(text) is its size in bytes
        async with self.lock:
            if self.ws.closed:
                return
            try:
                if self._encode is None:
                    await self.ws.send_str(text)
                    size = len(text)
                else:
                    data = self._encode(text.encode())
                    await self.ws.send_bytes(data)
                    size = len(data)
            except (ConnectionError, RuntimeError):
                self.closed = True  # the client vanished; RESUME replays from the buffer
                return
            self.frames_sent += 1
            self.bytes_sent += size
            if payload.get("op") == 0:
                self.events_sent += 1

    @property
    def shard(self) -> tuple[int, int] | None:
        """`[shard_id, shard_count]` this connection identified with (None before)."""
        return self.session.shard if self.session is not None else None

    @property
    def ready(self) -> bool:
        """Whether READY or RESUMED was sent on this connection."""
        return self.session is not None


@dataclass
class RateLimitScript:
    """A scripted 429 (see `FakeDiscord.rate_limit_next`)."""

    route_substring: str
    retry_after: float
    remaining: int
    method: str | None
    is_global: bool


@dataclass
class IdentifyRecord:
    """One IDENTIFY the fake received."""

    time: float
    shard: tuple[int, int]
    rate_limit_key: int
    # True when it came less than 5 s after another identify of the same bucket
    # (shard_id % max_concurrency): Discord answers those with op 9 Invalid Session.
    too_soon: bool
    accepted: bool


@dataclass
class StormReport:
    """What `FakeDiscord.storm()` generated and what reached the clients."""

    generated: int
    delivered: int
    filtered: int
    seconds: float
    events_per_connection: list[int]
    bytes_per_connection: list[int]

    @property
    def rate(self) -> float:
        """Events generated per second (real time)."""
        return self.generated / self.seconds if self.seconds else 0.0

    @property
    def bytes_sent(self) -> int:
        """Bytes on the wire over every connection during the storm."""
        return sum(self.bytes_per_connection)


STORM_KINDS = ("message", "typing", "reaction", "member_update")
# Events that may come without a guild (DMs): with shards, only shard 0 gets those.
DM_EVENTS = frozenset(
    {
        "MESSAGE_CREATE",
        "MESSAGE_UPDATE",
        "MESSAGE_DELETE",
        "MESSAGE_DELETE_BULK",
        "CHANNEL_PINS_UPDATE",
        "MESSAGE_REACTION_ADD",
        "MESSAGE_REACTION_REMOVE",
        "MESSAGE_REACTION_REMOVE_ALL",
        "MESSAGE_REACTION_REMOVE_EMOJI",
        "TYPING_START",
        "INTERACTION_CREATE",
        "CHANNEL_CREATE",
    }
)


@dataclass
class SyncRecord:
    """One bulk overwrite of application commands."""

    guild_id: int | None
    names: list[str]
    time: float


@dataclass
class _Ctx:
    request: web.Request
    params: dict[str, str]
    json: Any
    files: list[UploadedFile]
    record: RecordedRequest
    handle: InteractionHandle | None = None


Handler = Callable[[_Ctx], Awaitable[tuple[int, Any]]]


@dataclass
class _Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler
    bot_auth: bool


# --------------------------------------------------------------------------- the fake


class FakeDiscord:
    """A fake Discord server on 127.0.0.1 (REST under `/api/v10`, gateway at `/gateway`).

    Args:
        clock: seconds source for every deadline (default `time.monotonic`); `advance()` adds
            an offset on top of it.
        token: if set, the only bot token accepted (REST 401, gateway close 4004); else any.
        bot_name: the bot user's username.
        heartbeat_interval_ms: sent in HELLO.
        message_events: send MESSAGE_CREATE/UPDATE/DELETE and reaction events for what the bot
            does, as Discord does (subject to the IDENTIFY intents).
        cdn_base: base of attachment `url`s; `proxy_url`s always point at this server.
            Pass `None` to make `url` point at this server too (so `Attachment.read()` works).
        rate_limits: Discord's REST rate limits to enforce (see ratelimits.py); default:
            5 per 5 s per channel for message create and for message edit, 50/s globally.
        shards: the shard count `GET /gateway/bot` recommends.
        max_concurrency: `session_start_limit.max_concurrency`: identifies allowed per 5 s,
            one per bucket `shard_id % max_concurrency`.
        max_guilds_per_shard: more guilds than this on one connection closes it with 4011
            (Discord: 2500).
        enforce_identify_rate: answer an identify that comes too soon for its bucket with
            op 9 Invalid Session, as Discord does; by default it is only recorded
            (`identify_log`), since discord.py bots restarted by tests re-identify at once.
        privileged_intents: the privileged intents enabled for the application; asking for
            another one closes the connection with 4014.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] | None = None,
        token: str | None = None,
        bot_name: str = "kreabot",
        heartbeat_interval_ms: int = 41250,
        message_events: bool = True,
        cdn_base: str | None = "https://cdn.discordapp.com",
        rate_limits: RateLimits | None = None,
        shards: int = 1,
        max_concurrency: int = 1,
        max_guilds_per_shard: int = 2500,
        enforce_identify_rate: bool = False,
        privileged_intents: int = Intent.PRIVILEGED,
    ) -> None:
        self._clock_source: Callable[[], float] = clock or time.monotonic
        self._clock_offset = 0.0
        self._clock_origin = self._clock_source()
        self._wall_origin = time.time()
        self._last_id = 0
        self.token = token
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.message_events = message_events
        # Validate request bodies against Discord's OpenAPI spec (spec.py); on by default.
        self.validate_schemas = True
        # Real seconds `click()` waits after the message's HTTP response was written.
        self.click_settle = 0.02
        self._cdn_base = cdn_base
        self._secret = secrets.token_bytes(16)

        self.application_id: int = self.new_id()
        self.bot_user = FakeUser(self.application_id, bot_name, bot=True)
        self.app_owner = FakeUser(self.new_id(), "app-owner")

        self.guilds: dict[int, FakeGuild] = {}
        self.dm_channels: dict[int, FakeChannel] = {}
        self.users: dict[int, FakeUser] = {self.bot_user.id: self.bot_user}
        self._messages: dict[int, FakeMessage] = {}
        self._attachments: dict[int, StoredAttachment] = {}
        # Images of link previews served by the media proxy: key -> (content type, bytes).
        self._external: dict[str, tuple[str | None, bytes]] = {}
        self._commands: dict[int | None, dict[tuple[str, int], JSON]] = {}
        self.command_syncs = 0
        self.sync_log: list[SyncRecord] = []

        self.interactions: list[InteractionHandle] = []
        self._interactions_by_id: dict[int, InteractionHandle] = {}
        self._interactions_by_token: dict[str, InteractionHandle] = {}

        self.requests: list[RecordedRequest] = []
        self.errors: list[ApiErrorRecord] = []
        self.rate_limited: list[RecordedRequest] = []
        self.rate_limit_hits: list[RateLimitHit] = []
        self._rate_limits: list[RateLimitScript] = []
        self.rate_limits = rate_limits or RateLimits()
        self._limiter = RateLimiter(self.rate_limits, self.clock, self.wall_time)

        self.sessions: dict[str, GatewaySession] = {}
        self.connections: list[GatewayConnection] = []
        self.identify_count = 0
        self.identify_log: list[IdentifyRecord] = []
        self.recommended_shards = shards
        self.max_concurrency = max_concurrency
        self.max_guilds_per_shard = max_guilds_per_shard
        self.enforce_identify_rate = enforce_identify_rate
        self.privileged_intents = privileged_intents
        self.session_starts = 0
        self._identify_buckets: dict[int, float] = {}
        self.events_filtered = 0
        self._storm_cast: dict[int, tuple[list[FakeMember], FakeMessage]] = {}
        self.resume_count = 0
        self.gateway_events: list[JSON] = []

        self._changed = asyncio.Event()
        self._routes: list[_Route] = []
        self._register_routes()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start listening on an ephemeral loopback port."""
        app = web.Application(client_max_size=512 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway_handler)
        app.router.add_get("/gateway/", self._gateway_handler)
        app.router.add_get("/attachments/{channel}/{attachment}/{filename}", self._cdn_handler)
        app.router.add_get("/external/{key}/{tail:.*}", self._external_handler)
        app.router.add_route("*", "/api/{tail:.*}", self._api_handler)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def close(self) -> None:
        """Close every websocket and stop the server."""
        for conn in self.connections:
            if not conn.ws.closed:
                with contextlib.suppress(Exception):
                    await conn.ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def http_url(self) -> str:
        """`http://127.0.0.1:<port>`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """What `discord.http.Route.BASE` is set to."""
        return f"{self.http_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """What `DiscordWebSocket.DEFAULT_GATEWAY` is set to (also `resume_gateway_url`)."""
        return f"ws://127.0.0.1:{self.port}/gateway"

    @contextlib.contextmanager
    def patch_discord_py(self) -> Iterator[FakeDiscord]:
        """Point discord.py's REST base and default gateway at this fake; restore on exit."""
        from discord.gateway import DiscordWebSocket
        from discord.http import Route

        old_base, old_gateway = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
        Route.BASE = self.api_base
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        try:
            yield self
        finally:
            Route.BASE = old_base
            DiscordWebSocket.DEFAULT_GATEWAY = old_gateway

    # ------------------------------------------------------------------ clock and ids

    def clock(self) -> float:
        """The fake's monotonic clock in seconds (the injected source plus `advance()`s)."""
        return self._clock_source() + self._clock_offset

    def advance(self, seconds: float) -> None:
        """Move the fake's clock forward (e.g. `advance(15 * 60 + 1)` expires tokens)."""
        self._clock_offset += seconds
        self._notify()

    def wall_time(self) -> float:
        """Unix time as seen by the fake (moves with `advance()`); used for timestamps/CDN."""
        return self._wall_origin + (self.clock() - self._clock_origin)

    def new_id(self) -> int:
        """A fresh, increasing snowflake."""
        ms = int(self.wall_time() * 1000)
        candidate = (max(ms - DISCORD_EPOCH_MS, 0) << 22) | 1
        self._last_id = max(candidate, self._last_id + 1)
        return self._last_id

    # ------------------------------------------------------------------ waiting

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(
        self, predicate: Callable[[], T | None], timeout: float = 5.0, *, what: str = ""
    ) -> T:
        """Wait (real time) until `predicate()` is truthy, re-checked on every fake event."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")
            event = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(remaining, 0.25))

    async def wait_for_message(
        self,
        predicate: Callable[[FakeMessage], bool] | None = None,
        *,
        channel: FakeChannel | int | None = None,
        timeout: float = 5.0,
    ) -> FakeMessage:
        """Wait for a (non-deleted) message matching `predicate`; returns the newest match."""
        cid = channel.id if isinstance(channel, FakeChannel) else channel

        def check() -> FakeMessage | None:
            for message in reversed(list(self._messages.values())):
                if message.deleted or (cid is not None and message.channel_id != cid):
                    continue
                if predicate is None or predicate(message):
                    return message
            return None

        return await self.wait_for(check, timeout, what="a matching message")

    async def wait_for_connections(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until `count` connections got READY/RESUMED in total."""

        def check() -> bool:
            return sum(1 for c in self.connections if c.ready) >= count

        await self.wait_for(check, timeout, what=f"{count} gateway connection(s)")

    # ------------------------------------------------------------------ world building

    def add_guild(
        self,
        name: str = "Test Guild",
        *,
        channels: Sequence[str] = ("general",),
        everyone_permissions: int = DEFAULT_EVERYONE_PERMISSIONS,
        bot_permissions: int = DEFAULT_BOT_PERMISSIONS,
        admin_permissions: int = Permission.MANAGE_GUILD,
        filesize_limit: int | None = None,
        premium_tier: int = 0,
    ) -> FakeGuild:
        """A guild with `@everyone`, an Admin role (Manage Guild), a bot role, text channels,
        and members: `owner`, `admin`, `member` (plain) and `bot_member`.

        The upload limit follows the boost tier (10 MiB at tiers 0-1, 50 MiB at 2, 100 MiB
        at 3) unless `filesize_limit` overrides it.
        """
        if filesize_limit is None:
            filesize_limit = BOOST_TIER_UPLOAD_LIMITS[premium_tier]
        gid = self.new_id()
        owner_user = self._new_user(f"owner{len(self.guilds) or ''}")
        guild = FakeGuild(
            id=gid,
            name=name,
            owner_id=owner_user.id,
            filesize_limit=filesize_limit,
            premium_tier=premium_tier,
        )
        guild.roles[gid] = FakeRole(gid, "@everyone", everyone_permissions, position=0)
        admin_role = FakeRole(self.new_id(), "Admin", admin_permissions, position=2)
        bot_role = FakeRole(
            self.new_id(), self.bot_user.username, bot_permissions, 1, True, self.bot_user.id
        )
        guild.roles[admin_role.id] = admin_role
        guild.roles[bot_role.id] = bot_role
        guild.admin_role_id, guild.bot_role_id = admin_role.id, bot_role.id
        for position, channel_name in enumerate(channels):
            cid = self.new_id()
            guild.channels[cid] = FakeChannel(cid, gid, channel_name, position=position)
        self._attach_member(guild, owner_user, [])
        guild.admin_id = self._attach_member(guild, self._new_user("admin"), [admin_role.id]).id
        guild.member_id = self._attach_member(guild, self._new_user("member"), []).id
        guild.bot_id = self._attach_member(guild, self.bot_user, [bot_role.id]).id
        self.guilds[gid] = guild
        self._broadcast_soon("GUILD_CREATE", guild.payload())
        return guild

    @property
    def guild(self) -> FakeGuild:
        """The first guild (created on demand)."""
        if not self.guilds:
            return self.add_guild()
        return next(iter(self.guilds.values()))

    def add_channel(
        self,
        guild: FakeGuild,
        name: str,
        *,
        overwrites: Sequence[PermissionOverwrite] = (),
        type: int = 0,
    ) -> FakeChannel:
        """Add a channel (sends CHANNEL_CREATE to connected clients)."""
        channel = FakeChannel(
            self.new_id(), guild.id, name, type=type, position=len(guild.channels)
        )
        channel.overwrites.extend(overwrites)
        guild.channels[channel.id] = channel
        self._broadcast_soon("CHANNEL_CREATE", channel.payload())
        return channel

    def add_role(self, guild: FakeGuild, name: str, permissions: int = 0) -> FakeRole:
        """Add a role (sends GUILD_ROLE_CREATE)."""
        role = FakeRole(self.new_id(), name, permissions, position=len(guild.roles))
        guild.roles[role.id] = role
        self._broadcast_soon(
            "GUILD_ROLE_CREATE", {"guild_id": str(guild.id), "role": role.payload()}
        )
        return role

    def add_member(
        self,
        guild: FakeGuild,
        username: str,
        *,
        roles: Sequence[FakeRole] = (),
        permissions: int | None = None,
        nitro_upload_limit: int | None = None,
    ) -> FakeMember:
        """Add a member; `permissions` creates a dedicated role with those permissions.

        `nitro_upload_limit` (e.g. `NITRO_UPLOAD_LIMIT`) is the member's own upload limit:
        their interactions get `attachment_size_limit` = max(guild's, member's).
        """
        role_ids = [r.id for r in roles]
        if permissions is not None:
            role_ids.append(self.add_role(guild, f"{username}-role", permissions).id)
        member = self._attach_member(guild, self._new_user(username), role_ids)
        member.nitro_upload_limit = nitro_upload_limit
        self._broadcast_soon("GUILD_MEMBER_ADD", {**member.payload(), "guild_id": str(guild.id)})
        return member

    def set_overwrite(
        self,
        channel: FakeChannel,
        target: FakeRole | FakeMember,
        *,
        allow: int = 0,
        deny: int = 0,
    ) -> None:
        """Set a channel permission overwrite (sends CHANNEL_UPDATE)."""
        otype = 1 if isinstance(target, FakeMember) else 0
        channel.overwrites = [
            o for o in channel.overwrites if not (o.type == otype and o.id == target.id)
        ]
        channel.overwrites.append(PermissionOverwrite(target.id, otype, allow, deny))
        self._broadcast_soon("CHANNEL_UPDATE", channel.payload())

    async def remove_guild(self, guild: FakeGuild) -> None:
        """The bot is removed from `guild`: GUILD_DELETE is sent and the guild forgotten."""
        self.guilds.pop(guild.id, None)
        await self.dispatch("GUILD_DELETE", {"id": str(guild.id)})

    def _new_user(self, username: str) -> FakeUser:
        user = FakeUser(self.new_id(), username)
        self.users[user.id] = user
        return user

    def _attach_member(self, guild: FakeGuild, user: FakeUser, role_ids: list[int]) -> FakeMember:
        member = FakeMember(user=user, guild_id=guild.id, role_ids=role_ids)
        guild.members[user.id] = member
        return member

    def _find_channel(self, channel_id: int) -> tuple[FakeChannel | None, FakeGuild | None]:
        for guild in self.guilds.values():
            channel = guild.channels.get(channel_id)
            if channel is not None:
                return channel, guild
        return self.dm_channels.get(channel_id), None

    def _bot_member(self, guild: FakeGuild) -> FakeMember:
        member = guild.members.get(self.bot_user.id)
        if member is None:
            member = self._attach_member(guild, self.bot_user, [])
        return member

    # ------------------------------------------------------------------ CDN

    def _sign(self, channel_id: int, attachment_id: int, filename: str, ex: int, is_: int) -> str:
        msg = f"{channel_id}/{attachment_id}/{filename}|{ex:x}|{is_:x}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def signed_url(self, attachment: StoredAttachment, *, proxy: bool = False) -> str:
        """A freshly signed URL for `attachment` (expires `CDN_URL_LIFETIME` after now)."""
        issued = int(self.wall_time())
        expiry = int(issued + CDN_URL_LIFETIME)
        hm = self._sign(attachment.channel_id, attachment.id, attachment.filename, expiry, issued)
        base = self.http_url if (proxy or self._cdn_base is None) else self._cdn_base
        path = f"/attachments/{attachment.channel_id}/{attachment.id}/{quote(attachment.filename)}"
        return f"{base}{path}?ex={expiry:x}&is={issued:x}&hm={hm}&"

    def _verify_cdn(
        self, channel: str, attachment: str, filename: str, query: Mapping[str, str]
    ) -> StoredAttachment | None:
        try:
            stored = self._attachments[int(attachment)]
            ex, is_ = int(query["ex"], 16), int(query["is"], 16)
            hm = query["hm"]
        except (KeyError, ValueError):
            return None
        if stored.channel_id != int(channel) or stored.filename != filename:
            return None
        if not hmac.compare_digest(self._sign(stored.channel_id, stored.id, filename, ex, is_), hm):
            return None
        if self.wall_time() > ex:
            return None
        return stored

    def fetch_cdn(self, url: str) -> bytes:
        """The bytes behind a signed attachment URL (raises LookupError if invalid/expired)."""
        parts = urlsplit(url)
        segments = parts.path.strip("/").split("/")
        if len(segments) != 4 or segments[0] != "attachments":
            raise LookupError(f"not an attachment URL: {url}")
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        stored = self._verify_cdn(segments[1], segments[2], unquote(segments[3]), query)
        if stored is None:
            raise LookupError(f"attachment URL invalid or expired: {url}")
        return stored.data

    def local_url(self, url: str) -> str:
        """The same attachment URL served by this fake (for downloading on loopback)."""
        parts = urlsplit(url)
        return f"{self.http_url}{parts.path}?{parts.query}"

    async def _cdn_handler(self, request: web.Request) -> web.Response:
        info = request.match_info
        stored = self._verify_cdn(
            info["channel"], info["attachment"], info["filename"], request.query
        )
        if stored is None:
            return web.Response(status=404, text="This content is no longer available.")
        return web.Response(
            body=stored.data,
            headers={"Content-Type": stored.content_type or "application/octet-stream"},
        )

    def external_image(
        self,
        data: bytes,
        *,
        filename: str = "preview.png",
        content_type: str | None = None,
        origin: str = "https://images.example.invalid",
    ) -> JSON:
        """An embed image object (https://discord.com/developers/docs/resources/message
        #embed-object-embed-image-structure) for a picture hosted elsewhere, as in a link
        preview: `url` is the picture's own address (never served here, like a site the bot
        must not fetch) and `proxy_url` the copy Discord's media proxy serves, from this fake
        (unsigned and without expiry, like `images-ext-*.discordapp.net/external/...`).
        Put it in an embed's `image` or `thumbnail` and pass the embed to `post_message`."""
        key = secrets.token_hex(8)
        if content_type is None:
            content_type = mimetypes.guess_type(filename)[0]
        self._external[key] = (content_type, data)
        host = urlsplit(origin).netloc
        image: JSON = {
            "url": f"{origin}/{key}/{quote(filename)}",
            "proxy_url": f"{self.http_url}/external/{key}/https/{host}/{key}/{quote(filename)}",
        }
        width, height = _image_size(data)
        if width is not None:
            image["width"], image["height"] = width, height
        if content_type is not None:
            image["content_type"] = content_type
        return image

    async def _external_handler(self, request: web.Request) -> web.Response:
        found = self._external.get(request.match_info["key"])
        if found is None:
            return web.Response(status=404, text="Not Found")
        content_type, data = found
        return web.Response(
            body=data, headers={"Content-Type": content_type or "application/octet-stream"}
        )

    def _store_attachment(
        self,
        channel_id: int,
        filename: str,
        data: bytes,
        *,
        content_type: str | None = None,
        description: str | None = None,
        title: str | None = None,
        ephemeral: bool = False,
    ) -> StoredAttachment:
        if content_type in (None, "application/octet-stream"):
            content_type = mimetypes.guess_type(filename)[0] or content_type
        width, height = _image_size(data)
        stored = StoredAttachment(
            id=self.new_id(),
            channel_id=channel_id,
            filename=filename,
            data=data,
            content_type=content_type,
            description=description,
            title=title,
            width=width,
            height=height,
            ephemeral=ephemeral,
        )
        self._attachments[stored.id] = stored
        return stored

    def render_attachment(self, attachment: StoredAttachment) -> JSON:
        """The attachment object, with freshly signed `url` and `proxy_url`."""
        data: JSON = {
            "id": str(attachment.id),
            "filename": attachment.filename,
            "size": attachment.size,
            "url": self.signed_url(attachment),
            "proxy_url": self.signed_url(attachment, proxy=True),
            "content_type": attachment.content_type,
            "ephemeral": attachment.ephemeral,
            "flags": 0,
        }
        if attachment.width is not None:
            data["width"], data["height"] = attachment.width, attachment.height
        if attachment.description is not None:
            data["description"] = attachment.description
        if attachment.title is not None:
            data["title"] = attachment.title
        return data

    # ------------------------------------------------------------------ messages

    def messages(
        self,
        channel: FakeChannel | int | None = None,
        *,
        include_deleted: bool = True,
        include_ephemeral: bool = True,
    ) -> list[FakeMessage]:
        """Every message the fake holds (oldest first), optionally for one channel."""
        cid = channel.id if isinstance(channel, FakeChannel) else channel
        return [
            m
            for m in self._messages.values()
            if (cid is None or m.channel_id == cid)
            and (include_deleted or not m.deleted)
            and (include_ephemeral or not m.ephemeral)
        ]

    def message(self, message_id: int) -> FakeMessage:
        """The message with `message_id` (KeyError if unknown)."""
        return self._messages[message_id]

    def last_message(self, channel: FakeChannel | int | None = None) -> FakeMessage | None:
        """The newest non-deleted message (in `channel`)."""
        found = self.messages(channel, include_deleted=False)
        return found[-1] if found else None

    def render_message(self, message: FakeMessage, *, depth: int = 0) -> JSON:
        """The message object as Discord returns it (attachment URLs freshly signed)."""
        mentions = [
            self.users[uid].payload()
            for uid in sorted(message.pinged_user_ids)
            if uid in self.users
        ]
        data: JSON = {
            "id": str(message.id),
            "channel_id": str(message.channel_id),
            "author": message.author.payload(),
            "content": message.content,
            "timestamp": _iso(message.created_at),
            "edited_timestamp": _iso(message.edited_at),
            "tts": message.tts,
            "mention_everyone": message.pinged_everyone,
            "mentions": mentions,
            "mention_roles": [str(r) for r in sorted(message.pinged_role_ids)],
            "attachments": [self.render_attachment(a) for a in message.attachments],
            "embeds": [self._render_embed(e, message.attachments) for e in message.embeds],
            "components": message.components,
            "pinned": False,
            "type": message.type,
            "flags": message.flags,
            "sticker_items": [],
        }
        if message.guild_id is not None:
            data["guild_id"] = str(message.guild_id)
        if message.webhook_id is not None:
            data["webhook_id"] = str(message.webhook_id)
        if message.application_id is not None:
            data["application_id"] = str(message.application_id)
        if message.interaction_metadata is not None:
            data["interaction_metadata"] = message.interaction_metadata
        if message.nonce is not None:
            data["nonce"] = message.nonce
        if message.reactions:
            data["reactions"] = [
                {
                    "emoji": self._emoji_payload(key),
                    "count": len(users),
                    "count_details": {"burst": 0, "normal": len(users)},
                    "me": self.bot_user.id in users,
                    "me_burst": False,
                    "burst_colors": [],
                }
                for key, users in message.reactions.items()
                if users
            ]
        if message.message_reference is not None:
            data["message_reference"] = message.message_reference
            ref = self._messages.get(int(message.message_reference["message_id"]))
            if depth == 0:
                data["referenced_message"] = (
                    self.render_message(ref, depth=1) if ref and not ref.deleted else None
                )
        return data

    def app_reads_content(self, message: FakeMessage) -> bool:
        """Whether the bot may see `message`'s content, embeds, attachments and components.

        Without the Message Content intent enabled for the app (`privileged_intents`), Discord
        sends "empty values in fields that contain user-inputted content", in API responses
        and gateway events alike, except for "messages that an app sends", "DMs with the
        app", messages "in which the app is mentioned" and "the message a message context
        menu command is used on" (https://discord.com/developers/docs/events/gateway
        #message-content-intent). The last one is the interaction's `resolved.messages`,
        which is rendered in full; a later fetch of the same message is not exempt."""
        if self.privileged_intents & Intent.MESSAGE_CONTENT:
            return True
        if message.author.id == self.bot_user.id or message.guild_id is None:
            return True
        mentioned = {int(u) for u in re.findall(r"<@!?(\d+)>", message.content or "")}
        return self.bot_user.id in mentioned

    def render_for_app(self, message: FakeMessage) -> JSON:
        """The message as the bot's token gets it (REST and gateway): blanked as Discord does
        when the app may not read its content (`app_reads_content`)."""
        data = self.render_message(message)
        if not self.app_reads_content(message):
            data.update(content="", embeds=[], attachments=[], components=[])
            if data.get("referenced_message") and message.message_reference is not None:
                ref = self._messages.get(int(message.message_reference["message_id"]))
                if ref is not None and not self.app_reads_content(ref):
                    data["referenced_message"].update(
                        content="", embeds=[], attachments=[], components=[]
                    )
        return data

    def _render_embed(self, embed: JSON, attachments: list[StoredAttachment]) -> JSON:
        """An embed as Discord returns it: an `image` or `thumbnail` given as
        `attachment://<filename>` points at that attachment, with its signed `url` and
        `proxy_url` and its size (https://discord.com/developers/docs/reference
        #editing-message-attachments-using-attachments-within-embeds)."""
        rendered = dict(embed)
        for key in ("image", "thumbnail"):
            picture = embed.get(key)
            url = str(picture.get("url") or "") if isinstance(picture, dict) else ""
            if not url.startswith("attachment://"):
                continue
            name = url.removeprefix("attachment://")
            found = next((a for a in attachments if a.filename == name), None)
            if found is None:
                continue
            resolved: JSON = {
                "url": self.signed_url(found),
                "proxy_url": self.signed_url(found, proxy=True),
            }
            if found.width is not None:
                resolved["width"], resolved["height"] = found.width, found.height
            if found.content_type:
                resolved["content_type"] = found.content_type
            rendered[key] = resolved
        return rendered

    def _compute_pings(self, message: FakeMessage) -> None:
        content = message.content or ""
        users = {int(u) for u in re.findall(r"<@!?(\d+)>", content)}
        roles = {int(r) for r in re.findall(r"<@&(\d+)>", content)}
        everyone = "@everyone" in content or "@here" in content
        am = message.allowed_mentions
        if am is None:
            parse = {"users", "roles", "everyone"}
            allowed_users: set[int] = set()
            allowed_roles: set[int] = set()
            replied = True
        else:
            parse = set(am.get("parse") or [])
            allowed_users = {int(u) for u in am.get("users") or []}
            allowed_roles = {int(r) for r in am.get("roles") or []}
            replied = bool(am.get("replied_user", False))
        pinged_users = users if "users" in parse else users & allowed_users
        if replied and message.message_reference is not None:
            ref = self._messages.get(int(message.message_reference["message_id"]))
            if ref is not None:
                pinged_users = pinged_users | {ref.author.id}
        message.pinged_user_ids = pinged_users
        message.pinged_role_ids = roles if "roles" in parse else roles & allowed_roles
        message.pinged_everyone = everyone and "everyone" in parse

    def _resolve_attachments(
        self,
        payload: JSON,
        files: list[UploadedFile],
        channel_id: int,
        existing: list[StoredAttachment],
        *,
        ephemeral: bool,
    ) -> list[StoredAttachment]:
        by_field = {f.field_name: f for f in files}
        used: set[str] = set()
        result: list[StoredAttachment] = []
        specs = payload.get("attachments")
        if specs is None:
            result.extend(existing)
        else:
            existing_by_id = {a.id: a for a in existing}
            form = FormErrors()
            for i, spec in enumerate(specs):
                sid = str(spec.get("id"))
                upload = by_field.get(f"files[{sid}]")
                if upload is not None and sid not in used:
                    used.add(upload.field_name)
                    result.append(
                        self._store_attachment(
                            channel_id,
                            spec.get("filename") or upload.filename,
                            upload.data,
                            content_type=upload.content_type,
                            description=spec.get("description"),
                            title=spec.get("title"),
                            ephemeral=ephemeral,
                        )
                    )
                elif sid.isdigit() and int(sid) in existing_by_id:
                    result.append(existing_by_id[int(sid)])
                else:
                    form.add(["attachments", i, "id"], "ATTACHMENT_NOT_FOUND", "Unknown attachment")
            form.raise_if_any()
        for upload in files:
            if upload.field_name not in used:
                result.append(
                    self._store_attachment(
                        channel_id,
                        upload.filename,
                        upload.data,
                        content_type=upload.content_type,
                        ephemeral=ephemeral,
                    )
                )
        return result

    def _same_nonce(self, channel_id: int, author: FakeUser, payload: JSON) -> FakeMessage | None:
        """With ``enforce_nonce``, the message this author already created with the same nonce
        in the last few minutes: Discord returns it and creates nothing ("If true and nonce is
        present, it will be checked for uniqueness in the past few minutes. If another
        message was created by the same author with the same nonce, that message will be
        returned and no new message will be created", Create Message, JSON params)."""
        nonce = payload.get("nonce")
        if not payload.get("enforce_nonce") or nonce is None:
            return None
        now = self.wall_time()
        for message in reversed(list(self._messages.values())):
            if now - message.created_at > NONCE_WINDOW:
                break
            if (
                message.channel_id == channel_id
                and message.author.id == author.id
                and str(message.nonce) == str(nonce)
                and not message.deleted
            ):
                return message
        return None

    def _kept_count(self, payload: JSON, existing: list[StoredAttachment]) -> int:
        specs = payload.get("attachments")
        if specs is None:
            return len(existing)
        ids = {a.id for a in existing}
        return sum(1 for s in specs if str(s.get("id")).isdigit() and int(s["id"]) in ids)

    def _create_message(
        self,
        *,
        channel_id: int,
        guild_id: int | None,
        author: FakeUser,
        payload: JSON,
        files: list[UploadedFile],
        size_limit: int,
        type: int = 0,
        extra_flags: int = 0,
        handle: InteractionHandle | None = None,
        validate: bool = True,
    ) -> FakeMessage:
        if validate:
            check_message(payload, files, size_limit=size_limit)
        earlier = self._same_nonce(channel_id, author, payload)
        if earlier is not None:
            return earlier
        flags = (int(payload.get("flags") or 0) & SENDABLE_FLAGS) | extra_flags
        attachments = self._resolve_attachments(
            payload, files, channel_id, [], ephemeral=bool(flags & MESSAGE_FLAG_EPHEMERAL)
        )
        message = FakeMessage(
            id=self.new_id(),
            channel_id=channel_id,
            guild_id=guild_id,
            author=author,
            content=str(payload.get("content") or ""),
            embeds=list(payload.get("embeds") or []),
            components=list(payload.get("components") or []),
            attachments=attachments,
            flags=flags,
            type=type,
            tts=bool(payload.get("tts", False)),
            allowed_mentions=payload.get("allowed_mentions"),
            created_at=self.wall_time(),
            nonce=payload.get("nonce"),
        )
        if handle is not None:
            message.webhook_id = self.application_id
            message.application_id = self.application_id
            message.interaction_id = handle.id
            message.interaction_metadata = self._interaction_metadata(handle)
        self._compute_pings(message)
        self._messages[message.id] = message
        return message

    def _apply_edit(
        self,
        message: FakeMessage,
        payload: JSON,
        files: list[UploadedFile],
        size_limit: int,
    ) -> None:
        merged: JSON = {
            "content": payload["content"] if "content" in payload else message.content,
            "embeds": payload["embeds"] if "embeds" in payload else message.embeds,
            "components": payload["components"] if "components" in payload else message.components,
            "flags": payload.get("flags", message.flags),
        }
        kept = self._kept_count(payload, message.attachments)
        check_message(merged, files, size_limit=size_limit, kept_attachments=kept)
        attachments = self._resolve_attachments(
            payload, files, message.channel_id, message.attachments, ephemeral=message.ephemeral
        )
        message.history.append(
            MessageRevision(
                time=self.wall_time(),
                content=message.content,
                embeds=message.embeds,
                components=message.components,
                attachment_ids=[a.id for a in message.attachments],
                flags=message.flags,
                allowed_mentions=message.allowed_mentions,
            )
        )
        message.content = str(merged["content"] or "")
        message.embeds = list(merged["embeds"] or [])
        message.components = list(merged["components"] or [])
        message.attachments = attachments
        if "flags" in payload and payload["flags"] is not None:
            keep = message.flags & ~EDITABLE_FLAGS
            message.flags = keep | (int(payload["flags"]) & EDITABLE_FLAGS)
        message.flags &= ~MESSAGE_FLAG_LOADING
        if "allowed_mentions" in payload:
            message.allowed_mentions = payload["allowed_mentions"]
        message.edited_at = self.wall_time()
        self._compute_pings(message)

    def _interaction_metadata(self, handle: InteractionHandle) -> JSON:
        meta: JSON = {
            "id": str(handle.id),
            "type": handle.type,
            "user": handle.user.payload(),
            "authorizing_integration_owners": handle.payload.get(
                "authorizing_integration_owners", {}
            ),
        }
        if handle.type == 2:
            meta["name"] = handle.payload["data"]["name"]
            meta["command_type"] = handle.payload["data"].get("type", 1)
        if handle.source_message is not None:
            meta["interacted_message_id"] = str(handle.source_message.id)
        if handle.original is not None:
            meta["original_response_message_id"] = str(handle.original.id)
        return meta

    async def post_message(
        self,
        channel: FakeChannel | None = None,
        content: str = "",
        *,
        author: FakeMember | FakeUser | None = None,
        attachments: Sequence[Upload] = (),
        embeds: Sequence[JSON] = (),
    ) -> FakeMessage:
        """A user posts a message (MESSAGE_CREATE goes to sessions with GUILD_MESSAGES).

        `embeds` are stored as given, e.g. a link preview whose `image` or `thumbnail` is
        an `external_image(...)`; they are not checked against the embed limits (Discord
        builds link previews itself)."""
        channel = channel or self.guild.channel
        _, guild = self._find_channel(channel.id)
        if author is None:
            author = guild.member if guild else self.app_owner
        user = author.user if isinstance(author, FakeMember) else author
        message = FakeMessage(
            id=self.new_id(),
            channel_id=channel.id,
            guild_id=guild.id if guild else None,
            author=user,
            content=content,
            embeds=[dict(embed) for embed in embeds],
            created_at=self.wall_time(),
        )
        for upload in attachments:
            message.attachments.append(
                self._store_attachment(
                    channel.id, upload.filename, upload.data, content_type=upload.content_type
                )
            )
        self._compute_pings(message)
        self._messages[message.id] = message
        data = self.render_for_app(message)
        if guild is not None and isinstance(author, FakeMember):
            data["member"] = author.payload(with_user=False)
        await self.dispatch("MESSAGE_CREATE", data)
        return message

    async def delete_message(self, message: FakeMessage) -> None:
        """Someone deletes `message` (MESSAGE_DELETE is sent); the bot then gets 10008."""
        message.deleted = True
        self._notify()
        data: JSON = {"id": str(message.id), "channel_id": str(message.channel_id)}
        if message.guild_id is not None:
            data["guild_id"] = str(message.guild_id)
        await self.dispatch("MESSAGE_DELETE", data)

    # ------------------------------------------------------------------ reactions

    @staticmethod
    def _emoji_key(raw: str) -> str:
        raw = raw.strip("<>").removeprefix("a:")
        return raw.lstrip(":")

    @staticmethod
    def _emoji_payload(key: str) -> JSON:
        if ":" in key:
            name, _, eid = key.partition(":")
            return {"id": eid, "name": name, "animated": False}
        return {"id": None, "name": key}

    async def react(
        self, message: FakeMessage, emoji: str, user: FakeMember | FakeUser | None = None
    ) -> None:
        """`user` (default: the guild's plain member) adds a reaction: MESSAGE_REACTION_ADD."""
        key = self._emoji_key(emoji)
        member, fake_user = self._who(message, user)
        users = message.reactions.setdefault(key, [])
        if fake_user.id not in users:
            users.append(fake_user.id)
        data = self._reaction_event(message, key, fake_user, member)
        data["message_author_id"] = str(message.author.id)
        data["burst"] = False
        data["burst_colors"] = []
        data["type"] = 0
        await self.dispatch("MESSAGE_REACTION_ADD", data)

    async def unreact(
        self, message: FakeMessage, emoji: str, user: FakeMember | FakeUser | None = None
    ) -> None:
        """`user` removes a reaction: MESSAGE_REACTION_REMOVE."""
        key = self._emoji_key(emoji)
        _, fake_user = self._who(message, user)
        users = message.reactions.get(key, [])
        if fake_user.id in users:
            users.remove(fake_user.id)
        data = self._reaction_event(message, key, fake_user, None)
        data["burst"] = False
        data["type"] = 0
        await self.dispatch("MESSAGE_REACTION_REMOVE", data)

    def _who(
        self, message: FakeMessage, user: FakeMember | FakeUser | None
    ) -> tuple[FakeMember | None, FakeUser]:
        guild = self.guilds.get(message.guild_id) if message.guild_id else None
        if user is None:
            if guild is None:
                return None, self.app_owner
            user = guild.member
        if isinstance(user, FakeMember):
            return user, user.user
        member = guild.members.get(user.id) if guild else None
        return member, user

    def _reaction_event(
        self, message: FakeMessage, key: str, user: FakeUser, member: FakeMember | None
    ) -> JSON:
        data: JSON = {
            "user_id": str(user.id),
            "channel_id": str(message.channel_id),
            "message_id": str(message.id),
            "emoji": self._emoji_payload(key),
        }
        if message.guild_id is not None:
            data["guild_id"] = str(message.guild_id)
        if member is not None:
            data["member"] = member.payload()
        return data

    # ------------------------------------------------------------------ commands

    def commands(self, guild: FakeGuild | int | None = None) -> list[JSON]:
        """The synced commands: global ones, or those of `guild`."""
        gid = guild.id if isinstance(guild, FakeGuild) else guild
        return list(self._commands.get(gid, {}).values())

    def command(
        self, name: str, guild: FakeGuild | int | None = None, *, type: int = 1
    ) -> JSON | None:
        """A synced command by name and type (1 chat input, 2 user, 3 message): the guild's
        first, then the global one."""
        gid = guild.id if isinstance(guild, FakeGuild) else guild
        for scope in ([gid] if gid is not None else []) + [None]:
            found = self._commands.get(scope, {}).get((name, type))
            if found is not None:
                return found
        return None

    def _store_command(self, guild_id: int | None, cmd: JSON, old: JSON | None) -> JSON:
        form = FormErrors()
        name = cmd.get("name")
        ctype = int(cmd.get("type", 1))
        if not isinstance(name, str) or not 1 <= len(name) <= 32:
            form.add(["name"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length.")
        elif ctype == 1 and (not re.fullmatch(r"[-_\w]{1,32}", name) or name != name.lower()):
            form.add(["name"], "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")
        if ctype == 1:
            desc = cmd.get("description") or ""
            if not 1 <= len(desc) <= 100:
                form.add(["description"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100.")
        self._check_options(cmd.get("options") or [], ["options"], form)
        form.raise_if_any()
        stored: JSON = {
            "type": 1,
            "description": "",
            "options": [],
            "default_member_permissions": None,
            "dm_permission": True,
            "contexts": None,
            "integration_types": [0],
            "nsfw": False,
            **cmd,
            "id": old["id"] if old else str(self.new_id()),
            "application_id": str(self.application_id),
            "version": str(self.new_id()),
        }
        if guild_id is not None:
            stored["guild_id"] = str(guild_id)
        return stored

    def _check_options(self, options: list[JSON], path: list[str | int], form: FormErrors) -> None:
        if len(options) > 25:
            form.add(path, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        for i, option in enumerate(options):
            if len(option.get("choices") or []) > 25:
                form.add([*path, i, "choices"], "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer.")
            form.too_long([*path, i, "description"], option.get("description"), 100)
            if option.get("type") in (1, 2):
                self._check_options(option.get("options") or [], [*path, i, "options"], form)

    def _overwrite_commands(self, guild_id: int | None, body: Any) -> list[JSON]:
        if not isinstance(body, list):
            raise DiscordApiError(400, 50035, "Invalid Form Body")
        existing = self._commands.get(guild_id, {})
        new: dict[tuple[str, int], JSON] = {}
        for cmd in body:
            key = (str(cmd.get("name")), int(cmd.get("type", 1)))
            new[key] = self._store_command(guild_id, cmd, existing.get(key))
        self._commands[guild_id] = new
        self.command_syncs += 1
        self.sync_log.append(SyncRecord(guild_id, [k[0] for k in new], self.clock()))
        return list(new.values())

    # ------------------------------------------------------------------ gateway

    async def _gateway_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        conn = GatewayConnection(ws=ws, query=dict(request.query), opened_at=self.clock())
        self.connections.append(conn)
        await conn.send(
            {
                "op": 10,
                "d": {"heartbeat_interval": self.heartbeat_interval_ms, "_trace": ["fake"]},
                "s": None,
                "t": None,
            }
        )
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    frame = json.loads(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    frame = json.loads(msg.data.decode())
                else:
                    break
                await self._gateway_frame(conn, frame)
        finally:
            conn.closed = True
            if conn.session is not None and conn.session.connection is conn:
                conn.session.connection = None
            self._notify()
        return ws

    async def _gateway_frame(self, conn: GatewayConnection, frame: JSON) -> None:
        op = frame.get("op")
        data = frame.get("d")
        if op == 1:
            conn.heartbeats += 1
            await conn.send({"op": 11, "d": None, "s": None, "t": None})
        elif op == 2:
            await self._identify(conn, data)
        elif op == 6:
            await self._resume(conn, data)
        elif op == 8:
            await self._request_members(conn, data)

    def _parse_shard(self, raw: Any) -> tuple[int, int] | None:
        if raw is None:
            return 0, 1
        if (
            not isinstance(raw, list)
            or len(raw) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in raw)
        ):
            return None
        shard_id, count = raw
        return (shard_id, count) if count >= 1 and 0 <= shard_id < count else None

    async def _identify(self, conn: GatewayConnection, data: Any) -> None:
        """IDENTIFY: token (4004), privileged intents (4014), shard (4010), identify rate per
        `max_concurrency` bucket (op 9), guilds per shard (4011), then READY and the shard's
        GUILD_CREATEs. Close codes: https://discord.com/developers/docs/topics/opcodes-and-
        status-codes#gateway-gateway-close-event-codes; sharding and max_concurrency:
        https://discord.com/developers/docs/events/gateway#sharding."""
        token = str(data.get("token", ""))
        if self.token is not None and token != self.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        intents = int(data.get("intents", 0))
        if intents & Intent.PRIVILEGED & ~self.privileged_intents:
            await conn.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        shard = self._parse_shard(data.get("shard"))
        if shard is None:
            await conn.ws.close(code=4010, message=b"Invalid shard.")
            return
        now = self.clock()
        key = shard[0] % max(self.max_concurrency, 1)
        last = self._identify_buckets.get(key)
        too_soon = last is not None and now - last < IDENTIFY_WINDOW
        accepted = not (too_soon and self.enforce_identify_rate)
        self.identify_log.append(IdentifyRecord(now, shard, key, too_soon, accepted))
        if not accepted:
            await conn.send({"op": 9, "d": False, "s": None, "t": None})
            return
        self._identify_buckets[key] = now
        self.session_starts += 1
        probe = GatewaySession("", token, intents, shard=shard)
        guilds = [g for g in self.guilds.values() if probe.gets_guild(g.id)]
        if len(guilds) > self.max_guilds_per_shard:
            await conn.ws.close(code=4011, message=b"Sharding required.")
            return
        self.identify_count += 1
        conn.identify = data
        session = GatewaySession(uuid.uuid4().hex, token, intents, shard=shard)
        self.sessions[session.id] = session
        session.connection = conn
        ready = {
            "v": 10,
            "user": {**self.bot_user.payload(), "verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": self.application_flags},
            "private_channels": [],
            "relationships": [],
            "user_settings": {},
            "presences": [],
            "geo_ordered_rtc_regions": [],
            "guild_join_requests": [],
            "_trace": ["fake"],
        }
        if data.get("shard") is not None:
            ready["shard"] = list(shard)
        await self._send_dispatch(session, "READY", ready)
        # The GUILD_CREATEs of a new session are sent whatever the intents ("Guild Create ...
        # uniquely affected by intents", gateway docs, Caveats).
        for guild in guilds:
            await self._send_dispatch(session, "GUILD_CREATE", guild.payload())
        conn.session = session  # set last: `conn.ready` means the guilds were sent
        self._notify()

    async def _resume(self, conn: GatewayConnection, data: Any) -> None:
        session = self.sessions.get(str(data.get("session_id")))
        if session is None or session.invalidated or session.token != data.get("token"):
            await conn.send({"op": 9, "d": False, "s": None, "t": None})
            return
        self.resume_count += 1
        old = session.connection
        session.connection = conn
        conn.resumed = True
        conn.identify = None
        if old is not None and old is not conn and not old.ws.closed:
            await old.ws.close(code=4000)
        seq = int(data.get("seq") or 0)
        for frame in list(session.buffer):
            if frame["s"] > seq:
                await conn.send(frame)
        # conn.session is set last so `ready` means "replay done"
        await self._send_dispatch(session, "RESUMED", {"_trace": ["fake"]}, conn=conn)
        conn.session = session
        self._notify()

    async def _request_members(self, conn: GatewayConnection, data: Any) -> None:
        if conn.session is None:
            return
        guild = self.guilds.get(int(data.get("guild_id", 0)))
        if guild is None:
            return
        wanted = {int(u) for u in data.get("user_ids") or []}
        query = str(data.get("query") or "")
        members = [
            m.payload()
            for m in guild.members.values()
            if (not wanted or m.id in wanted) and m.user.username.startswith(query)
        ]
        chunk: JSON = {
            "guild_id": str(guild.id),
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        await self._send_dispatch(conn.session, "GUILD_MEMBERS_CHUNK", chunk)

    async def _send_dispatch(
        self,
        session: GatewaySession,
        event: str,
        data: JSON,
        *,
        conn: GatewayConnection | None = None,
    ) -> None:
        session.seq += 1
        frame = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.buffer.append(frame)
        if len(session.buffer) > 5000:
            del session.buffer[:1000]
        target = conn or session.connection
        if target is not None and not target.closed:
            await target.send(frame)

    def _active_sessions(self) -> list[GatewaySession]:
        return [s for s in self.sessions.values() if not s.invalidated]

    def _routes_to(self, session: GatewaySession, event: str, guild_id: int | None) -> bool:
        if guild_id is not None:
            return session.gets_guild(guild_id)
        if event in DM_EVENTS:
            return session.shard[0] == 0  # "only the first shard would receive DMs"
        return True

    async def emit(
        self, event: str, data: JSON, *, intents: int | None = None, record: bool = True
    ) -> int:
        """Send a DISPATCH event as Discord would; returns how many sessions got it.

        A session gets it only if it identified with the event's intent (intents.py, from
        Discord's "List of Intents") and, when sharded, the event's guild is on its shard
        (DMs go to shard 0). Sessions mid-reconnect get it on RESUME (buffered). With
        `intents`, the session also needs one of those bits. `record=False` keeps it out of
        `gateway_events` (for storms).
        """
        if record:
            self.gateway_events.append({"t": event, "d": data})
        needed = required_intent(event, data, current_user_id=self.bot_user.id)
        guild_id = event_guild_id(event, data)
        delivered = 0
        for session in self._active_sessions():
            if not self._routes_to(session, event, guild_id):
                continue
            if (needed and not session.intents & needed) or (
                intents is not None and not session.intents & intents
            ):
                session.events_filtered += 1
                self.events_filtered += 1
                continue
            await self._send_dispatch(session, event, data)
            delivered += 1
        self._notify()
        return delivered

    async def dispatch(self, event: str, data: JSON, *, intents: int | None = None) -> None:
        """`emit()` without its result (kept for existing callers)."""
        await self.emit(event, data, intents=intents)

    # ------------------------------------------------------------------ storms

    def _storm_cast_for(
        self, guild: FakeGuild, authors: int
    ) -> tuple[list[FakeMember], FakeMessage]:
        """Members who chat in `guild` (not announced: the bot meets them in the events, as
        in a large guild it never chunked) and a message of theirs to react to."""
        cast = self._storm_cast.get(guild.id)
        if cast is None or len(cast[0]) < authors:
            members = [
                self._attach_member(guild, self._new_user(f"chatter{i}"), [])
                for i in range(authors)
            ]
            target = FakeMessage(
                id=self.new_id(),
                channel_id=guild.channel.id,
                guild_id=guild.id,
                author=members[0].user,
                content="react to me",
                created_at=self.wall_time(),
            )
            self._messages[target.id] = target
            cast = (members, target)
            self._storm_cast[guild.id] = cast
        return cast

    def _storm_event(
        self, kind: str, guild: FakeGuild, member: FakeMember, target: FakeMessage, n: int
    ) -> tuple[str, JSON]:
        channels = [c for c in guild.channels.values() if c.type == 0] or [guild.channel]
        channel = channels[n % len(channels)]
        if kind == "message":
            return "MESSAGE_CREATE", {
                "id": str(self.new_id()),
                "channel_id": str(channel.id),
                "guild_id": str(guild.id),
                "author": member.user.payload(),
                "member": member.payload(with_user=False),
                "content": f"message {n} from {member.user.username}: " + "lorem ipsum " * 4,
                "timestamp": _iso(self.wall_time()),
                "edited_timestamp": None,
                "tts": False,
                "mention_everyone": False,
                "mentions": [],
                "mention_roles": [],
                "attachments": [],
                "embeds": [],
                "components": [],
                "pinned": False,
                "type": 0,
                "flags": 0,
                "nonce": str(n),
            }
        if kind == "typing":
            return "TYPING_START", {
                "channel_id": str(channel.id),
                "guild_id": str(guild.id),
                "user_id": str(member.id),
                "timestamp": int(self.wall_time()),
                "member": member.payload(),
            }
        if kind == "reaction":
            data = self._reaction_event(target, ("👍", "😂", "🔥")[n % 3], member.user, member)
            data.update(
                message_author_id=str(target.author.id), burst=False, burst_colors=[], type=0
            )
            return "MESSAGE_REACTION_ADD", data
        if kind == "member_update":
            member.nick = f"nick {n}"
            return "GUILD_MEMBER_UPDATE", {**member.payload(), "guild_id": str(guild.id)}
        raise ValueError(f"unknown storm event kind {kind!r} (one of {STORM_KINDS})")

    async def storm(
        self,
        rate: float = 2000.0,
        duration: float = 1.0,
        *,
        guild: FakeGuild | None = None,
        kinds: Sequence[str] = STORM_KINDS,
        authors: int = 20,
    ) -> StormReport:
        """Busy-server chatter for a benchmark: `rate` events per second for `duration` real
        seconds, cycling through `kinds` (messages, typing, reactions on a member's message,
        member updates) from `authors` members of `guild`.

        Each event goes through `emit()` (so intents and shards filter it) but is not kept in
        `gateway_events`. The report counts events generated, deliveries, events filtered out
        by intents, and the events and bytes each live connection sent meanwhile.
        """
        guild = guild or self.guild
        members, target = self._storm_cast_for(guild, authors)
        connections = list(self.live_connections)
        events_before = [c.events_sent for c in connections]
        bytes_before = [c.bytes_sent for c in connections]
        filtered_before = self.events_filtered
        loop = asyncio.get_running_loop()
        total = max(int(rate * duration), 0)
        start = loop.time()
        generated = delivered = 0
        while generated < total:
            due = min(total, int((loop.time() - start) * rate) + 1)
            while generated < due:
                kind = kinds[generated % len(kinds)]
                member = members[generated % len(members)]
                event, data = self._storm_event(kind, guild, member, target, generated)
                delivered += await self.emit(event, data, record=False)
                generated += 1
            await asyncio.sleep(0.002)
        return StormReport(
            generated=generated,
            delivered=delivered,
            filtered=self.events_filtered - filtered_before,
            seconds=loop.time() - start,
            events_per_connection=[
                c.events_sent - b for c, b in zip(connections, events_before, strict=True)
            ],
            bytes_per_connection=[
                c.bytes_sent - b for c, b in zip(connections, bytes_before, strict=True)
            ],
        )

    def _broadcast_soon(self, event: str, data: JSON) -> None:
        """Dispatch from synchronous world-building code (no-op before anyone connected)."""
        if not self.sessions:
            return
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(self.dispatch(event, data))

    async def drop_connections(self, code: int = 4000) -> None:
        """Close every open websocket with `code` (4000: discord.py resumes)."""
        for conn in self.connections:
            if not conn.ws.closed:
                await conn.ws.close(code=code)

    async def send_reconnect(self) -> None:
        """Send op 7 RECONNECT on every open connection (discord.py reconnects and resumes)."""
        for conn in self.connections:
            if not conn.closed:
                await conn.send({"op": 7, "d": None, "s": None, "t": None})

    async def invalidate_sessions(self, *, resumable: bool = False) -> None:
        """Send op 9 INVALID_SESSION; unless `resumable`, the sessions are forgotten."""
        for session in self._active_sessions():
            conn = session.connection
            if not resumable:
                session.invalidated = True
            if conn is not None and not conn.closed:
                await conn.send({"op": 9, "d": resumable, "s": None, "t": None})

    @property
    def live_connections(self) -> list[GatewayConnection]:
        """Open connections that got READY/RESUMED."""
        return [c for c in self.connections if c.ready and not c.closed]

    # ------------------------------------------------------------------ interactions

    def _resolve_scope(
        self,
        guild: FakeGuild | None,
        channel: FakeChannel | None,
        user: FakeMember | None,
    ) -> tuple[FakeGuild, FakeChannel, FakeMember]:
        if channel is not None and guild is None:
            _, guild = self._find_channel(channel.id)
        guild = guild or self.guild
        channel = channel or guild.channel
        return guild, channel, user or guild.member

    def _interaction_payload(
        self,
        itype: int,
        data: JSON,
        *,
        guild: FakeGuild,
        channel: FakeChannel,
        member: FakeMember,
        message: FakeMessage | None = None,
        attachment_size_limit: int | None = None,
        locale: str = "en-US",
    ) -> JSON:
        iid = self.new_id()
        bot_perms = guild.permissions_in(self._bot_member(guild), channel)
        payload: JSON = {
            "id": str(iid),
            "application_id": str(self.application_id),
            "type": itype,
            "data": data,
            "guild_id": str(guild.id),
            "guild": {"id": str(guild.id), "locale": guild.locale, "features": []},
            "channel_id": str(channel.id),
            "channel": channel.payload(),
            "member": member.payload(permissions=guild.permissions_in(member, channel)),
            "token": f"fake-itoken-{iid}-{secrets.token_hex(16)}",
            "version": 1,
            "locale": locale,
            "guild_locale": guild.locale,
            "app_permissions": str(bot_perms),
            "entitlements": [],
            "entitlement_sku_ids": [],
            "authorizing_integration_owners": {"0": str(guild.id)},
            "context": 0,
            # https://discord.com/developers/docs/reference#uploading-files: "the maximum of"
            # the server's boost limit and the member's Nitro limit.
            "attachment_size_limit": attachment_size_limit
            or max(guild.filesize_limit, member.nitro_upload_limit or 0),
        }
        if message is not None:
            payload["message"] = self.render_message(message)
        return payload

    def _dm_interaction_payload(
        self, itype: int, data: JSON, *, channel: FakeChannel, user: FakeUser, locale: str
    ) -> JSON:
        """An interaction in the bot's DM with `user` (context 1, BOT_DM): `user` instead of
        `member`, no guild (https://discord.com/developers/docs/interactions/receiving-and-
        responding#interaction-object)."""
        iid = self.new_id()
        return {
            "id": str(iid),
            "application_id": str(self.application_id),
            "type": itype,
            "data": data,
            "channel_id": str(channel.id),
            "channel": channel.payload(),
            "user": user.payload(),
            "token": f"fake-itoken-{iid}-{secrets.token_hex(16)}",
            "version": 1,
            "locale": locale,
            "app_permissions": str(DM_APP_PERMISSIONS),
            "entitlements": [],
            "entitlement_sku_ids": [],
            # A guild-installed app in its bot's DM: "0" for the guild install.
            "authorizing_integration_owners": {"0": "0"},
            "context": 1,
            "attachment_size_limit": DEFAULT_FILESIZE_LIMIT,
        }

    async def _dispatch_interaction(
        self,
        payload: JSON,
        *,
        guild: FakeGuild | None,
        channel: FakeChannel,
        member: FakeMember | None = None,
        message: FakeMessage | None = None,
        user: FakeUser | None = None,
    ) -> InteractionHandle:
        who = member.user if member is not None else user
        assert who is not None, "an interaction needs a member or a user"
        handle = InteractionHandle(
            self,
            payload,
            guild=guild,
            channel=channel,
            user=who,
            source_message=message,
            attachment_size_limit=payload["attachment_size_limit"],
        )
        self.interactions.append(handle)
        self._interactions_by_id[handle.id] = handle
        self._interactions_by_token[handle.token] = handle
        await self.dispatch("INTERACTION_CREATE", payload)
        return handle

    def _option_definitions(
        self, name: str, path: list[str], guild: FakeGuild
    ) -> tuple[JSON | None, list[JSON] | None]:
        command = self.command(name, guild)
        if command is None:
            return None, None
        options: list[JSON] = command.get("options") or []
        for part in path:
            match = next((o for o in options if o.get("name") == part), None)
            if match is None:
                return command, None
            options = match.get("options") or []
        return command, options

    def _build_options(
        self,
        values: Mapping[str, Any],
        definitions: list[JSON] | None,
        resolved: dict[str, dict[str, JSON]],
        guild: FakeGuild,
        channel: FakeChannel,
        focused: str | None,
    ) -> list[JSON]:
        types = {d["name"]: d.get("type") for d in definitions or []}
        out: list[JSON] = []
        for key, value in values.items():
            otype = types.get(key)
            if isinstance(value, Upload):
                stored = self._store_attachment(
                    channel.id,
                    value.filename,
                    value.data,
                    content_type=value.content_type,
                    description=value.description,
                    ephemeral=True,
                )
                resolved.setdefault("attachments", {})[str(stored.id)] = self.render_attachment(
                    stored
                )
                otype, value = 11, str(stored.id)
            elif isinstance(value, FakeMember):
                resolved.setdefault("users", {})[str(value.id)] = value.user.payload()
                resolved.setdefault("members", {})[str(value.id)] = value.payload(
                    permissions=guild.permissions_in(value, channel), with_user=False
                )
                otype, value = otype or 6, str(value.id)
            elif isinstance(value, FakeUser):
                resolved.setdefault("users", {})[str(value.id)] = value.payload()
                otype, value = otype or 6, str(value.id)
            elif isinstance(value, FakeChannel):
                resolved.setdefault("channels", {})[str(value.id)] = {
                    "id": str(value.id),
                    "name": value.name,
                    "type": value.type,
                    "permissions": str(guild.permissions_in(guild.member, value)),
                }
                otype, value = otype or 7, str(value.id)
            elif isinstance(value, FakeRole):
                resolved.setdefault("roles", {})[str(value.id)] = value.payload()
                otype, value = otype or 8, str(value.id)
            elif otype is None:
                if isinstance(value, bool):
                    otype = 5
                elif isinstance(value, int):
                    otype = 4
                elif isinstance(value, float):
                    otype = 10
                else:
                    otype = 3
            option: JSON = {"name": key, "type": otype, "value": value}
            if key == focused:
                option["focused"] = True
            out.append(option)
        return out

    def _command_data(
        self,
        name: str,
        options: Mapping[str, Any] | None,
        guild: FakeGuild,
        channel: FakeChannel,
        focused: str | None = None,
        *,
        strict: bool = True,
    ) -> JSON:
        parts = name.split()
        root, path = parts[0], parts[1:]
        command, definitions = self._option_definitions(root, path, guild)
        if command is None and strict:
            raise LookupError(
                f"command {root!r} was never synced to the fake (Discord could not send it); "
                "pass strict=False to dispatch it anyway"
            )
        resolved: dict[str, dict[str, JSON]] = {}
        built = self._build_options(options or {}, definitions, resolved, guild, channel, focused)
        if path:
            inner: JSON = {"name": path[-1], "type": 1, "options": built}
            built = (
                [{"name": path[0], "type": 2, "options": [inner]}] if len(path) == 2 else [inner]
            )
        data: JSON = {
            "id": command["id"] if command else str(self.new_id()),
            "name": root,
            "type": 1,
            "options": built,
        }
        if command is None or command.get("guild_id"):
            data["guild_id"] = str(guild.id)
        if resolved:
            data["resolved"] = resolved
        return data

    async def slash(
        self,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        guild: FakeGuild | None = None,
        channel: FakeChannel | None = None,
        user: FakeMember | None = None,
        attachment_size_limit: int | None = None,
        locale: str = "en-US",
        strict: bool = True,
    ) -> InteractionHandle:
        """A member runs a slash command. `name` may be `"cmd"`, `"cmd sub"`, `"cmd group sub"`.

        `options` maps option names to values: str/int/float/bool, `Upload` (attachment),
        `FakeMember`/`FakeUser`, `FakeChannel`, `FakeRole`. Default user: `guild.member`.
        With `strict` (default), the command must have been synced to the fake.
        """
        guild, channel, member = self._resolve_scope(guild, channel, user)
        data = self._command_data(name, options, guild, channel, strict=strict)
        payload = self._interaction_payload(
            2,
            data,
            guild=guild,
            channel=channel,
            member=member,
            attachment_size_limit=attachment_size_limit,
            locale=locale,
        )
        return await self._dispatch_interaction(
            payload, guild=guild, channel=channel, member=member
        )

    def dm_channel(self, user: FakeUser | FakeMember) -> FakeChannel:
        """The bot's DM channel with `user` (created on first use, as `POST
        /users/@me/channels` does)."""
        recipient = user.user if isinstance(user, FakeMember) else user
        for channel in self.dm_channels.values():
            if channel.recipient is recipient:
                return channel
        channel = FakeChannel(self.new_id(), None, "", type=1, recipient=recipient)
        self.dm_channels[channel.id] = channel
        return channel

    async def message_command(
        self,
        name: str,
        message: FakeMessage | int,
        *,
        user: FakeMember | FakeUser | None = None,
        locale: str = "en-US",
        strict: bool = True,
    ) -> InteractionHandle:
        """A member uses a message context menu command (Apps → `name`) on `message`.

        The interaction (type 2, `data.type` 3) comes from the message's channel with
        `data.target_id` and the message in full in `data.resolved.messages` (exempt from
        the Message Content rule, see `app_reads_content`). In a guild the default user is
        `guild.member`; in a DM it is the channel's recipient. With `strict` (default) the
        command must have been synced with a `contexts` that allows where it is used (0 in a
        server, 1 in the bot's DM; none listed: every context), and the message must exist:
        otherwise Discord would not offer the command.
        """
        if isinstance(message, int):
            message = self._messages[message]
        channel, guild = self._find_channel(message.channel_id)
        if channel is None:
            raise LookupError(f"message {message.id} is not in a known channel")
        command = self.command(name, guild, type=3)
        context = 0 if guild is not None else 1
        if strict:
            if command is None:
                raise LookupError(
                    f"message command {name!r} was never synced to the fake (Discord could "
                    "not send it); pass strict=False to dispatch it anyway"
                )
            contexts = command.get("contexts")
            dm_allowed = command.get("dm_permission") is not False
            if (contexts is not None and context not in contexts) or (
                context == 1 and contexts is None and not dm_allowed
            ):
                raise LookupError(
                    f"message command {name!r} is not offered in interaction context {context}"
                )
            if message.deleted or message.ephemeral:
                raise LookupError(f"no message {message.id} to use {name!r} on")
        data: JSON = {
            "id": command["id"] if command else str(self.new_id()),
            "name": name,
            "type": 3,
            "target_id": str(message.id),
            "resolved": {"messages": {str(message.id): self.render_message(message)}},
        }
        if guild is not None and (command is None or command.get("guild_id")):
            data["guild_id"] = str(guild.id)
        if guild is None:
            recipient = user.user if isinstance(user, FakeMember) else user
            recipient = recipient or channel.recipient
            if recipient is None:
                raise LookupError(f"DM channel {channel.id} has no recipient")
            payload = self._dm_interaction_payload(
                2, data, channel=channel, user=recipient, locale=locale
            )
            return await self._dispatch_interaction(
                payload, guild=None, channel=channel, user=recipient
            )
        if isinstance(user, FakeUser):
            user = guild.members[user.id]
        guild, channel, member = self._resolve_scope(guild, channel, user)
        payload = self._interaction_payload(
            2, data, guild=guild, channel=channel, member=member, locale=locale
        )
        return await self._dispatch_interaction(
            payload, guild=guild, channel=channel, member=member
        )

    async def autocomplete(
        self,
        name: str,
        options: Mapping[str, Any],
        focused: str,
        *,
        guild: FakeGuild | None = None,
        channel: FakeChannel | None = None,
        user: FakeMember | None = None,
        strict: bool = True,
    ) -> InteractionHandle:
        """Autocomplete for option `focused` (its value is what the user typed so far)."""
        guild, channel, member = self._resolve_scope(guild, channel, user)
        data = self._command_data(name, options, guild, channel, focused, strict=strict)
        payload = self._interaction_payload(4, data, guild=guild, channel=channel, member=member)
        return await self._dispatch_interaction(
            payload, guild=guild, channel=channel, member=member
        )

    async def click(
        self,
        message: FakeMessage | int,
        custom_id: str | None = None,
        *,
        values: Sequence[str] | None = None,
        label: str | None = None,
        user: FakeMember | None = None,
        strict: bool = True,
    ) -> InteractionHandle:
        """A member clicks a button (or picks `values` in a select) on `message`.

        Identify the component by `custom_id` or by button `label`. With `strict`, the
        component must exist on the (non-deleted) message.
        """
        if isinstance(message, int):
            message = self._messages[message]
        component: JSON | None = None
        if custom_id is None:
            if label is None:
                raise ValueError("give custom_id or label")
            component = next((c for c in message.buttons() if c.get("label") == label), None)
            if component is None:
                raise LookupError(f"no button labelled {label!r} on {message!r}")
            custom_id = component["custom_id"]
        else:
            component = message.component(custom_id)
        if strict and (component is None or message.deleted):
            raise LookupError(f"no component {custom_id!r} on {message!r}")
        await self._settle(message)
        channel, guild = self._find_channel(message.channel_id)
        if channel is None or guild is None:
            raise LookupError(f"message {message.id} is not in a known guild channel")
        guild, channel, member = self._resolve_scope(guild, channel, user)
        ctype = component.get("type", 2) if component else (3 if values is not None else 2)
        data: JSON = {"custom_id": custom_id, "component_type": ctype}
        if component is not None and "id" in component:
            data["id"] = component["id"]
        if values is not None or ctype in (3, 5, 6, 7, 8):
            data["values"] = list(values or [])
            if ctype in (5, 6, 7, 8):
                data["resolved"] = self._resolve_select(data["values"], guild, channel)
        payload = self._interaction_payload(
            3, data, guild=guild, channel=channel, member=member, message=message
        )
        return await self._dispatch_interaction(
            payload, guild=guild, channel=channel, member=member, message=message
        )

    async def _settle(self, message: FakeMessage) -> None:
        """Wait until the response that last created/edited `message` was fully written,
        then let the event loop run the bot's handling of it (discord.py registers a view
        only after reading that response)."""
        record = message.last_request
        if record is not None and not record.completed:
            await self.wait_for(lambda: record.completed, 5.0, what="the message's response")
        if record is not None and self.click_settle > 0:
            await asyncio.sleep(self.click_settle)

    def _resolve_select(self, values: list[str], guild: FakeGuild, channel: FakeChannel) -> JSON:
        resolved: dict[str, dict[str, JSON]] = {}
        for value in values:
            vid = int(value)
            if vid in guild.members:
                m = guild.members[vid]
                resolved.setdefault("users", {})[value] = m.user.payload()
                resolved.setdefault("members", {})[value] = m.payload(
                    permissions=guild.permissions_in(m, channel), with_user=False
                )
            elif vid in guild.roles:
                resolved.setdefault("roles", {})[value] = guild.roles[vid].payload()
            elif vid in guild.channels:
                c = guild.channels[vid]
                resolved.setdefault("channels", {})[value] = {
                    "id": value,
                    "name": c.name,
                    "type": c.type,
                    "permissions": "0",
                }
        return resolved

    async def submit_modal(
        self,
        source: InteractionHandle,
        values: Mapping[str, str | Sequence[str]],
        *,
        user: FakeMember | None = None,
    ) -> InteractionHandle:
        """Submit the modal the bot sent in response to `source`, filling `values` by custom_id.

        The submitted components mirror the modal's layout (action rows or labels).
        """
        modal = source.modal
        if modal is None:
            raise LookupError(f"{source!r} got no modal response")

        def fill(component: JSON) -> JSON:
            ctype = component.get("type")
            if ctype == 1:
                return {"type": 1, "components": [fill(c) for c in component.get("components", [])]}
            if ctype == 18:
                out = {"type": 18, "component": fill(component["component"])}
                if "id" in component:
                    out["id"] = component["id"]
                return out
            out = {"type": ctype}
            if "id" in component:
                out["id"] = component["id"]
            custom_id = component.get("custom_id")
            if custom_id is None:
                return out
            out["custom_id"] = custom_id
            value = values.get(custom_id, component.get("value", ""))
            if ctype == 4:
                out["value"] = value if isinstance(value, str) else ",".join(value)
            else:
                out["values"] = [value] if isinstance(value, str) else list(value)
            return out

        assert source.guild is not None and source.channel is not None
        default_member = source.guild.members.get(source.user.id)
        guild, channel, member = self._resolve_scope(
            source.guild, source.channel, user or default_member
        )
        data: JSON = {
            "custom_id": modal["custom_id"],
            "components": [fill(c) for c in modal.get("components", [])],
        }
        message = source.source_message
        payload = self._interaction_payload(
            5, data, guild=guild, channel=channel, member=member, message=message
        )
        return await self._dispatch_interaction(
            payload, guild=guild, channel=channel, member=member, message=message
        )

    # ------------------------------------------------------------------ rate limits

    def rate_limit_next(
        self,
        route_substring: str,
        retry_after: float = 0.2,
        *,
        count: int = 1,
        method: str | None = None,
        is_global: bool = False,
    ) -> None:
        """Answer the next `count` requests whose path contains `route_substring` with 429.

        The 429 carries JSON `retry_after`, `Retry-After` and `Via` headers (discord.py only
        retries a 429 that has `Via`). Requests are recorded in `rate_limited`.
        """
        self._rate_limits.append(
            RateLimitScript(route_substring, retry_after, count, method, is_global)
        )

    def _take_rate_limit(self, method: str, path: str) -> RateLimitScript | None:
        for script in self._rate_limits:
            if script.remaining <= 0:
                continue
            if script.method is not None and script.method.upper() != method:
                continue
            if script.route_substring in path:
                script.remaining -= 1
                return script
        return None

    # ------------------------------------------------------------------ REST plumbing

    def find_requests(
        self, method: str | None = None, route: str | None = None
    ) -> list[RecordedRequest]:
        """Recorded requests filtered by method and by substring of the path or route template."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper())
            and (route is None or route in r.path or route in r.route)
        ]

    def _register_routes(self) -> None:
        def add(method: str, template: str, handler: Handler, *, bot_auth: bool = True) -> None:
            regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
            self._routes.append(
                _Route(method, template, re.compile(f"^{regex}/?$"), handler, bot_auth)
            )

        add("GET", "/gateway", self._get_gateway, bot_auth=False)
        add("GET", "/gateway/bot", self._get_gateway_bot)
        add("GET", "/users/@me", self._get_me)
        add("PATCH", "/users/@me", self._get_me)
        add("POST", "/users/@me/channels", self._create_dm)
        add("GET", "/users/{user_id}", self._get_user)
        add("GET", "/oauth2/applications/@me", self._get_application)
        add("GET", "/applications/@me", self._get_application)
        add("GET", "/applications/{app_id}/emojis", self._empty_items)
        add("GET", "/applications/{app_id}/entitlements", self._empty_list)
        add("GET", "/applications/{app_id}/commands", self._get_commands)
        add("PUT", "/applications/{app_id}/commands", self._put_commands)
        add("POST", "/applications/{app_id}/commands", self._post_command)
        add("GET", "/applications/{app_id}/commands/{command_id}", self._get_command)
        add("PATCH", "/applications/{app_id}/commands/{command_id}", self._patch_command)
        add("DELETE", "/applications/{app_id}/commands/{command_id}", self._delete_command)
        guild_cmds = "/applications/{app_id}/guilds/{guild_id}/commands"
        add("GET", f"{guild_cmds}/permissions", self._empty_list)
        add("GET", guild_cmds, self._get_commands)
        add("PUT", guild_cmds, self._put_commands)
        add("POST", guild_cmds, self._post_command)
        add("GET", guild_cmds + "/{command_id}", self._get_command)
        add("PATCH", guild_cmds + "/{command_id}", self._patch_command)
        add("DELETE", guild_cmds + "/{command_id}", self._delete_command)
        add(
            "POST",
            "/interactions/{interaction_id}/{token}/callback",
            self._interaction_callback,
            bot_auth=False,
        )
        hook = "/webhooks/{app_id}/{token}"
        add("POST", hook, self._post_followup, bot_auth=False)
        add("GET", hook, self._get_webhook, bot_auth=False)
        add("GET", hook + "/messages/{message_id}", self._get_webhook_message, bot_auth=False)
        add("PATCH", hook + "/messages/{message_id}", self._patch_webhook_message, bot_auth=False)
        add("DELETE", hook + "/messages/{message_id}", self._delete_webhook_message, bot_auth=False)
        ch = "/channels/{channel_id}"
        add("GET", ch, self._get_channel)
        add("POST", ch + "/typing", self._typing)
        add("GET", ch + "/messages", self._get_messages)
        add("POST", ch + "/messages", self._post_message)
        add("POST", ch + "/messages/bulk-delete", self._bulk_delete)
        add("GET", ch + "/messages/{message_id}", self._get_message)
        add("PATCH", ch + "/messages/{message_id}", self._patch_message)
        add("DELETE", ch + "/messages/{message_id}", self._delete_message_route)
        reactions = ch + "/messages/{message_id}/reactions"
        add("PUT", reactions + "/{emoji}/@me", self._add_reaction)
        add("DELETE", reactions + "/{emoji}/@me", self._remove_own_reaction)
        add("DELETE", reactions + "/{emoji}/{user_id}", self._remove_user_reaction)
        add("GET", reactions + "/{emoji}", self._get_reactions)
        add("DELETE", reactions + "/{emoji}", self._clear_emoji)
        add("DELETE", reactions, self._clear_reactions)
        add("GET", "/guilds/{guild_id}", self._get_guild)
        add("GET", "/guilds/{guild_id}/channels", self._get_guild_channels)
        add("GET", "/guilds/{guild_id}/roles", self._get_roles)
        add("GET", "/guilds/{guild_id}/members", self._get_members)
        add("GET", "/guilds/{guild_id}/members/{user_id}", self._get_member)

    @staticmethod
    def _json_response(
        status: int, body: Any, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        if status == 204 or body is None:
            return web.Response(status=204 if status < 300 else status, headers=headers)
        return web.Response(
            status=status,
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
        )

    async def _parse_body(self, request: web.Request) -> tuple[Any, list[UploadedFile]]:
        content_type = request.headers.get("Content-Type", "")
        files: list[UploadedFile] = []
        if content_type.startswith("multipart/"):
            payload: Any = None
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not hasattr(part, "read"):
                    continue
                raw = await part.read(decode=False)  # type: ignore[union-attr]
                name = part.name or ""  # type: ignore[union-attr]
                if name == "payload_json":
                    payload = json.loads(raw)
                elif part.filename is not None:  # type: ignore[union-attr]
                    files.append(
                        UploadedFile(
                            field_name=name,
                            filename=part.filename,  # type: ignore[union-attr]
                            content_type=part.headers.get("Content-Type"),
                            data=bytes(raw),
                        )
                    )
            return payload, files
        raw = await request.read()
        if not raw:
            return None, files
        try:
            return json.loads(raw), files
        except ValueError:
            return raw.decode(errors="replace"), files

    async def _api_handler(self, request: web.Request) -> web.Response:
        raw_path = request.rel_url.raw_path
        path = raw_path
        for prefix in API_PREFIXES:
            if raw_path.startswith(prefix):
                path = raw_path[len(prefix) :]
                break
        body, files = await self._parse_body(request)
        method = request.method.upper()
        record = RecordedRequest(
            method=method,
            path=unquote(path),
            route="",
            query=dict(request.query),
            json=body,
            files=files,
            time=self.clock(),
            authorization=request.headers.get("Authorization"),
        )
        self.requests.append(record)
        ctx: _Ctx | None = None
        status: int
        response: Any
        headers: dict[str, str] = {}
        try:
            route, params = self._match(method, path)
            record.route = route.template
            ctx = _Ctx(request, params, body, files, record)
            script = self._take_rate_limit(method, record.path)
            if script is not None:
                status, response, headers = self._rate_limit_response(script)
                self.rate_limited.append(record)
            else:
                if route.bot_auth:
                    self._check_auth(record.authorization)
                decision = self._limiter.admit(
                    method,
                    route.template,
                    record.path,
                    params,
                    record.authorization,
                    bot_route=route.bot_auth,
                )
                headers.update(decision.headers)
                ctx.handle = self._interaction_of(params)
                if not decision.allowed:
                    assert decision.hit is not None
                    status, response = 429, decision.body
                    self.rate_limited.append(record)
                    self.rate_limit_hits.append(decision.hit)
                else:
                    self._check_schema(method, route.template, body)
                    status, response = await route.handler(ctx)
        except DiscordApiError as exc:
            status, response = exc.status, exc.body()
            error = ApiErrorRecord(exc.status, exc.code, exc.message, exc.errors, record)
            self.errors.append(error)
            if ctx is not None and ctx.handle is not None:
                ctx.handle.errors.append(error)
        if ctx is not None and ctx.handle is not None:
            ctx.handle.requests.append(record)
        if 200 <= status < 300 and isinstance(response, dict):
            touched = response.get("resource", {}).get("message") or response
            if isinstance(touched, dict) and "channel_id" in touched and "id" in touched:
                message = self._messages.get(int(touched["id"]))
                if message is not None:
                    message.last_request = record
        record.status, record.response = status, response
        resp = self._json_response(status, response, headers)
        # Write the whole response before recording completion, so helpers such as `click()`
        # can wait until the bot has had the chance to read what created a message.
        try:
            await resp.prepare(request)
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away (e.g. a bot closed mid-request)
        record.completed = True
        self._notify()
        return resp

    def _match(self, method: str, path: str) -> tuple[_Route, dict[str, str]]:
        path_matched = False
        for route in self._routes:
            m = route.pattern.match(path)
            if m is None:
                continue
            path_matched = True
            if route.method == method:
                return route, {k: unquote(v) for k, v in m.groupdict().items()}
        if path_matched:
            raise DiscordApiError(405, 0, "405: Method Not Allowed")
        raise DiscordApiError(404, 0, "404: Not Found")

    def _interaction_of(self, params: Mapping[str, str]) -> InteractionHandle | None:
        """The interaction an interaction-token route names (so its errors are recorded on
        the handle even when the body is refused before the route's handler runs)."""
        token = params.get("token")
        if token is None:
            return None
        return self._interactions_by_token.get(token)

    def _check_schema(self, method: str, template: str, body: Any) -> None:
        """Validate a JSON (or multipart `payload_json`) body against the route's request
        schema in Discord's OpenAPI spec (see spec.py); 400/50035 on violations."""
        if not self.validate_schemas or body is None or not has_request_schema(method, template):
            return
        if isinstance(body, str):
            raise DiscordApiError(400, 50109, "The request body contains invalid JSON.")
        form = FormErrors()
        check_request(method, template, body, form)
        form.raise_if_any()

    def _check_auth(self, authorization: str | None) -> None:
        if not authorization or not authorization.startswith("Bot "):
            raise DiscordApiError(401, 0, "401: Unauthorized")
        if self.token is not None and authorization != f"Bot {self.token}":
            raise DiscordApiError(401, 0, "401: Unauthorized")

    def _rate_limit_response(self, script: RateLimitScript) -> tuple[int, JSON, dict[str, str]]:
        body = {
            "message": "You are being rate limited.",
            "retry_after": script.retry_after,
            "global": script.is_global,
            "code": 0,
        }
        headers = {
            "Retry-After": str(max(1, round(script.retry_after))),
            "Via": "1.1 google",
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset-After": str(script.retry_after),
            "X-RateLimit-Bucket": "fake-"
            + hashlib.md5(script.route_substring.encode()).hexdigest(),
            "X-RateLimit-Scope": "global" if script.is_global else "user",
        }
        if script.is_global:
            headers["X-RateLimit-Global"] = "true"
        return 429, body, headers

    # ------------------------------------------------------------------ REST: misc

    async def _get_gateway(self, ctx: _Ctx) -> tuple[int, Any]:
        return 200, {"url": self.gateway_url}

    async def _get_gateway_bot(self, ctx: _Ctx) -> tuple[int, Any]:
        # https://discord.com/developers/docs/events/gateway#get-gateway-bot
        elapsed_ms = int((self.clock() - self._clock_origin) * 1000)
        return 200, {
            "url": self.gateway_url,
            "shards": self.recommended_shards,
            "session_start_limit": {
                "total": SESSION_START_TOTAL,
                "remaining": max(SESSION_START_TOTAL - self.session_starts, 0),
                "reset_after": max(24 * 3600 * 1000 - elapsed_ms, 0),
                "max_concurrency": self.max_concurrency,
            },
        }

    async def _get_me(self, ctx: _Ctx) -> tuple[int, Any]:
        return 200, {**self.bot_user.payload(), "verified": True, "mfa_enabled": False}

    async def _get_user(self, ctx: _Ctx) -> tuple[int, Any]:
        user = self.users.get(int(ctx.params["user_id"]))
        if user is None:
            raise DiscordApiError(404, 10013, "Unknown User")
        return 200, user.payload()

    async def _create_dm(self, ctx: _Ctx) -> tuple[int, Any]:
        recipient = self.users.get(int((ctx.json or {}).get("recipient_id", 0)))
        if recipient is None:
            raise DiscordApiError(400, 50035, "Invalid Form Body")
        return 200, self.dm_channel(recipient).payload()

    @property
    def application_flags(self) -> int:
        """The application's flags: the `_LIMITED` flag of each privileged intent enabled
        (`privileged_intents`), as for an app in fewer than 100 servers that toggled it on its
        Bot page (https://discord.com/developers/docs/resources/application
        #application-object-application-flags)."""
        flags = 0
        if self.privileged_intents & Intent.GUILD_PRESENCES:
            flags |= 1 << 13  # GATEWAY_PRESENCE_LIMITED
        if self.privileged_intents & Intent.GUILD_MEMBERS:
            flags |= 1 << 15  # GATEWAY_GUILD_MEMBERS_LIMITED
        if self.privileged_intents & Intent.MESSAGE_CONTENT:
            flags |= 1 << 19  # GATEWAY_MESSAGE_CONTENT_LIMITED
        return flags

    async def _get_application(self, ctx: _Ctx) -> tuple[int, Any]:
        return 200, {
            "id": str(self.application_id),
            "name": self.bot_user.username,
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "owner": self.app_owner.payload(),
            "team": None,
            "flags": self.application_flags,
            "bot": self.bot_user.payload(),
            "interactions_endpoint_url": None,
            "install_params": None,
            "integration_types_config": {"0": {}},
        }

    async def _empty_list(self, ctx: _Ctx) -> tuple[int, Any]:
        return 200, []

    async def _empty_items(self, ctx: _Ctx) -> tuple[int, Any]:
        return 200, {"items": []}

    async def _typing(self, ctx: _Ctx) -> tuple[int, Any]:
        self._channel_or_404(ctx.params["channel_id"])
        return 204, None

    # ------------------------------------------------------------------ REST: commands

    def _command_scope(self, ctx: _Ctx) -> int | None:
        if int(ctx.params["app_id"]) != self.application_id:
            raise DiscordApiError(403, 50001, "Missing Access")
        gid = ctx.params.get("guild_id")
        if gid is None:
            return None
        if int(gid) not in self.guilds:
            raise DiscordApiError(403, 50001, "Missing Access")
        return int(gid)

    async def _get_commands(self, ctx: _Ctx) -> tuple[int, Any]:
        return 200, list(self._commands.get(self._command_scope(ctx), {}).values())

    async def _put_commands(self, ctx: _Ctx) -> tuple[int, Any]:
        return 200, self._overwrite_commands(self._command_scope(ctx), ctx.json)

    def _find_command(self, ctx: _Ctx) -> tuple[int | None, tuple[str, int], JSON]:
        scope = self._command_scope(ctx)
        for key, cmd in self._commands.get(scope, {}).items():
            if cmd["id"] == ctx.params["command_id"]:
                return scope, key, cmd
        raise DiscordApiError(404, 10063, "Unknown application command")

    async def _post_command(self, ctx: _Ctx) -> tuple[int, Any]:
        scope = self._command_scope(ctx)
        body = ctx.json or {}
        key = (str(body.get("name")), int(body.get("type", 1)))
        commands = self._commands.setdefault(scope, {})
        old = commands.get(key)
        commands[key] = self._store_command(scope, body, old)
        return (200 if old else 201), commands[key]

    async def _get_command(self, ctx: _Ctx) -> tuple[int, Any]:
        return 200, self._find_command(ctx)[2]

    async def _patch_command(self, ctx: _Ctx) -> tuple[int, Any]:
        scope, key, cmd = self._find_command(ctx)
        updated = self._store_command(scope, {**cmd, **(ctx.json or {})}, cmd)
        del self._commands[scope][key]
        self._commands[scope][(updated["name"], int(updated.get("type", 1)))] = updated
        return 200, updated

    async def _delete_command(self, ctx: _Ctx) -> tuple[int, Any]:
        scope, key, _ = self._find_command(ctx)
        del self._commands[scope][key]
        return 204, None

    # ------------------------------------------------------------------ REST: interactions

    async def _interaction_callback(self, ctx: _Ctx) -> tuple[int, Any]:
        handle = self._interactions_by_id.get(int(ctx.params["interaction_id"]))
        if handle is None or handle.token != ctx.params["token"]:
            raise DiscordApiError(404, 10062, "Unknown interaction")
        ctx.handle = handle
        if handle.callbacks:
            raise DiscordApiError(400, 40060, "Interaction has already been acknowledged.")
        if self.clock() - handle.created_at > INTERACTION_RESPONSE_DEADLINE:
            raise DiscordApiError(404, 10062, "Unknown interaction")
        body = ctx.json if isinstance(ctx.json, dict) else {}
        rtype = int(body.get("type", 0))
        data = body.get("data") or {}
        self._check_response_type(handle, rtype)
        message: FakeMessage | None = None
        resource: JSON = {"type": rtype}
        guild_id = handle.guild.id if handle.guild else None
        channel_id = handle.channel.id if handle.channel else 0
        if rtype == 4:
            message = self._create_message(
                channel_id=channel_id,
                guild_id=guild_id,
                author=self.bot_user,
                payload=data,
                files=ctx.files,
                size_limit=handle.attachment_size_limit,
                type=20 if handle.type == 2 else 0,
                handle=handle,
            )
        elif rtype == 5:
            flags = MESSAGE_FLAG_LOADING | (int(data.get("flags") or 0) & MESSAGE_FLAG_EPHEMERAL)
            message = self._create_message(
                channel_id=channel_id,
                guild_id=guild_id,
                author=self.bot_user,
                payload={},
                files=[],
                size_limit=handle.attachment_size_limit,
                type=20 if handle.type == 2 else 0,
                extra_flags=flags,
                handle=handle,
                validate=False,
            )
        elif rtype == 7:
            assert handle.source_message is not None
            if handle.source_message.deleted:
                raise DiscordApiError(404, 10008, "Unknown Message")
            self._apply_edit(handle.source_message, data, ctx.files, handle.attachment_size_limit)
            message = handle.source_message
        elif rtype == 8:
            check_choices(data)
        elif rtype == 9:
            check_modal(data)
        if rtype in (6, 7):
            handle.original = handle.source_message
        elif message is not None:
            handle.original = message
        handle.callbacks.append(CallbackRecord(rtype, body.get("data"), self.clock(), ctx.record))
        if message is not None:
            resource["message"] = self.render_message(message)
            if rtype in (4, 5) and self.message_events and not message.ephemeral:
                await self._message_event("MESSAGE_CREATE", message)
            elif rtype == 7 and self.message_events:
                await self._message_event("MESSAGE_UPDATE", message)
        interaction: JSON = {
            "id": str(handle.id),
            "type": handle.type,
            "response_message_loading": rtype == 5,
            "response_message_ephemeral": bool(message and message.ephemeral),
        }
        if message is not None:
            interaction["response_message_id"] = str(message.id)
        return 200, {"interaction": interaction, "resource": resource}

    @staticmethod
    def _check_response_type(handle: InteractionHandle, rtype: int) -> None:
        allowed = {
            2: {4, 5, 9},
            3: {4, 5, 6, 7, 9},
            4: {8},
            5: {4, 5, 6, 7} if handle.source_message is not None else {4, 5},
        }.get(handle.type, set())
        if rtype not in allowed:
            form = FormErrors()
            form.add(["type"], "INTERACTION_RESPONSE_TYPE_INVALID", "Invalid response type")
            form.raise_if_any()

    def _handle_for_webhook(self, ctx: _Ctx) -> InteractionHandle:
        if int(ctx.params["app_id"]) != self.application_id:
            raise DiscordApiError(404, 10015, "Unknown Webhook")
        handle = self._interactions_by_token.get(ctx.params["token"])
        if handle is None:
            raise DiscordApiError(401, 50027, "Invalid Webhook Token")
        ctx.handle = handle
        if self.clock() - handle.created_at > INTERACTION_TOKEN_LIFETIME:
            raise DiscordApiError(401, 50027, "Invalid Webhook Token")
        return handle

    async def _get_webhook(self, ctx: _Ctx) -> tuple[int, Any]:
        self._handle_for_webhook(ctx)
        return 200, {
            "id": str(self.application_id),
            "type": 3,
            "name": self.bot_user.username,
            "avatar": None,
            "application_id": str(self.application_id),
            "token": ctx.params["token"],
        }

    async def _post_followup(self, ctx: _Ctx) -> tuple[int, Any]:
        handle = self._handle_for_webhook(ctx)
        if not handle.callbacks:
            raise DiscordApiError(404, 10015, "Unknown Webhook")
        payload = ctx.json if isinstance(ctx.json, dict) else {}
        original = handle.original
        if (
            original is not None
            and original.loading
            and not original.deleted
            and handle.response_type == 5
        ):
            # Discord: the first followup after a defer replaces the "thinking" message
            # (unless it was deleted: then the followup is a new message).
            self._apply_edit(original, payload, ctx.files, handle.attachment_size_limit)
            message = original
            event = "MESSAGE_UPDATE"
        else:
            message = self._create_message(
                channel_id=handle.channel.id if handle.channel else 0,
                guild_id=handle.guild.id if handle.guild else None,
                author=self.bot_user,
                payload=payload,
                files=ctx.files,
                size_limit=handle.attachment_size_limit,
                type=20 if handle.type == 2 else 0,
                handle=handle,
            )
            event = "MESSAGE_CREATE"
        handle.followups.append(message)
        if self.message_events and not message.ephemeral:
            await self._message_event(event, message)
        if ctx.request.query.get("wait", "").lower() in ("1", "true"):
            return 200, self.render_message(message)
        return 204, None

    def _webhook_message(self, ctx: _Ctx) -> tuple[InteractionHandle, FakeMessage]:
        handle = self._handle_for_webhook(ctx)
        mid = ctx.params["message_id"]
        message: FakeMessage | None
        if mid == "@original":
            message = handle.original
        else:
            message = next((m for m in handle.messages if str(m.id) == mid), None)
        if message is None or message.deleted:
            raise DiscordApiError(404, 10008, "Unknown Message")
        return handle, message

    async def _get_webhook_message(self, ctx: _Ctx) -> tuple[int, Any]:
        _, message = self._webhook_message(ctx)
        return 200, self.render_message(message)

    async def _patch_webhook_message(self, ctx: _Ctx) -> tuple[int, Any]:
        handle, message = self._webhook_message(ctx)
        payload = ctx.json if isinstance(ctx.json, dict) else {}
        self._apply_edit(message, payload, ctx.files, handle.attachment_size_limit)
        if self.message_events and not message.ephemeral:
            await self._message_event("MESSAGE_UPDATE", message)
        return 200, self.render_message(message)

    async def _delete_webhook_message(self, ctx: _Ctx) -> tuple[int, Any]:
        _, message = self._webhook_message(ctx)
        message.deleted = True
        if self.message_events and not message.ephemeral:
            await self._message_event("MESSAGE_DELETE", message)
        return 204, None

    async def _message_event(self, event: str, message: FakeMessage) -> None:
        if event == "MESSAGE_DELETE":
            data: JSON = {"id": str(message.id), "channel_id": str(message.channel_id)}
            if message.guild_id is not None:
                data["guild_id"] = str(message.guild_id)
        else:
            data = self.render_message(message)
        await self.dispatch(event, data)

    # ------------------------------------------------------------------ REST: channels

    def _channel_or_404(self, channel_id: str) -> tuple[FakeChannel, FakeGuild | None]:
        channel, guild = self._find_channel(int(channel_id))
        if channel is None:
            raise DiscordApiError(404, 10003, "Unknown Channel")
        return channel, guild

    def _require(self, guild: FakeGuild | None, channel: FakeChannel, needed: int) -> None:
        if guild is None:
            return
        perms = guild.permissions_in(self._bot_member(guild), channel)
        if not perms & Permission.VIEW_CHANNEL:
            raise DiscordApiError(403, 50001, "Missing Access")
        if perms & needed != needed:
            raise DiscordApiError(403, 50013, "Missing Permissions")

    def _require_read(self, guild: FakeGuild | None, channel: FakeChannel, needed: int) -> None:
        """Reading messages: View Channel, and Connect too in a voice or stage channel's chat
        (https://discord.com/developers/docs/resources/message#get-channel-messages and
        #get-channel-message: "If the channel is a voice channel, they must also have the
        CONNECT permission")."""
        if guild is not None and channel.type in VOICE_CHANNEL_TYPES:
            perms = guild.permissions_in(self._bot_member(guild), channel)
            if not perms & Permission.CONNECT:
                raise DiscordApiError(403, 50001, "Missing Access")
        self._require(guild, channel, needed)

    def _channel_message(
        self, ctx: _Ctx, *, read: bool = False
    ) -> tuple[FakeChannel, FakeGuild | None, FakeMessage]:
        channel, guild = self._channel_or_404(ctx.params["channel_id"])
        if read:
            self._require_read(guild, channel, Permission.READ_MESSAGE_HISTORY)
        else:
            self._require(guild, channel, 0)
        message = self._messages.get(int(ctx.params["message_id"]))
        if (
            message is None
            or message.deleted
            or message.ephemeral
            or message.channel_id != channel.id
        ):
            raise DiscordApiError(404, 10008, "Unknown Message")
        return channel, guild, message

    async def _get_channel(self, ctx: _Ctx) -> tuple[int, Any]:
        channel, guild = self._channel_or_404(ctx.params["channel_id"])
        self._require(guild, channel, 0)
        return 200, channel.payload()

    async def _post_message(self, ctx: _Ctx) -> tuple[int, Any]:
        channel, guild = self._channel_or_404(ctx.params["channel_id"])
        payload = ctx.json if isinstance(ctx.json, dict) else {}
        needed = Permission.SEND_MESSAGES
        if ctx.files:
            needed |= Permission.ATTACH_FILES
        if payload.get("embeds"):
            needed |= Permission.EMBED_LINKS
        self._require(guild, channel, needed)
        reference = payload.get("message_reference")
        if reference:
            ref = self._messages.get(int(reference.get("message_id", 0)))
            ref_channel = int(reference.get("channel_id") or channel.id)
            if ref is None or ref.deleted or ref.channel_id != ref_channel:
                if reference.get("fail_if_not_exists", True):
                    form = FormErrors()
                    form.add(
                        ["message_reference"],
                        "MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                        "Unknown message",
                    )
                    form.raise_if_any()
                reference = None
        message = self._create_message(
            channel_id=channel.id,
            guild_id=guild.id if guild else None,
            author=self.bot_user,
            payload={k: v for k, v in payload.items() if k != "flags"}
            | {"flags": int(payload.get("flags") or 0) & ~MESSAGE_FLAG_EPHEMERAL},
            files=ctx.files,
            size_limit=guild.filesize_limit if guild else DEFAULT_FILESIZE_LIMIT,
            type=19 if reference else 0,
        )
        if reference:
            message.message_reference = {
                "type": 0,
                "message_id": str(reference["message_id"]),
                "channel_id": str(reference.get("channel_id") or channel.id),
                **({"guild_id": str(guild.id)} if guild else {}),
            }
            self._compute_pings(message)
        if self.message_events:
            await self._message_event("MESSAGE_CREATE", message)
        return 200, self.render_message(message)

    async def _get_messages(self, ctx: _Ctx) -> tuple[int, Any]:
        channel, guild = self._channel_or_404(ctx.params["channel_id"])
        self._require_read(guild, channel, 0)
        if guild is not None and not (
            guild.permissions_in(self._bot_member(guild), channel) & Permission.READ_MESSAGE_HISTORY
        ):
            # "If the current user is missing the READ_MESSAGE_HISTORY permission in the
            # channel, then no messages will be returned." (get-channel-messages)
            return 200, []
        query = ctx.request.query
        limit = max(1, min(100, int(query.get("limit", 50))))
        found = [
            m
            for m in self._messages.values()
            if m.channel_id == channel.id and not m.deleted and not m.ephemeral
        ]
        if "before" in query:
            found = [m for m in found if m.id < int(query["before"])]
            found = found[-limit:]
        elif "after" in query:
            found = [m for m in found if m.id > int(query["after"])][:limit]
        elif "around" in query:
            around = int(query["around"])
            older = [m for m in found if m.id <= around][-((limit + 1) // 2) :]
            newer = [m for m in found if m.id > around][: limit // 2]
            found = older + newer
        else:
            found = found[-limit:]
        return 200, [self.render_for_app(m) for m in reversed(found)]

    async def _get_message(self, ctx: _Ctx) -> tuple[int, Any]:
        _, _, message = self._channel_message(ctx, read=True)
        return 200, self.render_for_app(message)

    async def _patch_message(self, ctx: _Ctx) -> tuple[int, Any]:
        _, guild, message = self._channel_message(ctx)
        payload = ctx.json if isinstance(ctx.json, dict) else {}
        if message.author.id != self.bot_user.id and set(payload) - {"flags"}:
            raise DiscordApiError(403, 50005, "Cannot edit a message authored by another user")
        size_limit = guild.filesize_limit if guild else DEFAULT_FILESIZE_LIMIT
        self._apply_edit(message, payload, ctx.files, size_limit)
        if self.message_events:
            await self._message_event("MESSAGE_UPDATE", message)
        return 200, self.render_message(message)

    async def _delete_message_route(self, ctx: _Ctx) -> tuple[int, Any]:
        channel, guild, message = self._channel_message(ctx)
        if message.author.id != self.bot_user.id:
            self._require(guild, channel, Permission.MANAGE_MESSAGES)
        message.deleted = True
        if self.message_events:
            await self._message_event("MESSAGE_DELETE", message)
        return 204, None

    async def _bulk_delete(self, ctx: _Ctx) -> tuple[int, Any]:
        channel, guild = self._channel_or_404(ctx.params["channel_id"])
        self._require(guild, channel, Permission.MANAGE_MESSAGES)
        for mid in (ctx.json or {}).get("messages", []):
            message = self._messages.get(int(mid))
            if message is not None and message.channel_id == channel.id:
                message.deleted = True
        return 204, None

    async def _add_reaction(self, ctx: _Ctx) -> tuple[int, Any]:
        channel, guild, message = self._channel_message(ctx)
        self._require(guild, channel, Permission.READ_MESSAGE_HISTORY)
        key = self._emoji_key(ctx.params["emoji"])
        users = message.reactions.setdefault(key, [])
        if not users:
            self._require(guild, channel, Permission.ADD_REACTIONS)
        if self.bot_user.id not in users:
            users.append(self.bot_user.id)
            if self.message_events:
                data = self._reaction_event(
                    message, key, self.bot_user, self._bot_member(guild) if guild else None
                )
                data.update(burst=False, burst_colors=[], type=0)
                data["message_author_id"] = str(message.author.id)
                await self.dispatch("MESSAGE_REACTION_ADD", data)
        return 204, None

    async def _remove_own_reaction(self, ctx: _Ctx) -> tuple[int, Any]:
        _, _, message = self._channel_message(ctx)
        users = message.reactions.get(self._emoji_key(ctx.params["emoji"]), [])
        if self.bot_user.id in users:
            users.remove(self.bot_user.id)
        return 204, None

    async def _remove_user_reaction(self, ctx: _Ctx) -> tuple[int, Any]:
        channel, guild, message = self._channel_message(ctx)
        uid = int(ctx.params["user_id"])
        if uid != self.bot_user.id:
            self._require(guild, channel, Permission.MANAGE_MESSAGES)
        users = message.reactions.get(self._emoji_key(ctx.params["emoji"]), [])
        if uid in users:
            users.remove(uid)
        return 204, None

    async def _get_reactions(self, ctx: _Ctx) -> tuple[int, Any]:
        _, _, message = self._channel_message(ctx)
        users = message.reactions.get(self._emoji_key(ctx.params["emoji"]), [])
        return 200, [self.users[u].payload() for u in users if u in self.users]

    async def _clear_emoji(self, ctx: _Ctx) -> tuple[int, Any]:
        channel, guild, message = self._channel_message(ctx)
        self._require(guild, channel, Permission.MANAGE_MESSAGES)
        message.reactions.pop(self._emoji_key(ctx.params["emoji"]), None)
        return 204, None

    async def _clear_reactions(self, ctx: _Ctx) -> tuple[int, Any]:
        channel, guild, message = self._channel_message(ctx)
        self._require(guild, channel, Permission.MANAGE_MESSAGES)
        message.reactions.clear()
        return 204, None

    # ------------------------------------------------------------------ REST: guilds

    def _guild_or_404(self, guild_id: str) -> FakeGuild:
        guild = self.guilds.get(int(guild_id))
        if guild is None:
            raise DiscordApiError(404, 10004, "Unknown Guild")
        return guild

    async def _get_guild(self, ctx: _Ctx) -> tuple[int, Any]:
        guild = self._guild_or_404(ctx.params["guild_id"])
        data = guild.payload(full=False)
        if ctx.request.query.get("with_counts", "").lower() in ("1", "true"):
            data["approximate_member_count"] = len(guild.members)
            data["approximate_presence_count"] = 0
        return 200, data

    async def _get_guild_channels(self, ctx: _Ctx) -> tuple[int, Any]:
        guild = self._guild_or_404(ctx.params["guild_id"])
        return 200, [c.payload() for c in guild.channels.values()]

    async def _get_roles(self, ctx: _Ctx) -> tuple[int, Any]:
        guild = self._guild_or_404(ctx.params["guild_id"])
        return 200, [r.payload() for r in guild.roles.values()]

    async def _get_members(self, ctx: _Ctx) -> tuple[int, Any]:
        guild = self._guild_or_404(ctx.params["guild_id"])
        limit = int(ctx.request.query.get("limit", 1))
        after = int(ctx.request.query.get("after", 0))
        members = sorted((m for m in guild.members.values() if m.id > after), key=lambda m: m.id)
        return 200, [m.payload() for m in members[:limit]]

    async def _get_member(self, ctx: _Ctx) -> tuple[int, Any]:
        guild = self._guild_or_404(ctx.params["guild_id"])
        member = guild.members.get(int(ctx.params["user_id"]))
        if member is None:
            raise DiscordApiError(404, 10007, "Unknown Member")
        return 200, member.payload()
