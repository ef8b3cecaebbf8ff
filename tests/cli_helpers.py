"""Running `wanx-imageedit` the way a user does: a separate process, with HOME and WANX_STATE_DIR in
the test's tmp folder, its output read from pipes or from a pseudo-terminal (for what only a
terminal shows: the status line rewritten in place, and Ctrl-C)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pack_import import BOOT


def cli_code(args: Sequence[str], *, before: str = "") -> str:
    """The -c program that runs the CLI with ``args`` (``before``: set-up code of the test, e.g.
    making a third-party call fail)."""
    return BOOT + before + f"from wanx_imageedit.nodes.cli import main; sys.exit(main({list(args)!r}))"


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh user: no DASHSCOPE_/WANX_ variables but ``extra``, HOME and the
    state folder in ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "WANX_", "COLUMNS", "LINES"))}
    env.update(HOME=str(tmp_path / "home"), WANX_STATE_DIR=str(tmp_path / "state"), **extra)
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


def run(args: Sequence[str], env: Mapping[str, str], *, cwd: Path | None = None, before: str = "",
        timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", cli_code(args, before=before)], env=dict(env), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def start(args: Sequence[str], env: Mapping[str, str], *, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", cli_code(args)], env=dict(env), cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


class Pty:
    """The CLI on a pseudo-terminal (stdout and stderr both), as in an interactive shell."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], *, columns: int = 80) -> None:
        import pty  # POSIX only: imported here so the pipe-based helpers work everywhere

        master, slave = pty.openpty()
        self._master = master
        self.process = subprocess.Popen([sys.executable, "-c", cli_code(args)], env={**env, "COLUMNS": str(columns)},
                                        stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, close_fds=True)
        os.close(slave)
        self._data = bytearray()

    def _pump(self, timeout_s: float) -> bool:
        ready, _, _ = select.select([self._master], [], [], timeout_s)
        if not ready:
            return True
        try:
            chunk = os.read(self._master, 65536)
        except OSError:  # EIO: the other side closed
            return False
        self._data += chunk
        return bool(chunk)

    @property
    def text(self) -> str:
        return self._data.decode("utf-8", "replace")

    def wait_for(self, condition: Callable[[], bool], *, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"timed out; the terminal shows:\n{self.text}"
            alive = self._pump(0.05)
            assert alive or self.process.poll() is None, f"the CLI exited; the terminal shows:\n{self.text}"

    def finish(self, *, timeout_s: float = 60) -> int:
        deadline = time.monotonic() + timeout_s
        while self._pump(0.1) or self.process.poll() is None:
            assert time.monotonic() < deadline, f"the CLI did not exit; the terminal shows:\n{self.text}"
        os.close(self._master)
        return self.process.wait(timeout=5)


def screen_lines(text: str) -> list[str]:
    """What a terminal leaves on screen: each line after its carriage returns overwrote it."""
    lines = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        shown = ""
        for part in raw.split("\r"):
            shown = part + shown[len(part):]
        lines.append(shown.rstrip())
    return [line for line in lines if line]


def status_segments(text: str) -> list[str]:
    """Every version of the status line that was written (they start with "[done/total]")."""
    return [part.rstrip() for raw in text.replace("\r\n", "\n").split("\n") for part in raw.split("\r")
            if part.startswith("[")]


def write_photo(path: Path, *, width_px: int = 512, height_px: int = 512, seed: int = 0, alpha: bool = False) -> Path:
    """A photo-like file: smooth gradients and a little noise (transparent where ``alpha``)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height_px, 0:width_px].astype(np.float32)
    rgb = np.stack([x / width_px, y / height_px, (x + y) / (width_px + height_px)], axis=-1)
    rgb = np.clip(rgb + rng.normal(0, 0.02, rgb.shape), 0, 1)
    pixels = (rgb * 255).round().astype(np.uint8)
    if alpha:
        a = np.full((height_px, width_px, 1), 255, np.uint8)
        a[: height_px // 2] = 0
        pixels = np.concatenate([pixels, a], axis=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path
