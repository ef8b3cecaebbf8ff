"""The service's answers: the route table, authentication, rate limits, the request log, and one
handler per route (create, query, list, cancel, result download, admin). Faults (faults.py) are
applied here, around the handlers.

The API key is never stored or logged: configured keys are kept only as SHA-256 digests and each
logged request records only whether a key was present and whether it was valid."""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import math
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .faults import MSG_LINK_EXPIRED, Fault, FaultQueues, parse_fault, parse_outcome, reply_after, reply_instead
from .http import MAX_BODY_BYTES, Incoming, Reply
from .rendering import Renderer
from .rules import (
    ACCOUNT_ID,
    API_PREFIX,
    MODEL,
    MSG_BAD_KEY,
    MSG_CANCEL,
    MSG_NO_KEY,
    MSG_NO_SUCH_KEY,
    MSG_NOT_FOUND,
    MSG_NOT_JSON_OBJECT,
    MSG_RATE_QUOTA,
    MSG_SYNC,
    MSG_THROTTLING,
    MSG_URL_ERROR,
    REGION,
    ApiError,
    Job,
    beijing_time,
    check_envelope,
    invalid,
    list_window,
    parse_json_body,
    positive_int,
    requested_n,
    summarize_data_uris,
    validate_job,
)
from .state import ServiceState, Status, Task

# Bounded so a long-running `serve_forever` does not grow without limit.
_MAX_LOGGED_REQUESTS = 10_000
_MSG_UNSIGNED = "You have no right to access this object because of bucket acl."
_MSG_BAD_SIGNATURE = "The request signature we calculated does not match the signature you provided."


@dataclass(frozen=True)
class LoggedRequest:
    """One request as the emulator saw it. Never holds the API key."""

    method: str
    path: str  # without the query string
    query: dict[str, str]
    route: str  # create, query, list, cancel, download, admin, unknown
    status: int  # HTTP status answered; 0 when the connection was dropped without an answer
    body: Any  # parsed JSON (image data URIs summarised) or None
    headers: dict[str, str]  # only X-DashScope-Async, Content-Type, User-Agent
    auth_present: bool
    auth_valid: bool
    at_s: float  # emulator clock, epoch seconds, when the answer was decided
    handling_s: float  # wall seconds the emulator spent deciding the answer (not writing it)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method, "path": self.path, "query": self.query, "route": self.route,
            "status": self.status, "body": self.body, "headers": self.headers,
            "auth_present": self.auth_present, "auth_valid": self.auth_valid, "at_s": self.at_s,
            "handling_s": self.handling_s,
        }


RequestObserver = Callable[[LoggedRequest], None]
_RouteFn = Callable[..., Reply]


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class Routes:
    """Turns an Incoming request into a Reply; `handle` is what the HTTP server calls."""

    def __init__(self, *, state: ServiceState, faults: FaultQueues, key_ids: Mapping[str, str],
                 sync_validation: bool, render: Renderer, link_lifetime_s: float, origin: Callable[[], str],
                 on_request: RequestObserver | None) -> None:
        self._state = state
        self._faults = faults
        self._key_ids = dict(key_ids)
        self._sync_validation = sync_validation
        self._render = render
        self._link_lifetime_s = link_lifetime_s
        self._origin = origin  # "http://host:port", known once the server listens
        self._on_request = on_request
        self._secret = secrets.token_bytes(16)  # signs result links; dies with the emulator
        self._log: collections.deque[LoggedRequest] = collections.deque(maxlen=_MAX_LOGGED_REQUESTS)
        self._table: list[tuple[str, re.Pattern[str], str, _RouteFn]] = [
            ("POST", re.compile(rf"{API_PREFIX}/services/aigc/image2image/image-synthesis/?"), "create", self._create),
            ("POST", re.compile(rf"{API_PREFIX}/services/aigc/text2image/image-synthesis/?"), "unknown",
             self._text2image),
            ("GET", re.compile(rf"{API_PREFIX}/tasks/?"), "list", self._list),
            ("GET", re.compile(rf"{API_PREFIX}/tasks/(?P<task_id>[^/]+)"), "query", self._query),
            ("POST", re.compile(rf"{API_PREFIX}/tasks/(?P<task_id>[^/]+)/cancel"), "cancel", self._cancel),
            ("GET", re.compile(r"/results/(?P<task_id>[^/]+)/(?P<index>\d+)\.png"), "download", self._download),
            ("GET", re.compile(r"/_emulator/state"), "admin", self._admin_state),
            ("POST", re.compile(r"/_emulator/faults"), "admin", self._admin_faults),
        ]

    @property
    def requests(self) -> list[LoggedRequest]:
        with self._state.lock:
            return list(self._log)

    # ---- dispatch -----------------------------------------------------------------------------

    def handle(self, req: Incoming) -> Reply:
        started = time.perf_counter()
        route, handler, groups = self._resolve(req)
        if req.body_too_large:
            reply = Reply.error(413, "RequestTooLarge", f"The request body must be at most {MAX_BODY_BYTES} bytes.")
        else:
            index = int(groups["index"]) if "index" in groups else None
            reply = self._run(handler, req, groups, self._faults.take(route, index=index), route=route)
        if reply.delivers is not None:
            # Counted before it is written, so a client holding the image sees it counted; taken
            # back if the write fails. A faulted answer (short, truncate) delivers nothing.
            result = reply.delivers
            self._count_download(result, delta=1)
            reply = replace(reply, on_unsent=lambda: self._count_download(result, delta=-1))
        self._record(req, route=route, status=reply.status, handling_s=time.perf_counter() - started)
        return reply

    def _resolve(self, req: Incoming) -> tuple[str, _RouteFn, dict[str, str]]:
        for method, pattern, route, handler in self._table:
            match = pattern.fullmatch(req.path)
            if match and method == req.method:
                return route, handler, match.groupdict()
        return "unknown", self._not_found, {}

    def _run(self, handler: _RouteFn, req: Incoming, groups: dict[str, str], fault: Fault | None, *,
             route: str) -> Reply:
        if fault is not None and fault.name == "slow":
            time.sleep(fault.seconds)
        elif fault is not None and not fault.after:
            return reply_instead(fault, route=route, groups=groups)
        try:
            reply = handler(req, **groups)
        except ApiError as err:
            reply = Reply.error(err.status, err.code, err.message)
        return reply_after(fault, reply) if fault is not None and fault.after else reply

    def _record(self, req: Incoming, *, route: str, status: int, handling_s: float) -> None:
        body = None
        if req.body:
            try:
                body = summarize_data_uris(json.loads(req.body.decode("utf-8")))
            except (UnicodeDecodeError, ValueError):
                body = None
        kept = {name: req.headers[name.lower()] for name in ("X-DashScope-Async", "Content-Type", "User-Agent")
                if name.lower() in req.headers}
        present, key_id = self._key_id(req)
        logged = LoggedRequest(
            method=req.method, path=req.path, query=dict(req.query), route=route, status=status, body=body,
            headers=kept, auth_present=present, auth_valid=key_id is not None, at_s=self._state.now_s(),
            handling_s=handling_s,
        )
        with self._state.lock:
            self._log.append(logged)
        if self._on_request is not None:
            self._on_request(logged)  # before the answer is written: a client that has it was observed

    # ---- checks shared by routes --------------------------------------------------------------

    def _key_id(self, req: Incoming) -> tuple[bool, str | None]:
        """(whether a key was sent, the id of the configured key it matches)."""
        header = req.headers.get("authorization", "").strip()
        if not header:
            return False, None
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return True, None
        return True, self._key_ids.get(key_digest(key.strip()))

    def _authorize(self, req: Incoming) -> str:
        present, key_id = self._key_id(req)
        if not present:
            raise ApiError(401, "InvalidApiKey", MSG_NO_KEY)
        if key_id is None:
            raise ApiError(401, "InvalidApiKey", MSG_BAD_KEY)
        return key_id

    @staticmethod
    def _require_async(req: Incoming) -> None:
        if req.headers.get("x-dashscope-async", "").strip().lower() != "enable":
            raise ApiError(403, "AccessDenied", MSG_SYNC)

    def _limit_task_api(self, route: str) -> None:
        with self._state.lock:
            if not self._state.task_api_windows[route].admit(self._state.now_s()):
                raise ApiError(429, "Throttling", MSG_THROTTLING)

    # ---- create -------------------------------------------------------------------------------

    def _create(self, req: Incoming) -> Reply:
        key_id = self._authorize(req)
        self._require_async(req)
        with self._state.lock:
            if not self._state.submit_window.admit(self._state.now_s()):
                raise ApiError(429, "Throttling.RateQuota", MSG_RATE_QUOTA)
        body = parse_json_body(req.body)
        check_envelope(body)
        oss_resolve = req.headers.get("x-dashscope-ossresourceresolve", "").strip().lower() == "enable"
        job: Job | None = None
        error: ApiError | None = None
        try:
            job = validate_job(body, oss_resolve=oss_resolve)
        except ApiError as err:
            if self._sync_validation:
                raise
            error = err  # mimic post-queue validation: accept now, fail the task later
        request_id = str(uuid.uuid4())
        with self._state.lock:
            task = self._state.new_task(job=job, error=error, n=job.n if job else requested_n(body),
                                        request_id=request_id, api_key_id=key_id)
        return Reply.json(200, {"request_id": request_id,
                                "output": {"task_status": Status.PENDING, "task_id": task.task_id}})

    def _text2image(self, req: Incoming) -> Reply:
        self._authorize(req)
        self._require_async(req)
        body = parse_json_body(req.body)
        check_envelope(body)  # another model gets "Model not exist."; this one is on the wrong path
        raise invalid(MSG_URL_ERROR)

    # ---- query, cancel, list ------------------------------------------------------------------

    def _query(self, req: Incoming, *, task_id: str) -> Reply:
        self._authorize(req)
        self._limit_task_api("query")
        with self._state.lock:
            now_s = self._state.catch_up()
            task = self._state.tasks.get(task_id)
            hidden = task is None or task.plan.unknown or task.queries_hidden > 0
            if task is not None and task.queries_hidden > 0:
                task.queries_hidden -= 1
            if hidden:
                return Reply.json(200, {"output": {"task_id": task_id, "task_status": Status.UNKNOWN}})
            assert task is not None
            return Reply.json(200, self._query_payload(task, now_s=now_s))

    def _query_payload(self, task: Task, *, now_s: float) -> dict[str, Any]:
        output: dict[str, Any] = {"task_id": task.task_id, "task_status": task.status,
                                  "submit_time": beijing_time(task.submit_s)}
        if task.started_s is not None:
            output["scheduled_time"] = beijing_time(task.started_s)
        if task.ended_s is not None:
            output["end_time"] = beijing_time(task.ended_s)
        payload: dict[str, Any] = {"output": output}
        if task.status == Status.CANCELED:
            return payload
        ok = task.ok_indices if task.status == Status.SUCCEEDED else []
        failed = task.n - len(ok) if task.status in (Status.SUCCEEDED, Status.FAILED) else 0
        if task.status == Status.SUCCEEDED:
            output["results"] = [{"url": self._result_url(task.task_id, i, now_s=now_s)} if err is None
                                 else {"code": err[0], "message": err[1]} for i, err in enumerate(task.image_errors)]
            payload["usage"] = {"image_count": len(ok)}  # only successes are billed
        elif task.status == Status.FAILED:
            output["code"], output["message"] = task.code, task.message
        output["task_metrics"] = {"TOTAL": task.n, "SUCCEEDED": len(ok), "FAILED": failed}
        return payload

    def _cancel(self, req: Incoming, *, task_id: str) -> Reply:
        self._authorize(req)
        self._limit_task_api("cancel")
        with self._state.lock:
            now_s = self._state.catch_up()
            task = self._state.tasks.get(task_id)
            if task is None or task.status != Status.PENDING:
                raise ApiError(400, "UnsupportedOperation", MSG_CANCEL)
            self._state.cancel(task, now_s=now_s)
        return Reply.json(200, {})

    def _list(self, req: Incoming) -> Reply:
        self._authorize(req)
        self._limit_task_api("list")
        q = req.query
        page_no = positive_int(q.get("page_no"), name="page_no", default=1)
        page_size = positive_int(q.get("page_size"), name="page_size", default=10)
        with self._state.lock:
            now_s = self._state.catch_up()
            start_s, end_s = list_window(q, now_s=now_s)
            items = [_list_item(t) for t in sorted(self._state.tasks.values(), key=lambda t: -t.submit_s)
                     if start_s <= t.submit_s <= end_s]
        for param in ("task_id", "model_name", "status", "api_key_id", "region"):
            if q.get(param):
                items = [item for item in items if str(item[param]).lower() == q[param].lower()]
        page = items[(page_no - 1) * page_size: page_no * page_size]
        return Reply.json(200, {"total": len(items), "total_page": math.ceil(len(items) / page_size),
                                "page_no": page_no, "page_size": page_size, "data": page})

    # ---- result files, behind signed links like OSS -------------------------------------------

    def _signature(self, task_id: str, index: int, expires: int) -> str:
        digest = hmac.new(self._secret, f"{task_id}/{index}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode("ascii")  # 18 bytes: 24 characters, no padding

    def _result_url(self, task_id: str, index: int, *, now_s: float) -> str:
        # Rounded up: a link never dies before the promised lifetime.
        expires = math.ceil(now_s + self._link_lifetime_s)
        signature = self._signature(task_id, index, expires)
        return f"{self._origin()}/results/{task_id}/{index}.png?Expires={expires}&Signature={signature}"

    def _link_refusal(self, query: Mapping[str, str], *, task_id: str, index: int, now_s: float) -> Reply | None:
        expires, signature = query.get("Expires"), query.get("Signature")
        if expires is None or signature is None:
            return Reply.xml_error(403, "AccessDenied", _MSG_UNSIGNED)
        if not expires.isdigit() or not hmac.compare_digest(signature, self._signature(task_id, index, int(expires))):
            return Reply.xml_error(403, "SignatureDoesNotMatch", _MSG_BAD_SIGNATURE)
        if now_s >= int(expires):
            return Reply.xml_error(403, "AccessDenied", MSG_LINK_EXPIRED)
        return None

    def _download(self, req: Incoming, *, task_id: str, index: str) -> Reply:
        """No Authorization needed: the link is signed. A result that does not exist (never
        generated, or forgotten after 24 h) answers 404 before its link is checked."""
        i = int(index)
        with self._state.lock:
            now_s = self._state.catch_up()
            task = self._state.tasks.get(task_id)
            if task is None or task.status != Status.SUCCEEDED or i not in task.ok_indices or task.job is None:
                return Reply.xml_error(404, "NoSuchKey", MSG_NO_SUCH_KEY)
            refusal = self._link_refusal(req.query, task_id=task_id, index=i, now_s=now_s)
            if refusal is not None:
                return refusal
            job, cached = task.job, task.png_cache.get(i)
        if cached is None:
            cached = self._render(job, index=i)  # outside the lock: rendering can take a while
            with self._state.lock:
                task.png_cache.setdefault(i, cached)
        return Reply(200, cached, content_type="image/png", delivers=(task_id, i))

    def _count_download(self, result: tuple[str, int], *, delta: int) -> None:
        with self._state.lock:
            counts = self._state.download_counts
            counts[result] += delta
            if counts[result] <= 0:
                del counts[result]

    # ---- admin and the rest -------------------------------------------------------------------

    def _admin_state(self, req: Incoming) -> Reply:
        with self._state.lock:
            self._state.catch_up()
            tasks = [{"task_id": t.task_id, "status": t.status, "reported_status": t.reported_status}
                     for t in sorted(self._state.tasks.values(), key=lambda t: t.seq)]
            state = {"created_count": self._state.created_count,
                     "billed_image_count": self._state.billed_image_count,
                     "downloaded_count": sum(self._state.download_counts.values()),
                     "tasks": tasks, "requests": [r.to_json() for r in self._log]}
        return Reply.json(200, state)

    def _admin_faults(self, req: Incoming) -> Reply:
        body = parse_json_body(req.body)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest.IllegalInput", MSG_NOT_JSON_OBJECT)
        faults, outcomes = body.get("faults", []), body.get("outcomes", [])
        if not isinstance(faults, list) or not isinstance(outcomes, list):
            raise invalid('"faults" and "outcomes" must be lists of strings.')
        route = str(body.get("route", ""))
        try:
            parsed_faults = [parse_fault(route, str(f)) for f in faults]
            plans = [parse_outcome(str(o)) for o in outcomes]
        except ValueError as err:
            raise invalid(str(err)) from None
        if parsed_faults:
            self._faults.add(route, parsed_faults)
        with self._state.lock:
            self._state.add_outcomes(plans)
        return Reply.json(200, {"queued": {"route": body.get("route"), "faults": faults, "outcomes": outcomes}})

    def _not_found(self, req: Incoming) -> Reply:
        return Reply.error(404, "NotFound", f"{MSG_NOT_FOUND} ({req.method} {req.path})")


def _list_item(task: Task) -> dict[str, Any]:
    """One row of GET /tasks (spec 8.1): every task, answered or not, names the request_id of its
    submit call and its gmt_create (epoch milliseconds)."""
    item: dict[str, Any] = {
        "api_key_id": task.api_key_id, "caller_parent_id": ACCOUNT_ID, "caller_uid": ACCOUNT_ID,
        "gmt_create": int(task.submit_s * 1000), "model_name": MODEL, "region": REGION,
        "request_id": task.request_id, "status": task.reported_status, "task_id": task.task_id,
        "user_api_unique_key": f"apikey:v1:aigc:image2image:image-synthesis:{MODEL}",
    }
    if task.started_s is not None:
        item["start_time"] = int(task.started_s * 1000)
    if task.ended_s is not None:
        item["end_time"] = int(task.ended_s * 1000)
    return item
