"""Wire parsing: every documented response shape, and loud failure on anything else."""

from __future__ import annotations

import pytest

from wanx_imageedit.nodes.core.errors import ProtocolError
from wanx_imageedit.nodes.core.protocol import ServiceError, Submitted, TaskState, TaskStatus, TaskSummary


def test_create_response() -> None:
    s = Submitted.from_json({"output": {"task_status": "PENDING", "task_id": "t-1"}, "request_id": "r-1"})
    assert (s.task_id, s.status, s.request_id) == ("t-1", TaskStatus.PENDING, "r-1")


def test_partial_success_keeps_urls_and_failures_and_usage() -> None:
    state = TaskState.from_json({
        "request_id": "r", "usage": {"image_count": 1},
        "output": {"task_id": "t", "task_status": "SUCCEEDED",
                   "results": [{"url": "https://x/a.png"}, {"code": "InternalError.Timeout", "message": "late"}]}})
    assert state.image_count == 1
    assert state.results[0].url == "https://x/a.png"
    assert (state.results[1].url, state.results[1].code) == (None, "InternalError.Timeout")


def test_failed_task_carries_code_and_message() -> None:
    state = TaskState.from_json({"request_id": "r", "output": {
        "task_id": "t", "task_status": "FAILED", "code": "InvalidParameter", "message": "bad"}})
    assert (state.status, state.code, state.message, state.image_count) == (
        TaskStatus.FAILED, "InvalidParameter", "bad", None)


def test_an_unknown_status_is_an_error_not_a_reason_to_keep_polling() -> None:
    with pytest.raises(ProtocolError, match="unknown task status 'DONE'"):
        TaskState.from_json({"output": {"task_id": "t", "task_status": "DONE"}})


@pytest.mark.parametrize("body", [
    {}, {"output": None}, {"output": {"task_status": "RUNNING"}}, "not json object",
    {"output": {"task_id": "t", "task_status": "SUCCEEDED", "results": []}},
    {"output": {"task_id": "t", "task_status": "SUCCEEDED", "results": [{}]}},
])
def test_malformed_task_bodies_are_protocol_errors(body: object) -> None:
    with pytest.raises(ProtocolError):
        TaskState.from_json(body)


def test_error_bodies_accept_message_or_msg() -> None:
    assert ServiceError.from_json({"code": "Throttling", "msg": "slow down", "request_id": "r"}) == ServiceError(
        "Throttling", "slow down", "r")
    assert ServiceError.from_json({"message": "no code"}) is None
    assert ServiceError.from_json("<html>") is None


def test_unknown_and_terminal_states() -> None:
    assert TaskStatus.UNKNOWN.is_terminal and TaskStatus.CANCELED.is_terminal
    assert not TaskStatus.SUSPENDED.is_terminal and not TaskStatus.PENDING.is_terminal


def test_task_list_rows() -> None:
    rows = TaskSummary.list_from_json({"request_id": "r", "total": 1, "data": [
        {"task_id": "t", "status": "RUNNING", "model_name": "wanx2.1-imageedit", "gmt_create": 1745568428109}]})
    assert rows[0].task_id == "t" and rows[0].created_ms == 1745568428109 and rows[0].ended_ms is None
