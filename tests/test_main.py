"""``python -m bot``: the command line an admin runs, and the image that runs it.

``check`` and ``sync`` run as real subprocesses. Those that must reach Discord go through
``tests.support.bot_process``, which points discord.py at the fake Discord hosted by the
test and then hands the arguments to ``bot.__main__.main``. Every process runs in a
working directory without ``.env`` and with no setting inherited from the developer.

No Docker engine runs here, so the image is checked by construction: the files its
Dockerfile copies exist and reach the build context, its base is pinned, it installs the
hash-checked runtime lock and nothing else, the settings it bakes in are valid, its command
starts, its health check's code runs against the real HTTP server, the fake gateway is only
in the ``demo`` target, and the compose file's demo command is accepted by the fake
gateway's real command line. The wheel is built for real and must hold ``bot`` and ``cogs``
only; the compose file is parsed with PyYAML and checked for its hardening and secrets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from bot import settings as bot_config
from bot.settings import Settings
from bot.storage.db import latest_schema_version, open_database
from fake_pixazo import FakePixazo
from fake_pixazo.__main__ import build_parser as fake_pixazo_parser
from tests.fake_discord import FakeDiscord
from tests.support.bot_process import BotProcess
from tests.support.world import World

REPO_ROOT = Path(__file__).resolve().parents[1]
API_KEY = "pixazo-key-that-must-stay-secret"
DATABASE_PASSWORD = "database-password-that-must-stay-secret"
#: The exact permissions the invite asks for: View Channel, Send Messages, Send Messages in
#: Threads, Embed Links, Attach Files, Read Message History, Add Reactions, Connect (voice
#: channels' chats).
PERMISSION_BITS = (10, 11, 38, 14, 15, 16, 6, 20)
PERMISSIONS = sum(1 << bit for bit in PERMISSION_BITS)


def bot_token(application_id: int) -> str:
    """A token shaped like Discord's: the bot's id in base64, a timestamp, an HMAC."""
    first = base64.b64encode(str(application_id).encode()).decode().rstrip("=")
    return f"{first}.GhJk1a.{'s3cr3t' * 6}"


def clean_env(**settings: str) -> dict[str, str]:
    """The test's environment minus every setting the bot reads, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["SECRETS_DIR"] = ""  # no secret files either (a host may have /run/secrets)
    env.update(settings)
    return env


def run_bot_command(
    args: list[str], cwd: Path, **settings: str
) -> subprocess.CompletedProcess[str]:
    """``python -m bot ARGS`` as an admin runs it (no fake patched in)."""
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=cwd,
        env=clean_env(**settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextlib.asynccontextmanager
async def both_fakes(**discord_options: Any) -> AsyncIterator[tuple[FakePixazo, FakeDiscord]]:
    """A fake gateway accepting ``API_KEY`` and a fake Discord with one server."""
    async with (
        FakePixazo(api_key=API_KEY, queued_seconds=0.01, processing_seconds=0.05) as pixazo,
        FakeDiscord(**discord_options) as discord_fake,
    ):
        discord_fake.add_guild()
        yield pixazo, discord_fake


async def run_against_fakes(
    pixazo: FakePixazo,
    discord_fake: FakeDiscord,
    tmp_path: Path,
    args: list[str],
    **settings: str,
) -> tuple[int, str]:
    """``python -m bot ARGS`` with discord.py pointed at the fake; (exit code, output).

    The output mixes stdout and the log (stderr); ``check`` runs with ``LOG_LEVEL=WARNING``
    so that its output is only its report, unless something went wrong.
    """
    if args[0] == "check":
        settings.setdefault("LOG_LEVEL", "WARNING")
    process = await BotProcess.start(
        discord_fake,
        pixazo,
        tmp_path / "kreabot.sqlite3",
        tmp_path / f"{args[0]}.log",
        args=args,
        cwd=tmp_path,
        **{"DISCORD_TOKEN": bot_token(discord_fake.application_id), **settings},
    )
    code = await process.wait(30.0)
    return code, process.log()


# -- python -m bot check: settings ------------------------------------------------------------


def test_help_names_every_command(tmp_path: Path) -> None:
    result = run_bot_command(["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    for word in ("run", "check", "sync", "--guild"):
        assert word in result.stdout


def test_check_names_a_missing_token_in_one_line(tmp_path: Path) -> None:
    result = run_bot_command(["check"], tmp_path, PIXAZO_API_KEY=API_KEY)

    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("kreabot: DISCORD_TOKEN is not set: ")
    assert "developer portal" in line
    assert API_KEY not in result.stderr
    assert not (tmp_path / "data").exists(), "nothing is opened before the settings are valid"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("HTTP_PORT", "eighty", "HTTP_PORT is invalid"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL is invalid"),
        ("PIXAZO_BASE_URL", "gateway.pixazo.ai", "PIXAZO_BASE_URL is not an http(s) URL"),
        ("MAX_CONCURRENT_JOBS", "0", "MAX_CONCURRENT_JOBS is invalid"),
        ("DISCORD_TOKEN", "pasted with a space", "DISCORD_TOKEN contains spaces"),
        ("WEBHOOK_PUBLIC_URL", "https://bot.example.org", "WEBHOOK_PUBLIC_URL needs HTTP_PORT"),
    ],
)
def test_check_names_a_malformed_setting_in_one_line(
    tmp_path: Path, name: str, value: str, expected: str
) -> None:
    token = bot_token(1234567890123)
    settings = {"DISCORD_TOKEN": token, "PIXAZO_API_KEY": API_KEY, name: value}
    result = run_bot_command(["check"], tmp_path, **settings)

    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"kreabot: {expected}"), line
    for secret in (token, API_KEY, settings["DISCORD_TOKEN"]):
        assert secret not in result.stderr
    assert "Traceback" not in result.stderr


def test_check_reads_dotenv_from_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"DISCORD_TOKEN={bot_token(1)}\nPIXAZO_API_KEY={API_KEY}\nLOG_LEVEL=chatty\n"
    )
    result = run_bot_command(["check"], tmp_path)

    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("kreabot: LOG_LEVEL is invalid"), line


# -- python -m bot check: against the fakes ---------------------------------------------------


async def test_check_with_good_settings_prints_the_invite_url(tmp_path: Path) -> None:
    database = tmp_path / "kreabot.sqlite3"
    await (await open_database(database)).close()  # the bot ran here before
    async with both_fakes() as (pixazo, discord_fake):
        # An old bot: its user id (in the token) is not its application id (in the invite).
        token = bot_token(discord_fake.application_id - 1)
        code, output = await run_against_fakes(
            pixazo, discord_fake, tmp_path, ["check"], DISCORD_TOKEN=token
        )

        assert code == 0, output
        app_id = discord_fake.application_id
        lines = output.splitlines()
        latest = latest_schema_version()
        assert (
            lines[0] == f"ok    database SQLite {database} (schema version {latest}, up to date)"
        ), output
        assert lines[1] == f"ok    Pixazo key accepted by {pixazo.base_url}"
        assert lines[2] == "ok    Discord token accepted: logged in as kreabot"
        assert lines[3] == (
            f"ok    invite URL: https://discord.com/oauth2/authorize?client_id={app_id}"
            f"&scope=bot+applications.commands&permissions={PERMISSIONS}"
        )
        assert len(lines) == 4, output
        # The key was checked with one free status call (404: unknown id); nothing was paid.
        assert pixazo.submits() == []
        assert [call.status for call in pixazo.status_calls()] == [404]
        # Discord: the token was checked over HTTP; no gateway session, no command sync.
        assert discord_fake.identify_count == 0
        assert discord_fake.command_syncs == 0
        assert token not in output and API_KEY not in output


async def test_check_reports_keys_that_are_refused(tmp_path: Path) -> None:
    async with both_fakes(token="the-only-accepted-token") as (pixazo, discord_fake):
        code, output = await run_against_fakes(
            pixazo, discord_fake, tmp_path, ["check"], PIXAZO_API_KEY="a-revoked-key"
        )

        assert code == 1, output
        assert "FAIL  Pixazo refused PIXAZO_API_KEY: check the key at pixazo.ai" in output
        assert "FAIL  Discord refused DISCORD_TOKEN: reset it in the developer portal" in output
        # Still useful: without Discord's answer, the id comes from the token.
        app_id = discord_fake.application_id
        assert f"ok    invite URL: https://discord.com/oauth2/authorize?client_id={app_id}&" in (
            output
        )
        assert "a-revoked-key" not in output and bot_token(discord_fake.application_id) not in (
            output
        )
        assert "Traceback" not in output


async def test_check_reports_a_database_it_cannot_open(tmp_path: Path) -> None:
    (tmp_path / "a-directory").mkdir()
    async with both_fakes() as (pixazo, discord_fake):
        code, output = await run_against_fakes(
            pixazo,
            discord_fake,
            tmp_path,
            ["check"],
            DATABASE_PATH=str(tmp_path / "a-directory"),
        )

    assert code == 1, output
    (line,) = [line for line in output.splitlines() if "database" in line]
    assert line.startswith("FAIL  database ") and "DATABASE_PATH" in line
    assert "Traceback" not in output
    assert "ok    Pixazo key accepted" in output  # the other checks still ran


@pytest.mark.parametrize("fault", ["unreachable", "a 500"])
async def test_check_fails_when_it_cannot_verify_the_pixazo_key(tmp_path: Path, fault: str) -> None:
    async with both_fakes() as (pixazo, discord_fake):
        settings = {}
        if fault == "unreachable":
            settings["PIXAZO_BASE_URL"] = f"http://127.0.0.1:{free_port()}"
        else:
            pixazo.fail_next("status", status=500)
        code, output = await run_against_fakes(
            pixazo, discord_fake, tmp_path, ["check"], **settings
        )

    assert code == 1, output
    (line,) = [line for line in output.splitlines() if "PIXAZO_API_KEY" in line]
    assert line.startswith("??    could not verify PIXAZO_API_KEY: no usable answer from "), line
    # The other checks still ran and passed.
    assert "ok    Discord token accepted" in output
    assert "ok    invite URL: " in output
    assert API_KEY not in output and "Traceback" not in output


async def test_check_fails_when_it_cannot_reach_discord(tmp_path: Path) -> None:
    async with both_fakes() as (pixazo, discord_fake):
        nowhere = f"http://127.0.0.1:{free_port()}/api/v10"  # nothing listens there
        code, output = await run_against_fakes(
            pixazo, discord_fake, tmp_path, ["check"], FAKE_DISCORD_API=nowhere
        )

    assert code == 1, output
    (line,) = [line for line in output.splitlines() if "DISCORD_TOKEN" in line]
    assert line.startswith("??    could not verify DISCORD_TOKEN: no usable answer from Discord"), (
        line
    )
    assert f"ok    Pixazo key accepted by {pixazo.base_url}" in output
    # The invite URL still comes from the token.
    app_id = discord_fake.application_id
    assert f"ok    invite URL: https://discord.com/oauth2/authorize?client_id={app_id}&" in output
    assert bot_token(app_id) not in output and "Traceback" not in output


async def test_check_offline_reads_the_database_of_a_running_bot_and_asks_nobody(
    tmp_path: Path,
) -> None:
    database = tmp_path / "kreabot.sqlite3"
    db = await open_database(database)  # a bot has it open (WAL: its -wal and -shm exist)
    try:
        async with both_fakes() as (pixazo, discord_fake):
            code, output = await run_against_fakes(
                pixazo, discord_fake, tmp_path, ["check", "--offline"]
            )
            assert pixazo.requests == [] and discord_fake.requests == []
            app_id = discord_fake.application_id
    finally:
        await db.close()

    assert code == 0, output
    assert output.splitlines() == [
        f"ok    database SQLite {database} (schema version {latest_schema_version()}, up to date)",
        "--    Pixazo key and Discord token not checked (--offline)",
        f"ok    invite URL: https://discord.com/oauth2/authorize?client_id={app_id}"
        f"&scope=bot+applications.commands&permissions={PERMISSIONS}",
    ]


# -- python -m bot check: the database is read, never created or migrated ----------------------


def offline_check(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """``python -m bot check --offline`` with valid secrets and ``settings``."""
    return run_bot_command(
        ["check", "--offline"],
        tmp_path,
        DISCORD_TOKEN=bot_token(1234567890123),
        PIXAZO_API_KEY=API_KEY,
        LOG_LEVEL="WARNING",
        **settings,
    )


def database_at_version(path: Path, version: int) -> None:
    """A database as an older kreabot left it: the first migrations, up to ``version``."""
    folder = REPO_ROOT / "bot" / "storage" / "migrations"
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        for script in sorted(folder.glob("*.sql")):
            if int(script.name[:4]) <= version:
                connection.executescript(script.read_text(encoding="utf-8"))
        connection.execute(f"PRAGMA user_version = {version}")
        connection.commit()


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_check_does_not_create_a_missing_database(tmp_path: Path) -> None:
    result = offline_check(tmp_path)  # DATABASE_PATH: data/kreabot.sqlite3 by default

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == (
        "ok    database data/kreabot.sqlite3 does not exist yet (created on first run)"
    )
    assert list(tmp_path.iterdir()) == [], "check created something"


def test_check_reports_pending_migrations_without_applying_them(tmp_path: Path) -> None:
    latest = latest_schema_version()
    database = tmp_path / "kreabot.sqlite3"
    database_at_version(database, latest - 1)
    before = snapshot(tmp_path)

    result = offline_check(tmp_path, DATABASE_PATH=str(database))

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == (
        f"ok    database SQLite {database} (schema version {latest - 1} of {latest}: migrations "
        f"{latest:04d} pending, applied on the next start)"
    )
    assert snapshot(tmp_path) == before, "check wrote to the database or left files beside it"


def test_check_fails_on_a_database_from_a_newer_kreabot(tmp_path: Path) -> None:
    latest = latest_schema_version()
    database = tmp_path / "kreabot.sqlite3"
    database_at_version(database, latest)
    with contextlib.closing(sqlite3.connect(database)) as connection:
        connection.execute(f"PRAGMA user_version = {latest + 1}")

    result = offline_check(tmp_path, DATABASE_PATH=str(database))

    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == (
        f"FAIL  database SQLite {database} has schema version {latest + 1}, newer than this "
        f"kreabot knows ({latest}): a newer release wrote it; run that release"
    )


@pytest.mark.parametrize("kind", ["under a file", "not a database"])
def test_check_fails_on_a_database_path_the_bot_could_not_use(tmp_path: Path, kind: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder, not a database")
    database = blocker / "kreabot.sqlite3" if kind == "under a file" else blocker

    result = offline_check(tmp_path, DATABASE_PATH=str(database))

    assert result.returncode == 1, result.stdout + result.stderr
    line = result.stdout.splitlines()[0]
    assert line.startswith(f"FAIL  database {database} ") and "DATABASE_PATH" in line, line
    assert blocker.read_text() == "not a folder, not a database"
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]


async def test_check_names_postgresql_and_its_schema_version_not_its_password(
    tmp_path: Path, postgres_url: str
) -> None:
    url = postgres_url.replace("://kreabot@", f"://kreabot:{DATABASE_PASSWORD}@")
    await (await open_database(postgres_url)).close()  # a bot ran on it: migrated
    async with both_fakes() as (pixazo, discord_fake):
        code, output = await run_against_fakes(
            pixazo, discord_fake, tmp_path, ["check"], DATABASE_URL=url
        )

    assert code == 0, output
    where = postgres_url.replace("postgresql://kreabot@", "")
    assert output.splitlines()[0] == (
        f"ok    database PostgreSQL postgresql://kreabot@{where} "
        f"(schema version {latest_schema_version()}, up to date)"
    )
    assert DATABASE_PASSWORD not in output
    assert not (tmp_path / "kreabot.sqlite3").exists()  # DATABASE_URL wins over the path


async def test_check_reports_a_postgresql_server_it_cannot_reach(tmp_path: Path) -> None:
    url = f"postgresql://kreabot:{DATABASE_PASSWORD}@/kreabot?host={tmp_path / 'no-server'}"
    async with both_fakes() as (pixazo, discord_fake):
        code, output = await run_against_fakes(
            pixazo, discord_fake, tmp_path, ["check"], DATABASE_URL=url
        )

    assert code == 1, output
    (line,) = [line for line in output.splitlines() if "database" in line]
    assert line.startswith("FAIL  database PostgreSQL postgresql://kreabot@/kreabot?host=")
    assert "cannot be reached" in line and "check DATABASE_URL" in line
    assert DATABASE_PASSWORD not in output
    assert "Traceback" not in output
    assert "ok    Pixazo key accepted" in output


def test_run_stops_in_one_line_when_postgresql_cannot_be_reached(tmp_path: Path) -> None:
    url = f"postgresql://kreabot:{DATABASE_PASSWORD}@/kreabot?host={tmp_path / 'no-server'}"
    result = run_bot_command(
        ["run"],
        tmp_path,
        DISCORD_TOKEN=bot_token(1234567890123),
        PIXAZO_API_KEY=API_KEY,
        DATABASE_URL=url,
    )

    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("kreabot: database PostgreSQL postgresql://kreabot@/kreabot?host=")
    assert "check DATABASE_URL" in line
    assert DATABASE_PASSWORD not in result.stderr + result.stdout


# -- python -m bot sync -----------------------------------------------------------------------


async def test_sync_with_guild_registers_the_commands_in_that_server_only(
    tmp_path: Path,
) -> None:
    async with both_fakes() as (pixazo, discord_fake):
        (guild_id,) = discord_fake.guilds
        code, output = await run_against_fakes(
            pixazo, discord_fake, tmp_path, ["sync", "--guild", str(guild_id)]
        )

        assert code == 0, output
        assert f"ok    slash commands registered for server {guild_id}" in output
        assert discord_fake.command_syncs == 1
        (record,) = discord_fake.sync_log
        assert record.guild_id == guild_id
        assert "imagine" in record.names
        assert discord_fake.commands(None) == []  # nothing global
        assert discord_fake.identify_count == 0  # HTTP only: no gateway session
        assert pixazo.requests == []  # and nothing resumed or sent to the gateway


async def test_sync_without_guild_registers_global_commands(tmp_path: Path) -> None:
    async with both_fakes() as (pixazo, discord_fake):
        code, output = await run_against_fakes(pixazo, discord_fake, tmp_path, ["sync"])

        assert code == 0, output
        assert "ok    slash commands registered for all servers" in output
        (record,) = discord_fake.sync_log
        assert record.guild_id is None
        assert discord_fake.command("imagine") is not None


async def test_sync_without_guild_uses_dev_guild_id_and_says_so(tmp_path: Path) -> None:
    async with both_fakes() as (pixazo, discord_fake):
        (guild_id,) = discord_fake.guilds
        code, output = await run_against_fakes(
            pixazo, discord_fake, tmp_path, ["sync"], DEV_GUILD_ID=str(guild_id)
        )

        assert code == 0, output
        assert f"ok    slash commands registered for server {guild_id}" in output
        assert [record.guild_id for record in discord_fake.sync_log] == [guild_id]


# -- the image --------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (REPO_ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, rest = pending.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


@dataclass
class Stage:
    """One ``FROM`` of the Dockerfile: its name, what it is built from, its instructions."""

    name: str | None
    base: str
    instructions: list[tuple[str, str]]


def stages() -> list[Stage]:
    """The Dockerfile's stages, in order."""
    found: list[Stage] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            words = [word for word in rest.split() if not word.startswith("--")]
            named = len(words) == 3 and words[1].upper() == "AS"
            found.append(Stage(words[2] if named else None, words[0], []))
        else:
            assert found, f"{keyword} before the first FROM"
            found[-1].instructions.append((keyword, rest))
    return found


def stage(name: str) -> Stage:
    (found,) = [s for s in stages() if s.name == name]
    return found


def lineage(last: Stage) -> list[Stage]:
    """``last`` and the stages it is built FROM, the first first."""
    by_name = {s.name: s for s in stages() if s.name}
    chain = [last]
    while chain[0].base in by_name:
        chain.insert(0, by_name[chain[0].base])
    return chain


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the production image: the last stage (what ``docker build .``
    builds) and the stages it is built FROM, in the order they apply."""
    return [instruction for s in lineage(stages()[-1]) for instruction in s.instructions]


def shell_commands(instructions: list[tuple[str, str]]) -> list[str]:
    """Every command the RUN instructions run (``a && b``: two), without mount options."""
    commands = []
    for keyword, rest in instructions:
        if keyword == "RUN":
            rest = re.sub(r"--mount=\S+\s*", "", rest)
            commands += [part.strip() for part in rest.split("&&")]
    return commands


def image_env() -> dict[str, str]:
    """The ENV of the final stage (``KEY=value`` pairs)."""
    env: dict[str, str] = {}
    for keyword, rest in final_stage():
        if keyword == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def exec_form(rest: str) -> list[str]:
    """A JSON-array (exec form) argument list."""
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


def healthcheck_command() -> list[str]:
    """The HEALTHCHECK's CMD, exec form."""
    (rest,) = [rest for keyword, rest in final_stage() if keyword == "HEALTHCHECK"]
    options, _, command = rest.partition("CMD ")
    assert all(part.startswith("--") for part in options.split()), options
    return exec_form(command)


def dockerignored(path: str) -> bool:
    """Whether ``.dockerignore`` keeps ``path`` (relative, POSIX) out of the build context."""
    ignored = False
    for raw in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/").removeprefix("**/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        names = parts
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes + names):
            ignored = not negate
    return ignored


def test_dockerfile_is_multi_stage_non_root_with_a_data_volume() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(froms) >= 2 and " AS " in froms[0].upper()
    final = final_stage()
    keywords = [keyword for keyword, _ in final]
    assert "COPY" not in keywords, "the final stage installs from a bind mount, copying nothing"
    (user,) = [rest for keyword, rest in final if keyword == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    assert user.split(":")[0].isdigit(), "a numeric UID lets Kubernetes verify runAsNonRoot"
    (volume,) = [rest for keyword, rest in final if keyword == "VOLUME"]
    assert exec_form(volume) == ["/data"]
    env = image_env()
    assert Path(env["DATABASE_PATH"]).parent == Path("/data")
    assert env["HTTP_PORT"] == "8080" and env["HTTP_HOST"] == "0.0.0.0"
    (expose,) = [rest for keyword, rest in final if keyword == "EXPOSE"]
    assert expose == env["HTTP_PORT"]
    # The baked-in settings are valid once an admin adds the two secrets.
    settings = Settings(_env_file=None, DISCORD_TOKEN="t", PIXAZO_API_KEY="k", **env)
    assert settings.HTTP_PORT == 8080


def test_dockerfile_copies_files_that_exist_and_reach_the_build_context() -> None:
    sources = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY" and "--from=" not in rest:
            sources += [s for s in rest.split()[:-1] if not s.startswith("--")]
    assert sources, "the build stage copies the project"
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"the Dockerfile copies missing {source}"
        assert not dockerignored(source), f".dockerignore drops {source}"
    # Everything the wheel needs is copied: the packages pyproject includes, its README.
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert 'include = ["bot*", "cogs*"]' in pyproject and "pyproject.toml" in sources
    assert {"bot", "cogs", "README.md"} <= set(sources)
    assert 'migrations/*.sql"' in pyproject, "the migrations ship in the wheel"
    assert 'migrations_postgres/*.sql"' in pyproject, "PostgreSQL's too"
    # Secrets and local state never reach the image.
    for private in (".env", "data/kreabot.sqlite3", ".git/config", "bot/__pycache__/x.pyc"):
        assert dockerignored(private), f"{private} would be sent to the Docker build"


def test_the_image_command_is_python_m_bot_and_starts(tmp_path: Path) -> None:
    (cmd,) = [rest for keyword, rest in final_stage() if keyword == "CMD"]
    command = exec_form(cmd)
    assert command[:3] == ["python", "-m", "bot"]
    result = subprocess.run(
        [sys.executable, *command[1:], "--help"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "run" in result.stdout


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def run_healthcheck(port: int) -> int:
    """Run the image's HEALTHCHECK command as Docker would (with the image's HTTP_PORT)."""
    command = healthcheck_command()
    assert command[0] == "python"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *command[1:],
        env=clean_env(**{**image_env(), "HTTP_PORT": str(port)}),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(process.wait(), 30.0)


async def test_the_image_healthcheck_is_liveness_so_an_unready_bot_is_not_restarted(
    world: World,
) -> None:
    (code,) = [arg for arg in healthcheck_command() if "urlopen" in arg]
    compile(code, "HEALTHCHECK", "exec")  # valid Python
    assert "/livez" in code
    port = free_port()
    world.pixazo.set_balance(0)  # the wallet is empty: the breaker opens on the first job
    async with world.bot(HTTP_PORT=port, HTTP_HOST="127.0.0.1") as bot:
        assert await run_healthcheck(port) == 0
        handle = await world.discord.slash("imagine", {"prompt": "a kite", "seed": 1})
        await handle.wait_for_original(lambda m: "balance is empty" in m.content)
        assert bot.services.runner.breaker.reason == "balance"
        # Not ready (paused by the wallet, then without its database), yet alive: Docker
        # must not restart it in a loop for what a restart cannot fix.
        assert await readyz_status(port) == 503
        assert await run_healthcheck(port) == 0
        await bot.services.db.close()
        assert await run_healthcheck(port) == 0
    assert await run_healthcheck(port) != 0  # nothing listens any more


async def readyz_status(port: int) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
            return response.status


async def test_the_image_healthcheck_fails_when_the_bot_process_is_frozen(tmp_path: Path) -> None:
    port = free_port()
    async with both_fakes() as (pixazo, discord_fake):
        process = await BotProcess.start(
            discord_fake,
            pixazo,
            tmp_path / "kreabot.sqlite3",
            tmp_path / "run.log",
            args=["run"],
            cwd=tmp_path,
            HTTP_PORT=str(port),
            HTTP_HOST="127.0.0.1",
        )
        try:
            deadline = asyncio.get_running_loop().time() + 20.0
            while await run_healthcheck(port) != 0:  # starting
                assert process.running(), process.log()
                assert asyncio.get_running_loop().time() < deadline, process.log()
                await asyncio.sleep(0.1)
            os.kill(process.pid, signal.SIGSTOP)  # hung: the port is open, nothing answers
            try:
                assert await run_healthcheck(port) != 0  # the HEALTHCHECK's own timeout
            finally:
                os.kill(process.pid, signal.SIGCONT)
            assert await run_healthcheck(port) == 0
        finally:
            await process.kill()


def compose() -> dict[str, Any]:
    """docker-compose.yml, parsed."""
    parsed = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(parsed, dict)
    return parsed


def env_files(service: dict[str, Any]) -> list[tuple[str, bool]]:
    """(path, required) of a service's ``env_file`` (short or long syntax)."""
    value = service["env_file"]
    entries = value if isinstance(value, list) else [value]
    return [
        (entry, True) if isinstance(entry, str) else (entry["path"], entry.get("required", True))
        for entry in entries
    ]


def test_compose_runs_the_bot_with_env_file_and_a_data_volume() -> None:
    services = compose()["services"]
    bot = services["kreabot"]
    assert bot["build"] == ".", "the default target: the production image (the last stage)"
    # .env is read when present; the settings may also all come from secrets/.
    assert env_files(bot) == [(".env", False)]
    assert "profiles" not in bot, "`docker compose up` starts the bot"
    (volume,) = bot["volumes"]
    name, _, target = volume.partition(":")
    assert target == "/data" and name in compose()["volumes"]
    # SIGTERM's grace for in-flight submits (10 s) fits before Docker's SIGKILL.
    assert int(bot["stop_grace_period"].removesuffix("s")) > 10


async def test_compose_demo_profile_runs_the_real_fake_gateway_cli() -> None:
    services = compose()["services"]
    fake = services["fake-pixazo"]
    demo = services["kreabot-demo"]
    assert fake["profiles"] == ["demo"] and demo["profiles"] == ["demo"]
    command = fake["command"]
    assert command[:3] == ["python", "-m", "fake_pixazo"]
    args = fake_pixazo_parser().parse_args(command[3:])  # the fake's real flags
    # The demo bot talks to that fake with its key, on the origin the fake names its
    # image URLs after (the bot downloads only from PIXAZO_BASE_URL's origin).
    assert demo["environment"]["PIXAZO_API_KEY"] == args.api_key
    assert demo["environment"]["PIXAZO_BASE_URL"] == f"http://{args.host}:{args.port}"
    assert demo["network_mode"] == "service:fake-pixazo"
    assert demo["depends_on"]["fake-pixazo"]["condition"] == "service_healthy"
    assert env_files(demo) == env_files(services["kreabot"])
    assert (
        demo["volumes"][0].endswith(":/data") and demo["volumes"] != services["kreabot"]["volumes"]
    )
    health = fake["healthcheck"]["test"]
    assert health[:3] == ["CMD", "python", "-c"]
    compile(health[3], "fake-pixazo healthcheck", "exec")

    # The very command starts the fake (on a free port here) and prints the origin and key.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *command[1:],
        "--port",
        "0",
        "--quiet",
        cwd=REPO_ROOT,
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30.0)).decode()
        found = re.search(r"PIXAZO_BASE_URL=(\S+) PIXAZO_API_KEY=(\S+)", line)
        assert found, line
        assert found[1].startswith(f"http://{args.host}:") and found[2] == args.api_key
        status_url = f"{found[1]}/v2/requests/status/no-such-request"
        headers = {"Ocp-Apim-Subscription-Key": args.api_key}
        async with aiohttp.ClientSession() as session:
            async with session.get(status_url, headers=headers) as response:
                assert response.status == 404  # the demo key is accepted
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10.0)


# -- pinned base, the lock, the demo target, the wheel -----------------------------------------

#: The base image: a Python patch release on a named Debian release, never a moving tag.
PINNED_BASE = re.compile(r"python:(3)\.(\d+)\.(\d+)-slim-(bookworm|trixie|forky)")


def test_the_base_image_is_pinned_to_a_python_patch_and_a_debian_release() -> None:
    names = {s.name for s in stages() if s.name}
    external = {s.base for s in stages() if s.base not in names}
    assert len(external) == 1, f"one base for every stage, not {sorted(external)}"
    (base,) = external
    found = PINNED_BASE.fullmatch(base)
    assert found, f"{base} is not pinned to python:3.X.Y-slim-<debian release>"
    # The Python the image runs is one CI tests and the package declares.
    minor = f"{found[1]}.{found[2]}"
    assert (
        f"Programming Language :: Python :: {minor}" in (REPO_ROOT / "pyproject.toml").read_text()
    )


def test_the_image_installs_only_the_hash_checked_runtime_lock() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "test.lock" not in dockerfile, "no test tool in any stage"
    build = shell_commands(stage("build").instructions)
    (fetch,) = [c for c in build if "runtime.lock" in c]
    assert "--require-hashes" in fetch and "--only-binary=:all:" in fetch
    (backend,) = [c for c in build if "build.lock" in c]
    assert "--require-hashes" in backend
    (wheel,) = [c for c in build if c.startswith("pip wheel")]
    assert "--no-build-isolation" in wheel and "--no-index" in wheel, "the backend is locked"
    # The production image installs from the build stage's files only, hash-checked again.
    installs = [c for c in shell_commands(final_stage()) if c.startswith("pip install")]
    assert installs and all("--no-index" in c and "--no-deps" in c for c in installs)
    (locked,) = [c for c in installs if "runtime.lock" in c]
    assert "--require-hashes" in locked
    (project,) = [c for c in installs if "kreabot-" in c and ".whl" in c]
    assert "--no-deps" in project


def test_the_demo_target_adds_the_fake_gateway_and_the_default_image_does_not() -> None:
    demo, last = stage("demo"), stages()[-1]
    assert last.name != "demo", "`docker build .` builds the last stage: the production image"
    # Both are the same runtime; the demo only adds the test double.
    assert [s.name for s in lineage(demo)][:-1] == [s.name for s in lineage(last)][:-1]
    copies = [rest for keyword, rest in demo.instructions if keyword == "COPY"]
    assert any(rest.split()[0] == "fake_pixazo" for rest in copies)
    assert "fake_pixazo" not in json.dumps(final_stage())
    assert not any(keyword == "COPY" for s in lineage(last) for keyword, _ in s.instructions)
    # Compose builds the fake gateway from the demo target, the bots from the default.
    services = compose()["services"]
    fake = services["fake-pixazo"]
    assert fake["build"] == {"context": ".", "target": "demo"}
    assert fake["image"] != services["kreabot"]["image"]
    assert services["kreabot-demo"]["build"] == "." and services["kreabot"]["build"] == "."
    # The demo image's own command is the one compose runs.
    (cmd,) = [rest for keyword, rest in demo.instructions if keyword == "CMD"]
    assert exec_form(cmd) == fake["command"]


def test_the_wheel_carries_bot_and_cogs_and_no_test_double(tmp_path: Path) -> None:
    """Build the wheel as the Dockerfile does (no build isolation: the locked setuptools)."""
    source = tmp_path / "source"
    # The project's files and, to show they stay out, the test double and the tests; never
    # .env, secrets/ or data/, which must not be copied around.
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in ("bot", "cogs", "fake_pixazo", "tests", "bench"):
        shutil.copytree(REPO_ROOT / name, source / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    assert (source / "fake_pixazo").is_dir() and (source / "tests").is_dir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    command += ["--no-index", "--wheel-dir", str(tmp_path / "dist"), str(source)]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("kreabot-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = archive.read(metadata).decode()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"bot", "cogs", metadata.split("/")[0]}, sorted(tops)
    assert "bot/__main__.py" in names and "cogs/imagine.py" in names
    for folder in ("migrations", "migrations_postgres"):
        assert any(n.startswith(f"bot/storage/{folder}/") and n.endswith(".sql") for n in names)
    assert not [n for n in names if n.startswith(("fake_pixazo/", "tests/", "bench/"))]
    assert not [n for n in names if "fake_pixazo" in n or "/tests/" in n]
    # What the wheel asks for is what pyproject.toml says (the security floors included).
    assert "Requires-Python: >=3.11" in meta
    assert re.search(r"^Requires-Dist: aiohttp<4,>=3\.14\.3$", meta, re.MULTILINE)
    assert re.search(r"^Requires-Dist: [Pp]illow>=13\.0$", meta, re.MULTILINE)


# -- compose: hardening, secrets, the webhook port ----------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["kreabot", "fake-pixazo", "kreabot-demo", "postgres", "kreabot-0", "kreabot-1", "kreabot-2"],
)
def test_compose_services_are_hardened_and_their_logs_rotated(name: str) -> None:
    service = compose()["services"][name]
    assert service["read_only"] is True, "a read-only root: the database is on its volume"
    assert "/tmp" in [entry.split(":")[0] for entry in service["tmpfs"]]
    assert service["cap_drop"] == ["ALL"]
    # Only PostgreSQL's entrypoint gets some back (to hand its data folder to its user).
    allowed = (
        {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"} if name == "postgres" else set()
    )
    assert set(service.get("cap_add", [])) <= allowed
    assert "no-new-privileges:true" in service["security_opt"]
    logging_ = service["logging"]
    assert logging_["driver"] == "json-file"
    assert re.fullmatch(r"\d+[kmg]", logging_["options"]["max-size"])
    assert int(logging_["options"]["max-file"]) >= 2


def test_compose_gives_the_secrets_as_docker_secrets_the_bot_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed = compose()
    everything = parsed["secrets"]
    assert set(everything) == {
        "DISCORD_TOKEN",
        "PIXAZO_API_KEY",
        "WEBHOOK_SECRET",
        "DATABASE_URL",  # the cluster profile's bots
        "POSTGRES_PASSWORD",  # the cluster profile's PostgreSQL
    }
    for name, spec in everything.items():
        assert spec == {"file": f"./secrets/{name}"}
        assert dockerignored(f"secrets/{name}"), "a secret file would reach the build context"
    secrets = {name: spec for name, spec in everything.items() if name != "POSTGRES_PASSWORD"}
    for name, spec in secrets.items():
        assert name in Settings.model_fields  # mounted at /run/secrets/<NAME>: the setting
        assert spec == {"file": f"./secrets/{name}"}
        assert dockerignored(f"secrets/{name}"), "a secret file would reach the build context"
    ignore = (REPO_ROOT / "secrets" / ".gitignore").read_text().splitlines()
    assert "*" in ignore and "!.gitignore" in ignore, "secrets/ must never be committed"
    services = parsed["services"]
    assert sorted(services["kreabot"]["secrets"]) == sorted(set(secrets) - {"DATABASE_URL"})
    assert services["kreabot-demo"]["secrets"] == ["DISCORD_TOKEN"]
    assert sorted(services["kreabot-1"]["secrets"]) == sorted(secrets)
    assert services["postgres"]["secrets"] == ["POSTGRES_PASSWORD"]
    # The bot reads /run/secrets by itself; files laid out as compose mounts them work.
    assert Path("/run/secrets") == bot_config.DEFAULT_SECRETS_DIR
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    run_secrets = tmp_path / "run-secrets"
    run_secrets.mkdir()
    for name in secrets:
        value = f"{name.lower()}-value-from-a-file"
        if name == "DATABASE_URL":
            value = "postgresql://kreabot:from-a-file@postgres:5432/kreabot"
        (run_secrets / name).write_text(value + "\n")
    monkeypatch.setattr(bot_config, "DEFAULT_SECRETS_DIR", run_secrets)
    monkeypatch.delenv("SECRETS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    settings = bot_config.load_settings(env_file=None)
    assert settings.DISCORD_TOKEN.get_secret_value() == "discord_token-value-from-a-file"
    assert settings.WEBHOOK_SECRET is not None
    assert settings.DATABASE_URL is not None and "from-a-file@postgres" in str(
        settings.DATABASE_URL.get_secret_value()
    )


def test_compose_cluster_profile_splits_every_shard_between_its_bots_on_one_postgres(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = compose()["services"]
    bots = {
        name: s
        for name, s in services.items()
        if name.startswith("kreabot-") and name[-1].isdigit()
    }
    assert sorted(bots) == ["kreabot-0", "kreabot-1", "kreabot-2"]
    for service in [*bots.values(), services["postgres"]]:
        # Never started by a plain `docker compose up` (the single bot is).
        assert service["profiles"] == ["cluster"]
    for service in bots.values():
        assert service["depends_on"] == {"postgres": {"condition": "service_healthy"}}
        assert service["image"] == services["kreabot"]["image"]
    assert "ports" not in services["postgres"], "only the bots reach the database"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == (
        "/run/secrets/POSTGRES_PASSWORD"
    )
    # The settings each bot gets are valid and together run every shard exactly once.
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    shards: list[int] = []
    counts = set()
    for service in bots.values():
        settings = Settings(
            _env_file=None,
            DISCORD_TOKEN="t",
            PIXAZO_API_KEY="k",
            DATABASE_URL="postgresql://kreabot@postgres:5432/kreabot",
            **service["environment"],
        )
        assert settings.own_shards() is not None
        shards += settings.own_shards() or []
        counts.add(settings.SHARD_COUNT)
    (count,) = counts
    assert sorted(shards) == list(range(count))
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    assert "--profile cluster up -d postgres kreabot-0 kreabot-1 kreabot-2" in text
    assert "--profile cluster up -d" in (REPO_ROOT / "README.md").read_text()


def test_compose_documents_the_webhook_port() -> None:
    port = image_env()["HTTP_PORT"]
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    bot = compose()["services"]["kreabot"]
    assert "ports" not in bot, "polling needs no published port; nothing is exposed by default"
    assert f'#   - "127.0.0.1:{port}:{port}"' in text, "the webhook port, commented, on loopback"
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"127.0.0.1:{port}:{port}" in readme and "WEBHOOK_PUBLIC_URL" in readme
