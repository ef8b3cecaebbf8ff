"""tests/bench.py --smoke runs end to end and prints its table (five figures). It is a smoke run
of the benchmark script only: nothing here depends on how fast anything was (never a timed test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "bench.py"


def test_bench_smoke_run_prints_one_row_per_figure() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    table = [line for line in lines if line.startswith("| ")]
    header, rows = table[0], table[1:]
    assert [cell.strip() for cell in header.strip("|").split("|")] == [
        "figure", "ours", "baseline", "ratio", "target", "result"]
    assert [row.strip("| ").split(".")[0] for row in rows] == ["1", "2", "3", "4", "5"]
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 6 and all(cells), row
        assert cells[-1] in ("PASS", "FAIL")
    assert any(line.startswith("machine: ") for line in lines)
