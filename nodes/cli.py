"""`wanx-imageedit`: edit images from the command line, run the demo, serve the emulator, and
list or recover tasks. It runs the same code path as the ComfyUI nodes (request.prepare, runner.run)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .authoring import samples
from .core.client import DashScopeClient
from .core.errors import WanxError
from .core.functions import CUSTOM_STYLE, FUNCTIONS, Kind, Param, lookup
from .core.outcome import EditOutcome, Progress
from .core.request import prepare
from .core.settings import Settings, StateSettings
from .core.store import DEFAULT_CLI_DIR, Store
from .core.wiring import Engine, connect

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
EMULATOR_KEY = "sk-emulator-key"
DEMO_RUNNING_S = (0.3, 0.8)  # a private emulator is for trying things out: short tasks


def _all_params() -> list[Param]:
    seen: dict[str, Param] = {}
    for fn in FUNCTIONS:
        for param in fn.all_params:
            seen.setdefault(param.name, param)
    return list(seen.values())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wanx-imageedit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("edit", help="run one edit function on an image or a folder of images")
    p.add_argument("function", help="one of: " + ", ".join(f.api_name for f in FUNCTIONS))
    p.add_argument("--image", required=True, type=Path, help="an image file, or a folder of them")
    p.add_argument("--mask", type=Path, help="mask image (white = edit), for description_edit_with_mask")
    p.add_argument("--prompt", default="", help="the prompt (Chinese or English)")
    p.add_argument("--style", default=CUSTOM_STYLE, help="a style of the stylization functions")
    for param in _all_params():
        flag = "--" + param.name.replace("_", "-")
        if param.kind is Kind.BOOL:
            p.add_argument(flag, dest=param.name, action=argparse.BooleanOptionalAction, default=None, help=param.help_en)
        else:
            p.add_argument(flag, dest=param.name, type=int if param.kind is Kind.INT else float, default=None,
                           help=f"{param.help_en} ({param.minimum}..{param.maximum}, default {param.default})")
    p.add_argument("--out", type=Path, default=Path("wanx_output"), help="output folder")
    p.add_argument("--emulator", action="store_true", help="run against the bundled emulator, not the real service")
    p.add_argument("--new-run", action="store_true",
                   help="pay for a new run even if an identical seeded edit is in the result cache")

    d = sub.add_parser("demo", help="all ten functions on generated samples, against the bundled emulator")
    d.add_argument("--out", type=Path, default=Path("wanx_output/demo"))

    from .emulator.command import add_arguments as add_emulator_arguments  # its options are defined once, there

    e = sub.add_parser("emulator", help="serve the emulator on loopback until Ctrl-C (faults can be queued)")
    add_emulator_arguments(e)

    sub.add_parser("tasks", help="list this account's wanx2.1-imageedit tasks of the last 24 hours (free)")

    w = sub.add_parser("make-workflows", help="rewrite the example workflows, thumbnails and sample inputs")
    w.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "workflows")

    f = sub.add_parser("fetch", help="recover the results of a task (kept 24 hours); costs nothing")
    f.add_argument("task_id", nargs="?", help="default: the newest journaled task whose results were never saved")
    f.add_argument("--out", type=Path, default=Path("wanx_output"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "edit":
            return _edit(args)
        if args.command == "demo":
            return _demo(args.out)
        if args.command == "emulator":
            from .emulator.command import serve

            return serve(args)
        if args.command == "tasks":
            return _tasks()
        if args.command == "make-workflows":
            from .authoring.workflows import write_all

            print(f"{len(write_all(args.out))} files written to {args.out}")
            return 0
        return _fetch(args.task_id, args.out)
    except WanxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


# --- edit ---------------------------------------------------------------------------------------


def _edit(args: argparse.Namespace) -> int:
    fn = lookup(args.function)
    values = {p.name: getattr(args, p.name) for p in _all_params() if getattr(args, p.name) is not None}
    paths = _image_paths(args.image)
    mask = _load_mask(args.mask) if args.mask else None
    groups: dict[tuple[int, ...], list[Path]] = {}
    loaded = {path: _load_image(path) for path in paths}
    for path, tensor in loaded.items():
        groups.setdefault(tuple(tensor.shape), []).append(path)
    # Validate every group before sending anything: one bad file must not leave others half-paid.
    requests_by_group = [
        (group, prepare(fn, image=torch.cat([loaded[p] for p in group]), mask=mask, prompt=args.prompt,
                             style=args.style, values=values))
        for group in groups.values()
    ]
    with _connection(emulated=args.emulator) as engine:
        args.out.mkdir(parents=True, exist_ok=True)
        for group, request in requests_by_group:
            outcome = engine.run(request, on_progress=_progress_bar, reuse=not args.new_run)
            _write_outcome(outcome, [p.stem for p in group], args.out, currency=engine.settings.currency)
    print(f"results in {args.out.resolve()}")
    return 0


def _image_paths(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise WanxError(f"no images in {path}", advice="Use a folder of PNG/JPEG/BMP/TIFF/WEBP files.")
        return found
    if not path.is_file():
        raise WanxError(f"no such file: {path}", advice="Check the path.")
    return [path]


def _load_image(path: Path) -> torch.Tensor:
    """A file as IMAGE [1,H,W,C]; alpha is kept so the codec's flattening rule applies."""
    with Image.open(path) as source:
        image = source.convert("RGBA" if "A" in source.getbands() or "transparency" in source.info else "RGB")
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).unsqueeze(0)


def _load_mask(path: Path) -> torch.Tensor:
    with Image.open(path) as source:
        return torch.from_numpy(np.asarray(source.convert("L"), dtype=np.float32) / 255.0).unsqueeze(0)


def _write_outcome(outcome: EditOutcome, stems: Sequence[str], out: Path, *, currency: str = "CNY") -> list[Path]:
    written = []
    for item, stem in zip(outcome.items, stems, strict=True):
        for i, array in enumerate(item.images):
            path = out / f"{stem}_{outcome.function}_{i}.png"
            Image.fromarray(array).save(path)
            written.append(path)
        if item.error is not None:
            print(f"  {stem}: {item.error}", file=sys.stderr)
    report_path = out / f"{stems[0]}_{outcome.function}_report.json"
    report_path.write_text(json.dumps(outcome.report(currency=currency), ensure_ascii=False, indent=2), encoding="utf-8")
    return written


def _progress_bar(progress: Progress) -> None:
    width = 24
    filled = width * progress.finished // progress.total
    active = [f"{state.value}" + (f" {task_id}" if task_id else "")
              for state, task_id in zip(progress.states, progress.task_ids, strict=True) if not state.final]
    line = (f"\r[{'#' * filled}{'.' * (width - filled)}] {progress.finished}/{progress.total} "
            f"{progress.elapsed_s:5.1f}s  {'; '.join(active[:2])}")
    print(line[:110].ljust(110), end="\n" if progress.finished == progress.total else "", file=sys.stderr, flush=True)


# --- connections --------------------------------------------------------------------------------


@contextlib.contextmanager
def _connection(*, emulated: bool, running_s: tuple[float, float] = DEMO_RUNNING_S) -> Iterator[Engine]:
    """The real service from the environment's settings, or a private emulator when asked. A
    private emulator dies with this process, so its tasks are not journaled, cached or budgeted."""
    if not emulated:
        current = Settings.from_env()
        yield connect(current, store=_store(current))
        return
    from .emulator import Emulator

    with Emulator(running_s=running_s) as emulator:
        env = {"DASHSCOPE_API_KEY": EMULATOR_KEY, "DASHSCOPE_HTTP_BASE_URL": emulator.base_url}
        print(f"using the bundled emulator at {emulator.base_url} (results are marked EMULATED)", file=sys.stderr)
        yield connect(Settings.from_env(env, home=Path(tempfile.gettempdir())), store=None)


def _store(current: Settings) -> Store:
    return Store.open(StateSettings.from_env(default_dir=DEFAULT_CLI_DIR, currency=current.currency))


# --- demo ---------------------------------------------------------------------------------------


def _demo(out: Path) -> int:
    """Every function on its sample image, through request.prepare, runner.run, plus one contact sheet."""
    out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, Image.Image, Image.Image]] = []
    with _connection(emulated=True) as engine:
        for fn in FUNCTIONS:
            example = fn.example
            source = samples.sample_image(example.scene)
            source.save(out / f"input_{fn.api_name}.png")
            mask = samples.sample_mask(example.scene)
            image_tensor = torch.from_numpy(np.asarray(source, dtype=np.float32) / 255.0).unsqueeze(0)
            mask_tensor = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0) if mask is not None else None
            request = prepare(fn, image=image_tensor, mask=mask_tensor, prompt=example.prompt,
                                   style=example.style, values=example.values)
            outcome = engine.run(request)
            (result_path,) = _write_outcome(outcome, ["demo"], out)[:1]
            print(f"  {fn.api_name:28s} {outcome.items[0].sent_size} -> {outcome.items[0].images[0].shape[1]}x"
                  f"{outcome.items[0].images[0].shape[0]}  task {outcome.items[0].task_id}", file=sys.stderr)
            rows.append((f"{fn.title_en} / {fn.api_name}", source, Image.open(result_path).convert("RGB")))
    sheet = _contact_sheet(rows)
    sheet_path = out / "contact_sheet.png"
    sheet.save(sheet_path)
    print(f"demo results and contact sheet in {out.resolve()}")
    print(f"contact sheet: {sheet_path.resolve()}")
    return 0


def _contact_sheet(rows: Sequence[tuple[str, Image.Image, Image.Image]], *, cell_px: int = 256) -> Image.Image:
    label_px = 24
    sheet = Image.new("RGB", (cell_px * 2 + 30, len(rows) * (cell_px + label_px + 10) + 10), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (label, source, result) in enumerate(rows):
        top = 10 + row * (cell_px + label_px + 10)
        draw.text((10, top), f"{label}   input -> result", fill="black")
        for column, picture in enumerate((source, result)):
            thumb = picture.copy()
            thumb.thumbnail((cell_px, cell_px))
            sheet.paste(thumb, (10 + column * (cell_px + 10), top + label_px))
    return sheet


# --- task tools ---------------------------------------------------------------------------------


def _tasks() -> int:
    rows = DashScopeClient(Settings.from_env()).list_tasks()
    if not rows:
        print("no wanx2.1-imageedit tasks in the last 24 hours")
    for row in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.created_ms / 1000)) if row.created_ms else "?"
        print(f"{row.task_id}  {row.status.value:10s}  created {created}")
    return 0


def _fetch(task_id: str | None, out: Path) -> int:
    current = Settings.from_env()
    recovered = connect(current, store=_store(current)).recover(task_id)
    out.mkdir(parents=True, exist_ok=True)
    for i, array in enumerate(recovered.images):
        Image.fromarray(array).save(out / f"{recovered.task_id}_{i}.png")
    for failure in recovered.failures:
        print(f"  image {failure['image']} failed: {failure['code']} {failure['message']}", file=sys.stderr)
    print(f"{len(recovered.images)} image(s) of task {recovered.task_id} ({recovered.source}) in {out.resolve()}")
    return 0
