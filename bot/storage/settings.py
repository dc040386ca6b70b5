"""Server/channel defaults, presets and member preferences, read through a cache."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

SERVER = 0  # channel_id of server-wide settings


@dataclass
class GuildConfig:
    """Everything configured for one server: server values, channel overrides, presets."""

    server: dict[str, Any] = field(default_factory=dict)
    channels: dict[int, dict[str, Any]] = field(default_factory=dict)
    style_presets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    moodboard_presets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def channel(self, channel_id: int | None) -> dict[str, Any]:
        """The overrides of one channel (empty when none)."""
        return self.channels.get(channel_id or -1, {})


class SettingsRepository:
    """Reads and writes per-server configuration; reads are cached, writes invalidate."""

    def __init__(self, db: aiosqlite.Connection, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        self._cache: dict[int, GuildConfig] = {}
        self._prefs: dict[tuple[int, int], dict[str, Any]] = {}

    async def guild(self, guild_id: int) -> GuildConfig:
        """The configuration of a server (cached)."""
        cached = self._cache.get(guild_id)
        if cached is not None:
            return cached
        config = GuildConfig()
        async with self._db.execute(
            "SELECT channel_id, key, value FROM scope_settings WHERE guild_id = ?", (guild_id,)
        ) as cursor:
            async for channel_id, key, value in cursor:
                target = (
                    config.server
                    if channel_id == SERVER
                    else config.channels.setdefault(channel_id, {})
                )
                target[key] = json.loads(value)
        async with self._db.execute(
            "SELECT kind, name, value FROM presets WHERE guild_id = ? ORDER BY name", (guild_id,)
        ) as cursor:
            async for kind, name, value in cursor:
                if kind == "style":
                    config.style_presets[name] = json.loads(value)
                else:
                    config.moodboard_presets[name] = json.loads(value)
        self._cache[guild_id] = config
        return config

    async def set(
        self, guild_id: int, channel_id: int, key: str, value: Any, *, by: int | None = None
    ) -> None:
        """Set one value for the server (``channel_id`` 0) or a channel."""
        await self._db.execute(
            """INSERT INTO scope_settings (guild_id, channel_id, key, value, updated_by, updated_at)
               VALUES (?, ?, ?, ?, ?, ?)
               ON CONFLICT (guild_id, channel_id, key)
               DO UPDATE SET value = excluded.value, updated_by = excluded.updated_by,
                             updated_at = excluded.updated_at""",
            (guild_id, channel_id, key, json.dumps(value), by, self._clock()),
        )
        await self._db.commit()
        self._cache.pop(guild_id, None)

    async def clear(self, guild_id: int, channel_id: int, key: str) -> bool:
        """Remove one value; True if there was one."""
        cursor = await self._db.execute(
            "DELETE FROM scope_settings WHERE guild_id = ? AND channel_id = ? AND key = ?",
            (guild_id, channel_id, key),
        )
        await self._db.commit()
        self._cache.pop(guild_id, None)
        return cursor.rowcount > 0

    async def add_preset(
        self, guild_id: int, kind: str, name: str, value: Any, *, by: int | None = None
    ) -> None:
        """Create or replace a named preset."""
        await self._db.execute(
            """INSERT INTO presets (guild_id, kind, name, value, created_by, created_at)
               VALUES (?, ?, ?, ?, ?, ?)
               ON CONFLICT (guild_id, kind, name) DO UPDATE SET value = excluded.value""",
            (guild_id, kind, name, json.dumps(value), by, self._clock()),
        )
        await self._db.commit()
        self._cache.pop(guild_id, None)

    async def remove_preset(self, guild_id: int, kind: str, name: str) -> bool:
        """Delete a preset; True if it existed."""
        cursor = await self._db.execute(
            "DELETE FROM presets WHERE guild_id = ? AND kind = ? AND name = ?",
            (guild_id, kind, name),
        )
        await self._db.commit()
        self._cache.pop(guild_id, None)
        return cursor.rowcount > 0

    async def prefs(self, guild_id: int, user_id: int) -> dict[str, Any]:
        """A member's own defaults in a server."""
        key = (guild_id, user_id)
        if key in self._prefs:
            return self._prefs[key]
        prefs: dict[str, Any] = {}
        async with self._db.execute(
            "SELECT key, value FROM member_prefs WHERE guild_id = ? AND user_id = ?", key
        ) as cursor:
            async for name, value in cursor:
                prefs[name] = json.loads(value)
        self._prefs[key] = prefs
        return prefs

    async def set_pref(self, guild_id: int, user_id: int, key: str, value: Any) -> None:
        """Set (or with ``None`` remove) one of a member's defaults."""
        if value is None:
            await self._db.execute(
                "DELETE FROM member_prefs WHERE guild_id = ? AND user_id = ? AND key = ?",
                (guild_id, user_id, key),
            )
        else:
            await self._db.execute(
                """INSERT INTO member_prefs (guild_id, user_id, key, value) VALUES (?, ?, ?, ?)
                   ON CONFLICT (guild_id, user_id, key) DO UPDATE SET value = excluded.value""",
                (guild_id, user_id, key, json.dumps(value)),
            )
        await self._db.commit()
        self._prefs.pop((guild_id, user_id), None)

    async def forget_guild(self, guild_id: int) -> None:
        """Delete everything configured for a server (the bot was removed from it)."""
        for table in ("scope_settings", "presets", "member_prefs"):
            await self._db.execute(f"DELETE FROM {table} WHERE guild_id = ?", (guild_id,))
        await self._db.commit()
        self._cache.pop(guild_id, None)
        self._prefs = {k: v for k, v in self._prefs.items() if k[0] != guild_id}

    async def server_values(self, key: str) -> list[tuple[int, Any]]:
        """Every server's value of one server-wide setting (e.g. the log channels)."""
        async with self._db.execute(
            "SELECT guild_id, value FROM scope_settings WHERE channel_id = ? AND key = ?",
            (SERVER, key),
        ) as cursor:
            rows = await cursor.fetchall()
        return [(int(row[0]), json.loads(row[1])) for row in rows]

    async def get_meta(self, key: str) -> str | None:
        """A bot-wide fact (e.g. the hash of the last synced command set)."""
        async with self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cursor:
            row = await cursor.fetchone()
        return str(row[0]) if row else None

    async def set_meta(self, key: str, value: str) -> None:
        """Remember a bot-wide fact."""
        await self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
        await self._db.commit()

    async def meta_with_prefix(self, prefix: str) -> list[tuple[str, str]]:
        """Every bot-wide fact whose key starts with ``prefix``."""
        async with self._db.execute(
            "SELECT key, value FROM meta WHERE key LIKE ? || '%'", (prefix,)
        ) as cursor:
            rows = await cursor.fetchall()
        return [(str(row[0]), str(row[1])) for row in rows]

    async def delete_meta(self, key: str) -> None:
        """Forget a bot-wide fact."""
        await self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
        await self._db.commit()
