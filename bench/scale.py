"""Scale: many jobs in flight in one bot process.

The fake gateway holds ``jobs`` jobs in manual mode (PROCESSING until told otherwise) and
enforces a rate limit; the bot's database holds the same jobs as SUBMITTED, each with its
progress message in the fake Discord, as if the bot had submitted them before a restart.
The bot then starts, resumes every job, and polls them under its shared rate limit. Over
``seconds`` of that: resident memory (peak included), event-loop lag, status requests per
second and the gateway's 429 answers (it counts every request against its limit).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench.harness import NO_CAPS, BotProc, Stage, open_stage, percentile
from bot.pixazo import TextToImageRequest
from bot.storage.db import open_database
from fake_pixazo.validation import validate_request

#: The gateway's rate limit in the benchmark, and the bot's STATUS_POLLS_PER_SECOND (default).
RATE = 10.0
CHANNELS = 10


def create_gateway_jobs(stage: Stage, count: int) -> list[str]:
    """Jobs the fake gateway already accepted (through its own job factory, not HTTP)."""
    ids = []
    for index in range(count):
        body = {"prompt": f"scale job {index}", "seed": index}
        job = stage.pixazo._create_job(body, validate_request(body), None)
        ids.append(job.request_id)
    return ids


async def seed_database(stage: Stage, request_ids: list[str]) -> None:
    """The bot's rows for those jobs: SUBMITTED, each with a progress message."""
    discord_fake = stage.discord
    channels = list(stage.guild.channels.values())
    now = time.time()
    rows = []
    for index, request_id in enumerate(request_ids):
        channel = channels[index % len(channels)]
        message = discord_fake._create_message(
            channel_id=channel.id,
            guild_id=stage.guild.id,
            author=discord_fake.bot_user,
            payload={"content": "⏳ Queued"},
            files=[],
            size_limit=stage.guild.filesize_limit,
            validate=False,
        )
        params = TextToImageRequest(prompt=f"scale job {index}", seed=index)
        rows.append(
            (
                stage.guild.id,
                channel.id,
                stage.guild.member.id,
                "submitted",
                params.model_dump_json(exclude_none=True),
                request_id,
                stage.pixazo.status_url(request_id),
                message.id,
                now,
                now,
                now,
            )
        )
    db = await open_database(stage.db_path)
    try:
        await db.write_many(
            """INSERT INTO jobs (guild_id, channel_id, user_id, state, params, request_id,
                   polling_url, message_id, created_at, submitted_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            rows,
        )
    finally:
        await db.close()


async def run_scale(
    workdir: Path, *, jobs: int, seconds: float, python: str, variant: str
) -> dict[str, Any]:
    """Resume ``jobs`` jobs and watch the bot for ``seconds``."""
    async with open_stage(
        "scale", workdir / "scale", channels=CHANNELS, manual=True, queued_seconds=0.0
    ) as stage:
        request_ids = create_gateway_jobs(stage, jobs)
        await seed_database(stage, request_ids)
        await asyncio.sleep(0.2)  # the fake's jobs move to PROCESSING
        stage.pixazo.rate_limit = RATE
        bot = await BotProc.start(
            stage,
            variant=variant,
            python=python,
            env={**NO_CAPS, "STATUS_POLLS_PER_SECOND": str(RATE)},
        )
        try:
            stats = await bot.wait_until(
                lambda s: "resume_done" in s["times"], 120.0, "jobs resumed"
            )
            resumed_at = stats["times"]["resume_done"]
            startup_peak = bot.memory()["hwm_kb"]
            await bot.reset()  # lag samples from here on (the memory peak is kept above)
            watch_from = time.monotonic()
            rss: list[int] = []
            while time.monotonic() - watch_from < seconds:
                await asyncio.sleep(1.0)
                rss.append(bot.memory()["rss_kb"])
            final = await bot.stats()
            peak = max(startup_peak, final["hwm_kb"])
            watch_to = time.monotonic()
        finally:
            await bot.kill()
        polls = [r.time for r in stage.pixazo.status_calls() if watch_from <= r.time <= watch_to]
        rejected = sum(1 for r in stage.pixazo.requests if r.status == 429)
        return {
            "jobs": jobs,
            "seconds": watch_to - watch_from,
            "tracked": final["running"],
            "resumed": final["resumed"],
            "resume_seconds": resumed_at - stats["times"]["resume_start"],
            "spawn_to_tracked": resumed_at - bot.spawned_at,
            "rss_mb": percentile(rss, 0.5) / 1024,
            "rss_peak_mb": peak / 1024,
            "lag_p50_ms": final["lag_ms"]["p50"],
            "lag_p99_ms": final["lag_ms"]["p99"],
            "lag_max_ms": final["lag_ms"]["max"],
            "lag_samples": final["lag_ms"]["count"],
            "polls_per_second": len(polls) / (watch_to - watch_from),
            "rate_limit": RATE,
            "rejected_429": rejected,
        }
