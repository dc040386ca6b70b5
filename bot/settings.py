"""kreabot's settings: one pydantic-settings object read from the environment, ``.env``
and secret files (Docker secrets: one file per setting in ``/run/secrets``, or SECRETS_DIR).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from bot.logs import LogFormat
from bot.storage.interface import POSTGRES_SCHEMES

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

#: Where Docker puts the secrets a service is given (``secrets:`` in docker-compose.yml).
DEFAULT_SECRETS_DIR = Path("/run/secrets")
#: The environment variable naming another folder of secret files ("" turns them off).
SECRETS_DIR_VARIABLE = "SECRETS_DIR"

#: How each setting can be fixed, shown when it is missing or malformed.
HINTS: dict[str, str] = {
    "DISCORD_TOKEN": "set it to your bot's token from the Discord developer portal (Bot tab)",
    "PIXAZO_API_KEY": "set it to your Pixazo subscription key (pixazo.ai, API keys)",
    "PIXAZO_BASE_URL": "use an http(s) origin such as https://gateway.pixazo.ai",
    "DATABASE_PATH": "use a writable file path such as data/kreabot.sqlite3",
    "DATABASE_URL": (
        "use a URL such as postgresql://kreabot:PASSWORD@db.example.org:5432/kreabot, "
        "or unset it to keep the SQLite file DATABASE_PATH"
    ),
    "LOG_LEVEL": "use one of DEBUG, INFO, WARNING, ERROR",
    "SHARD_IDS": "use shard numbers and ranges such as 0,1,2 or 0-3",
    "LOG_FORMAT": "use plain (one readable line per event) or json (one JSON object per line)",
    "HTTP_PORT": "use a TCP port number such as 8080",
    "WEBHOOK_PUBLIC_URL": "use the public https URL that reaches HTTP_PORT",
}


def _parse_shard_ids(text: str) -> list[int]:
    """``"0,2,5-7"`` -> ``[0, 2, 5, 6, 7]``; ValueError when it is not such a list."""
    ids: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"SHARD_IDS has {part!r}, not a shard number or range")
        ids.update(range(int(first), int(last) + 1) if dash else [int(first)])
    return sorted(ids)


class SettingsError(Exception):
    """A setting is missing or malformed; the message is one line that is safe to print."""


class Settings(BaseSettings):
    """Every setting kreabot reads. Secrets are ``SecretStr`` and never printed."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=True,
        hide_input_in_errors=True,
        # `DISCORD_TOKEN=` left empty in .env (as in .env.example) means "not set here", so
        # a value from a secret file is not masked by an empty line.
        env_ignore_empty=True,
    )

    DISCORD_TOKEN: SecretStr
    PIXAZO_API_KEY: SecretStr
    PIXAZO_BASE_URL: str = "https://gateway.pixazo.ai"
    DATABASE_PATH: Path = Path("data/kreabot.sqlite3")
    #: A PostgreSQL database (``postgresql://user:password@host:port/name``) instead of the
    #: SQLite file DATABASE_PATH, for several bot processes sharing one database. Secret:
    #: it may hold a password.
    DATABASE_URL: SecretStr | None = None
    LOG_LEVEL: LogLevel = "INFO"
    #: ``plain``: one readable line per event; ``json``: one JSON object per line (ts, level,
    #: logger, message, job_id, guild_id, request_id, interaction_id, exc).
    LOG_FORMAT: LogFormat = "plain"

    #: Register the slash commands in this guild only (instant; for testing).
    DEV_GUILD_ID: int | None = None
    #: Jobs talking to the gateway at once, across all servers.
    MAX_CONCURRENT_JOBS: Annotated[int, Field(ge=1, le=10_000)] = 20
    #: Status requests per second, across all jobs (and all processes sharing a database).
    STATUS_POLLS_PER_SECOND: Annotated[float, Field(gt=0, le=1000)] = 10.0
    #: First status poll this many seconds after a submit, then every POLL_INTERVAL_SECONDS,
    #: growing to at most POLL_MAX_INTERVAL_SECONDS.
    POLL_FIRST_SECONDS: Annotated[float, Field(ge=0.01, le=600)] = 2.0
    POLL_INTERVAL_SECONDS: Annotated[float, Field(ge=0.01, le=600)] = 1.0
    POLL_MAX_INTERVAL_SECONDS: Annotated[float, Field(ge=0.01, le=600)] = 5.0
    #: Learn the gateway's recent generation times and poll around them (see bot/polling.py),
    #: using the POLL_* schedule above only until enough jobs finished; False: always POLL_*.
    POLL_ADAPTIVE: bool = True
    #: Give up on a job the gateway has not finished after this many seconds.
    JOB_TIMEOUT_SECONDS: Annotated[float, Field(gt=0, le=86_400)] = 600.0
    #: Jobs of one member at the gateway at once; more wait in line (per-server override).
    MEMBER_MAX_IN_FLIGHT: Annotated[int, Field(ge=1, le=100)] = 2
    #: Images one member may ask for per day (UTC); 0 = no limit (per-server override).
    MEMBER_DAILY_IMAGES: Annotated[int, Field(ge=0)] = 50
    #: Images one server may ask for per day (UTC); 0 = no limit (per-server override).
    SERVER_DAILY_IMAGES: Annotated[int, Field(ge=0)] = 500
    #: Estimated price of one image in US dollars, for /usage.
    PRICE_PER_IMAGE: Annotated[float, Field(ge=0)] = 0.07
    #: After a 402 or an outage, try one submission again after this many seconds.
    BREAKER_PROBE_SECONDS: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    #: A job paused by the breaker gives up after waiting this long.
    QUEUE_GIVE_UP_SECONDS: Annotated[float, Field(gt=0)] = 6 * 3600.0
    #: Embedded HTTP server (health, metrics, webhooks): off unless a port is given.
    HTTP_PORT: Annotated[int, Field(ge=1, le=65535)] | None = None
    HTTP_HOST: str = "127.0.0.1"
    #: Public base URL of the HTTP server; when set, Pixazo calls it back instead of polling.
    WEBHOOK_PUBLIC_URL: str | None = None
    #: Secret for the per-job webhook tokens (HMAC); required with WEBHOOK_PUBLIC_URL.
    WEBHOOK_SECRET: SecretStr | None = None
    #: In webhook mode, poll anyway this often so a lost webhook never loses a job.
    WEBHOOK_SAFETY_POLL_SECONDS: Annotated[float, Field(gt=0, le=3600)] = 30.0
    #: Days a removed server's job history is kept before it is deleted.
    RETENTION_DAYS: Annotated[int, Field(ge=0, le=3650)] = 30
    #: Largest reference attachment accepted, in bytes.
    MAX_REFERENCE_BYTES: Annotated[int, Field(ge=1024)] = 10 * 1024 * 1024
    #: Largest generated image downloaded from the gateway, in bytes.
    MAX_DOWNLOAD_BYTES: Annotated[int, Field(ge=1024)] = 50 * 1024 * 1024
    #: Largest image decoded, in pixels (width x height): generated results, members'
    #: references and grids. A file declaring more is refused before it is decoded (a 20 KB
    #: PNG can declare 13000x13000 pixels, 645 MiB decoded). 50 MP covers Krea's outputs
    #: (1-4 MP) and phones' high-resolution photos (48-50 MP); one decode costs at most
    #: about 4 bytes per pixel (200 MB) per IMAGE_THREADS thread, usually far less.
    MAX_IMAGE_PIXELS: Annotated[int, Field(ge=1_000_000, le=500_000_000)] = 50_000_000
    #: Threads decoding and re-encoding images; more images wait in line (bounds memory).
    IMAGE_THREADS: Annotated[int, Field(ge=1, le=16)] = 2
    #: Longest prompt accepted by /imagine.
    MAX_PROMPT_LENGTH: Annotated[int, Field(ge=10, le=4000)] = 1500
    #: Gateway shards in all (every process must agree); default: Discord's recommendation.
    SHARD_COUNT: Annotated[int, Field(ge=1, le=100_000)] | None = None
    #: The shards this process runs: ``0,1,2`` or ``0-3`` (needs SHARD_COUNT).
    SHARD_IDS: str | None = None
    #: Or: this process is number CLUSTER_INDEX (from 0) of CLUSTER_COUNT and runs a
    #: contiguous range of the SHARD_COUNT shards.
    CLUSTER_INDEX: Annotated[int, Field(ge=0, le=10_000)] | None = None
    CLUSTER_COUNT: Annotated[int, Field(ge=1, le=10_000)] | None = None
    #: A process holds each of its jobs for this many seconds, renewed by a heartbeat
    #: every quarter of it; when a process dies, another takes its jobs once they lapse.
    LEASE_SECONDS: Annotated[float, Field(ge=2, le=3600)] = 20.0

    def own_shards(self) -> list[int] | None:
        """The shard ids this process runs (None: every shard, as Discord recommends)."""
        if self.SHARD_IDS:
            return _parse_shard_ids(self.SHARD_IDS)
        if self.CLUSTER_COUNT is not None and self.CLUSTER_INDEX is not None:
            assert self.SHARD_COUNT is not None  # checked by _shards_are_consistent
            per = -(-self.SHARD_COUNT // self.CLUSTER_COUNT)
            first = self.CLUSTER_INDEX * per
            return list(range(first, min(self.SHARD_COUNT, first + per)))
        return None

    @model_validator(mode="after")
    def _shards_are_consistent(self) -> Settings:
        clustered = self.CLUSTER_INDEX is not None or self.CLUSTER_COUNT is not None
        if self.SHARD_IDS and clustered:
            raise ValueError("give SHARD_IDS or CLUSTER_INDEX/CLUSTER_COUNT, not both")
        if (self.SHARD_IDS or clustered) and self.SHARD_COUNT is None:
            raise ValueError(
                "SHARD_IDS and CLUSTER_INDEX need SHARD_COUNT: every process must agree on "
                "the total number of shards"
            )
        if clustered and (self.CLUSTER_INDEX is None or self.CLUSTER_COUNT is None):
            raise ValueError("CLUSTER_INDEX and CLUSTER_COUNT go together: set both")
        if self.CLUSTER_INDEX is not None and self.CLUSTER_COUNT is not None:
            if self.CLUSTER_INDEX >= self.CLUSTER_COUNT:
                raise ValueError("CLUSTER_INDEX must be below CLUSTER_COUNT (it counts from 0)")
            assert self.SHARD_COUNT is not None
            if self.CLUSTER_COUNT > self.SHARD_COUNT:
                raise ValueError("CLUSTER_COUNT cannot exceed SHARD_COUNT (a process per shard)")
        if self.SHARD_IDS:
            ids = _parse_shard_ids(self.SHARD_IDS)
            assert self.SHARD_COUNT is not None
            if not ids or any(i >= self.SHARD_COUNT for i in ids):
                raise ValueError(
                    f"SHARD_IDS must name shards from 0 to {self.SHARD_COUNT - 1} (SHARD_COUNT)"
                )
        return self

    @field_validator("DISCORD_TOKEN", "PIXAZO_API_KEY")
    @classmethod
    def _not_blank(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if not secret.strip():
            raise ValueError("is empty")
        if secret != secret.strip() or any(ch.isspace() for ch in secret):
            raise ValueError("contains spaces")
        return value

    @field_validator("DATABASE_URL", mode="before")
    @classmethod
    def _database_url(cls, value: object) -> object:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not isinstance(value, str) or not value.strip():
            return None  # an empty secret file, like an empty line, is not a setting
        value = value.strip()
        # The message never repeats the value: it may hold a password.
        if urlsplit(value).scheme not in POSTGRES_SCHEMES:
            raise ValueError("is not a postgresql:// URL")
        return value

    @field_validator("PIXAZO_BASE_URL")
    @classmethod
    def _origin(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("is not an http(s) URL")
        return value.rstrip("/")

    @field_validator("WEBHOOK_PUBLIC_URL")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("is not an http(s) URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _webhook_needs_server(self) -> Settings:
        if self.WEBHOOK_PUBLIC_URL and self.HTTP_PORT is None:
            raise ValueError("WEBHOOK_PUBLIC_URL needs HTTP_PORT: set the port the bot listens on")
        if self.WEBHOOK_PUBLIC_URL and (
            self.WEBHOOK_SECRET is None or len(self.WEBHOOK_SECRET.get_secret_value()) < 16
        ):
            raise ValueError(
                "WEBHOOK_PUBLIC_URL needs WEBHOOK_SECRET: set it to 16+ random characters"
            )
        return self

    @field_validator("LOG_LEVEL", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("LOG_FORMAT", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("WEBHOOK_SECRET", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # An empty secret file (compose needs the file even when .env holds the value).
        return None if isinstance(value, str) and not value.strip() else value


def _describe(error: dict[str, object]) -> str:
    loc = error.get("loc") or ()
    if not loc:  # a rule across settings: its message names them
        return str(error.get("msg", "the settings are inconsistent")).removeprefix("Value error, ")
    name = str(loc[0]) if isinstance(loc, tuple) else str(loc)
    kind = error.get("type")
    if kind == "missing":
        problem = "is not set"
    else:
        problem = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
        if not problem.startswith(("is ", "contains ")):
            problem = f"is invalid ({problem})"
    hint = HINTS.get(name)
    return f"{name} {problem}: {hint}" if hint else f"{name} {problem}"


def secrets_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The folder of secret files: ``SECRETS_DIR`` if set, else ``/run/secrets`` if present.

    Each file is named after a setting (``DISCORD_TOKEN``, ``PIXAZO_API_KEY``,
    ``WEBHOOK_SECRET``, or any other) and holds its value; surrounding whitespace, such as
    a final newline, is ignored. The environment and ``.env`` take precedence over files.
    ``SECRETS_DIR=`` (empty) reads no files.
    """
    environ = os.environ if environ is None else environ
    configured = environ.get(SECRETS_DIR_VARIABLE)
    if configured is not None:
        if not configured.strip():
            return None
        path = Path(configured).expanduser()
        if not path.is_dir():
            raise SettingsError(
                f"{SECRETS_DIR_VARIABLE} is not a directory ({path}): "
                "name the folder holding one file per secret, or unset it"
            )
        return path
    return DEFAULT_SECRETS_DIR if DEFAULT_SECRETS_DIR.is_dir() else None


def load_settings(env_file: str | Path | None = ".env") -> Settings:
    """Read the settings, or raise :class:`SettingsError` with one clear line.

    Sources, first wins: the environment, ``env_file``, the files in :func:`secrets_dir`,
    the defaults.
    """
    folder = secrets_dir()
    try:
        return Settings(_env_file=env_file, _secrets_dir=folder)
    except (OSError, SourceError) as exc:  # e.g. a secret file that cannot be read
        cause = exc if isinstance(exc, OSError) else exc.__cause__
        if isinstance(cause, OSError):
            where = cause.filename or folder
            raise SettingsError(
                f"cannot read the secret file {where}: {cause.strerror or cause}; "
                "make it readable by the bot's user (uid 10001 in the Docker image)"
            ) from None
        raise SettingsError(" ".join(str(exc).split())) from None
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        first = _describe(dict(errors[0]))
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise SettingsError(first + more) from None
