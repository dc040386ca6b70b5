"""The real bot in a process of its own, talking to fakes hosted by the test process.

As a launcher (``python -m tests.support.bot_process``) it reads the bot's settings from
the environment (``DISCORD_TOKEN``, ``PIXAZO_API_KEY``, ``PIXAZO_BASE_URL``,
``DATABASE_PATH`` or ``DATABASE_URL``, ``POLL_*``...), points discord.py at the fake
Discord named by ``FAKE_DISCORD_API`` (what ``Route.BASE`` becomes) and
``FAKE_DISCORD_GATEWAY`` (what ``DiscordWebSocket.DEFAULT_GATEWAY`` becomes), then runs
``bot.__main__.run``: the same start-up as production, with nothing injected.

With arguments (``python -m tests.support.bot_process check``), it patches discord.py the
same way and hands them to ``bot.__main__.main``: the whole command line as an admin runs
it (settings read by ``load_settings`` from the environment and ``.env`` in its working
directory, exit code and all).

From a test, :meth:`BotProcess.start` launches it (``args=`` for a command, ``cwd=`` for
its working directory), :meth:`BotProcess.kill` ends it the hard way (SIGKILL: no shutdown
code runs, as when a host dies), :meth:`BotProcess.terminate` the polite way (SIGTERM, as
``docker stop`` does) and :meth:`BotProcess.wait` reaps it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fake_pixazo import FakePixazo
    from tests.fake_discord import FakeDiscord

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Fast polling, so a restarted bot finds a finished job at once.
FAST_POLL_ENV = {
    "POLL_FIRST_SECONDS": "0.05",
    "POLL_INTERVAL_SECONDS": "0.05",
    "POLL_MAX_INTERVAL_SECONDS": "0.1",
}


def main() -> int:
    """Launcher entry point: patch discord.py to the fake Discord and run the bot."""
    import yarl
    from discord.gateway import DiscordWebSocket
    from discord.http import Route

    from bot.__main__ import run
    from bot.logs import setup_logging
    from bot.settings import Settings

    Route.BASE = os.environ["FAKE_DISCORD_API"]
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["FAKE_DISCORD_GATEWAY"])
    if len(sys.argv) > 1:
        from bot.__main__ import main as command_line

        return command_line(sys.argv[1:])
    settings = Settings(_env_file=None)
    setup_logging(
        settings.LOG_LEVEL,
        secrets=[
            settings.DISCORD_TOKEN.get_secret_value(),
            settings.PIXAZO_API_KEY.get_secret_value(),
        ],
        fmt=settings.LOG_FORMAT,
    )
    asyncio.run(run(settings))
    return 0


@dataclass
class BotProcess:
    """A running launcher process and the file its output goes to."""

    process: asyncio.subprocess.Process
    log_path: Path

    @classmethod
    async def start(
        cls,
        discord_fake: FakeDiscord,
        pixazo: FakePixazo,
        database: Path | str,
        log_path: Path,
        *,
        args: Sequence[str] = (),
        cwd: Path | None = None,
        **settings: str,
    ) -> BotProcess:
        """Launch the bot against both fakes with ``database`` as its database (a SQLite
        file, or a PostgreSQL URL given as ``DATABASE_URL``).

        ``args`` (e.g. ``["run"]``, ``["sync", "--guild", "1"]``) go to ``python -m bot``'s
        own entry point; ``cwd`` is the working directory (where ``.env`` would be read).
        """
        from bot.settings import Settings
        from tests.fake_discord.fixtures import DEFAULT_TOKEN

        # Inherit nothing that could be mistaken for one of the bot's settings.
        env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
        env.update(
            {
                "DISCORD_TOKEN": DEFAULT_TOKEN,
                "PIXAZO_API_KEY": pixazo.api_key,
                "PIXAZO_BASE_URL": pixazo.base_url,
                **(
                    {"DATABASE_URL": database}
                    if isinstance(database, str)
                    else {"DATABASE_PATH": str(database)}
                ),
                "LOG_LEVEL": "INFO",
                **FAST_POLL_ENV,
                "FAKE_DISCORD_API": discord_fake.api_base,
                "FAKE_DISCORD_GATEWAY": discord_fake.gateway_url,
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])
                ),
                "PYTHONUNBUFFERED": "1",
                **settings,
            }
        )
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.support.bot_process",
                *args,
                cwd=cwd or REPO_ROOT,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        return cls(process, log_path)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def running(self) -> bool:
        """Whether the process has not exited."""
        return self.process.returncode is None

    async def kill(self) -> int:
        """SIGKILL the process (no shutdown code runs) and reap it; returns the exit code."""
        if self.running():
            self.process.kill()
        return await asyncio.wait_for(self.process.wait(), 10.0)

    def terminate(self) -> None:
        """Send SIGTERM (what ``docker stop`` and systemd send): the bot shuts down cleanly."""
        if self.running():
            self.process.terminate()

    async def wait(self, timeout: float = 20.0) -> int:
        """Wait for the process to exit on its own; returns its exit code."""
        return await asyncio.wait_for(self.process.wait(), timeout)

    def log(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


if __name__ == "__main__":
    sys.exit(main())
