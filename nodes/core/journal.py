"""The task journal: the source of truth for every paid task, shared by every process on the
machine (ComfyUI, the CLI, a second ComfyUI) through one SQLite database, ``state.db`` in the state
folder (WAL mode, a busy timeout, transactions instead of whole-file rewrites).

A task is written down before its create request is sent (a claim, which also reserves its
images against the daily budget), again the moment the service accepts it, and again when its
results are delivered, index by index. So a crash, a restart, a Cancel or a lost answer never
loses a paid result: `fetch` finds what is missing, and re-running an identical seeded edit
attaches to the task that already exists instead of paying again. It holds ids, digests and
times; never a key or image data.

A database that cannot be opened is set aside (renamed ``state.db.damaged-<time>``) with a loud
log line and a new one is started: a damaged journal never stops a billed task from being polled
and delivered. Today's ``journal.json`` (schema 1) is imported once and renamed."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import BudgetError
from .files import connect_wal
from .protocol import TaskStatus

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
MAX_ENTRIES = 1000
RETENTION_S = 24 * 3600  # the service forgets tasks and results 24 h after they end
KEEP_S = 2 * RETENTION_S  # older entries help nobody: not resume, not today's budget
BUSY_TIMEOUT_S = 10.0
DB_NAME = "state.db"
LEGACY_NAME = "journal.json"

# Our own states around a create request, beside the service's task states.
SUBMITTING = "SUBMITTING"  # claimed and waiting for its turn: its images are reserved, nothing was sent
SENDING = "SENDING"  # the create request is going out: a crash now leaves an uncertain create
UNCERTAIN = "UNCERTAIN"  # the create went out and its answer was lost: a paid task may exist
REFUSED = "REFUSED"  # the service refused the create, or it was never sent: nothing was billed
ATTACHED = "ATTACHED"  # the image was delivered from another claim's task of the same edit: nothing billed
FINAL = frozenset({*(s.value for s in TaskStatus if s.is_terminal), REFUSED, ATTACHED})
# An owner that has not been heard of for this long is gone (killed, crashed): its task is adoptable.
OWNER_STALE_S = 90.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS tasks (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT UNIQUE,
    function TEXT NOT NULL,
    digest TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    n INTEGER NOT NULL,
    request_id TEXT,
    status TEXT NOT NULL,
    image_count INTEGER,
    finished_at REAL,
    results TEXT,
    ok_indices TEXT,
    delivered TEXT NOT NULL DEFAULT '',
    owner TEXT,
    heartbeat_at REAL
);
CREATE INDEX IF NOT EXISTS tasks_digest ON tasks (digest);
CREATE INDEX IF NOT EXISTS tasks_submitted ON tasks (submitted_at);
"""


def process_id() -> str:
    """Who holds a claim: this machine, this process, and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _indices(text: str | None) -> frozenset[int] | None:
    return None if text is None else frozenset(int(i) for i in text.split(",") if i)


def _text(indices: frozenset[int] | Sequence[int]) -> str:
    return ",".join(str(i) for i in sorted(indices))


@dataclass(frozen=True)
class Entry:
    task_id: str | None
    function: str
    digest: str  # of the image and mask, function, prompt and parameters: the cache key
    submitted_at: float  # epoch seconds: when the create request was claimed or sent
    n: int  # images asked for: what may be billed until the task ends
    request_id: str | None = None
    status: str = "PENDING"  # SUBMITTING, SENDING, UNCERTAIN, REFUSED, ATTACHED or the last TaskStatus
    image_count: int | None = None  # billed images, once known
    finished_at: float | None = None
    results: str | None = None  # where the results were saved: "cache:<key>" or "returned to the caller"
    ok_indices: frozenset[int] | None = None  # result indices that have an image, once known
    delivered: frozenset[int] = frozenset()  # result indices handed to the user
    owner: str | None = None
    heartbeat_at: float | None = None
    row: int = 0

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def missing(self) -> frozenset[int]:
        """Result indices that were billed but never handed to the user (nor cached)."""
        if self.status != TaskStatus.SUCCEEDED.value or (self.results or "").startswith("cache:"):
            return frozenset()
        return (self.ok_indices if self.ok_indices is not None else frozenset({-1})) - self.delivered

    @property
    def recovered(self) -> bool:
        """The results are safely stored or delivered, or the task ended without any."""
        return self.final and not self.missing

    def owner_alive(self, *, now_s: float) -> bool:
        return self.heartbeat_at is not None and now_s - self.heartbeat_at < OWNER_STALE_S

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> Entry:
        values = dict(row)
        values["ok_indices"] = _indices(values["ok_indices"])
        values["delivered"] = _indices(values["delivered"]) or frozenset()
        return cls(**values)


@dataclass(frozen=True)
class Claim:
    """One image's place in the journal for this run, holding its reserved images until its turn."""

    row: int


class Journal:
    """The tasks of the last KEEP_S seconds (at most MAX_ENTRIES), in ``<folder>/state.db``."""

    def __init__(self, path: Path, *, max_entries: int = MAX_ENTRIES) -> None:
        self.path = path if path.suffix == ".db" else path.with_name(DB_NAME)
        self.max_entries = max_entries
        self._local = threading.local()
        self._open_lock = threading.Lock()
        self._opened = False

    # --- the database -----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        with self._open_lock:
            if not self._opened:
                self._open_or_set_aside()
                self._opened = True
        connection = self._new_connection()
        self._local.connection = connection
        return connection

    def _new_connection(self) -> sqlite3.Connection:
        connection = connect_wal(self.path, busy_timeout_s=BUSY_TIMEOUT_S)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    def _open_or_set_aside(self) -> None:
        try:
            self._create_schema()
        except sqlite3.OperationalError:
            raise  # locked or unreadable for now, not damaged: never set a good journal aside for that
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            log.error("the task journal %s is damaged (%s); it was set aside as %s and a new one started. "
                      "Tasks recorded only there can still be fetched by id (`wanx-imageedit fetch TASK_ID`).",
                      self.path, exc, aside.name)
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
            self._create_schema()
        self._import_legacy()

    def _create_schema(self) -> None:
        connection = self._new_connection()
        try:
            connection.executescript(_SCHEMA)
            connection.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('journal_schema', ?)",
                               (str(SCHEMA_VERSION),))
            version = int(connection.execute("SELECT value FROM meta WHERE key = 'journal_schema'").fetchone()[0])
            if version > SCHEMA_VERSION:
                log.warning("the task journal %s has schema %d, newer than this pack's %d", self.path, version,
                            SCHEMA_VERSION)
        finally:
            connection.close()

    def _import_legacy(self) -> None:
        legacy = self.path.with_name(LEGACY_NAME)
        if not legacy.is_file():
            return
        try:
            rows = json.loads(legacy.read_text(encoding="utf-8")).get("tasks", [])
        except (OSError, ValueError, AttributeError) as exc:
            log.error("the old journal %s is unreadable (%s); it is left in place", legacy, exc)
            return
        fields = {f.name for f in dataclasses.fields(Entry)}
        with self._transaction(connection=self._new_connection()) as db:
            for row in rows:
                entry = Entry(**{k: v for k, v in row.items() if k in fields and k != "delivered"})
                # Schema 1 kept no indices: "returned to the caller" meant every image was delivered.
                delivered = "0,1,2,3" if entry.results else ""
                db.execute(
                    "INSERT OR IGNORE INTO tasks (task_id, function, digest, submitted_at, n, request_id, status, "
                    "image_count, finished_at, results, ok_indices, delivered) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (entry.task_id, entry.function, entry.digest, entry.submitted_at, entry.n, entry.request_id,
                     entry.status, entry.image_count, entry.finished_at, entry.results,
                     delivered or None, delivered))
        os.replace(legacy, legacy.with_name(LEGACY_NAME + ".imported"))
        log.info("imported %d tasks from %s into %s", len(rows), legacy, self.path)

    @contextlib.contextmanager
    def _transaction(self, *, connection: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: one writer at a time across processes; the busy timeout waits for it."""
        db = connection or self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # --- reading ------------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Oldest first."""
        rows = self._connect().execute("SELECT * FROM tasks ORDER BY submitted_at, row").fetchall()
        return [Entry._from_row(row) for row in rows]

    def find(self, task_id: str) -> Entry | None:
        row = self._connect().execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return Entry._from_row(row) if row else None

    def get(self, row: int) -> Entry | None:
        found = self._connect().execute("SELECT * FROM tasks WHERE row = ?", (row,)).fetchone()
        return Entry._from_row(found) if found else None

    def newest_unrecovered(self, *, now_s: float | None = None) -> Entry | None:
        """The newest task whose results are not all delivered or stored, and that the service may
        still keep (an uncertain create counts: the task may exist)."""
        now_s = time.time() if now_s is None else now_s
        for entry in reversed(self.entries()):
            if entry.status in (REFUSED, SUBMITTING) or entry.recovered \
                    or now_s - entry.submitted_at >= RETENTION_S + 3 * 3600:
                continue  # a claim that never sent anything has nothing to recover
            if entry.task_id is None and entry.owner_alive(now_s=now_s):
                continue  # another process is sending it right now
            return entry
        return None

    def images_since(self, start_s: float) -> int:
        """Images billed, or possibly billed by tasks not yet ended, since ``start_s``."""
        return self._images_since(self._connect(), start_s)

    @staticmethod
    def _images_since(db: sqlite3.Connection, start_s: float) -> int:
        final = tuple(FINAL)
        marks = ",".join("?" * len(final))
        row = db.execute(
            f"SELECT COALESCE(SUM(CASE WHEN image_count IS NOT NULL THEN image_count "
            f"WHEN status NOT IN ({marks}) THEN n ELSE 0 END), 0) FROM tasks WHERE submitted_at >= ?",
            (*final, start_s)).fetchone()
        return int(row[0])

    def claimed_task_ids(self) -> frozenset[str]:
        rows = self._connect().execute("SELECT task_id FROM tasks WHERE task_id IS NOT NULL").fetchall()
        return frozenset(row[0] for row in rows)

    # --- writing ------------------------------------------------------------------------------

    def reserve(
        self, count: int, *, function: str, n: int, owner: str, daily_limit: int | None = None,
        limit_source: str | None = None, day_start_s: float = 0.0, now_s: float | None = None,
    ) -> list[Claim]:
        """Claim ``count`` images of a run in one transaction, reserving ``n`` billed images each, and
        refuse the whole run with BudgetError when the reservations would cross the daily limit.
        Atomic across processes. Each claim learns its digest, and may attach, at its turn (`attach`)."""
        now_s = time.time() if now_s is None else now_s
        with self._transaction() as db:
            # Claims of a run that died before their turn sent nothing: their reservations go back.
            db.execute("UPDATE tasks SET status = ?, image_count = 0 WHERE status = ? AND "
                       "(heartbeat_at IS NULL OR heartbeat_at < ?)", (REFUSED, SUBMITTING, now_s - OWNER_STALE_S))
            rows = [int(db.execute(
                "INSERT INTO tasks (function, digest, submitted_at, n, status, owner, heartbeat_at) "
                "VALUES (?,?,?,?,?,?,?)", (function, "", now_s, n, SUBMITTING, owner, now_s)).lastrowid or 0)
                for _ in range(count)]
            if daily_limit is not None and count:
                used = self._images_since(db, day_start_s) - count * n  # the rows just inserted count in the sum
                if used + count * n > daily_limit:
                    raise BudgetError.over_limit(images=count * n, used=used, limit=daily_limit, source=limit_source)
            self._trim(db, now_s=now_s)
        return [Claim(row=row) for row in rows]

    def attach(self, row: int, key: str, *, now_s: float | None = None) -> Entry | None:
        """At claim ``row``'s turn, now that its digest ``key`` is known: the task of an identical edit
        to attach to (the claim is then released, nothing billed), or None (the claim keeps its
        reservation and gets the digest). One transaction, so two processes never both create."""
        now_s = time.time() if now_s is None else now_s
        with self._transaction() as db:
            own = db.execute("SELECT owner FROM tasks WHERE row = ?", (row,)).fetchone()
            found = self._attachable(db, key, now_s=now_s, owner=own[0] if own else None)
            if found is not None:
                db.execute("UPDATE tasks SET status = ?, image_count = 0, finished_at = ?, digest = ? WHERE row = ?",
                           (ATTACHED, now_s, key, row))
            else:
                db.execute("UPDATE tasks SET digest = ? WHERE row = ?", (key, row))
            return found

    def _attachable(self, db: sqlite3.Connection, key: str, *, now_s: float, owner: str | None) -> Entry | None:
        """A task of the same edit to attach to; never one of the same run (``owner``): a batch may
        hold the same image twice on purpose."""
        rows = db.execute("SELECT * FROM tasks WHERE digest = ? AND submitted_at >= ? ORDER BY submitted_at DESC",
                          (key, now_s - RETENTION_S)).fetchall()
        for row in rows:
            entry = Entry._from_row(row)
            if entry.status in (REFUSED, ATTACHED) or (owner and entry.owner == owner):
                continue
            if entry.missing or (not entry.final and (entry.task_id is not None or entry.owner_alive(now_s=now_s))):
                return entry
        return None

    def _trim(self, db: sqlite3.Connection, *, now_s: float) -> None:
        db.execute("DELETE FROM tasks WHERE submitted_at < ?", (now_s - KEEP_S,))
        db.execute("DELETE FROM tasks WHERE row NOT IN (SELECT row FROM tasks ORDER BY submitted_at DESC, row DESC "
                   "LIMIT ?)", (self.max_entries,))

    def record_submitted(self, entry: Entry) -> int:
        """A task the service accepted, written before the first poll. Returns its row."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO tasks (task_id, function, digest, submitted_at, n, request_id, status, owner, "
                "heartbeat_at) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(task_id) DO UPDATE SET status = excluded.status",
                (entry.task_id, entry.function, entry.digest, entry.submitted_at, entry.n, entry.request_id,
                 entry.status, entry.owner, entry.heartbeat_at))
            self._trim(db, now_s=time.time())
            return int(cursor.lastrowid or 0)

    def set(self, row: int, **changes: object) -> None:
        """Change one claim's columns (task_id, status, request_id, image_count, ...)."""
        self._write(row, changes)

    def update(self, task_id: str, **changes: object) -> None:
        found = self._connect().execute("SELECT row FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if found is not None:
            self._write(int(found[0]), changes)

    def adopt(self, row: int, task_id: str, *, request_id: str | None, status: str) -> bool:
        """Give claim ``row`` the task ``task_id`` found after an uncertain create, unless another
        claim already holds it. Atomic across processes."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM tasks WHERE task_id = ?", (task_id,)).fetchone():
                return False
            db.execute("UPDATE tasks SET task_id = ?, request_id = ?, status = ? WHERE row = ?",
                       (task_id, request_id, status, row))
            return True

    def delivered(self, task_id: str, indices: Sequence[int], *, ok_indices: Sequence[int] | None = None,
                  results: str | None = None) -> None:
        """Result ``indices`` of the task were handed to the user (added to the earlier ones)."""
        with self._transaction() as db:
            row = db.execute("SELECT delivered, ok_indices FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
            if row is None:
                return
            done = (_indices(row["delivered"]) or frozenset()) | frozenset(indices)
            ok = _text(ok_indices) if ok_indices is not None else row["ok_indices"]
            db.execute("UPDATE tasks SET delivered = ?, ok_indices = ?, results = COALESCE(?, results) "
                       "WHERE task_id = ?", (_text(done), ok, results, task_id))

    def undeliver(self, task_id: str, indices: Sequence[int]) -> None:
        """Result ``indices`` never reached the user after all (the host dropped them on a Cancel):
        `fetch` offers them again."""
        with self._transaction() as db:
            row = db.execute("SELECT delivered FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
            if row is not None:
                left = (_indices(row["delivered"]) or frozenset()) - frozenset(indices)
                db.execute("UPDATE tasks SET delivered = ? WHERE task_id = ?", (_text(left), task_id))

    def heartbeat(self, rows: Sequence[int], *, now_s: float | None = None) -> None:
        if rows:
            marks = ",".join("?" * len(rows))
            with self._transaction() as db:
                db.execute(f"UPDATE tasks SET heartbeat_at = ? WHERE row IN ({marks})",
                           (time.time() if now_s is None else now_s, *rows))

    def _write(self, row: int, changes: dict[str, object]) -> None:
        allowed = {f.name for f in dataclasses.fields(Entry)} - {"row"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"not journal columns: {sorted(unknown)}")
        values = {k: _text(v) if k in ("ok_indices", "delivered") and v is not None else v  # type: ignore[arg-type]
                  for k, v in changes.items()}
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._transaction() as db:
            db.execute(f"UPDATE tasks SET {assignments} WHERE row = ?", (*values.values(), row))
