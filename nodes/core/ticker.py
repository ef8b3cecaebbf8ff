"""Clock, sleep and cancellation as one value, passed in so tests and the host drive them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import Interrupted

__all__ = ["Interrupted", "Ticker"]


@dataclass
class Ticker:
    """``wait`` returns at once when ``cancel`` is set, and raises Interrupted."""

    cancel: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], float] = time.monotonic

    def now(self) -> float:
        return self.clock()

    def wait(self, seconds: float) -> None:
        if self.cancel.wait(max(0.0, seconds)):
            raise Interrupted

    def check(self) -> None:
        if self.cancel.is_set():
            raise Interrupted
