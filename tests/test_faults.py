"""The fault matrix of the emulator, each ending in the designed behaviour. The emulator's count
of created tasks proves that no fault leads to a second paid submission."""

from __future__ import annotations

import socket
import time

import pytest

from conftest import FAST_POLL, TEST_KEY, photo, settings_for
from wanx_imageedit.nodes.core import runner
from wanx_imageedit.nodes.core.client import DashScopeClient, Timeouts
from wanx_imageedit.nodes.core.errors import ApiError, DownloadError, SubmitUncertainError, WanxError
from wanx_imageedit.nodes.core.functions import lookup
from wanx_imageedit.nodes.core.outcome import EditOutcome
from wanx_imageedit.nodes.core.request import prepare
from wanx_imageedit.nodes.core.settings import Settings
from wanx_imageedit.nodes.core.ticker import Ticker


def one_edit(client: DashScopeClient, quota, *, n: int = 1) -> EditOutcome:
    request = prepare(lookup("remove_watermark"), image=photo(), mask=None, prompt="", values={"n": n})
    return runner.run(request, client=client, quota=quota, policy=FAST_POLL)


def creates(emulator) -> int:
    return sum(1 for r in emulator.requests if r.route == "create")


# --- create -------------------------------------------------------------------------------------

def test_throttled_submission_backs_off_and_goes_on(emulator, client, quota) -> None:
    emulator.inject("create", "throttle")
    started = time.monotonic()
    outcome = one_edit(client, quota)
    assert outcome.images_tensor().shape[0] == 1
    assert (emulator.created_count, creates(emulator)) == (1, 2)
    assert time.monotonic() - started >= 1.0  # it waited before trying again


def test_server_error_with_an_error_body_was_not_accepted_and_is_retried(emulator, client, quota) -> None:
    emulator.inject("create", "http500")
    assert one_edit(client, quota).images_tensor().shape[0] == 1
    assert (emulator.created_count, creates(emulator)) == (1, 2)


@pytest.mark.parametrize(("fault", "accepted"), [
    ("drop_before", False), ("http502_plain", False), ("http504", False),
    ("drop_after", True), ("accept_then_504", True), ("accept_then_500", True),
])
def test_an_ambiguous_create_is_reconciled_never_paid_twice(fault, accepted, emulator, client, quota) -> None:
    # Anything after the request went out is checked against the free task list: a task the
    # service took is adopted; none after the window means it was not taken, so it is sent again.
    emulator.inject("create", fault)
    outcome = one_edit(client, quota)
    assert outcome.images_tensor().shape[0] == 1
    assert emulator.created_count == 1 and emulator.billed_image_count == 1 and emulator.downloaded_count == 1
    assert creates(emulator) == (1 if accepted else 2)
    assert outcome.items[0].task_id == emulator.task_ids[0]


def test_an_ambiguous_create_with_two_candidates_is_never_resent(emulator, client, quota) -> None:
    other = prepare(lookup("remove_watermark"), image=photo(seed=5), mask=None, prompt="", values={})
    rival = client.submit(other.body(other.items[0].encode()), ticker=Ticker(), quota=quota)  # another machine's task
    emulator.inject("create", "drop_after")
    with pytest.raises(SubmitUncertainError, match="several new tasks could be this one") as caught:
        one_edit(client, quota)
    assert creates(emulator) == 2 and emulator.created_count == 2
    assert rival.task_id in str(caught.value) and "wanx-imageedit tasks" in str(caught.value)


def test_a_create_answer_that_never_comes_is_not_resubmitted(emulator, quota) -> None:
    client = DashScopeClient(settings_for(emulator), timeouts=Timeouts(create_read_s=0.3))
    emulator.inject("create", "slow:1.0")
    outcome = one_edit(client, quota)  # the task exists: adopted from the task list, not sent again
    assert creates(emulator) == 1 and emulator.created_count == 1
    assert outcome.items[0].task_id == emulator.task_ids[0]


def test_a_connection_that_never_opens_is_retried_then_reported(quota) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(api_key=TEST_KEY, key_source="test", base_url=f"http://127.0.0.1:{port}/api/v1")
    client = DashScopeClient(settings, timeouts=Timeouts(connect_retry_s=0.01))
    with pytest.raises(ApiError, match="could not connect") as caught:
        one_edit(client, quota)
    assert not isinstance(caught.value, SubmitUncertainError)


@pytest.mark.parametrize(("fault", "code", "hint"), [
    ("arrearage", "Arrearage", "overdue payment"),
    ("invalid_key", "InvalidApiKey", "China (Beijing)"),
    ("moderation", "DataInspectionFailed", "Change the image or the prompt"),
])
def test_account_and_moderation_refusals_explain_what_to_do(fault, code, hint, emulator, client, quota) -> None:
    emulator.inject("create", fault)
    with pytest.raises(ApiError) as caught:
        one_edit(client, quota)
    assert caught.value.code == code and hint in str(caught.value)
    assert caught.value.request_id and caught.value.request_id in str(caught.value)
    assert emulator.created_count == 0 and creates(emulator) == 1


def test_invalid_parameter_names_the_parameter(emulator, client, quota) -> None:
    request = prepare(lookup("expand"), image=photo(), mask=None, prompt="p")
    body = request.body(request.items[0].encode())
    body["parameters"]["strength"] = 0.5  # bypass our own validation to see the service's answer
    with pytest.raises(ApiError, match="strength") as caught:
        client.submit(body, ticker=Ticker(), quota=quota)
    assert caught.value.code == "InvalidParameter" and emulator.created_count == 0


# --- polling ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["http503", "http500", "throttle", "drop_before"])
def test_transient_poll_failures_are_retried(fault, emulator, client, quota) -> None:
    emulator.inject("query", fault, fault, fault)
    assert one_edit(client, quota).images_tensor().shape[0] == 1
    assert emulator.created_count == 1


def test_a_slow_poll_is_retried(emulator, quota) -> None:
    client = DashScopeClient(settings_for(emulator), timeouts=Timeouts(query_read_s=0.2))
    emulator.inject("query", "slow:0.5")
    assert one_edit(client, quota).images_tensor().shape[0] == 1
    assert emulator.created_count == 1


def test_a_long_poll_outage_names_the_task_and_how_to_recover(emulator, quota) -> None:
    client = DashScopeClient(settings_for(emulator, poll_outage_s=0.5))
    emulator.inject("query", *["http503"] * 400)
    with pytest.raises(ApiError, match="lost contact") as caught:
        one_edit(client, quota)
    task_id = emulator.task_ids[0]
    assert caught.value.task_id == task_id and f"wanx-imageedit fetch {task_id}" in str(caught.value)
    assert emulator.created_count == 1


# --- results ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["garbage", "http503", "drop_before"])
def test_a_bad_download_is_retried(fault, emulator, client, quota) -> None:
    emulator.inject("download", fault)
    assert one_edit(client, quota).images_tensor().shape[0] == 1
    assert emulator.created_count == 1


def test_a_result_that_cannot_be_downloaded_keeps_its_url_in_the_error(emulator, client, quota) -> None:
    emulator.inject("download", "http404+always")
    with pytest.raises(DownloadError, match="http://127.0.0.1") as caught:
        one_edit(client, quota)
    message = str(caught.value)
    assert "billed" in message and "not billed" not in message and "wanx-imageedit fetch" in message
    assert emulator.created_count == 1


@pytest.mark.parametrize("fault", ["http403", "http404", "short", "truncate"])
def test_a_download_that_fails_once_is_retried(fault, emulator, client, quota) -> None:
    emulator.inject("download", fault)
    assert one_edit(client, quota).images_tensor().shape[0] == 1
    assert emulator.created_count == 1 and emulator.downloaded_count == 1


def test_download_failure_of_one_image_keeps_the_others(emulator, client, quota) -> None:
    emulator.inject("download", "http404+always+index:1")
    outcome = one_edit(client, quota, n=2)
    assert outcome.images_tensor().shape[0] == 1
    assert outcome.items[0].failures[0]["code"] == "DownloadFailed"
    assert "billed" in outcome.items[0].failures[0]["message"]


def test_results_are_fetched_only_from_result_hosts_and_without_the_key(emulator, client, quota) -> None:
    one_edit(client, quota)
    downloads = [r for r in emulator.requests if r.route == "download"]
    assert downloads and not any(r.auth_present for r in downloads)
    for url in ("https://evil.example.com/a.png", "http://dashscope-result-bj.oss-cn-beijing.aliyuncs.com/a.png",
                "ftp://127.0.0.1/a.png", "https://dashscope-result-bj.oss-cn-beijing.aliyuncs.com.evil.com/a.png"):
        with pytest.raises(WanxError, match="unexpected host"):
            client.check_result_url(url, task_id="t")
    for url in ("http://127.0.0.1:1/results/a.png", "http://localhost:9/a.png"):  # the endpoint's host, any port
        client.check_result_url(url, task_id="t")
    client.check_result_url("https://dashscope-result-wlcb-acdr-1.oss-cn-wulanchabu-acdr-1.aliyuncs.com/x.png?Expires=1",
                            task_id="t")
