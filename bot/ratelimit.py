"""A small async token bucket shared by everything that polls the gateway."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """Allows ``rate`` acquisitions per second on average, with bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._tokens = self.burst
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()
        self._paused_until = 0.0

    def set_rate(self, rate: float) -> None:
        """Change the rate (and a burst that followed it); tokens already saved are kept."""
        if self.burst == max(1.0, self.rate):
            self.burst = max(1.0, rate)
            self._tokens = min(self._tokens, self.burst)
        self.rate = rate

    def pause(self, seconds: float) -> None:
        """Hold every acquisition for ``seconds`` (e.g. after a 429 with Retry-After)."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def wait_unpaused(self) -> None:
        """Wait out a pause without taking a token (for calls that are not polls)."""
        delay = self._paused_until - time.monotonic()
        while delay > 0:
            await asyncio.sleep(delay)
            delay = self._paused_until - time.monotonic()

    async def acquire(self) -> None:
        """Wait until a token is available and take it."""
        async with self._lock:
            while True:
                now = time.monotonic()
                if now < self._paused_until:
                    await asyncio.sleep(self._paused_until - now)
                    continue
                self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.rate)
