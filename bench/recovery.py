"""Recovery: kill -9 with many jobs in flight, restart, and account for every job.

``jobs`` /imagine commands are sent (in waves, as members would) to a bot whose gateway
keeps jobs PROCESSING. Once every job is at the gateway, a tenth of them are finished and
the bot is SIGKILLed as soon as it starts fetching their images (so some die mid-delivery).
A new process starts on the same database: the time from its spawn to every unfinished
job being tracked again is measured inside it (``JobRunner.resume``). Then every job is
finished, and each must end COMPLETED with its image in exactly one message.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path
from typing import Any

from bench.harness import NO_CAPS, BotProc, open_stage, read_db, states

ACTIVE = ("pending", "submitting", "submitted", "processing", "delivering")
IMAGE_NAME = re.compile(r"^krea-(\d+)-")
WAVE = 100


async def run_recovery(workdir: Path, *, jobs: int, python: str, variant: str) -> dict[str, Any]:
    """Kill the bot with ``jobs`` jobs in flight and check what the restarted one does."""
    members = max(1, jobs // 50)
    async with open_stage(
        "recovery", workdir / "recovery", members=members, manual=True, long_edge=64
    ) as stage:
        env = {
            **NO_CAPS,
            "MAX_CONCURRENT_JOBS": str(jobs + 10),
            "MEMBER_MAX_IN_FLIGHT": "100",
            "STATUS_POLLS_PER_SECOND": "100",
        }
        first = await BotProc.start(stage, variant=variant, python=python, env=env, tag="1")
        second: BotProc | None = None
        try:
            await first.wait_ready()
            for start in range(0, jobs, WAVE):
                wave = await asyncio.gather(
                    *(
                        stage.discord.slash(
                            "imagine",
                            {"prompt": f"recovery job {i}"},
                            user=stage.members[i % members],
                        )
                        for i in range(start, min(jobs, start + WAVE))
                    )
                )
                await stage.discord.wait_for(partial(answered, wave), 10.0)
            await stage.pixazo.wait_for(
                lambda: (
                    len(stage.pixazo.jobs) >= jobs
                    and all(r.status is not None for r in stage.pixazo.submits())
                ),
                timeout=120.0,
                what="every job at the gateway",
            )
            await wait_db(stage.db_path, lambda s: sum(s.get(a, 0) for a in ACTIVE[:2]) == 0)
            finished = list(stage.pixazo.jobs)[: max(1, jobs // 10)]
            for request_id in finished:
                stage.pixazo.finish(request_id)
            want = max(1, len(finished) // 4)
            await stage.pixazo.wait_for(
                lambda: len(stage.pixazo.media_calls()) >= want, timeout=60.0, what="downloads"
            )
            await first.kill()
            at_kill = states(stage.db_path)
            unfinished = sum(at_kill.get(state, 0) for state in ACTIVE)

            second = await BotProc.start(stage, variant=variant, python=python, env=env, tag="2")
            resumed = await second.wait_until(
                lambda s: "resume_done" in s["times"], 60.0, "jobs resumed"
            )
            await second.wait_ready()
            for request_id, job in list(stage.pixazo.jobs.items()):
                if not job.is_terminal:
                    stage.pixazo.finish(request_id)
            settled = await wait_db(
                stage.db_path,
                lambda s: sum(s.get(a, 0) for a in ACTIVE) == 0,
                timeout=240.0,
            )
        finally:
            await first.kill()
            if second is not None:
                await second.kill()

        holders: dict[int, set[int]] = defaultdict(set)
        for message in stage.discord.messages(include_deleted=False):
            for attachment in message.attachments:
                found = IMAGE_NAME.match(attachment.filename)
                if found:
                    holders[int(found.group(1))].add(message.id)
        uploads: Counter[int] = Counter()
        for record in stage.discord.requests:
            for upload in record.files:
                found = IMAGE_NAME.match(upload.filename)
                if found and 200 <= record.status < 300:
                    uploads[int(found.group(1))] += 1
        rows = read_db(stage.db_path, "SELECT id, state FROM jobs")
        times = resumed["times"]
        return {
            "jobs": jobs,
            "in_flight_at_kill": unfinished,
            "states_at_kill": at_kill,
            "resumed": resumed["resumed"],
            "spawn_to_tracked": times["resume_done"] - second.spawned_at,
            "setup_to_tracked": times["resume_done"] - times["setup_hook"],
            "resume_seconds": times["resume_done"] - times["resume_start"],
            "final_states": settled,
            "lost": sum(1 for _, state in rows if state != "completed"),
            "missing_image": sum(1 for job_id, _ in rows if not holders.get(job_id)),
            "duplicated": sum(1 for job_id, _ in rows if len(holders.get(job_id, ())) > 1),
            "uploaded_twice": sum(1 for count in uploads.values() if count > 1),
        }


def answered(handles: list[Any]) -> bool:
    """Whether every interaction got its initial response (or an error)."""
    return all(h.callbacks or h.errors for h in handles)


async def wait_db(path: Path, check: Any, timeout: float = 60.0) -> dict[str, int]:
    """Poll the job states until ``check(states)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        current = states(path)
        if check(current):
            return current
        if time.monotonic() > deadline:
            raise TimeoutError(f"job states still {current} after {timeout}s")
        await asyncio.sleep(0.25)
