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

from .core import edit
from .core.client import DashScopeClient
from .core.errors import CanceledError
from .core.quota import shared_quota
from .core.settings import Settings

log = logging.getLogger(__name__)

PACK_DIR_NAME = "wanx_imageedit"


def pack_user_dir() -> Path:
    """Our folder in ComfyUI's user directory (the stored key, later the journal and cache)."""
    return Path(folder_paths.get_user_directory()) / PACK_DIR_NAME


def settings() -> Settings:
    return Settings.from_env(stored_key_file=pack_user_dir() / "api_key")


def run(request: edit.EditRequest) -> edit.EditOutcome:
    """Run an edit for the executing node, with ComfyUI's Cancel, progress bar and status text."""
    context = get_executing_context()
    node_id = context.node_id if context else None
    client = DashScopeClient(settings())
    quota = shared_quota(max_in_flight=client.settings.max_in_flight, submits_per_s=client.settings.submits_per_s)
    bar = comfy.utils.ProgressBar(len(request.items), node_id=node_id)

    def show(progress: edit.Progress) -> None:
        bar.update_absolute(progress.finished, progress.total)
        if node_id is not None and PromptServer.instance is not None:
            PromptServer.instance.send_progress_text(progress.text(), node_id)

    try:
        return edit.run(request, client=client, quota=quota, on_progress=show,
                        should_cancel=comfy.model_management.processing_interrupted)
    except CanceledError as exc:
        # Tell the artist which tasks were cancelled and which will still be billed, then let
        # ComfyUI handle it as the interruption it is.
        log.warning("%s", exc)
        if node_id is not None and PromptServer.instance is not None:
            PromptServer.instance.send_progress_text(str(exc), node_id)
        comfy.model_management.throw_exception_if_processing_interrupted()
        raise
