"""Discord's REST rate limits, as the fake enforces them on bot-token routes.

Source: https://discord.com/developers/docs/topics/rate-limits (header format, 429 body,
global limit) and DISCORD_FACTS.md ("Rate limits"). Modelled:
- per-route buckets for message create and message edit, one per channel (the top-level
  resource of those routes), `limit` requests per `per` seconds in a fixed window;
- the global limit: `global_per_second` requests per second per bot token, for every route
  that uses the bot token. Interaction routes (callback, and the webhook routes that use the
  interaction token) are not bound by it ("Interaction endpoints are not bound to the bot's
  Global Rate Limit").

Every answer of a bucketed route carries `X-RateLimit-Limit`, `-Remaining`, `-Reset`,
`-Reset-After` and `-Bucket`, so discord.py paces itself as it does on the real Discord; a 429
adds `X-RateLimit-Scope`, `Retry-After`, a JSON `retry_after`/`global`, and `Via` (discord.py
takes a 429 without `Via` for a Cloudflare ban and does not retry it).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tests.fake_discord.models import JSON

# Routes with a per-resource bucket: (method, route template) -> (bucket name, major parameter).
BUCKETED_ROUTES: dict[tuple[str, str], tuple[str, str]] = {
    ("POST", "/channels/{channel_id}/messages"): ("message_create", "channel_id"),
    ("PATCH", "/channels/{channel_id}/messages/{message_id}"): ("message_edit", "channel_id"),
}


@dataclass
class RateLimits:
    """The limits `FakeDiscord(rate_limits=...)` enforces.

    Args:
        message_create: (requests, seconds) per channel for POST /channels/{id}/messages.
        message_edit: (requests, seconds) per channel for PATCH /channels/{id}/messages/{id}.
        global_per_second: requests per second per bot token on bot-token routes.
        enabled: False turns every real limit off (scripted `rate_limit_next` still works).
    """

    message_create: tuple[int, float] = (5, 5.0)
    message_edit: tuple[int, float] = (5, 5.0)
    global_per_second: int = 50
    enabled: bool = True

    def bucket_limits(self, name: str) -> tuple[int, float]:
        """(limit, window seconds) of the bucket called `name`."""
        limits: tuple[int, float] = getattr(self, name)
        return limits


@dataclass
class _Window:
    """A fixed window: `limit` hits per `per` seconds from the first hit."""

    limit: int
    per: float
    count: int = 0
    reset_at: float = 0.0

    def hit(self, now: float) -> bool:
        if now >= self.reset_at:
            self.count, self.reset_at = 0, now + self.per
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def remaining(self) -> int:
        return max(self.limit - self.count, 0)

    def reset_after(self, now: float) -> float:
        return max(self.reset_at - now, 0.0)


@dataclass
class RateLimitHit:
    """One request the fake answered with a (real, not scripted) 429."""

    method: str
    path: str
    scope: str  # "user" (a route bucket) or "global"
    bucket: str | None
    retry_after: float
    time: float


@dataclass
class Decision:
    """What the limiter says about one request: allowed or not, and the headers to send."""

    allowed: bool
    headers: dict[str, str] = field(default_factory=dict)
    body: JSON | None = None
    hit: RateLimitHit | None = None


def _bucket_hash(name: str) -> str:
    return hashlib.md5(f"fake-discord:{name}".encode()).hexdigest()


class RateLimiter:
    """Counts requests per bucket and per token on the fake's clock."""

    def __init__(
        self, limits: RateLimits, clock: Callable[[], float], wall: Callable[[], float]
    ) -> None:
        self.limits = limits
        self._clock = clock
        self._wall = wall
        self._buckets: dict[tuple[str, str], _Window] = {}
        self._global: dict[str, _Window] = {}

    def admit(
        self,
        method: str,
        template: str,
        path: str,
        params: Mapping[str, str],
        authorization: str | None,
        *,
        bot_route: bool,
    ) -> Decision:
        """Count one request; a refused one gets its 429 body and headers."""
        if not self.limits.enabled or not bot_route or not authorization:
            return Decision(True)
        now = self._clock()
        window = self._global.setdefault(authorization, _Window(self.limits.global_per_second, 1))
        window.limit = self.limits.global_per_second  # may be changed while running
        if not window.hit(now):
            retry_after = round(max(window.reset_after(now), 0.001), 3)
            return Decision(
                False,
                {
                    "Retry-After": str(math.ceil(retry_after)),
                    "X-RateLimit-Global": "true",
                    "X-RateLimit-Scope": "global",
                    "Via": "1.1 google",
                },
                {
                    "message": "You are being rate limited.",
                    "retry_after": retry_after,
                    "global": True,
                },
                RateLimitHit(method, path, "global", None, retry_after, now),
            )
        route = BUCKETED_ROUTES.get((method, template))
        if route is None:
            return Decision(True)
        name, major = route
        limit, per = self.limits.bucket_limits(name)
        bucket = self._buckets.setdefault((name, params.get(major, "")), _Window(limit, per))
        allowed = bucket.hit(now)
        reset_after = round(bucket.reset_after(now), 3)
        headers = {
            "X-RateLimit-Limit": str(bucket.limit),
            "X-RateLimit-Remaining": str(bucket.remaining()),
            "X-RateLimit-Reset": f"{self._wall() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": _bucket_hash(name),
        }
        if allowed:
            return Decision(True, headers)
        retry_after = max(reset_after, 0.001)
        headers.update(
            {
                "Retry-After": str(math.ceil(retry_after)),
                "X-RateLimit-Scope": "user",
                "Via": "1.1 google",
            }
        )
        body = {
            "message": "You are being rate limited.",
            "retry_after": retry_after,
            "global": False,
        }
        return Decision(
            False, headers, body, RateLimitHit(method, path, "user", name, retry_after, now)
        )
