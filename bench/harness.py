"""Stages (both fakes, hosted by the benchmark process) and bot processes to run on them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from fake_pixazo import FakePixazo
from tests.fake_discord import FakeDiscord, FakeGuild, FakeMember
from tests.fake_discord.fixtures import DEFAULT_TOKEN

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Settings that would make every job wait in line or be refused in a benchmark.
NO_CAPS = {"MEMBER_DAILY_IMAGES": "0", "SERVER_DAILY_IMAGES": "0"}
WEBHOOK_SECRET = "bench-webhook-secret-0123456789abcdef"


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..1); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    """The median, ignoring NaN; NaN for nothing."""
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def speed_extras_available(python: str) -> bool:
    """Whether uvloop and orjson import in ``python``."""
    result = subprocess.run(
        [python, "-c", "import uvloop, orjson"], capture_output=True, check=False
    )
    return result.returncode == 0


@dataclass
class Stage:
    """A fake Discord with one guild and ``members`` extra members, and a fake gateway."""

    name: str
    discord: FakeDiscord
    pixazo: FakePixazo
    guild: FakeGuild
    members: list[FakeMember]
    workdir: Path

    @property
    def db_path(self) -> Path:
        """The bot's database."""
        return self.workdir / f"{self.name}.sqlite3"


@contextlib.asynccontextmanager
async def open_stage(
    name: str, workdir: Path, *, members: int = 0, channels: int = 1, **pixazo: Any
) -> AsyncIterator[Stage]:
    """Start both fakes (the bots connect later, from their own processes)."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    options: dict[str, Any] = {"queued_seconds": 0.05, "processing_seconds": 0.2, "long_edge": 256}
    options.update(pixazo)
    async with FakePixazo(**options) as gateway, FakeDiscord() as discord_fake:
        guild = discord_fake.add_guild(
            name=f"bench {name}", channels=tuple(f"c{i}" for i in range(channels))
        )
        people = [discord_fake.add_member(guild, f"m{i}") for i in range(members)]
        yield Stage(name, discord_fake, gateway, guild, people, workdir)


@dataclass
class BotProc:
    """A bot process (``bench.botproc``) and its control endpoint."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    control_file: Path
    spawned_at: float
    session: aiohttp.ClientSession
    port: int | None = None
    samples: list[dict[str, int]] = field(default_factory=list)

    @classmethod
    async def start(
        cls,
        stage: Stage,
        *,
        mode: str = "kreabot",
        variant: str = "plain",
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        tag: str = "",
    ) -> BotProc:
        """Launch a bot against ``stage``'s fakes (``variant``: plain or speed)."""
        from bot.settings import Settings

        suffix = f"-{tag}" if tag else ""
        log_path = stage.workdir / f"{stage.name}{suffix}.log"
        control_file = stage.workdir / f"{stage.name}{suffix}.port"
        control_file.unlink(missing_ok=True)
        base = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
        base.update(
            {
                "DISCORD_TOKEN": DEFAULT_TOKEN,
                "PIXAZO_API_KEY": stage.pixazo.api_key,
                "PIXAZO_BASE_URL": stage.pixazo.base_url,
                "DATABASE_PATH": str(stage.db_path),
                "LOG_LEVEL": "INFO",
                "FAKE_DISCORD_API": stage.discord.api_base,
                "FAKE_DISCORD_GATEWAY": stage.discord.gateway_url,
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
                ),
                "PYTHONUNBUFFERED": "1",
                "BENCH_MODE": mode,
                "BENCH_CONTROL_FILE": str(control_file),
                "BENCH_LOOP": "uvloop" if variant == "speed" else "asyncio",
                "BENCH_JSON": "orjson" if variant == "speed" else "stdlib",
                **(env or {}),
            }
        )
        spawned_at = time.monotonic()
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                python,
                "-m",
                "bench.botproc",
                cwd=REPO_ROOT,
                env=base,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        session = aiohttp.ClientSession()
        return cls(stage.name, process, log_path, control_file, spawned_at, session)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def running(self) -> bool:
        """Whether the process has not exited."""
        return self.process.returncode is None

    def log(self, tail: int = 4000) -> str:
        """The end of the process's output."""
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    async def _url(self, path: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while self.port is None:
            if self.control_file.exists():
                self.port = int(self.control_file.read_text())
                break
            if not self.running():
                raise RuntimeError(f"bot {self.name} exited:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"bot {self.name} wrote no control port:\n{self.log()}")
            await asyncio.sleep(0.02)
        return f"http://127.0.0.1:{self.port}{path}"

    async def stats(self) -> dict[str, Any]:
        """The control endpoint's figures."""
        async with self.session.get(await self._url("/stats")) as response:
            data: dict[str, Any] = await response.json()
            return data

    async def reset(self) -> dict[str, Any]:
        """Reset the lag samples and the memory peak; returns the memory then."""
        async with self.session.post(await self._url("/reset")) as response:
            data: dict[str, Any] = await response.json()
            return data

    async def wait_until(
        self, check: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        """Poll /stats until ``check`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running():
                raise RuntimeError(
                    f"bot {self.name} exited while waiting for {what}:\n{self.log()}"
                )
            with contextlib.suppress(aiohttp.ClientError):
                stats = await self.stats()
                if check(stats):
                    return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"bot {self.name}: no {what} in {timeout}s:\n{self.log()}")
            await asyncio.sleep(0.02)

    async def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        """Until the bot is connected and its guilds are cached."""
        return await self.wait_until(lambda s: s["guilds_ready"], timeout, "guilds cached")

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM read from outside, in kB."""
        from bench.botproc import memory_kb

        return memory_kb(self.pid)

    async def kill(self) -> None:
        """SIGKILL (no shutdown code runs) and reap."""
        if self.running():
            self.process.kill()
        await asyncio.wait_for(self.process.wait(), 10.0)
        await self.session.close()

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.running():
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        await self.session.close()


def read_db(path: Path, query: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Read the bot's database from outside (WAL: safe while the bot writes)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        return list(db.execute(query, args))


def states(path: Path) -> dict[str, int]:
    """Jobs by state."""
    return {str(s): int(n) for s, n in read_db(path, "SELECT state, COUNT(*) FROM jobs GROUP BY 1")}


def result_request(handle: Any) -> Any:
    """The first request that put this interaction's image into Discord, or None."""
    for record in handle.requests:
        if record.files and 200 <= record.status < 300:
            return record
    return None


def dumps(value: Any) -> str:
    """JSON for the raw results file."""
    return json.dumps(value, indent=1, default=str, allow_nan=True)
