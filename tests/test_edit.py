"""The engine end to end over loopback HTTP against the emulator: every function, batches within
the quota, partial results, cancel, and results equal to what the service returned."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests

from conftest import FAST_POLL, TEST_KEY, box_mask, photo, settings_for
from wanx_imageedit.nodes.core import images, runner
from wanx_imageedit.nodes.core.client import DashScopeClient
from wanx_imageedit.nodes.core.errors import CanceledError, InputError, TaskFailedError
from wanx_imageedit.nodes.core.functions import FUNCTIONS, ImageSize, lookup
from wanx_imageedit.nodes.core.outcome import EditOutcome, Progress
from wanx_imageedit.nodes.core.quota import Quota
from wanx_imageedit.nodes.core.request import EditRequest, prepare
from wanx_imageedit.nodes.emulator import Emulator


def run(request: EditRequest, client: DashScopeClient, quota: Quota, **kwargs: object) -> EditOutcome:
    return runner.run(request, client=client, quota=quota, policy=FAST_POLL, **kwargs)


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda fn: fn.api_name)
def test_every_function_returns_exactly_the_images_the_service_made(fn, emulator, client, quota) -> None:
    example = fn.example
    request = prepare(fn, image=photo(), mask=box_mask() if fn.needs_mask else None,
                           prompt=example.prompt, style=example.style, values={**example.values, "n": 2, "seed": 11})
    outcome = run(request, client, quota)
    tensor = outcome.images_tensor()
    expected = request.expected_size(request.items[0])
    assert tuple(tensor.shape) == (2, expected.height, expected.width, 3)
    assert tensor.dtype.is_floating_point and float(tensor.min()) >= 0 and float(tensor.max()) <= 1
    urls = outcome.items[0].urls
    assert len(urls) == 2 and outcome.image_count == 2
    for i, url in enumerate(urls):
        served = images.decode_image(requests.get(url, timeout=5).content)
        assert np.array_equal(np.rint(tensor[i].numpy() * 255).astype(np.uint8), served)
    assert emulator.created_count == 1
    report = outcome.report()
    assert report["usage"] == {"image_count": 2} and report["items"][0]["task_id"] == outcome.items[0].task_id


def test_a_batch_of_four_runs_concurrently_within_two_tasks_in_flight(quota) -> None:
    """1 s tasks: two rounds take about 2 s; one task at a time would take over 4 s."""
    emulator = Emulator(api_keys=(TEST_KEY,), running_s=(1.0, 1.0)).start()
    client = DashScopeClient(settings_for(emulator))
    emulator_peak = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            emulator_peak[0] = max(emulator_peak[0], emulator.live_count())
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    request = prepare(lookup("colorization"), image=photo(batch=4), mask=None, prompt="")
    started = time.monotonic()
    try:
        outcome = run(request, client, quota)
    finally:
        stop.set()
        watcher.join()
        emulator.stop()
    elapsed = time.monotonic() - started
    assert outcome.images_tensor().shape[0] == 4
    assert emulator.created_count == 4
    assert emulator_peak[0] == 2  # concurrent, never beyond the quota
    assert 2.0 <= elapsed < 3.0


def test_one_failed_image_keeps_the_other_paid_results(emulator, client, quota) -> None:
    emulator.next_task_outcomes("ok", "fail:DataInspectionFailed", "ok", "ok")
    request = prepare(lookup("colorization"), image=photo(batch=4), mask=None, prompt="")
    outcome = run(request, client, quota)
    assert outcome.images_tensor().shape[0] == 3
    failed = [item for item in outcome.items if item.error is not None]
    assert len(failed) == 1 and "DataInspectionFailed" in str(failed[0].error)
    assert "Change the image or the prompt" in str(failed[0].error)


def test_partial_task_returns_successes_with_a_per_image_report(emulator, client, quota) -> None:
    emulator.next_task_outcomes("partial")
    request = prepare(lookup("expand"), image=photo(), mask=None, prompt="p", values={"n": 3})
    outcome = run(request, client, quota)
    assert outcome.images_tensor().shape[0] == 1 and outcome.image_count == 1
    assert [f["code"] for f in outcome.items[0].failures] == ["InternalError.Timeout"] * 2


def test_a_failed_task_is_an_error_with_code_and_task_id(emulator, client, quota) -> None:
    emulator.next_task_outcomes("fail:InternalError.Algo")
    request = prepare(lookup("doodle"), image=photo(), mask=None, prompt="p")
    with pytest.raises(TaskFailedError) as caught:
        run(request, client, quota)
    task_id = emulator.task_ids[0]
    assert caught.value.code == "InternalError.Algo" and caught.value.task_id == task_id
    assert task_id in str(caught.value)


def test_unknown_task_explains_expiry_and_account(emulator, client, quota) -> None:
    emulator.next_task_outcomes("unknown")
    request = prepare(lookup("doodle"), image=photo(), mask=None, prompt="p")
    with pytest.raises(TaskFailedError, match="24 hours") as caught:
        run(request, client, quota)
    assert caught.value.code == "UNKNOWN" and emulator.created_count == 1


def test_results_of_a_resized_input_come_back_at_the_sent_size(emulator, client, quota) -> None:
    """A 300x200 input is sent as 768x512 (uniform scale up to the 512 px minimum); results come
    back at the function's rule applied to the sent size, never stretched back."""
    request = prepare(lookup("super_resolution"), image=photo(width_px=300, height_px=200), mask=None,
                           prompt="", values={"upscale_factor": 2})
    assert request.items[0].encode().image.sent_size == ImageSize(768, 512)
    outcome = run(request, client, quota)
    assert tuple(outcome.images_tensor().shape) == (1, 1024, 1536, 3)
    assert outcome.items[0].warnings == []


def test_mask_travels_through_the_same_resize_as_its_image(emulator, client, quota) -> None:
    request = prepare(lookup("description_edit_with_mask"), image=photo(width_px=400, height_px=300),
                           mask=box_mask(width_px=400, height_px=300), prompt="")
    item = request.items[0].encode()
    assert item.mask is not None and item.mask.sent_size == item.image.sent_size
    assert item.image.sent_size.height == 512 and abs(item.image.sent_size.width - 512 * 4 / 3) <= 1
    expected = request.expected_size(request.items[0])
    assert tuple(run(request, client, quota).images_tensor().shape[1:3]) == (expected.height, expected.width)


def test_bad_input_is_refused_before_anything_is_sent(emulator, client, quota) -> None:
    with pytest.raises(InputError, match="needs a mask"):
        prepare(lookup("description_edit_with_mask"), image=photo(), mask=None, prompt="")
    with pytest.raises(InputError, match="no white"):
        prepare(lookup("description_edit_with_mask"), image=photo(), mask=box_mask() * 0, prompt="")
    with pytest.raises(InputError, match="does not take strength"):
        prepare(lookup("expand"), image=photo(), mask=None, prompt="p", values={"strength": 0.4})
    assert emulator.requests == []


def test_cancel_stops_within_a_second_and_cancels_the_pending_task(emulator, quota) -> None:
    client = DashScopeClient(settings_for(emulator))
    emulator.next_task_outcomes("running_s:30", "running_s:30")
    blockers = [_submit_raw(emulator) for _ in range(2)]  # occupy both running slots
    time.sleep(1.1)  # the account's submission window is shared with that other process
    request = prepare(lookup("colorization"), image=photo(), mask=None, prompt="")
    cancel_at = time.monotonic() + 0.5
    with pytest.raises(CanceledError, match="was pending and is canceled") as caught:
        run(request, client, quota, should_cancel=lambda: time.monotonic() > cancel_at)
    assert time.monotonic() - cancel_at < 1.0
    ours = [task_id for task_id in emulator.task_ids if task_id not in blockers]
    assert len(ours) == 1 and emulator.task_status(ours[0]) == "CANCELED"
    assert ours[0] in str(caught.value)


def test_cancel_of_a_running_task_names_it_as_billed(emulator, quota) -> None:
    client = DashScopeClient(settings_for(emulator))
    emulator.next_task_outcomes("running_s:30")
    request = prepare(lookup("colorization"), image=photo(), mask=None, prompt="")
    cancel_at = time.monotonic() + 0.6
    with pytest.raises(CanceledError, match="already running and will be billed") as caught:
        run(request, client, quota, should_cancel=lambda: time.monotonic() > cancel_at)
    assert time.monotonic() - cancel_at < 1.0
    assert caught.value.task_id == emulator.task_ids[0]


def test_progress_reports_states_task_ids_and_elapsed_time(emulator, client, quota) -> None:
    seen: list[Progress] = []
    request = prepare(lookup("colorization"), image=photo(batch=2), mask=None, prompt="")
    run(request, client, quota, on_progress=seen.append)
    assert seen[-1].finished == 2 and seen[-1].states == ("done", "done")
    assert any(s == "RUNNING" for p in seen for s in p.states)
    assert all(p.task_ids[0] is None or len(p.task_ids[0]) > 8 for p in seen)
    assert "image 1: done (task" in seen[-1].text()


def _submit_raw(emulator) -> str:
    """Create a task behind the client's back (another process of the same account)."""
    request = prepare(lookup("colorization"), image=photo(seed=9), mask=None, prompt="")
    time.sleep(0.55)  # stay inside the emulator's two-per-second submission limit
    response = requests.post(
        emulator.base_url + "/services/aigc/image2image/image-synthesis", json=request.body(request.items[0].encode()),
        headers={"Authorization": "Bearer sk-emulator-key", "X-DashScope-Async": "enable"}, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()["output"]["task_id"]
