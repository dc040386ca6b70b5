"""The job table: plain SQL returning typed :class:`Job` objects."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiosqlite

from bot.pixazo import TextToImageRequest


class JobState(StrEnum):
    """Where a job stands. Every transition is written before the next step starts."""

    PENDING = "pending"  # row written, not yet sent
    SUBMITTING = "submitting"  # the paid submit is in flight
    SUBMITTED = "submitted"  # the gateway took it (request_id known)
    PROCESSING = "processing"  # the gateway is generating it
    DELIVERING = "delivering"  # the image exists and is being posted
    COMPLETED = "completed"  # the result is in Discord
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # the bot died while the submit was in flight
    CANCELLED = "cancelled"


#: States of jobs that still need work from the runner.
ACTIVE_STATES = (
    JobState.PENDING,
    JobState.SUBMITTING,
    JobState.SUBMITTED,
    JobState.PROCESSING,
    JobState.DELIVERING,
)
FINAL_STATES = (JobState.COMPLETED, JobState.FAILED, JobState.INTERRUPTED, JobState.CANCELLED)


@dataclass
class Job:
    """One image generation, as stored."""

    id: int
    guild_id: int | None
    channel_id: int
    user_id: int
    state: JobState
    params: TextToImageRequest
    sources: dict[str, str] = field(default_factory=dict)
    refs: list[dict[str, Any]] = field(default_factory=list)
    request_id: str | None = None
    polling_url: str | None = None
    media_url: str | None = None
    application_id: int | None = None
    interaction_token: str | None = None
    token_expires_at: float | None = None
    message_id: int | None = None
    result_message_id: int | None = None
    filesize_limit: int = 10 * 1024 * 1024
    error_kind: str | None = None
    error_text: str | None = None
    parent_id: int | None = None
    variant: str | None = None
    batch_id: int | None = None
    batch_index: int | None = None
    created_at: float = 0.0
    submitted_at: float | None = None
    finished_at: float | None = None
    delivered_at: float | None = None
    updated_at: float = 0.0

    @property
    def seed(self) -> int:
        """The seed actually used (always set on stored jobs)."""
        return self.params.seed if self.params.seed is not None else 0

    def token_valid(self, now: float) -> bool:
        """Whether the interaction token can still edit the job's message."""
        return bool(
            self.interaction_token
            and self.application_id
            and self.token_expires_at is not None
            and now < self.token_expires_at
        )


@dataclass
class NewJob:
    """What a cog hands over to create a job."""

    guild_id: int | None
    channel_id: int
    user_id: int
    params: TextToImageRequest
    sources: dict[str, str] = field(default_factory=dict)
    refs: list[dict[str, Any]] = field(default_factory=list)
    application_id: int | None = None
    interaction_token: str | None = None
    token_expires_at: float | None = None
    filesize_limit: int = 10 * 1024 * 1024
    parent_id: int | None = None
    variant: str | None = None
    batch_id: int | None = None
    batch_index: int | None = None


_JSON_COLUMNS = {"params", "sources", "refs"}
_UPDATABLE = {
    "state",
    "request_id",
    "polling_url",
    "media_url",
    "interaction_token",
    "token_expires_at",
    "message_id",
    "result_message_id",
    "error_kind",
    "error_text",
    "submitted_at",
    "finished_at",
    "delivered_at",
    "refs",
    "channel_id",
    "batch_id",
    "batch_index",
}


def _row_to_job(row: aiosqlite.Row) -> Job:
    data = dict(row)
    data["state"] = JobState(data["state"])
    data["params"] = TextToImageRequest.model_validate_json(data["params"])
    data["sources"] = json.loads(data["sources"])
    data["refs"] = json.loads(data["refs"])
    return Job(**data)


class JobRepository:
    """Reads and writes jobs. One instance per database connection."""

    def __init__(self, db: aiosqlite.Connection, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    async def create(self, new: NewJob) -> Job:
        """Insert a pending job and return it."""
        now = self._clock()
        cursor = await self._db.execute(
            """INSERT INTO jobs (guild_id, channel_id, user_id, state, params, sources, refs,
                   application_id, interaction_token, token_expires_at, filesize_limit,
                   parent_id, variant, batch_id, batch_index, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                new.guild_id,
                new.channel_id,
                new.user_id,
                JobState.PENDING.value,
                new.params.model_dump_json(exclude_none=True),
                json.dumps(new.sources),
                json.dumps(new.refs),
                new.application_id,
                new.interaction_token,
                new.token_expires_at,
                new.filesize_limit,
                new.parent_id,
                new.variant,
                new.batch_id,
                new.batch_index,
                now,
                now,
            ),
        )
        await self._db.commit()
        job_id = cursor.lastrowid
        assert job_id is not None
        job = await self.get(job_id)
        assert job is not None
        return job

    async def get(self, job_id: int) -> Job | None:
        """The job with this id, or None."""
        async with self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        return _row_to_job(row) if row else None

    async def by_result_message(self, message_id: int) -> Job | None:
        """The job whose image is in this message (or whose own message it is)."""
        async with self._db.execute(
            "SELECT * FROM jobs WHERE result_message_id = ? OR message_id = ? ORDER BY id LIMIT 1",
            (message_id, message_id),
        ) as cursor:
            row = await cursor.fetchone()
        return _row_to_job(row) if row else None

    async def update(self, job: Job, **changes: Any) -> Job:
        """Persist ``changes`` (and apply them to ``job``), in one statement."""
        unknown = set(changes) - _UPDATABLE
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        now = self._clock()
        columns = [*changes, "updated_at"]
        values = [
            json.dumps(v) if k in _JSON_COLUMNS else (v.value if isinstance(v, JobState) else v)
            for k, v in changes.items()
        ]
        values.append(now)
        assignments = ", ".join(f"{name} = ?" for name in columns)
        await self._db.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ?",  # column names come from _UPDATABLE
            (*values, job.id),
        )
        await self._db.commit()
        for key, value in changes.items():
            setattr(job, key, value)
        job.updated_at = now
        return job

    async def in_states(self, states: Iterable[JobState]) -> list[Job]:
        """Jobs in any of ``states``, oldest first."""
        names = [s.value for s in states]
        marks = ", ".join("?" for _ in names)
        async with self._db.execute(
            f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id",
            names,
        ) as cursor:
            rows = await cursor.fetchall()
        return [_row_to_job(row) for row in rows]

    async def children(self, job_id: int) -> list[Job]:
        """Jobs made from this one (variations), oldest first."""
        async with self._db.execute(
            "SELECT * FROM jobs WHERE parent_id = ? ORDER BY id", (job_id,)
        ) as cursor:
            rows = await cursor.fetchall()
        return [_row_to_job(row) for row in rows]

    async def batch(self, batch_id: int) -> list[Job]:
        """The jobs of a batch, in order."""
        async with self._db.execute(
            "SELECT * FROM jobs WHERE batch_id = ? ORDER BY batch_index, id", (batch_id,)
        ) as cursor:
            rows = await cursor.fetchall()
        return [_row_to_job(row) for row in rows]

    async def count_requested_since(
        self, guild_id: int | None, since: float, user_id: int | None = None
    ) -> int:
        """Images asked for since ``since`` that count against daily caps.

        Cancelled jobs and jobs refused before reaching the gateway do not count.
        """
        query = (
            "SELECT COUNT(*) FROM jobs WHERE guild_id IS ? AND created_at >= ? "
            "AND state != 'cancelled' AND NOT (state = 'failed' AND request_id IS NULL)"
        )
        args: list[Any] = [guild_id, since]
        if user_id is not None:
            query += " AND user_id = ?"
            args.append(user_id)
        async with self._db.execute(query, args) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def for_member(self, guild_id: int | None, user_id: int, limit: int = 15) -> list[Job]:
        """A member's most recent jobs in a server, newest first."""
        async with self._db.execute(
            "SELECT * FROM jobs WHERE guild_id IS ? AND user_id = ? ORDER BY id DESC LIMIT ?",
            (guild_id, user_id, limit),
        ) as cursor:
            rows = await cursor.fetchall()
        return [_row_to_job(row) for row in rows]

    async def usage(self, guild_id: int, since: float) -> list[UsageRow]:
        """Per member and UTC day: images submitted, failures, and ERROR jobs (not charged)."""
        async with self._db.execute(
            """SELECT user_id, date(submitted_at, 'unixepoch') AS day,
                      COUNT(*) AS submitted,
                      SUM(state IN ('failed', 'interrupted')) AS failed,
                      SUM(error_kind = 'error') AS not_charged
               FROM jobs
               WHERE guild_id = ? AND submitted_at >= ? AND request_id IS NOT NULL
               GROUP BY user_id, day ORDER BY day, user_id""",
            (guild_id, since),
        ) as cursor:
            rows = await cursor.fetchall()
        return [
            UsageRow(int(r[0]), str(r[1]), int(r[2]), int(r[3] or 0), int(r[4] or 0)) for r in rows
        ]

    async def recent_generation_seconds(self, limit: int) -> list[float]:
        """Seconds from submit to the gateway's result being noticed, of the latest
        completed jobs (newest first)."""
        async with self._db.execute(
            "SELECT finished_at - submitted_at FROM jobs WHERE state = 'completed' "
            "AND submitted_at IS NOT NULL AND finished_at IS NOT NULL ORDER BY id DESC LIMIT ?",
            (limit,),
        ) as cursor:
            rows = await cursor.fetchall()
        return [float(row[0]) for row in rows]

    async def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state."""
        async with self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state") as cursor:
            rows = await cursor.fetchall()
        return {str(row[0]): int(row[1]) for row in rows}

    async def prune_guild(self, guild_id: int, before: float) -> int:
        """Delete a server's finished jobs created before ``before``; returns how many."""
        names = ", ".join(f"'{state.value}'" for state in FINAL_STATES)
        cursor = await self._db.execute(
            f"DELETE FROM jobs WHERE guild_id = ? AND created_at < ? AND state IN ({names})",
            (guild_id, before),
        )
        await self._db.commit()
        return cursor.rowcount


@dataclass(frozen=True)
class UsageRow:
    """One member's usage on one day."""

    user_id: int
    day: str
    submitted: int
    failed: int
    not_charged: int
