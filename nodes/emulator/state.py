"""The service's state: the clock, tasks, the FIFO queue behind two running slots, the lifecycle
(PENDING -> RUNNING -> SUCCEEDED / FAILED, CANCELED, forgotten after 24 h), the rate windows
and the counters a test of money needs (created, billed, downloaded).

Task state is computed lazily from the clock on every request (an event simulation under one
lock) rather than by background timers, so a run is deterministic and `advance()` can jump a day
ahead without anything firing late."""

from __future__ import annotations

import collections
import hashlib
import math
import threading
import time
import uuid
from dataclasses import dataclass, field

from .faults import NORMAL, TaskPlan
from .rules import MSG_TIMEOUT, RETENTION_S, TASK_TIMEOUT_S, ApiError, Job, error_message


class Status:
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class TaskTimes:
    """A task's instants on the emulator's clock (epoch seconds, full float precision: the wire
    carries milliseconds in the list and a formatted string in queries)."""

    submit_s: float
    start_s: float | None  # None while PENDING (and for a task canceled before it started)
    end_s: float | None  # None until SUCCEEDED, FAILED or CANCELED


@dataclass
class Task:
    task_id: str
    seq: int  # 1-based creation counter; drives the deterministic running duration
    request_id: str  # of the create call, shown by the list API
    api_key_id: str
    submit_s: float
    running_s: float
    n: int
    job: Job | None  # None when (asynchronous) validation failed
    validation_error: ApiError | None
    plan: TaskPlan
    status: str = Status.PENDING
    started_s: float | None = None
    ended_s: float | None = None
    code: str | None = None
    message: str | None = None
    image_errors: list[tuple[str, str] | None] = field(default_factory=list)
    png_cache: dict[int, bytes] = field(default_factory=dict)
    queries_hidden: int = 0  # the next this-many queries answer UNKNOWN ("unknown_once")

    @property
    def ok_indices(self) -> list[int]:
        return [i for i, err in enumerate(self.image_errors) if err is None]

    @property
    def reported_status(self) -> str:
        """What queries and the list say (the "unknown" outcome hides the real status)."""
        return Status.UNKNOWN if self.plan.unknown else self.status

    @property
    def times(self) -> TaskTimes:
        return TaskTimes(self.submit_s, self.started_s, self.ended_s)


class SlidingWindow:
    """At most `limit` admissions in any window of `window_s` seconds (rejections do not count)."""

    def __init__(self, *, limit: int, window_s: float = 1.0) -> None:
        self._limit = limit
        self._window_s = window_s
        self._times: collections.deque[float] = collections.deque()

    def admit(self, now_s: float) -> bool:
        while self._times and self._times[0] <= now_s - self._window_s:
            self._times.popleft()
        if len(self._times) >= self._limit:
            return False
        self._times.append(now_s)
        return True


class ServiceState:
    """Everything the routes read and change. Callers hold `lock` around every method and
    attribute use except `now_s` and `advance`, which take it themselves."""

    def __init__(self, *, pending_s: float, running_s: tuple[float, float], max_running: int, seed: int,
                 submit_rps: int, task_api_qps: int) -> None:
        self.lock = threading.Lock()
        self._pending_s = pending_s
        self._running_s = running_s
        self._max_running = max_running
        self._seed = seed
        # The clock: wall time at construction + monotonic progress + advance() offset.
        self._epoch0_s = time.time()
        self._mono0_s = time.monotonic()
        self._offset_s = 0.0
        self._sim_s = self.now_s()  # time of the last lifecycle event processed

        self.tasks: dict[str, Task] = {}
        self._queue: collections.deque[Task] = collections.deque()  # PENDING, FIFO
        self._running: list[Task] = []
        self._outcomes: collections.deque[TaskPlan] = collections.deque()
        self.submit_window = SlidingWindow(limit=submit_rps)
        self.task_api_windows = {r: SlidingWindow(limit=task_api_qps) for r in ("query", "list", "cancel")}
        self.created_count = 0
        self.billed_image_count = 0  # usage.image_count summed over SUCCEEDED tasks, forgotten ones too
        self.download_counts: collections.Counter[tuple[str, int]] = collections.Counter()

    # ---- the clock (thread-safe on its own) ---------------------------------------------------

    def now_s(self) -> float:
        return self._epoch0_s + (time.monotonic() - self._mono0_s) + self._offset_s

    def advance(self, seconds: float) -> None:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be finite and >= 0, got {seconds!r}")
        with self.lock:
            self._offset_s += seconds

    # ---- the lifecycle ------------------------------------------------------------------------

    def add_outcomes(self, plans: list[TaskPlan]) -> None:
        self._outcomes.extend(plans)

    def catch_up(self) -> float:
        """Replay every lifecycle event up to now, in time order; return now."""
        now_s = self.now_s()
        while (event := self._next_event()) is not None and event[0] <= now_s:
            at_s, _, kind, task = event
            self._sim_s = at_s
            if kind == "finish":
                self._running.remove(task)
                self._finish(task, at_s=at_s)
            elif kind == "start":
                self._queue.popleft()
                task.status, task.started_s = Status.RUNNING, at_s
                self._running.append(task)
            else:  # "timeout": still queued 3 h after submission
                self._queue.popleft()
                self._fail(task, at_s=at_s, code="InternalError.Timeout", message=MSG_TIMEOUT)
        self._forget_expired(now_s)
        return now_s

    def _next_event(self) -> tuple[float, int, str, Task] | None:
        # The int orders simultaneous events: a finish frees its slot before a start uses it.
        events = [(self._finish_at_s(t), 0, "finish", t) for t in self._running]
        if self._queue:
            head = self._queue[0]  # FIFO: later tasks never overtake the head
            if len(self._running) < self._max_running:
                events.append((max(head.submit_s + self._pending_s, self._sim_s), 1, "start", head))
            events.append((head.submit_s + TASK_TIMEOUT_S, 2, "timeout", head))
        return min(events, key=lambda e: (e[0], e[1])) if events else None

    @staticmethod
    def _finish_at_s(task: Task) -> float:
        assert task.started_s is not None
        return min(task.started_s + task.running_s, task.submit_s + TASK_TIMEOUT_S)

    def _finish(self, task: Task, *, at_s: float) -> None:
        assert task.started_s is not None
        plan = task.plan
        errors = plan.image_errors(task.n)
        if task.started_s + task.running_s > task.submit_s + TASK_TIMEOUT_S:
            self._fail(task, at_s=at_s, code="InternalError.Timeout", message=MSG_TIMEOUT)
        elif task.validation_error is not None:
            self._fail(task, at_s=at_s, code=task.validation_error.code, message=task.validation_error.message)
        elif plan.fail_code is not None:
            self._fail(task, at_s=at_s, code=plan.fail_code, message=error_message(plan.fail_code))
        elif plan.all_images_fail:
            # Zero successful images cannot be SUCCEEDED (spec 7.4).
            self._fail(task, at_s=at_s, code="InternalError.Timeout", message=MSG_TIMEOUT)
        elif all(err is not None for err in errors):  # partial:I,J:CODE named every index
            self._fail(task, at_s=at_s, code=plan.image_code, message=error_message(plan.image_code))
        else:
            task.image_errors = errors
            task.status, task.ended_s = Status.SUCCEEDED, at_s
            self.billed_image_count += len(task.ok_indices)  # only successes are billed

    def _fail(self, task: Task, *, at_s: float, code: str, message: str) -> None:
        task.status, task.ended_s, task.code, task.message = Status.FAILED, at_s, code, message
        task.image_errors = [(code, message)] * task.n

    def _forget_expired(self, now_s: float) -> None:
        expired = [tid for tid, t in self.tasks.items() if t.ended_s is not None and now_s - t.ended_s >= RETENTION_S]
        for task_id in expired:
            del self.tasks[task_id]

    def _draw_running_s(self, seq: int) -> float:
        low_s, high_s = self._running_s
        digest = hashlib.sha256(f"{self._seed}:{seq}".encode()).digest()
        return low_s + (high_s - low_s) * (int.from_bytes(digest[:8], "big") / 2**64)

    def new_task(self, *, job: Job | None, error: ApiError | None, n: int, request_id: str, api_key_id: str) -> Task:
        self.catch_up()
        self.created_count += 1
        plan = self._outcomes.popleft() if self._outcomes else NORMAL
        if plan.running_s is not None:
            running_s = plan.running_s
        elif error is not None:
            running_s = 0.0  # parameter validation fails as soon as the task is scheduled
        else:
            running_s = self._draw_running_s(self.created_count)
        task = Task(task_id=str(uuid.uuid4()), seq=self.created_count, request_id=request_id,
                    api_key_id=api_key_id, submit_s=self.now_s(), running_s=running_s, n=n, job=job,
                    validation_error=error, plan=plan, queries_hidden=1 if plan.unknown_once else 0)
        self.tasks[task.task_id] = task
        self._queue.append(task)
        return task

    def cancel(self, task: Task, *, now_s: float) -> None:
        """Cancel a PENDING task (the caller checked the status)."""
        self._queue.remove(task)
        task.status, task.ended_s = Status.CANCELED, now_s

    def live_count(self) -> int:
        return len(self._queue) + len(self._running)
