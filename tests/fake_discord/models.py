"""Data model of the fake Discord: the world (guilds, channels, members) and what the bot did.

Everything here is plain data. `FakeDiscord` (in `server.py`) owns the instances, mutates them
while serving requests and renders them into Discord JSON payloads.
"""

# The test-facing API takes `timeout=` as the brief asks (asyncio.timeout would be clumsier).

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fake_discord.server import FakeDiscord

JSON = dict[str, Any]

MiB = 1024 * 1024
DEFAULT_FILESIZE_LIMIT = 10 * MiB
# The server's upload limit per boost tier (https://discord.com/developers/docs/reference
# #uploading-files, DISCORD_FACTS.md "Uploads"; discord.py's `Guild._PREMIUM_GUILD_LIMITS`).
BOOST_TIER_UPLOAD_LIMITS = {0: 10 * MiB, 1: 10 * MiB, 2: 50 * MiB, 3: 100 * MiB}
NITRO_BASIC_UPLOAD_LIMIT = 50 * MiB
NITRO_UPLOAD_LIMIT = 500 * MiB
INTERACTION_RESPONSE_DEADLINE = 3.0
INTERACTION_TOKEN_LIFETIME = 15 * 60.0
CDN_URL_LIFETIME = 24 * 3600.0


class Permission:
    """Discord permission bits used by the fake (see Discord's permission docs)."""

    CREATE_INSTANT_INVITE = 1 << 0
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    CONNECT = 1 << 20
    SPEAK = 1 << 21
    CHANGE_NICKNAME = 1 << 26
    USE_APPLICATION_COMMANDS = 1 << 31
    SEND_MESSAGES_IN_THREADS = 1 << 38
    ALL = (1 << 51) - 1


DEFAULT_EVERYONE_PERMISSIONS = (
    Permission.CREATE_INSTANT_INVITE
    | Permission.ADD_REACTIONS
    | Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.READ_MESSAGE_HISTORY
    | Permission.USE_EXTERNAL_EMOJIS
    | Permission.CONNECT
    | Permission.SPEAK
    | Permission.CHANGE_NICKNAME
    | Permission.USE_APPLICATION_COMMANDS
    | Permission.SEND_MESSAGES_IN_THREADS
)
"""What Discord gives `@everyone` in a new server."""

DEFAULT_BOT_PERMISSIONS = (
    Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.READ_MESSAGE_HISTORY
    | Permission.ADD_REACTIONS
    | Permission.USE_EXTERNAL_EMOJIS
)
"""Permissions of the bot's managed role in a guild built by `FakeDiscord.add_guild`."""

CHANNEL_TEXT = 0
CHANNEL_VOICE = 2
CHANNEL_STAGE = 13

MESSAGE_FLAG_SUPPRESS_EMBEDS = 1 << 2
MESSAGE_FLAG_EPHEMERAL = 1 << 6
MESSAGE_FLAG_LOADING = 1 << 7
MESSAGE_FLAG_COMPONENTS_V2 = 1 << 15


class DiscordApiError(Exception):
    """Raised inside a request handler; becomes Discord's JSON error body `{"code", "message"}`."""

    def __init__(self, status: int, code: int, message: str, errors: JSON | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> JSON:
        """The JSON body Discord would answer with."""
        body: JSON = {"code": self.code, "message": self.message}
        if self.errors:
            body["errors"] = self.errors
        return body


# --------------------------------------------------------------------------- the world


@dataclass
class FakeUser:
    """A Discord user (a person or the bot)."""

    id: int
    username: str
    bot: bool = False
    global_name: str | None = None

    def payload(self) -> JSON:
        """The user object."""
        return {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
            "flags": 0,
        }

    @property
    def mention(self) -> str:
        """`<@id>`."""
        return f"<@{self.id}>"


@dataclass
class FakeRole:
    """A guild role. The `@everyone` role has the guild's id."""

    id: int
    name: str
    permissions: int = 0
    position: int = 0
    managed: bool = False
    bot_id: int | None = None

    def payload(self) -> JSON:
        """The role object."""
        data: JSON = {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": self.managed,
            "mentionable": False,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }
        if self.bot_id is not None:
            data["tags"] = {"bot_id": str(self.bot_id)}
        return data


@dataclass
class PermissionOverwrite:
    """A channel permission overwrite for a role (`type` 0) or a member (`type` 1)."""

    id: int
    type: int
    allow: int = 0
    deny: int = 0

    def payload(self) -> JSON:
        """The overwrite object."""
        return {
            "id": str(self.id),
            "type": self.type,
            "allow": str(self.allow),
            "deny": str(self.deny),
        }


@dataclass
class FakeChannel:
    """A guild channel: text (type 0), voice (2) or stage (13), the last two with their text
    chat; or a DM channel when `guild_id` is None (type 1)."""

    id: int
    guild_id: int | None
    name: str
    type: int = 0
    position: int = 0
    overwrites: list[PermissionOverwrite] = field(default_factory=list)
    recipient: FakeUser | None = None

    def payload(self) -> JSON:
        """The channel object."""
        if self.guild_id is None:
            return {
                "id": str(self.id),
                "type": 1,
                "last_message_id": None,
                "recipients": [self.recipient.payload()] if self.recipient else [],
            }
        data: JSON = {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [o.payload() for o in self.overwrites],
            "parent_id": None,
            "topic": None,
            "nsfw": False,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "flags": 0,
        }
        if self.type in (CHANNEL_VOICE, CHANNEL_STAGE):
            data.update(bitrate=64000, user_limit=0, rtc_region=None, video_quality_mode=1)
        return data

    @property
    def mention(self) -> str:
        """`<#id>`."""
        return f"<#{self.id}>"


@dataclass
class FakeMember:
    """A member of a guild: a user plus role ids."""

    user: FakeUser
    guild_id: int
    role_ids: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: str = "2024-01-01T00:00:00+00:00"
    # The member's own upload limit from Nitro (None: no Nitro). It raises the
    # `attachment_size_limit` of their interactions, never the bot's channel messages.
    nitro_upload_limit: int | None = None

    @property
    def id(self) -> int:
        """The user's id."""
        return self.user.id

    @property
    def mention(self) -> str:
        """`<@id>`."""
        return self.user.mention

    def payload(self, *, permissions: int | None = None, with_user: bool = True) -> JSON:
        """The guild member object; `permissions` is added as in interaction payloads."""
        data: JSON = {
            "roles": [str(r) for r in self.role_ids],
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "joined_at": self.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.user.payload()
        if permissions is not None:
            data["permissions"] = str(permissions)
        return data


@dataclass
class FakeGuild:
    """A guild with its roles, channels and members.

    `FakeDiscord.add_guild` fills the conveniences: `owner`, `admin` (a member whose role has
    Manage Guild), `member` (a plain member), `bot_member`, `channel` (the first text channel).
    """

    id: int
    name: str
    owner_id: int
    roles: dict[int, FakeRole] = field(default_factory=dict)
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)
    filesize_limit: int = DEFAULT_FILESIZE_LIMIT
    premium_tier: int = 0
    locale: str = "en-US"
    available: bool = True
    admin_id: int = 0
    member_id: int = 0
    bot_id: int = 0
    admin_role_id: int = 0
    bot_role_id: int = 0

    def _member(self, user_id: int, what: str) -> FakeMember:
        try:
            return self.members[user_id]
        except KeyError:
            raise LookupError(f"guild {self.id} has no {what}") from None

    @property
    def owner(self) -> FakeMember:
        """The guild owner (has every permission)."""
        return self._member(self.owner_id, "owner")

    @property
    def admin(self) -> FakeMember:
        """A member with the Admin role (Manage Guild by default)."""
        return self._member(self.admin_id, "admin")

    @property
    def member(self) -> FakeMember:
        """A plain member (only `@everyone`); the default user of interactions."""
        return self._member(self.member_id, "plain member")

    @property
    def bot_member(self) -> FakeMember:
        """The bot's own member."""
        return self._member(self.bot_id, "bot member")

    @property
    def admin_role(self) -> FakeRole:
        """The Admin role."""
        return self.roles[self.admin_role_id]

    @property
    def bot_role(self) -> FakeRole:
        """The bot's managed role (holds the bot's permissions)."""
        return self.roles[self.bot_role_id]

    @property
    def everyone(self) -> FakeRole:
        """The `@everyone` role (its id is the guild's id)."""
        return self.roles[self.id]

    @property
    def channel(self) -> FakeChannel:
        """The first text channel."""
        for channel in self.channels.values():
            if channel.type == 0:
                return channel
        raise LookupError(f"guild {self.id} has no text channel")

    def channel_named(self, name: str) -> FakeChannel:
        """The channel called `name`."""
        for channel in self.channels.values():
            if channel.name == name:
                return channel
        raise LookupError(f"guild {self.id} has no channel {name!r}")

    def base_permissions(self, member: FakeMember) -> int:
        """Guild-wide permissions of `member` (roles only, no channel overwrites)."""
        if member.id == self.owner_id:
            return Permission.ALL
        perms = self.everyone.permissions
        for role_id in member.role_ids:
            role = self.roles.get(role_id)
            if role is not None:
                perms |= role.permissions
        if perms & Permission.ADMINISTRATOR:
            return Permission.ALL
        return perms

    def permissions_in(self, member: FakeMember, channel: FakeChannel | None) -> int:
        """Permissions of `member` in `channel`, with Discord's overwrite algorithm."""
        perms = self.base_permissions(member)
        if perms == Permission.ALL or channel is None:
            return perms
        overwrites = {(o.type, o.id): o for o in channel.overwrites}
        everyone = overwrites.get((0, self.id))
        if everyone:
            perms = (perms & ~everyone.deny) | everyone.allow
        allow = deny = 0
        for role_id in member.role_ids:
            o = overwrites.get((0, role_id))
            if o:
                allow |= o.allow
                deny |= o.deny
        perms = (perms & ~deny) | allow
        own = overwrites.get((1, member.id))
        if own:
            perms = (perms & ~own.deny) | own.allow
        if not perms & Permission.VIEW_CHANNEL:
            return 0
        if not perms & Permission.SEND_MESSAGES:
            perms &= ~(
                Permission.EMBED_LINKS | Permission.ATTACH_FILES | Permission.MENTION_EVERYONE
            )
        return perms

    def payload(self, *, full: bool = True) -> JSON:
        """GUILD_CREATE payload (`full`) or the REST guild object."""
        data: JSON = {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": self.premium_tier,
            "premium_subscription_count": 0,
            "preferred_locale": self.locale,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "vanity_url_code": None,
            "application_id": None,
            "max_members": 500000,
            "features": [],
            "roles": [r.payload() for r in self.roles.values()],
            "emojis": [],
            "stickers": [],
        }
        if full:
            data.update(
                {
                    "joined_at": "2024-01-01T00:00:00+00:00",
                    "large": False,
                    "unavailable": False,
                    "member_count": len(self.members),
                    "members": [m.payload() for m in self.members.values()],
                    "channels": [c.payload() for c in self.channels.values()],
                    "threads": [],
                    "presences": [],
                    "voice_states": [],
                    "stage_instances": [],
                    "guild_scheduled_events": [],
                    "soundboard_sounds": [],
                }
            )
        return data


# --------------------------------------------------------------------------- what the bot did


@dataclass
class Upload:
    """A file a test attaches to a slash command option (type 11)."""

    filename: str
    data: bytes
    content_type: str | None = None
    description: str | None = None


@dataclass
class StoredAttachment:
    """A file held by the fake: uploaded by the bot or given to a command option."""

    id: int
    channel_id: int
    filename: str
    data: bytes
    content_type: str | None
    description: str | None = None
    title: str | None = None
    width: int | None = None
    height: int | None = None
    ephemeral: bool = False

    @property
    def size(self) -> int:
        """Size in bytes."""
        return len(self.data)


@dataclass
class UploadedFile:
    """One `files[n]` part of a multipart request, as received."""

    field_name: str
    filename: str
    content_type: str | None
    data: bytes


@dataclass
class RecordedRequest:
    """One REST request the bot made, with what the fake answered."""

    method: str
    path: str
    route: str
    query: dict[str, str]
    json: Any
    files: list[UploadedFile]
    time: float
    authorization: str | None
    status: int = 0
    response: Any = None
    completed: bool = False

    def __repr__(self) -> str:
        return f"<RecordedRequest {self.method} {self.path} -> {self.status}>"


@dataclass
class ApiErrorRecord:
    """An error response the fake gave (validation, expiry, rate limit, unknown route...)."""

    status: int
    code: int
    message: str
    errors: JSON | None
    request: RecordedRequest


@dataclass
class MessageRevision:
    """A snapshot of a message before an edit."""

    time: float
    content: str
    embeds: list[JSON]
    components: list[JSON]
    attachment_ids: list[int]
    flags: int
    allowed_mentions: JSON | None


def walk_components(components: list[JSON]) -> Iterator[JSON]:
    """Yield every component, depth first (rows, containers, sections, labels, accessories)."""
    for component in components:
        yield component
        yield from walk_components(component.get("components") or [])
        for key in ("accessory", "component"):
            child = component.get(key)
            if isinstance(child, dict):
                yield from walk_components([child])


@dataclass
class FakeMessage:
    """A message stored by the fake, with its history.

    `allowed_mentions` is the last value the bot sent (None when it sent none); `pinged_user_ids`
    and `pinged_role_ids` are who Discord would notify given the content and `allowed_mentions`.
    """

    id: int
    channel_id: int
    guild_id: int | None
    author: FakeUser
    content: str = ""
    embeds: list[JSON] = field(default_factory=list)
    components: list[JSON] = field(default_factory=list)
    attachments: list[StoredAttachment] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    tts: bool = False
    allowed_mentions: JSON | None = None
    message_reference: JSON | None = None
    interaction_metadata: JSON | None = None
    webhook_id: int | None = None
    application_id: int | None = None
    interaction_id: int | None = None
    created_at: float = 0.0
    edited_at: float | None = None
    deleted: bool = False
    history: list[MessageRevision] = field(default_factory=list)
    reactions: dict[str, list[int]] = field(default_factory=dict)
    pinged_user_ids: set[int] = field(default_factory=set)
    pinged_role_ids: set[int] = field(default_factory=set)
    pinged_everyone: bool = False
    nonce: str | int | None = None
    last_request: RecordedRequest | None = field(default=None, repr=False)

    @property
    def ephemeral(self) -> bool:
        """Whether the message has the EPHEMERAL flag."""
        return bool(self.flags & MESSAGE_FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        """Whether this is a deferred ("thinking") response not yet edited."""
        return bool(self.flags & MESSAGE_FLAG_LOADING)

    @property
    def edit_count(self) -> int:
        """How many times the message was edited."""
        return len(self.history)

    @property
    def files(self) -> list[bytes]:
        """The bytes of every attachment, in order."""
        return [a.data for a in self.attachments]

    @property
    def filenames(self) -> list[str]:
        """The attachments' filenames, in order."""
        return [a.filename for a in self.attachments]

    def all_components(self) -> list[JSON]:
        """Every component of the message, nested ones included."""
        return list(walk_components(self.components))

    @property
    def custom_ids(self) -> list[str]:
        """Every custom_id on the message."""
        return [c["custom_id"] for c in self.all_components() if "custom_id" in c]

    def component(self, custom_id: str) -> JSON | None:
        """The component with `custom_id`, or None."""
        for component in self.all_components():
            if component.get("custom_id") == custom_id:
                return component
        return None

    def buttons(self) -> list[JSON]:
        """Every button (type 2)."""
        return [c for c in self.all_components() if c.get("type") == 2]

    def custom_id_matching(self, prefix: str) -> str:
        """The first custom_id that starts with `prefix` (raises LookupError if none)."""
        for custom_id in self.custom_ids:
            if custom_id.startswith(prefix):
                return custom_id
        raise LookupError(f"no custom_id starting with {prefix!r} on message {self.id}")

    def __repr__(self) -> str:
        extra = " deleted" if self.deleted else ""
        return (
            f"<FakeMessage id={self.id} channel={self.channel_id} content={self.content[:40]!r} "
            f"embeds={len(self.embeds)} files={self.filenames} flags={self.flags}{extra}>"
        )


@dataclass
class CallbackRecord:
    """An accepted initial interaction response (`POST .../callback`)."""

    type: int
    data: JSON | None
    time: float
    request: RecordedRequest


class InteractionHandle:
    """What happened to one dispatched interaction.

    Attributes are updated live by the fake; use the `wait_for_*` coroutines to wait for the bot.
    """

    def __init__(
        self,
        fake: FakeDiscord,
        payload: JSON,
        *,
        guild: FakeGuild | None,
        channel: FakeChannel | None,
        user: FakeUser,
        source_message: FakeMessage | None,
        attachment_size_limit: int,
    ) -> None:
        self.fake = fake
        self.payload = payload
        self.id = int(payload["id"])
        self.token: str = payload["token"]
        self.type: int = payload["type"]
        self.guild = guild
        self.channel = channel
        self.user = user
        self.source_message = source_message
        self.attachment_size_limit = attachment_size_limit
        self.created_at = fake.clock()
        self.callbacks: list[CallbackRecord] = []
        self.original: FakeMessage | None = None
        self.followups: list[FakeMessage] = []
        self.errors: list[ApiErrorRecord] = []
        self.requests: list[RecordedRequest] = []

    @property
    def response(self) -> CallbackRecord | None:
        """The accepted initial response, if any."""
        return self.callbacks[0] if self.callbacks else None

    @property
    def response_type(self) -> int | None:
        """Type of the initial response (4 message, 5 defer, 6 defer update, 7 update, ...)."""
        return self.callbacks[0].type if self.callbacks else None

    @property
    def deferred(self) -> bool:
        """Whether the initial response was a defer (type 5 or 6)."""
        return self.response_type in (5, 6)

    @property
    def modal(self) -> JSON | None:
        """The modal sent in response (type 9), if any."""
        response = self.response
        return response.data if response and response.type == 9 else None

    @property
    def choices(self) -> list[JSON] | None:
        """The autocomplete choices sent (type 8), if any."""
        response = self.response
        if response and response.type == 8:
            return list((response.data or {}).get("choices", []))
        return None

    @property
    def ephemeral(self) -> bool:
        """Whether the initial response asked for an ephemeral message."""
        response = self.response
        return bool(response and (response.data or {}).get("flags", 0) & MESSAGE_FLAG_EPHEMERAL)

    @property
    def messages(self) -> list[FakeMessage]:
        """The original response message (if any) followed by the followups, de-duplicated."""
        out: list[FakeMessage] = []
        for message in [self.original, *self.followups]:
            if message is not None and all(m is not message for m in out):
                out.append(message)
        return out

    def error_codes(self) -> list[int]:
        """Codes of the errors the fake returned to requests with this interaction's token."""
        return [e.code for e in self.errors]

    async def wait_for_response(self, timeout: float = 5.0) -> CallbackRecord:
        """Wait for the initial response."""

        def check() -> CallbackRecord | None:
            return self.response

        return await self.fake.wait_for(check, timeout, what=f"response to interaction {self.id}")

    async def wait_for_followups(self, count: int = 1, timeout: float = 5.0) -> list[FakeMessage]:
        """Wait until at least `count` followups were sent; return them all."""

        def check() -> list[FakeMessage] | None:
            return list(self.followups) if len(self.followups) >= count else None

        return await self.fake.wait_for(check, timeout, what=f"{count} followup(s) to {self.id}")

    async def wait_for_followup(self, timeout: float = 5.0) -> FakeMessage:
        """Wait for the first followup."""
        return (await self.wait_for_followups(1, timeout))[0]

    async def wait_for_original(
        self, predicate: Callable[[FakeMessage], bool] | None = None, timeout: float = 5.0
    ) -> FakeMessage:
        """Wait until the original response message exists (and satisfies `predicate`)."""

        def check() -> FakeMessage | None:
            message = self.original
            if message is None or (predicate is not None and not predicate(message)):
                return None
            return message

        return await self.fake.wait_for(check, timeout, what=f"original of {self.id}")

    async def wait_for_error(self, code: int | None = None, timeout: float = 5.0) -> ApiErrorRecord:
        """Wait until the fake answered one of this interaction's requests with an error."""

        def check() -> ApiErrorRecord | None:
            for error in self.errors:
                if code is None or error.code == code:
                    return error
            return None

        return await self.fake.wait_for(check, timeout, what=f"error {code} for {self.id}")

    async def wait_until_done(self, idle: float = 0.2, timeout: float = 5.0) -> None:
        """Wait until no request with this token arrived for `idle` real seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = -1
        while loop.time() < deadline:
            if len(self.requests) == seen and self.requests:
                return
            seen = len(self.requests)
            await asyncio.sleep(idle)
        raise TimeoutError(f"interaction {self.id} still busy after {timeout}s")

    def __repr__(self) -> str:
        return (
            f"<InteractionHandle id={self.id} type={self.type} response={self.response_type} "
            f"followups={len(self.followups)} errors={self.error_codes()}>"
        )
