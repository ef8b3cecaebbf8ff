"""tests/bench.py --smoke runs end to end and prints its table (seven figures), and the host
benchmark skips, saying why, where there is no ComfyUI. Smoke runs of the benchmark scripts only:
nothing here depends on how fast anything was (never a timed test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
BENCH = TESTS / "bench.py"
BENCH_HOST = TESTS / "bench_host.py"


def test_bench_smoke_run_prints_one_row_per_figure(tmp_path: Path) -> None:
    env = {**os.environ, "WANX_STATE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=300,
                          check=False, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    table = [line for line in lines if line.startswith("| ")]
    header, rows = table[0], table[1:]
    assert [cell.strip() for cell in header.strip("|").split("|")] == [
        "figure", "ours", "baseline", "ratio", "target", "result"]
    assert [row.strip("| ").split(".")[0] for row in rows] == ["1", "2", "3", "4", "5", "6", "7"]
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 6 and all(cells), row
        assert cells[-1] in ("PASS", "FAIL")
    assert any(line.startswith("machine: ") for line in lines)


def test_bench_host_skips_with_the_reason_without_comfyui(tmp_path: Path) -> None:
    env = {**os.environ, "COMFYUI_PATH": str(tmp_path / "no-comfyui"), "WANX_STATE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(BENCH_HOST)], capture_output=True, text=True, timeout=120,
                          check=False, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reason = f"no ComfyUI checkout at {tmp_path / 'no-comfyui'} (set COMFYUI_PATH to one)"
    assert done.stdout.strip() == f"skipped: the host benchmark needs ComfyUI: {reason}"
