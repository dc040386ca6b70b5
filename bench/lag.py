"""Delivery lag and gateway traffic: the documented 5 s polling, kreabot's polling, webhooks.

Three bots run at once, each on its own pair of fakes, and receive the same job set at the
same moments (one member per job). Every fake gateway gives a job the same timing, found
by the tag in its prompt. For each job, measured on the fakes' shared monotonic clock:

* lag: from the gateway marking it COMPLETED to the bot starting to fetch the image (the
  first media GET): what polling or a webhook costs, without the image transfer;
* relay: from that GET to the result message reaching the fake Discord (download,
  re-encode if needed, upload): the transfer, reported separately;
* status requests, and all gateway requests (submit + status + media) per image.

The figures are medians over ``windows`` consecutive groups of jobs of the one stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import (
    NO_CAPS,
    WEBHOOK_SECRET,
    BotProc,
    Stage,
    free_port,
    median,
    open_stage,
    percentile,
    result_request,
)
from bench.workload import JobSpec

BASELINE = "baseline"
POLLING = "polling"
WEBHOOK = "webhook"
MODES = (BASELINE, POLLING, WEBHOOK)
MODE_TITLES = {
    BASELINE: "baseline: documented workflow, poll every 5 s",
    POLLING: "kreabot, polling (learned schedule)",
    WEBHOOK: "kreabot, webhooks",
}
TAG = re.compile(r"\[job \d+\]")


def mode_env(mode: str) -> dict[str, str]:
    """The settings of each mode (on top of the common ones)."""
    if mode == BASELINE:
        return {
            "POLL_ADAPTIVE": "false",
            "POLL_FIRST_SECONDS": "5",
            "POLL_INTERVAL_SECONDS": "5",
            "POLL_MAX_INTERVAL_SECONDS": "5",
        }
    if mode == WEBHOOK:
        port = free_port()
        return {
            "HTTP_PORT": str(port),
            "WEBHOOK_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
    return {}


@dataclass
class JobFigures:
    """What one job cost in one mode (NaN where it never got that far)."""

    index: int
    duration: float
    lag: float
    total: float
    relay: float
    polls: int
    requests: int


@dataclass
class ModeResult:
    """Every job of one mode."""

    mode: str
    jobs: list[JobFigures] = field(default_factory=list)
    undelivered: int = 0
    plan: str | None = None
    rate_limited: int = 0

    def window_stats(self, windows: int) -> list[dict[str, float]]:
        size = max(1, math.ceil(len(self.jobs) / windows))
        groups = [self.jobs[i : i + size] for i in range(0, len(self.jobs), size)]
        return [self._stats(group) for group in groups if group]

    @staticmethod
    def _stats(jobs: list[JobFigures]) -> dict[str, float]:
        done = [j for j in jobs if not math.isnan(j.lag)]
        return {
            "lag_p50": percentile([j.lag for j in done], 0.5),
            "lag_p95": percentile([j.lag for j in done], 0.95),
            "total_p50": percentile([j.total for j in done], 0.5),
            "total_p95": percentile([j.total for j in done], 0.95),
            "relay_p50": percentile([j.relay for j in done], 0.5),
            "polls": sum(j.polls for j in jobs) / len(jobs),
            "requests": sum(j.requests for j in done) / max(1, len(done)),
        }

    def summary(self, windows: int) -> dict[str, Any]:
        per_window = self.window_stats(windows)
        out: dict[str, Any] = {key: median([w[key] for w in per_window]) for key in per_window[0]}
        pooled = self._stats(self.jobs)
        out["pooled"] = pooled
        out["windows"] = per_window
        out["undelivered"] = self.undelivered
        out["jobs"] = len(self.jobs)
        out["rate_limited"] = self.rate_limited
        return out


@dataclass
class LagResult:
    """The three modes on one job set."""

    jobs: list[JobSpec]
    windows: int
    modes: dict[str, ModeResult] = field(default_factory=dict)
    seconds: float = 0.0


def collect(mode: str, stage: Stage, specs: list[JobSpec], handles: dict[int, Any]) -> ModeResult:
    """Per-job figures of one mode from what its fakes recorded."""
    result = ModeResult(mode)
    by_tag = {}
    for job in stage.pixazo.jobs.values():
        found = TAG.search(job.prompt)
        if found:
            by_tag[found.group(0)] = job
    counts: Counter[tuple[str, str | None]] = Counter()
    first_media: dict[str, float] = {}
    for record in stage.pixazo.requests:
        counts[(record.kind, record.request_id)] += 1
        if record.status == 429:
            result.rate_limited += 1
        if record.kind == "media" and record.request_id not in first_media:
            first_media[record.request_id or ""] = record.time
    for spec in specs:
        gateway_job = by_tag.get(spec.tag)
        handle = handles.get(spec.index)
        delivered = result_request(handle) if handle is not None else None
        if gateway_job is None or delivered is None or gateway_job.terminal_at is None:
            result.undelivered += 1
            polls = counts[("status", gateway_job.request_id)] if gateway_job else 0
            nan = math.nan
            result.jobs.append(JobFigures(spec.index, spec.duration, nan, nan, nan, polls, 0))
            continue
        rid = gateway_job.request_id
        media_at = first_media.get(rid, delivered.time)
        polls = counts[("status", rid)]
        result.jobs.append(
            JobFigures(
                spec.index,
                spec.duration,
                lag=media_at - gateway_job.terminal_at,
                total=delivered.time - gateway_job.terminal_at,
                relay=delivered.time - media_at,
                polls=polls,
                requests=counts[("submit", rid)] + polls + counts[("media", rid)],
            )
        )
    return result


def last_plan(log: str) -> str | None:
    """The last poll plan the planner logged."""
    lines = [line for line in log.splitlines() if "poll plan from" in line]
    if not lines:
        return None
    return lines[-1].split("poll plan from", 1)[1].strip()


async def run_lag(
    workdir: Path,
    specs: list[JobSpec],
    *,
    windows: int,
    python: str,
    variant: str,
    modes: tuple[str, ...] = MODES,
) -> LagResult:
    """Run the job set through every mode at once."""
    result = LagResult(specs, windows)
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        stages: dict[str, Stage] = {}
        bots: dict[str, BotProc] = {}
        for mode in modes:
            stage = await stack.enter_async_context(
                open_stage(f"lag-{mode}", workdir / f"lag-{mode}", members=len(specs))
            )
            for spec in specs:
                stage.pixazo.outcome_for(
                    contains=spec.tag,
                    status="COMPLETED",
                    queued_seconds=spec.queued,
                    processing_seconds=spec.processing,
                )
            stages[mode] = stage
        try:
            for mode in modes:
                env = {**NO_CAPS, "MAX_CONCURRENT_JOBS": "40", **mode_env(mode)}
                bots[mode] = await BotProc.start(
                    stages[mode], variant=variant, python=python, env=env
                )
            await asyncio.gather(*(bot.wait_ready() for bot in bots.values()))
            handles = await drive(stages, specs)
            last = max(s.arrival for s in specs) + max(s.duration for s in specs)
            await wait_delivered(stages, handles, timeout=last + 60.0)
            for mode in modes:
                result.modes[mode] = collect(mode, stages[mode], specs, handles[mode])
                result.modes[mode].plan = last_plan(bots[mode].log(tail=10**7))
        finally:
            for bot in bots.values():
                await bot.kill()
    result.seconds = time.monotonic() - started
    return result


async def drive(stages: dict[str, Stage], specs: list[JobSpec]) -> dict[str, dict[int, Any]]:
    """Dispatch each job's /imagine to every mode at its arrival time."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.5
    tasks: dict[str, dict[int, asyncio.Task[Any]]] = {mode: {} for mode in stages}
    for spec in specs:
        await asyncio.sleep(max(0.0, start + spec.arrival - loop.time()))
        for mode, stage in stages.items():
            member = stage.members[spec.index]
            tasks[mode][spec.index] = asyncio.create_task(
                stage.discord.slash("imagine", {"prompt": spec.prompt}, user=member)
            )
    return {
        mode: {index: await task for index, task in by_index.items()}
        for mode, by_index in tasks.items()
    }


async def wait_delivered(
    stages: dict[str, Stage], handles: dict[str, dict[int, Any]], timeout: float
) -> None:
    """Until every job's image reached the fake Discord (or ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(result_request(h) is not None for by in handles.values() for h in by.values()):
            return
        await asyncio.sleep(0.5)
