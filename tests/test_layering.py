"""The layers: the core loads with no ComfyUI module importable or loaded, and never imports the
authoring tools, the emulator or the CLI; the node glue imports only the core (never the authoring
tools, which draw samples with PIL and render pages); the pack never lives at top-level `nodes`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST_MODULES = ["comfy", "comfy_api", "server", "folder_paths", "execution", "nodes", "comfy_execution"]
PACK = "wanx_imageedit"
NOT_FOR_CORE = (f"{PACK}.nodes.authoring", f"{PACK}.nodes.emulator", f"{PACK}.nodes.cli")
GLUE = ("edit_nodes.py", "host.py", "web_routes.py")  # under nodes/

PROBE = f"""
import importlib.util, pkgutil, sys
spec = importlib.util.spec_from_file_location("wanx_imageedit", {str(REPO_ROOT / "__init__.py")!r},
                                              submodule_search_locations=[{str(REPO_ROOT)!r}])
pack = importlib.util.module_from_spec(spec); sys.modules["wanx_imageedit"] = pack; spec.loader.exec_module(pack)
import wanx_imageedit.nodes.core as core
for info in pkgutil.iter_modules(core.__path__):
    importlib.import_module("wanx_imageedit.nodes.core." + info.name)
print(sorted({{m.split(".")[0] for m in sys.modules}} & set({HOST_MODULES!r})))
print(sorted(m for m in sys.modules if m.startswith({NOT_FOR_CORE!r})))
print(len([m for m in sys.modules if m.startswith("wanx_imageedit.nodes.core.")]))
"""


def test_core_imports_without_comfyui_and_without_the_other_layers() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], cwd="/", capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    host_modules, other_layers, core_modules = result.stdout.splitlines()
    assert host_modules == "[]"
    assert other_layers == "[]"
    assert int(core_modules) >= 10  # the probe really loaded the core (functions, texts, client, ...)


def _module_of(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join((PACK, *(parts[:-1] if parts[-1] == "__init__" else parts)))


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (relative imports resolved; ``from x import y`` counts x and x.y,
    since y may be a submodule), wherever the statement is (a function body too)."""
    module = _module_of(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def _offenders(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{path.relative_to(REPO_ROOT)}: {name}" for path in paths for name in imported_modules(path)
                  if name == PACK or any(name == f or name.startswith(f + ".") for f in forbidden))


def test_the_import_scan_resolves_relative_imports() -> None:
    # The two tests below rely on the scan: it must see every form a forbidden import can take.
    docs = imported_modules(REPO_ROOT / "nodes" / "authoring" / "docs.py")
    assert f"{PACK}.nodes.authoring.samples" in docs  # from .samples import sample_image
    assert f"{PACK}.nodes.core.texts" in docs  # from ..core import texts
    assert f"{PACK}.nodes.core.functions" in docs  # from ..core.functions import (...)
    cli = imported_modules(REPO_ROOT / "nodes" / "cli.py")
    assert f"{PACK}.nodes.authoring.samples" in cli  # from .authoring import samples
    assert f"{PACK}.nodes.authoring.workflows" in cli  # inside a function
    assert _offenders([REPO_ROOT / "nodes" / "cli.py"], (f"{PACK}.nodes.authoring",)) != []
    assert f"{PACK}.nodes.core.texts" in imported_modules(REPO_ROOT / "nodes" / "edit_nodes.py")


def test_core_never_imports_authoring_emulator_or_cli() -> None:
    core = sorted((REPO_ROOT / "nodes" / "core").rglob("*.py"))
    assert len(core) >= 10
    assert _offenders(core, NOT_FOR_CORE) == []


def test_the_node_glue_imports_no_authoring_tool() -> None:
    glue = [REPO_ROOT / "nodes" / name for name in GLUE]
    assert _offenders(glue, (f"{PACK}.nodes.authoring",)) == []
    # Only the core and the glue itself: the emulator and the CLI are no part of a ComfyUI run either.
    ours = {name for path in glue for name in imported_modules(path) if name.startswith(PACK)}
    allowed = (f"{PACK}.nodes.core", *(f"{PACK}.nodes.{name[:-3]}" for name in GLUE))
    assert sorted(n for n in ours if n != f"{PACK}.nodes" and not n.startswith(allowed)) == []


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
