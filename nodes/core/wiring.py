"""The one way an adapter (the nodes, the CLI) turns settings into a working engine: client, the
process-wide quota, and the on-disk store, wired once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import runner
from .client import DashScopeClient
from .images import ResultBatch
from .outcome import EditOutcome, Progress, Recovered
from .quota import Quota, shared_quota
from .request import EditRequest
from .settings import Settings
from .store import Store


@dataclass(frozen=True)
class Engine:
    settings: Settings
    client: DashScopeClient
    quota: Quota
    store: Store | None  # None: nothing journaled, cached or budgeted (a private emulator)

    def run(self, request: EditRequest, *, reuse: bool = True, should_cancel: Callable[[], bool] = lambda: False,
            on_progress: Callable[[Progress], None] = lambda _: None, keep_files: bool = False,
            output: ResultBatch | None = None) -> EditOutcome:
        return runner.run(request, client=self.client, quota=self.quota, store=self.store, reuse=reuse,
                          should_cancel=should_cancel, on_progress=on_progress, keep_files=keep_files,
                          output=output)

    def recover(self, task_id: str | None, *, should_cancel: Callable[[], bool] = lambda: False,
                on_progress: Callable[[Progress], None] = lambda _: None) -> Recovered:
        if self.store is None:
            raise ValueError("recovery needs the store (the task journal)")
        return runner.recover(task_id, client=self.client, store=self.store, should_cancel=should_cancel,
                              on_progress=on_progress)


def connect(settings: Settings, *, store: Store | None) -> Engine:
    """An engine for ``settings``. With a store, the account's quota is shared by every process on
    the machine through the store's database; without one (a private emulator), by this process."""
    quota = shared_quota(max_in_flight=settings.max_in_flight, submits_per_s=settings.submits_per_s,
                         db_path=store.journal.path if store is not None else None)
    return Engine(settings=settings, client=DashScopeClient(settings), store=store, quota=quota)
