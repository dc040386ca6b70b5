"""The job table: plain SQL returning typed :class:`Job` objects."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter

from bot.pixazo import TextToImageRequest
from bot.storage.db import Connection, Database, Queryable, Row
from bot.storage.leases import Lease


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


class AlreadyRetried(Exception):
    """A Retry was already made from this job."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} was already retried")
        self.job_id = job_id


class Reference(BaseModel):
    """A style reference image of a job, and where a copy of it lives.

    ``url`` is what the member gave (a signed Discord CDN URL, valid about 24 h); once the
    result is posted, ``message_id``/``filename`` name the small copy kept on the result
    message, whose URL can be signed afresh by fetching that message again.
    """

    model_config = ConfigDict(extra="ignore")

    role: Literal["reference", "avoid", "result"] = "reference"
    strength: float = 1.0
    url: str | None = None
    proxy_url: str | None = None
    filename: str | None = None
    content_type: str | None = None
    size: int | None = None
    message_id: int | None = None


_REFERENCES = TypeAdapter(list[Reference])
#: Decides whether new jobs may be created from (member's, server's) images used today;
#: raises to refuse.
Admit = Callable[[int, int], None]


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
    refs: list[Reference] = field(default_factory=list)
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
    batch_size: int = 1
    retried_by: int | None = None
    owner: str | None = None
    lease_expires_at: float | None = None
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
    refs: list[Reference] = field(default_factory=list)
    application_id: int | None = None
    interaction_token: str | None = None
    token_expires_at: float | None = None
    filesize_limit: int = 10 * 1024 * 1024
    parent_id: int | None = None
    variant: str | None = None


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


def _row_to_job(row: Row) -> Job:
    data = dict(row)
    data["state"] = JobState(data["state"])
    data["params"] = TextToImageRequest.model_validate_json(data["params"])
    data["sources"] = json.loads(data["sources"])
    data["refs"] = _REFERENCES.validate_json(data["refs"])
    return Job(**data)


def _encode(column: str, value: Any) -> Any:
    if column == "refs":
        return _REFERENCES.dump_json(value, exclude_none=True).decode()
    if column in _JSON_COLUMNS:
        return json.dumps(value)
    return value.value if isinstance(value, JobState) else value


#: What :meth:`JobRepository.mark_submitting` found: the job is this process's to send,
#: its member already has as many jobs at the gateway as allowed (across every process),
#: or the job is not this process's any more (cancelled, or taken over).
SubmitClaim = Literal["go", "busy", "lost"]
#: The states in which a job is at the gateway (counted against a member's in-flight limit).
IN_FLIGHT_STATES = (JobState.SUBMITTING, JobState.SUBMITTED, JobState.PROCESSING)


class JobRepository:
    """Reads and writes jobs.

    With a ``lease``, the jobs this process creates or reopens are its own (their
    ``owner``), and the transitions that cost money are made only while they still are.
    """

    def __init__(
        self, db: Database, clock: Callable[[], float] = time.time, lease: Lease | None = None
    ) -> None:
        self._db = db
        self._clock = clock
        self.lease = lease

    @property
    def clock(self) -> Callable[[], float]:
        """The wall clock jobs are timed by."""
        return self._clock

    async def create(self, new: NewJob) -> Job:
        """Insert a pending job and return it."""
        (job,) = await self.create_many([new])
        return job

    async def create_many(
        self,
        batch: list[NewJob],
        *,
        admit: Admit | None = None,
        since: float = 0.0,
        grouped: bool = True,
        retry_of: int | None = None,
    ) -> list[Job]:
        """Insert pending jobs in one transaction and return them. More than one job makes
        a batch (unless ``grouped`` is False): they share ``batch_id`` (the first job's id)
        and know their place in it.

        With ``admit``, the images the batch's member and server asked for since ``since``
        are counted in the same transaction and handed to ``admit(member_used,
        server_used)``, which raises to refuse: counting and inserting are one step, so
        concurrent requests cannot both squeeze under a cap.

        With ``retry_of``, that job is claimed in the same transaction (its ``retried_by``
        set to the new job): a second claim finds it taken and raises :class:`AlreadyRetried`.
        """
        async with self._db.transaction() as connection:
            if retry_of is not None:
                claimed = await connection.execute(
                    "UPDATE jobs SET retried_by = 0 WHERE id = ? AND retried_by IS NULL",
                    (retry_of,),
                )
                if claimed.rowcount != 1:
                    raise AlreadyRetried(retry_of)
            if admit is not None and batch:
                first = batch[0]
                # One admission per server at a time, across connections and processes,
                # until this transaction ends (caps are per member within a server and per
                # server, so the server is the unit). On PostgreSQL an advisory lock
                # (pg_advisory_xact_lock) rather than SERIALIZABLE: concurrent requests of
                # one server would all conflict there and need retrying, admit() and all,
                # while the lock simply queues them, leaves other servers alone and is let
                # go at commit or rollback. On SQLite the transaction is already the only
                # writer.
                await connection.lock("admit", first.guild_id)
                member = await self._count(connection, first.guild_id, since, first.user_id)
                server = await self._count(connection, first.guild_id, since)
                admit(member, server)
            jobs = await self._insert(connection, batch, grouped=grouped and len(batch) > 1)
            if retry_of is not None and jobs:
                await connection.execute(
                    "UPDATE jobs SET retried_by = ? WHERE id = ?", (jobs[0].id, retry_of)
                )
            return jobs

    async def reopen(self, job: Job, state: JobState) -> bool:
        """Put a failed or interrupted job back to work in ``state`` (its paid request is
        polled again, or its image fetched again); False when it is not failed any more
        (another press got there first)."""
        now = self._clock()
        owner = self.lease.owner if self.lease else None
        until = self.lease.until(now) if self.lease else None
        cursor = await self._db.write(
            "UPDATE jobs SET state = ?, error_kind = NULL, error_text = NULL, finished_at = NULL,"
            " submitted_at = ?, updated_at = ?, owner = ?, lease_expires_at = ?"
            " WHERE id = ? AND state IN ('failed', 'interrupted')",
            (state.value, now, now, owner, until, job.id),
        )
        if cursor.rowcount != 1:
            return False
        job.state, job.error_kind, job.error_text = state, None, None
        job.finished_at, job.submitted_at, job.updated_at = None, now, now
        return True

    async def mark_submitting(self, job: Job, member_limit: int) -> SubmitClaim:
        """Mark a pending job as being sent, on disk before it returns (the paid request
        leaves only after this): "go". Unless its member already has ``member_limit`` jobs
        at the gateway, counted in the database so that it holds across every process
        ("busy": it stays pending), or the job is not pending and this process's any more
        ("lost": cancelled, or taken over by another process)."""
        now = self._clock()
        owned = "AND owner = ?" if self.lease is not None else ""
        owner_args: tuple[Any, ...] = (self.lease.owner,) if self.lease is not None else ()
        async with self._db.transaction(durable=True) as connection:
            # One member's submits take turns, whichever process makes them.
            await connection.lock("in-flight", job.guild_id, job.user_id)
            marks = ", ".join("?" for _ in IN_FLIGHT_STATES)
            row = await connection.fetchone(
                f"SELECT COUNT(*) FROM jobs WHERE guild_id {connection.dialect.null_safe_equals} ?"
                f" AND user_id = ? AND state IN ({marks}) AND id != ?",
                (job.guild_id, job.user_id, *(s.value for s in IN_FLIGHT_STATES), job.id),
            )
            if row is not None and int(row[0]) >= member_limit:
                pending = await connection.fetchone(
                    f"SELECT 1 FROM jobs WHERE id = ? AND state = 'pending' {owned}",
                    (job.id, *owner_args),
                )
                return "busy" if pending is not None else "lost"
            written = await connection.execute(
                "UPDATE jobs SET state = ?, submitted_at = ?, updated_at = ? "
                f"WHERE id = ? AND state = 'pending' {owned}",
                (JobState.SUBMITTING.value, now, now, job.id, *owner_args),
            )
            if written.rowcount != 1:
                return "lost"
        job.state, job.submitted_at, job.updated_at = JobState.SUBMITTING, now, now
        return "go"

    async def mark_submitted(self, job: Job, request_id: str, polling_url: str | None) -> bool:
        """Record the request the gateway took; False when the job is not this process's
        any more (another process took it over while the submit was in flight, and has
        marked it interrupted): the request id is then only logged."""
        now = self._clock()
        owned = "AND owner = ?" if self.lease is not None else ""
        owner_args: tuple[Any, ...] = (self.lease.owner,) if self.lease is not None else ()
        written = await self._db.write(
            "UPDATE jobs SET state = ?, request_id = ?, polling_url = ?, submitted_at = ?,"
            f" updated_at = ? WHERE id = ? AND state = 'submitting' {owned}",
            (JobState.SUBMITTED.value, request_id, polling_url, now, now, job.id, *owner_args),
        )
        if written.rowcount != 1:
            return False
        job.state, job.request_id, job.polling_url = JobState.SUBMITTED, request_id, polling_url
        job.submitted_at = job.updated_at = now
        return True

    async def cancel_pending(self, job: Job) -> bool:
        """Cancel a job that is still pending, whichever process holds it; False when it is
        not pending any more."""
        now = self._clock()
        written = await self._db.write(
            "UPDATE jobs SET state = ?, finished_at = ?, updated_at = ? "
            "WHERE id = ? AND state = 'pending'",
            (JobState.CANCELLED.value, now, now, job.id),
        )
        if written.rowcount != 1:
            return False
        job.state, job.finished_at, job.updated_at = JobState.CANCELLED, now, now
        return True

    async def _insert(
        self, connection: Connection, batch: list[NewJob], *, grouped: bool
    ) -> list[Job]:
        now = self._clock()
        jobs: list[Job] = []
        for index, new in enumerate(batch):
            batch_id = jobs[0].id if grouped and jobs else None
            values = {
                "guild_id": new.guild_id,
                "channel_id": new.channel_id,
                "user_id": new.user_id,
                "state": JobState.PENDING.value,
                "params": new.params.model_dump_json(exclude_none=True),
                "sources": json.dumps(new.sources),
                "refs": _encode("refs", new.refs),
                "application_id": new.application_id,
                "interaction_token": new.interaction_token,
                "token_expires_at": new.token_expires_at,
                "filesize_limit": new.filesize_limit,
                "parent_id": new.parent_id,
                "variant": new.variant,
                "batch_id": batch_id,
                "batch_index": index if grouped else None,
                "batch_size": len(batch) if grouped else 1,
                "created_at": now,
                "updated_at": now,
            }
            if self.lease is not None:
                values["owner"] = self.lease.owner
                values["lease_expires_at"] = self.lease.until(now)
            marks = ", ".join("?" for _ in values)
            job_id = await connection.insert_returning_id(
                f"INSERT INTO jobs ({', '.join(values)}) VALUES ({marks})", tuple(values.values())
            )
            jobs.append(
                Job(
                    id=job_id,
                    state=JobState.PENDING,
                    guild_id=new.guild_id,
                    channel_id=new.channel_id,
                    user_id=new.user_id,
                    params=new.params,
                    sources=dict(new.sources),
                    refs=list(new.refs),
                    application_id=new.application_id,
                    interaction_token=new.interaction_token,
                    token_expires_at=new.token_expires_at,
                    filesize_limit=new.filesize_limit,
                    parent_id=new.parent_id,
                    variant=new.variant,
                    batch_id=batch_id,
                    batch_index=index if grouped else None,
                    batch_size=len(batch) if grouped else 1,
                    owner=values.get("owner"),
                    lease_expires_at=values.get("lease_expires_at"),
                    created_at=now,
                    updated_at=now,
                )
            )
        if grouped:
            await connection.execute(
                "UPDATE jobs SET batch_id = ? WHERE id = ?", (jobs[0].id, jobs[0].id)
            )
            jobs[0].batch_id = jobs[0].id
        return jobs

    async def get(self, job_id: int) -> Job | None:
        """The job with this id, or None."""
        row = await self._db.fetchone("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _row_to_job(row) if row else None

    async def many(self, job_ids: Iterable[int]) -> list[Job]:
        """The jobs with these ids that exist, in id order."""
        ids = sorted(set(job_ids))
        jobs: list[Job] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            rows = await self._db.fetchall(
                f"SELECT * FROM jobs WHERE id IN ({marks}) ORDER BY id", tuple(chunk)
            )
            jobs += [_row_to_job(row) for row in rows]
        return jobs

    async def by_result_message(self, message_id: int) -> Job | None:
        """The job whose image is in this message (or whose own message it is)."""
        row = await self._db.fetchone(
            "SELECT * FROM jobs WHERE result_message_id = ? OR message_id = ? ORDER BY id LIMIT 1",
            (message_id, message_id),
        )
        return _row_to_job(row) if row else None

    async def update(self, job: Job, *, durable: bool = False, **changes: Any) -> Job:
        """Persist ``changes`` (and apply them to ``job``), in one statement; ``durable``: on
        disk before this returns, even across a power loss."""
        unknown = set(changes) - _UPDATABLE
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        now = self._clock()
        columns = [*changes, "updated_at"]
        values = [_encode(k, v) for k, v in changes.items()]
        values.append(now)
        assignments = ", ".join(f"{name} = ?" for name in columns)
        await self._db.write(
            f"UPDATE jobs SET {assignments} WHERE id = ?",  # column names come from _UPDATABLE
            (*values, job.id),
            durable=durable,
        )
        for key, value in changes.items():
            setattr(job, key, value)
        job.updated_at = now
        return job

    async def set_message(self, jobs: list[Job], message_id: int) -> None:
        """Remember the message that shows these jobs (one statement for a whole batch)."""
        now = self._clock()
        await self._db.write_many(
            "UPDATE jobs SET message_id = ?, updated_at = ? WHERE id = ?",
            [(message_id, now, job.id) for job in jobs],
        )
        for job in jobs:
            job.message_id, job.updated_at = message_id, now

    async def complete(self, job_ids: Iterable[int], message_id: int) -> None:
        """Mark jobs whose image is now posted in ``message_id`` as completed."""
        now = self._clock()
        await self._db.write_many(
            "UPDATE jobs SET state = ?, result_message_id = ?, delivered_at = ?, updated_at = ? "
            "WHERE id = ?",
            [(JobState.COMPLETED.value, message_id, now, now, job_id) for job_id in job_ids],
        )

    async def in_states(self, states: Iterable[JobState]) -> list[Job]:
        """Jobs in any of ``states``, oldest first."""
        names = [s.value for s in states]
        if not names:
            return []
        marks = ", ".join("?" for _ in names)
        rows = await self._db.fetchall(
            f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id", names
        )
        return [_row_to_job(row) for row in rows]

    async def children(self, job_id: int) -> list[Job]:
        """Jobs made from this one (variations), oldest first."""
        rows = await self._db.fetchall(
            "SELECT * FROM jobs WHERE parent_id = ? ORDER BY id", (job_id,)
        )
        return [_row_to_job(row) for row in rows]

    async def batch(self, batch_id: int) -> list[Job]:
        """The jobs of a batch, in order."""
        rows = await self._db.fetchall(
            "SELECT * FROM jobs WHERE batch_id = ? ORDER BY batch_index, id", (batch_id,)
        )
        return [_row_to_job(row) for row in rows]

    @staticmethod
    async def _count(
        connection: Queryable,
        guild_id: int | None,
        since: float,
        user_id: int | None = None,
    ) -> int:
        """Images asked for since ``since`` that count against daily caps.

        Cancelled jobs and jobs refused before reaching the gateway do not count.
        """
        query = (
            f"SELECT COUNT(*) FROM jobs WHERE guild_id {connection.dialect.null_safe_equals} ? "
            "AND created_at >= ? "
            "AND state != 'cancelled' AND NOT (state = 'failed' AND request_id IS NULL)"
        )
        args: list[Any] = [guild_id, since]
        if user_id is not None:
            query += " AND user_id = ?"
            args.append(user_id)
        row = await connection.fetchone(query, args)
        return int(row[0]) if row else 0

    async def requested_since(
        self, guild_id: int | None, since: float, user_id: int | None = None
    ) -> int:
        """Images asked for since ``since`` that count against daily caps."""
        return await self._count(self._db, guild_id, since, user_id)

    async def for_member(self, guild_id: int | None, user_id: int, limit: int = 15) -> list[Job]:
        """A member's most recent jobs in a server, newest first."""
        rows = await self._db.fetchall(
            f"SELECT * FROM jobs WHERE guild_id {self._db.dialect.null_safe_equals} ? "
            "AND user_id = ? ORDER BY id DESC LIMIT ?",
            (guild_id, user_id, limit),
        )
        return [_row_to_job(row) for row in rows]

    async def usage(self, guild_id: int, since: float) -> list[UsageRow]:
        """Per member and UTC day: images submitted (those the gateway took, and those it may
        have taken: an uncertain submit counts as paid), failures, and ERROR jobs (not
        charged)."""
        rows = await self._db.fetchall(
            f"""SELECT user_id, {self._db.dialect.utc_day("submitted_at")} AS day,
                      COUNT(*) AS submitted,
                      SUM(CASE WHEN state IN ('failed', 'interrupted') THEN 1 ELSE 0 END)
                          AS failed,
                      SUM(CASE WHEN error_kind = 'error' THEN 1 ELSE 0 END) AS not_charged
               FROM jobs
               WHERE guild_id = ? AND submitted_at >= ?
                 AND (request_id IS NOT NULL OR state = 'interrupted')
               GROUP BY user_id, day ORDER BY day, user_id""",
            (guild_id, since),
        )
        return [
            UsageRow(int(r[0]), str(r[1]), int(r[2]), int(r[3] or 0), int(r[4] or 0)) for r in rows
        ]

    async def recent_generation_seconds(self, limit: int) -> list[float]:
        """Seconds from submit to the gateway's result being noticed, of the latest
        completed jobs (newest first)."""
        rows = await self._db.fetchall(
            "SELECT finished_at - submitted_at FROM jobs WHERE state = 'completed' "
            "AND submitted_at IS NOT NULL AND finished_at IS NOT NULL ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [float(row[0]) for row in rows]

    async def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state."""
        rows = await self._db.fetchall("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        return {str(row[0]): int(row[1]) for row in rows}

    async def count_in_states(self, states: Iterable[JobState]) -> dict[str, int]:
        """How many jobs are in each of ``states`` (read through the state index)."""
        names = [s.value for s in states]
        marks = ", ".join("?" for _ in names)
        sql = f"SELECT state, COUNT(*) FROM jobs WHERE state IN ({marks}) GROUP BY state"
        return {str(row[0]): int(row[1]) for row in await self._db.fetchall(sql, names)}

    async def prune_guild(self, guild_id: int, before: float) -> int:
        """Delete a server's finished jobs created before ``before``; returns how many."""
        names = ", ".join(f"'{state.value}'" for state in FINAL_STATES)
        cursor = await self._db.write(
            f"DELETE FROM jobs WHERE guild_id = ? AND created_at < ? AND state IN ({names})",
            (guild_id, before),
        )
        return cursor.rowcount


@dataclass(frozen=True)
class UsageRow:
    """One member's usage on one day."""

    user_id: int
    day: str
    submitted: int
    failed: int
    not_charged: int
