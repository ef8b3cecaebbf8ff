"""The fault mini-language: every failure the real service (or the network, or the result storage)
can produce, on demand, through `Emulator.inject(route, *faults)`, `Emulator.next_task_outcomes(
*outcomes)`, the admin route ``POST /_emulator/faults`` and the options ``--fault ROUTE=FAULT`` and
``--outcome OUTCOME`` of ``wanx-imageedit emulator`` / ``python -m wanx_imageedit.nodes.emulator``.

Route faults
------------
``inject(route, f1, f2, ...)`` queues faults for one route. Each request of the route takes the
first queued fault that applies to it; a fault applies once unless a modifier says otherwise.
A fault is ``NAME[:ARG]`` followed by any of these modifiers, each after a ``+``:

* ``+times:N``  the next N requests that it applies to (e.g. ``http503+times:3``);
* ``+always``   every request it applies to, until `Emulator.clear_faults` (faults queued behind it
  on the same route then never come up);
* ``+index:I``  download only: only downloads of result index I (others pass it by untouched),
  e.g. ``http404+always+index:1`` is a result that can never be fetched while index 0 can.

Routes and their faults:

create (``POST .../image2image/image-synthesis``)
  ``throttle``        429 Throttling.RateQuota; nothing created.
  ``http500``         500 InternalError (JSON); nothing created.
  ``http503``         503 ServiceUnavailable (JSON); nothing created.
  ``http504``         504 RequestTimeOut (JSON); nothing created.
  ``http502_plain``   502 with an HTML body (a proxy's answer, not JSON); nothing created.
  ``arrearage``       400 Arrearage; nothing created.
  ``invalid_key``     401 InvalidApiKey; nothing created.
  ``moderation``      400 DataInspectionFailed; nothing created.
  ``drop_before``     the connection closes without an answer; nothing created.
  ``drop_after``      the task IS created (it runs and bills), then the connection closes unanswered.
  ``accept_then_500`` / ``accept_then_503`` / ``accept_then_504``
                      the task IS created (it runs and bills), then the answer is the same JSON error
                      as ``http500`` / ``http503`` / ``http504``, whose request_id is the task's own
                      (the one ``GET /tasks`` lists). Byte for byte the twin of the fault without
                      ``accept_then``, except for that request_id. (Should the create itself be
                      refused, e.g. throttled, nothing is created and the answer is still the 5xx.)
  ``slow:S``          the answer comes S seconds late (the task is created; a client that gave up
                      has an unanswered, created task).
query (``GET /tasks/{id}``)
  ``http500``, ``http503``, ``http504``, ``throttle`` (429 Throttling), ``drop_before``, ``slow:S``;
  ``unknown``         200 with ``task_status: UNKNOWN`` for the queried id, whatever its real state
                      (the next query tells the truth again).
list (``GET /tasks``), cancel (``POST /tasks/{id}/cancel``)
  ``http500``, ``http503``, ``http504``, ``throttle``, ``drop_before``, ``slow:S``.
download (``GET /results/{task}/{index}.png``, like a signed OSS link)
  ``http403``         403, OSS XML AccessDenied "Request has expired." (as an expired link).
  ``http404``         404, OSS XML NoSuchKey.
  ``http503``         503 ServiceUnavailable.
  ``garbage``         200 image/png whose bytes are not an image (corrupt bytes).
  ``short``           200 with valid headers but only the first half of the PNG (Content-Length
                      matches what is sent).
  ``truncate``        200 announcing the full Content-Length, the first half of the PNG, then the
                      connection closes (a transfer cut mid-body).
  ``drop_before``, ``slow:S``.
  ``short`` and ``truncate`` change only a real image answer; an error answer passes through.
  None of these count as a download in `Emulator.downloaded_count`.

Persistent download failures: ``http403+always``, ``http404+always`` (all results), or with
``+index:I`` for one result.

Task outcomes
-------------
``next_task_outcomes(o1, o2, ...)`` applies one outcome to each of the next created tasks, in
order. Parts combine with ``+`` (e.g. ``partial+running_s:3``):

* ``ok``                the normal course (to line up outcomes of later tasks);
* ``fail:CODE``         the task FAILS with CODE (message from the spec's table);
* ``partial``           SUCCEEDED, but only image 0 succeeds; the others fail InternalError.Timeout;
* ``partial:I,J:CODE``  SUCCEEDED, but result indices I, J (0-based, < 4) fail with CODE (e.g.
                        ``partial:1,3:DataInspectionFailed``); if that leaves no image, the task FAILS
                        with CODE (zero images is never SUCCEEDED); indices >= n are ignored;
* ``all_images_fail``   every image fails: the task FAILS with InternalError.Timeout;
* ``unknown``           every query answers UNKNOWN although the task runs (and bills);
* ``unknown_once``      the task's first query answers UNKNOWN, later ones its real state;
* ``running_s:S``       the task runs S seconds (instead of the drawn duration).

Signed result links
-------------------
Not a fault but the service's own rule: result URLs carry ``?Expires=<epoch s>&Signature=<hmac>``
and live `Emulator(link_lifetime_s=...)` (24 h by default) from the query that handed them out.
After that a download answers 403 AccessDenied "Request has expired." (OSS XML); a new query hands
out freshly signed links. A missing signature is 403 AccessDenied, a wrong one (another index, an
edited Expires) 403 SignatureDoesNotMatch. A result that does not exist (never generated, or
forgotten 24 h after its task ended) answers 404 NoSuchKey before its link is checked.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .http import DROPPED, Reply
from .rules import (
    MAX_N,
    MSG_GATEWAY_TIMEOUT,
    MSG_INTERNAL,
    MSG_NO_SUCH_KEY,
    MSG_RATE_QUOTA,
    MSG_THROTTLING,
    MSG_UNAVAILABLE,
    TASK_ERROR_MESSAGES,
    error_message,
)

_TASK_API = frozenset({"http503", "http500", "http504", "throttle", "drop_before", "slow"})
ROUTE_FAULTS: Mapping[str, frozenset[str]] = {
    "create": frozenset({"throttle", "http500", "http503", "http504", "http502_plain", "drop_before", "drop_after",
                         "accept_then_500", "accept_then_503", "accept_then_504", "slow", "arrearage",
                         "invalid_key", "moderation"}),
    "query": _TASK_API | {"unknown"},
    "list": _TASK_API,
    "cancel": _TASK_API,
    "download": frozenset({"http403", "http404", "http503", "garbage", "short", "truncate", "drop_before", "slow"}),
}
# Faults that let the route do its work (create the task, read the image) and then spoil the answer.
_AFTER = frozenset({"drop_after", "accept_then_500", "accept_then_503", "accept_then_504", "short", "truncate"})
OUTCOMES = ("ok", "fail:CODE", "partial", "partial:INDICES:CODE", "all_images_fail", "unknown", "unknown_once",
            "running_s:SECONDS")


@dataclass(frozen=True)
class Fault:
    name: str
    seconds: float = 0.0  # for "slow"
    times: int | None = 1  # None: every request it applies to, until cleared
    index: int | None = None  # download: only this result index

    @property
    def after(self) -> bool:
        """True when the route runs first (and its effects stay) and the fault spoils its answer."""
        return self.name in _AFTER

    def applies_to(self, *, index: int | None) -> bool:
        return self.index is None or self.index == index


def parse_fault(route: str, text: str) -> Fault:
    if route not in ROUTE_FAULTS:
        raise ValueError(f"no faults for route {route!r}; routes: {', '.join(ROUTE_FAULTS)}")
    head, *modifiers = text.split("+")
    name, _, arg = head.partition(":")
    if name not in ROUTE_FAULTS[route]:
        known = ", ".join(sorted(ROUTE_FAULTS[route]))
        raise ValueError(f"unknown fault {text!r} for route {route!r}; known: {known}")
    fault = Fault(name, seconds=parse_seconds(arg, what=text) if name == "slow" else 0.0)
    if arg and name != "slow":
        raise ValueError(f"fault {name!r} takes no argument (got {text!r})")
    for modifier in modifiers:
        fault = _modify(fault, modifier, route=route, text=text)
    return fault


def _modify(fault: Fault, modifier: str, *, route: str, text: str) -> Fault:
    key, _, arg = modifier.partition(":")
    if key == "always" and not arg:
        return replace(fault, times=None)
    if key == "times":
        return replace(fault, times=_parse_count(arg, what=text, low=1))
    if key == "index" and route == "download":
        return replace(fault, index=_parse_count(arg, what=text, low=0))
    where = ", index:I" if route == "download" else ""
    raise ValueError(f"unknown modifier {modifier!r} in {text!r}; known: times:N, always{where}")


def _parse_count(arg: str, *, what: str, low: int) -> int:
    if not arg.isdigit() or int(arg) < low:
        raise ValueError(f"{what!r}: expected a whole number >= {low} after ':'")
    return int(arg)


def parse_seconds(arg: str, *, what: str) -> float:
    try:
        seconds = float(arg)
    except ValueError:
        raise ValueError(f"{what!r}: expected a number of seconds after ':'") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what!r}: seconds must be finite and >= 0")
    return seconds


class FaultQueues:
    """The queued faults of every route; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, list[Fault]] = {route: [] for route in ROUTE_FAULTS}

    def add(self, route: str, faults: Iterable[Fault]) -> None:
        with self._lock:
            self._queues[route].extend(faults)

    def clear(self, route: str | None = None) -> None:
        with self._lock:
            for name, queue in self._queues.items():
                if route in (None, name):
                    queue.clear()

    def take(self, route: str, *, index: int | None = None) -> Fault | None:
        """The first queued fault of `route` that applies to this request, used up by one."""
        with self._lock:
            queue = self._queues.get(route, [])
            for position, fault in enumerate(queue):
                if not fault.applies_to(index=index):
                    continue
                if fault.times == 1:
                    del queue[position]
                elif fault.times is not None:
                    queue[position] = replace(fault, times=fault.times - 1)
                return fault
            return None


# ---- answers ---------------------------------------------------------------------------------

_ERRORS: Mapping[str, tuple[int, str, str]] = {
    "throttle": (429, "Throttling.RateQuota", MSG_RATE_QUOTA),
    "http500": (500, "InternalError", MSG_INTERNAL),
    "http503": (503, "ServiceUnavailable", MSG_UNAVAILABLE),
    "http504": (504, "RequestTimeOut", MSG_GATEWAY_TIMEOUT),
    "arrearage": (400, "Arrearage", TASK_ERROR_MESSAGES["Arrearage"]),
    "invalid_key": (401, "InvalidApiKey", "Invalid API-key provided."),
    "moderation": (400, "DataInspectionFailed", TASK_ERROR_MESSAGES["DataInspectionFailed"]),
}
MSG_LINK_EXPIRED = "Request has expired."


def reply_instead(fault: Fault, *, route: str, groups: Mapping[str, str]) -> Reply:
    """The answer of a fault that replaces the route's work."""
    if fault.name == "drop_before":
        return DROPPED
    if fault.name == "http502_plain":
        return Reply(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", content_type="text/html")
    if fault.name == "garbage":
        return Reply(200, b"this is not a PNG file\x00\x01\x02" * 8, content_type="image/png")
    if fault.name == "http403":
        return Reply.xml_error(403, "AccessDenied", MSG_LINK_EXPIRED)
    if fault.name == "http404":
        return Reply.xml_error(404, "NoSuchKey", MSG_NO_SUCH_KEY)
    if fault.name == "unknown":
        return Reply.json(200, {"output": {"task_id": groups.get("task_id", ""), "task_status": "UNKNOWN"}})
    if fault.name == "throttle" and route != "create":
        return Reply.error(429, "Throttling", MSG_THROTTLING)  # what the task API's own limit answers
    status, code, message = _ERRORS[fault.name]
    return Reply.error(status, code, message)


def reply_after(fault: Fault, reply: Reply) -> Reply:
    """The answer of a fault that lets the route do its work first (`Fault.after`)."""
    if fault.name == "drop_after":
        return DROPPED  # whatever the route did (e.g. created a task) stays done
    if fault.name.startswith("accept_then_"):
        status, code, message = _ERRORS["http" + fault.name.removeprefix("accept_then_")]
        return Reply.error(status, code, message, request_id=reply.request_id)
    if reply.status != 200 or reply.content_type != "image/png":
        return reply  # short / truncate spoil only a real image
    half = reply.body[: len(reply.body) // 2]
    if fault.name == "short":
        return Reply(200, half, content_type=reply.content_type)
    return Reply(200, half, content_type=reply.content_type, declared_length=len(reply.body))  # truncate


# ---- task outcomes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskPlan:
    """What `next_task_outcomes` asked of one task."""

    fail_code: str | None = None
    partial: bool = False
    failed_indices: frozenset[int] = field(default_factory=frozenset)  # partial:I,J:CODE
    image_code: str = "InternalError.Timeout"  # the code of each failed image
    unknown: bool = False
    unknown_once: bool = False
    all_images_fail: bool = False
    running_s: float | None = None

    def image_errors(self, n: int) -> list[tuple[str, str] | None]:
        """Per result index: None for a generated image, else its (code, message)."""
        if self.failed_indices:
            failed = self.failed_indices
        elif self.partial and n > 1:
            failed = frozenset(range(1, n))  # successes come first, as in the spec's examples (15.10)
        else:
            failed = frozenset()
        error = (self.image_code, error_message(self.image_code, per_image=True))
        return [error if i in failed else None for i in range(n)]


def parse_outcome(text: str) -> TaskPlan:
    plan: dict[str, Any] = {}
    for part in text.split("+"):
        name, _, arg = part.partition(":")
        if name == "ok" and not arg:
            continue  # the normal course, for lining up outcomes of later tasks
        if name == "fail" and arg:
            plan["fail_code"] = arg
        elif name == "running_s":
            plan["running_s"] = parse_seconds(arg, what=part)
        elif name == "partial" and arg:
            plan["failed_indices"], plan["image_code"] = _parse_partial(arg, what=part)
        elif name in ("partial", "unknown", "unknown_once", "all_images_fail") and not arg:
            plan[name] = True
        else:
            raise ValueError(f"unknown task outcome {part!r}; known: {', '.join(OUTCOMES)}")
    if plan.get("partial") and plan.get("failed_indices"):
        raise ValueError(f"{text!r}: give either partial or partial:INDICES:CODE")
    return TaskPlan(**plan)


def _parse_partial(arg: str, *, what: str) -> tuple[frozenset[int], str]:
    indices, sep, code = arg.partition(":")
    parts = indices.split(",")
    if not sep or not code or not all(p.isdigit() and int(p) < MAX_N for p in parts):
        raise ValueError(f"{what!r}: expected partial:INDICES:CODE with indices 0-{MAX_N - 1}, "
                         "e.g. partial:1,3:DataInspectionFailed")
    return frozenset(int(p) for p in parts), code


# The outcome an empty outcome queue gives: the normal course.
NORMAL = TaskPlan()
