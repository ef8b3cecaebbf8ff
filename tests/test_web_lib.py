"""The front end's pure modules (web/lib/) under Node's own test runner: session bookkeeping from
reports and the structured progress, messages, endpoint display and comparison, loader file names,
and that importing any of them does nothing (ComfyUI imports every .js under web/)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

NODE = shutil.which("node")
JS_TESTS = Path(__file__).resolve().parent / "js"


@pytest.mark.skipif(NODE is None, reason="node (Node.js) is not installed")
def test_the_lib_modules_under_node() -> None:
    assert NODE is not None
    files = sorted(str(path) for path in JS_TESTS.glob("*.test.mjs"))
    assert files, f"no *.test.mjs in {JS_TESTS}"
    result = subprocess.run([NODE, "--test", *files], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "# fail 0" in result.stdout and "# pass 0" not in result.stdout, result.stdout[-2000:]
