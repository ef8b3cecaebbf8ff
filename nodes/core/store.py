"""The pack's memory on disk: the task journal, the result cache and the daily budget.

Where: WANX_STATE_DIR, else ComfyUI's user directory (<user>/wanx_imageedit) inside ComfyUI,
else ~/.wanx-imageedit for the command line. Settings (all optional):
- WANX_CACHE=off turns the result cache off; WANX_CACHE_MAX_MB bounds it (default 2048).
- WANX_DAILY_IMAGE_LIMIT: at most this many images per day (local time);
  WANX_DAILY_BUDGET: at most this much money per day, in the chosen currency (CNY or USD)."""

from __future__ import annotations

import datetime
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .cache import DEFAULT_MAX_BYTES, ResultCache
from .errors import WanxError
from .functions import PRICE_PER_IMAGE
from .journal import Journal
from .settings import env_number

DEFAULT_CLI_DIR = Path("~/.wanx-imageedit")


class BudgetError(WanxError):
    """A submission would cross the daily limit; nothing was sent."""


@dataclass(frozen=True)
class Store:
    folder: Path
    journal: Journal
    cache: ResultCache | None
    daily_image_limit: int | None
    limit_source: str | None = None

    @classmethod
    def open(cls, *, default_dir: Path, environ: Mapping[str, str] | None = None, currency: str = "CNY") -> Store:
        env = os.environ if environ is None else environ
        folder = Path(env.get("WANX_STATE_DIR") or default_dir).expanduser()
        cache = None
        if env.get("WANX_CACHE", "").strip().lower() not in ("off", "0", "false", "no"):
            max_mb = env_number(env, "WANX_CACHE_MAX_MB")
            max_bytes = DEFAULT_MAX_BYTES if max_mb is None else int(max_mb * 1024 * 1024)
            cache = ResultCache(folder / "cache", max_bytes=max_bytes)
        limit, source = _daily_limit(env, currency=currency)
        return cls(folder=folder, journal=Journal(folder / "journal.json"), cache=cache,
                   daily_image_limit=limit, limit_source=source)

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


def _daily_limit(env: Mapping[str, str], *, currency: str) -> tuple[int | None, str | None]:
    images = env_number(env, "WANX_DAILY_IMAGE_LIMIT")
    money = env_number(env, "WANX_DAILY_BUDGET")
    limits = []
    if images is not None:
        limits.append((int(images), f"WANX_DAILY_IMAGE_LIMIT={int(images)}"))
    if money is not None:
        unit = PRICE_PER_IMAGE[currency]
        limits.append((math.floor(money / unit + 1e-9), f"WANX_DAILY_BUDGET={money:g} {currency} at {unit} per image"))
    return min(limits) if limits else (None, None)
