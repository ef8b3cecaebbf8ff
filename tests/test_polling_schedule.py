"""The poll schedule, on a fake clock: the query rate and detection lag it promises."""

from __future__ import annotations

import math

import pytest

from wanx_imageedit.nodes.core.polling import DEFAULT_POLICY, PollPolicy
from wanx_imageedit.nodes.core.protocol import TaskStatus


def poll_instants(policy: PollPolicy, *, until_s: float) -> list[float]:
    t, instants = 0.0, []
    while t < until_s + 5:
        t += policy.interval_s(elapsed_s=t, status=TaskStatus.RUNNING)
        instants.append(t)
    return instants


@pytest.mark.parametrize("duration_s", [5.0, 7.3, 10.0, 12.9, 15.0])
def test_lag_and_rate_for_typical_tasks(duration_s: float) -> None:
    instants = poll_instants(DEFAULT_POLICY, until_s=duration_s)
    detected = next(t for t in instants if t >= duration_s)
    queries = sum(1 for t in instants if t <= detected)
    assert detected - duration_s <= 0.4 + 1e-9
    assert queries / duration_s <= 2.2


def test_mean_lag_and_rate_over_5_to_15_seconds() -> None:
    durations = [5 + 10 * i / 400 for i in range(401)]
    lags, rates = [], []
    for d in durations:
        instants = poll_instants(DEFAULT_POLICY, until_s=d)
        detected = next(t for t in instants if t >= d)
        lags.append(detected - d)
        rates.append(sum(1 for t in instants if t <= detected) / d)
    assert sum(lags) / len(lags) <= 0.25
    assert sum(rates) / len(rates) <= 2.0


def test_long_waits_slow_down_and_queued_tasks_poll_gently() -> None:
    assert DEFAULT_POLICY.interval_s(elapsed_s=120, status=TaskStatus.RUNNING) == 1.0
    assert DEFAULT_POLICY.interval_s(elapsed_s=8, status=TaskStatus.PENDING) == 1.0
    assert DEFAULT_POLICY.interval_s(elapsed_s=8, status=TaskStatus.RUNNING) == 0.4


def test_time_scale_replays_the_same_schedule_faster() -> None:
    fast = PollPolicy(time_scale=0.01)
    assert math.isclose(fast.interval_s(elapsed_s=0.08, status=TaskStatus.RUNNING), 0.004)
    assert math.isclose(fast.retry_s(10), DEFAULT_POLICY.retry_s(10) * 0.01)
