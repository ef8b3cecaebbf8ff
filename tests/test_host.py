"""Inside a real ComfyUI (headless, CPU), with the pack in custom_nodes and the emulator as the
service: the nodes are listed, every example workflow runs and saves what the service returned,
batches run concurrently within the quota, Cancel works, and an unchanged graph costs nothing.

Skips with the reason when no ComfyUI is found (see comfy_host.find_host)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from comfy_host import ComfyHost, find_host, load_workflow, ui_to_api
from conftest import TEST_KEY
from wanx_imageedit.nodes.core import images
from wanx_imageedit.nodes.core.functions import FUNCTIONS, node_inputs
from wanx_imageedit.nodes.core.journal import Journal
from wanx_imageedit.nodes.emulator import Emulator

FOUND = find_host()
pytestmark = pytest.mark.skipif(isinstance(FOUND, str), reason=f"host tests need ComfyUI: {FOUND}")
WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(api_keys=(TEST_KEY,), running_s=(0.3, 0.5)) as running:
        yield running


def new_host(emulator: Emulator, workdir: Path) -> ComfyHost:
    assert not isinstance(FOUND, str)
    root, python = FOUND
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "WANX_"))}
    env.update(DASHSCOPE_API_KEY=TEST_KEY, DASHSCOPE_HTTP_BASE_URL=emulator.base_url, HOME=str(workdir))
    return ComfyHost(root=root, python=python, workdir=workdir, env=env)


@pytest.fixture(scope="module")
def host(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyHost]:
    running = new_host(emulator, tmp_path_factory.mktemp("comfyui")).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def object_info(host: ComfyHost) -> dict:
    return host.object_info()


def test_the_pack_imports_cleanly_and_registers_nothing_else(host: ComfyHost, object_info: dict) -> None:
    # Only the pack's own lines: ComfyUI's own nodes may fail to import (no torchaudio), which is not ours.
    ours_lines = [line for line in host.log().splitlines() if "wanx_imageedit" in line]
    assert any("custom_nodes/wanx_imageedit" in line for line in ours_lines), host.log()[-3000:]
    failed = [line for line in ours_lines if "IMPORT FAILED" in line or "Cannot import" in line or "ERROR" in line]
    assert failed == [], host.log()[-3000:]
    ours = sorted(name for name, info in object_info.items()
                  if info.get("python_module") == "custom_nodes.wanx_imageedit")
    assert ours == sorted([fn.node_id for fn in FUNCTIONS] + ["WanxImageEdit_FetchTask"])
    assert requests.get(host.url + "/extensions", timeout=10).status_code == 200


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda fn: fn.node_id)
def test_object_info_lists_each_node_with_its_inputs(fn, object_info: dict) -> None:
    info = object_info[fn.node_id]
    assert info["input_order"]["required"] == [spec.name for spec in node_inputs(fn) if not spec.optional]
    assert info["input_order"].get("optional", []) == [spec.name for spec in node_inputs(fn) if spec.optional]
    assert info["output"] == ["IMAGE", "STRING"] and info["output_name"] == ["images", "report"]
    assert info["category"] == "image/Wanx 2.1 Edit" and info["api_node"] is False
    seed = info["input"]["required"]["seed"][1]
    assert seed["control_after_generate"] is True and (seed["min"], seed["max"]) == (0, 2147483647)
    for spec in node_inputs(fn):
        if spec.param is not None and spec.socket in ("INT", "FLOAT"):
            options = info["input"]["required"][spec.name][1]
            assert (options["min"], options["max"], options["default"]) == (spec.param.minimum, spec.param.maximum,
                                                                            spec.param.default)


def _run(host: ComfyHost, prompt: dict) -> dict:
    entry = host.wait(host.queue(prompt))
    assert entry["status"]["status_str"] == "success", entry["status"]
    return entry


def _saved(host: ComfyHost, entry: dict) -> list[np.ndarray]:
    arrays = []
    for output in entry["outputs"].values():
        for image in output.get("images", []):
            with Image.open(host.output_dir / image["subfolder"] / image["filename"]) as saved:
                arrays.append(np.asarray(saved.convert("RGB")))
    return arrays


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda fn: fn.node_id)
def test_each_function_workflow_saves_exactly_what_the_service_returned(fn, host, emulator, object_info) -> None:
    flow = load_workflow(WORKFLOWS / f"wanx_{fn.key.lower()}.json")
    before = len(emulator.task_ids)
    entry = _run(host, ui_to_api(flow, object_info))
    created = emulator.task_ids[before:]
    assert len(created) == 1
    create = [r for r in emulator.requests if r.route == "create" and r.status == 200][-1]
    assert create.body["input"]["function"] == fn.api_name
    params = create.body["parameters"]
    for name, value in fn.example.values.items():
        assert params[name] == value
    assert params["seed"] == 20251125 and params["n"] == 1
    saved = _saved(host, entry)
    assert len(saved) == 1
    task = requests.get(f"{emulator.base_url}/tasks/{created[0]}", timeout=5,
                        headers={"Authorization": f"Bearer {TEST_KEY}"}).json()
    served = images.decode_image(requests.get(task["output"]["results"][0]["url"], timeout=5).content)
    assert np.array_equal(saved[0], served)
    report = next(o["text"][0] for o in entry["outputs"].values() if "text" in o)
    assert created[0] in report


def test_chain_inpaint_expand_upscale(host, emulator, object_info) -> None:
    before = len(emulator.requests)
    entry = _run(host, ui_to_api(load_workflow(WORKFLOWS / "wanx_chain_inpaint_expand_upscale.json"), object_info))
    sent = [r.body["input"]["function"] for r in emulator.requests[before:] if r.route == "create" and r.status == 200]
    # The inpaint step equals the single inpaint example; if that ran first, the result cache serves it.
    journaled = [e.function for e in Journal(host.workdir / "user" / "wanx_imageedit" / "journal.json").entries()]
    assert sent[-2:] == ["expand", "super_resolution"] and "description_edit_with_mask" in journaled
    (saved,) = _saved(host, entry)
    assert saved.shape == (1920, 1920, 3)  # 768 -> expand 1.25 on every side -> 960 -> x2


def test_chain_batch_colorize_blend(host, emulator, object_info) -> None:
    before = len(emulator.task_ids)
    entry = _run(host, ui_to_api(load_workflow(WORKFLOWS / "wanx_chain_batch_colorize_blend.json"), object_info))
    assert len(emulator.task_ids) - before == 3
    saved = _saved(host, entry)
    assert [a.shape for a in saved] == [(768, 768, 3)] * 3


def _batch_prompt(*, amount: int, seed: int) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "wanx_sample_colorization.png"}},
        "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": amount}},
        "3": {"class_type": "WanxImageEdit_Colorize",
              "inputs": {"image": ["2", 0], "prompt": "", "n": 1, "seed": seed, "watermark": False}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": f"wanx/batch_{seed}"}},
    }


def test_a_batch_of_four_runs_concurrently_and_one_failure_keeps_the_other_three(host, emulator) -> None:
    emulator.next_task_outcomes("ok", "fail:DataInspectionFailed", "ok", "ok")
    peak = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], emulator.live_count())
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    before = len(emulator.task_ids)
    try:
        entry = _run(host, _batch_prompt(amount=4, seed=4))
    finally:
        stop.set()
        watcher.join()
    assert len(emulator.task_ids) - before == 4 and peak[0] == 2
    assert len(_saved(host, entry)) == 3


def test_requeueing_an_unchanged_graph_sends_nothing(host, emulator) -> None:
    _run(host, _batch_prompt(amount=1, seed=77))
    before = len(emulator.requests)
    entry = _run(host, _batch_prompt(amount=1, seed=77))
    assert [r for r in emulator.requests[before:] if r.route == "create"] == []
    cached = [m for m in entry["status"]["messages"] if m[0] == "execution_cached"]
    assert cached and "3" in cached[0][1]["nodes"]


def test_cancel_mid_task_stops_within_a_second_and_cancels_the_pending_task(host, emulator) -> None:
    emulator.next_task_outcomes("running_s:20", "running_s:20")
    headers = {"Authorization": f"Bearer {TEST_KEY}", "X-DashScope-Async": "enable"}
    blockers = []
    for _ in range(2):  # another process of the account fills both running slots
        body = {"model": "wanx2.1-imageedit", "input": {"function": "colorization", "prompt": "",
                "base_image_url": "data:image/png;base64," + _sample_b64()}, "parameters": {}}
        time.sleep(0.6)
        reply = requests.post(emulator.base_url + "/services/aigc/image2image/image-synthesis", json=body,
                              headers=headers, timeout=10)
        blockers.append(reply.json()["output"]["task_id"])
    time.sleep(1.1)
    prompt_id = host.queue(_batch_prompt(amount=1, seed=99))
    deadline = time.monotonic() + 30
    while len(emulator.task_ids) < len(blockers) + 1 or emulator.task_ids[-1] in blockers:
        assert time.monotonic() < deadline, "the node never submitted its task"
        time.sleep(0.05)
    ours = emulator.task_ids[-1]
    assert emulator.task_status(ours) == "PENDING"
    interrupted_at = time.monotonic()
    host.interrupt()
    entry = host.wait(prompt_id, timeout_s=10)
    stopped_s = time.monotonic() - interrupted_at
    assert entry["status"]["status_str"] == "error"
    assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"])
    assert stopped_s < 1.5  # within 1 s, plus this test's 0.1 s history polling
    assert emulator.task_status(ours) == "CANCELED"
    assert "was pending and is canceled" in host.log()


def _sample_b64() -> str:
    import base64

    return base64.b64encode((WORKFLOWS / "inputs" / "wanx_sample_colorization.png").read_bytes()).decode()


def test_killing_comfyui_mid_task_loses_no_paid_image(emulator, tmp_path_factory) -> None:
    host = new_host(emulator, tmp_path_factory.mktemp("comfyui-killed")).start()
    try:
        emulator.next_task_outcomes("running_s:5")
        before = len(emulator.task_ids)
        prompt = _batch_prompt(amount=1, seed=4242)
        host.queue(prompt)
        journal = Journal(host.workdir / "user" / "wanx_imageedit" / "state.db")
        deadline = time.monotonic() + 30
        while not (journal.path.is_file() and journal.entries() and journal.entries()[-1].task_id):
            assert time.monotonic() < deadline, host.log()[-2000:]
            time.sleep(0.05)
        task_id = journal.entries()[-1].task_id
        assert emulator.task_ids[before:] == [task_id] and emulator.task_status(task_id) in ("PENDING", "RUNNING")
        os.killpg(host.process.pid, signal.SIGKILL)  # a crash: no cleanup, no goodbye
        host.process.wait()
        created = emulator.created_count
        host.start()  # the same user directory, so the same journal
        # What almost every user does after a crash: queue the same graph again. It attaches to the
        # task the dead process paid for, and creates nothing.
        (saved,) = _saved(host, _run(host, prompt))
        task = requests.get(f"{emulator.base_url}/tasks/{task_id}", timeout=5,
                            headers={"Authorization": f"Bearer {TEST_KEY}"}).json()
        served = images.decode_image(requests.get(task["output"]["results"][0]["url"], timeout=5).content)
        assert np.array_equal(saved, served)
        assert emulator.created_count == created  # delivered, not paid again
        assert journal.find(task_id).recovered
        # The Fetch node still recovers it by id, for free.
        fetch = {"1": {"class_type": "WanxImageEdit_FetchTask", "inputs": {"task_id": task_id}},
                 "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "wanx/recovered"}}}
        (fetched,) = _saved(host, _run(host, fetch))
        assert np.array_equal(fetched, served) and emulator.created_count == created
    finally:
        host.stop()
