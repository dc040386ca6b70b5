"""A bot process for the benchmark, with a small control endpoint beside it.

``python -m bench.botproc`` runs, depending on ``BENCH_MODE``:

* ``kreabot``: the real bot through ``bot.__main__.run`` (production start-up, nothing
  injected), its settings read from the environment;
* ``floor``: a minimal discord.py bot whose ``/imagine`` only defers: the floor that
  discord.py itself sets for the acknowledgement latency;
* ``kreabot-defer-only``: kreabot whose ``/imagine`` stops right after its deferral (a
  diagnosis: the cost of everything before the acknowledgement, alone).

discord.py is pointed at the fake Discord named by ``FAKE_DISCORD_API`` and
``FAKE_DISCORD_GATEWAY``. ``BENCH_LOOP=uvloop`` runs the bot on uvloop;
``BENCH_JSON=stdlib`` hides orjson from discord.py (which uses it whenever it is importable).

The control endpoint (its port is written to ``BENCH_CONTROL_FILE``) serves:

* ``GET /stats``: resident memory (``VmRSS``) and its peak (``VmHWM``) from ``/proc``,
  event-loop lag percentiles since the last reset (a probe task sleeping 50 ms and
  measuring how late it wakes), whether the guilds are cached, and for kreabot how many
  jobs the runner tracks and when ``JobRunner.resume`` started and finished (monotonic
  clock, comparable with the benchmark's own);
* ``POST /reset``: forget the lag samples and reset the peak (``/proc/self/clear_refs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

PROBE_PERIOD = 0.05


class Probe:
    """Measures how late the event loop runs a task that sleeps ``PROBE_PERIOD``."""

    def __init__(self) -> None:
        self.lags: deque[float] = deque(maxlen=200_000)

    async def run(self) -> None:
        """Sample forever."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(PROBE_PERIOD)
            self.lags.append(max(0.0, loop.time() - start - PROBE_PERIOD))

    def summary(self) -> dict[str, float]:
        """Percentiles in milliseconds."""
        values = sorted(self.lags)
        if not values:
            return {"count": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}

        def pick(q: float) -> float:
            return values[min(len(values) - 1, int(q * len(values)))] * 1000

        return {"count": len(values), "p50": pick(0.5), "p99": pick(0.99), "max": values[-1] * 1000}


def memory_kb(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB."""
    found = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return {"rss_kb": found.get("VmRSS", 0), "hwm_kb": found.get("VmHWM", 0)}


class Control:
    """What the control endpoint reports."""

    def __init__(self) -> None:
        self.probe = Probe()
        self.client: Any = None
        self.runner: Any = None
        self.times: dict[str, float] = {"process_start": time.monotonic()}
        self.resumed = 0

    def stats(self) -> dict[str, Any]:
        """The current figures."""
        client = self.client
        guilds_ready = bool(
            client is not None
            and client.ws is not None
            and client.guilds
            and all(g.me is not None and not g.unavailable for g in client.guilds)
        )
        return {
            "pid": os.getpid(),
            **memory_kb(),
            "lag_ms": self.probe.summary(),
            "guilds_ready": guilds_ready,
            "running": self.runner.running() if self.runner is not None else None,
            "resumed": self.resumed,
            "times": self.times,
            "tasks": len(asyncio.all_tasks()),
        }

    def reset(self) -> dict[str, Any]:
        """Forget the lag samples and the memory peak."""
        self.probe.lags.clear()
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return memory_kb()

    async def serve(self, port_file: Path) -> None:
        """Serve /stats and /reset on loopback; write the port to ``port_file``."""
        from aiohttp import web

        async def stats(request: web.Request) -> web.Response:
            return web.json_response(self.stats())

        async def reset(request: web.Request) -> web.Response:
            return web.json_response(self.reset())

        app = web.Application()
        app.router.add_get("/stats", stats)
        app.router.add_post("/reset", reset)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(port_file)


CONTROL = Control()


def instrument_kreabot() -> None:
    """Record the bot and the runner, and time ``JobRunner.resume`` (this process only)."""
    from bot.app import KreaBot
    from bot.runner import JobRunner

    setup_hook = KreaBot.setup_hook
    resume = JobRunner.resume

    async def timed_setup_hook(self: KreaBot) -> None:
        CONTROL.client = self
        CONTROL.runner = self.services.runner
        CONTROL.times["setup_hook"] = time.monotonic()
        await setup_hook(self)
        CONTROL.times["setup_hook_done"] = time.monotonic()

    async def timed_resume(self: JobRunner) -> list[Any]:
        CONTROL.times["resume_start"] = time.monotonic()
        jobs = await resume(self)
        CONTROL.times["resume_done"] = time.monotonic()
        CONTROL.resumed = len(jobs)
        return jobs

    KreaBot.setup_hook = timed_setup_hook  # type: ignore[method-assign]
    JobRunner.resume = timed_resume  # type: ignore[method-assign]


async def run_kreabot() -> None:
    """The production start-up of kreabot."""
    from bot.__main__ import run
    from bot.logs import setup_logging
    from bot.settings import Settings

    instrument_kreabot()
    if os.environ.get("BENCH_MODE") == "kreabot-defer-only":
        # Diagnosis only: /imagine stops right after its deferral (the first thing it does
        # after deferring is handing the request to the job service), so nothing competes
        # with the acknowledgements of later commands.
        from bot.job_service import JobService

        async def never(*args: Any, **kwargs: Any) -> Any:
            await asyncio.Event().wait()

        JobService.imagine = never  # type: ignore[method-assign]
    settings = Settings(_env_file=None)
    setup_logging(
        settings.LOG_LEVEL,
        secrets=[
            settings.DISCORD_TOKEN.get_secret_value(),
            settings.PIXAZO_API_KEY.get_secret_value(),
        ],
    )
    await run(settings)


async def run_floor() -> None:
    """A bot whose only command defers: nothing else happens before the acknowledgement."""
    import discord
    from discord import app_commands

    class FloorBot(discord.Client):
        def __init__(self) -> None:
            super().__init__(intents=discord.Intents.default())
            self.tree = app_commands.CommandTree(self)

            @self.tree.command(name="imagine", description="Defer, and nothing else")
            async def imagine(interaction: discord.Interaction[Any], prompt: str) -> None:
                await interaction.response.defer(thinking=True)

        async def setup_hook(self) -> None:
            await self.tree.sync()

    async with FloorBot() as bot:
        CONTROL.client = bot
        await bot.start(os.environ["DISCORD_TOKEN"])


async def main() -> None:
    """Start the probe and the control endpoint, then the bot."""
    probe = asyncio.create_task(CONTROL.probe.run())
    await CONTROL.serve(Path(os.environ["BENCH_CONTROL_FILE"]))
    try:
        if os.environ.get("BENCH_MODE", "kreabot") == "floor":
            await run_floor()
        else:
            await run_kreabot()
    finally:
        probe.cancel()


def entry() -> int:
    """Patch discord.py to the fake Discord and run, on the loop and JSON library asked for."""
    if os.environ.get("BENCH_JSON") == "stdlib":
        sys.modules["orjson"] = None  # type: ignore[assignment]  # discord.py falls back to json
    import yarl
    from discord.gateway import DiscordWebSocket
    from discord.http import Route

    Route.BASE = os.environ["FAKE_DISCORD_API"]
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["FAKE_DISCORD_GATEWAY"])
    if os.environ.get("BENCH_LOOP") == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    return 0


if __name__ == "__main__":
    sys.exit(entry())
