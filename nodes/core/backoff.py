"""One back-off rule for every retry of the pack (submissions refused, status checks, downloads,
throttling): doubling from ``first_s`` up to ``cap_s``, with jitter so that several waiting tasks
(or processes) do not retry in lockstep."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    first_s: float
    cap_s: float
    jitter: float = 0.2  # the delay is drawn from [(1 - jitter) * d, d]: never longer than the schedule
    scale: float = 1.0  # benchmarks and tests replay schedules on a faster clock
    draw: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def base_s(self, attempt: int) -> float:
        """The schedule without jitter: the longest wait before retry number ``attempt`` (1 = the first)."""
        return min(self.first_s * 2 ** max(attempt - 1, 0), self.cap_s) * self.scale

    def delay_s(self, attempt: int) -> float:
        """The wait before retry number ``attempt``, jittered."""
        return self.base_s(attempt) * (1.0 - self.jitter * self.draw())
