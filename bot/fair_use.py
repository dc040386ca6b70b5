"""Fair use: who may ask for how many images, and which prompts a server refuses.

One service, one decision: :meth:`FairUse.decide` checks the blocklist and the batch limit
at once and hands back the daily caps as a :class:`Decision` that the job store applies
while it inserts the jobs (counting and inserting are one step). The in-flight limit per
member is read by the runner through :meth:`FairUse.member_in_flight`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.errors import UserError
from bot.moderation import blocked_entry
from bot.settings import Settings
from bot.storage.config import ConfigStore, LimitOverrides, ServerConfig

#: The largest batch (``/imagine count``) a server can allow; also the default.
MAX_BATCH = 4
#: Seconds in a UTC day: daily caps reset at midnight UTC.
DAY = 86_400
REQUESTER_ONLY = "On this server only the member who asked for an image can make new ones from it."


@dataclass(frozen=True)
class Limits:
    """The fair-use numbers in effect in one server (0 = no daily limit)."""

    member_in_flight: int
    member_daily: int
    server_daily: int


@dataclass(frozen=True)
class Decision:
    """The part of a fair-use decision that needs the day's counts: check them with
    :meth:`admit` inside the transaction that inserts the jobs."""

    limits: Limits
    count: int
    since: float

    def admit(self, member_used: int, server_used: int) -> None:
        """Raise :class:`UserError` when ``count`` more images would pass a daily cap."""
        reset = f"<t:{int(self.since + DAY)}:R>"
        member_cap, server_cap = self.limits.member_daily, self.limits.server_daily
        if member_cap and member_used + self.count > member_cap:
            raise UserError(
                f"you have used {member_used} of your {member_cap} images for today; "
                f"the count resets {reset}"
            )
        if server_cap and server_used + self.count > server_cap:
            raise UserError(
                f"this server has used {server_used} of its {server_cap} images for today; "
                f"the count resets {reset}"
            )


class FairUse:
    """Caps, in-flight limits, batch limits, the press rule and the blocklist of servers."""

    def __init__(
        self, settings: Settings, config: ConfigStore, clock: Callable[[], float] = time.time
    ) -> None:
        self._settings = settings
        self._config = config
        self._clock = clock

    async def limits(self, guild_id: int | None) -> Limits:
        """The limits in a server: its overrides, else the environment's."""
        overrides = (
            (await self._config.server(guild_id)).limits
            if guild_id is not None
            else LimitOverrides()
        )

        def pick(value: int | None, default: int) -> int:
            return value if value is not None else default

        return Limits(
            member_in_flight=pick(overrides.member_in_flight, self._settings.MEMBER_MAX_IN_FLIGHT),
            member_daily=pick(overrides.member_daily, self._settings.MEMBER_DAILY_IMAGES),
            server_daily=pick(overrides.server_daily, self._settings.SERVER_DAILY_IMAGES),
        )

    async def member_in_flight(self, guild_id: int | None) -> int:
        """How many jobs of one member of ``guild_id`` may be at the gateway at once."""
        return (await self.limits(guild_id)).member_in_flight

    @staticmethod
    def batch_limit(config: ServerConfig | None, channel_id: int | None) -> int:
        """The largest batch allowed in a channel (its setting, the server's, else 4)."""
        value = config.value("count_max", channel_id) if config else None
        return int(value) if value else MAX_BATCH

    @staticmethod
    def may_press(
        config: ServerConfig | None, owner_id: int, user_id: int, channel_id: int | None
    ) -> bool:
        """Whether ``user_id`` may make new images from a result of ``owner_id``."""
        if user_id == owner_id or config is None:
            return True
        return config.value("press_policy", channel_id) != "requester"

    async def decide(
        self,
        guild_id: int | None,
        channel_id: int | None,
        prompt: str,
        count: int = 1,
        *,
        batch: bool = False,
    ) -> Decision:
        """Refuse (:class:`UserError`) a batch over the channel's limit or a prompt the
        server's blocklist forbids; else the daily caps to check while inserting."""
        config = await self._config.server(guild_id) if guild_id is not None else None
        if batch:
            allowed = self.batch_limit(config, channel_id)
            if count > allowed:
                raise UserError(
                    f"this server allows at most {allowed} image(s) per command, not {count}"
                )
        if config is not None and blocked_entry(prompt, list(config.blocklist)) is not None:
            raise UserError("your prompt contains a word or phrase this server does not allow")
        limits = await self.limits(guild_id)
        since = self._clock() // DAY * DAY
        return Decision(limits, count, since)
