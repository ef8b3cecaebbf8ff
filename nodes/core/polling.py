"""Waiting for one task. Tasks take about 5-15 s (spec section 1), so we ask once at 1 s (a task
that fails at once is not kept waiting), not again before 5 s, then more and more closely as
completion becomes likely, and back off after 15 s: a mean completion-detection lag near 0.12 s at
under two queries per second per task, over tasks of 5-15 s. The price: a rare task that ends
between 1 and 5 s is seen at 5 s. (A second probe at 3 s would halve that, for +7 ms of mean lag,
which the end-to-end target of tests/bench.py, figure 5, cannot afford.) The SDK's 0, 1, 2, 4
... 5 s schedule lags about 1.8 s on average (tests/bench.py, figure 1).

How the steps were chosen: a query at time t is paid by every task still running at t (for a task
of duration d, per second of d) and buys a lag of half the interval for the tasks that end around t.
Minimising the mean lag under a mean rate of 2 q/s (a Lagrange multiplier) gives intervals
proportional to sqrt(E[1/d; d > t] / p(t)), which for d uniform in 5..15 s is sqrt(ln(15/t)): about
0.35 s at 6 s shrinking to about 0.12 s near 15 s. The exact optimum lags 0.107 s at 2 q/s; these
steps (the 1 s query included) lag 0.116 s at 1.97 q/s, which tests/test_polling_schedule.py checks."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from .backoff import Backoff
from .client import DashScopeClient
from .errors import ApiError, TaskTimeoutError, TransientError
from .protocol import TaskState, TaskStatus
from .quota import Quota
from .ticker import Ticker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PollPolicy:
    # (elapsed since submit up to, poll interval): see the module docstring.
    steps: tuple[tuple[float, float], ...] = (
        (1.0, 1.0), (5.0, 4.0),
        (7.0, 0.35), (9.0, 0.29), (11.0, 0.23), (13.0, 0.17), (15.5, 0.12),
        (20.0, 0.4), (60.0, 0.5), (math.inf, 1.0),
    )
    queued_interval_s: float = 1.0  # a PENDING task cannot finish before it starts running
    retry_first_s: float = 0.5  # after a failed status check: 0.5, 1, 2, 4, 5, 5 ... s
    retry_max_s: float = 5.0
    time_scale: float = 1.0  # benchmarks replay the schedule on a faster clock
    timeout_s: float = 900.0  # the whole wait for one task, queue included (WANX_TASK_TIMEOUT_S)
    outage_s: float = 600.0  # how long status checks may fail in a row before giving up (WANX_POLL_OUTAGE_S)
    # An UNKNOWN answer for a task the journal saw accepted is re-checked this long before it is
    # believed: the service forgets tasks only 24 h after they end, so early UNKNOWNs are glitches.
    unknown_grace_s: float = 0.0

    def within(self, *, timeout_s: float, outage_s: float, unknown_grace_s: float | None = None) -> PollPolicy:
        """This schedule with an adapter's limits (from Settings)."""
        grace_s = self.unknown_grace_s if unknown_grace_s is None else unknown_grace_s
        return dataclasses.replace(self, timeout_s=timeout_s, outage_s=outage_s, unknown_grace_s=grace_s)

    @property
    def retry(self) -> Backoff:
        return Backoff(self.retry_first_s, self.retry_max_s, scale=self.time_scale)

    def interval_s(self, *, elapsed_s: float, status: TaskStatus) -> float:
        elapsed_s /= self.time_scale
        interval = next(step for until, step in self.steps if elapsed_s < until)
        if status is TaskStatus.PENDING and elapsed_s >= self.steps[0][0]:
            interval = max(interval, self.queued_interval_s)
        return interval * self.time_scale

    def retry_s(self, failures: int) -> float:
        """The longest wait after ``failures`` failed checks in a row (the wait itself is jittered)."""
        return self.retry.base_s(failures)


DEFAULT_POLICY = PollPolicy()


def wait_for_task(
    client: DashScopeClient, task_id: str, *, ticker: Ticker, policy: PollPolicy = DEFAULT_POLICY,
    on_state: Callable[[TaskState], None] = lambda _: None, first_delay_s: float | None = None,
    quota: Quota | None = None,
) -> TaskState:
    """Poll until the task reaches a terminal status and return that state. Transient failures
    are retried for up to ``policy.outage_s`` in a row, so a long outage does not lose a paid task;
    UNKNOWN is re-checked for ``policy.unknown_grace_s`` before it is returned."""
    start = ticker.now()
    status = TaskStatus.PENDING
    failing_since: float | None = None
    unknown_since: float | None = None
    failures = 0
    delay_s = policy.interval_s(elapsed_s=0.0, status=status) if first_delay_s is None else first_delay_s
    while True:
        ticker.wait(delay_s)
        if quota is not None:
            quota.before_query(ticker)
        now = ticker.now()
        try:
            state = client.query(task_id)
        except TransientError as exc:
            failing_since = now if failing_since is None else failing_since
            failures += 1
            if now - failing_since > policy.outage_s:
                raise ApiError(
                    f"lost contact with the service for {now - failing_since:.0f} s while waiting ({exc.what})",
                    task_id=task_id,
                    advice="The task may still finish and be billed: recover it within 24 hours with "
                    f"`wanx-imageedit fetch {task_id}`.",
                ) from None
            log.info("task %s: status check failed (%s); retrying", task_id, exc.what)
            delay_s = policy.retry.delay_s(failures)
            continue
        failing_since = None
        if state.status is TaskStatus.UNKNOWN and policy.unknown_grace_s > 0:
            unknown_since = now if unknown_since is None else unknown_since
            if now - unknown_since < policy.unknown_grace_s:
                failures += 1
                log.warning("task %s: the service answered UNKNOWN for a task it accepted; checking again", task_id)
                delay_s = policy.retry.delay_s(failures)
                continue
        failures, unknown_since = 0, None
        status = state.status
        on_state(state)
        if status.is_terminal:
            return state
        elapsed_s = ticker.now() - start
        if elapsed_s > policy.timeout_s:
            raise TaskTimeoutError(f"the task was still {status.value} after {elapsed_s:.0f} s", task_id=task_id)
        delay_s = policy.interval_s(elapsed_s=elapsed_s, status=status)
