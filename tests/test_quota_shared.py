"""The account's quota shared by every process on the machine through the state database: real
OS processes on one SQLite file, each recording wall-clock times that the test then checks.
Run as a script, this file is also the child process (``python test_quota_shared.py ROLE JSON``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pack_import import register_pack

register_pack()

import pytest  # noqa: E402

from wanx_imageedit.nodes.core.errors import Interrupted  # noqa: E402
from wanx_imageedit.nodes.core.quota import WINDOW_S, Quota, shared_quota  # noqa: E402
from wanx_imageedit.nodes.core.ticker import Ticker  # noqa: E402

# --- the child processes ------------------------------------------------------------------------


def _await_go(params: dict[str, Any]) -> None:
    """Tell the parent this child is ready, then start together with the other child."""
    Path(params["out"] + ".ready").touch()
    deadline = time.monotonic() + 20
    while not Path(params["go"]).exists():
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.005)


def child_cycle(params: dict[str, Any]) -> None:
    """Threads taking slots, holding each for a while (one longer than the lease), recording when."""
    quota = Quota(max_in_flight=2, submits_per_s=100, db_path=Path(params["db"]), lease_s=params["lease_s"])
    assert quota.shared
    held: list[tuple[float, float]] = []

    def worker(number: int) -> None:
        for cycle in range(params["cycles"]):
            hold_s = params["long_hold_s"] if (number, cycle) == (0, 0) else params["hold_s"]
            with quota.in_flight(Ticker()):
                start = time.time()  # inside the slot: recorded intervals lie within the leases
                time.sleep(hold_s)
                held.append((start, time.time()))

    _await_go(params)
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(params["threads"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    Path(params["out"]).write_text(json.dumps(held))


def child_hold(params: dict[str, Any]) -> None:
    """Take slots and keep them until killed (or a minute, should the parent have died)."""
    quota = Quota(max_in_flight=2, submits_per_s=2, db_path=Path(params["db"]), lease_s=params["lease_s"])
    assert quota.shared
    with contextlib.ExitStack() as stack:
        for _ in range(params["slots"]):
            stack.enter_context(quota.in_flight(Ticker()))
        Path(params["out"] + ".ready").touch()
        time.sleep(60)


def child_send(params: dict[str, Any]) -> None:
    quota = Quota(max_in_flight=2, submits_per_s=2, db_path=Path(params["db"]))
    assert quota.shared
    _await_go(params)
    sent = []
    for _ in range(params["sends"]):
        quota.before_send(Ticker())
        sent.append(time.time())
    Path(params["out"]).write_text(json.dumps(sent))


# --- helpers ------------------------------------------------------------------------------------


def spawn(tmp_path: Path, role: str, **params: Any) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "WANX_"))}
    env.update(WANX_STATE_DIR=str(tmp_path / "state"), HOME=str(tmp_path))
    return subprocess.Popen([sys.executable, __file__, role, json.dumps(params)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_ready(out: Path, child: subprocess.Popen[str], *, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not Path(str(out) + ".ready").exists():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the child never got ready"
        time.sleep(0.01)


def run_together(tmp_path: Path, role: str, **params: Any) -> list[Any]:
    """Two children of ``role`` started at the same moment; their recorded lists."""
    go = tmp_path / "go"
    outs = [tmp_path / f"{role}-{n}.json" for n in range(2)]
    children = [spawn(tmp_path, role, out=str(out), go=str(go), **params) for out in outs]
    try:
        for out, child in zip(outs, children, strict=True):
            wait_ready(out, child)
        go.touch()
        for child in children:
            _, err = child.communicate(timeout=25)
            assert child.returncode == 0, err
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    return [json.loads(out.read_text()) for out in outs]


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    # At equal times an end (-1) sorts before a start (+1): touching intervals do not overlap.
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


def cancel_after(ticker: Ticker, delay_s: float) -> threading.Timer:
    timer = threading.Timer(delay_s, ticker.cancel.set)
    timer.start()
    return timer


# --- tests --------------------------------------------------------------------------------------


def test_two_processes_never_hold_more_than_two_slots_together(tmp_path: Path) -> None:
    first, second = run_together(tmp_path, "cycle", db=str(tmp_path / "state" / "state.db"), threads=3,
                                 cycles=3, hold_s=0.1, long_hold_s=0.9, lease_s=0.45)
    intervals = [(start, end) for start, end in first + second]
    assert len(intervals) == 18
    # The 0.9 s holds outlast two leases: only renewal keeps a third holder out meanwhile.
    assert most_at_once(intervals) == 2, (first, second)
    both_running_s = min(max(e for _, e in first), max(e for _, e in second)) - max(
        min(s for s, _ in first), min(s for s, _ in second))
    assert both_running_s > 0.5, (first, second)  # the two really competed for the same slots


def test_a_killed_holder_frees_its_slots_within_the_lease(tmp_path: Path) -> None:
    db, out = tmp_path / "state" / "state.db", tmp_path / "hold"
    child = spawn(tmp_path, "hold", db=str(db), out=str(out), slots=2, lease_s=0.5)
    try:
        wait_ready(out, child)
        quota = Quota(max_in_flight=2, submits_per_s=2, db_path=db)
        ticker = Ticker()
        cancel_after(ticker, 1.2)  # over twice the lease: the live child's renewals keep both slots taken
        with pytest.raises(Interrupted), quota.in_flight(ticker):
            pass
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=5)
        killed = time.monotonic()
        with quota.in_flight(Ticker()), quota.in_flight(Ticker()):
            freed_s = time.monotonic() - killed
    finally:
        if child.poll() is None:
            child.kill()
    assert freed_s < 0.5 + 0.6  # the lease, plus at most one poll interval


def test_a_busy_process_cannot_starve_another(tmp_path: Path) -> None:
    """A process re-taking the slot it just freed would keep others out for its whole batch."""
    db, out, go = tmp_path / "state" / "state.db", tmp_path / "busy.json", tmp_path / "go"
    busy = spawn(tmp_path, "cycle", db=str(db), out=str(out), go=str(go), threads=3, cycles=8, hold_s=0.15,
                 long_hold_s=0.15, lease_s=5.0)
    try:
        wait_ready(out, busy)
        go.touch()
        time.sleep(0.3)  # the busy process holds both slots, its third thread waits
        quota = Quota(max_in_flight=2, submits_per_s=2, db_path=db)
        waits_s = []
        for _ in range(3):
            asked = time.monotonic()
            with quota.in_flight(Ticker()):
                waits_s.append(time.monotonic() - asked)
                time.sleep(0.15)
        assert busy.poll() is None  # all three came while the busy process was still at it
        _, err = busy.communicate(timeout=20)
        assert busy.returncode == 0, err
    finally:
        if busy.poll() is None:
            busy.kill()
    assert max(waits_s) < 0.15 + 0.25 + 0.3, waits_s  # one hold, one poll interval, some slack


def test_submissions_of_two_processes_keep_to_two_per_second(tmp_path: Path) -> None:
    first, second = run_together(tmp_path, "send", db=str(tmp_path / "state" / "state.db"), sends=4)
    sent = sorted(first + second)
    # At most two in any second as the service counts it (WINDOW_S leaves the margin).
    assert all(later - earlier >= 1.0 for earlier, later in zip(sent, sent[2:], strict=False)), sent
    assert sent[-1] - sent[0] < 3 * WINDOW_S + 0.5  # and no slower than the limit requires


def test_cancel_while_waiting_returns_within_a_fifth_of_a_second(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    elsewhere = Quota(max_in_flight=2, submits_per_s=2, db_path=db)
    here = Quota(max_in_flight=2, submits_per_s=2, db_path=db)
    with elsewhere.in_flight(Ticker()), elsewhere.in_flight(Ticker()):
        ticker = Ticker()
        canceled_at: list[float] = []

        def cancel() -> None:
            canceled_at.append(time.monotonic())
            ticker.cancel.set()

        threading.Timer(0.6, cancel).start()  # the poll interval has grown by then
        with pytest.raises(Interrupted), here.in_flight(ticker):
            pass
        assert time.monotonic() - canceled_at[0] < 0.2
    with here.in_flight(Ticker()):  # and the slots came back once released
        pass


def test_a_throttle_pause_holds_every_process(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    throttled, other = (Quota(max_in_flight=2, submits_per_s=2, db_path=db) for _ in range(2))
    throttled.throttled(Ticker())
    started = time.monotonic()
    other.before_send(Ticker())
    assert time.monotonic() - started >= 0.75  # THROTTLE_BACKOFF's first pause: 0.8 to 1 s
    other.accepted()
    assert sqlite3.connect(db).execute("SELECT value FROM quota_state WHERE key = 'throttle_streak'").fetchone() == (0,)


def test_a_damaged_database_falls_back_loudly_and_still_limits_the_process(tmp_path: Path, caplog) -> None:
    db = tmp_path / "state.db"
    garbage = b"this is no SQLite database \x00\xff" * 300
    db.write_bytes(garbage)
    with caplog.at_level(logging.ERROR, logger="wanx_imageedit.nodes.core.quota"):
        quota = Quota(max_in_flight=1, submits_per_s=2, db_path=db)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(db) in errors[0].getMessage()
    assert not quota.shared
    with quota.in_flight(Ticker()):
        ticker = Ticker()
        cancel_after(ticker, 0.3)
        with pytest.raises(Interrupted), quota.in_flight(ticker):
            pass  # the one slot is taken in this process
        quota.before_send(Ticker())  # a paid task's submission is not stopped
    assert db.read_bytes() == garbage  # never repaired or replaced: it may hold the journal


def test_the_tables_live_beside_the_journal_s(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with sqlite3.connect(db) as journal:  # as the journal may have made the file first
        journal.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        journal.execute("INSERT INTO meta VALUES ('journal_schema', '7')")
        journal.execute("CREATE TABLE tasks (task_id TEXT PRIMARY KEY)")
        journal.execute("INSERT INTO tasks VALUES ('t-1')")
    journal.close()
    quota = Quota(max_in_flight=2, submits_per_s=2, db_path=db)
    with quota.in_flight(Ticker()):
        quota.before_send(Ticker())
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert check.execute("SELECT value FROM meta WHERE key = 'journal_schema'").fetchone() == ("7",)
    assert check.execute("SELECT task_id FROM tasks").fetchall() == [("t-1",)]
    assert check.execute("SELECT COUNT(*) FROM quota_leases").fetchone() == (0,)  # released on exit
    assert check.execute("SELECT COUNT(*) FROM quota_submits").fetchone() == (1,)
    fresh = tmp_path / "fresh" / "state.db"
    Quota(max_in_flight=2, submits_per_s=2, db_path=fresh)
    assert sqlite3.connect(fresh).execute("SELECT value FROM meta").fetchall() == [("1",)]


def test_shared_quota_is_one_per_database(tmp_path: Path) -> None:
    limits = {"max_in_flight": 2, "submits_per_s": 2.0}
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    assert shared_quota(**limits, db_path=a) is shared_quota(**limits, db_path=a)
    assert shared_quota(**limits, db_path=a) is not shared_quota(**limits, db_path=b)
    assert not shared_quota(**limits).shared and shared_quota(**limits, db_path=a).shared


if __name__ == "__main__":
    {"cycle": child_cycle, "hold": child_hold, "send": child_send}[sys.argv[1]](json.loads(sys.argv[2]))
