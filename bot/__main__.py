"""``python -m bot [run | check | sync [--guild ID]]``: build the dependencies and act.

* ``run`` (default): run the bot until SIGTERM/SIGINT.
* ``check``: validate the settings, open the database, ask Pixazo (free) whether the key
  is accepted, ask Discord whether the token is, and print the invite URL.
* ``sync``: register the slash commands now (globally, or in one server with ``--guild``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import discord

from bot.admission import Breaker
from bot.app import KreaBot
from bot.commands_sync import CommandSync
from bot.delivery import DiscordDelivery
from bot.fair_use import FairUse
from bot.imaging import ImageWorker
from bot.job_service import JobService
from bot.logs import setup_logging
from bot.maintenance import Maintenance
from bot.metrics import Metrics
from bot.pixazo import NotFound, PixazoClient, PixazoError, Unauthorized
from bot.polling import RATE_HEADROOM, PollPlanner, PollSchedule
from bot.runner import JobRunner
from bot.services import Services
from bot.settings import HINTS, Settings, SettingsError, load_settings
from bot.storage.config import ConfigStore
from bot.storage.db import Database, DatabaseOpenError, open_configured
from bot.storage.interface import url_password
from bot.storage.jobs import JobRepository
from bot.web import WebServer
from bot.webhooks import webhook_url

log = logging.getLogger("bot")

#: Scopes and permissions the bot needs (and no more).
SCOPES = ("bot", "applications.commands")
PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    embed_links=True,
    attach_files=True,
    read_message_history=True,
    add_reactions=True,
    connect=True,  # only to read (and so to work in) the chat of voice and stage channels
)


#: How to fix a database that cannot be opened.
DATABASE_HINT = f"check DATABASE_PATH: {HINTS['DATABASE_PATH']}"
POSTGRES_HINT = (
    "check DATABASE_URL (the server's address, the database's name, the user and its "
    "password) and that the server runs"
)


def database_hint(settings: Settings) -> str:
    """How to fix the database the settings name when it cannot be opened."""
    return POSTGRES_HINT if settings.DATABASE_URL is not None else DATABASE_HINT


def application_id_from_token(token: str) -> int | None:
    """The bot's id, which is the first part of its token (base64)."""
    first = token.split(".")[0]
    try:
        decoded = base64.b64decode(first + "=" * (-len(first) % 4), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return int(decoded) if decoded.isdigit() else None


def invite_url(application_id: int) -> str:
    """The OAuth2 URL that adds the bot to a server with exactly what it needs."""
    return discord.utils.oauth_url(application_id, permissions=PERMISSIONS, scopes=SCOPES)


def build_services(
    settings: Settings,
    *,
    session: aiohttp.ClientSession,
    db: Database,
    bot: KreaBot,
    clock: Callable[[], float] = time.time,
    poll_schedule: PollSchedule | None = None,
    retry_wait: float = 5.0,
) -> Services:
    """Every long-lived piece, each given only what it uses. Data flows one way:
    interaction → job service → stored job → runner (submit, poll, download) → delivery."""
    jobs = JobRepository(db, clock)
    config = ConfigStore(db, clock)
    fair_use = FairUse(settings, config, clock)
    metrics = Metrics()
    pixazo = PixazoClient(
        session, settings.PIXAZO_API_KEY.get_secret_value(), base_url=settings.PIXAZO_BASE_URL
    )
    images = ImageWorker(settings.IMAGE_THREADS, max_pixels=settings.MAX_IMAGE_PIXELS)
    delivery = DiscordDelivery(bot, jobs, config, session, images, clock)
    fixed_polls = poll_schedule or PollSchedule(
        first=settings.POLL_FIRST_SECONDS,
        interval=settings.POLL_INTERVAL_SECONDS,
        cap=settings.POLL_MAX_INTERVAL_SECONDS,
    )
    webhooks = settings.WEBHOOK_PUBLIC_URL is not None and settings.WEBHOOK_SECRET is not None
    # Learns generation times to poll around them (not with an injected schedule, nor
    # with webhooks, which poll only as a safety net).
    planner = (
        PollPlanner(fixed_polls, clock=clock)
        if settings.POLL_ADAPTIVE and poll_schedule is None and not webhooks
        else None
    )
    safety = settings.WEBHOOK_SAFETY_POLL_SECONDS
    runner = JobRunner(
        jobs,
        pixazo,
        delivery,
        limits=fair_use,
        max_concurrent=settings.MAX_CONCURRENT_JOBS,
        polls_per_second=settings.STATUS_POLLS_PER_SECOND * RATE_HEADROOM,
        job_timeout=settings.JOB_TIMEOUT_SECONDS,
        max_download_bytes=settings.MAX_DOWNLOAD_BYTES,
        poll_schedule=fixed_polls,
        poll_planner=planner,
        retry_wait=retry_wait,
        breaker=Breaker(probe_after=settings.BREAKER_PROBE_SECONDS),
        queue_give_up=settings.QUEUE_GIVE_UP_SECONDS,
        webhook_url_for=(
            functools.partial(
                webhook_url,
                settings.WEBHOOK_PUBLIC_URL,
                settings.WEBHOOK_SECRET.get_secret_value(),
            )
            if settings.WEBHOOK_PUBLIC_URL is not None and settings.WEBHOOK_SECRET is not None
            else None
        ),
        webhook_poll_schedule=PollSchedule(first=safety, interval=safety, factor=1.0, cap=safety),
        metrics=metrics,
        clock=clock,
    )
    web = None
    if settings.HTTP_PORT is not None:

        async def health() -> dict[str, bool]:
            return {"discord": bot.connected(), "database": await db.ping()}

        async def metrics_text() -> str:
            return metrics.render(await jobs.count_by_state())

        secret = settings.WEBHOOK_SECRET
        web = WebServer(
            settings.HTTP_HOST,
            settings.HTTP_PORT,
            health=health,
            metrics_text=metrics_text,
            wake=runner.wake,
            metrics=metrics,
            webhook_secret=secret.get_secret_value() if secret else None,
        )
    return Services(
        settings=settings,
        session=session,
        db=db,
        pixazo=pixazo,
        jobs=jobs,
        config=config,
        fair_use=fair_use,
        metrics=metrics,
        images=images,
        delivery=delivery,
        runner=runner,
        job_service=JobService(jobs, config, fair_use, runner, delivery, clock),
        commands=CommandSync(bot.tree, config, settings.DEV_GUILD_ID),
        maintenance=Maintenance(
            config,
            jobs,
            settings.RETENTION_DAYS,
            is_present=lambda guild_id: bot.get_guild(guild_id) is not None,
            clock=clock,
        ),
        ready=bot.wait_until_ready,
        web=web,
        poll_planner=planner,
    )


@contextlib.asynccontextmanager
async def open_bot(settings: Settings, *, start: bool = True) -> AsyncIterator[KreaBot]:
    """The database, the HTTP session, the services and the bot that speaks for them."""
    db = await open_configured(settings)
    try:
        async with aiohttp.ClientSession() as session:
            bot = KreaBot(settings)
            bot.use(build_services(settings, session=session, db=db, bot=bot), start=start)
            async with bot:
                yield bot
    finally:
        await db.close()


async def run(settings: Settings) -> None:
    """Run the bot until it is told to stop (SIGTERM, SIGINT)."""
    async with open_bot(settings) as bot:
        loop = asyncio.get_running_loop()
        # The loop keeps only weak references to tasks: hold the shutdown task.
        stopping: set[asyncio.Task[None]] = set()

        def on_signal() -> None:
            task = asyncio.ensure_future(shutdown(bot))
            stopping.add(task)
            task.add_done_callback(stopping.discard)

        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, on_signal)
        await bot.start(settings.DISCORD_TOKEN.get_secret_value())
    log.info("stopped: the gateway and the database are closed")


async def shutdown(bot: KreaBot) -> None:
    """Stop taking commands, persist what runs, close the gateway."""
    log.info("shutting down: in-flight jobs are kept and resume on the next start")
    await bot.close()


async def check(settings: Settings) -> int:
    """Print one line per check; 0 when everything is fine."""
    failures = 0
    try:
        db = await open_configured(settings)
    except DatabaseOpenError as exc:
        print(f"FAIL  database {exc}: {database_hint(settings)}")
        failures += 1
    else:
        try:
            version = await db.schema_version()
        finally:
            await db.close()
        print(f"ok    database {db.describe()} (schema version {version})")
    async with aiohttp.ClientSession() as session:
        client = PixazoClient(
            session, settings.PIXAZO_API_KEY.get_secret_value(), base_url=settings.PIXAZO_BASE_URL
        )
        try:
            await client.status("kreabot-check-not-a-request")
            print(f"ok    Pixazo key accepted by {settings.PIXAZO_BASE_URL}")
        except NotFound:
            print(f"ok    Pixazo key accepted by {settings.PIXAZO_BASE_URL}")
        except Unauthorized:
            print("FAIL  Pixazo refused PIXAZO_API_KEY: check the key at pixazo.ai")
            failures += 1
        except PixazoError as exc:
            print(f"??    could not tell whether the Pixazo key is accepted: {exc.message}")
        http = discord.http.HTTPClient(asyncio.get_running_loop())
        app_id: int | None = None
        try:
            user = await http.static_login(settings.DISCORD_TOKEN.get_secret_value())
            print(f"ok    Discord token accepted: logged in as {user['username']}")
            # The invite names the application, whose id can differ from the bot user's.
            with contextlib.suppress(
                discord.HTTPException, aiohttp.ClientError, OSError, KeyError, ValueError
            ):
                app_id = int((await http.application_info())["id"])
        except discord.LoginFailure:
            print("FAIL  Discord refused DISCORD_TOKEN: reset it in the developer portal")
            failures += 1
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            print(f"??    could not reach Discord to check the token: {type(exc).__name__}")
        finally:
            await http.close()
    app_id = app_id or application_id_from_token(settings.DISCORD_TOKEN.get_secret_value())
    if app_id is None:
        print("FAIL  DISCORD_TOKEN does not look like a bot token")
        failures += 1
    else:
        print(f"ok    invite URL: {invite_url(app_id)}")
    return 1 if failures else 0


async def sync(settings: Settings, guild_id: int | None) -> int:
    """Log in over HTTP only and register the commands (no job is started)."""
    async with open_bot(settings, start=False) as bot:
        await bot.login(settings.DISCORD_TOKEN.get_secret_value())
        await bot.services.commands.sync(guild_id, only_if_changed=False)
        guild_id = guild_id or settings.DEV_GUILD_ID  # what the sync used
        where = f"server {guild_id}" if guild_id else "all servers (may take a while)"
        print(f"ok    slash commands registered for {where}")
    return 0


def secrets_of(settings: Settings) -> list[str]:
    """Every secret the logs must never show: the token, the keys, the database's password
    (and its whole URL)."""
    secrets = [
        settings.DISCORD_TOKEN.get_secret_value(),
        settings.PIXAZO_API_KEY.get_secret_value(),
    ]
    if settings.WEBHOOK_SECRET:
        secrets.append(settings.WEBHOOK_SECRET.get_secret_value())
    if settings.DATABASE_URL:
        url = settings.DATABASE_URL.get_secret_value()
        secrets.append(url)
        password = url_password(url)
        if password:
            secrets.append(password)
    return secrets


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m bot", description="Run kreabot.")
    parser.add_argument("command", nargs="?", default="run", choices=["run", "check", "sync"])
    parser.add_argument("--guild", type=int, help="with sync: register in this server only")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"kreabot: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.LOG_LEVEL, secrets=secrets_of(settings), fmt=settings.LOG_FORMAT)
    try:
        if args.command == "check":
            return asyncio.run(check(settings))
        if args.command == "sync":
            return asyncio.run(sync(settings, args.guild))
        asyncio.run(run(settings))
    except KeyboardInterrupt:
        pass
    except discord.LoginFailure:
        print(
            "kreabot: Discord refused DISCORD_TOKEN: reset it in the developer portal",
            file=sys.stderr,
        )
        return 2
    except DatabaseOpenError as exc:
        print(f"kreabot: database {exc}: {database_hint(settings)}", file=sys.stderr)
        return 2
    except discord.PrivilegedIntentsRequired:
        print("kreabot: Discord refused the gateway intents for this bot", file=sys.stderr)
        return 2
    except Exception:
        log.exception("kreabot stopped on an unexpected error")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
