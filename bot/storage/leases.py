"""What bot processes sharing one database agree on through it: who runs which job (leases),
which processes are alive (heartbeats) and whether the gateway's breaker is open.

A job belongs to the process whose id is in its ``owner`` column until
``lease_expires_at``; the owner's heartbeat pushes that forward every few seconds. When a
process dies its leases lapse and another process claims the jobs, by batch (a batch's
images are posted together, so one process holds them all), passing over rows another
transaction holds (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite one process uses the
file). Claiming, renewing and releasing are conditional on the owner, so two processes
never hold one job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from bot.storage.db import Database

#: The states in which a job needs a process (jobs.ACTIVE_STATES, as SQL).
_ACTIVE = "('pending', 'submitting', 'submitted', 'processing', 'delivering')"
#: How many ids go in one ``IN (…)`` list.
_CHUNK = 500


@dataclass(frozen=True)
class Lease:
    """This process's name in the ``owner`` column, and how long a lease lasts."""

    owner: str
    seconds: float

    def until(self, now: float) -> float:
        """When a lease taken or renewed at ``now`` lapses."""
        return now + self.seconds


@dataclass(frozen=True)
class Heartbeat:
    """What one heartbeat found: the jobs whose lease it renewed, and the live processes."""

    renewed: frozenset[int]
    live_processes: int


@dataclass(frozen=True)
class SharedBreaker:
    """The breaker's row: ``reason`` (None: closed), who changed it last, and when."""

    reason: str | None
    changed_by: str | None
    changed_at: float


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


class LeaseStore:
    """Leases, heartbeats and the shared breaker, in the database."""

    def __init__(self, db: Database, lease: Lease, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self.lease = lease
        self._clock = clock

    @property
    def owner(self) -> str:
        """This process's id."""
        return self.lease.owner

    # -- processes -------------------------------------------------------------------

    async def register(self, shards: str) -> None:
        """Say this process is alive (and which shards it runs)."""
        now = self._clock()
        await self._db.write(
            "INSERT INTO processes (id, started_at, heartbeat_at, shards) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, "
            "shards = excluded.shards",
            (self.owner, now, now, shards),
        )

    async def beat(self) -> Heartbeat:
        """Renew this process's heartbeat and the leases of every active job it owns; count
        the processes alive (a heartbeat within a lease), forgetting those long gone."""
        now = self._clock()
        async with self._db.transaction() as connection:
            await connection.execute(
                "UPDATE processes SET heartbeat_at = ? WHERE id = ?", (now, self.owner)
            )
            rows = await connection.fetchall(
                f"UPDATE jobs SET lease_expires_at = ? WHERE owner = ? AND state IN {_ACTIVE} "
                "RETURNING id",
                (self.lease.until(now), self.owner),
            )
            await connection.execute(
                "DELETE FROM processes WHERE heartbeat_at < ?", (now - 10 * self.lease.seconds,)
            )
            live = await connection.fetchone(
                "SELECT COUNT(*) FROM processes WHERE heartbeat_at >= ?",
                (now - self.lease.seconds,),
            )
        return Heartbeat(frozenset(int(row[0]) for row in rows), int(live[0]) if live else 1)

    async def leave(self) -> int:
        """Release every lease of this process (another process, or this one restarted,
        takes its jobs at once) and remove it from the live ones; returns the jobs released."""
        async with self._db.transaction() as connection:
            released = await connection.execute(
                "UPDATE jobs SET owner = NULL, lease_expires_at = NULL "
                f"WHERE owner = ? AND state IN {_ACTIVE}",
                (self.owner,),
            )
            await connection.execute("DELETE FROM processes WHERE id = ?", (self.owner,))
        return released.rowcount

    # -- jobs ------------------------------------------------------------------------

    async def claim(
        self, *, only: Sequence[int] | None = None, everything: bool = False
    ) -> list[int]:
        """Take the active jobs whose lease lapsed (or that have none), whole batches at a
        time; ``only``: of these jobs alone; ``everything``: whatever their lease (on start,
        when no other process can be using the database). Returns the ids taken, in order.

        The rows are locked while they are looked at, passing over those another
        transaction holds (a process renewing or claiming them right now); a batch some
        of whose jobs were passed over is left for later, so that it is never split."""
        now = self._clock()
        lapsed = "" if everything else "AND (lease_expires_at IS NULL OR lease_expires_at < ?)"
        args: list[object] = [] if everything else [now]
        where = f"state IN {_ACTIVE} {lapsed}"
        if only is not None:
            if not only:
                return []
            where += f" AND id IN ({', '.join('?' for _ in only)})"
            args += list(only)
        async with self._db.transaction() as connection:
            skip = connection.dialect.lock_rows_skip_locked
            rows = await connection.fetchall(
                f"SELECT id, batch_id FROM jobs WHERE {where} ORDER BY id {skip}", args
            )
            taken = {int(row[0]) for row in rows}
            batches = {int(row[1]) for row in rows if row[1] is not None}
            for batch_id in sorted(batches):
                # Every active job of the batch must be in hand (the batch's own lapsed
                # with the others, being renewed together), else none of it is taken.
                siblings = await connection.fetchall(
                    f"SELECT id FROM jobs WHERE batch_id = ? AND state IN {_ACTIVE}", (batch_id,)
                )
                ids = {int(row[0]) for row in siblings}
                members = {int(row[0]) for row in rows if row[1] == batch_id}
                if not ids <= members:
                    taken -= members
            ordered = sorted(taken)
            for chunk in _chunks(ordered):
                marks = ", ".join("?" for _ in chunk)
                await connection.execute(
                    f"UPDATE jobs SET owner = ?, lease_expires_at = ? WHERE id IN ({marks})",
                    (self.owner, self.lease.until(now), *chunk),
                )
        return ordered

    async def owners(self, job_ids: Sequence[int]) -> dict[int, tuple[str | None, str]]:
        """(owner, state) of each of these jobs that still exists."""
        found: dict[int, tuple[str | None, str]] = {}
        for chunk in _chunks(list(job_ids)):
            marks = ", ".join("?" for _ in chunk)
            for row in await self._db.fetchall(
                f"SELECT id, owner, state FROM jobs WHERE id IN ({marks})", tuple(chunk)
            ):
                found[int(row[0])] = (row[1], str(row[2]))
        return found

    async def holder(self, job_id: int) -> tuple[str | None, bool] | None:
        """Who holds an active job and whether that lease still runs; None when the job is
        not active (or does not exist)."""
        row = await self._db.fetchone(
            f"SELECT owner, lease_expires_at FROM jobs WHERE id = ? AND state IN {_ACTIVE}",
            (job_id,),
        )
        if row is None:
            return None
        expires = row[1]
        return row[0], expires is not None and float(expires) >= self._clock()

    async def holds(self, job_id: int) -> bool:
        """Renew this process's lease of one job; False when it is not this process's any
        more (taken over, or finished elsewhere)."""
        written = await self._db.write(
            "UPDATE jobs SET lease_expires_at = ? "
            f"WHERE id = ? AND owner = ? AND state IN {_ACTIVE}",
            (self.lease.until(self._clock()), job_id, self.owner),
        )
        return written.rowcount == 1

    # -- identifying -----------------------------------------------------------------

    async def identify_slot(self, bucket: int, interval: float) -> float:
        """Take the next identify of ``bucket`` for this process: 0 when taken (no other
        process identified in that bucket for ``interval`` seconds), else the seconds to
        wait before asking again."""
        key = f"identify:{bucket}"
        now = self._clock()
        async with self._db.transaction() as connection:
            await connection.lock("identify", bucket)
            row = await connection.fetchone(
                "SELECT expires_at FROM cooldowns WHERE key = ?", (key,)
            )
            if row is not None and float(row[0]) > now:
                return float(row[0]) - now
            await connection.execute(
                "INSERT INTO cooldowns (key, expires_at) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at",
                (key, now + interval),
            )
        return 0.0

    # -- the breaker -----------------------------------------------------------------

    async def breaker(self) -> SharedBreaker:
        """The shared breaker as it stands."""
        row = await self._db.fetchone(
            "SELECT reason, opened_by, updated_at FROM breaker WHERE id = 1"
        )
        if row is None:
            return SharedBreaker(None, None, 0.0)
        return SharedBreaker(row[0], row[1], float(row[2] or 0.0))

    async def open_breaker(self, reason: str) -> bool:
        """Open the shared breaker for ``reason``; True when this changed it (it was closed,
        or open for another reason): the caller is the one process to say so."""
        now = self._clock()
        written = await self._db.write(
            "UPDATE breaker SET reason = ?, opened_at = ?, opened_by = ?, updated_at = ? "
            "WHERE id = 1 AND (reason IS NULL OR reason != ?)",
            (reason, now, self.owner, now, reason),
        )
        return written.rowcount == 1

    async def close_breaker(self) -> bool:
        """Close the shared breaker; True when it was open."""
        now = self._clock()
        written = await self._db.write(
            "UPDATE breaker SET reason = NULL, opened_by = ?, updated_at = ? "
            "WHERE id = 1 AND reason IS NOT NULL",
            (self.owner, now),
        )
        return written.rowcount == 1
