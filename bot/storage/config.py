"""Per-server configuration: typed defaults, presets, limits and the blocklist, cached.

Naming: the environment is *settings* (:mod:`bot.settings`); what a server's admins choose
with ``/settings`` is *config*. Values are stored one row per key (``scope_settings``:
channel 0 is the whole server), read into one :class:`ServerConfig`, and the cache is
dropped on every write.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.pixazo.models import AspectRatio, Creativity, Moodboard, Style
from bot.storage.db import Database

log = logging.getLogger(__name__)

SERVER = 0  # channel_id of server-wide values

#: The keys a channel can override (the rest are server-wide only).
ScopedKey = Literal[
    "aspect_ratio",
    "creativity",
    "styles",
    "moodboard",
    "moodboard_locked",
    "count_max",
    "press_policy",
]
PressPolicy = Literal["anyone", "requester"]
#: Where an effective value came from.
Scope = Literal["channel", "server"]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class StoredMoodboard(_Lenient):
    """A default moodboard as stored: its id, strength and the preset name it came from."""

    id: str
    strength: float
    name: str | None = None


class Defaults(_Lenient):
    """The values one scope (the server, or one channel) sets; None = not set here."""

    aspect_ratio: AspectRatio | None = None
    creativity: Creativity | None = None
    styles: tuple[Style, ...] | None = None
    moodboard: StoredMoodboard | None = None
    moodboard_locked: bool | None = None
    count_max: int | None = None
    press_policy: PressPolicy | None = None


class LimitOverrides(_Lenient):
    """A server's own fair-use numbers (None = the environment's default)."""

    member_in_flight: int | None = None
    member_daily: int | None = None
    server_daily: int | None = None


class ServerConfig(_Lenient):
    """Everything a server's admins configured."""

    server: Defaults = Field(default_factory=Defaults)
    channels: dict[int, Defaults] = Field(default_factory=dict)
    style_presets: dict[str, tuple[Style, ...]] = Field(default_factory=dict)
    moodboard_presets: dict[str, Moodboard] = Field(default_factory=dict)
    limits: LimitOverrides = Field(default_factory=LimitOverrides)
    blocklist: tuple[dict[str, str], ...] = ()
    log_channel: int | None = None

    def channel(self, channel_id: int | None) -> Defaults:
        """The overrides of one channel (empty when none)."""
        return self.channels.get(channel_id or -1) or Defaults()

    def effective(self, key: ScopedKey, channel_id: int | None) -> tuple[Any, Scope | None]:
        """The value in effect in a channel and where it is set: the channel's own, else the
        server's; ``(None, None)`` when neither sets it."""
        value = getattr(self.channel(channel_id), key)
        if value is not None:
            return value, "channel"
        value = getattr(self.server, key)
        if value is not None:
            return value, "server"
        return None, None

    def value(self, key: ScopedKey, channel_id: int | None) -> Any:
        """The value in effect in a channel (None when neither the channel nor the server
        sets it)."""
        return self.effective(key, channel_id)[0]


#: Keys stored at channel 0 that are not :class:`Defaults` fields.
_SERVER_ONLY = {"limits", "blocklist", "log_channel"}


def _load(rows: list[tuple[int, str, Any]], presets: list[tuple[str, str, Any]]) -> ServerConfig:
    """Build a config from rows, dropping (with a warning) any value that does not parse."""
    scopes: dict[int, dict[str, Any]] = {}
    server_only: dict[str, Any] = {}
    for channel_id, key, value in rows:
        if channel_id == SERVER and key in _SERVER_ONLY:
            server_only[key] = value
        elif key in Defaults.model_fields:
            scopes.setdefault(channel_id, {})[key] = value

    def lenient(model: type[BaseModel], data: dict[str, Any], where: str) -> Any:
        kept: dict[str, Any] = {}
        for key, value in data.items():
            try:
                model.model_validate({key: value})
            except ValidationError:
                log.warning("ignoring an unreadable %s value for %s", key, where)
                continue
            kept[key] = value
        return model.model_validate(kept)

    channels = {
        channel_id: lenient(Defaults, values, f"channel {channel_id}")
        for channel_id, values in scopes.items()
        if channel_id != SERVER
    }
    fields: dict[str, Any] = {
        "server": lenient(Defaults, scopes.get(SERVER, {}), "the server"),
        "channels": channels,
    }
    try:
        fields["limits"] = LimitOverrides.model_validate(server_only.get("limits") or {})
    except ValidationError:
        log.warning("ignoring unreadable fair-use limits")
    blocklist = server_only.get("blocklist") or []
    if isinstance(blocklist, list):
        fields["blocklist"] = tuple(
            {str(k): str(v) for k, v in e.items()} for e in blocklist if isinstance(e, dict)
        )
    if isinstance(server_only.get("log_channel"), int):
        fields["log_channel"] = server_only["log_channel"]
    styles: dict[str, Any] = {}
    boards: dict[str, Any] = {}
    for kind, name, value in presets:
        try:
            if kind == "style":
                styles[name] = tuple(Style.model_validate(s) for s in value)
            else:
                boards[name] = Moodboard.model_validate(value)
        except (ValidationError, TypeError):
            log.warning("ignoring the unreadable preset %r", name)
    fields["style_presets"] = styles
    fields["moodboard_presets"] = boards
    return ServerConfig.model_validate(fields)


class ConfigStore:
    """Reads and writes servers' config and members' preferences; reads are cached, writes
    invalidate. Also keeps small bot-wide facts (``meta``)."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        self._cache: dict[int, ServerConfig] = {}
        self._prefs: dict[tuple[int, int], dict[str, Any]] = {}

    async def server(self, guild_id: int) -> ServerConfig:
        """The configuration of a server (cached)."""
        cached = self._cache.get(guild_id)
        if cached is not None:
            return cached
        rows = [
            (int(c), str(k), json.loads(v))
            for c, k, v in await self._db.fetchall(
                "SELECT channel_id, key, value FROM scope_settings WHERE guild_id = ?", (guild_id,)
            )
        ]
        presets = [
            (str(k), str(n), json.loads(v))
            for k, n, v in await self._db.fetchall(
                "SELECT kind, name, value FROM presets WHERE guild_id = ? ORDER BY name",
                (guild_id,),
            )
        ]
        config = _load(rows, presets)
        self._cache[guild_id] = config
        return config

    async def set(
        self, guild_id: int, channel_id: int, key: str, value: Any, *, by: int | None = None
    ) -> None:
        """Set one value for the server (``channel_id`` 0) or a channel."""
        await self._db.write(
            """INSERT INTO scope_settings (guild_id, channel_id, key, value, updated_by, updated_at)
               VALUES (?, ?, ?, ?, ?, ?)
               ON CONFLICT (guild_id, channel_id, key)
               DO UPDATE SET value = excluded.value, updated_by = excluded.updated_by,
                             updated_at = excluded.updated_at""",
            (guild_id, channel_id, key, json.dumps(value), by, self._clock()),
        )
        self._cache.pop(guild_id, None)

    async def clear(self, guild_id: int, channel_id: int, *keys: str) -> bool:
        """Remove values; True if there was one."""
        removed = 0
        async with self._db.transaction() as connection:
            for key in keys:
                cursor = await connection.execute(
                    "DELETE FROM scope_settings WHERE guild_id = ? AND channel_id = ? AND key = ?",
                    (guild_id, channel_id, key),
                )
                removed += cursor.rowcount
        self._cache.pop(guild_id, None)
        return removed > 0

    async def add_block(self, guild_id: int, entry: dict[str, str], *, by: int | None) -> None:
        """Add a blocklist entry (once)."""
        config = await self.server(guild_id)
        entries = [e for e in config.blocklist if e != entry] + [entry]
        await self.set(guild_id, SERVER, "blocklist", entries, by=by)

    async def remove_block(
        self, guild_id: int, matches: Callable[[dict[str, str]], bool], *, by: int | None
    ) -> bool:
        """Remove the blocklist entries ``matches`` picks; False when none did."""
        config = await self.server(guild_id)
        kept = [e for e in config.blocklist if not matches(e)]
        if len(kept) == len(config.blocklist):
            return False
        await self.set(guild_id, SERVER, "blocklist", kept, by=by)
        return True

    async def set_limits(
        self, guild_id: int, changes: dict[str, int], *, reset: bool, by: int | None
    ) -> None:
        """Override some fair-use numbers of a server (``reset``: back to the defaults)."""
        if reset:
            await self.clear(guild_id, SERVER, "limits")
            return
        if not changes:
            return
        current = (await self.server(guild_id)).limits.model_dump(exclude_none=True)
        await self.set(guild_id, SERVER, "limits", {**current, **changes}, by=by)

    async def add_preset(
        self, guild_id: int, kind: str, name: str, value: Any, *, by: int | None = None
    ) -> None:
        """Create or replace a named preset (``kind`` is ``style`` or ``moodboard``)."""
        await self._db.write(
            """INSERT INTO presets (guild_id, kind, name, value, created_by, created_at)
               VALUES (?, ?, ?, ?, ?, ?)
               ON CONFLICT (guild_id, kind, name) DO UPDATE SET value = excluded.value""",
            (guild_id, kind, name, json.dumps(value), by, self._clock()),
        )
        self._cache.pop(guild_id, None)

    async def remove_preset(self, guild_id: int, kind: str, name: str) -> bool:
        """Delete a preset; True if it existed."""
        cursor = await self._db.write(
            "DELETE FROM presets WHERE guild_id = ? AND kind = ? AND name = ?",
            (guild_id, kind, name),
        )
        self._cache.pop(guild_id, None)
        return cursor.rowcount > 0

    async def prefs(self, guild_id: int, user_id: int) -> dict[str, Any]:
        """A member's own defaults in a server."""
        key = (guild_id, user_id)
        if key in self._prefs:
            return self._prefs[key]
        prefs = {
            str(name): json.loads(value)
            for name, value in await self._db.fetchall(
                "SELECT key, value FROM member_prefs WHERE guild_id = ? AND user_id = ?", key
            )
        }
        if len(self._prefs) > 10_000:  # a bounded cache: members come and go
            self._prefs.clear()
        self._prefs[key] = prefs
        return prefs

    async def set_pref(self, guild_id: int, user_id: int, key: str, value: Any) -> None:
        """Set (or with ``None`` remove) one of a member's defaults."""
        if value is None:
            await self._db.write(
                "DELETE FROM member_prefs WHERE guild_id = ? AND user_id = ? AND key = ?",
                (guild_id, user_id, key),
            )
        else:
            await self._db.write(
                """INSERT INTO member_prefs (guild_id, user_id, key, value) VALUES (?, ?, ?, ?)
                   ON CONFLICT (guild_id, user_id, key) DO UPDATE SET value = excluded.value""",
                (guild_id, user_id, key, json.dumps(value)),
            )
        self._prefs.pop((guild_id, user_id), None)

    async def forget_server(self, guild_id: int) -> None:
        """Delete everything configured for a server (the bot was removed from it)."""
        async with self._db.transaction() as connection:
            for table in ("scope_settings", "presets", "member_prefs"):
                await connection.execute(f"DELETE FROM {table} WHERE guild_id = ?", (guild_id,))
        self._cache.pop(guild_id, None)
        self._prefs = {k: v for k, v in self._prefs.items() if k[0] != guild_id}

    async def log_channels(self) -> list[tuple[int, int]]:
        """(server, channel) of every server's admins' log channel."""
        rows = await self._db.fetchall(
            "SELECT guild_id, value FROM scope_settings WHERE channel_id = ? AND key = ?",
            (SERVER, "log_channel"),
        )
        found = []
        for guild_id, value in rows:
            channel_id = json.loads(value)
            if isinstance(channel_id, int):
                found.append((int(guild_id), channel_id))
        return found

    async def take_window(self, key: str, seconds: float) -> bool:
        """Take ``key`` for ``seconds``, unless it is already taken (by any process): True
        for the one caller that got it. (``ON CONFLICT … DO UPDATE … WHERE``: one statement,
        so two processes cannot both take it.)"""
        now = self._clock()
        written = await self._db.write(
            "INSERT INTO cooldowns (key, expires_at) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at "
            "WHERE cooldowns.expires_at <= ?",
            (key, now + seconds, now),
        )
        return written.rowcount == 1

    async def prune_windows(self) -> int:
        """Forget the windows that ended; returns how many."""
        written = await self._db.write(
            "DELETE FROM cooldowns WHERE expires_at <= ?", (self._clock(),)
        )
        return written.rowcount

    async def get_meta(self, key: str) -> str | None:
        """A bot-wide fact (e.g. the hash of the last synced command set)."""
        row = await self._db.fetchone("SELECT value FROM meta WHERE key = ?", (key,))
        return str(row[0]) if row else None

    async def set_meta(self, key: str, value: str) -> None:
        """Remember a bot-wide fact."""
        await self._db.write(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    async def meta_with_prefix(self, prefix: str) -> list[tuple[str, str]]:
        """Every bot-wide fact whose key starts with ``prefix``."""
        rows = await self._db.fetchall(
            "SELECT key, value FROM meta WHERE key LIKE ? || '%'", (prefix,)
        )
        return [(str(row[0]), str(row[1])) for row in rows]

    async def delete_meta(self, key: str) -> None:
        """Forget a bot-wide fact."""
        await self._db.write("DELETE FROM meta WHERE key = ?", (key,))
