"""`wanx-imageedit`: edit images from the command line, run the demo, serve the emulator, and
list or recover tasks. It runs the same code path as the ComfyUI nodes (edit.prepare/run)."""

from __future__ import annotations

import argparse
import contextlib
import json
import time
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import edit, samples
from .client import DashScopeClient
from .errors import WanxError
from .functions import CUSTOM_STYLE, FUNCTIONS, Kind, Param, lookup
from .quota import Quota, shared_quota
from .settings import Settings
from .store import DEFAULT_CLI_DIR, Store

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

    e = sub.add_parser("emulator", help="serve the emulator on loopback until Ctrl-C")
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--port", type=int, default=8089)
    e.add_argument("--running-s", type=float, nargs=2, default=(5.0, 15.0), metavar=("MIN", "MAX"))
    e.add_argument("--api-key", action="append", default=None,
                   help=f"a key the emulator accepts (repeatable; default {EMULATOR_KEY})")

    sub.add_parser("tasks", help="list this account's wanx2.1-imageedit tasks of the last 24 hours (free)")

    w = sub.add_parser("make-workflows", help="rewrite the example workflows, thumbnails and sample inputs")
    w.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "workflows")

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
            from .emulator import serve_forever

            serve_forever(host=args.host, port=args.port, running_s=tuple(args.running_s),
                          api_keys=tuple(args.api_key or (EMULATOR_KEY,)))
            return 0
        if args.command == "tasks":
            return _tasks()
        if args.command == "make-workflows":
            from .workflows import write_all

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
        (group, edit.prepare(fn, image=torch.cat([loaded[p] for p in group]), mask=mask, prompt=args.prompt,
                             style=args.style, values=values))
        for group in groups.values()
    ]
    with _connection(emulated=args.emulator) as client:
        # A private emulator dies with this process, so its tasks are not journaled.
        store = None if args.emulator else _store(client)
        args.out.mkdir(parents=True, exist_ok=True)
        for group, request in requests_by_group:
            outcome = edit.run(request, client=client, quota=_quota(client), on_progress=_progress_bar,
                               store=store, reuse=not args.new_run)
            _write_outcome(outcome, [p.stem for p in group], args.out, currency=client.settings.currency)
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


def _write_outcome(outcome: edit.EditOutcome, stems: Sequence[str], out: Path, *, currency: str = "CNY") -> list[Path]:
    written = []
    for item, stem in zip(outcome.items, stems, strict=True):
        for i, array in enumerate(item.images):
            path = out / f"{stem}_{outcome.request.fn.api_name}_{i}.png"
            Image.fromarray(array).save(path)
            written.append(path)
        if item.error is not None:
            print(f"  {stem}: {item.error}", file=sys.stderr)
    report_path = out / f"{stems[0]}_{outcome.request.fn.api_name}_report.json"
    report_path.write_text(json.dumps(outcome.report(currency=currency), ensure_ascii=False, indent=2), encoding="utf-8")
    return written


def _progress_bar(progress: edit.Progress) -> None:
    width = 24
    filled = width * progress.finished // progress.total
    active = [f"{state}" + (f" {task_id}" if task_id else "")
              for state, task_id in zip(progress.states, progress.task_ids, strict=True) if state not in edit.FINAL_STATES]
    line = (f"\r[{'#' * filled}{'.' * (width - filled)}] {progress.finished}/{progress.total} "
            f"{progress.elapsed_s:5.1f}s  {'; '.join(active[:2])}")
    print(line[:110].ljust(110), end="\n" if progress.finished == progress.total else "", file=sys.stderr, flush=True)


# --- connections --------------------------------------------------------------------------------


@contextlib.contextmanager
def _connection(*, emulated: bool, running_s: tuple[float, float] = DEMO_RUNNING_S) -> Iterator[DashScopeClient]:
    """The real service from the environment's settings, or a private emulator when asked."""
    if not emulated:
        yield DashScopeClient(Settings.from_env())
        return
    from .emulator import Emulator

    with Emulator(running_s=running_s) as emulator:
        env = {"DASHSCOPE_API_KEY": EMULATOR_KEY, "DASHSCOPE_HTTP_BASE_URL": emulator.base_url}
        print(f"using the bundled emulator at {emulator.base_url} (results are marked EMULATED)", file=sys.stderr)
        yield DashScopeClient(Settings.from_env(env, home=Path(tempfile.gettempdir())))


def _store(client: DashScopeClient) -> Store:
    return Store.open(default_dir=DEFAULT_CLI_DIR, currency=client.settings.currency)


def _quota(client: DashScopeClient) -> Quota:
    return shared_quota(max_in_flight=client.settings.max_in_flight, submits_per_s=client.settings.submits_per_s)


# --- demo ---------------------------------------------------------------------------------------


def _demo(out: Path) -> int:
    """Every function on its sample image, through edit.prepare/run, plus one contact sheet."""
    out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, Image.Image, Image.Image]] = []
    with _connection(emulated=True) as client:
        for fn in FUNCTIONS:
            example = samples.EXAMPLES[fn.api_name]
            source = samples.sample_image(fn.api_name)
            source.save(out / f"input_{fn.api_name}.png")
            mask = samples.sample_mask(fn.api_name)
            image_tensor = torch.from_numpy(np.asarray(source, dtype=np.float32) / 255.0).unsqueeze(0)
            mask_tensor = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0) if mask is not None else None
            request = edit.prepare(fn, image=image_tensor, mask=mask_tensor, prompt=example.prompt,
                                   style=example.style, values=example.values)
            outcome = edit.run(request, client=client, quota=_quota(client))
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
    client = DashScopeClient(Settings.from_env())
    rows = client.list_tasks()
    if not rows:
        print("no wanx2.1-imageedit tasks in the last 24 hours")
    for row in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.created_ms / 1000)) if row.created_ms else "?"
        print(f"{row.task_id}  {row.status.value:10s}  created {created}")
    return 0


def _fetch(task_id: str | None, out: Path) -> int:
    client = DashScopeClient(Settings.from_env())
    recovered = edit.recover(task_id, client=client, store=_store(client))
    out.mkdir(parents=True, exist_ok=True)
    for i, array in enumerate(recovered.images):
        Image.fromarray(array).save(out / f"{recovered.task_id}_{i}.png")
    for failure in recovered.failures:
        print(f"  image {failure['image']} failed: {failure['code']} {failure['message']}", file=sys.stderr)
    print(f"{len(recovered.images)} image(s) of task {recovered.task_id} ({recovered.source}) in {out.resolve()}")
    return 0
