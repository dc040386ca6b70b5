"""The queue, the per-member limit and the breaker, without any network."""

from __future__ import annotations

import asyncio

import pytest

from bot.admission import BALANCE, OUTAGE, Admission, Breaker, Waiter

ALICE = (1, 100)
BOB = (1, 200)
ALICE_ELSEWHERE = (2, 100)  # the same user in another server is another member


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admitted(*waiters: Waiter) -> list[int]:
    """Ids of the given waiters whose turn came."""
    return [w.job_id for w in waiters if w.admitted.done() and not w.admitted.cancelled()]


def only_in_flight(admission: Admission) -> int:
    """The one job in flight (for tests that keep a single slot)."""
    (job_id,) = admission._in_flight
    return job_id


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock: Clock) -> Breaker:
    return Breaker(probe_after=30.0, clock=clock)


# --------------------------------------------------------------------------- the queue


async def test_jobs_wait_in_id_order_whatever_order_they_arrive_in(breaker: Breaker) -> None:
    admission = Admission(1, breaker)
    admission.add_in_flight(1, ALICE)  # the only slot is taken
    w7 = admission.enqueue(7, BOB, 5)
    w3 = admission.enqueue(3, BOB, 5)
    w5 = admission.enqueue(5, ALICE, 5)

    assert admission.waiting() == [3, 5, 7]
    assert [admission.position(i) for i in (3, 5, 7, 1, 99)] == [1, 2, 3, 0, 0]
    assert admitted(w3, w5, w7) == []

    order = []
    for _ in range(3):
        admission.release(only_in_flight(admission))
        order.append(only_in_flight(admission))
    assert order == [3, 5, 7]
    assert admitted(w3, w5, w7) == [3, 5, 7]


async def test_the_global_limit_caps_jobs_in_flight(breaker: Breaker) -> None:
    admission = Admission(2, breaker)
    waiters = [admission.enqueue(i, (1, i), 5) for i in (1, 2, 3)]

    assert admitted(*waiters) == [1, 2]
    assert admission.in_flight() == 2
    assert admission.waiting() == [3]
    assert not admission.blocked_by_member_limit(3)  # it waits for a free slot, not for itself

    admission.release(1)
    assert admitted(*waiters) == [1, 2, 3]
    assert admission.in_flight() == 2


async def test_a_member_over_the_limit_waits_while_others_go_ahead(breaker: Breaker) -> None:
    admission = Admission(10, breaker)
    a1 = admission.enqueue(1, ALICE, 2)
    a2 = admission.enqueue(2, ALICE, 2)
    a3 = admission.enqueue(3, ALICE, 2)
    b4 = admission.enqueue(4, BOB, 2)
    elsewhere = admission.enqueue(5, ALICE_ELSEWHERE, 2)

    assert admitted(a1, a2, a3, b4, elsewhere) == [1, 2, 4, 5]
    assert admission.waiting() == [3]
    assert admission.position(3) == 1
    assert admission.blocked_by_member_limit(3)
    assert admission.in_flight(ALICE) == 2 and admission.in_flight(BOB) == 1

    admission.release(4)  # Bob's job finishing does not help Alice
    assert not a3.admitted.done()
    admission.release(2)
    assert a3.admitted.done()
    assert admission.in_flight(ALICE) == 2
    assert admission.waiting() == []


async def test_a_limit_below_one_still_lets_one_job_through(breaker: Breaker) -> None:
    admission = Admission(10, breaker)
    w = admission.enqueue(1, ALICE, 0)
    assert w.admitted.done()


async def test_jobs_resumed_in_flight_count_against_their_member(breaker: Breaker) -> None:
    admission = Admission(10, breaker)
    admission.add_in_flight(1, ALICE)
    admission.add_in_flight(1, ALICE)  # counted once
    assert admission.in_flight(ALICE) == 1
    admission.add_in_flight(2, ALICE)

    w3 = admission.enqueue(3, ALICE, 2)
    assert not w3.admitted.done()
    admission.release(1)
    assert w3.admitted.done()
    admission.release(1)  # releasing twice changes nothing
    assert admission.in_flight(ALICE) == 2


async def test_a_withdrawn_job_leaves_the_line_and_the_next_one_moves_up(breaker: Breaker) -> None:
    admission = Admission(1, breaker)
    admission.add_in_flight(1, ALICE)
    w2 = admission.enqueue(2, BOB, 5)
    w3 = admission.enqueue(3, BOB, 5)

    assert admission.withdraw(2) is True
    assert w2.admitted.cancelled()
    assert admission.position(3) == 1
    assert admission.withdraw(2) is False
    assert admission.withdraw(42) is False

    admission.release(1)
    assert w3.admitted.done() and not w3.admitted.cancelled()
    assert admission.withdraw(3) is False  # already admitted: no longer in line


# --------------------------------------------------------------------------- the breaker


async def test_an_open_breaker_admits_nothing_until_its_probe_is_due(
    breaker: Breaker, clock: Clock
) -> None:
    admission = Admission(10, breaker)
    assert breaker.open(BALANCE) is True
    assert breaker.is_open and breaker.reason == BALANCE
    waiters = [admission.enqueue(i, (1, i), 5) for i in (1, 2, 3)]
    assert admitted(*waiters) == []

    clock.now += 29.9
    admission.pump()
    assert admitted(*waiters) == []

    clock.now += 0.1
    admission.pump()
    admission.pump()
    assert admitted(*waiters) == [1]  # exactly one probe, the first in line
    assert breaker.probing and not breaker.probe_due()

    assert breaker.record_success() is True  # the probe got through
    assert not breaker.is_open
    admission.pump()
    assert admitted(*waiters) == [1, 2, 3]


async def test_a_failed_probe_pushes_the_next_one_back(breaker: Breaker, clock: Clock) -> None:
    assert breaker.open(BALANCE)
    opened_at = breaker.opened_at
    clock.now += 30
    assert breaker.probe_due()
    breaker.probing = True
    assert not breaker.probe_due()

    assert breaker.open(BALANCE) is False  # still open: nobody is told again
    assert breaker.opened_at == opened_at
    assert not breaker.probing
    assert not breaker.probe_due()
    assert breaker.next_probe_at == clock.now + 30
    clock.now += 30
    assert breaker.probe_due()


async def test_a_streak_of_transient_errors_opens_the_breaker_as_an_outage(
    breaker: Breaker,
) -> None:
    assert [breaker.record_transient() for _ in range(4)] == [False] * 4
    assert not breaker.is_open
    assert breaker.record_transient() is True
    assert breaker.reason == OUTAGE
    assert breaker.record_transient() is False  # already open

    assert breaker.record_success() is True
    assert not breaker.is_open
    assert breaker.record_success() is False


async def test_a_success_breaks_the_streak(breaker: Breaker) -> None:
    for _ in range(4):
        breaker.record_transient()
    breaker.record_success()
    assert [breaker.record_transient() for _ in range(4)] == [False] * 4
    assert not breaker.is_open


async def test_an_empty_wallet_during_an_outage_keeps_the_breaker_open(
    breaker: Breaker, clock: Clock
) -> None:
    for _ in range(5):
        breaker.record_transient()
    assert breaker.reason == OUTAGE
    assert breaker.open(BALANCE) is False
    assert breaker.reason == BALANCE
    assert breaker.close() is True
    assert breaker.close() is False


async def test_a_waiter_can_be_awaited(breaker: Breaker) -> None:
    admission = Admission(1, breaker)
    admission.add_in_flight(1, ALICE)
    waiter = admission.enqueue(2, BOB, 1)
    asyncio.get_running_loop().call_soon(admission.release, 1)
    await asyncio.wait_for(waiter.admitted, 1)
    assert admission.in_flight(BOB) == 1


async def test_a_probe_that_leaves_without_a_verdict_makes_room_for_the_next(
    breaker: Breaker, clock: Clock
) -> None:
    admission = Admission(10, breaker)
    breaker.open(BALANCE)
    w1, w2 = admission.enqueue(1, ALICE, 5), admission.enqueue(2, BOB, 5)
    clock.now += 30
    admission.pump()
    assert admitted(w1, w2) == [1] and admission.probe_job == 1

    admission.release(1)  # e.g. the probe's own request was invalid
    assert breaker.is_open and not breaker.probing
    assert admission.probe_job is None
    assert admitted(w1, w2) == [1]  # the next probe waits its delay
    clock.now += 30
    admission.pump()
    assert admitted(w1, w2) == [1, 2] and admission.probe_job == 2


async def test_releasing_a_probe_after_it_closed_the_breaker_changes_nothing(
    breaker: Breaker, clock: Clock
) -> None:
    admission = Admission(10, breaker)
    breaker.open(OUTAGE)
    clock.now += 30
    admission.enqueue(1, ALICE, 5)
    breaker.record_success()  # the probe got through
    admission.release(1)
    assert not breaker.is_open and admission.probe_job is None
