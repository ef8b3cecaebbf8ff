"""A persistent, content-addressed, size-bounded cache of results. The key is a digest of
everything that defines an edit (image and mask bytes, function, prompt, parameters with seed
and n), so an identical request returns the stored images, across restarts, without sending.

Layout: <folder>/<key[:2]>/<key>/{0.png, 1.png, ..., meta.json}, written to a temporary folder
and renamed into place, so a reader never sees half an entry. Eviction: least recently used
(reads touch meta.json) until the total is under the bound."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .functions import MODEL

DEFAULT_MAX_BYTES = 2 * 1024**3


def digest(*, function: str, prompt: str, parameters: Mapping[str, object], image_sha256: str,
           mask_sha256: str | None, endpoint: str) -> str:
    """The identity of one image's edit at one endpoint. Canonical JSON, so key order never matters."""
    identity = {"model": MODEL, "function": function, "prompt": prompt, "endpoint": endpoint,
                "parameters": dict(sorted(parameters.items())), "image": image_sha256, "mask": mask_sha256}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Hit:
    files: tuple[bytes, ...]  # the result files exactly as the service returned them
    meta: Mapping[str, Any]  # task_id, stored_at, ...


class ResultCache:
    def __init__(self, folder: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def get(self, key: str) -> Hit | None:
        entry = self._path(key)
        meta_path = entry / "meta.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            files = tuple((entry / f"{i}.png").read_bytes() for i in range(int(meta["count"])))
        except (OSError, ValueError, KeyError):
            return None  # a damaged entry is a miss; the next put replaces it
        with contextlib.suppress(OSError):
            os.utime(meta_path)
        return Hit(files=files, meta=meta)

    def put(self, key: str, files: Sequence[bytes], *, meta: Mapping[str, Any]) -> None:
        entry = self._path(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".put-", dir=entry.parent))
        for i, data in enumerate(files):
            (staging / f"{i}.png").write_bytes(data)
        (staging / "meta.json").write_text(
            json.dumps({**meta, "count": len(files), "stored_at": time.time()}, ensure_ascii=False), encoding="utf-8")
        with self._lock:
            if entry.exists():
                shutil.rmtree(entry, ignore_errors=True)
            os.replace(staging, entry)
            self._evict()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / key

    def _evict(self) -> None:
        entries = []
        total = 0
        for meta in self.folder.glob("??/*/meta.json"):
            entry = meta.parent
            size = sum(f.stat().st_size for f in entry.iterdir())
            entries.append((meta.stat().st_mtime, size, entry))
            total += size
        for _, size, entry in sorted(entries):
            if total <= self.max_bytes:
                break
            shutil.rmtree(entry, ignore_errors=True)
            total -= size
