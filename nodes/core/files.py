"""Writing a file so that a crash, a second process or another user never sees half of it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


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
