"""Files shared with crashes and other processes: written so that no one ever sees half of one, and
the state database opened so that two processes starting at once both get it."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from .backoff import Backoff


def atomic_write(path: Path, data: bytes | str, *, private: bool = False) -> None:
    """Replace ``path`` with ``data`` in one step: a temp file in the same folder (fsynced), then
    ``os.replace``, atomic on POSIX and Windows. ``private``: the file is 0600 from its first byte
    (mkstemp creates it so) in a 0700 folder, for the stored key."""
    path.parent.mkdir(mode=0o700 if private else 0o777, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if not private and hasattr(os, "fchmod"):
                # mkstemp's 0600 would make a shared cache file unreadable to the user's other tools.
                os.fchmod(handle.fileno(), 0o644)
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def connect_wal(path: Path, *, busy_timeout_s: float) -> sqlite3.Connection:
    """A connection to the shared state database in WAL mode (autocommit; transactions are explicit).
    Switching a new database to WAL needs it alone for a moment, and SQLite answers "locked" at once
    when another process is doing the same: wait and try again, within the busy timeout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + busy_timeout_s
    attempt = 0
    while True:
        connection = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return connection
        except sqlite3.OperationalError as exc:
            connection.close()
            attempt += 1
            if not _contended(exc) or time.monotonic() > deadline:
                raise
            time.sleep(_OPEN_RETRY.delay_s(attempt))


def _contended(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


_OPEN_RETRY = Backoff(first_s=0.02, cap_s=0.5)
