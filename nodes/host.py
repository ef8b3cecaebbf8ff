"""The only module that touches the ComfyUI runtime: settings location, interruption, the
progress bar and the node's progress text. Everything else is the host-free core."""

from __future__ import annotations

import logging
from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_execution.utils import get_executing_context
from server import PromptServer

from .core.errors import CanceledError
from .core.outcome import EditOutcome, Progress, Recovered
from .core.request import EditRequest
from .core.settings import Settings, StateSettings
from .core.store import Store
from .core.wiring import Engine, connect

log = logging.getLogger(__name__)

PACK_DIR_NAME = "wanx_imageedit"


def pack_user_dir() -> Path:
    """Our folder in ComfyUI's user directory (the stored key, later the journal and cache)."""
    return Path(folder_paths.get_user_directory()) / PACK_DIR_NAME


def settings() -> Settings:
    return Settings.from_env(stored_dir=pack_user_dir())


def store(current: Settings | None = None) -> Store:
    """The journal, result cache and budget: in WANX_STATE_DIR, else in ComfyUI's user directory."""
    return Store.open(StateSettings.from_env(default_dir=pack_user_dir(),
                                             currency=current.currency if current else "CNY"))


def newest_unrecovered_task() -> str | None:
    entry = store().journal.newest_unrecovered()
    return entry.task_id if entry else None


def engine() -> Engine:
    current = settings()
    return connect(current, store=store(current))


def recover(task_id: str | None) -> Recovered:
    try:
        return engine().recover(task_id, should_cancel=comfy.model_management.processing_interrupted)
    except CanceledError:
        comfy.model_management.throw_exception_if_processing_interrupted()
        raise


PROGRESS_EVENT = "wanx_imageedit.progress"  # structured progress for the front end (web/lib reads it)


def run(request: EditRequest, *, reuse: bool) -> tuple[EditOutcome, Settings]:
    """Run an edit for the executing node, with ComfyUI's Cancel, progress bar and status text."""
    context = get_executing_context()
    node_id = context.node_id if context else None
    wired = engine()
    bar = comfy.utils.ProgressBar(len(request.items), node_id=node_id)

    def show(progress: Progress) -> None:
        bar.update_absolute(progress.finished, progress.total)
        if node_id is not None and PromptServer.instance is not None:
            PromptServer.instance.send_progress_text(progress.text(), node_id)
            PromptServer.instance.send_sync(PROGRESS_EVENT, {"node": node_id, **progress.to_json(n=request.n)})

    try:
        outcome = wired.run(request, reuse=reuse, on_progress=show,
                            should_cancel=comfy.model_management.processing_interrupted)
        return outcome, wired.settings
    except CanceledError as exc:
        # Tell the artist which tasks were cancelled and which will still be billed, then let
        # ComfyUI handle it as the interruption it is.
        log.warning("%s", exc)
        if node_id is not None and PromptServer.instance is not None:
            PromptServer.instance.send_progress_text(str(exc), node_id)
        comfy.model_management.throw_exception_if_processing_interrupted()
        raise
