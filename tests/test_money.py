"""A paid task is never lost and never paid twice: each fault of the money issue, through the
engine and the journal against the emulator over loopback. Every test checks the emulator's count
of created tasks, billed images and delivered images."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST_POLL, photo
from wanx_imageedit.nodes.core import runner
from wanx_imageedit.nodes.core.errors import BudgetError, DownloadError, InputError, TaskFailedError
from wanx_imageedit.nodes.core.functions import lookup
from wanx_imageedit.nodes.core.journal import UNCERTAIN
from wanx_imageedit.nodes.core.outcome import ItemState, Progress
from wanx_imageedit.nodes.core.request import EditRequest, prepare
from wanx_imageedit.nodes.core.store import Store


def store_in(folder: Path, **env: str) -> Store:
    return Store.open(default_dir=folder, environ=env)


def colorize(seed: int | None = 3, *, n: int = 1, image_seed: int = 0) -> EditRequest:
    values = {"n": n} if seed is None else {"n": n, "seed": seed}
    return prepare(lookup("colorization"), image=photo(seed=image_seed), mask=None, prompt="", values=values)


def counts(emulator) -> tuple[int, int, int]:
    """(tasks created, images billed, images delivered) as the service saw them."""
    return emulator.created_count, emulator.billed_image_count, emulator.downloaded_count


# --- 1. UNKNOWN -------------------------------------------------------------------------------------

def test_a_single_unknown_answer_is_checked_again_and_the_image_delivered(emulator, client, quota, tmp_path) -> None:
    emulator.next_task_outcomes("unknown_once")
    store = store_in(tmp_path)
    outcome = runner.run(colorize(), client=client, quota=quota, policy=FAST_POLL, store=store)
    assert len(outcome.items[0].images) == 1 and counts(emulator) == (1, 1, 1)
    (entry,) = store.journal.entries()
    assert entry.status == "SUCCEEDED" and entry.recovered


def test_a_task_that_stays_unknown_stays_recoverable_and_counted(emulator, client, quota, tmp_path) -> None:
    emulator.next_task_outcomes("unknown")
    store = store_in(tmp_path, WANX_DAILY_IMAGE_LIMIT="1")
    with pytest.raises(TaskFailedError, match="does not know this task right now") as caught:
        runner.run(colorize(), client=client, quota=quota, policy=FAST_POLL, store=store)
    task_id = emulator.task_ids[0]
    message = str(caught.value)
    assert f"wanx-imageedit fetch {task_id}" in message and "may still finish and be billed" in message
    entry = store.journal.newest_unrecovered()
    assert entry is not None and entry.task_id == task_id and not entry.final  # `fetch` finds it
    with pytest.raises(BudgetError):  # it may bill: the budget still counts it
        runner.run(colorize(seed=4), client=client, quota=quota, policy=FAST_POLL, store=store)
    assert emulator.created_count == 1


# --- 2 and 6. Uncertain creates -------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["drop_after", "accept_then_504"])
def test_a_create_accepted_but_unanswered_is_journaled_adopted_and_counted(fault, emulator, client, quota,
                                                                           tmp_path) -> None:
    emulator.inject("create", fault)
    store = store_in(tmp_path, WANX_DAILY_IMAGE_LIMIT="1")
    outcome = runner.run(colorize(), client=client, quota=quota, policy=FAST_POLL, store=store)
    assert counts(emulator) == (1, 1, 1) and outcome.items[0].task_id == emulator.task_ids[0]
    (entry,) = store.journal.entries()
    assert entry.task_id == emulator.task_ids[0] and entry.recovered
    with pytest.raises(BudgetError):  # the adopted task used today's only image
        runner.run(colorize(seed=4), client=client, quota=quota, policy=FAST_POLL, store=store)
    assert emulator.created_count == 1


def test_an_uncertain_create_is_written_down_before_anyone_hears_of_it(emulator, client, quota, tmp_path) -> None:
    emulator.inject("create", "drop_after")
    emulator.inject("list", "http503+always")  # the check cannot be made: never resend
    store = store_in(tmp_path)
    with pytest.raises(Exception, match="task list could not be read") as caught:
        runner.run(colorize(), client=client, quota=quota, policy=FAST_POLL, store=store)
    assert "wanx-imageedit tasks" in str(caught.value)
    (entry,) = store.journal.entries()
    assert entry.status == UNCERTAIN and entry.task_id is None
    assert emulator.created_count == 1
    emulator.clear_faults()
    recovered = runner.recover(None, client=client, store=store, policy=FAST_POLL)  # reconciles, then fetches
    assert recovered.task_id == emulator.task_ids[0] and len(recovered.images) == 1
    assert counts(emulator) == (1, 1, 1)


# --- 3 and 4. Paid but not delivered --------------------------------------------------------------

def test_a_partial_delivery_is_journaled_and_fetch_delivers_exactly_the_missing(emulator, client, quota,
                                                                                tmp_path) -> None:
    emulator.inject("download", "http404+always+index:1")
    store = store_in(tmp_path)
    outcome = runner.run(colorize(n=2), client=client, quota=quota, policy=FAST_POLL, store=store)
    assert len(outcome.items[0].images) == 1 and counts(emulator) == (1, 2, 1)
    entry = store.journal.newest_unrecovered()
    assert entry is not None and entry.missing == {1} and entry.delivered == {0}
    emulator.clear_faults()
    recovered = runner.recover(None, client=client, store=store, policy=FAST_POLL)
    assert len(recovered.images) == 1 and counts(emulator) == (1, 2, 2)
    task = client.query(recovered.task_id)
    served = client.download(task.results[1].url, task_id=task.task_id, ticker=runner.Ticker(),
                             decode=runner.images.decode_image)
    assert np.array_equal(recovered.images[0], served)
    assert store.journal.newest_unrecovered() is None


def test_nothing_downloaded_says_billed_and_fetch_recovers_it_with_fresh_links(tmp_path, quota) -> None:
    from conftest import TEST_KEY, settings_for
    from wanx_imageedit.nodes.core.client import DashScopeClient
    from wanx_imageedit.nodes.emulator import Emulator

    with Emulator(api_keys=(TEST_KEY,), running_s=(0.1, 0.15), link_lifetime_s=1.0) as emulator:
        client = DashScopeClient(settings_for(emulator))
        emulator.inject("download", "http403+always")
        store = store_in(tmp_path)
        with pytest.raises(DownloadError) as caught:
            runner.run(colorize(), client=client, quota=quota, policy=FAST_POLL, store=store)
        message = str(caught.value)
        assert "billed" in message and "not billed" not in message and "wanx-imageedit fetch" in message
        emulator.clear_faults()
        emulator.advance(5.0)  # the links handed out so far have expired
        recovered = runner.recover(None, client=client, store=store, policy=FAST_POLL)
        assert len(recovered.images) == 1 and counts(emulator) == (1, 1, 1)


# --- 5. Re-running after a crash attaches instead of paying again ----------------------------------

def test_an_identical_seeded_edit_attaches_to_the_task_in_flight(emulator, client, quota, tmp_path) -> None:
    store = store_in(tmp_path, WANX_CACHE="off")
    request = colorize()
    # A run that died after its task was accepted: its claim and task are in the journal, nothing delivered.
    key = request.digest(request.items[0].encode(), endpoint=client.settings.base_url)
    (claim,) = store.journal.reserve(1, function="colorization", n=1, owner="dead-host:1:x")
    store.journal.set(claim.row, digest=key)
    submitted = client.submit(request.body(request.items[0].encode()), ticker=runner.Ticker(), quota=quota)
    store.journal.set(claim.row, task_id=submitted.task_id, status=submitted.status.value, heartbeat_at=0.0)
    outcome = runner.run(request, client=client, quota=quota, policy=FAST_POLL, store=store)
    assert outcome.items[0].attached and outcome.items[0].task_id == submitted.task_id
    assert outcome.report()["items"][0]["attached"] is True
    assert counts(emulator) == (1, 1, 1)
    assert store.journal.newest_unrecovered() is None
    again = runner.run(request, client=client, quota=quota, policy=FAST_POLL, store=store)  # delivered: a new run
    assert not again.items[0].attached and emulator.created_count == 2


def test_an_unseeded_edit_never_attaches(emulator, client, quota, tmp_path) -> None:
    store = store_in(tmp_path)
    for _ in range(2):
        runner.run(colorize(seed=None), client=client, quota=quota, policy=FAST_POLL, store=store)
    assert emulator.created_count == 2


# --- 7 and 8. Refused before sending ---------------------------------------------------------------

def test_nan_and_infinite_pixels_are_refused_before_sending(emulator, client, quota) -> None:
    image = photo()
    image[0, :10, :10, 0] = float("nan")
    image[0, 20, 20, 1] = float("inf")
    with pytest.raises(InputError, match="NaN") as caught:
        prepare(lookup("colorization"), image=image, mask=None, prompt="")
    assert "101" in str(caught.value) and emulator.requests == []


def test_results_that_could_not_be_handed_back_are_refused_before_sending(emulator) -> None:
    big = photo(width_px=4096, height_px=4096)
    with pytest.raises(InputError, match="16384x16384") as caught:
        prepare(lookup("super_resolution"), image=big, mask=None, prompt="", values={"upscale_factor": 4, "n": 4})
    assert "upscale_factor" in str(caught.value) and emulator.requests == []


# --- 10. The journal ------------------------------------------------------------------------------

def test_a_journal_that_fails_after_the_submit_does_not_stop_the_paid_task(emulator, client, quota, tmp_path,
                                                                            caplog) -> None:
    store = store_in(tmp_path)
    emulator.next_task_outcomes("running_s:1")  # long enough for the break to land while it runs
    broken: list[bool] = []

    def break_journal(progress: Progress) -> None:
        sent = (ItemState.SUBMITTING, ItemState.PENDING, ItemState.RUNNING)
        if not broken and any(s in sent for s in progress.states):
            with sqlite3.connect(tmp_path / "state.db") as db:  # another program damages the journal
                db.execute("DROP TABLE tasks")
            broken.append(True)

    outcome = runner.run(colorize(), client=client, quota=quota, policy=FAST_POLL, store=store,
                         on_progress=break_journal)
    assert broken and len(outcome.items[0].images) == 1 and counts(emulator) == (1, 1, 1)
    assert any("could not write the task journal" in r.message and r.levelname == "ERROR" for r in caplog.records)


def test_budget_reservations_are_released_when_the_create_is_refused(emulator, client, quota, tmp_path) -> None:
    store = store_in(tmp_path, WANX_DAILY_IMAGE_LIMIT="1")
    emulator.inject("create", "moderation")
    with pytest.raises(Exception, match="DataInspectionFailed"):
        runner.run(colorize(), client=client, quota=quota, policy=FAST_POLL, store=store)
    assert store.journal.images_since(time.time() - 60) == 0
    runner.run(colorize(seed=4), client=client, quota=quota, policy=FAST_POLL, store=store)  # the image is free again
    assert counts(emulator) == (1, 1, 1)


def test_claims_of_a_run_that_died_before_sending_are_released_not_recovered(emulator, client, quota,
                                                                            tmp_path) -> None:
    store = store_in(tmp_path, WANX_DAILY_IMAGE_LIMIT="2")
    store.journal.reserve(2, function="colorization", n=1, owner="dead-host:1:x",
                          now_s=time.time() - 600)  # a batch of 2 that died waiting for its turn
    assert store.journal.newest_unrecovered() is None  # nothing was sent, nothing to fetch
    runner.run(colorize(n=2), client=client, quota=quota, policy=FAST_POLL, store=store)  # the budget is free
    assert counts(emulator) == (1, 2, 2)


def test_a_result_of_one_endpoint_is_never_served_for_another(emulator, client, quota, tmp_path) -> None:
    from conftest import TEST_KEY, settings_for
    from wanx_imageedit.nodes.core.client import DashScopeClient
    from wanx_imageedit.nodes.emulator import Emulator

    store = store_in(tmp_path)
    runner.run(colorize(), client=client, quota=quota, policy=FAST_POLL, store=store)  # cached for this endpoint
    with Emulator(api_keys=(TEST_KEY,), running_s=(0.1, 0.15)) as other:
        again = runner.run(colorize(), client=DashScopeClient(settings_for(other)), quota=quota, policy=FAST_POLL,
                           store=store)
        assert not again.items[0].cached and other.created_count == 1  # a real run there, not the other's image
    assert emulator.created_count == 1


def test_a_cancel_hands_over_the_images_that_had_arrived(emulator, client, quota, tmp_path) -> None:
    emulator.next_task_outcomes("ok", "running_s:20")
    store = store_in(tmp_path)
    request = prepare(lookup("colorization"), image=photo(batch=2), mask=None, prompt="", values={"seed": 1})
    stop = {"at": None}

    def cancel_when_one_is_done(progress: Progress) -> None:
        if ItemState.DONE in progress.states and stop["at"] is None:
            stop["at"] = time.monotonic()

    with pytest.raises(runner.CanceledError) as caught:
        runner.run(request, client=client, quota=quota, policy=FAST_POLL, store=store,
                   on_progress=cancel_when_one_is_done, should_cancel=lambda: stop["at"] is not None)
    partial = caught.value.outcome
    assert partial is not None and len(partial.items) == 1 and len(partial.items[0].images) == 1
    assert emulator.billed_image_count >= 1
