"""What a run produced, as typed values: each image's state, what a Cancel did to each task, and
the report. The report is a contract: the nodes' `report` output, the CLI's report file and the
front end (session cost, progress) all read it, so its fields never change meaning."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np
import torch

from . import images
from .errors import CanceledError, TaskFailedError, WanxError
from .functions import MODEL, PRICE_PER_IMAGE, ImageSize
from .protocol import TaskStatus


class ItemState(str, enum.Enum):
    """One image's place in its run. The values are what the progress text, the report and the
    front end show (the task states keep the service's own spelling)."""

    NOT_SENT = "not sent"
    QUEUED = "queued"
    SUBMITTING = "submitting"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    DOWNLOADING = "downloading"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "CANCELED"

    @property
    def final(self) -> bool:
        return self in (ItemState.DONE, ItemState.FAILED, ItemState.CANCELED)

    @classmethod
    def of_task(cls, status: TaskStatus) -> ItemState:
        """The item state while its task is in ``status`` (a finished task is still downloading)."""
        return {TaskStatus.PENDING: cls.PENDING, TaskStatus.RUNNING: cls.RUNNING,
                TaskStatus.SUSPENDED: cls.SUSPENDED, TaskStatus.CANCELED: cls.CANCELED}.get(status, cls.DOWNLOADING)


class Fate(enum.Enum):
    """What a Cancel left of one task, and whether it costs money."""

    CANCELED = "was pending and is canceled (not billed)"
    RUNNING = "was already running and will be billed"
    FINISHED = "had finished (billed)"
    MAY_RUN = "may still run and be billed"
    CANCEL_FAILED = "could not be canceled"

    @property
    def billed(self) -> bool:
        return self in (Fate.RUNNING, Fate.FINISHED)


@dataclass(frozen=True)
class CancelNote:
    task_id: str
    fate: Fate
    detail: str = ""  # why a cancel failed, or the state a task was left in

    def text(self) -> str:
        head = f"task {self.task_id}"
        if self.fate is Fate.CANCEL_FAILED:
            return f"{head}: could not cancel ({self.detail}); it may still run and be billed"
        if self.fate is Fate.MAY_RUN:
            return f"{head} ({self.detail}) {self.fate.value}"
        recover = f"; recover it with `wanx-imageedit fetch {self.task_id}`" if self.fate.billed else ""
        return f"{head} {self.fate.value}{recover}"


@dataclass(frozen=True)
class Progress:
    """A snapshot of the whole batch, delivered on the caller's thread at every change and at
    least once a second (so elapsed time ticks)."""

    elapsed_s: float
    states: tuple[ItemState, ...]
    task_ids: tuple[str | None, ...]

    @property
    def total(self) -> int:
        return len(self.states)

    @property
    def finished(self) -> int:
        return sum(state.final for state in self.states)

    def text(self) -> str:
        """One line per image: what the node shows."""
        lines = [f"{self.finished}/{self.total} done, {self.elapsed_s:.0f} s"]
        for i, (state, task_id) in enumerate(zip(self.states, self.task_ids, strict=True)):
            lines.append(f"image {i + 1}: {state.value}" + (f" (task {task_id})" if task_id else ""))
        return "\n".join(lines)

    def to_json(self, *, n: int) -> dict[str, Any]:
        """The structured progress the front end reads (its cost estimate counts finished tasks × n)."""
        return {"finished": self.finished, "total": self.total, "elapsed_s": round(self.elapsed_s, 1), "n": n,
                "items": [{"state": s.value, "task_id": t} for s, t in zip(self.states, self.task_ids, strict=True)]}


class ItemReport(TypedDict, total=False):
    index: int
    task_id: str | None
    request_id: str | None
    status: str
    original_size: str
    sent_size: str
    expected_size: str
    images: int
    image_count: int
    cached: bool
    attached: bool
    urls: list[str]
    failures: list[dict[str, str]]
    timings_s: dict[str, float]
    warnings: list[str]
    notes: list[str]
    error: str


class Cost(TypedDict):
    currency: str
    unit_price: float
    billed: float


class Report(TypedDict):
    model: str
    function: str
    prompt: str
    parameters: dict[str, object]
    images_in: int
    images_out: int
    usage: dict[str, int]
    cost: Cost
    elapsed_s: float
    items: list[ItemReport]
    emulated: bool  # run against the emulator: nothing real was made or billed (cost.billed is 0)


@dataclass
class ItemResult:
    index: int
    sent_size: ImageSize
    original_size: ImageSize
    expected_size: ImageSize
    task_id: str | None = None
    request_id: str | None = None
    state: ItemState = ItemState.NOT_SENT
    images: list[np.ndarray] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was done to the input on the way (resized, JPEG, ...)
    image_count: int = 0
    cached: bool = False  # served from the result cache: nothing was sent or billed
    attached: bool = False  # the task of an identical edit from an earlier run: nothing new was sent or billed
    files: list[bytes] = field(default_factory=list, repr=False)  # as the service returned them
    delivered: list[int] = field(default_factory=list)  # result indices whose image is in ``images``
    lost: dict[int, WanxError] = field(default_factory=dict)  # result indices billed but not downloaded
    error: WanxError | None = None
    cancel_note: CancelNote | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    def report(self) -> ItemReport:
        entry: ItemReport = {
            "index": self.index, "task_id": self.task_id, "request_id": self.request_id, "status": self.state.value,
            "original_size": str(self.original_size), "sent_size": str(self.sent_size),
            "expected_size": str(self.expected_size), "images": len(self.images), "image_count": self.image_count,
            "cached": self.cached, "attached": self.attached, "urls": self.urls, "failures": self.failures,
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
        }
        if self.warnings:
            entry["warnings"] = self.warnings
        if self.notes:
            entry["notes"] = self.notes
        if self.error is not None:
            entry["error"] = str(self.error)
        return entry

    def fate_after_cancel(self) -> CancelNote | None:
        """What a Cancel left of this item's task, when its own cancel call did not say."""
        if self.cancel_note is not None or not self.task_id:
            return self.cancel_note
        if self.state in (ItemState.DONE, ItemState.DOWNLOADING):
            return CancelNote(self.task_id, Fate.FINISHED)
        if self.state is not ItemState.CANCELED:
            return CancelNote(self.task_id, Fate.MAY_RUN, self.state.value)
        return None


def cost(*, image_count: int, currency: str) -> Cost:
    unit_price = PRICE_PER_IMAGE[currency]
    return {"currency": currency, "unit_price": unit_price, "billed": round(image_count * unit_price, 6)}


@dataclass
class EditOutcome:
    function: str
    prompt: str
    parameters: dict[str, object]
    items: list[ItemResult]
    elapsed_s: float
    emulated: bool = False  # the service answered as the emulator: nothing real was made or billed
    output: images.ResultBatch | None = field(default=None, repr=False)  # the results were decoded into it

    @property
    def image_count(self) -> int:
        """Images billed by the service (usage.image_count summed)."""
        return sum(item.image_count for item in self.items)

    def images_tensor(self) -> torch.Tensor:
        """Every result as one float32 [n,H,W,3] batch, grouped per input image, in input order (each
        image's results in the task's order). Decoded into ``output``, that batch is handed over as
        it is (the filled slots moved to the front when some are missing), and the items' images
        become views of the returned tensor."""
        output = self.output
        arrays = [array for item in self.items for array in item.images]
        slots = [[output.slot_of(array) for array in item.images] for item in self.items] if output is not None else []
        in_batch = [sorted(s for s in item_slots if s is not None) for item_slots in slots]
        if output is None or not arrays or sum(map(len, in_batch)) < len(arrays):
            return images.stack_images(arrays)  # no batch, nothing, or some results are not in it (another size)
        filled = [slot for item_slots in in_batch for slot in item_slots]  # ascending: item i's slots start at i*n
        tensor = output.take(filled)
        position = iter(range(len(filled)))
        for item, item_slots in zip(self.items, in_batch, strict=True):
            item.images = [tensor[next(position)].numpy() for _ in item_slots]
        return tensor

    def report(self, *, currency: str = "CNY", emulated: bool | None = None) -> Report:
        """``emulated`` (default: what the service said): ``usage`` is what the emulator counted, and
        nothing is billed."""
        emulated = self.emulated if emulated is None else emulated
        billed = cost(image_count=0 if emulated else self.image_count, currency=currency)
        return {
            "model": MODEL, "function": self.function, "prompt": self.prompt, "parameters": dict(self.parameters),
            "images_in": len(self.items), "images_out": sum(len(item.images) for item in self.items),
            "usage": {"image_count": self.image_count}, "cost": billed,
            "elapsed_s": round(self.elapsed_s, 3), "items": [item.report() for item in self.items],
            "emulated": emulated,
        }


def canceled_error(results: Sequence[ItemResult], *, partial: EditOutcome | None = None) -> CanceledError:
    """What a Cancel did to each task; ``partial`` (as ``exc.outcome``): the images that had already
    arrived, billed, for the adapter to hand over or to mark as not delivered."""
    notes = [note for note in (r.fate_after_cancel() for r in results) if note is not None]
    lines = [note.text() for note in notes]
    unsent = sum(1 for r in results if r.task_id is None and not r.cached)
    if unsent and notes:
        lines.append(f"{unsent} image(s) not sent (not billed)")
    summary = "; ".join(lines) if lines else "no task had been sent"
    billed = [note.task_id for note in notes if note.fate.billed]
    error = CanceledError(f"canceled by the user: {summary}", task_id=billed[0] if billed else None)
    error.outcome = partial
    return error


def nothing_came_back(results: Sequence[ItemResult]) -> WanxError:
    errors = [r.error for r in results if r.error is not None]
    if len(results) == 1 and errors:
        return errors[0]
    if len({str(e) for e in errors}) == 1:
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
    emulated: bool = False

    def images_tensor(self) -> torch.Tensor:
        return images.stack_images(self.images)

    def report(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "status": self.status, "images_out": len(self.images),
                "usage": {"image_count": self.image_count}, "source": self.source, "failures": self.failures,
                "emulated": self.emulated}
