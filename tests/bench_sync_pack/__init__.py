"""A tiny ComfyUI node pack for tests/bench_host.py only (never installed by users): the pack's edit
as its node ran before it became async. ``execute`` is synchronous, so ComfyUI runs it on its event
loop and waits for it: the independent nodes of a prompt run one after another. The benchmark links
this folder into its own ComfyUI's custom_nodes beside the pack.

ComfyUI imports the pack under its folder's path, not as ``wanx_imageedit``, so this pack imports it
from the working tree with tests/pack_import.py: the same code and the same state (journal, cache
setting, machine-wide quota) in ComfyUI's user directory."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parents[1]
FUNCTION = "colorization"  # the function of the benchmark's prompt: no prompt text, no mask


def _pack() -> Any:
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    from pack_import import register_pack

    register_pack()
    import wanx_imageedit.nodes.host as host

    return host


class WanxBenchSyncColorize:
    """Colorize, run synchronously: prepare, then wait for the task on the calling thread."""

    CATEGORY = "wanx bench"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("images", "report")
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802 - ComfyUI's name
        return {"required": {"image": ("IMAGE",), "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    def execute(self, image: Any, seed: int) -> tuple[Any, str]:
        import comfy.model_management
        from comfy_execution.utils import get_executing_context

        host = _pack()
        from wanx_imageedit.nodes.core.functions import BY_API_NAME
        from wanx_imageedit.nodes.core.request import prepare

        request = prepare(BY_API_NAME[FUNCTION], image=image, mask=None, prompt="",
                          values={"seed": seed, "n": 1, "watermark": False})
        outcome, settings = host._run(request, reuse=False, context=get_executing_context(),
                                      should_cancel=comfy.model_management.processing_interrupted)
        report = json.dumps(outcome.report(currency=settings.currency), ensure_ascii=False, indent=1)
        return outcome.images_tensor(), report


NODE_CLASS_MAPPINGS = {"WanxBenchSync_Colorize": WanxBenchSyncColorize}
NODE_DISPLAY_NAME_MAPPINGS = {"WanxBenchSync_Colorize": "Wanx bench: Colorize, synchronous"}
