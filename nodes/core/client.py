"""HTTP to DashScope: submit, query, cancel, list, download. Each call maps every failure once,
here, into the error family, and marks what is safe to repeat.

The money rule: a create request is repeated only when the service clearly did not accept it (an
error answer with an error body, such as throttling, or a connection that never opened). Any
failure after the request went out is a SubmitUncertainError: a paid task may exist."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3

from .backoff import Backoff
from .errors import ApiError, DownloadError, ProtocolError, SubmitUncertainError, TransientError, billed_advice
from .functions import MODEL
from .protocol import ServiceError, Submitted, TaskState, TaskSummary
from .quota import Quota
from .settings import LOOPBACK, Settings
from .ticker import Ticker

log = logging.getLogger(__name__)

CREATE_PATH = "/services/aigc/image2image/image-synthesis"
USER_AGENT = "wanx-imageedit-comfyui/0.1"

# The bundled emulator marks every answer with this header (nodes/emulator/http.py). Believed only
# from a loopback endpoint, so no remote gateway can make a billed run look free.
EMULATOR_HEADER = "X-Wanx-Emulator"
# Result files live on the service's OSS buckets (spec section 6); every documented host matches.
RESULT_HOST = re.compile(r"^dashscope-result-[a-z0-9-]+\.oss-[a-z0-9-]+\.aliyuncs\.com$")



@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 10.0
    create_read_s: float = 60.0
    query_read_s: float = 15.0
    download_read_s: float = 60.0
    cancel_s: float = 0.8  # cancel runs while the user waits for Cancel to take effect
    connect_retry_s: float = 0.5  # first back-off when the connection could not even open


CONNECT_RETRIES = 3
THROTTLE_GIVE_UP_S = 120.0  # the docs say throttling recovers "within about one minute"
DOWNLOAD_ATTEMPTS = 5
DOWNLOAD_BACKOFF = Backoff(first_s=0.5, cap_s=8.0)
# Signed result links can answer 403/404 for a moment (OSS propagation, clock skew): a few tries.
DOWNLOAD_GONE_ATTEMPTS = 3


class DashScopeClient:
    """One account's view of the service. Thread-safe: requests.Session is shared for GETs,
    and every create gets a fresh connection so a stale pooled socket can't make it ambiguous."""

    def __init__(self, settings: Settings, *, timeouts: Timeouts | None = None) -> None:
        self._settings = settings
        self._timeouts = timeouts or Timeouts()
        self._session = requests.Session()
        self._session.headers["User-Agent"] = USER_AGENT
        # Result downloads never carry the Authorization header: a separate session, no defaults.
        self._downloads = requests.Session()
        self._downloads.headers["User-Agent"] = USER_AGENT
        base = urlsplit(settings.base_url)
        self._base_host = base.netloc  # host:port, for messages
        self._base_hostname = base.hostname or ""  # for the result-host rule
        self._emulated = False

    def __repr__(self) -> str:
        return f"DashScopeClient(base_url={self._settings.base_url!r}, key={self._settings.key_hint!r})"

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def emulated(self) -> bool:
        """True once an answer came from the bundled emulator (its marker header, on a loopback endpoint)."""
        return self._emulated

    def _note(self, response: requests.Response) -> requests.Response:
        if response.headers.get(EMULATOR_HEADER) == "1" and self._base_hostname in LOOPBACK:
            self._emulated = True
        return response

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._settings.api_key}"}

    # --- create -------------------------------------------------------------------------------

    def submit(self, body: Mapping[str, Any], *, ticker: Ticker, quota: Quota) -> Submitted:
        """Create one task, paced by ``quota`` before every attempt. Repeats only attempts the
        service clearly refused (throttling) or never saw (no connection); any other failure after
        the request went out is a SubmitUncertainError carrying the send time, for reconciliation."""
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        connect_failures = 0
        throttled_since: float | None = None
        while True:
            quota.before_send(ticker)
            sent_at_s = time.time()
            try:
                response = self._post_create(payload)
            except requests.RequestException as exc:
                if not _never_sent(exc):
                    raise SubmitUncertainError(f"the create request was sent but no answer came back ({_brief(exc)})",
                                               sent_at_s=sent_at_s, slow=isinstance(exc, requests.Timeout)) from None
                connect_failures += 1
                if connect_failures > CONNECT_RETRIES:
                    raise ApiError(f"could not connect to {self._base_host} ({_brief(exc)})",
                                   advice="Check the network, proxy settings and DASHSCOPE_HTTP_BASE_URL.") from None
                ticker.wait(Backoff(self._timeouts.connect_retry_s, cap_s=8.0).delay_s(connect_failures))
                continue
            if response.status_code in (200, 201):
                quota.accepted()
                try:
                    return Submitted.from_json(response.json())
                except (ValueError, ProtocolError) as exc:
                    raise SubmitUncertainError(f"the service accepted the request but its answer is unreadable ({exc})",
                                               sent_at_s=sent_at_s) from None
            error = ServiceError.from_json(_json_or_none(response))
            if response.status_code >= 500:
                # A gateway timeout or a server error can follow a task the service already accepted,
                # with or without an error body: never resent blindly (the runner reconciles).
                said = f" ({error.code})" if error else ", with no service answer"
                raise SubmitUncertainError(f"the create request got HTTP {response.status_code}{said}",
                                           sent_at_s=sent_at_s, http_status=response.status_code,
                                           code=error.code if error else None,
                                           request_id=error.request_id if error else None)
            if error is None:
                raise ApiError(f"the service refused the request with HTTP {response.status_code}",
                               http_status=response.status_code)
            if response.status_code == 429 and error.code.startswith("Throttling") \
                    and error.code != "Throttling.AllocationQuota":
                now = ticker.now()
                throttled_since = now if throttled_since is None else throttled_since
                if now - throttled_since > THROTTLE_GIVE_UP_S:
                    raise _api_error("task submission was throttled for over two minutes", error, response.status_code)
                log.info("submission throttled (%s); backing off", error.code)
                quota.throttled(ticker)
                continue
            raise _api_error("the service refused the task", error, response.status_code)

    def _post_create(self, payload: bytes) -> requests.Response:
        # A fresh connection per create: a stale pooled socket must never make a create ambiguous.
        headers = {**self._auth(), "Content-Type": "application/json", "X-DashScope-Async": "enable"}
        with requests.Session() as fresh:
            fresh.headers["User-Agent"] = USER_AGENT
            return self._note(fresh.post(self._settings.base_url + CREATE_PATH, data=payload, headers=headers,
                                         timeout=(self._timeouts.connect_s, self._timeouts.create_read_s)))

    # --- task API -----------------------------------------------------------------------------

    def query(self, task_id: str) -> TaskState:
        """One GET /tasks/{id}. Raises TransientError for what a retry may fix."""
        response = self._get(f"/tasks/{task_id}", timeout_s=self._timeouts.query_read_s, what="checking the task",
                             task_id=task_id)
        try:
            return TaskState.from_json(response.json())
        except ValueError:
            raise TransientError("the task status answer was not JSON", task_id=task_id) from None

    def list_tasks(self, *, status: str | None = None, page_size: int = 20) -> list[TaskSummary]:
        """GET /tasks for this model over the last 24 h (a free call: also the connection test)."""
        params = {"model_name": MODEL, "page_no": "1", "page_size": str(page_size)}
        if status:
            params["status"] = status
        response = self._get("/tasks", timeout_s=self._timeouts.query_read_s, what="listing tasks", params=params)
        try:
            return TaskSummary.list_from_json(response.json())
        except ValueError:
            raise TransientError("the task list answer was not JSON") from None

    def cancel(self, task_id: str) -> bool:
        """Cancel a task. True: it was PENDING and is now CANCELED (free). False: it already
        runs or ended, so it may be billed. Raises ApiError when the call itself failed."""
        try:
            response = self._session.post(
                f"{self._settings.base_url}/tasks/{task_id}/cancel", headers=self._auth(),
                timeout=self._timeouts.cancel_s,
            )
        except requests.RequestException as exc:
            raise ApiError(f"could not ask the service to cancel the task ({_brief(exc)})", task_id=task_id) from None
        if response.status_code == 200:
            return True
        error = ServiceError.from_json(_json_or_none(response))
        if error is not None and error.code == "UnsupportedOperation":
            return False
        raise _api_error("the service did not cancel the task", error, response.status_code, task_id=task_id)

    def _get(self, path: str, *, timeout_s: float, what: str, task_id: str | None = None,
             params: Mapping[str, str] | None = None) -> requests.Response:
        try:
            response = self._session.get(
                self._settings.base_url + path, headers=self._auth(), params=params,
                timeout=(self._timeouts.connect_s, timeout_s),
            )
        except requests.RequestException as exc:
            raise TransientError(f"no answer while {what} ({_brief(exc)})", task_id=task_id) from None
        self._note(response)
        if response.status_code == 200:
            return response
        error = ServiceError.from_json(_json_or_none(response))
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientError(f"HTTP {response.status_code} while {what}", code=error.code if error else None,
                                 request_id=error.request_id if error else None, task_id=task_id,
                                 http_status=response.status_code)
        raise _api_error(f"the service refused {what}", error, response.status_code, task_id=task_id)

    # --- results ------------------------------------------------------------------------------

    def check_result_url(self, url: str, *, task_id: str) -> None:
        """Results are fetched only from the service's result hosts over https, or from the
        configured endpoint's own host (the emulator, a gateway)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        allowed = (parts.scheme == "https" and bool(RESULT_HOST.match(host))) or (
            parts.scheme in ("http", "https") and _same_host(host, self._base_hostname)
        )
        if not allowed:
            raise DownloadError(
                f"refusing to download a result from an unexpected host {parts.scheme}://{parts.netloc}",
                task_id=task_id,
                final=True,
                advice="It was generated and billed, but this pack downloads only from the service's result hosts "
                f"and your endpoint's host. It stays on the service for 24 hours: {url}",
            )

    def download(self, url: str, *, task_id: str, ticker: Ticker, decode: Callable[[bytes], Any]) -> Any:
        """Fetch one result and decode it. Timeouts, resets, 5xx, 429 and undecodable bytes are tried
        DOWNLOAD_ATTEMPTS times; 403/404/410 (an expired or not yet visible link) DOWNLOAD_GONE_ATTEMPTS
        times. Raises DownloadError; the image was billed, and `fetch` gets fresh links for it."""
        self.check_result_url(url, task_id=task_id)
        last = ""
        gone = 0
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            try:
                response = self._downloads.get(url, timeout=(self._timeouts.connect_s, self._timeouts.download_read_s))
                if response.status_code == 200:
                    return decode(response.content)
                last = f"HTTP {response.status_code}"
                if response.status_code in (403, 404, 410):
                    gone += 1
                    if gone >= DOWNLOAD_GONE_ATTEMPTS:
                        break
            except requests.RequestException as exc:
                last = _brief(exc)
            except DownloadError as exc:  # the bytes did not decode: a truncated transfer is worth another try
                if exc.final:
                    raise
                last = exc.what
            if attempt < DOWNLOAD_ATTEMPTS:
                ticker.wait(DOWNLOAD_BACKOFF.delay_s(attempt))
        raise DownloadError(f"could not download the result image {url} ({last})", task_id=task_id,
                            advice=billed_advice(task_id))


def _same_host(host: str, base_host: str) -> bool:
    """The endpoint's own host, on any port (a gateway or emulator may serve files separately);
    the loopback names all mean this machine."""
    return host == base_host or (host in LOOPBACK and base_host in LOOPBACK)


def _never_sent(exc: requests.RequestException) -> bool:
    """True only when the connection never opened, so the service cannot have seen the request."""
    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.ProxyError):
        return True  # a proxy that refused or failed the tunnel never passed the request on
    if isinstance(exc, requests.ConnectionError):
        reason = exc.args[0] if exc.args else None
        inner = getattr(reason, "reason", reason)
        return isinstance(inner, urllib3.exceptions.NewConnectionError | urllib3.exceptions.NameResolutionError)
    return False


def _api_error(what: str, error: ServiceError | None, http_status: int, *, task_id: str | None = None) -> ApiError:
    if error is None:
        return ApiError(f"{what} (HTTP {http_status})", http_status=http_status, task_id=task_id)
    detail = f": {error.message}" if error.message and error.message != error.code else ""
    return ApiError(f"{what}{detail}", code=error.code, request_id=error.request_id, task_id=task_id,
                    http_status=http_status)


def _json_or_none(response: requests.Response) -> object:
    if "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _brief(exc: BaseException) -> str:
    """A short, key-free description of a transport failure."""
    name = type(exc).__name__
    if isinstance(exc, requests.Timeout):
        return f"{name}: timed out"
    return name
