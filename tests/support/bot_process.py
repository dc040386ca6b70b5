"""The real bot in a process of its own, talking to fakes hosted by the test process.

As a launcher (``python -m tests.support.bot_process``) it reads the bot's settings from
the environment (``DISCORD_TOKEN``, ``PIXAZO_API_KEY``, ``PIXAZO_BASE_URL``,
``DATABASE_PATH``, ``POLL_*``...), points discord.py at the fake Discord named by
``FAKE_DISCORD_API`` (what ``Route.BASE`` becomes) and ``FAKE_DISCORD_GATEWAY`` (what
``DiscordWebSocket.DEFAULT_GATEWAY`` becomes), then runs ``bot.__main__.run``: the same
start-up as production, with nothing injected.

From a test, :meth:`BotProcess.start` launches it and :meth:`BotProcess.kill` ends it the
hard way (SIGKILL: no shutdown code runs, as when a host dies).
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.fake_pixazo import FakePixazo
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
    from bot.config import Settings
    from bot.logs import setup_logging

    Route.BASE = os.environ["FAKE_DISCORD_API"]
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["FAKE_DISCORD_GATEWAY"])
    settings = Settings(_env_file=None)
    setup_logging(
        settings.LOG_LEVEL,
        secrets=[
            settings.DISCORD_TOKEN.get_secret_value(),
            settings.PIXAZO_API_KEY.get_secret_value(),
        ],
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
        db_path: Path,
        log_path: Path,
        **settings: str,
    ) -> BotProcess:
        """Launch the bot against both fakes with ``db_path`` as its database."""
        from bot.config import Settings
        from tests.fake_discord.fixtures import DEFAULT_TOKEN

        # Inherit nothing that could be mistaken for one of the bot's settings.
        env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
        env.update(
            {
                "DISCORD_TOKEN": DEFAULT_TOKEN,
                "PIXAZO_API_KEY": pixazo.api_key,
                "PIXAZO_BASE_URL": pixazo.base_url,
                "DATABASE_PATH": str(db_path),
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
                cwd=REPO_ROOT,
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

    def log(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


if __name__ == "__main__":
    sys.exit(main())
