"""Poll schedules learned from the gateway's recent generation times.

The documented workflow polls every 5 s, so a finished image waits 2.5 s on average before
anyone notices. Polling faster everywhere costs status requests and the gateway's rate
limit. :class:`PollPlanner` spends about as many requests as that workflow but puts them
where results actually appear: it remembers how long recent jobs took (``completed_at -
created_at``, from the gateway's own answers) and picks, from a small family of schedules,
the cheapest one whose lag *simulated on those durations* meets the goals (median <= 1 s,
95th percentile <= 2 s), within a budget of ``budget_ratio`` times the requests of the
documented workflow on the same durations. When no schedule meets the goals within the
budget, it takes the one with the lowest lag.

The family (see :class:`Plan`): the first poll at a low quantile of recent durations, then
a poll every ``gap`` seconds up to a high quantile, then intervals growing by ``factor`` to
``cap`` (5 s, so a job slower than every recent one is never polled more lazily than the
documented workflow). Until ``min_samples`` durations are known, the configured fixed
schedule is used.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from bot.pixazo import StatusResponse

log = logging.getLogger(__name__)

#: The documented workflow polls every 5 s; the request budget is measured against it.
REFERENCE_INTERVAL = 5.0
#: Lag goals (seconds from COMPLETED to the bot noticing): median, 95th percentile.
GOAL_P50, GOAL_P95 = 1.0, 2.0
#: A plan must beat the goals by this factor in simulation (recent jobs are only a sample).
GOAL_MARGIN = 0.7
#: Polls go out at this share of STATUS_POLLS_PER_SECOND (the gateway's limit): they reach
#: the gateway with some jitter, and a limit counted exactly would turn a poll that left on
#: time into a 429 (and a pause for every job).
RATE_HEADROOM = 0.9


@dataclass(frozen=True)
class PollSchedule:
    """Delays between status polls: ``first``, then growing by ``factor`` up to ``cap``."""

    first: float = 2.0
    interval: float = 1.0
    factor: float = 1.3
    cap: float = 5.0

    def delays(self) -> Iterator[float]:
        """An endless iterator of delays in seconds."""
        yield self.first
        delay = self.interval
        while True:
            yield delay
            delay = min(self.cap, delay * self.factor)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter between attempts of a call that may be repeated
    (a status poll, a download, a submit the gateway provably did not take)."""

    base_delay: float = 0.5
    max_delay: float = 20.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based); ``Retry-After`` wins."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay * 3)
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


FIRST_QUANTILES = (0.0, 0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3)
GAPS = (*(0.5 + 0.125 * step for step in range(21)), 4.0, 5.0)  # 0.5 to 3 s, 4 s, 5 s
UNTIL_QUANTILES = (0.8, 0.9, 0.95, 0.98, 1.0)


@dataclass(frozen=True)
class Plan:
    """Poll at ``first`` s after the submit, then every ``gap`` s until ``until``, then at
    intervals growing by ``factor`` up to ``cap``. ``polls``, ``lag_p50`` and ``lag_p95``
    are what it gave on the durations it was chosen on."""

    first: float
    gap: float
    until: float
    factor: float = 1.5
    cap: float = REFERENCE_INTERVAL
    polls: float = 0.0
    lag_p50: float = 0.0
    lag_p95: float = 0.0

    def times(self) -> Iterator[float]:
        """Poll times in seconds since the submit, endlessly."""
        t = self.first
        yield t
        gap = self.gap
        while True:
            if t >= self.until:
                gap = min(self.cap, gap * self.factor)
            t += gap
            yield t

    def next_poll(self, elapsed: float) -> float:
        """The first poll time after ``elapsed`` seconds since the submit."""
        if elapsed < self.first:
            return self.first
        if elapsed < self.until:
            return self.first + (math.floor((elapsed - self.first) / self.gap) + 1) * self.gap
        # The last poll at the short interval is the first one at or after ``until``.
        t = self.first + max(0, math.ceil((self.until - self.first) / self.gap)) * self.gap
        gap = self.gap
        while t <= elapsed:
            gap = min(self.cap, gap * self.factor)
            if gap >= self.cap:
                return t + (math.floor((elapsed - t) / self.cap) + 1) * self.cap
            t += gap
        return t

    def describe(self) -> str:
        """One line for the logs."""
        return (
            f"first poll at {self.first:.1f} s, then every {self.gap:.2f} s until "
            f"{self.until:.1f} s, then backing off to {self.cap:.0f} s "
            f"(simulated: {self.polls:.2f} polls/job, lag p50 {self.lag_p50:.2f} s, "
            f"p95 {self.lag_p95:.2f} s)"
        )


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of an ascending sequence."""
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def simulate(plan: Plan, durations: Sequence[float]) -> tuple[float, float, float]:
    """Mean polls per job and the lag's median and 95th percentile for ``plan`` on
    ``durations`` (ascending)."""
    lags: list[float] = []
    polls = 0
    times = plan.times()
    t = next(times)
    count = 1
    for duration in durations:
        while t < duration:
            t = next(times)
            count += 1
        polls += count
        lags.append(t - duration)
    lags.sort()
    return polls / len(durations), _quantile(lags, 0.5), _quantile(lags, 0.95)


def reference_polls(durations: Sequence[float]) -> float:
    """Mean polls per job of the documented workflow (every 5 s) on ``durations``."""
    return sum(max(1, math.ceil(d / REFERENCE_INTERVAL)) for d in durations) / len(durations)


def choose_plan(durations: Sequence[float], budget_ratio: float, min_gap: float = GAPS[0]) -> Plan:
    """The cheapest plan meeting the lag goals within the budget, else the lowest-lag one."""
    ordered = sorted(durations)
    budget = budget_ratio * reference_polls(ordered)
    best_meeting: Plan | None = None
    best_other: tuple[tuple[float, float], Plan] | None = None
    for first_q in FIRST_QUANTILES:
        first = max(min_gap, _quantile(ordered, first_q))
        for until_q in UNTIL_QUANTILES:
            until = _quantile(ordered, until_q)
            for gap in GAPS:
                if gap < min_gap:
                    continue
                plan = Plan(first, gap, until)
                polls, p50, p95 = simulate(plan, ordered)
                if polls > budget:
                    continue
                plan = Plan(first, gap, until, polls=polls, lag_p50=p50, lag_p95=p95)
                if p50 <= GOAL_P50 * GOAL_MARGIN and p95 <= GOAL_P95 * GOAL_MARGIN:
                    if best_meeting is None or polls < best_meeting.polls:
                        best_meeting = plan
                    continue
                score = (max(p50 / GOAL_P50, p95 / GOAL_P95), polls)
                if best_other is None or score < best_other[0]:
                    best_other = (score, plan)
    if best_meeting is not None:
        return best_meeting
    if best_other is not None:
        return best_other[1]
    # Nothing fits the budget (durations all shorter than the minimum gap): poll at 5 s.
    return Plan(REFERENCE_INTERVAL, REFERENCE_INTERVAL, REFERENCE_INTERVAL)


class PollPlanner:
    """Learns the gateway's generation times and hands out poll delays planned around them.

    ``observe`` each COMPLETED status; ``delays(started)`` is the schedule for a job
    submitted at ``started`` (per ``clock``). The delays are computed lazily, one per poll,
    so a job already waiting profits from what was learned meanwhile.
    """

    def __init__(
        self,
        fallback: PollSchedule,
        *,
        window: int = 256,
        min_samples: int = 5,
        refit_every: int = 8,
        budget_ratio: float = 1.4,
        min_gap: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fallback = fallback
        self.min_samples = min_samples
        self.refit_every = refit_every
        self.budget_ratio = budget_ratio
        self.min_gap = min_gap
        self.plan: Plan | None = None
        self._durations: deque[float] = deque(maxlen=window)
        self._seeds: list[float] = []
        self._since_fit = 0
        self._clock = clock

    @property
    def samples(self) -> int:
        """How many durations are remembered."""
        return len(self._durations)

    def seed(self, seconds: Iterable[float]) -> None:
        """Generation times remembered from before a restart, used until ``min_samples`` new
        ones are known (they over-estimate a little: they include the time to notice)."""
        self._seeds = [s for s in seconds if 0.0 < s < 3600.0][: self._durations.maxlen]
        if self.plan is None and len(self._seeds) >= self.min_samples:
            self.refit()

    def observe(self, status: StatusResponse) -> None:
        """Learn from a terminal status (its gateway timestamps); others are ignored."""
        if status.status != "COMPLETED" or not status.created_at or not status.completed_at:
            return
        self.observe_duration((status.completed_at - status.created_at).total_seconds())

    def observe_duration(self, seconds: float) -> None:
        """Learn one generation time, in seconds."""
        if not 0.0 < seconds < 3600.0:
            return
        self._durations.append(seconds)
        self._since_fit += 1
        # Refit often while little is known, then every ``refit_every`` jobs.
        due = min(self.refit_every, max(1, len(self._durations) // 4))
        if len(self._durations) >= self.min_samples and (
            self.plan is None or self._since_fit >= due
        ):
            self.refit()

    def refit(self) -> Plan:
        """Choose the plan for the durations remembered now."""
        durations = list(self._durations)
        if len(durations) < self.min_samples:
            durations += self._seeds
        plan = choose_plan(durations, self.budget_ratio, self.min_gap)
        self._since_fit = 0
        if plan != self.plan:
            log.info("poll plan from %d recent jobs: %s", len(durations), plan.describe())
        self.plan = plan
        return plan

    def delays(self, started: float) -> Iterator[float]:
        """Seconds to wait before each poll of a job submitted at ``started``."""
        fallback = self.fallback.delays()
        plan: Plan | None = None
        while True:
            # A job keeps the first plan it polls by: moving it to another grid mid-way
            # would cost it extra polls.
            plan = plan or self.plan
            if plan is None:
                yield next(fallback)
                continue
            elapsed = max(0.0, self._clock() - started)
            yield max(plan.next_poll(elapsed) - elapsed, self.min_gap)
