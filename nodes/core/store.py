"""The pack's memory on disk: the task journal, the result cache and the daily budget.

Where: WANX_STATE_DIR, else ComfyUI's user directory (<user>/wanx_imageedit) inside ComfyUI,
else ~/.wanx-imageedit for the command line. Settings (all optional):
- WANX_CACHE=off turns the result cache off; WANX_CACHE_MAX_MB bounds it (default 2048).
- WANX_DAILY_IMAGE_LIMIT: at most this many images per day (local time);
  WANX_DAILY_BUDGET: at most this much money per day, in the chosen currency (CNY or USD)."""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .cache import DEFAULT_MAX_BYTES, ResultCache
from .errors import BudgetError
from .journal import Journal
from .settings import StateSettings

DEFAULT_CLI_DIR = Path("~/.wanx-imageedit")


@dataclass(frozen=True)
class Store:
    folder: Path
    journal: Journal
    cache: ResultCache | None
    daily_image_limit: int | None
    limit_source: str | None = None

    @classmethod
    def open(cls, state: StateSettings | None = None, *, default_dir: Path = DEFAULT_CLI_DIR,
             environ: Mapping[str, str] | None = None, currency: str = "CNY") -> Store:
        """The store that ``state`` describes. Without it, the settings are read from ``environ``
        (default os.environ) here: the older way of calling, kept for its callers."""
        if state is None:
            state = StateSettings.from_env(environ, default_dir=default_dir, currency=currency)
        cache = None
        if state.cache:
            max_bytes = DEFAULT_MAX_BYTES if state.cache_max_mb is None else int(state.cache_max_mb * 1024 * 1024)
            cache = ResultCache(state.folder / "cache", max_bytes=max_bytes)
        return cls(folder=state.folder, journal=Journal(state.folder / "journal.json"), cache=cache,
                   daily_image_limit=state.daily_image_limit, limit_source=state.limit_source)

    def check_budget(self, *, images: int, now_s: float | None = None) -> None:
        """Refuse, before sending, a submission that would cross the daily limit."""
        if self.daily_image_limit is None or images == 0:
            return
        now_s = time.time() if now_s is None else now_s
        midnight = datetime.datetime.fromtimestamp(now_s).replace(hour=0, minute=0, second=0, microsecond=0)
        used = self.journal.images_since(midnight.timestamp())
        if used + images > self.daily_image_limit:
            raise BudgetError(
                f"this run would send {images} image(s), but {used} of today's limit of "
                f"{self.daily_image_limit} ({self.limit_source}) are already used or in flight",
                advice="Nothing was sent. Raise or unset WANX_DAILY_IMAGE_LIMIT / WANX_DAILY_BUDGET, or wait until tomorrow.",
            )

