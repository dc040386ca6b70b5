"""A throwaway PostgreSQL server for the tests, and one fresh database per test.

:meth:`PostgresServer.start` runs ``initdb`` in a new temporary folder (in memory, under
``/dev/shm``, when there is room) and starts the server with ``pg_ctl`` on a Unix socket in
that folder (no TCP port, so nothing else on the machine can reach it or collide with it),
durability turned off (``fsync=off``: a test server's data need not survive a crash). As
root, the server runs as the ``postgres`` user (``initdb`` refuses root), which owns the
folder. :meth:`PostgresServer.stop` stops it (``-m immediate``) and deletes the folder.

The binaries are looked for in ``$KREABOT_PG_BIN``, beside ``initdb`` on ``PATH``, in
``pg_config --bindir`` and in Debian's ``/usr/lib/postgresql/<version>/bin``. Without them,
the PostgreSQL tests are skipped, unless ``KREABOT_REQUIRE_POSTGRES=1`` (``.ci/run`` sets
it): then they fail.

``KREABOT_TEST_DATABASE=postgres`` makes the end-to-end fixtures (``world``, ``stage``) use
a PostgreSQL database instead of a SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

#: A folder holding initdb, pg_ctl and postgres (else they are looked for).
PG_BIN_VARIABLE = "KREABOT_PG_BIN"
#: "1": a PostgreSQL server that cannot be found fails the tests instead of skipping them.
REQUIRE_VARIABLE = "KREABOT_REQUIRE_POSTGRES"
#: "postgres": the end-to-end fixtures use PostgreSQL ("sqlite", the default: a file).
TEST_DATABASE_VARIABLE = "KREABOT_TEST_DATABASE"
#: The server's superuser (trusted on the socket: no password).
USER = "kreabot"
TOOLS = ("initdb", "pg_ctl", "postgres")

T = TypeVar("T")


def postgres_required() -> bool:
    """Whether a missing PostgreSQL fails the tests rather than skipping them."""
    return os.environ.get(REQUIRE_VARIABLE, "") not in ("", "0")


def end_to_end_backend() -> str:
    """The backend the end-to-end fixtures use: ``sqlite`` or ``postgres``."""
    value = os.environ.get(TEST_DATABASE_VARIABLE, "sqlite").strip().lower() or "sqlite"
    if value not in ("sqlite", "postgres"):
        raise ValueError(f"{TEST_DATABASE_VARIABLE} must be sqlite or postgres, not {value!r}")
    return value


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))


def find_bindir() -> Path | None:
    """The folder of the PostgreSQL server binaries, or None."""
    candidates: list[Path] = []
    configured = os.environ.get(PG_BIN_VARIABLE)
    if configured:
        candidates.append(Path(configured))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            found = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            )
            candidates.append(Path(found.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for candidate in candidates:
        if all((candidate / tool).is_file() for tool in TOOLS):
            return candidate
    return None


def _scratch_folder() -> str:
    """Where the server's folder goes: in memory (``/dev/shm``) when there is room, so a
    busy disk cannot slow the tests down, else the temporary folder. Near the root either
    way: a Unix socket's path is limited to about 107 bytes."""
    shm = "/dev/shm"
    with contextlib.suppress(OSError):
        stats = os.statvfs(shm)
        if os.access(shm, os.W_OK | os.X_OK) and stats.f_bavail * stats.f_frsize > 1 << 30:
            return shm
    return tempfile.gettempdir() if len(tempfile.gettempdir()) < 60 else "/tmp"


def run_in_thread(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine ``make()`` to completion on an event loop of its own, in another
    thread (so it also works from code already running in a loop); return its result."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(make()))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="postgres-helper")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


@dataclass
class PostgresServer:
    """A PostgreSQL server in a temporary folder, reached on its Unix socket."""

    bindir: Path
    base: Path
    owner: str | None  # the user the server runs as when the tests run as root
    _numbers: itertools.count[int]

    @property
    def data(self) -> Path:
        """The data directory."""
        return self.base / "data"

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.base / "server.log"

    def url(self, database: str = "postgres") -> str:
        """The URL of one of the server's databases (over the socket, as the superuser)."""
        return f"postgresql://{USER}@/{database}?host={self.base}"

    @classmethod
    def start(cls, bindir: Path) -> PostgresServer:
        """initdb and start a new server; raises RuntimeError (with the log) if it cannot."""
        base = Path(tempfile.mkdtemp(prefix="kreabot-pg-", dir=_scratch_folder()))
        owner = None
        if os.geteuid() == 0:
            owner = "postgres"
            try:
                user = pwd.getpwnam(owner)
            except KeyError:
                shutil.rmtree(base, ignore_errors=True)
                raise RuntimeError(
                    "the tests run as root and initdb refuses root, but there is no "
                    "'postgres' user to run the server as: install Debian's postgresql "
                    "package (it creates one), or run the tests as another user"
                ) from None
            os.chown(base, user.pw_uid, user.pw_gid)
        server = cls(bindir, base, owner, itertools.count(1))
        try:
            server._run(
                "initdb",
                "-D",
                str(server.data),
                "-A",
                "trust",
                "-U",
                USER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            )
            options = " ".join(
                [
                    f"-k {shlex.quote(str(base))}",
                    "-c listen_addresses=",
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                    "-c max_connections=200",
                ]
            )
            server._run(
                "pg_ctl",
                "-D",
                str(server.data),
                "-l",
                str(server.log_path),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            )
        except RuntimeError:
            server._remove()
            raise
        return server

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self.owner is not None:
            command = ["runuser", "-u", self.owner, "--", *command]
        try:
            subprocess.run(
                command,
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=True,
                timeout=120,
            )
        except subprocess.CalledProcessError as exc:
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise RuntimeError(
                f"{tool} failed (exit {exc.returncode}):\n{exc.stdout}{exc.stderr}{log}"
            ) from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"{tool} could not run: {exc}") from None

    def stop(self) -> None:
        """Stop the server at once and delete its folder."""
        with contextlib.suppress(RuntimeError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self._remove()

    def _remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"kreabot_test_{os.getpid()}_{next(self._numbers)}"

        async def create() -> None:
            connection = await asyncpg.connect(self.url())
            try:
                await connection.execute(f'CREATE DATABASE "{name}"')
            finally:
                await connection.close()

        run_in_thread(create)
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`create_database` (its connections cut)."""
        name = url.rpartition("/")[2].partition("?")[0]

        async def drop() -> None:
            connection = await asyncpg.connect(self.url())
            try:
                await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await connection.close()

        run_in_thread(drop)


def query(url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    """The rows of one query, as dicts, over a connection of its own (from any thread or
    loop: the end-to-end checks read rows from synchronous code)."""

    async def fetch() -> list[dict[str, Any]]:
        connection = await asyncpg.connect(url)
        try:
            return [dict(row) for row in await connection.fetch(sql, *args)]
        finally:
            await connection.close()

    return run_in_thread(fetch)
