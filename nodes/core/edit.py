"""One edit of a batch of images: the code path shared by the nodes, the CLI and the demo.

``prepare`` checks and encodes everything before anything billable is sent; ``run`` sends one task
per image, concurrently within the account's quota, and keeps every paid result even when other
images fail; ``EditOutcome`` turns the results into one IMAGE batch and a JSON report."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import images
from .cache import Hit, digest
from .client import DashScopeClient
from .errors import ApiError, CanceledError, SubmitUncertainError, TaskFailedError, WanxError
from .functions import (
    CUSTOM_STYLE, PRICE_PER_IMAGE, EditFunction, ImageSize, build_body, build_parameters, build_prompt, output_size,
)
from .polling import DEFAULT_POLICY, PollPolicy, wait_for_task
from .protocol import TaskState, TaskStatus
from .journal import Entry
from .quota import Quota
from .store import Store
from .ticker import Interrupted, Ticker

log = logging.getLogger(__name__)

# Refusals that every other image of the batch would get too: stop sending the rest.
ACCOUNT_LEVEL_HTTP = (401, 403)
ACCOUNT_LEVEL_CODES = ("Arrearage", "Throttling.AllocationQuota", "CommodityNotPurchased")
CANCEL_GRACE_S = 0.6  # workers get this long to cancel their own tasks; the user waits at most ~1 s


@dataclass(frozen=True)
class Item:
    image: images.Encoded
    mask: images.Encoded | None


@dataclass(frozen=True)
class EditRequest:
    fn: EditFunction
    prompt: str
    parameters: Mapping[str, object]
    items: tuple[Item, ...]

    def body(self, item: Item) -> dict[str, object]:
        return build_body(self.fn, prompt=self.prompt, base_image_url=item.image.data_uri,
                          mask_image_url=item.mask.data_uri if item.mask else None, parameters=self.parameters)

    def expected_size(self, item: Item) -> ImageSize:
        return output_size(self.fn, item.image.sent_size, self.parameters)

    def digest(self, item: Item) -> str:
        return digest(function=self.fn.api_name, prompt=self.prompt, parameters=self.parameters,
                      image_sha256=item.image.sha256, mask_sha256=item.mask.sha256 if item.mask else None)

    @property
    def n(self) -> int:
        """Images asked for per input image: what each task may bill."""
        return int(self.parameters.get("n", 1))  # type: ignore[call-overload]

    @property
    def cacheable(self) -> bool:
        """Without a seed the user asks for a new random result: never served from the cache."""
        return self.parameters.get("seed") is not None


def prepare(
    fn: EditFunction, *, image: torch.Tensor, mask: torch.Tensor | None, prompt: str,
    style: str = CUSTOM_STYLE, values: Mapping[str, object] | None = None,
) -> EditRequest:
    """Validate and encode a whole edit. Raises InputError naming the rule; sends nothing."""
    text = build_prompt(fn, prompt=prompt, style=style)
    parameters = build_parameters(fn, values or {})
    if fn.needs_mask and mask is None:
        build_body(fn, prompt=text, base_image_url="", mask_image_url=None, parameters=parameters)  # raises
    items = []
    for image_hwc, mask_hw in images.pair_batches(image, mask if fn.needs_mask else None):
        encoded = images.encode_image(image_hwc)
        encoded_mask = images.encode_mask(mask_hw, sent_size=encoded.sent_size) if mask_hw is not None else None
        items.append(Item(image=encoded, mask=encoded_mask))
    request = EditRequest(fn=fn, prompt=text, parameters=parameters, items=tuple(items))
    request.body(request.items[0])  # the body rules (mask present iff needed) hold for every item
    return request


@dataclass(frozen=True)
class Progress:
    """A snapshot of the whole batch, delivered on the caller's thread at every change and
    at least once a second (so elapsed time ticks)."""

    elapsed_s: float
    states: tuple[str, ...]  # per image: "queued", "submitting", a TaskStatus value, "done", "failed"
    task_ids: tuple[str | None, ...]

    @property
    def total(self) -> int:
        return len(self.states)

    @property
    def finished(self) -> int:
        return sum(state in FINAL_STATES for state in self.states)

    def text(self) -> str:
        """One line per image: what the node shows."""
        lines = [f"{self.finished}/{self.total} done, {self.elapsed_s:.0f} s"]
        for i, (state, task_id) in enumerate(zip(self.states, self.task_ids, strict=True)):
            lines.append(f"image {i + 1}: {state}" + (f" (task {task_id})" if task_id else ""))
        return "\n".join(lines)


FINAL_STATES = frozenset({"done", "failed", "CANCELED"})
HEARTBEAT_S = 1.0


@dataclass
class ItemResult:
    index: int
    sent_size: ImageSize
    original_size: ImageSize
    expected_size: ImageSize
    task_id: str | None = None
    request_id: str | None = None
    status: str = "not sent"
    images: list[np.ndarray] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    image_count: int = 0
    cached: bool = False  # served from the result cache: nothing was sent or billed
    files: list[bytes] = field(default_factory=list, repr=False)  # as the service returned them
    error: WanxError | None = None
    cancel_note: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "index": self.index, "task_id": self.task_id, "request_id": self.request_id, "status": self.status,
            "original_size": str(self.original_size), "sent_size": str(self.sent_size),
            "expected_size": str(self.expected_size), "images": len(self.images), "image_count": self.image_count,
            "cached": self.cached,
            "urls": self.urls, "failures": self.failures,
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
        }
        if self.warnings:
            entry["warnings"] = self.warnings
        if self.error is not None:
            entry["error"] = str(self.error)
        return entry


@dataclass
class EditOutcome:
    request: EditRequest
    items: list[ItemResult]
    elapsed_s: float

    @property
    def image_count(self) -> int:
        """Images billed by the service (usage.image_count summed)."""
        return sum(item.image_count for item in self.items)

    def images_tensor(self) -> torch.Tensor:
        """Every result as one float32 [n,H,W,3] batch, grouped per input image, in input order."""
        return images.stack_images([array for item in self.items for array in item.images])

    def report(self, *, currency: str = "CNY") -> dict[str, Any]:
        unit_price = PRICE_PER_IMAGE[currency]
        return {
            "model": "wanx2.1-imageedit", "function": self.request.fn.api_name, "prompt": self.request.prompt,
            "parameters": dict(self.request.parameters), "images_in": len(self.items),
            "images_out": sum(len(item.images) for item in self.items),
            "usage": {"image_count": self.image_count},
            "cost": {"currency": currency, "unit_price": unit_price, "billed": round(self.image_count * unit_price, 6)},
            "elapsed_s": round(self.elapsed_s, 3),
            "items": [item.report() for item in self.items],
        }


def run(
    request: EditRequest, *, client: DashScopeClient, quota: Quota, policy: PollPolicy = DEFAULT_POLICY,
    should_cancel: Callable[[], bool] = lambda: False, on_progress: Callable[[Progress], None] = lambda _: None,
    tick_s: float = 0.1, store: Store | None = None, reuse: bool = True,
) -> EditOutcome:
    """Run one task per image and return every result that arrived. Raises only when no image
    at all came back (TaskFailedError or the call's error), or when the user cancels.

    With a ``store``, every accepted task is journaled before it is polled, identical seeded
    edits are served from the result cache (unless ``reuse`` is off), and the daily budget is
    checked before anything is sent."""
    ticker = Ticker()
    started = time.monotonic()
    stop_sending = threading.Event()
    results = [
        ItemResult(index=i, sent_size=item.image.sent_size, original_size=item.image.original_size,
                   expected_size=request.expected_size(item))
        for i, item in enumerate(request.items)
    ]
    if store is not None and store.cache is not None and reuse and request.cacheable:
        for item, result in zip(request.items, results, strict=True):
            _serve_from_cache(store, request.digest(item), result)
    to_send = [(item, result) for item, result in zip(request.items, results, strict=True) if not result.cached]
    if store is not None:
        store.check_budget(images=len(to_send) * request.n)

    def work(item: Item, result: ItemResult) -> None:
        try:
            _run_item(request, item, result, client=client, quota=quota, policy=policy, ticker=ticker,
                      stop_sending=stop_sending, store=store)
        except Interrupted:
            _cancel_own_task(client, result)
            if store is not None and result.task_id and result.status == TaskStatus.CANCELED.value:
                store.journal.update(result.task_id, status=result.status, image_count=0, finished_at=time.time())
        except WanxError as exc:
            result.error = exc
            result.status = "failed"
            if isinstance(exc, ApiError) and (exc.http_status in ACCOUNT_LEVEL_HTTP or exc.code in ACCOUNT_LEVEL_CODES):
                stop_sending.set()
        except Exception as exc:  # a bug must not lose the other images' paid results
            log.exception("image %d of the batch failed unexpectedly", result.index)
            result.error = WanxError(f"unexpected {type(exc).__name__}: {exc}", task_id=result.task_id)
            result.status = "failed"

    def snapshot() -> Progress:
        return Progress(elapsed_s=time.monotonic() - started, states=tuple(r.status for r in results),
                        task_ids=tuple(r.task_id for r in results))

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(to_send)), thread_name_prefix="wanx-task")
    futures = [pool.submit(work, item, result) for item, result in to_send]
    shown: Progress | None = None
    try:
        while True:
            current = snapshot()
            if shown is None or current.states != shown.states or current.task_ids != shown.task_ids \
                    or current.elapsed_s - shown.elapsed_s >= HEARTBEAT_S:
                on_progress(current)
                shown = current
            if should_cancel():
                raise Interrupted
            if all(f.done() for f in futures):
                break
            concurrent.futures.wait(futures, timeout=tick_s)
        on_progress(snapshot())
    except BaseException as exc:
        # Whatever stops us (the user's Cancel, or the host raising from a callback), pending
        # tasks are cancelled on the service before we let go.
        ticker.cancel.set()
        concurrent.futures.wait(futures, timeout=CANCEL_GRACE_S)
        canceled = _canceled_error(results)
        if isinstance(exc, Interrupted):
            raise canceled from None
        log.warning("%s", canceled)
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    outcome = EditOutcome(request=request, items=results, elapsed_s=time.monotonic() - started)
    if not any(item.images for item in results):
        raise _nothing_came_back(results)
    return outcome


def _run_item(
    request: EditRequest, item: Item, result: ItemResult, *, client: DashScopeClient, quota: Quota,
    policy: PollPolicy, ticker: Ticker, stop_sending: threading.Event, store: Store | None,
) -> None:
    t0 = time.monotonic()
    result.status = "queued"
    with quota.in_flight(ticker):
        if stop_sending.is_set():
            raise WanxError("not sent: another image of this batch hit an account-level error")
        result.timings_s["queued"] = time.monotonic() - t0
        result.status = "submitting"
        t1 = time.monotonic()
        sent_at = time.time()
        try:
            submitted = client.submit(request.body(item), ticker=ticker, quota=quota)
        except SubmitUncertainError as exc:
            raise _name_recent_tasks(exc, client, since_s=sent_at) from None
        result.task_id, result.request_id, result.status = submitted.task_id, submitted.request_id, submitted.status.value
        log.info("image %d: task %s accepted", result.index, submitted.task_id)
        key = request.digest(item)
        if store is not None:  # before the first poll: from now on a crash cannot lose this paid task
            store.journal.record_submitted(Entry(
                task_id=submitted.task_id, function=request.fn.api_name, digest=key, submitted_at=time.time(),
                n=request.n, request_id=submitted.request_id))

        def on_state(state: TaskState) -> None:
            result.status = state.status.value

        state = wait_for_task(client, submitted.task_id, ticker=ticker, timeout_s=client.settings.task_timeout_s,
                              outage_s=client.settings.poll_outage_s, policy=policy, on_state=on_state, quota=quota)
        result.timings_s["task"] = time.monotonic() - t1
    try:
        _collect(state, result, client=client, ticker=ticker, expected=request.expected_size(item))
    finally:
        if store is not None:
            _remember(store, key if request.cacheable else None, state, result)


def _collect(state: TaskState, result: ItemResult, *, client: DashScopeClient, ticker: Ticker,
             expected: ImageSize | None) -> None:
    result.image_count = state.image_count or 0
    if state.status is not TaskStatus.SUCCEEDED:
        code = "UNKNOWN" if state.status is TaskStatus.UNKNOWN else state.code
        what = {
            TaskStatus.FAILED: f"the task failed: {state.message or 'no reason given'}",
            TaskStatus.CANCELED: "the task was canceled on the service",
            TaskStatus.UNKNOWN: "the service does not know this task",
        }[state.status]
        raise TaskFailedError(what, code=code, task_id=state.task_id, request_id=state.request_id)
    result.status = "downloading"
    t0 = time.monotonic()
    for position, outcome in enumerate(state.results):
        if outcome.url is None:
            result.failures.append({"image": str(position), "code": outcome.code or "", "message": outcome.message or ""})
            continue
        result.urls.append(outcome.url)
        try:
            data, array = client.download(outcome.url, task_id=state.task_id, ticker=ticker, decode=_keep_bytes)
        except WanxError as exc:
            result.failures.append({"image": str(position), "code": "DownloadFailed", "message": str(exc)})
            continue
        got = ImageSize(width=array.shape[1], height=array.shape[0])
        if expected is not None and got != expected:
            # The output-size rules are inferred (spec section 6, [Inf]): say so loudly, keep the image.
            note = f"result {position} is {got}, not the expected {expected}; the pack's size rule may be out of date"
            log.warning("task %s: %s", state.task_id, note)
            result.warnings.append(note)
        result.images.append(array)
        result.files.append(data)
    result.timings_s["download"] = time.monotonic() - t0
    if not result.images:
        first = result.failures[0] if result.failures else {"code": "", "message": "no image"}
        raise TaskFailedError(f"no image of the task could be used: {first['message']}", code=first["code"] or None,
                              task_id=state.task_id)
    result.status = "done"


def _name_recent_tasks(exc: SubmitUncertainError, client: DashScopeClient, *, since_s: float) -> SubmitUncertainError:
    """Add the account's tasks created since the send (a free call) to the message, so the
    user can find the task that may exist. Best effort: the listing itself may fail."""
    try:
        recent = [t for t in client.list_tasks(page_size=10) if t.created_ms and t.created_ms / 1000 >= since_s - 5]
    except WanxError:
        return exc
    if not recent:
        return SubmitUncertainError(f"{exc.what}; the task list shows no new task yet", code=exc.code)
    named = ", ".join(f"{t.task_id} ({t.status.value})" for t in recent)
    return SubmitUncertainError(f"{exc.what}; tasks created since: {named}", code=exc.code)


def _keep_bytes(data: bytes) -> tuple[bytes, np.ndarray]:
    return data, images.decode_image(data)


def _cached_images(store: Store, key: str) -> tuple[Hit, list[np.ndarray]] | None:
    """A cache entry and its decoded images; a missing or damaged entry is a miss."""
    hit = store.cache.get(key) if store.cache is not None else None
    if hit is None:
        return None
    try:
        return hit, [images.decode_image(data) for data in hit.files]
    except WanxError:
        return None


def _serve_from_cache(store: Store, key: str, result: ItemResult) -> None:
    cached = _cached_images(store, key)
    if cached is None:
        return
    hit, result.images = cached
    result.files, result.cached, result.status = list(hit.files), True, "done"
    result.task_id = str(hit.meta.get("task_id") or "") or None
    log.info("image %d: served from the result cache (task %s); nothing sent", result.index, result.task_id)


def _remember(store: Store, key: str | None, state: TaskState, result: ItemResult) -> None:
    """Record the task's end in the journal, and keep complete results in the cache."""
    saved = None
    complete = state.status is TaskStatus.SUCCEEDED and len(result.files) == len(state.results) and not result.failures
    if key is not None and store.cache is not None and complete:
        store.cache.put(key, result.files, meta={"task_id": state.task_id})
        saved = f"cache:{key}"
    elif result.images:
        saved = "returned to the caller"
    store.journal.update(state.task_id, status=state.status.value, image_count=state.image_count or 0,
                         finished_at=time.time(), results=saved)


def _cancel_own_task(client: DashScopeClient, result: ItemResult) -> None:
    if result.task_id is None or result.status in {s.value for s in TaskStatus if s.is_terminal} | {"done"}:
        result.cancel_note = None if result.task_id else "not sent"
        return
    try:
        canceled = client.cancel(result.task_id)
    except WanxError as exc:
        result.cancel_note = f"task {result.task_id}: could not cancel ({exc.what}); it may still run and be billed"
        return
    result.status = "CANCELED" if canceled else result.status
    result.cancel_note = (
        f"task {result.task_id} was pending and is canceled (not billed)" if canceled
        else f"task {result.task_id} was already running and will be billed; recover it with "
        f"`wanx-imageedit fetch {result.task_id}`"
    )


def _canceled_error(results: list[ItemResult]) -> CanceledError:
    notes = []
    for r in results:
        if r.cancel_note:
            notes.append(r.cancel_note)
        elif r.task_id and r.status in ("done", "downloading", TaskStatus.SUCCEEDED.value):
            notes.append(f"task {r.task_id} had finished (billed); recover it with `wanx-imageedit fetch {r.task_id}`")
        elif r.task_id and r.status not in ("CANCELED",):
            notes.append(f"task {r.task_id} ({r.status}) may still run and be billed")
    billed = [r.task_id for r in results if r.cancel_note and "billed" in r.cancel_note and "not billed" not in r.cancel_note]
    summary = "; ".join(notes) if notes else "no task had been sent"
    return CanceledError(f"canceled by the user: {summary}", task_id=billed[0] if billed else None)


def _nothing_came_back(results: list[ItemResult]) -> WanxError:
    errors = [r.error for r in results if r.error is not None]
    if len(results) == 1 and errors:
        return errors[0]
    distinct = {str(e) for e in errors}
    if len(distinct) == 1:
        return errors[0]
    lines = "; ".join(f"image {r.index}: {r.error}" for r in results if r.error is not None)
    return TaskFailedError(f"no image of the batch came back ({lines})")


@dataclass
class Recovered:
    """The results of an earlier task, fetched again by its id."""

    task_id: str
    status: str
    images: list[np.ndarray]
    failures: list[dict[str, str]]
    image_count: int
    source: str  # "cache" or "service"

    def images_tensor(self) -> torch.Tensor:
        return images.stack_images(self.images)

    def report(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "status": self.status, "images_out": len(self.images),
                "usage": {"image_count": self.image_count}, "source": self.source, "failures": self.failures}


def recover(
    task_id: str | None, *, client: DashScopeClient, store: Store, policy: PollPolicy = DEFAULT_POLICY,
    should_cancel: Callable[[], bool] = lambda: False,
) -> Recovered:
    """Return the images of a task: the one named, or the newest journaled task whose results
    were never stored. Waits if it is still running; sends no new task, so it costs nothing."""
    entry = store.journal.find(task_id) if task_id else store.journal.newest_unrecovered()
    if entry is None and not task_id:
        raise WanxError("the journal has no task whose results are missing",
                        advice="Pass the task id (see `wanx-imageedit tasks` or the Model Studio console).")
    task_id = task_id or entry.task_id  # type: ignore[union-attr]
    cached = None
    if entry is not None and entry.results and entry.results.startswith("cache:"):
        cached = _cached_images(store, entry.results.removeprefix("cache:"))
    if cached is not None:
        return Recovered(task_id=task_id, status="SUCCEEDED", images=cached[1], failures=[],
                         image_count=entry.image_count or 0, source="cache")  # type: ignore[union-attr]
    ticker = Ticker()
    with _cancel_watch(ticker, should_cancel):
        try:
            state = wait_for_task(client, task_id, ticker=ticker, timeout_s=client.settings.task_timeout_s,
                                  outage_s=client.settings.poll_outage_s, policy=policy, first_delay_s=0.0)
        except Interrupted:
            raise CanceledError(f"stopped waiting for task {task_id}; it keeps running on the service",
                                task_id=task_id, advice="Fetch it again later (results are kept 24 hours).") from None
        if state.status is TaskStatus.UNKNOWN:
            age = f", submitted {(time.time() - entry.submitted_at) / 3600:.1f} hours ago" if entry else ""
            raise TaskFailedError(f"the service no longer has task {task_id}{age}", code="UNKNOWN", task_id=task_id)
        result = ItemResult(index=0, sent_size=ImageSize(0, 0), original_size=ImageSize(0, 0), expected_size=ImageSize(0, 0))
        try:
            _collect(state, result, client=client, ticker=ticker, expected=None)
        finally:
            _remember(store, entry.digest if entry else None, state, result)
    return Recovered(task_id=task_id, status=state.status.value, images=result.images, failures=result.failures,
                     image_count=state.image_count or 0, source="service")


@contextlib.contextmanager
def _cancel_watch(ticker: Ticker, should_cancel: Callable[[], bool], *, every_s: float = 0.1) -> Iterator[None]:
    """Turn a polled cancel check into the ticker's event, for waits on the calling thread."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(every_s):
            if should_cancel():
                ticker.cancel.set()
                return

    watcher = threading.Thread(target=watch, daemon=True, name="wanx-cancel-watch")
    watcher.start()
    try:
        yield
    finally:
        stop.set()
