"""Performance at scale, the behaviour behind it (tests/bench.py measures the figures): each result
is decoded straight into the run's IMAGE batch as it arrives, a run keeps a bounded number of
threads, one image is encoded at a time, and images a Cancel caught before they were started give
their reserved budget back. Against the emulator over loopback."""

from __future__ import annotations

import dataclasses
import io
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from bench import TimedItem  # tests/ is on the path
from PIL import Image

from conftest import FAST_POLL, TEST_KEY, photo, settings_for
from wanx_imageedit.nodes.core import images, runner
from wanx_imageedit.nodes.core.client import DashScopeClient
from wanx_imageedit.nodes.core.errors import CanceledError, InputError
from wanx_imageedit.nodes.core.functions import lookup
from wanx_imageedit.nodes.core.journal import SUBMITTING
from wanx_imageedit.nodes.core.outcome import ItemState
from wanx_imageedit.nodes.core.quota import Quota
from wanx_imageedit.nodes.core.request import EditRequest, prepare
from wanx_imageedit.nodes.core.store import Store
from wanx_imageedit.nodes.emulator import Emulator, render_result


def colorize(*, batch: int, n: int = 1, seed: int = 5) -> EditRequest:
    return prepare(lookup("colorization"), image=photo(batch=batch, seed=seed), mask=None, prompt="",
                   values={"n": n, "seed": seed})


def expected_tensor(outcome) -> torch.Tensor:
    """What the results are, from the files as the service returned them (keep_files)."""
    return torch.stack([torch.from_numpy(images.decode_image(data)).float() / 255.0
                        for item in outcome.items for data in item.files])


def test_results_are_decoded_into_the_output_batch_which_is_handed_over_as_it_is(emulator, client, quota) -> None:
    request = colorize(batch=3)
    output = request.result_batch()
    assert output is not None and output.slots == 3
    outcome = runner.run(request, client=client, quota=quota, policy=FAST_POLL, keep_files=True, output=output)
    tensor = outcome.images_tensor()
    assert tensor.shape == (3, 512, 512, 3) and tensor.dtype == torch.float32
    assert tensor.data_ptr() == output.take([0, 1, 2]).data_ptr()  # the batch itself: no second copy
    assert torch.equal(tensor, expected_tensor(outcome))
    for index, item in enumerate(outcome.items):  # the items' images are views of it
        (view,) = item.images
        assert view.dtype == np.float32 and np.shares_memory(view, tensor.numpy())
        assert np.array_equal(view, tensor[index].numpy())


def test_missing_results_close_up_in_place_in_input_and_task_order(emulator, client, quota) -> None:
    # Image 0's task bills only its result 1 of 2; image 1 gets both: slots 1, 2, 3 of 4 are filled.
    emulator.next_task_outcomes("partial:0:DataInspectionFailed", "ok")
    request = colorize(batch=2, n=2)
    output = request.result_batch()
    assert output is not None and output.slots == 4
    outcome = runner.run(request, client=client, quota=quota, policy=FAST_POLL, keep_files=True, output=output)
    assert [len(item.images) for item in outcome.items] == [1, 2]
    tensor = outcome.images_tensor()
    assert tensor.shape[0] == 3 and torch.equal(tensor, expected_tensor(outcome))
    assert tensor.data_ptr() == output.take([0, 1, 2]).data_ptr()
    assert np.array_equal(outcome.items[1].images[1], tensor[2].numpy())  # views follow the move
    assert torch.equal(outcome.images_tensor(), tensor)  # asking again changes nothing


def test_results_of_another_size_than_predicted_are_kept_and_still_handed_over() -> None:
    # The output-size rules are inferred: results of a consistent other size must still arrive.
    def render(job, *, index: int) -> bytes:
        pixels = np.asarray(Image.open(io.BytesIO(render_result(job, index=index))).convert("RGB"))
        buffer = io.BytesIO()
        Image.fromarray(pixels[:480, :500]).save(buffer, format="PNG")
        return buffer.getvalue()

    with Emulator(api_keys=(TEST_KEY,), running_s=(0.15, 0.25), render=render) as emulator:
        client = DashScopeClient(settings_for(emulator))
        request = colorize(batch=2)
        outcome = runner.run(request, client=client, quota=Quota(max_in_flight=2, submits_per_s=2),
                             policy=FAST_POLL, keep_files=True, output=request.result_batch())
    assert all("not the expected" in item.warnings[0] for item in outcome.items)
    assert all(item.images[0].dtype == np.uint8 for item in outcome.items)  # not put in the batch
    tensor = outcome.images_tensor()
    assert tensor.shape == (2, 480, 500, 3) and torch.equal(tensor, expected_tensor(outcome))


def test_a_result_decodes_into_its_slot_only_when_it_fits() -> None:
    batch = images.ResultBatch(size=images.ImageSize(300, 200), slots=2)
    pixels = np.random.default_rng(1).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    slot = batch.slot(1)
    assert slot is not None and batch.slot(2) is None
    view = images.decode_image(buffer.getvalue(), out=slot)
    assert view is slot and batch.slot_of(view) == 1 and batch.slot_of(pixels.astype(np.float32)) is None
    assert np.array_equal(view, pixels / np.float32(255.0))  # in bands of rows, the same values
    assert torch.equal(batch.take([1]), torch.from_numpy(pixels).float().div(255.0)[None])
    other = images.decode_image(buffer.getvalue(), out=np.zeros((10, 300, 3), np.float32))  # another size
    assert other.dtype == np.uint8 and np.array_equal(other, pixels)
    with pytest.raises(ValueError, match="ascend"):
        batch.take([1, 0])
    with pytest.raises(InputError, match="equal size"):  # what the stacking of mixed sizes says, as before
        images.stack_images([np.zeros((2, 4, 3), np.uint8), np.zeros((2, 5, 3), np.float32)])


def test_a_run_encodes_one_image_at_a_time_and_keeps_few_threads(emulator, client, quota) -> None:
    request = colorize(batch=8)
    spans: list[tuple[float, float]] = []
    timed = tuple(TimedItem(checked=item.checked, spans=spans) for item in request.items)
    request = dataclasses.replace(request, items=timed)
    threads: list[int] = []

    def count_threads(_progress: object) -> None:
        threads.append(sum(t.name.startswith("wanx-task") for t in threading.enumerate()))

    outcome = runner.run(request, client=client, quota=quota, policy=FAST_POLL, on_progress=count_threads)
    assert sum(len(item.images) for item in outcome.items) == 8 and emulator.created_count == 8
    assert max(threads) == quota.max_in_flight + runner.DOWNLOAD_WORKERS  # not one thread per image
    spans.sort()
    assert len(spans) == 8 and all(end <= start for (_, end), (start, _) in zip(spans, spans[1:], strict=False))


def test_images_a_cancel_caught_before_they_started_give_their_budget_back(emulator, client, tmp_path: Path) -> None:
    emulator.next_task_outcomes("running_s:30")  # the one task the canceled run sends
    store = Store.open(default_dir=tmp_path, environ={"WANX_DAILY_IMAGE_LIMIT": "6", "WANX_CACHE": "off"})
    quota = Quota(max_in_flight=1, submits_per_s=20)  # 3 workers for 6 images: 3 never start
    request = colorize(batch=6)
    cancel = threading.Event()

    def on_progress(progress) -> None:
        if ItemState.RUNNING in progress.states or ItemState.PENDING in progress.states:
            cancel.set()

    with pytest.raises(CanceledError) as caught:
        runner.run(request, client=client, quota=quota, policy=FAST_POLL, store=store, on_progress=on_progress,
                   should_cancel=cancel.is_set)
    assert emulator.created_count == 1 and "5 image(s) not sent (not billed)" in str(caught.value)
    assert not [e for e in store.journal.entries() if e.status == SUBMITTING]  # no claim left waiting
    # At most the one task sent still counts (billed if it was already running): 5 more fit in 6.
    runner.run(colorize(batch=5, seed=9), client=client, quota=quota, policy=FAST_POLL, store=store)
    assert emulator.created_count == 6
