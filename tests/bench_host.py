"""Host benchmark: a prompt of 4 independent edit nodes at a quota of 2 tasks in a real ComfyUI,
against a synchronous baseline in the same run, the same ComfyUI and the same emulator.

    .venv/bin/python tests/bench_host.py    # about 3 minutes; exits 1 if the target is missed

Ours: 4 Colorize nodes of the pack, fed by one Load Image, each saved on its own; their execute is
async and waits off the event loop, so all four wait for the quota at once and run two rounds of
tasks. The baseline: the same prompt with the node of tests/bench_sync_pack (linked into this
ComfyUI's custom_nodes beside the pack), which does what the pack's node did before it became async
(prepare, then the engine's run on the calling thread): ComfyUI runs it on its event loop, one node
at a time, so 4 rounds. Every task takes T = 8 s on the emulator (inside the poll schedule's dense
part, where completion is seen within ~0.3 s); the result cache is off (WANX_CACHE=off) and every
repetition uses new seeds, so each node sends its own task. The runs of ours and of the baseline
alternate (3 each), so background load hits both alike; the figure is the median of the prompts'
wall times (ComfyUI's own execution_start to execution_success) over the quota's ideal, 2 rounds of
T. Skips, saying why and exiting 0, when no ComfyUI is found (see comfy_host.find_host)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import KEY, Row, Spread, log, machine, print_table  # tests/ is on the path when run as a script

from comfy_host import PACK_NAME, ComfyHost, find_host
from wanx_imageedit.nodes.emulator import Emulator

TESTS_DIR = Path(__file__).resolve().parent
SYNC_PACK = TESTS_DIR / "bench_sync_pack"
SYNC_NODE = "WanxBenchSync_Colorize"
OURS_NODE = "WanxImageEdit_Colorize"
SAMPLE = "wanx_sample_colorization.png"  # copied into the host's input folder by ComfyHost.start
TASK_S = 8.0
NODES = 4
QUOTA = 2
TARGET = 1.1  # x the quota's ideal: ceil(NODES / QUOTA) rounds of T


def prompt_of(node: str, seeds: Sequence[int]) -> dict[str, Any]:
    """One Load Image feeding independent edit nodes, each saved on its own."""
    prompt: dict[str, Any] = {"1": {"class_type": "LoadImage", "inputs": {"image": SAMPLE}}}
    for i, seed in enumerate(seeds):
        inputs: dict[str, Any] = {"image": ["1", 0], "seed": seed}
        if node == OURS_NODE:
            inputs.update(prompt="", n=1, watermark=False)
        prompt[str(10 + i)] = {"class_type": node, "inputs": inputs}
        prompt[str(20 + i)] = {"class_type": "SaveImage",
                               "inputs": {"images": [str(10 + i), 0], "filename_prefix": f"bench/{node}_{seed}"}}
    return prompt


def most_alive_at_once(emulator: Emulator, task_ids: Sequence[str]) -> int:
    """The most of these tasks that existed on the service (created, not ended) at any instant."""
    edges = []
    for task_id in task_ids:
        times = emulator.task_times(task_id)
        edges += [(times.submit_s, 1), (times.end_s if times.end_s is not None else float("inf"), -1)]
    alive = peak = 0
    for _, step in sorted(edges):
        alive += step
        peak = max(peak, alive)
    return peak


def execution_s(entry: dict[str, Any]) -> float | None:
    """The prompt's wall time by ComfyUI's own clock (execution_start to execution_success, in ms)."""
    stamps = {name: data.get("timestamp") for name, data in entry.get("status", {}).get("messages", [])}
    start, end = stamps.get("execution_start"), stamps.get("execution_success")
    return (end - start) / 1000 if start is not None and end is not None else None


def run_prompt(host: ComfyHost, emulator: Emulator, node: str, seeds: Sequence[int]) -> tuple[float, int]:
    """(wall time, most tasks alive at once) of one prompt; checks that every node sent one task and
    that every image was saved."""
    before = len(emulator.task_ids)
    emulator.next_task_outcomes(*[f"running_s:{TASK_S - 0.05}"] * len(seeds))  # + the 0.05 s pending
    queued = time.monotonic()
    entry = host.wait(host.queue(prompt_of(node, seeds)), timeout_s=len(seeds) * TASK_S * 3 + 60)
    polled_s = time.monotonic() - queued
    if entry["status"].get("status_str") != "success":
        raise RuntimeError(f"the {node} prompt failed: {entry['status']}\n{host.log()[-3000:]}")
    tasks = emulator.task_ids[before:]
    saved = [image for output in entry["outputs"].values() for image in output.get("images", [])]
    if len(tasks) != len(seeds) or len(saved) != len(seeds):
        raise RuntimeError(f"the {node} prompt sent {len(tasks)} tasks and saved {len(saved)} images, "
                           f"for {len(seeds)} nodes")
    alive = most_alive_at_once(emulator, tasks)
    if alive > QUOTA:
        raise RuntimeError(f"the {node} prompt had {alive} tasks alive at once, over the quota of {QUOTA}")
    wall_s = execution_s(entry)
    return (polled_s if wall_s is None else wall_s), alive


def measure(root: Path, python: Path, *, repeats: int) -> Row:
    ideal_s = -(-NODES // QUOTA) * TASK_S
    walls: dict[str, list[float]] = {OURS_NODE: [], SYNC_NODE: []}
    with (Emulator(api_keys=(KEY,), pending_s=0.05, max_running=QUOTA, submit_rps=QUOTA) as emulator,
          tempfile.TemporaryDirectory(prefix="wanx-bench-host-") as workdir):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "WANX_"))}
        env.update(DASHSCOPE_API_KEY=KEY, DASHSCOPE_HTTP_BASE_URL=emulator.base_url, HOME=workdir,
                   WANX_CACHE="off", WANX_MAX_CONCURRENT_TASKS=str(QUOTA))
        custom_nodes = Path(workdir) / "base" / "custom_nodes"
        custom_nodes.mkdir(parents=True)
        (custom_nodes / "wanx_bench_sync").symlink_to(SYNC_PACK, target_is_directory=True)
        host = ComfyHost(root=root, python=python, workdir=Path(workdir), env=env)
        log(f"starting ComfyUI at {root} with {PACK_NAME} and the synchronous baseline pack ...")
        host.start()
        try:
            info = host.object_info()
            missing = [name for name in (OURS_NODE, SYNC_NODE) if name not in info]
            if missing:
                raise RuntimeError(f"ComfyUI did not load {', '.join(missing)}:\n{host.log()[-3000:]}")
            run_prompt(host, emulator, OURS_NODE, [1, 2])  # warm-up: first imports, first load of the image
            for repetition in range(repeats):
                order = (OURS_NODE, SYNC_NODE) if repetition % 2 == 0 else (SYNC_NODE, OURS_NODE)
                for node in order:
                    first_seed = 1000 * (repetition + 1) + (100 if node == SYNC_NODE else 0)
                    seeds = [first_seed + i for i in range(NODES)]
                    wall_s, alive = run_prompt(host, emulator, node, seeds)
                    walls[node].append(wall_s)
                    log(f"  {'ours' if node == OURS_NODE else 'synchronous'}: {NODES} nodes in {wall_s:.2f} s = "
                        f"{wall_s / ideal_s:.3f}x the ideal {ideal_s:.0f} s; at most {alive} running at once")
        finally:
            host.stop()
    ours, sync = Spread.of(w / ideal_s for w in walls[OURS_NODE]), Spread.of(w / ideal_s for w in walls[SYNC_NODE])
    return Row(
        figure=f"H. ComfyUI, {NODES} independent edit nodes, quota {QUOTA}, T = {TASK_S:.0f} s (x{repeats})",
        ours=f"wall {Spread.of(walls[OURS_NODE]).text('.2f', unit=' s')}",
        baseline=f"synchronous {Spread.of(walls[SYNC_NODE]).text('.2f', unit=' s')} ({sync.median:.2f}x)",
        ratio=f"{ours.text('.3f', unit='x')} 2T",
        target=f"median <= {TARGET}x 2T",
        passed=ours.median <= TARGET,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="prompts of each kind, alternating (default 3)")
    args = parser.parse_args(argv)
    found = find_host()
    if isinstance(found, str):
        log(f"skipped: the host benchmark needs ComfyUI: {found}")
        return 0
    root, python = found
    log(f"wanx-imageedit host benchmark, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    log(f"machine: {machine()}")
    started = time.perf_counter()
    row = measure(root, python, repeats=args.repeats)
    log(f"in {time.perf_counter() - started:.0f} s\n")
    print_table([row])
    if not row.passed:
        log(f"\ntarget missed: {row.figure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
