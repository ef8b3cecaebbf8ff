"""The only module that touches the ComfyUI runtime during a run: settings location, interruption,
the progress bar, the node's progress text, and running the engine off ComfyUI's event loop.
Everything else is the host-free core."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_execution.utils import ExecutionContext, get_executing_context
from server import PromptServer

from .core.errors import CanceledError
from .core.functions import EditFunction
from .core.outcome import EditOutcome, Progress, Recovered
from .core.request import EditRequest, prepare
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
    """What the Fetch node would recover now: a task id, or the journal row of an uncertain create."""
    entry = store().journal.newest_unrecovered()
    if entry is None:
        return None
    return entry.task_id or f"uncertain create {entry.row}"


def engine() -> Engine:
    current = settings()
    return connect(current, store=store(current))


PROGRESS_EVENT = "wanx_imageedit.progress"  # structured progress for the front end (web/lib reads it)
CANCEL_WAIT_S = 2.0  # after ComfyUI cancels a node, how long its worker gets to cancel pending tasks

T = TypeVar("T")


async def edit(fn: EditFunction, *, reuse: bool, **inputs: Any) -> tuple[EditOutcome, Settings]:
    """Check, encode and run an edit for the executing node, off ComfyUI's event loop, so that
    independent nodes of one prompt run their tasks at the same time (within the shared quota)."""
    context = get_executing_context()
    request = await asyncio.to_thread(prepare, fn, **inputs)
    return await _off_loop(lambda should_cancel: _run(request, reuse=reuse, context=context,
                                                      should_cancel=should_cancel), context=context)


async def recover(task_id: str | None) -> Recovered:
    context = get_executing_context()
    return await _off_loop(lambda should_cancel: _recover(task_id, should_cancel=should_cancel), context=context)


async def _off_loop(work: Callable[[Callable[[], bool]], T], *, context: ExecutionContext | None) -> T:
    """Run ``work(should_cancel)`` on a worker thread. It is asked to stop when the user presses
    Cancel, when ComfyUI cancels this node (a sibling failed), or when this node's prompt is no
    longer running: the interrupt flag is cleared by whichever node sees it first, so the other
    nodes of the prompt learn of the Cancel that way."""
    stop = threading.Event()

    def should_cancel() -> bool:
        return stop.is_set() or comfy.model_management.processing_interrupted() or not _prompt_running(context)

    worker = asyncio.ensure_future(asyncio.to_thread(work, should_cancel))
    try:
        return await asyncio.shield(worker)
    except asyncio.CancelledError:
        stop.set()  # pending tasks are cancelled on the service; paid ones stay journaled
        await asyncio.wait({worker}, timeout=CANCEL_WAIT_S)
        raise


def _prompt_running(context: ExecutionContext | None) -> bool:
    if context is None or PromptServer.instance is None:
        return True
    running = list(PromptServer.instance.prompt_queue.currently_running.values())
    return any(len(item) > 1 and item[1] == context.prompt_id for item in running)


def _recover(task_id: str | None, *, should_cancel: Callable[[], bool]) -> Recovered:
    try:
        return engine().recover(task_id, should_cancel=should_cancel)
    except CanceledError:
        comfy.model_management.throw_exception_if_processing_interrupted()
        raise


def _run(request: EditRequest, *, reuse: bool, context: ExecutionContext | None,
         should_cancel: Callable[[], bool]) -> tuple[EditOutcome, Settings]:
    """Run an edit for the node of ``context``, with ComfyUI's Cancel, progress bar and status text."""
    node_id = context.node_id if context else None
    wired = engine()
    bar = comfy.utils.ProgressBar(len(request.items), node_id=node_id)

    def show(progress: Progress) -> None:
        bar.update_absolute(progress.finished, progress.total)
        if node_id is not None and PromptServer.instance is not None:
            PromptServer.instance.send_progress_text(progress.text(), node_id)
            PromptServer.instance.send_sync(PROGRESS_EVENT, {"node": node_id, **progress.to_json(n=request.n)})

    try:
        # Each result is decoded straight into the node's IMAGE output as it arrives.
        outcome = wired.run(request, reuse=reuse, on_progress=show, should_cancel=should_cancel,
                            output=request.result_batch())
        return outcome, wired.settings
    except CanceledError as exc:
        # ComfyUI drops the node's output on an interruption: images that had already arrived were
        # billed but never shown, so the journal offers them to the Fetch node again.
        arrived = exc.outcome.items if isinstance(exc.outcome, EditOutcome) else []
        if wired.store is not None:
            for item in arrived:
                if item.task_id and not item.cached:
                    wired.store.journal.undeliver(item.task_id, item.delivered)
        # Tell the artist which tasks were cancelled and which will still be billed, then let
        # ComfyUI handle it as the interruption it is.
        log.warning("%s", exc)
        if node_id is not None and PromptServer.instance is not None:
            PromptServer.instance.send_progress_text(str(exc), node_id)
        comfy.model_management.throw_exception_if_processing_interrupted()
        raise
