"""The DashScope async-task protocol, parsed once into small typed values (spec section 7).
Raw dicts never travel past this module; an unknown status or shape is a ProtocolError."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ProtocolError


class TaskStatus(enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"  # in the SDK's enum, undocumented for this model; treated as waiting
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    UNKNOWN = "UNKNOWN"  # no such task: expired after 24 h, or another account's

    @property
    def is_terminal(self) -> bool:
        return self not in (TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.SUSPENDED)

    @classmethod
    def parse(cls, value: object, *, task_id: str | None = None) -> TaskStatus:
        try:
            return cls(value)
        except ValueError:
            raise ProtocolError(f"the service reported an unknown task status {value!r}", task_id=task_id) from None


@dataclass(frozen=True)
class ServiceError:
    """A top-level error body: ``{"code", "message", "request_id"}``."""

    code: str
    message: str
    request_id: str | None

    @classmethod
    def from_json(cls, body: object) -> ServiceError | None:
        """Parse an error body, or return None when it is not one (not JSON, no code)."""
        if not isinstance(body, Mapping) or not body.get("code"):
            return None
        message = body.get("message") or body.get("msg") or ""
        return cls(code=str(body["code"]), message=str(message), request_id=_opt_str(body.get("request_id")))


@dataclass(frozen=True)
class Submitted:
    task_id: str
    status: TaskStatus
    request_id: str | None

    @classmethod
    def from_json(cls, body: object) -> Submitted:
        _, task_id, status = _task_output(body, what="create")
        return cls(task_id=task_id, status=status, request_id=_request_id(body))


@dataclass(frozen=True)
class ImageOutcome:
    """One entry of ``output.results``: a URL, or the code and message of a failed image."""

    url: str | None
    code: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class TaskState:
    task_id: str
    status: TaskStatus
    request_id: str | None
    results: tuple[ImageOutcome, ...] = ()
    code: str | None = None  # whole-task failure
    message: str | None = None
    image_count: int | None = None  # usage.image_count: what is billed
    submit_time: str | None = None
    end_time: str | None = None

    @classmethod
    def from_json(cls, body: object) -> TaskState:
        output, task_id, status = _task_output(body, what="task")
        results: list[ImageOutcome] = []
        for entry in output.get("results") or ():
            if not isinstance(entry, Mapping):
                raise ProtocolError(f"a result entry is not an object: {entry!r:.80}", task_id=task_id)
            url = entry.get("url") or None
            code = _opt_str(entry.get("code"))
            if url is None and code is None:
                raise ProtocolError("a result entry has neither url nor code", task_id=task_id)
            results.append(ImageOutcome(url=url, code=code, message=_opt_str(entry.get("message"))))
        if status is TaskStatus.SUCCEEDED and not any(r.url for r in results):
            raise ProtocolError("the task succeeded but returned no image URL", task_id=task_id)
        usage = body.get("usage") if isinstance(body, Mapping) else None
        count = usage.get("image_count") if isinstance(usage, Mapping) else None
        return cls(
            task_id=task_id, status=status, request_id=_request_id(body), results=tuple(results),
            code=_opt_str(output.get("code")), message=_opt_str(output.get("message")),
            image_count=int(count) if isinstance(count, int | float) else None,
            submit_time=_opt_str(output.get("submit_time")), end_time=_opt_str(output.get("end_time")),
        )


@dataclass(frozen=True)
class TaskSummary:
    """One row of ``GET /tasks`` (times in epoch milliseconds)."""

    task_id: str
    status: TaskStatus
    model_name: str | None
    request_id: str | None
    created_ms: int | None
    ended_ms: int | None

    @classmethod
    def list_from_json(cls, body: object) -> list[TaskSummary]:
        if not isinstance(body, Mapping) or not isinstance(body.get("data", []), list):
            raise ProtocolError("the task list response has no 'data' list", request_id=_request_id(body))
        rows = []
        for item in body.get("data") or ():
            if not isinstance(item, Mapping) or not item.get("task_id"):
                raise ProtocolError("a task list entry has no task_id", request_id=_request_id(body))
            task_id = str(item["task_id"])
            rows.append(cls(
                task_id=task_id, status=TaskStatus.parse(item.get("status"), task_id=task_id),
                model_name=_opt_str(item.get("model_name")), request_id=_opt_str(item.get("request_id")),
                created_ms=_opt_int(item.get("gmt_create")), ended_ms=_opt_int(item.get("end_time")),
            ))
        return rows


def _task_output(body: object, *, what: str) -> tuple[Mapping[str, Any], str, TaskStatus]:
    """The ``output`` object with its task id and status, which every task answer carries."""
    output = _output(body)
    task_id = output.get("task_id")
    if not isinstance(task_id, str) or not task_id:
        raise ProtocolError(f"the {what} response has no task_id", request_id=_request_id(body))
    return output, task_id, TaskStatus.parse(output.get("task_status"), task_id=task_id)


def _output(body: object) -> Mapping[str, Any]:
    output = body.get("output") if isinstance(body, Mapping) else None
    if not isinstance(output, Mapping):
        raise ProtocolError(f"the response has no 'output' object: {str(body)[:120]}", request_id=_request_id(body))
    return output


def _request_id(body: object) -> str | None:
    return _opt_str(body.get("request_id")) if isinstance(body, Mapping) else None


def _opt_str(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def _opt_int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
