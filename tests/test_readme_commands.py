"""Every command line of the README runs as written after the quick start: the `.venv/bin/...`
commands of its bash blocks, in a folder that looks like the repository (its .venv and tests),
with HOME and the state folder in tmp and the README's exports pointing at the emulator. Those
that would serve forever or rewrite the repository run with --help; the rest run verbatim."""

from __future__ import annotations

import re
import shlex
import signal
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import clean_env, write_photo
from conftest import TEST_KEY
from pack_import import REPO_ROOT
from wanx_imageedit.nodes.core.journal import Journal

README = REPO_ROOT / "README.md"
VENV_BIN = REPO_ROOT / ".venv" / "bin"
README_PORT_URL = "http://127.0.0.1:8089/api/v1"


def readme_commands() -> tuple[list[list[str]], dict[str, str]]:
    """The `.venv/bin/...` commands of the README's bash blocks (each part of an `a && b` line),
    without installs and the test suite itself, and the variables its `export` lines set."""
    commands, exports = [], {}
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:1] == ["export"]:
                    exports.update(word.split("=", 1) for word in words[1:])
                elif words and words[0].startswith(".venv/bin/") and words[0] != ".venv/bin/pip" \
                        and words[1:3] != ["-m", "pytest"]:
                    commands.append(words)
    return commands, exports


def test_the_readme_names_its_commands_for_the_venv() -> None:
    commands, exports = readme_commands()
    programs = {words[0] for words in commands}
    assert programs == {".venv/bin/wanx-imageedit", ".venv/bin/python"}
    assert {"demo", "edit", "emulator", "tasks", "fetch", "make-workflows"} <= {words[1] for words in commands}
    assert exports == {"DASHSCOPE_HTTP_BASE_URL": README_PORT_URL, "DASHSCOPE_API_KEY": TEST_KEY}
    text = README.read_text(encoding="utf-8")
    bare = [line for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()
            if re.match(r"\s*(python|wanx-imageedit)\b", line)]
    assert bare == [], "README commands that need an activated environment"


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.skipif(not (VENV_BIN / "wanx-imageedit").exists(), reason="no .venv: run the README's quick start first")
def test_every_readme_command_runs_as_written(emulator, tmp_path: Path) -> None:
    work = tmp_path / "clone"
    work.mkdir()
    (work / ".venv").symlink_to(REPO_ROOT / ".venv")
    (work / "tests").symlink_to(REPO_ROOT / "tests")
    write_photo(work / "photo.png")
    write_photo(work / "house.png", seed=1)
    for i in range(2):
        write_photo(work / "in" / f"{i}.png", seed=2 + i)
    mask = np.zeros((512, 512), np.uint8)
    mask[128:384, 128:384] = 255
    Image.fromarray(mask).save(work / "mask.png")
    commands, exports = readme_commands()
    env = clean_env(tmp_path, **{k: v.replace(README_PORT_URL, emulator.base_url) for k, v in exports.items()})
    journal = Journal(tmp_path / "state" / "journal.json")
    ran = []
    for words in commands:
        command, serves = list(words), words[1:2] == ["emulator"]
        if serves and "--help" not in words and _port_free(8089):
            _serve_briefly(command, env, cwd=work)
        if serves or words[1:2] == ["make-workflows"]:  # would serve until Ctrl-C / rewrite the repository
            command.append("--help")
        elif words[1:2] in (["tests/bench.py"], ["tests/bench_host.py"]):  # minutes long; here: that it starts
            command = [words[0], words[1], "--help"]
        if "TASK_ID" in command:
            command[command.index("TASK_ID")] = next(e.task_id for e in reversed(journal.entries()) if e.task_id)
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=180, check=False)
        assert "Traceback" not in done.stderr + done.stdout, (command, done.stderr)
        if command[1:2] == ["fetch"] and len(command) == 2 and done.returncode == 2:
            # Everything above was delivered: nothing left to recover, and it says so.
            assert "the journal has no task whose results are missing" in done.stderr
        else:
            assert done.returncode == 0, (command, done.stdout, done.stderr)
        ran.append(command)
    assert (work / "wanx_output" / "demo" / "contact_sheet.png").is_file()
    assert len(list((work / "wanx_output").glob("*_0.png"))) >= 4  # expand, 2 inpainted, stylized, colorized
    assert len(ran) == len(commands)


def _serve_briefly(command: list[str], env: dict[str, str], *, cwd: Path) -> None:
    """The emulator command as written: it prints its URL, then stops cleanly on Ctrl-C."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert "listening on http://127.0.0.1:8089/api/v1" in first, first + process.stderr.read()
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0 and "stopping" in out and "Traceback" not in err
