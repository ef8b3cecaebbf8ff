"""The task journal: every task is written down the moment the service accepts it, before any
polling, so a crash, a restart or a Cancel never loses a paid result (it stays on the service for
24 hours and `fetch` recovers it). It holds ids, digests and times; never a key or image data.

Writes replace the whole file atomically (temp file, fsync, rename): a crash mid-write leaves the
previous version intact. The newest MAX_ENTRIES tasks of the last KEEP_S seconds are kept."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .protocol import TaskStatus

MAX_ENTRIES = 1000
RETENTION_S = 24 * 3600  # the service forgets tasks and results 24 h after they end
KEEP_S = 2 * RETENTION_S  # older entries help nobody: not resume, not today's budget
FINAL = {s.value for s in TaskStatus if s.is_terminal}


@dataclass(frozen=True)
class Entry:
    task_id: str
    function: str
    digest: str  # of the image and mask bytes, function, prompt and parameters: the cache key
    submitted_at: float  # epoch seconds
    n: int  # images asked for: what may be billed until the task ends
    request_id: str | None = None
    status: str = "PENDING"  # last known TaskStatus value
    image_count: int | None = None  # billed images, once known
    finished_at: float | None = None
    results: str | None = None  # where the results were saved (cache key or folder)
    cached: bool = field(default=False)

    @property
    def recovered(self) -> bool:
        """The results are safely stored (or the task ended without any)."""
        return self.results is not None or (self.status in FINAL and self.status != TaskStatus.SUCCEEDED.value)


class Journal:
    """A small JSON file of recent tasks, safe across threads and crashes."""

    def __init__(self, path: Path, *, max_entries: int = MAX_ENTRIES) -> None:
        self.path = path
        self.max_entries = max_entries
        self._lock = threading.Lock()

    def entries(self) -> list[Entry]:
        """Oldest first. An unreadable file is an error, never silently discarded."""
        if not self.path.is_file():
            return []
        data = json.loads(self.path.read_text(encoding="utf-8"))
        return [Entry(**row) for row in data.get("tasks", [])]

    def record_submitted(self, entry: Entry) -> None:
        with self._editing() as entries:
            entries.append(entry)

    def update(self, task_id: str, **changes: object) -> None:
        with self._editing() as entries:
            for i, entry in enumerate(entries):
                if entry.task_id == task_id:
                    entries[i] = replace(entry, **changes)  # type: ignore[arg-type]
                    return

    def find(self, task_id: str) -> Entry | None:
        return next((e for e in reversed(self.entries()) if e.task_id == task_id), None)

    def newest_unrecovered(self, *, now_s: float | None = None) -> Entry | None:
        """The newest task whose results are not yet stored and that the service may still keep."""
        now_s = time.time() if now_s is None else now_s
        for entry in reversed(self.entries()):
            if not entry.recovered and now_s - entry.submitted_at < RETENTION_S + 3 * 3600:
                return entry
        return None

    def images_since(self, start_s: float) -> int:
        """Images billed, or possibly billed by tasks still running, since ``start_s``."""
        total = 0
        for entry in self.entries():
            if entry.submitted_at < start_s:
                continue
            if entry.image_count is not None:
                total += entry.image_count
            elif entry.status not in FINAL:
                total += entry.n
        return total

    @contextlib.contextmanager
    def _editing(self) -> Iterator[list[Entry]]:
        with self._lock:
            entries = self.entries()
            yield entries
            horizon = time.time() - KEEP_S
            self._write([e for e in entries if e.submitted_at >= horizon][-self.max_entries:])

    def _write(self, entries: list[Entry]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"version": 1, "tasks": [asdict(e) for e in entries]}, ensure_ascii=False, indent=0)
        handle, temp = tempfile.mkstemp(prefix=".journal-", dir=self.path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
