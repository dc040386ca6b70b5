"""``python -m bot [run | check [--offline] | sync [--guild ID]]``: build the dependencies and act.

* ``run`` (default): run the bot until SIGTERM/SIGINT.
* ``check``: validate the settings, read the database (read-only: never created nor
  migrated), ask Pixazo (free) whether the key is accepted, ask Discord whether the token
  is, and print the invite URL. Exits 1 when something failed or could not be verified;
  ``--offline`` skips Pixazo and Discord.
* ``sync``: register the slash commands now (globally, or in one server with ``--guild``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import discord

from bot.admission import Breaker
from bot.app import KreaBot
from bot.cluster import Cluster, process_id
from bot.commands_sync import CommandSync
from bot.delivery import DiscordDelivery
from bot.fair_use import FairUse
from bot.imaging import ImageWorker
from bot.job_service import JobService
from bot.logs import setup_logging
from bot.maintenance import Maintenance
from bot.metrics import Metrics, Snapshot
from bot.pixazo import NotFound, PixazoClient, PixazoError, Unauthorized
from bot.polling import RATE_HEADROOM, PollPlanner, PollSchedule
from bot.runner import JobRunner
from bot.services import Services
from bot.settings import HINTS, Settings, SettingsError, load_settings
from bot.storage.config import ConfigStore
from bot.storage.db import (
    Database,
    DatabaseOpenError,
    StorageError,
    latest_schema_version,
    open_configured,
)
from bot.storage.interface import redact_url, url_password
from bot.storage.jobs import ACTIVE_STATES, JobRepository
from bot.storage.leases import Lease, LeaseStore
from bot.web import Readiness, WebServer
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


def shard_latencies(bot: discord.Client) -> list[tuple[int, float]]:
    """(shard id, gateway heartbeat latency in seconds) of every shard the bot runs."""
    if isinstance(bot, discord.AutoShardedClient):
        return list(bot.latencies)
    return [(bot.shard_id or 0, bot.latency)]


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
    leases = LeaseStore(db, Lease(process_id(), settings.LEASE_SECONDS), clock)
    jobs = JobRepository(db, clock, lease=leases.lease)
    config = ConfigStore(db, clock)
    fair_use = FairUse(settings, config, clock)
    metrics = Metrics(
        max_in_flight=settings.MAX_CONCURRENT_JOBS,
        status_polls_per_second=settings.STATUS_POLLS_PER_SECOND,
    )
    # discord.py makes its HTTP session when the bot logs in (after this): with this trace,
    # every REST answer reaches the metrics (429s by route).
    bot.http.http_trace = metrics.discord_trace()
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
        leases=leases,
        clock=clock,
    )
    shards = settings.own_shards()
    cluster = Cluster(
        db,
        leases,
        jobs,
        runner,
        polls_per_second=settings.STATUS_POLLS_PER_SECOND * RATE_HEADROOM,
        shards=",".join(map(str, shards)) if shards is not None else "",
        exclusive=db.dialect.name == "sqlite",
        metrics=metrics,
        clock=clock,
    )
    web = None
    if settings.HTTP_PORT is not None:

        async def readiness() -> Readiness:
            return Readiness(
                discord=bot.connected(),
                database=await db.ping(),
                breaker_reason=runner.breaker.reason,
                shards=bot.shard_latencies(),
            )

        async def exposition(accept: str | None) -> tuple[bytes, str]:
            try:
                active: dict[str, int] | None = await jobs.count_in_states(ACTIVE_STATES)
            except Exception as exc:  # the scrape still shows everything else
                log.warning("metrics: the database did not answer: %r", exc)
                active = None
            snapshot = Snapshot(
                active_jobs=active,
                queue_depth=len(runner.admission.waiting()),
                in_flight=runner.admission.in_flight(),
                breaker_reason=runner.breaker.reason,
                discord_connected=bot.connected(),
                discord_latencies=shard_latencies(bot),
                guilds_by_shard=bot.guilds_by_shard(),
                cluster_processes=cluster.live_processes,
            )
            return metrics.render(snapshot, accept)

        secret = settings.WEBHOOK_SECRET
        web = WebServer(
            settings.HTTP_HOST,
            settings.HTTP_PORT,
            readiness=readiness,
            exposition=exposition,
            wake=cluster.wake,
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
        cluster=cluster,
        job_service=JobService(jobs, config, fair_use, runner, delivery, clock),
        commands=CommandSync(bot.tree, config, settings.DEV_GUILD_ID, db),
        maintenance=Maintenance(
            config,
            jobs,
            settings.RETENTION_DAYS,
            is_present=functools.partial(guild_present, bot),
            clock=clock,
        ),
        ready=bot.wait_until_ready,
        web=web,
        poll_planner=planner,
    )


def guild_present(bot: KreaBot, guild_id: int) -> bool | None:
    """Whether the bot is in a server; None when the server is on a shard another process
    runs (this one cannot tell)."""
    if bot.get_guild(guild_id) is not None:
        return True
    count = bot.shard_count or 1
    return False if (guild_id >> 22) % count in bot.shards else None


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


#: How ``check`` marks a line: verified, failed, could not be verified, not checked.
OK, FAIL, UNKNOWN, SKIPPED = "ok    ", "FAIL  ", "??    ", "--    "
#: How long ``check`` waits for Discord's answer.
CHECK_TIMEOUT_SECONDS = 30.0


def check_database(path: Path) -> bool:
    """Report the database without creating, migrating or writing anything; True when the
    bot can use it (a file not made yet counts: the first run creates it)."""
    if str(path) == ":memory:":
        print(f"{OK}database in memory (DATABASE_PATH=:memory:): nothing is kept between runs")
        return True
    if not path.exists():
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            print(f"{FAIL}database {path} does not exist and cannot be created: {DATABASE_HINT}")
            return False
        print(f"{OK}database {path} does not exist yet (created on first run)")
        return True
    # Read-only. A WAL database opened read-only gets -wal and -shm files when they are
    # missing (which a root-owned check would leave, unreadable, to the bot): without them
    # no bot has the database open, so it is read as an immutable file, creating nothing.
    shared_memory = path.with_name(path.name + "-shm").exists()
    uri = path.resolve().as_uri() + ("?mode=ro" if shared_memory else "?mode=ro&immutable=1")
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
            version = int(connection.execute("PRAGMA user_version").fetchone()[0])
            connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        print(f"{FAIL}database {path} cannot be read ({exc}): {DATABASE_HINT}")
        return False
    return report_schema(f"SQLite {path}", version)


def report_schema(where: str, version: int) -> bool:
    """One line on a database's schema version against this release's; True when usable."""
    latest = latest_schema_version()
    if version > latest:
        print(
            f"{FAIL}database {where} has schema version {version}, newer than this kreabot "
            f"knows ({latest}): a newer release wrote it; run that release"
        )
        return False
    if version < latest:
        pending = ", ".join(f"{number:04d}" for number in range(version + 1, latest + 1))
        print(
            f"{OK}database {where} (schema version {version} of {latest}: migrations "
            f"{pending} pending, applied on the next start)"
        )
        return True
    print(f"{OK}database {where} (schema version {version}, up to date)")
    return True


async def check_postgres(url: str) -> bool:
    """Report a PostgreSQL database without migrating or writing anything."""
    import asyncpg

    where = f"PostgreSQL {redact_url(url)}"
    try:
        connection = await asyncio.wait_for(asyncpg.connect(url), CHECK_TIMEOUT_SECONDS)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = str(exc).replace(url_password(url) or "\0", "***")
        print(
            f"{FAIL}database {where} cannot be reached ({type(exc).__name__}: {reason}): "
            f"{POSTGRES_HINT}"
        )
        return False
    try:
        exists = await connection.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
        version = (
            int(await connection.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))
            if exists
            else 0
        )
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"{FAIL}database {where} cannot be read ({type(exc).__name__}): {POSTGRES_HINT}")
        return False
    finally:
        await connection.close()
    return report_schema(where, version)


async def check_pixazo(settings: Settings, session: aiohttp.ClientSession) -> bool:
    """Ask the gateway about a request that does not exist: free, and it tells whether the
    key is accepted (404) or refused (401/403)."""
    client = PixazoClient(
        session, settings.PIXAZO_API_KEY.get_secret_value(), base_url=settings.PIXAZO_BASE_URL
    )
    try:
        await client.status("kreabot-check-not-a-request")
    except NotFound:
        pass
    except Unauthorized:
        print(f"{FAIL}Pixazo refused PIXAZO_API_KEY: check the key at pixazo.ai")
        return False
    except PixazoError as exc:
        print(
            f"{UNKNOWN}could not verify PIXAZO_API_KEY: no usable answer from "
            f"{settings.PIXAZO_BASE_URL} ({exc.message})"
        )
        return False
    print(f"{OK}Pixazo key accepted by {settings.PIXAZO_BASE_URL}")
    return True


async def check_discord(settings: Settings) -> tuple[bool, int | None]:
    """Log in over HTTP (no gateway session); (token verified, the application's id)."""
    http = discord.http.HTTPClient(asyncio.get_running_loop())
    app_id: int | None = None
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            user = await http.static_login(settings.DISCORD_TOKEN.get_secret_value())
        print(f"{OK}Discord token accepted: logged in as {user['username']}")
        # The invite names the application, whose id can differ from the bot user's.
        with contextlib.suppress(
            discord.HTTPException, aiohttp.ClientError, OSError, KeyError, ValueError
        ):
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                app_id = int((await http.application_info())["id"])
    except discord.LoginFailure:
        print(f"{FAIL}Discord refused DISCORD_TOKEN: reset it in the developer portal")
        return False, None
    except TimeoutError:
        print(
            f"{UNKNOWN}could not verify DISCORD_TOKEN: Discord did not answer within "
            f"{CHECK_TIMEOUT_SECONDS:.0f} s"
        )
        return False, None
    except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        print(f"{UNKNOWN}could not verify DISCORD_TOKEN: no usable answer from Discord ({reason})")
        return False, None
    finally:
        await http.close()
    return True, app_id


async def check(settings: Settings, *, offline: bool = False) -> int:
    """Print one line per check: 0 when everything was verified, 1 when something failed
    (``FAIL``) or could not be verified (``??``). Changes nothing anywhere."""
    passed = [
        await check_postgres(settings.DATABASE_URL.get_secret_value())
        if settings.DATABASE_URL is not None
        else check_database(settings.DATABASE_PATH)
    ]
    app_id: int | None = None
    if offline:
        print(f"{SKIPPED}Pixazo key and Discord token not checked (--offline)")
    else:
        async with aiohttp.ClientSession() as session:
            passed.append(await check_pixazo(settings, session))
        discord_ok, app_id = await check_discord(settings)
        passed.append(discord_ok)
    app_id = app_id or application_id_from_token(settings.DISCORD_TOKEN.get_secret_value())
    if app_id is None:
        print(f"{FAIL}DISCORD_TOKEN does not look like a bot token")
        passed.append(False)
    else:
        print(f"{OK}invite URL: {invite_url(app_id)}")
    return 0 if all(passed) else 1


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
    parser.add_argument(
        "--offline",
        action="store_true",
        help="with check: only the settings, the database and the invite URL (no network)",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"kreabot: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.LOG_LEVEL, secrets=secrets_of(settings), fmt=settings.LOG_FORMAT)
    try:
        if args.command == "check":
            return asyncio.run(check(settings, offline=args.offline))
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
    except StorageError as exc:
        print(f"kreabot: {exc}: {database_hint(settings)}", file=sys.stderr)
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
