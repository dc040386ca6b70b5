"""The job set: when each /imagine arrives and how long the gateway takes to make it.

Generation times are log-normal (median ``median`` s, shape ``sigma``), clipped to
[2, 90] s: "seconds to tens of seconds", with a long right tail. A job spends 10% of its
time QUEUED and the rest PROCESSING. Arrivals are a Poisson stream. ``scale`` multiplies
every duration and gap (the documented 5 s workflow does not scale with them, so figures
at a scale other than 1 are not comparable with the targets).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

DEFAULT_MEDIAN = 12.0
DEFAULT_SIGMA = 0.35
QUEUED_SHARE = 0.1


@dataclass(frozen=True)
class JobSpec:
    """One job of the set."""

    index: int
    arrival: float
    duration: float

    @property
    def tag(self) -> str:
        """Put in the prompt, so every fake gateway finds the job's timing by it."""
        return f"[job {self.index}]"

    @property
    def prompt(self) -> str:
        """The /imagine prompt."""
        return f"a lighthouse at dusk, oil on canvas {self.tag}"

    @property
    def queued(self) -> float:
        return self.duration * QUEUED_SHARE

    @property
    def processing(self) -> float:
        return self.duration - self.queued


def draw_duration(rng: random.Random, median: float, sigma: float, scale: float) -> float:
    """One generation time in seconds."""
    return scale * min(90.0, max(2.0, median * math.exp(rng.gauss(0.0, sigma))))


def job_set(
    count: int,
    *,
    rate: float,
    median: float = DEFAULT_MEDIAN,
    sigma: float = DEFAULT_SIGMA,
    scale: float = 1.0,
    seed: int = 8,
) -> list[JobSpec]:
    """``count`` jobs arriving at ``rate`` per second (before scaling)."""
    rng = random.Random(seed)
    jobs = []
    at = 0.0
    for index in range(count):
        jobs.append(JobSpec(index, at, draw_duration(rng, median, sigma, scale)))
        at += scale * rng.expovariate(rate)
    return jobs
