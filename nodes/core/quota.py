"""The account's quota, kept process-wide: at most N task submissions in any one second, at most
M tasks in flight (spec section 10: 2 and 2, shared by every key of the account), and at most Q
status queries a second (the task API allows 20 per second per account)."""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator

from .ticker import Ticker

WINDOW_S = 1.05  # a little over one second: our send time is earlier than the service's receive time
THROTTLE_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 10.0)


class _Window:
    """At most ``limit`` events in any WINDOW_S; not thread-safe on its own (Quota locks it)."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._times: collections.deque[float] = collections.deque()

    def wait_s(self, now: float) -> float:
        while self._times and now - self._times[0] >= WINDOW_S:
            self._times.popleft()
        return self._times[0] + WINDOW_S - now if len(self._times) >= self.limit else 0.0

    def record(self, now: float) -> None:
        self._times.append(now)


class Quota:
    def __init__(self, *, max_in_flight: int, submits_per_s: float, queries_per_s: float = 20) -> None:
        self.max_in_flight = max_in_flight
        self.submits_per_s = submits_per_s
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._lock = threading.Lock()
        self._submits = _Window(submits_per_s)
        self._queries = _Window(queries_per_s)
        self._paused_until = 0.0
        self._throttle_streak = 0

    @contextlib.contextmanager
    def in_flight(self, ticker: Ticker) -> Iterator[None]:
        """Hold one in-flight slot; waiting for it stays responsive to cancellation."""
        while not self._slots.acquire(timeout=0.1):
            ticker.check()
        try:
            yield
        finally:
            self._slots.release()

    def before_send(self, ticker: Ticker) -> None:
        """Block until a submission keeps within the per-second limit and any throttle pause."""
        self._admit(self._submits, ticker, respect_pause=True)

    def before_query(self, ticker: Ticker) -> None:
        """Block until a status query keeps within the task API's per-second limit."""
        self._admit(self._queries, ticker, respect_pause=False)

    def _admit(self, window: _Window, ticker: Ticker, *, respect_pause: bool) -> None:
        while True:
            with self._lock:
                now = ticker.now()
                wait_s = window.wait_s(now)
                if respect_pause:
                    wait_s = max(wait_s, self._paused_until - now)
                if wait_s <= 0:
                    window.record(now)
                    return
            ticker.wait(wait_s)

    def throttled(self, ticker: Ticker) -> None:
        """The service answered 429: pause every submitter of this process, longer each time."""
        with self._lock:
            backoff_s = THROTTLE_BACKOFF_S[min(self._throttle_streak, len(THROTTLE_BACKOFF_S) - 1)]
            self._throttle_streak += 1
            self._paused_until = max(self._paused_until, ticker.now() + backoff_s)

    def accepted(self) -> None:
        with self._lock:
            self._throttle_streak = 0


_shared: dict[tuple[int, float, float], Quota] = {}
_shared_lock = threading.Lock()


def shared_quota(*, max_in_flight: int, submits_per_s: float, queries_per_s: float = 20) -> Quota:
    """The process-wide limiter for these limits: every node and batch in the process shares it."""
    with _shared_lock:
        key = (max_in_flight, submits_per_s, queries_per_s)
        if key not in _shared:
            _shared[key] = Quota(max_in_flight=max_in_flight, submits_per_s=submits_per_s, queries_per_s=queries_per_s)
        return _shared[key]
