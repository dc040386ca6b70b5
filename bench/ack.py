"""Acknowledgement latency of /imagine under a burst, against a bot that only defers.

Each round starts a fresh bot process on fresh fakes, waits until its guild is cached and
start-up work has settled, then dispatches ``burst`` /imagine commands at once (one per
member) and measures, at the fake Discord, the time from each dispatch to the bot's
deferral. The floor bot and kreabot alternate, round after round, so drift in the
machine's load hits both alike. A third bot, kreabot whose /imagine stops right after
deferring, tells the cost of what comes before the acknowledgement from the cost of the
work that follows it (which competes with the acknowledgements of later commands).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import NO_CAPS, BotProc, median, open_stage, percentile

SETTLE_SECONDS = 2.5
FLOOR, KREABOT, DEFER_ONLY = "floor", "kreabot", "kreabot-defer-only"
KINDS = (FLOOR, KREABOT, DEFER_ONLY)
ACK_TIMEOUT = 10.0


@dataclass
class AckRound:
    """One burst against one bot."""

    kind: str
    variant: str
    latencies: list[float]
    missed: int  # commands that got no acknowledgement (or got 10062)

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 0.99)


@dataclass
class AckResult:
    """Every round, by bot and variant."""

    burst: int
    rounds: list[AckRound] = field(default_factory=list)

    def of(self, kind: str, variant: str) -> list[AckRound]:
        return [r for r in self.rounds if r.kind == kind and r.variant == variant]

    def summary(self, kind: str, variant: str) -> dict[str, Any]:
        rounds = self.of(kind, variant)
        return {
            "p50": median([r.p50 for r in rounds]),
            "p99": median([r.p99 for r in rounds]),
            "max": max((max(r.latencies, default=0.0) for r in rounds), default=0.0),
            "missed": sum(r.missed for r in rounds),
            "rounds": len(rounds),
            "p99_each": [round(r.p99, 4) for r in rounds],
        }


async def burst_round(
    kind: str, variant: str, burst: int, workdir: Path, python: str, index: int
) -> AckRound:
    """Start a bot, send ``burst`` commands at once, measure, kill it."""
    name = f"ack-{kind}-{variant}-{index}"
    async with open_stage(name, workdir / name, members=burst, manual=True) as stage:
        bot = await BotProc.start(
            stage,
            mode=kind,
            variant=variant,
            python=python,
            env={**NO_CAPS, "LOG_LEVEL": "INFO"},
        )
        try:
            await bot.wait_ready()
            await asyncio.sleep(SETTLE_SECONDS)
            handles = await asyncio.gather(
                *(
                    stage.discord.slash(
                        "imagine", {"prompt": f"a lighthouse at dusk, take {i}"}, user=member
                    )
                    for i, member in enumerate(stage.members)
                )
            )
            await stage.discord.wait_for(
                lambda: all(h.callbacks or h.errors for h in handles),
                ACK_TIMEOUT,
                what="every acknowledgement",
            )
            latencies = [h.callbacks[0].time - h.created_at for h in handles if h.callbacks]
            return AckRound(kind, variant, latencies, burst - len(latencies))
        finally:
            await bot.kill()


async def run_ack(
    workdir: Path, *, burst: int, rounds: int, variants: list[str], python: str
) -> AckResult:
    """Alternate the bots for ``rounds`` rounds in each variant (the diagnosis in the first)."""
    result = AckResult(burst)
    for variant in variants:
        for index in range(rounds):
            order = list(KINDS if index % 2 == 0 else reversed(KINDS))
            if variant != variants[0]:
                order.remove(DEFER_ONLY)
            for kind in order:
                result.rounds.append(
                    await burst_round(kind, variant, burst, workdir, python, index)
                )
    return result
