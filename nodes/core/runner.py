"""Running an edit: one task per image, concurrently within the account's quota, every paid
result kept even when other images fail; and recovering an earlier task's results. The code path
shared by the nodes, the CLI and the demo.

The money rules, in the order a task meets them:
- an identical seeded edit already in the journal (in flight, or finished with results not yet
  delivered) is attached to, never paid again; the claim and the budget reservation are one
  transaction shared by every process on the machine;
- a create whose answer was lost is journaled as uncertain at once, then reconciled with the free
  task list: one new unclaimed task is adopted; none after the window means the service did not
  take it, so it is sent again; anything else is never resent, and the message names the tasks;
- an UNKNOWN answer for a task accepted within the retention window is re-checked before it is
  believed, and the task stays recoverable;
- every billed image reaches the user or stays recoverable: the journal records which result
  indices were delivered, and `recover` delivers exactly the missing ones later."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from . import images
from .cache import Hit
from .client import DashScopeClient
from .errors import (
    ApiError,
    BudgetError,
    CanceledError,
    DownloadError,
    Interrupted,
    SubmitUncertainError,
    TaskFailedError,
    WanxError,
    billed_advice,
)
from .functions import ImageSize
from .journal import RETENTION_S, SENDING, UNCERTAIN, Claim, Entry, process_id
from .outcome import (
    CancelNote,
    EditOutcome,
    Fate,
    ItemResult,
    ItemState,
    Progress,
    Recovered,
    canceled_error,
    nothing_came_back,
)
from .polling import DEFAULT_POLICY, PollPolicy, wait_for_task
from .protocol import Submitted, TaskState, TaskStatus
from .quota import Quota
from .request import EditRequest, Item, Payload
from .store import Store
from .ticker import Ticker

log = logging.getLogger(__name__)

# Refusals that every other image of the batch would get too: stop sending the rest.
ACCOUNT_LEVEL_HTTP = (401, 403)
ACCOUNT_LEVEL_CODES = ("Arrearage", "Throttling.AllocationQuota", "CommodityNotPurchased")
CANCEL_GRACE_S = 0.6  # workers get this long to cancel their own tasks; the user waits at most ~1 s
HEARTBEAT_S = 1.0
JOURNAL_HEARTBEAT_S = 20.0  # claims of a live process are refreshed well within journal.OWNER_STALE_S
# After an uncertain create, the task list is read at these delays (seconds after the send): a
# task the service took shows up there with its creation time.
RECONCILE_AT_S = (1.0, 2.5, 5.0)
# After a read timeout the service may still be working on the request and create the task late.
RECONCILE_SLOW_AT_S = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0)
RECONCILE_SKEW_S = 10.0  # the service's clock against ours
RESENDS_AFTER_RECONCILE = 2
UNKNOWN_GRACE_S = 60.0  # how long an UNKNOWN for a task accepted within the retention window is re-checked
ATTACH_WAIT_S = 90.0  # how long to wait for another process's create to be answered
# Workers per run beyond the quota's slots: images whose task ended are downloaded and decoded
# while the slots' tasks run. More threads would only wait for a slot, and each thread that
# decodes keeps its own malloc arena (glibc), resident once used: threads bound memory.
DOWNLOAD_WORKERS = 2
# One encode at a time in the process: an encode already keeps both cores of a small machine busy,
# so two at once would each finish later, and the first task would be sent later.
_ENCODING = threading.Lock()


class _KnownTasks:
    """Every task this process created or adopted, so an uncertain create is never reconciled with
    one of our own (runs without a store journal nothing)."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def add(self, task_id: str) -> None:
        with self._lock:
            self._ids.add(task_id)

    def snapshot(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._ids)


_KNOWN = _KnownTasks()


@dataclass(frozen=True)
class _Context:
    client: DashScopeClient
    quota: Quota
    policy: PollPolicy
    ticker: Ticker
    store: Store | None
    stop_sending: threading.Event
    owner: str
    keep_files: bool = False  # the result files as returned, for an adapter that writes them (the CLI)
    output: images.ResultBatch | None = None  # where every result is decoded to as it arrives
    n: int = 1  # results per task: an image's slots in ``output`` start at its index * n


def run(
    request: EditRequest, *, client: DashScopeClient, quota: Quota, policy: PollPolicy = DEFAULT_POLICY,
    should_cancel: Callable[[], bool] = lambda: False, on_progress: Callable[[Progress], None] = lambda _: None,
    tick_s: float = 0.1, store: Store | None = None, reuse: bool = True, keep_files: bool = False,
    output: images.ResultBatch | None = None,
) -> EditOutcome:
    """Run one task per image and return every result that arrived. Raises only when no image
    at all came back (TaskFailedError or the call's error), or when the user cancels.

    With a ``store``, identical seeded edits are served from the result cache or attached to the
    journal's task (unless ``reuse`` is off), the daily budget is reserved before anything is sent,
    and every task is journaled before it is polled. With an ``output`` (``request.result_batch()``),
    each result is decoded straight into it, and the items' images are views of it."""
    ctx = _Context(client=client, quota=quota, policy=_limits(policy, client), ticker=Ticker(), store=store,
                   stop_sending=threading.Event(), owner=process_id(), keep_files=keep_files, output=output,
                   n=request.n)
    started = time.monotonic()
    results = [
        ItemResult(index=i, sent_size=item.sent_size, original_size=item.original_size,
                   expected_size=request.expected_size(item), notes=list(item.notes))
        for i, item in enumerate(request.items)
    ]
    reusable = reuse and request.cacheable
    claims = _claim(request, results, ctx=ctx, reusable=reusable)
    to_send = [(item, result, claim) for item, result, claim in zip(request.items, results, claims, strict=True)
               if not result.cached]

    def snapshot() -> Progress:
        return Progress(elapsed_s=time.monotonic() - started, states=tuple(r.state for r in results),
                        task_ids=tuple(r.task_id for r in results))

    def heartbeat() -> None:
        if store is not None:
            _journal_safely(store.journal.heartbeat, [c.row for c in claims if c])

    for _, result, _ in to_send:
        result.state = ItemState.QUEUED
    workers = max(1, min(len(to_send), quota.max_in_flight + DOWNLOAD_WORKERS))
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wanx-task")
    futures = [pool.submit(_work, request, item, result, claim, ctx=ctx, reusable=reusable)
               for item, result, claim in to_send]
    try:
        _supervise(futures, snapshot=snapshot, on_progress=on_progress, should_cancel=should_cancel,
                   heartbeat=heartbeat, tick_s=tick_s)
    except BaseException as exc:
        # Whatever stops us (the user's Cancel, the host cancelling the node, a callback raising),
        # pending tasks are cancelled on the service before we let go.
        ctx.ticker.cancel.set()
        for future, (_, _, claim) in zip(futures, to_send, strict=True):
            if future.cancel():  # never started: nothing was sent, its reserved images go back
                _release(ctx, claim)
        concurrent.futures.wait(futures, timeout=CANCEL_GRACE_S)
        arrived = [r for r in results if r.images and r.state is ItemState.DONE]
        canceled = canceled_error(results, partial=_outcome(request, arrived, started=started, ctx=ctx)
                                  if arrived else None)
        if isinstance(exc, Interrupted):
            raise canceled from None
        log.warning("%s", canceled)
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    if not any(item.images for item in results):
        raise nothing_came_back(results)
    return _outcome(request, results, started=started, ctx=ctx)


def _outcome(request: EditRequest, results: list[ItemResult], *, started: float, ctx: _Context) -> EditOutcome:
    return EditOutcome(function=request.fn.api_name, prompt=request.prompt, parameters=dict(request.parameters),
                       items=results, elapsed_s=time.monotonic() - started, emulated=ctx.client.emulated,
                       output=ctx.output)


def _supervise(futures: Sequence[concurrent.futures.Future[None]], *, snapshot: Callable[[], Progress],
               on_progress: Callable[[Progress], None], should_cancel: Callable[[], bool],
               heartbeat: Callable[[], None], tick_s: float) -> None:
    """On the caller's thread until every image is done: progress at every change and once a
    second, the cancel check every tick, the journal heartbeat of this run's claims."""
    shown: Progress | None = None
    beat_at = time.monotonic()
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
        if time.monotonic() - beat_at >= JOURNAL_HEARTBEAT_S:
            beat_at = time.monotonic()
            heartbeat()
        concurrent.futures.wait(futures, timeout=tick_s)
    on_progress(snapshot())


def _work(request: EditRequest, item: Item, result: ItemResult, claim: Claim | None, *, ctx: _Context,
          reusable: bool) -> None:
    """One image on its worker thread: every failure ends in the image's result, never lost."""
    try:
        _run_item(request, item, result, claim, ctx=ctx, reusable=reusable)
    except Interrupted:
        _cancel_own_task(ctx, result, claim)
    except WanxError as exc:
        result.error, result.state = exc, ItemState.FAILED
        if isinstance(exc, ApiError) and (exc.http_status in ACCOUNT_LEVEL_HTTP or exc.code in ACCOUNT_LEVEL_CODES):
            ctx.stop_sending.set()
        if result.task_id is None and not isinstance(exc, SubmitUncertainError):
            _release(ctx, claim)  # never sent: its reserved images go back (an uncertain one stays counted)
    except Exception as exc:  # a bug must not lose the other images' paid results
        log.exception("image %d of the batch failed unexpectedly", result.index)
        result.error = WanxError(f"unexpected {type(exc).__name__}: {exc}", task_id=result.task_id,
                                 advice=billed_advice(result.task_id) if result.task_id else None)
        result.state = ItemState.FAILED


def _limits(policy: PollPolicy, client: DashScopeClient) -> PollPolicy:
    settings = client.settings
    return policy.within(timeout_s=settings.task_timeout_s, outage_s=settings.poll_outage_s,
                         unknown_grace_s=UNKNOWN_GRACE_S * policy.time_scale)


def _claim(request: EditRequest, results: Sequence[ItemResult], *, ctx: _Context,
           reusable: bool) -> list[Claim | None]:
    """Journal claims for every image, with the budget reserved, in one transaction, before anything
    is sent. Images are hashed and looked up in the cache at their turn (so a big batch starts at
    once); only when the budget refuses the run are they looked up first, since cached images cost
    nothing and may bring the run within the limit."""
    store = ctx.store
    if store is None:
        return [None] * len(results)

    def reserve(count: int) -> list[Claim]:
        return store.reserve(count, function=request.fn.api_name, n=request.n, owner=ctx.owner)

    try:
        return list(reserve(len(results)))
    except BudgetError:
        if not reusable or store.cache is None:
            raise
    for item, result in zip(request.items, results, strict=True):  # each payload is dropped once hashed
        _serve_from_cache(store, request.digest(_encode(item), endpoint=ctx.client.settings.base_url), result,
                          ctx=ctx)
    fresh = iter(reserve(sum(not r.cached for r in results)))
    return [None if r.cached else next(fresh) for r in results]


def _run_item(request: EditRequest, item: Item, result: ItemResult, claim: Claim | None, *, ctx: _Context,
              reusable: bool) -> None:
    t0 = time.monotonic()
    store, attached = ctx.store, None
    # The slot bounds the payloads alive at once: an image is encoded, hashed and looked up at its turn.
    with ctx.quota.in_flight(ctx.ticker):
        if ctx.stop_sending.is_set():
            _release(ctx, claim)
            raise WanxError("not sent: another image of this batch hit an account-level error")
        result.timings_s["queued"] = time.monotonic() - t0
        t1 = time.monotonic()
        payload = _encode(item)
        result.timings_s["encode"] = time.monotonic() - t1
        key = request.digest(payload, endpoint=ctx.client.settings.base_url) if store is not None else None
        if key is not None and reusable and store is not None and _serve_from_cache(store, key, result, ctx=ctx):
            _release(ctx, claim)
            return
        if key is not None and claim is not None and store is not None:
            attach_to = store.journal.attach(claim.row, key) if reusable else None
            if attach_to is None:
                _journal_safely(store.journal.set, claim.row, digest=key)
            else:
                del payload  # nothing to send: an identical edit's task is on its way
                attached = _attached_task(attach_to, ctx=ctx)
        if attached is None:
            result.state = ItemState.SUBMITTING
            t1 = time.monotonic()
            result.notes.extend(payload.notes)
            body = request.body(payload)
            del payload  # the body holds the one reference to the file
            _submit(request, body, result, claim, ctx=ctx, key=key)
            del body  # the service has it: a big batch holds at most a slot's worth of payloads
            images.give_back_freed_memory()
            state = _wait(result, ctx=ctx, submitted_at_s=time.time())
            result.timings_s["task"] = time.monotonic() - t1
    if attached is not None:
        # An identical seeded edit already has a paid task: deliver its images, pay nothing.
        result.task_id, result.request_id, result.attached = attached.task_id, attached.request_id, True
        result.state = ItemState.PENDING
        log.info("image %d: attached to task %s of an identical edit; nothing sent", result.index, result.task_id)
        state = _wait(result, ctx=ctx, submitted_at_s=attached.submitted_at)
        result.timings_s["task"] = time.monotonic() - t0
    _deliver(state, result, ctx=ctx, expected=request.expected_size(item),
             cache_key=key if request.cacheable else None)
    if attached is not None:
        result.image_count = 0  # billed once, by the run that created the task (its journal entry says so)


def _encode(item: Item) -> Payload:
    with _ENCODING:
        return item.encode()


_Into = Callable[[int], "np.ndarray | None"]  # result position -> the array to decode it into (None: its own)


def _slots(ctx: _Context, result: ItemResult) -> _Into:
    """Result ``position`` of ``result``'s task is decoded into its slot of the run's output (a
    result of another size than the slot's is decoded into an array of its own)."""
    output = ctx.output
    if output is None:
        return lambda _: None
    return lambda position: output.slot(result.index * ctx.n + position) if position < ctx.n else None


def _submit(request: EditRequest, body: dict[str, object], result: ItemResult, claim: Claim | None, *,
            ctx: _Context, key: str | None) -> Submitted:
    """Create the task; reconcile an uncertain create with the task list instead of resending blindly."""
    journal = ctx.store.journal if ctx.store is not None else None
    ctx.ticker.check()  # the last moment a Cancel keeps the create from going out
    if journal is not None and claim is not None:  # from here a crash leaves an uncertain create
        _journal_safely(journal.set, claim.row, status=SENDING, submitted_at=time.time())
    for resend in range(RESENDS_AFTER_RECONCILE + 1):
        try:
            submitted = ctx.client.submit(body, ticker=ctx.ticker, quota=ctx.quota)
        except SubmitUncertainError as exc:
            sent_at_s = exc.sent_at_s or time.time()
            if journal is not None and claim is not None:  # before the user hears of it
                _journal_safely(journal.set, claim.row, status=UNCERTAIN, submitted_at=sent_at_s)
            try:
                adopted = _reconcile(exc, sent_at_s=sent_at_s, claim=claim, ctx=ctx)
            except SubmitUncertainError:
                if journal is not None and claim is not None:  # nobody is sending it any more: `fetch` may look
                    _journal_safely(journal.set, claim.row, heartbeat_at=None)
                raise
            if adopted is None:
                log.warning("image %d: the service did not take the create request (%s); sending it again (%d)",
                            result.index, exc.what, resend + 1)
                continue
            submitted = adopted
        except WanxError:
            _release(ctx, claim)
            raise
        break
    else:
        _release(ctx, claim)
        raise WanxError(f"the create request failed {RESENDS_AFTER_RECONCILE + 1} times without reaching the service",
                        advice="Nothing was billed. Check the network and the endpoint, then run again.")
    result.task_id, result.request_id = submitted.task_id, submitted.request_id
    result.state = ItemState.of_task(submitted.status)
    _KNOWN.add(submitted.task_id)
    log.info("image %d: task %s accepted", result.index, submitted.task_id)
    if journal is not None and claim is not None:  # before the first poll: a crash cannot lose this paid task
        _journal_safely(journal.set, claim.row, task_id=submitted.task_id, request_id=submitted.request_id,
                        status=submitted.status.value)
    return submitted


def _reconcile(exc: SubmitUncertainError, *, sent_at_s: float, claim: Claim | None, ctx: _Context) -> Submitted | None:
    """After a create whose answer was lost: the one new, unclaimed task in the free task list is
    ours (adopt it); none after the window means the service never took the request (None: safe to
    send again). Several candidates, or a task list that cannot be read: raise, never resend."""
    journal = ctx.store.journal if ctx.store is not None else None
    started = time.monotonic()
    for at_s in RECONCILE_SLOW_AT_S if exc.slow else RECONCILE_AT_S:
        ctx.ticker.wait(started + at_s * ctx.policy.time_scale - time.monotonic())
        try:
            listed = ctx.client.list_tasks(page_size=20)
        except WanxError as list_error:
            raise _uncertain(exc, f"the task list could not be read to check ({list_error.what})") from None
        claimed = _KNOWN.snapshot() | (journal.claimed_task_ids() if journal is not None else frozenset())
        candidates = [t for t in listed if t.created_ms is not None and t.created_ms / 1000 >= sent_at_s -
                      RECONCILE_SKEW_S and t.task_id not in claimed]
        if exc.request_id and any(t.request_id == exc.request_id for t in candidates):
            candidates = [t for t in candidates if t.request_id == exc.request_id]
        if len(candidates) > 1:
            named = ", ".join(f"{t.task_id} ({t.status.value})" for t in candidates)
            raise _uncertain(exc, f"several new tasks could be this one: {named}")
        if candidates:
            (found,) = candidates
            if journal is not None and claim is not None and not journal.adopt(
                    claim.row, found.task_id, request_id=found.request_id, status=found.status.value):
                continue  # another process claimed it in the meantime: not ours
            log.warning("the create answer was lost (%s); adopted task %s from the task list", exc.what, found.task_id)
            return Submitted(task_id=found.task_id, status=found.status, request_id=found.request_id)
    return None


def _uncertain(exc: SubmitUncertainError, why: str) -> SubmitUncertainError:
    return SubmitUncertainError(f"{exc.what}; {why}", sent_at_s=exc.sent_at_s, slow=exc.slow, code=exc.code,
                                request_id=exc.request_id, http_status=exc.http_status)


def _attached_task(found: Entry, *, ctx: _Context) -> Entry:
    """The task of ``found`` to attach to; waits while another live process is still sending it."""
    entry: Entry | None = found
    deadline = time.monotonic() + ATTACH_WAIT_S
    journal = ctx.store.journal if ctx.store is not None else None
    while entry is None or entry.task_id is None:
        if entry is None or journal is None or entry.final or time.monotonic() > deadline \
                or not entry.owner_alive(now_s=time.time()):
            raise SubmitUncertainError(
                "an identical edit was being sent by another run, which has not said whether the service took it",
                advice="Nothing new was sent. Run `wanx-imageedit fetch` (or the Fetch node) in a minute to recover "
                "it, or list tasks with `wanx-imageedit tasks`.")
        ctx.ticker.wait(0.5 * ctx.policy.time_scale)
        entry = journal.get(found.row)
    return entry


def _wait(result: ItemResult, *, ctx: _Context, submitted_at_s: float) -> TaskState:
    assert result.task_id is not None

    def on_state(state: TaskState) -> None:
        result.state = ItemState.of_task(state.status)

    state = wait_for_task(ctx.client, result.task_id, ticker=ctx.ticker, policy=ctx.policy, on_state=on_state,
                          quota=ctx.quota)
    if state.status is TaskStatus.UNKNOWN and time.time() - submitted_at_s < RETENTION_S:
        # Accepted within the retention window: the service has not forgotten it for good. The
        # journal keeps it open, so `fetch` finds it and the budget still counts it.
        raise TaskFailedError(
            "the service does not know this task right now, although it accepted it "
            f"{time.time() - submitted_at_s:.0f} s ago", code="UNKNOWN", task_id=result.task_id,
            advice="It may still finish and be billed. Recover it later with the Wanx Fetch Task Result node or "
            f"`wanx-imageedit fetch {result.task_id}`; do not run the edit again in the meantime. (UNKNOWN means "
            "the service has no such task for this key: tasks are kept 24 hours, and are visible only to keys "
            "of the account and region that created them.)")
    return state


def _deliver(state: TaskState, result: ItemResult, *, ctx: _Context, expected: ImageSize,
             cache_key: str | None) -> None:
    try:
        _collect(state, result, client=ctx.client, ticker=ctx.ticker, expected=expected, into=_slots(ctx, result))
    finally:
        if ctx.store is not None:
            _remember(ctx.store, cache_key, state, result)
        if not ctx.keep_files:
            result.files = []  # stored or not needed: memory holds the decoded images, not the files too


def _release(ctx: _Context, claim: Claim | None) -> None:
    """The create was refused or never sent: its budget reservation goes back."""
    if ctx.store is not None and claim is not None:
        _journal_safely(ctx.store.journal.set, claim.row, status="REFUSED", image_count=0, finished_at=time.time())


def _journal_safely(write: Callable[..., object], *args: object, **kwargs: object) -> None:
    """A journal that cannot be written must not stop a billed task from being polled and delivered."""
    try:
        write(*args, **kwargs)
    except Exception:  # sqlite3, OS and disk errors alike: the paid task matters more
        log.error("could not write the task journal (%s); the task goes on, but a crash now could lose track "
                  "of it: note its id from the progress", getattr(write, "__name__", "write"), exc_info=True)


def _collect(state: TaskState, result: ItemResult, *, client: DashScopeClient, ticker: Ticker,
             expected: ImageSize | None, only: frozenset[int] | None = None,
             into: _Into = lambda _: None) -> None:
    """Download the task's results (``only`` these indices, when given), keeping every image that
    arrives (decoded ``into`` an output's slots). Links that fail are asked for again once (signed
    links expire)."""
    result.image_count = state.image_count or 0
    if state.status is not TaskStatus.SUCCEEDED:
        code = "UNKNOWN" if state.status is TaskStatus.UNKNOWN else state.code
        what = {
            TaskStatus.FAILED: f"the task failed: {state.message or 'no reason given'}",
            TaskStatus.CANCELED: "the task was canceled on the service",
            TaskStatus.UNKNOWN: "the service does not know this task",
        }[state.status]
        raise TaskFailedError(what, code=code, task_id=state.task_id, request_id=state.request_id)
    result.state = ItemState.DOWNLOADING
    t0 = time.monotonic()
    wanted = [i for i in range(len(state.results)) if only is None or i in only]
    lost = _download(state, wanted, result, client=client, ticker=ticker, expected=expected, into=into)
    if lost:
        try:  # fresh signed links for what failed
            lost = _download(client.query(state.task_id), lost, result, client=client, ticker=ticker,
                             expected=expected, into=into)
        except WanxError as exc:
            log.warning("task %s: could not ask again for result links (%s)", state.task_id, exc.what)
    for position, error in sorted(result.lost.items()):
        if position in lost:
            result.failures.append({"image": str(position), "code": "DownloadFailed", "message": str(error)})
    result.timings_s["download"] = time.monotonic() - t0
    if not result.images:
        if result.lost:
            raise DownloadError(f"no image of the task could be downloaded ({next(iter(result.lost.values())).what})",
                                task_id=state.task_id)
        first = result.failures[0] if result.failures else {"code": "", "message": "no image"}
        raise TaskFailedError(f"no image of the task could be used: {first['message']}", code=first["code"] or None,
                              task_id=state.task_id)
    result.state = ItemState.DONE


def _download(state: TaskState, positions: Sequence[int], result: ItemResult, *, client: DashScopeClient,
              ticker: Ticker, expected: ImageSize | None, into: _Into) -> list[int]:
    """Fetch results at ``positions`` into ``result``; returns the positions that failed to download."""
    failed = []
    # Recovery does not know the predicted size: what the request check allowed is the bound.
    max_pixels = images.decode_limit_px(expected) if expected is not None else images.MAX_RESULT_PIXELS

    def decoder(out: np.ndarray | None) -> Callable[[bytes], tuple[bytes, np.ndarray]]:
        return lambda data: (data, images.decode_image(data, max_pixels=max_pixels, out=out))  # this download's limit

    for position in positions:
        outcome = state.results[position]
        if outcome.url is None:
            if position not in result.lost:
                result.failures.append({"image": str(position), "code": outcome.code or "",
                                        "message": outcome.message or ""})
            continue
        if position not in result.lost:
            result.urls.append(outcome.url)
        try:
            data, array = client.download(outcome.url, task_id=state.task_id, ticker=ticker,
                                          decode=decoder(into(position)))
        except DownloadError as exc:
            result.lost[position] = exc
            failed.append(position)
            continue
        result.lost.pop(position, None)
        got = ImageSize(width=array.shape[1], height=array.shape[0])
        if expected is not None and got != expected:
            # The output-size rules are inferred (spec section 6, [Inf]): say so loudly, keep the image.
            note = f"result {position} is {got}, not the expected {expected}; the pack's size rule may be out of date"
            log.warning("task %s: %s", state.task_id, note)
            result.warnings.append(note)
        result.images.append(array)
        result.files.append(data)
        images.give_back_freed_memory()  # the file's decode buffers, freed on this worker's own arena
        result.delivered.append(position)
    return failed


def _cached_images(store: Store, key: str, *, into: _Into = lambda _: None) -> tuple[Hit, list[np.ndarray]] | None:
    """A cache entry and its decoded images; a missing or damaged entry is a miss."""
    hit = store.cache.get(key) if store.cache is not None else None
    if hit is None:
        return None
    try:
        return hit, [images.decode_image(data, max_pixels=images.MAX_RESULT_PIXELS, out=into(position))
                     for position, data in enumerate(hit.files)]
    except WanxError:
        return None


def _serve_from_cache(store: Store, key: str, result: ItemResult, *, ctx: _Context) -> bool:
    cached = _cached_images(store, key, into=_slots(ctx, result)) if store.cache is not None else None
    if cached is None:
        return False
    hit, result.images = cached
    result.files, result.cached, result.state = list(hit.files), True, ItemState.DONE
    result.task_id = str(hit.meta.get("task_id") or "") or None
    log.info("image %d: served from the result cache (task %s); nothing sent", result.index, result.task_id)
    return True


def _remember(store: Store, key: str | None, state: TaskState, result: ItemResult) -> None:
    """Record the task's end and what was delivered in the journal; keep complete results in the cache."""
    saved = None
    ok = [i for i, r in enumerate(state.results) if r.url is not None]
    complete = state.status is TaskStatus.SUCCEEDED and not result.lost and len(result.files) == len(ok)
    if key is not None and store.cache is not None and complete and result.files:
        try:
            store.cache.put(key, result.files, meta={"task_id": state.task_id})
            saved = f"cache:{key}"
        except OSError as exc:
            log.warning("could not store task %s in the result cache (%s)", state.task_id, exc)
    if saved is None and result.images:
        saved = "returned to the caller"
    if state.status is TaskStatus.UNKNOWN:
        return  # believed only when old (see _wait): the entry stays as it was, recoverable
    _journal_safely(store.journal.update, state.task_id, status=state.status.value,
                    image_count=state.image_count or 0, finished_at=time.time())
    _journal_safely(store.journal.delivered, state.task_id, result.delivered, ok_indices=ok, results=saved)


def _cancel_own_task(ctx: _Context, result: ItemResult, claim: Claim | None) -> None:
    if result.attached:
        return  # another run's task: it stays recoverable, nobody cancels it but its owner
    if result.task_id is None:
        _release(ctx, claim)
        return
    if result.state.final or result.state is ItemState.DOWNLOADING:
        return  # ended, or ended on the service and arriving
    try:
        canceled = ctx.client.cancel(result.task_id)
    except WanxError as exc:
        result.cancel_note = CancelNote(result.task_id, Fate.CANCEL_FAILED, exc.what)
        return
    result.cancel_note = CancelNote(result.task_id, Fate.CANCELED if canceled else Fate.RUNNING)
    if canceled:
        result.state = ItemState.CANCELED
        if ctx.store is not None:
            _journal_safely(ctx.store.journal.update, result.task_id, status=TaskStatus.CANCELED.value,
                            image_count=0, finished_at=time.time())


# --- recovery -------------------------------------------------------------------------------------


def recover(
    task_id: str | None, *, client: DashScopeClient, store: Store, policy: PollPolicy = DEFAULT_POLICY,
    should_cancel: Callable[[], bool] = lambda: False, on_progress: Callable[[Progress], None] = lambda _: None,
) -> Recovered:
    """Return the images of a task: the one named (all its images), or the newest journaled task
    with billed images never delivered (exactly those). Waits if it is still running; sends no new
    task, so it costs nothing. An uncertain create is reconciled with the task list first.
    ``on_progress`` gets a one-image Progress at every change and once a second, from a helper thread."""
    named = task_id is not None
    entry = store.journal.find(task_id) if task_id else store.journal.newest_unrecovered()
    if entry is None and not task_id:
        raise WanxError("the journal has no task whose results are missing",
                        advice="Pass the task id (see `wanx-imageedit tasks` or the Model Studio console).")
    ticker = Ticker()
    policy = _limits(policy, client)
    if entry is None or time.time() - entry.submitted_at >= RETENTION_S:
        policy = policy.within(timeout_s=policy.timeout_s, outage_s=policy.outage_s, unknown_grace_s=0.0)
    unknown = ImageSize(0, 0)
    result = ItemResult(index=0, sent_size=unknown, original_size=unknown, expected_size=unknown,
                        task_id=task_id or (entry.task_id if entry else None), state=ItemState.PENDING)
    started = time.monotonic()

    def tick() -> None:
        on_progress(Progress(elapsed_s=time.monotonic() - started, states=(result.state,), task_ids=(result.task_id,)))

    def on_state(state: TaskState) -> None:
        result.state = ItemState.of_task(state.status)

    with _cancel_watch(ticker, should_cancel, on_tick=tick):
        if entry is not None and entry.task_id is None:
            entry = _adopt_for_recovery(entry, client=client, store=store, ticker=ticker, policy=policy)
        task_id = task_id or (entry.task_id if entry else None)
        assert task_id is not None
        result.task_id = task_id
        if entry is not None and entry.results and entry.results.startswith("cache:"):
            cached = _cached_images(store, entry.results.removeprefix("cache:"))
            if cached is not None:
                return Recovered(task_id=task_id, status="SUCCEEDED", images=cached[1], failures=[],
                                 image_count=entry.image_count or 0, source="cache")
        try:
            state = wait_for_task(client, task_id, ticker=ticker, policy=policy, first_delay_s=0.0,
                                  on_state=on_state)
        except Interrupted:
            raise CanceledError(f"stopped waiting for task {task_id}; it keeps running on the service",
                                task_id=task_id, advice="Fetch it again later (results are kept 24 hours).") from None
        if state.status is TaskStatus.UNKNOWN:
            age = f", submitted {(time.time() - entry.submitted_at) / 3600:.1f} hours ago" if entry else ""
            if entry is not None and time.time() - entry.submitted_at >= RETENTION_S:
                _journal_safely(store.journal.update, task_id, status=TaskStatus.UNKNOWN.value, image_count=0)
            raise TaskFailedError(f"the service no longer has task {task_id}{age}", code="UNKNOWN", task_id=task_id)
        # Without an id, exactly the images never delivered; named by id, all of them.
        only = entry.missing if entry is not None and not named and entry.delivered else None
        try:
            _collect(state, result, client=client, ticker=ticker, expected=None, only=only)
        finally:
            delivered_before = entry.delivered if entry is not None else frozenset()
            result.delivered = sorted(set(result.delivered) | delivered_before)
            _remember(store, entry.digest if entry and entry.digest else None, state, result)
        tick()
    return Recovered(task_id=task_id, status=state.status.value, images=result.images, failures=result.failures,
                     image_count=state.image_count or 0, source="service", emulated=client.emulated)


def _adopt_for_recovery(entry: Entry, *, client: DashScopeClient, store: Store, ticker: Ticker,
                        policy: PollPolicy) -> Entry:
    """An uncertain create: find the task it made in the task list, or say what could not be told."""
    exc = SubmitUncertainError("an earlier create request was sent but its answer was lost",
                               sent_at_s=entry.submitted_at)
    ctx = _Context(client=client, quota=Quota(max_in_flight=1, submits_per_s=1), policy=policy, ticker=ticker,
                   store=store, stop_sending=threading.Event(), owner=process_id())
    adopted = _reconcile(exc, sent_at_s=entry.submitted_at, claim=Claim(row=entry.row), ctx=ctx)
    if adopted is None:
        _journal_safely(store.journal.set, entry.row, status="REFUSED", image_count=0, finished_at=time.time())
        raise WanxError("the earlier create request never reached the service: no task was made and nothing was "
                        "billed", advice="Run the edit again.")
    found = store.journal.get(entry.row)
    assert found is not None
    return found


@contextlib.contextmanager
def _cancel_watch(ticker: Ticker, should_cancel: Callable[[], bool], *, every_s: float = 0.1,
                  on_tick: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Turn a polled cancel check into the ticker's event, for waits on the calling thread; call
    ``on_tick`` at once and then every HEARTBEAT_S."""
    stop = threading.Event()

    def watch() -> None:
        ticked = time.monotonic()
        on_tick()
        while not stop.wait(every_s):
            if should_cancel():
                ticker.cancel.set()
                return
            if time.monotonic() - ticked >= HEARTBEAT_S:
                ticked = time.monotonic()
                on_tick()

    watcher = threading.Thread(target=watch, daemon=True, name="wanx-cancel-watch")
    watcher.start()
    try:
        yield
    finally:
        stop.set()
