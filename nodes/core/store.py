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
from .journal import DB_NAME, Claim, Journal
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
        return cls(folder=state.folder, journal=Journal(state.folder / DB_NAME), cache=cache,
                   daily_image_limit=state.daily_image_limit, limit_source=state.limit_source)

    def reserve(self, count: int, *, function: str, n: int, owner: str) -> list[Claim]:
        """Claim ``count`` images of a run and reserve ``n`` billed images each against today's limit,
        in one transaction shared by every process (BudgetError when over; nothing was sent)."""
        return self.journal.reserve(count, function=function, n=n, owner=owner,
                                    daily_limit=self.daily_image_limit, limit_source=self.limit_source,
                                    day_start_s=day_start_s())

    def check_budget(self, *, images: int, now_s: float | None = None) -> None:
        """Refuse a submission that would cross the daily limit (a check only: `reserve` also claims)."""
        if self.daily_image_limit is None or images == 0:
            return
        used = self.journal.images_since(day_start_s(now_s))
        if used + images > self.daily_image_limit:
            raise BudgetError.over_limit(images=images, used=used, limit=self.daily_image_limit,
                                         source=self.limit_source)


def day_start_s(now_s: float | None = None) -> float:
    """Local midnight of today: the daily limits count from there."""
    now = datetime.datetime.fromtimestamp(time.time() if now_s is None else now_s)
    return now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()

