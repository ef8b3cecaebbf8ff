"""The session guard of conftest.py: a test session that writes into the home folder's state
(~/.wanx-imageedit, ~/.dashscope) fails, one that does not passes. Proven on tiny sessions run
by pytest in a subprocess, with HOME in a tmp folder and this conftest loaded as a plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pack_import import REPO_ROOT

WRITES = {
    "journal": "(Path.home() / '.wanx-imageedit').mkdir()\n"
               "    (Path.home() / '.wanx-imageedit' / 'journal.json').write_text('{}')",
    "key file": "(Path.home() / '.dashscope' / 'api_key').write_text('sk-changed')",
    "nothing": "(Path(__import__('tempfile').gettempdir())).exists()",
}


def session(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "home"
    (home / ".dashscope").mkdir(parents=True)
    (home / ".dashscope" / "api_key").write_text("sk-original")
    (tmp_path / "test_tiny.py").write_text(f"from pathlib import Path\n\n\ndef test_tiny():\n    {body}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "WANX_"))}
    env.update(HOME=str(home), PYTHONPATH=str(REPO_ROOT / "tests"))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_tiny.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("what", ["journal", "key file"])
def test_a_session_that_writes_into_the_home_folder_fails(tmp_path: Path, what: str) -> None:
    done = session(tmp_path, WRITES[what])
    assert done.returncode != 0, done.stdout
    assert "the test session changed" in done.stdout and "1 passed" in done.stdout
    folder = ".wanx-imageedit" if what == "journal" else ".dashscope"
    assert str(tmp_path / "home" / folder) in done.stdout


def test_a_session_that_keeps_to_its_tmp_folders_passes(tmp_path: Path) -> None:
    done = session(tmp_path, WRITES["nothing"])
    assert done.returncode == 0, done.stdout + done.stderr
