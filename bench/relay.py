"""Image relay: the extra memory a delivery needs, against the image's size.

One bot; for each size, one /imagine whose (noisy, nearly incompressible) PNG of
``long_edge`` pixels waits ready at the gateway. With the bot idle, its memory peak is
reset (``/proc/self/clear_refs``), the job is finished, and once the result reached the
fake Discord the new peak minus the resident memory at the reset is the delivery's extra
memory. glibc is told to give large blocks back at once (``MALLOC_MMAP_THRESHOLD_``), so
what one delivery leaves behind does not hide the next one's peak. Images over the upload
limit (10 MiB) are re-encoded as JPEG by the bot before the upload.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Any

from bench.harness import NO_CAPS, BotProc, open_stage, result_request
from fake_pixazo.images import render_png

IDLE_SECONDS = 1.5


async def run_relay(
    workdir: Path, *, edges: list[int], python: str, variant: str
) -> list[dict[str, Any]]:
    """Deliver one image per long edge in ``edges`` and measure each."""
    results = []
    async with open_stage("relay", workdir / "relay", members=1, manual=True, noisy=True) as stage:
        bot = await BotProc.start(
            stage,
            variant=variant,
            python=python,
            env={**NO_CAPS, "MALLOC_MMAP_THRESHOLD_": "131072"},
        )
        try:
            await bot.wait_ready()
            for edge in edges:
                stage.pixazo.long_edge = edge
                before = len(stage.pixazo.jobs)
                handle = await stage.discord.slash(
                    "imagine", {"prompt": f"relay {edge}"}, user=stage.members[0]
                )
                await stage.pixazo.wait_for(
                    partial(more_than, stage.pixazo.jobs, before), timeout=30.0, what="the submit"
                )
                job = list(stage.pixazo.jobs.values())[-1]
                job.png = await asyncio.to_thread(
                    render_png, job.params, long_edge=edge, noisy=True
                )
                await asyncio.sleep(IDLE_SECONDS)
                start = await bot.reset()
                stage.pixazo.finish(job.request_id)
                await stage.discord.wait_for(
                    partial(result_request, handle), 60.0, what="the result"
                )
                await asyncio.sleep(0.3)
                after = await bot.stats()
                delivered = result_request(handle)
                media = stage.pixazo.media_calls(job.request_id)
                size = len(job.png)
                extra = (after["hwm_kb"] - start["rss_kb"]) * 1024
                results.append(
                    {
                        "long_edge": edge,
                        "image_bytes": size,
                        "uploaded_bytes": sum(len(f.data) for f in delivered.files),
                        "extra_bytes": extra,
                        "ratio": extra / size,
                        "transfer_seconds": delivered.time - media[0].time if media else None,
                        "rss_mb": start["rss_kb"] / 1024,
                    }
                )
        finally:
            await bot.kill()
    return results


def more_than(jobs: dict[str, Any], count: int) -> bool:
    """Whether the gateway holds more than ``count`` jobs."""
    return len(jobs) > count
