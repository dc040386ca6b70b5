"""Who may talk to the gateway next: the queue, the per-member limit and the breaker.

Pending jobs wait in order (oldest first). A job is admitted when the gateway has a free
slot (the global concurrency limit), its member has fewer jobs in flight than allowed,
and the breaker is closed. The breaker opens on 402 (the wallet is empty) or on a streak
of 5xx/timeouts, stops every submission, and lets one probe through after a delay.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

#: Why the breaker is open.
BALANCE = "balance"
OUTAGE = "outage"
UNAUTHORIZED = "unauthorized"  # the key was refused (revoked, or a quota): an admin must act


class Breaker:
    """Stops submissions while the gateway cannot take them; probes again after a delay."""

    def __init__(
        self,
        *,
        probe_after: float = 60.0,
        streak_to_open: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.probe_after = probe_after
        self.streak_to_open = streak_to_open
        self._clock = clock
        self.reason: str | None = None
        self.opened_at: float | None = None
        self.next_probe_at = 0.0
        self.probing = False
        self._streak = 0

    @property
    def is_open(self) -> bool:
        """Whether submissions are stopped."""
        return self.reason is not None

    def open(self, reason: str) -> bool:
        """Open (or keep open) the breaker; True when it was closed before."""
        was_closed = self.reason is None
        self.reason = reason
        self.probing = False
        if was_closed:
            self.opened_at = self._clock()
        self.next_probe_at = self._clock() + self.probe_after
        return was_closed

    def close(self) -> bool:
        """Close it; True when it was open."""
        was_open = self.reason is not None
        self.reason = None
        self.opened_at = None
        self.probing = False
        self._streak = 0
        return was_open

    def record_transient(self) -> bool:
        """A 5xx, timeout or connection error; True when this opened the breaker."""
        self._streak += 1
        if self._streak >= self.streak_to_open and self.reason is None:
            return self.open(OUTAGE)
        return False

    def record_success(self) -> bool:
        """The gateway answered; True when this closed the breaker."""
        self._streak = 0
        return self.close() if self.reason is not None else False

    def probe_due(self) -> bool:
        """Whether one job may be let through to test the gateway."""
        return self.is_open and not self.probing and self._clock() >= self.next_probe_at


@dataclass
class Waiter:
    job_id: int
    member: tuple[int | None, int]
    member_limit: int
    admitted: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Admission:
    """The ordered queue of pending jobs and the accounting of jobs in flight."""

    def __init__(self, max_in_flight: int, breaker: Breaker) -> None:
        self.max_in_flight = max_in_flight
        self.breaker = breaker
        self._waiting: dict[int, Waiter] = {}
        self._in_flight: dict[int, tuple[int | None, int]] = {}
        self._per_member: Counter[tuple[int | None, int]] = Counter()
        #: The job let through to test an open breaker, until it leaves the gateway.
        self.probe_job: int | None = None

    # -- accounting --------------------------------------------------------------

    def add_in_flight(self, job_id: int, member: tuple[int | None, int]) -> None:
        """Count a job that already reached the gateway (e.g. resumed after a restart)."""
        if job_id not in self._in_flight:
            self._in_flight[job_id] = member
            self._per_member[member] += 1

    def release(self, job_id: int) -> None:
        """A job left the gateway (finished, failed or sent back to the queue)."""
        member = self._in_flight.pop(job_id, None)
        if member is not None:
            self._per_member[member] -= 1
            if self._per_member[member] <= 0:
                del self._per_member[member]  # bounded: members come and go
        if job_id == self.probe_job:
            self.probe_job = None
            if self.breaker.reason is not None and self.breaker.probing:
                # The probe ended without a verdict (the job failed on its own, or was
                # cancelled): keep the breaker open and let another job probe later.
                self.breaker.open(self.breaker.reason)
        self.pump()

    def in_flight(self, member: tuple[int | None, int] | None = None) -> int:
        """Jobs in flight, overall or of one member."""
        return len(self._in_flight) if member is None else self._per_member[member]

    # -- the queue ---------------------------------------------------------------

    def enqueue(self, job_id: int, member: tuple[int | None, int], member_limit: int) -> Waiter:
        """Put a job in line (in job-id order) and return its waiter."""
        waiter = Waiter(job_id, member, max(1, member_limit))
        self._waiting[job_id] = waiter
        if len(self._waiting) > 1 and job_id < max(self._waiting):
            self._waiting = dict(sorted(self._waiting.items()))
        self.pump()
        return waiter

    def waiter(self, job_id: int) -> Waiter | None:
        """The job's place in line, if it waits."""
        return self._waiting.get(job_id)

    def set_member_limit(self, job_id: int, member_limit: int) -> None:
        """The waiting job's member limit, once read (a job is put in line at once, with
        the strictest limit, so that its place follows its id even while the limit is read)."""
        waiter = self._waiting.get(job_id)
        if waiter is not None:
            waiter.member_limit = max(1, member_limit)
            self.pump()

    def withdraw(self, job_id: int) -> bool:
        """Take a job out of line (cancelled, given up); True if it was waiting."""
        waiter = self._waiting.pop(job_id, None)
        if waiter is not None and not waiter.admitted.done():
            waiter.admitted.cancel()
        self.pump()
        return waiter is not None

    def position(self, job_id: int) -> int:
        """1-based place in line, or 0 when not waiting."""
        for index, waiting_id in enumerate(self._waiting, start=1):
            if waiting_id == job_id:
                return index
        return 0

    def blocked_by_member_limit(self, job_id: int) -> bool:
        """Whether the job waits because its member already has jobs in flight."""
        waiter = self._waiting.get(job_id)
        return bool(waiter and self._per_member[waiter.member] >= waiter.member_limit)

    def waiting(self) -> list[int]:
        """Ids of the jobs in line, in order."""
        return list(self._waiting)

    def pump(self) -> None:
        """Admit every job that may go now, in order."""
        if self.breaker.is_open:
            if not self.breaker.probe_due():
                return
            probe = self._first_eligible()
            if probe is not None:
                self.breaker.probing = True
                self.probe_job = probe.job_id
                self._admit(probe)
            return
        while len(self._in_flight) < self.max_in_flight:
            waiter = self._first_eligible()
            if waiter is None:
                return
            self._admit(waiter)

    def _first_eligible(self) -> Waiter | None:
        if len(self._in_flight) >= self.max_in_flight:
            return None
        for waiter in self._waiting.values():
            if self._per_member[waiter.member] < waiter.member_limit:
                return waiter
        return None

    def _admit(self, waiter: Waiter) -> None:
        del self._waiting[waiter.job_id]
        self.add_in_flight(waiter.job_id, waiter.member)
        if not waiter.admitted.done():
            waiter.admitted.set_result(None)
