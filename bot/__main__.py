"""``python -m bot [run|check|sync]``: build the dependencies and run kreabot."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import aiohttp

from bot.app import KreaBot
from bot.config import Settings, SettingsError, load_settings
from bot.logs import setup_logging
from bot.storage.db import open_database

log = logging.getLogger("bot")


async def run(settings: Settings) -> None:
    """Open the session and the database, then run the bot until it stops."""
    db = await open_database(settings.DATABASE_PATH)
    try:
        async with aiohttp.ClientSession() as session:
            async with KreaBot(settings, session=session, db=db) as bot:
                await bot.start(settings.DISCORD_TOKEN.get_secret_value())
    finally:
        await db.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m bot", description="Run kreabot.")
    parser.add_argument("command", nargs="?", default="run", choices=["run"])
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"kreabot: {exc}", file=sys.stderr)
        return 2
    setup_logging(
        settings.LOG_LEVEL,
        secrets=[
            settings.DISCORD_TOKEN.get_secret_value(),
            settings.PIXAZO_API_KEY.get_secret_value(),
        ],
    )
    if args.command == "run":
        try:
            asyncio.run(run(settings))
        except KeyboardInterrupt:
            pass
        except Exception as exc:  # a last line instead of a traceback
            import discord

            if isinstance(exc, discord.LoginFailure):
                print(
                    "kreabot: Discord refused DISCORD_TOKEN: check it in the developer portal",
                    file=sys.stderr,
                )
                return 2
            log.exception("kreabot stopped on an unexpected error")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
