"""Independent edit nodes of one prompt run at the same time in a real ComfyUI (their execute is
async and waits off the event loop), within the account's quota of 2 tasks, and Cancel or a failed
sibling stops every waiting node within a second, cancelling their pending tasks on the service.

Skips with the reason when no ComfyUI is found (see comfy_host.find_host)."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from comfy_host import ComfyHost, find_host
from conftest import TEST_KEY
from wanx_imageedit.nodes.core import images
from wanx_imageedit.nodes.core.journal import Journal
from wanx_imageedit.nodes.emulator import Emulator

FOUND = find_host()
pytestmark = pytest.mark.skipif(isinstance(FOUND, str), reason=f"host tests need ComfyUI: {FOUND}")
SAMPLE = Path(__file__).resolve().parents[1] / "workflows" / "inputs" / "wanx_sample_colorization.png"
TASK_S = 6.0  # inside the poll schedule's dense part (5-15 s), so completion is seen within ~0.3 s
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(api_keys=(TEST_KEY,), running_s=(0.3, 0.5)) as running:
        yield running


@pytest.fixture(scope="module")
def host(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyHost]:
    assert not isinstance(FOUND, str)
    root, python = FOUND
    workdir = tmp_path_factory.mktemp("comfyui-async")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "WANX_"))}
    env.update(DASHSCOPE_API_KEY=TEST_KEY, DASHSCOPE_HTTP_BASE_URL=emulator.base_url, HOME=str(workdir),
               WANX_CACHE="off")
    running = ComfyHost(root=root, python=python, workdir=workdir, env=env).start()
    yield running
    running.stop()


def parallel_prompt(seeds: list[int], *, function: str = "WanxImageEdit_Colorize") -> dict:
    """One Load Image feeding independent edit nodes, each saved on its own."""
    prompt: dict = {"1": {"class_type": "LoadImage", "inputs": {"image": SAMPLE.name}}}
    for i, seed in enumerate(seeds):
        prompt[str(10 + i)] = {"class_type": function, "inputs": {"image": ["1", 0], "prompt": "", "n": 1,
                                                                  "seed": seed, "watermark": False}}
        prompt[str(20 + i)] = {"class_type": "SaveImage",
                               "inputs": {"images": [str(10 + i), 0], "filename_prefix": f"wanx/par_{seed}"}}
    return prompt


def most_alive_at_once(emulator: Emulator, task_ids: list[str]) -> int:
    """The most of these tasks that existed on the service (created, not ended) at any instant."""
    spans = [emulator.task_times(t) for t in task_ids]
    edges = sorted([(s.submit_s, 1) for s in spans] + [(s.end_s or float("inf"), -1) for s in spans],
                   key=lambda edge: (edge[0], edge[1]))
    alive = peak = 0
    for _, step in edges:
        alive += step
        peak = max(peak, alive)
    return peak


def fill_both_running_slots(emulator: Emulator, *outcomes: str) -> list[str]:
    """Another process of the account runs two long tasks, so ours wait as PENDING. ``outcomes``:
    for those two tasks and the ones created after them."""
    emulator.advance(60)  # an earlier test's blockers end
    emulator.next_task_outcomes(*(outcomes or ("running_s:30", "running_s:30")))
    headers = {**AUTH, "X-DashScope-Async": "enable"}
    body = {"model": "wanx2.1-imageedit", "input": {"function": "colorization", "prompt": "",
            "base_image_url": "data:image/png;base64," + base64.b64encode(SAMPLE.read_bytes()).decode()},
            "parameters": {}}
    blockers = []
    time.sleep(1.1)  # a fresh second of the account's 2 submissions per second
    for _ in range(2):
        time.sleep(0.6)
        reply = requests.post(emulator.base_url + "/services/aigc/image2image/image-synthesis", json=body,
                              headers=headers, timeout=10)
        assert reply.status_code == 200, reply.text
        blockers.append(reply.json()["output"]["task_id"])
    time.sleep(1.1)
    return blockers


def wait_for_tasks(emulator: Emulator, count: int, *, after: int) -> list[str]:
    deadline = time.monotonic() + 30
    while len(emulator.task_ids) < after + count:
        assert time.monotonic() < deadline, "the nodes never submitted their tasks"
        time.sleep(0.05)
    return emulator.task_ids[after:after + count]


def test_three_independent_nodes_take_two_task_times_within_the_quota(host: ComfyHost, emulator: Emulator) -> None:
    emulator.next_task_outcomes(*[f"running_s:{TASK_S}"] * 3)
    before = len(emulator.task_ids)
    started = time.monotonic()
    entry = host.wait(host.queue(parallel_prompt([101, 102, 103])), timeout_s=60)
    wall_s = time.monotonic() - started
    assert entry["status"]["status_str"] == "success", entry["status"]
    ours = emulator.task_ids[before:]
    assert len(ours) == 3
    assert most_alive_at_once(emulator, ours) == 2  # two at once, never three
    # Two rounds of T (a synchronous node would need three), plus detection lags and start-up.
    assert 2 * TASK_S <= wall_s < 2 * TASK_S + 2.5, wall_s
    saved = {}
    for output in entry["outputs"].values():
        for image in output.get("images", []):
            with Image.open(host.output_dir / image["subfolder"] / image["filename"]) as png:
                saved[image["filename"].split("_")[1]] = np.asarray(png.convert("RGB"))
    assert len(saved) == 3
    for task_id in ours:  # every image exactly what the service made, whichever node it was
        task = requests.get(f"{emulator.base_url}/tasks/{task_id}", headers=AUTH, timeout=5).json()
        served = images.decode_image(requests.get(task["output"]["results"][0]["url"], timeout=5).content)
        assert any(np.array_equal(served, image) for image in saved.values())


def test_cancel_stops_every_waiting_node_and_cancels_their_pending_tasks(host: ComfyHost,
                                                                          emulator: Emulator) -> None:
    blockers = fill_both_running_slots(emulator)
    before = len(emulator.task_ids)
    prompt_id = host.queue(parallel_prompt([201, 202]))
    ours = wait_for_tasks(emulator, 2, after=before)
    assert [emulator.task_status(t) for t in ours] == ["PENDING", "PENDING"]
    interrupted_at = time.monotonic()
    host.interrupt()
    entry = host.wait(prompt_id, timeout_s=10)
    assert entry["status"]["status_str"] == "error"
    deadline = interrupted_at + 1.5  # within a second, plus this test's polling
    while any(emulator.task_status(t) != "CANCELED" for t in ours):
        assert time.monotonic() < deadline, [emulator.task_status(t) for t in ours]
        time.sleep(0.05)
    assert all(emulator.task_status(t) == "RUNNING" for t in blockers)  # another process's tasks untouched
    assert host.log().count("was pending and is canceled") >= 2


def test_a_failed_sibling_stops_the_nodes_still_waiting(host: ComfyHost, emulator: Emulator) -> None:
    # The sibling is a Fetch node waiting for another task that fails after 3 s; when it does, the
    # service starts one of our two pending tasks (now running: billed) and the other stays pending.
    failing, _ = fill_both_running_slots(emulator, "fail:InternalError+running_s:3", "running_s:30",
                                         "running_s:20", "running_s:20")
    before = len(emulator.task_ids)
    prompt = parallel_prompt([301, 302])
    prompt["30"] = {"class_type": "WanxImageEdit_FetchTask", "inputs": {"task_id": failing}}
    prompt["31"] = {"class_type": "SaveImage", "inputs": {"images": ["30", 0], "filename_prefix": "wanx/f"}}
    prompt_id = host.queue(prompt)
    ours = wait_for_tasks(emulator, 2, after=before)
    entry = host.wait(prompt_id, timeout_s=20)
    assert entry["status"]["status_str"] == "error"
    failed_at = time.monotonic()
    while "PENDING" in [emulator.task_status(t) for t in ours]:
        assert time.monotonic() < failed_at + 1.5, [emulator.task_status(t) for t in ours]
        time.sleep(0.05)
    states = sorted(emulator.task_status(t) for t in ours)
    assert states[0] == "CANCELED" and states[1] in ("RUNNING", "SUCCEEDED")
    assert emulator.created_count == before + 2  # nothing more was sent for the prompt that failed
    billed = next(t for t in ours if emulator.task_status(t) != "CANCELED")
    journal = Journal(host.workdir / "user" / "wanx_imageedit" / "state.db")
    assert journal.find(billed) is not None and not journal.find(billed).recovered  # `fetch` recovers it
