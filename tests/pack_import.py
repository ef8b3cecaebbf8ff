"""Import the repository root as the package `wanx_imageedit`, from the working tree (never as a
top-level `nodes`, which is ComfyUI's). Used by conftest.py, bench.py and test subprocesses."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The first statements of a `python -c` subprocess that imports the pack from the working tree.
BOOT = (f"import sys; sys.path.insert(0, {str(REPO_ROOT / 'tests')!r}); import pack_import; "
        "pack_import.register_pack(); ")


def register_pack() -> None:
    if "wanx_imageedit" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        "wanx_imageedit", REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["wanx_imageedit"] = module
    spec.loader.exec_module(module)
