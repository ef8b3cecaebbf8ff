"""The account's quota: at most N task submissions in any one second, at most M tasks in flight
(spec section 10: 2 and 2 per Alibaba Cloud main account, every key, workspace and process
combined), and at most Q status queries a second (the task API allows 20 per second).

Without ``db_path`` the limits hold within this process only. With it, the in-flight slots, the
submission pacing and the pause after a 429 are shared by every process on the machine (ComfyUI,
the command line, a second ComfyUI) through three tables of the pack's SQLite state database
(WAL mode, a busy timeout; the task journal lives in the same file with its own tables):
- quota_leases: one row per slot held, expiring ``lease_s`` after its last renewal, so a killed
  process frees its slots by itself; a daemon thread renews the held rows every lease_s / 3;
- quota_waiters: the threads waiting for a slot, first come first served, so a process re-taking
  the slot it just freed cannot starve the others; a waiter not seen for WAITER_STALE_S is dropped;
- quota_submits: recent submission times; one is admitted while fewer than ``submits_per_s`` are
  younger than WINDOW_S;
- quota_state: the throttle pause (``paused_until``) and the streak of 429s that lengthens it.
Stored times are wall-clock (time.time()), since monotonic clocks differ between processes; waits
run on the ticker. The database cannot tell accounts apart, so processes using keys of different
accounts share one budget: slower than needed, never over. Status queries stay process-local:
polling is a few queries a second per task, far below 20.

A database that cannot be opened, or that fails later (damaged, locked beyond the busy timeout),
never stops a paid task: the limiter logs one ERROR line and goes on with the process-local
limits. It never repairs or replaces the file, which also holds the task journal."""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import random
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .backoff import Backoff
from .files import connect_wal
from .ticker import Ticker

log = logging.getLogger(__name__)

WINDOW_S = 1.05  # a little over one second: our send time is earlier than the service's receive time
THROTTLE_BACKOFF = Backoff(first_s=1.0, cap_s=10.0)  # 1, 2, 4, 8, 10 s (jittered) while 429s go on
LEASE_S = 30.0  # a killed process's slots come back at most this long after its last renewal
SLOT_POLL = Backoff(first_s=0.05, cap_s=0.25)  # jittered, so processes waiting for a slot do not poll in step
PACING_JITTER_S = 0.02  # processes woken for the same free second do not all retry at once
BUSY_TIMEOUT_S = 5.0  # every transaction here is a few rows: a longer lock means something is wrong
WAITER_STALE_S = 2.0  # a waiter polls at least every SLOT_POLL.cap_s; one silent this long is gone
MAX_LEASE_S = 600.0  # a lease further ahead than this was written before the wall clock went back
SCHEMA_VERSION = "1"  # meta.quota_schema; the task journal keeps journal_schema in the same table
_DB_ERRORS = (sqlite3.Error, OSError)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE IF NOT EXISTS quota_leases (lease TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS quota_waiters (ticket INTEGER PRIMARY KEY AUTOINCREMENT, holder TEXT NOT NULL, "
    "seen_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS quota_submits (sent_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS quota_state (key TEXT PRIMARY KEY, value REAL NOT NULL)",
)


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


class _SharedDb:
    """The quota tables, through one connection used by one thread at a time. Knows the leases
    this Quota holds, so that renewing and releasing them cannot race."""

    def __init__(self, path: Path, *, lease_s: float, clock: Callable[[], float],
                 on_error: Callable[[_SharedDb, BaseException], None]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._lease_s = min(lease_s, MAX_LEASE_S)
        self._clock = clock
        self._on_error = on_error
        self._lock = threading.RLock()
        self._held: set[str] = set()
        self._numbers = itertools.count()
        self._renewer: threading.Thread | None = None
        self._closed = threading.Event()
        self._conn = connect_wal(path, busy_timeout_s=BUSY_TIMEOUT_S)
        try:
            self._conn.execute("PRAGMA synchronous = NORMAL")  # a lost last row after a power cut is harmless here
            with self._transaction() as db:
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('quota_schema', ?)", (SCHEMA_VERSION,))
        except BaseException:
            self._conn.close()
            raise

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front: the count and the insert see one state.
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        self._closed.set()
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._conn.close()

    def take_slot(self, *, limit: int, ticket: int | None) -> tuple[str | None, int | None]:
        """A new lease if a slot is free (dead holders' leases expire) and no earlier waiter is due
        it; else None and this waiter's ticket, its place in the queue."""
        with self._transaction() as db:
            now = self._clock()  # inside: every row committed before was stamped no later
            db.execute("DELETE FROM quota_leases WHERE expires_at <= ? OR expires_at > ?", (now, now + MAX_LEASE_S))
            db.execute("DELETE FROM quota_waiters WHERE seen_at < ? OR seen_at > ?",
                       (now - WAITER_STALE_S, now + WAITER_STALE_S))
            (live,) = db.execute("SELECT COUNT(*) FROM quota_leases").fetchone()
            (ahead,) = db.execute("SELECT COUNT(*) FROM quota_waiters WHERE ticket < ?",
                                  (2**62 if ticket is None else ticket,)).fetchone()
            if live + ahead >= limit:
                # A new waiter draws a ticket; a known one keeps its place, even if dropped while stalled.
                row = db.execute("INSERT OR REPLACE INTO quota_waiters (ticket, holder, seen_at) VALUES (?, ?, ?)",
                                 (ticket, self.holder, now))
                return None, row.lastrowid if ticket is None else ticket
            if ticket is not None:
                db.execute("DELETE FROM quota_waiters WHERE ticket = ?", (ticket,))
            lease = f"{self.holder}#{next(self._numbers)}"
            db.execute("INSERT INTO quota_leases (lease, holder, expires_at) VALUES (?, ?, ?)",
                       (lease, self.holder, now + self._lease_s))
            self._held.add(lease)
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew_loop, daemon=True, name="wanx-quota-lease")
                self._renewer.start()
            return lease, None

    def leave_queue(self, ticket: int) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM quota_waiters WHERE ticket = ?", (ticket,))

    def free_slot(self, lease: str) -> None:
        with self._lock:
            self._held.discard(lease)  # first: even if the delete fails, it is no longer renewed
            with self._transaction() as db:
                db.execute("DELETE FROM quota_leases WHERE lease = ?", (lease,))

    def _renew_loop(self) -> None:
        while not self._closed.wait(self._lease_s / 3):
            with self._lock:
                if not self._held:
                    self._renewer = None  # under the lock: the next take_slot starts a new one
                    return
                try:
                    self._renew()
                except _DB_ERRORS as exc:
                    self._renewer = None
                    self._on_error(self, exc)
                    return

    def _renew(self) -> None:
        with self._transaction() as db:
            now = self._clock()
            renewed = db.execute("UPDATE quota_leases SET expires_at = ? WHERE holder = ?",
                                 (now + self._lease_s, self.holder)).rowcount
            if renewed < len(self._held):
                # Another process dropped them as expired (this one was stalled): the tasks still
                # run on the service, so they count again.
                log.warning("quota: %d in-flight lease(s) had expired while held; taking them back",
                            len(self._held) - renewed)
                db.executemany("INSERT OR REPLACE INTO quota_leases (lease, holder, expires_at) VALUES (?, ?, ?)",
                               [(lease, self.holder, now + self._lease_s) for lease in self._held])

    def admit_submit(self, *, limit: float) -> float:
        """Record a submission and return 0 if it keeps within the limit and the pause, else the wait."""
        with self._transaction() as db:
            now = self._clock()
            # Rows far ahead of now were written before the wall clock went back: they must not block for long.
            db.execute("DELETE FROM quota_submits WHERE sent_at <= ? OR sent_at > ?", (now - WINDOW_S, now + WINDOW_S))
            count, oldest = db.execute("SELECT COUNT(*), MIN(sent_at) FROM quota_submits").fetchone()
            longest_pause_s = THROTTLE_BACKOFF.cap_s * THROTTLE_BACKOFF.scale
            paused_until = min(self._state(db, "paused_until"), now + longest_pause_s)
            wait_s = max(oldest + WINDOW_S - now if count >= limit else 0.0, paused_until - now)
            if wait_s <= 0:
                db.execute("INSERT INTO quota_submits (sent_at) VALUES (?)", (now,))
            return max(wait_s, 0.0)

    def throttled(self) -> None:
        with self._transaction() as db:
            now = self._clock()
            streak = int(self._state(db, "throttle_streak")) + 1
            paused_until = max(self._state(db, "paused_until"), now + THROTTLE_BACKOFF.delay_s(streak))
            db.executemany("INSERT OR REPLACE INTO quota_state (key, value) VALUES (?, ?)",
                           [("throttle_streak", streak), ("paused_until", paused_until)])

    def accepted(self) -> None:
        with self._lock:  # one statement: autocommit, no transaction needed
            self._conn.execute("UPDATE quota_state SET value = 0 WHERE key = 'throttle_streak' AND value != 0")

    @staticmethod
    def _state(db: sqlite3.Connection, key: str) -> float:
        row = db.execute("SELECT value FROM quota_state WHERE key = ?", (key,)).fetchone()
        return float(row[0]) if row else 0.0


class Quota:
    """The limiter every submission and status query goes through; see the module docstring for
    ``db_path`` (limits shared by the machine's processes) and what happens when it fails.
    ``wall_clock`` times the shared rows (tests pass their own); ``lease_s`` is how long a slot of
    a killed process stays taken."""

    def __init__(self, *, max_in_flight: int, submits_per_s: float, queries_per_s: float = 20,
                 db_path: Path | None = None, lease_s: float = LEASE_S,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.max_in_flight = max_in_flight
        self.submits_per_s = submits_per_s
        self.db_path = db_path
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._lock = threading.Lock()
        self._submits = _Window(submits_per_s)
        self._queries = _Window(queries_per_s)
        self._paused_until = 0.0
        self._throttle_streak = 0
        self._db: _SharedDb | None = None
        if db_path is not None:
            try:
                self._db = _SharedDb(db_path, lease_s=lease_s, clock=wall_clock, on_error=self._fall_back)
            except _DB_ERRORS as exc:
                _report_unusable(db_path, exc)

    @property
    def shared(self) -> bool:
        """True while the limits are shared through the database (False: this process alone)."""
        return self._db is not None

    @contextlib.contextmanager
    def in_flight(self, ticker: Ticker) -> Iterator[None]:
        """Hold one in-flight slot; waiting for it stays responsive to cancellation. The process's
        own slot comes first, so only as many threads as could run wait on the database."""
        while not self._slots.acquire(timeout=0.1):
            ticker.check()
        try:
            ticker.check()  # the slot a Cancel freed must not start the next image
            lease = self._take_lease(ticker)
            try:
                yield
            finally:
                if lease is not None:
                    self._release_lease(lease)
        finally:
            self._slots.release()

    def _take_lease(self, ticker: Ticker) -> str | None:
        """A lease in the shared table, or None when the limit is this process's alone."""
        attempt, ticket = 0, None
        try:
            while (db := self._db) is not None:
                try:
                    lease, ticket = db.take_slot(limit=self.max_in_flight, ticket=ticket)
                except _DB_ERRORS as exc:
                    self._fall_back(db, exc)
                    return None
                if lease is not None:
                    return lease
                attempt += 1
                ticker.wait(SLOT_POLL.delay_s(attempt))  # returns at once, raising Interrupted, on cancellation
            return None
        except BaseException:
            if ticket is not None and (db := self._db) is not None:
                with contextlib.suppress(*_DB_ERRORS):  # give the place up now, not WAITER_STALE_S later
                    db.leave_queue(ticket)
            raise

    def _release_lease(self, lease: str) -> None:
        db = self._db
        if db is None:
            return  # the database failed meanwhile; the row expires by itself
        try:
            db.free_slot(lease)
        except _DB_ERRORS as exc:
            self._fall_back(db, exc)

    def before_send(self, ticker: Ticker) -> None:
        """Block until a submission keeps within the per-second limit and any throttle pause."""
        while (db := self._db) is not None:
            try:
                wait_s = db.admit_submit(limit=self.submits_per_s)
            except _DB_ERRORS as exc:
                self._fall_back(db, exc)
                break
            if wait_s <= 0:
                return
            ticker.wait(wait_s + random.uniform(0.0, PACING_JITTER_S))
        self._admit(self._submits, ticker, respect_pause=True)

    def before_query(self, ticker: Ticker) -> None:
        """Block until a status query keeps within the task API's per-second limit (process-local)."""
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
        """The service answered 429: pause every submitter (of the machine, when shared), longer each time."""
        with self._lock:  # kept locally too, for the case the database fails later
            self._throttle_streak += 1
            backoff_s = THROTTLE_BACKOFF.delay_s(self._throttle_streak)
            self._paused_until = max(self._paused_until, ticker.now() + backoff_s)
        if (db := self._db) is not None:
            try:
                db.throttled()
            except _DB_ERRORS as exc:
                self._fall_back(db, exc)

    def accepted(self) -> None:
        with self._lock:
            self._throttle_streak = 0
        if (db := self._db) is not None:
            try:
                db.accepted()
            except _DB_ERRORS as exc:
                self._fall_back(db, exc)

    def _fall_back(self, db: _SharedDb, exc: BaseException) -> None:
        """Go on with process-local limits; reported once, by whichever thread saw the failure first."""
        with self._lock:
            if self._db is not db:
                return
            self._db = None
        _report_unusable(db.path, exc)
        db.close()


def _report_unusable(path: Path, exc: BaseException) -> None:
    log.error("the shared quota database %s cannot be used (%s: %s); limiting this process alone from now on, "
              "without counting other processes on this machine", path, type(exc).__name__, exc)


_shared: dict[tuple[int, float, float, Path | None], Quota] = {}
_shared_lock = threading.Lock()


def shared_quota(*, max_in_flight: int, submits_per_s: float, queries_per_s: float = 20,
                 db_path: Path | None = None) -> Quota:
    """The process-wide limiter for these limits: every node and batch in the process shares it
    (and, with ``db_path``, every process on the machine using that database)."""
    with _shared_lock:
        key = (max_in_flight, submits_per_s, queries_per_s, db_path)
        if key not in _shared:
            _shared[key] = Quota(max_in_flight=max_in_flight, submits_per_s=submits_per_s,
                                 queries_per_s=queries_per_s, db_path=db_path)
        return _shared[key]
