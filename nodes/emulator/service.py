"""`Emulator`: the wanx2.1-imageedit service on loopback, the public face of this package. It wires
the state (state.py), the routes (routes.py) and the HTTP server (http.py) together and offers
the controls and counters tests need; the fault language is documented in faults.py."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from types import TracebackType

from .faults import ROUTE_FAULTS, FaultQueues, parse_fault, parse_outcome
from .http import Server
from .rendering import Renderer, render_result
from .routes import LoggedRequest, RequestObserver, Routes, key_digest
from .rules import API_PREFIX, DEFAULT_API_KEY, LINK_LIFETIME_S
from .state import ServiceState, Status, TaskTimes

# How often the server thread checks for stop(); short so tests that start many emulators
# do not wait on teardown, long enough that an idle emulator costs nothing noticeable.
_SHUTDOWN_POLL_S = 0.02


class Emulator:
    """The wanx2.1-imageedit service on loopback. Use as a context manager or start()/stop().

    Timing: tasks wait `pending_s` (while a running slot is free; at most `max_running` run at
    once, the rest queue FIFO), then run a duration drawn from `running_s` (deterministic per
    `seed` and creation order). Limits: `submit_rps` creates and `task_api_qps` queries / lists /
    cancels per second. `sync_validation=False` accepts invalid requests and fails the task later.
    Result links are signed and live `link_lifetime_s` from the query that handed them out.

    Seams: `render(job, index=i)` makes the PNG of a result (default `render_result`; see
    rendering.Renderer), `on_request(LoggedRequest)` is called on the server thread with every
    request once its answer is decided, before it is written (it must not raise).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: Iterable[str] = (DEFAULT_API_KEY,),
        pending_s: float = 0.05,
        running_s: tuple[float, float] = (5.0, 15.0),
        submit_rps: int = 2,
        max_running: int = 2,
        task_api_qps: int = 20,
        seed: int = 0,
        sync_validation: bool = True,
        link_lifetime_s: float = LINK_LIFETIME_S,
        render: Renderer = render_result,
        on_request: RequestObserver | None = None,
    ) -> None:
        low_s, high_s = running_s
        if not 0 <= low_s <= high_s:
            raise ValueError(f"running_s must be (low, high) with 0 <= low <= high, got {running_s!r}")
        if pending_s < 0 or submit_rps < 1 or max_running < 1 or task_api_qps < 1:
            raise ValueError("pending_s must be >= 0; submit_rps, max_running and task_api_qps >= 1")
        if not link_lifetime_s > 0:
            raise ValueError(f"link_lifetime_s must be > 0, got {link_lifetime_s!r}")
        if isinstance(api_keys, str):
            api_keys = (api_keys,)  # one key, not an iterable of characters
        self._host = host
        self._requested_port = port
        self._state = ServiceState(pending_s=pending_s, running_s=(low_s, high_s), max_running=max_running,
                                   seed=seed, submit_rps=submit_rps, task_api_qps=task_api_qps)
        self._faults = FaultQueues()
        # Keys are kept only as digests so the emulator never holds a key in the clear.
        key_ids = {key_digest(k): f"emulator-key-{i + 1}" for i, k in enumerate(api_keys)}
        self._routes = Routes(state=self._state, faults=self._faults, key_ids=key_ids,
                              sync_validation=sync_validation, render=render, link_lifetime_s=link_lifetime_s,
                              origin=lambda: f"http://{self.host}:{self.port}", on_request=on_request)
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle of the server ----------------------------------------------------------

    def start(self) -> Emulator:
        if self._server is not None:
            return self
        self._server = Server((self._host, self._requested_port), self._routes.handle)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": _SHUTDOWN_POLL_S},
            name=f"wanx-emulator-{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_open_connections()  # keep-alive clients must see a dead server too
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---- where it listens -------------------------------------------------------------------

    @property
    def host(self) -> str:
        # A wildcard bind address is not something a client can connect to.
        return "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the emulator is not running; call start() first")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}{API_PREFIX}"

    # ---- counters (what a test of money compares) -----------------------------------------

    @property
    def created_count(self) -> int:
        """Tasks created (each one runs and may bill), whether or not the client heard the answer."""
        with self._state.lock:
            return self._state.created_count

    @property
    def billed_image_count(self) -> int:
        """Images billed: usage.image_count summed over every task that SUCCEEDED so far (tasks
        forgotten after 24 h included)."""
        with self._state.lock:
            self._state.catch_up()
            return self._state.billed_image_count

    @property
    def downloaded_count(self) -> int:
        """Result downloads that delivered the real image in full (a 200 whose body was all
        written). Faulted answers (garbage, short, truncate, errors) do not count."""
        with self._state.lock:
            return sum(self._state.download_counts.values())

    @property
    def download_counts(self) -> dict[tuple[str, int], int]:
        """`downloaded_count` per (task_id, result index)."""
        with self._state.lock:
            return dict(self._state.download_counts)

    @property
    def requests(self) -> list[LoggedRequest]:
        """A snapshot of the request log, oldest first (the last 10 000 requests)."""
        return self._routes.requests

    # ---- test and demo controls -------------------------------------------------------------

    def inject(self, route: str, *faults: str) -> None:
        """Queue faults for `route` (see faults.py for the language); raises ValueError for an
        unknown route, fault or modifier."""
        _check_route(route)
        self._faults.add(route, [parse_fault(route, f) for f in faults])

    def clear_faults(self, route: str | None = None) -> None:
        """Drop the queued faults of `route` (all routes when None), including "+always" ones."""
        if route is not None:
            _check_route(route)
        self._faults.clear(route)

    def next_task_outcomes(self, *outcomes: str) -> None:
        """Apply these outcomes to the next created tasks, one each, in order (see faults.py)."""
        parsed = [parse_outcome(o) for o in outcomes]
        with self._state.lock:
            self._state.add_outcomes(parsed)

    def advance(self, seconds: float) -> None:
        """Move the emulator's clock forward (timestamps, lifecycle, rate windows, link expiry,
        retention)."""
        self._state.advance(seconds)

    def now_s(self) -> float:
        """The emulator's clock, epoch seconds: wall time at construction, plus monotonic progress,
        plus every advance(). All LoggedRequest.at_s and TaskTimes are on this clock."""
        return self._state.now_s()

    def task_status(self, task_id: str) -> str:
        """The task's true status now (ignores the "unknown" outcomes, which only hide it from
        queries); UNKNOWN if it never existed or was forgotten."""
        with self._state.lock:
            self._state.catch_up()
            task = self._state.tasks.get(task_id)
            return task.status if task else Status.UNKNOWN

    def task_times(self, task_id: str) -> TaskTimes:
        """The task's submit, start and end instants on `now_s()`'s clock, exact (the wire rounds
        them); raises KeyError for a task it does not remember."""
        with self._state.lock:
            self._state.catch_up()
            task = self._state.tasks.get(task_id)
            if task is None:
                raise KeyError(f"no task {task_id!r} (never created, or forgotten after 24 h)")
            return task.times

    @property
    def task_ids(self) -> list[str]:
        """Ids of the tasks it still remembers (not yet forgotten 24 h after they ended), oldest first."""
        with self._state.lock:
            self._state.catch_up()
            return list(self._state.tasks)

    def live_count(self) -> int:
        """Tasks PENDING or RUNNING right now: what the account's concurrency quota counts."""
        with self._state.lock:
            self._state.catch_up()
            return self._state.live_count()


def _check_route(route: str) -> None:
    if route not in ROUTE_FAULTS:
        raise ValueError(f"no faults for route {route!r}; routes: {', '.join(ROUTE_FAULTS)}")
