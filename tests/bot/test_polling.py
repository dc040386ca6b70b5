"""The learned poll schedule: plans, their choice within the budget, and the planner."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise

from bot.pixazo import StatusResponse
from bot.polling import (
    GOAL_P50,
    GOAL_P95,
    REFERENCE_INTERVAL,
    Plan,
    PollPlanner,
    PollSchedule,
    choose_plan,
    reference_polls,
    simulate,
)


def lognormal_durations(count: int, median: float, sigma: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [median * math.exp(rng.gauss(0.0, sigma)) for _ in range(count)]


def completed(seconds: float) -> StatusResponse:
    created = datetime(2026, 3, 31, 10, 0, 0, tzinfo=UTC)
    return StatusResponse(
        request_id="r",
        status="COMPLETED",
        created_at=created,
        completed_at=created + timedelta(seconds=seconds),
    )


def test_next_poll_agrees_with_the_listed_times() -> None:
    plan = Plan(first=3.0, gap=1.0, until=10.0)
    times = list(islice(plan.times(), 60))
    assert times[:9] == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.5]
    assert all(b - a <= plan.cap + 1e-9 for a, b in pairwise(times))
    for tenth in range(0, int(times[-1] * 10)):
        elapsed = tenth / 10
        expected = next(t for t in times if t > elapsed)
        assert math.isclose(plan.next_poll(elapsed), expected), elapsed


def test_simulate_counts_polls_and_lag() -> None:
    plan = Plan(first=5.0, gap=5.0, until=5.0, factor=1.0)
    polls, p50, p95 = simulate(plan, [4.0, 9.0, 14.0])
    assert polls == 2.0  # 1, 2 and 3 polls
    assert p50 == 1.0 and math.isclose(p95, 1.0)
    assert reference_polls([4.0, 9.0, 14.0]) == 2.0


def test_tight_durations_meet_the_goals_within_the_budget() -> None:
    durations = lognormal_durations(256, median=12.0, sigma=0.25, seed=1)
    plan = choose_plan(durations, budget_ratio=1.4)
    assert plan.polls <= 1.4 * reference_polls(durations)
    assert plan.lag_p50 <= GOAL_P50 and plan.lag_p95 <= GOAL_P95
    assert 5.0 < plan.first < 12.0  # no polls wasted while no job can be finished
    # ...and it holds on jobs it has not seen.
    fresh = sorted(lognormal_durations(2000, median=12.0, sigma=0.25, seed=2))
    polls, p50, p95 = simulate(plan, fresh)
    assert polls <= 1.5 * reference_polls(fresh)
    assert p50 <= GOAL_P50 and p95 <= GOAL_P95


def test_wide_durations_stay_within_the_budget() -> None:
    durations = lognormal_durations(256, median=12.0, sigma=0.8, seed=3)
    plan = choose_plan(durations, budget_ratio=1.4)
    assert plan.polls <= 1.4 * reference_polls(durations)
    assert plan.cap == REFERENCE_INTERVAL  # the slow tail is never polled lazier than 5 s


def test_planner_uses_the_fixed_schedule_until_it_has_learned() -> None:
    now = [1000.0]
    fixed = PollSchedule(first=2.0, interval=1.0, factor=1.0, cap=1.0)
    planner = PollPlanner(fixed, min_samples=8, clock=lambda: now[0])
    delays = planner.delays(started=now[0])
    assert [next(delays), next(delays)] == [2.0, 1.0]
    for _ in range(7):
        planner.observe(completed(20.0))
    assert planner.plan is None and next(delays) == 1.0
    planner.observe(completed(20.0))
    assert planner.plan is not None
    # The same, already running iterator now follows the plan, relative to the submit.
    now[0] += 3.0
    first = planner.plan.first
    assert math.isclose(next(delays), first - 3.0)
    assert 15.0 <= first <= 20.0


def test_planner_ignores_what_it_cannot_learn_from() -> None:
    planner = PollPlanner(PollSchedule(), min_samples=1)
    planner.observe(StatusResponse(request_id="r", status="FAILED"))
    planner.observe(StatusResponse(request_id="r", status="COMPLETED"))  # no timestamps
    planner.observe(completed(-1.0))
    assert planner.samples == 0 and planner.plan is None
    planner.observe(completed(12.0))
    assert planner.samples == 1 and planner.plan is not None


def test_planned_delays_never_go_below_the_minimum_gap() -> None:
    now = [0.0]
    planner = PollPlanner(PollSchedule(), min_samples=1, min_gap=0.5, clock=lambda: now[0])
    planner.observe_duration(10.0)
    delays = planner.delays(started=0.0)
    now[0] = 100.0  # far past every planned poll
    assert next(delays) >= 0.5


def test_seeds_bridge_the_cold_start_until_new_jobs_are_known() -> None:
    planner = PollPlanner(PollSchedule(), min_samples=5)
    planner.seed([30.0] * 100)
    assert planner.plan is not None and planner.plan.first >= 20.0
    for _ in range(5):
        planner.observe_duration(10.0)
    assert planner.plan.first <= 10.0  # the new jobs replaced the remembered ones
