"""The core loads with no ComfyUI module importable or loaded; the pack never lives at top-level `nodes`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST_MODULES = ["comfy", "comfy_api", "server", "folder_paths", "execution", "nodes", "comfy_execution"]

PROBE = f"""
import importlib.util, pkgutil, sys
spec = importlib.util.spec_from_file_location("wanx_imageedit", {str(REPO_ROOT / "__init__.py")!r},
                                              submodule_search_locations=[{str(REPO_ROOT)!r}])
pack = importlib.util.module_from_spec(spec); sys.modules["wanx_imageedit"] = pack; spec.loader.exec_module(pack)
import wanx_imageedit.nodes.core as core
for info in pkgutil.iter_modules(core.__path__):
    importlib.import_module("wanx_imageedit.nodes.core." + info.name)
print(sorted({{m.split(".")[0] for m in sys.modules}} & set({HOST_MODULES!r})))
"""


def test_core_imports_without_comfyui() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], cwd="/", capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_pack_modules_use_only_relative_imports_of_themselves() -> None:
    offenders = []
    for path in (REPO_ROOT / "nodes").rglob("*.py"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith(("from nodes", "import nodes", "from wanx_imageedit", "import wanx_imageedit")):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {stripped}")
    assert offenders == []


def test_core_never_imports_the_host_layer() -> None:
    offenders = []
    for path in (REPO_ROOT / "nodes" / "core").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for needle in ("import comfy", "from comfy", "folder_paths", "from server", "from .. import", "from ..host"):
            if needle in text:
                offenders.append(f"{path.name}: {needle}")
    assert offenders == []
