"""`wanx-imageedit`: edit images from the command line, run the demo, serve the emulator, and
list or recover tasks. It runs the same code path as the ComfyUI nodes (request.prepare, runner.run).

What the terminal shows: stdout gets the results (files written, cost, task lists); stderr gets
one transient status line (every image's state, within the terminal's width), the notes on what
was done to the inputs, and errors. A user error is one line and exit status 2; Ctrl-C cancels
pending tasks, says what is still billed, and exits 130; anything unexpected is one line naming
the log file that holds its traceback (exit status 1)."""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from .authoring import samples
from .core.client import DashScopeClient
from .core.errors import CanceledError, ConfigError, WanxError
from .core.functions import CUSTOM_STYLE, FUNCTIONS, PRICE_PER_IMAGE, SEED, EditFunction, Kind, Param, lookup
from .core.outcome import EditOutcome, ItemResult, ItemState, Progress
from .core.request import EditRequest, merge, prepare
from .core.settings import BASE_URL_ENV, EMULATOR_KEY, KEY_ENV, Settings, StateSettings
from .core.store import DEFAULT_CLI_DIR, Store
from .core.wiring import Engine, connect

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
DEMO_RUNNING_S = (0.3, 0.8)  # a private emulator is for trying things out: short tasks
EXIT_BUG = 1
EXIT_ERROR = 2  # a user error, a refusal, a failed run: nothing more to do than the message says
EXIT_INTERRUPTED = 130  # the shells' convention for Ctrl-C
HEARTBEAT_S = 10.0  # when stderr is not a terminal, the status line is repeated this often
REPO_ROOT = Path(__file__).resolve().parents[1]


# --- the parser ---------------------------------------------------------------------------------


def _version() -> str:
    """The project's version: pyproject.toml in a clone (the source of truth), else the installed metadata."""
    pyproject = REPO_ROOT / "pyproject.toml"
    if pyproject.is_file():
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.MULTILINE)
        if found:
            return found.group(1)
    try:
        return importlib.metadata.version("wanx-imageedit")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _all_params() -> list[Param]:
    seen: dict[str, Param] = {}
    for fn in FUNCTIONS:
        for param in fn.all_params:
            seen.setdefault(param.name, param)
    return list(seen.values())


def _param_help(param: Param) -> str:
    if param is SEED:
        return (f"{param.help_en} ({_num(param.minimum)}..{_num(param.maximum)}). Not given: no seed is sent, the "
                "service picks one, and the result cache is not used (every run is new and billed).")
    if param.kind is Kind.BOOL:
        return f"{param.help_en} (default {'on' if param.default else 'off'})"
    users = ", ".join(fn.api_name for fn in FUNCTIONS if param in fn.params)
    where = f"; {users} only" if users else ""
    return f"{param.help_en} ({_num(param.minimum)}..{_num(param.maximum)}, default {param.default}{where})"


def _num(value: float | None) -> str:
    return "?" if value is None else str(int(value)) if float(value).is_integer() else str(value)


def _style_help() -> str:
    per_function = "; ".join(f"{fn.api_name}: {', '.join(s.key for s in fn.styles.styles)}"
                             for fn in FUNCTIONS if fn.styles is not None)
    return (f"a documented style ({per_function}), or {CUSTOM_STYLE} (the default) to send --prompt as written; "
            "stylization_local also needs --prompt naming the object to restyle")


def _functions_epilog() -> str:
    lines = ["functions and the flags they take (besides --n, --seed, --watermark):"]
    for fn in FUNCTIONS:
        flags = [f"--{p.name.replace('_', '-')}" for p in fn.params]
        if fn.needs_mask:
            flags.insert(0, "--mask (required)")
        if fn.styles is not None:
            flags.insert(0, "--style")
        prompt = "--prompt required" if fn.prompt_required else f"--prompt (default {fn.default_prompt!r})" \
            if fn.default_prompt else "--prompt"
        lines.append(f"  {fn.api_name:26s} {fn.title_en}: {', '.join([prompt, *flags])}")
    return "\n".join(lines)


def _fault_guide() -> str:
    """Every fault and outcome the emulator can be given, with what it does: the fault module's own
    guide (one text, shown here and read in the code)."""
    from .emulator import faults

    guide = (faults.__doc__ or "").replace("``", "")
    for api, option in (("inject(route, f1, f2, ...) queues faults", "--fault ROUTE=FAULT (repeatable) queues faults"),
                        ("next_task_outcomes(o1, o2, ...) applies", "--outcome OUTCOME (repeatable) applies")):
        guide = guide.replace(api, option)
    start, end = guide.find("Route faults"), guide.find("Signed result links")
    return guide[start:end].strip() if 0 <= start < end else ""


class _DefaultsHelp(argparse.RawDescriptionHelpFormatter):
    """Adds each option's default to its help, unless the help already names one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if not action.option_strings or "default" in text or default is None or default is False \
                or default == [] or default == argparse.SUPPRESS:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else str(default)
        return f"{text} (default {shown})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wanx-imageedit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("edit", help="run one edit function on an image or a folder of images",
                       description=textwrap.fill(
                           "Run one edit function on an image, or on every image of a folder (one task per image, "
                           "all sharing the account's quota). Uses the service the key is configured for; "
                           "--emulator runs against a private emulator instead (nothing billed).", width=90),
                       epilog=_functions_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("function", help="one of: " + ", ".join(f.api_name for f in FUNCTIONS))
    p.add_argument("--image", required=True, type=Path, help="an image file, or a folder of them")
    p.add_argument("--mask", type=Path,
                   help="mask image of the image's size (white = edit), for description_edit_with_mask")
    p.add_argument("--prompt", default="", help="the prompt (Chinese or English)")
    p.add_argument("--style", default=CUSTOM_STYLE, help=_style_help())
    for param in _all_params():
        flag = "--" + param.name.replace("_", "-")
        text = _param_help(param).replace("%", "%%")
        if param.kind is Kind.BOOL:
            p.add_argument(flag, dest=param.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            p.add_argument(flag, dest=param.name, type=int if param.kind is Kind.INT else float, default=None,
                           help=text)
    p.add_argument("--out", type=Path, default=Path("wanx_output"), help="output folder (default wanx_output)")
    p.add_argument("--emulator", action="store_true",
                   help="run against a private bundled emulator, not the real service: no key needed, nothing "
                   "billed, results stamped EMULATED")
    p.add_argument("--new-run", action="store_true",
                   help="pay for a new run even if an identical seeded edit is in the result cache")

    d = sub.add_parser("demo", help="all ten functions on generated samples, against the bundled emulator")
    d.add_argument("--out", type=Path, default=Path("wanx_output/demo"),
                   help="folder for the inputs, results and contact sheet (default wanx_output/demo)")

    from .emulator.command import add_arguments as add_emulator_arguments  # its options are defined once, there

    e = sub.add_parser(
        "emulator", help="serve the emulator on loopback until Ctrl-C (faults can be queued)",
        description=textwrap.fill(
            "A local emulator of DashScope wanx2.1-imageedit: the same routes, the key and async-header checks, the "
            "documented validation, tasks going PENDING -> RUNNING -> SUCCEEDED/FAILED, 2 submissions per second "
            "and 2 running tasks, and deterministic results stamped EMULATED. Point the pack at it with "
            f"{BASE_URL_ENV}=http://127.0.0.1:PORT/api/v1 and {KEY_ENV}={EMULATOR_KEY}.", width=90))
    add_emulator_arguments(e)
    e.formatter_class = _DefaultsHelp
    e.epilog = _fault_guide()

    sub.add_parser("tasks", help="list this account's wanx2.1-imageedit tasks of the last 24 hours (free)")

    w = sub.add_parser("make-workflows", help="rewrite the example workflows, thumbnails and sample inputs")
    w.add_argument("--out", type=Path, default=REPO_ROOT / "workflows",
                   help="folder to write them to (default: the pack's workflows/)")

    f = sub.add_parser("fetch", help="recover the results of a task (kept 24 hours); costs nothing")
    f.add_argument("task_id", nargs="?", help="default: the newest journaled task whose results were never saved")
    f.add_argument("--out", type=Path, default=Path("wanx_output"),
                   help="folder to write the images to, as TASK_ID_0.png ... (default wanx_output)")
    return parser


# --- main ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    term = Terminal(sys.stderr)
    handler = _LogToTerminal(term)
    package_log = logging.getLogger(__name__.rsplit(".", 2)[0])
    package_log.addHandler(handler)
    try:
        return _dispatch(args, term)
    except CanceledError as exc:
        term.say(_canceled_text(exc))
        return EXIT_INTERRUPTED
    except WanxError as exc:
        term.say(f"error: {_explain(exc)}")
        return EXIT_ERROR
    except KeyboardInterrupt:  # outside a run (a run turns Ctrl-C into CanceledError): nothing was in flight
        term.say("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        where = _crash_log(exc, argv=sys.argv if argv is None else ["wanx-imageedit", *argv])
        saved = f"the full traceback is in {where}" if where else "the traceback could not be saved"
        term.say(f"error: unexpected {type(exc).__name__}: {_scrub(str(exc))}. This is a bug in wanx-imageedit; "
                 f"{saved}. Please report it with that file.")
        return EXIT_BUG
    finally:
        package_log.removeHandler(handler)


def _dispatch(args: argparse.Namespace, term: Terminal) -> int:
    if args.command == "edit":
        return _edit(args, term)
    if args.command == "demo":
        return _demo(args.out, term)
    if args.command == "emulator":
        from .emulator.command import serve

        return serve(args)
    if args.command == "tasks":
        return _tasks()
    if args.command == "make-workflows":
        from .authoring.workflows import write_all

        print(f"{len(write_all(args.out))} files written to {args.out}")
        return 0
    return _fetch(args.task_id, args.out, term)


# --- the terminal -------------------------------------------------------------------------------


class Terminal:
    """stderr as the user sees it: one transient status line, and messages that never end up glued
    to it. On a terminal the status line is rewritten in place; into a file or a pipe it is
    written when its ``key`` changes (or every HEARTBEAT_S), so logs stay readable."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.live = stream.isatty()
        self._shown = 0  # characters of the status line now on screen (live only)
        self._key: object = None
        self._written_at = time.monotonic()
        self._lock = threading.Lock()

    @staticmethod
    def width() -> int:
        """Characters a status line may take: one less than the terminal's width, so it never wraps."""
        return max(20, shutil.get_terminal_size((100, 24)).columns - 1)

    def status(self, text: str, *, key: object = None) -> None:
        with self._lock:
            if self.live:
                text = text[: self.width()]
                self._stream.write("\r" + text + " " * max(0, self._shown - len(text)))
                self._shown = len(text)
            else:
                now = time.monotonic()
                if (key is None or key == self._key) and now - self._written_at < HEARTBEAT_S:
                    return
                self._stream.write(text + "\n")
                self._key, self._written_at = key, now
            self._stream.flush()

    def say(self, message: str) -> None:
        """A message on lines of its own; the status line is erased first (the next update redraws it)."""
        with self._lock:
            self._erase()
            self._stream.write(message + "\n")
            self._stream.flush()

    def end(self, final: str | None) -> None:
        """The wait is over: keep ``final`` as the last status line (written once), or with None erase it."""
        with self._lock:
            if self.live and final is not None:
                final = final[: self.width()]
                self._stream.write("\r" + final + " " * max(0, self._shown - len(final)) + "\n")
                self._shown = 0
            elif final is not None:
                self._stream.write(final + "\n")
            else:
                self._erase()
            self._key, self._written_at = None, time.monotonic()
            self._stream.flush()

    def _erase(self) -> None:
        if self.live and self._shown:
            self._stream.write("\r" + " " * self._shown + "\r")
            self._shown = 0


class _LogToTerminal(logging.Handler):
    """The pack's warnings as one line each, never glued to the status line; a traceback that comes
    with one (a bug the runner caught, so the other images went on) goes to a crash log it names."""

    def __init__(self, term: Terminal) -> None:
        super().__init__(level=logging.WARNING)
        self._term = term

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = f"warning: {_scrub(record.getMessage())}"
            if record.exc_info and record.exc_info[1] is not None:
                where = _crash_log(record.exc_info[1], argv=sys.argv)
                line += f" (the traceback is in {where})" if where else ""
            self._term.say(line)
        except Exception:  # a log line must never break a run
            self.handleError(record)


def progress_text(progress: Progress, labels: Sequence[str], *, width: int) -> str:
    """Every image's state in at most ``width`` characters: with task ids when they fit, else
    without, else with shortened names, else as a count per state."""
    head = f"[{progress.finished}/{progress.total}] {progress.elapsed_s:.0f} s  "

    def each(name_chars: int | None, ids: bool) -> str:
        parts = []
        for label, state, task_id in zip(labels, progress.states, progress.task_ids, strict=True):
            name = label if name_chars is None else _shorten(label, name_chars)
            parts.append(f"{name} {state.value}" + (f" {task_id}" if ids and task_id else ""))
        return head + ", ".join(parts)

    for line in (each(None, True), each(None, False), each(16, False), each(8, False)):
        if len(line) <= width:
            return line
    counts = collections.Counter(progress.states)
    line = head + ", ".join(f"{counts[state]} {state.value}" for state in ItemState if counts[state])
    return line[:width]


def _shorten(name: str, chars: int) -> str:
    return name if len(name) <= chars else name[: chars - 3] + "..."


# --- interruptions and the unexpected -----------------------------------------------------------


@contextlib.contextmanager
def _interruptible() -> Iterator[threading.Event]:
    """Within it, the first Ctrl-C asks the run to stop (the runner cancels pending tasks on the
    service and says which running ones are billed) instead of raising in the middle of an HTTP
    call; a second Ctrl-C raises KeyboardInterrupt at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_sigint(signum: int, frame: object) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _known_keys() -> list[str]:
    keys = [os.environ.get(KEY_ENV, "").strip()]
    with contextlib.suppress(Exception):
        keys.append(Settings.from_env().api_key)
    return [key for key in keys if len(key) >= 4]


def _scrub(text: str) -> str:
    """Never print or log the key, whatever an unexpected message contains."""
    for key in _known_keys():
        text = text.replace(key, "<API key>")
    return text


def _crash_log(exc: BaseException, *, argv: Sequence[str]) -> Path | None:
    """Write the traceback to <state folder>/logs (else the temp folder); the path, or None."""
    text = (f"wanx-imageedit {_version()}, Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
            f"command: {' '.join(argv)}\n\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    folders = []
    with contextlib.suppress(Exception):
        folders.append(StateSettings.from_env(default_dir=DEFAULT_CLI_DIR).folder / "logs")
    folders.append(Path(tempfile.gettempdir()))
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
            path.write_text(_scrub(text), encoding="utf-8")
            return path
        except OSError:
            continue
    return None


def _key_shape(key: str) -> tuple[str, bool] | None:
    """What is wrong with the key's shape, and whether no endpoint could ever take it. DashScope
    keys look like sk-... (spec section 2); a gateway may take others, so that rule only explains
    a refusal and never stops a request."""
    if any(c.isspace() for c in key):
        return "contains a space or a line break", True
    if any(c in "\"'`" for c in key):
        return "contains quote marks", True
    if not key.isascii() or not key.isprintable():
        return "contains characters that no API key has", True
    if not key.startswith("sk-"):
        return "does not start with sk-", False
    return None


def _canceled_text(exc: CanceledError) -> str:
    """What a Cancel left of each task: one line, or one line per task when there are several."""
    text = exc.text(for_cli=True)
    head, sep, rest = text.partition(": ")
    parts = re.split(r"; (?=task |\d+ image)", rest.rstrip("."))
    return text if not sep or len(parts) < 2 else head + ":\n" + "\n".join(f"  {part}" for part in parts)


def _explain(exc: WanxError) -> str:
    """The CLI's wording of an error; a refused key of the wrong shape gets its own explanation."""
    if exc.code == "InvalidApiKey":
        with contextlib.suppress(WanxError):
            current = Settings.from_env()
            shape = _key_shape(current.api_key)
            if shape is not None:
                return (f"{exc.what} (code InvalidApiKey). The key from {current.key_source} {shape[0]}, so it is "
                        "not a DashScope key at all (they look like sk- followed by letters and digits): check "
                        "for a copy-paste mistake, copy it again from the Model Studio console (China (Beijing)), "
                        f"then `export {KEY_ENV}=sk-...`.")
    return exc.text(for_cli=True)


# --- edit ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Input:
    path: Path
    label: str  # how messages name it: the file name, made unique
    stem: str  # how its results are named
    notes: tuple[str, ...]  # what reading the file did (rotated upright, 16-bit scaled)


def _edit(args: argparse.Namespace, term: Terminal) -> int:
    fn = lookup(args.function)
    values = {p.name: getattr(args, p.name) for p in _all_params() if getattr(args, p.name) is not None}
    paths = _image_paths(args.image)
    mask = _load_mask(args.mask) if args.mask else None
    inputs, request = _prepare_all(fn, paths, mask=mask, prompt=args.prompt, style=args.style, values=values)
    _make_folder(args.out)
    with _connection(emulated=args.emulator, term=term) as engine:
        for one, item in zip(inputs, request.items, strict=True):
            for note in (*one.notes, *item.notes):
                term.say(f"{one.label}: {note}")
        try:
            outcome = _run(engine, request, [one.label for one in inputs], term, reuse=not args.new_run,
                           private=args.emulator)
        except CanceledError as exc:
            _keep_arrived(exc, inputs, args.out, term=term)
            raise
        emulated = args.emulator or engine.client.emulated
        report_name = f"{args.image.name if args.image.is_dir() else inputs[0].stem}_{fn.api_name}_report.json"
        for one, item, result in zip(inputs, request.items, outcome.items, strict=True):
            for note in result.notes:  # what only sending showed (the JPEG fallback)
                if note not in item.notes:
                    term.say(f"{one.label}: {note}")
        written = _write_outcome(outcome, inputs, args.out, report_name=report_name, emulated=emulated,
                                 currency=engine.settings.currency, term=term)
    print(written)
    return 0


def _prepare_all(fn: EditFunction, paths: Sequence[Path], *, mask: torch.Tensor | None, prompt: str, style: str,
                 values: dict[str, object]) -> tuple[list[_Input], EditRequest]:
    """Every file read and checked before anything is sent (one bad file must not leave others
    half-paid), one by one so each is named in its error, then merged into one run: images of any
    size each get their own task, and all of them share the quota at once."""
    labels, stems = _unique_names(paths)
    inputs, requests = [], []
    for path, label, stem in zip(paths, labels, stems, strict=True):
        image, notes = _load_image(path)
        try:
            requests.append(prepare(fn, image=image, mask=mask, prompt=prompt, style=style, values=values))
        except WanxError as exc:
            if len(paths) == 1:
                raise
            raise WanxError(f"{label}: {exc.what}", advice=exc.advice) from None
        inputs.append(_Input(path=path, label=label, stem=stem, notes=notes))
    return inputs, merge(requests)


def _unique_names(paths: Sequence[Path]) -> tuple[list[str], list[str]]:
    """File names for messages and stems for results; a stem shared by two files (a.png, a.jpg)
    keeps its suffix, so no result overwrites another."""
    stems = [p.stem for p in paths]
    counts = collections.Counter(stems)
    return [p.name for p in paths], [p.stem if counts[p.stem] == 1 else p.name.replace(".", "_") for p in paths]


def _image_paths(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise WanxError(f"no images in {path}", advice="Use a folder of PNG/JPEG/BMP/TIFF/WEBP files.")
        return found
    _check_file(path, flag="--image")
    return [path]


def _check_file(path: Path, *, flag: str) -> None:
    if not path.exists():
        raise WanxError(f"no such file: {path}", advice=f"Check the {flag} path.")
    if not path.is_file():
        raise WanxError(f"{path} is not a file", advice=f"Give {flag} an image file.")


def _open_image(path: Path, *, flag: str) -> tuple[Image.Image, tuple[str, ...]]:
    """The file's pixels, upright as a viewer shows them (EXIF orientation, as ComfyUI's Load Image),
    or one clear error: never a Pillow traceback."""
    _check_file(path, flag=flag)
    try:
        with Image.open(path) as source:
            source.load()
            rotated = source.getexif().get(0x0112, 1) not in (1, None)
            picture = ImageOps.exif_transpose(source)
    except Image.DecompressionBombError:
        raise WanxError(f"{path} has too many pixels to open safely",
                        advice="Downscale it first: at most 4096 px per side is sent anyway.") from None
    except PermissionError:
        raise WanxError(f"cannot read {path}: permission denied", advice="Check the file's permissions.") from None
    except (OSError, ValueError, SyntaxError) as exc:  # UnidentifiedImageError is an OSError
        reason = "not an image format Pillow knows" if "cannot identify" in str(exc) else _scrub(str(exc))
        raise WanxError(f"{path} is not an image file that can be read ({reason})",
                        advice=f"Give {flag} a PNG, JPEG, BMP, TIFF or WEBP file.") from None
    return picture, ("turned upright as its EXIF orientation says",) if rotated else ()


def _load_image(path: Path) -> tuple[torch.Tensor, tuple[str, ...]]:
    """A file as IMAGE [1,H,W,C]; alpha is kept so the codec's flattening rule applies."""
    picture, notes = _open_image(path, flag="--image")
    if picture.mode.startswith("I"):  # 16-bit PNG and TIFF: convert("RGB") would clip them to white
        gray = np.clip(np.asarray(picture, dtype=np.float32) / 65535.0, 0.0, 1.0)
        return torch.from_numpy(np.repeat(gray[..., None], 3, axis=-1)).unsqueeze(0), notes
    alpha = "A" in picture.getbands() or "transparency" in picture.info
    array = np.asarray(picture.convert("RGBA" if alpha else "RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).unsqueeze(0), notes


def _load_mask(path: Path) -> torch.Tensor:
    picture, _ = _open_image(path, flag="--mask")
    return torch.from_numpy(np.asarray(picture.convert("L"), dtype=np.float32) / 255.0).unsqueeze(0)


def _make_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WanxError(f"cannot create the output folder {out} ({exc.strerror})",
                        advice="Choose another --out folder.") from None


def _run(engine: Engine, request: EditRequest, labels: Sequence[str], term: Terminal, *, reuse: bool,
         private: bool, keep_final: bool = True) -> EditOutcome:
    """runner.run with the status line (its final state kept, unless the caller reports the
    outcome itself), and Ctrl-C turned into the runner's Cancel."""
    latest: list[Progress] = []

    def on_progress(progress: Progress) -> None:
        latest[:] = [progress]
        term.status(progress_text(progress, labels, width=term.width()))

    try:
        with _interruptible() as stop:
            outcome = engine.run(request, reuse=reuse, should_cancel=stop.is_set, on_progress=on_progress,
                                 keep_files=True)
    except CanceledError as exc:
        term.end(None)
        if private:  # its tasks die with this process: nothing to recover, nothing billed
            raise CanceledError("canceled by the user; this was an emulated run on a private emulator, so nothing "
                                "was billed and there is nothing to recover") from None
        raise exc from None
    except BaseException:
        term.end(None)  # the error alone, not a full bar before it
        raise
    term.end(progress_text(latest[-1], labels, width=term.width()) if latest and keep_final else None)
    return outcome


def _write_outcome(outcome: EditOutcome, inputs: Sequence[_Input], out: Path, *, report_name: str, emulated: bool,
                   currency: str, term: Terminal) -> str:
    """Write every result (the bytes as the service returned them) and the report; say what happened
    to each image on stderr, and return the summary for stdout: files written and the cost."""
    lines = []
    for item, one in zip(outcome.items, inputs, strict=True):
        files = item.files if len(item.files) == len(item.images) else [None] * len(item.images)
        paths = [_save_result(data, array, out / f"{one.stem}_{outcome.function}_{i}")
                 for i, (data, array) in enumerate(zip(files, item.images, strict=True))]
        for path, array in zip(paths, item.images, strict=True):
            lines.append(f"  {path.name}  {array.shape[1]}x{array.shape[0]}  from {one.label}")
        if item.cached:
            term.say(f"{one.label}: from the result cache (task {item.task_id}): nothing sent, nothing billed")
        elif item.attached:
            term.say(f"{one.label}: attached to task {item.task_id} of an identical edit already paid for: "
                     "nothing new sent or billed")
        if item.error is not None:
            term.say(f"{one.label}: failed: {_explain(item.error)}")
        for failure in item.failures:  # one result of several: failed on the service, or billed but not downloaded
            term.say(f"{one.label}: result {int(failure['image']) + 1} of {outcome.parameters.get('n', 1)} failed: "
                     f"{failure['code'] or 'no code'}: {failure['message']}")
        for warning in item.warnings:
            term.say(f"{one.label}: warning: {warning}")
    report = outcome.report(currency=currency, emulated=emulated)
    for entry, one in zip(report["items"], inputs, strict=True):
        entry["input"] = str(one.path)  # type: ignore[typeddict-unknown-key]  # the CLI's own field
    report_path = out / report_name
    report_path.write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    failed = sum(1 for item in outcome.items if not item.images)
    head = f"wrote {len(lines)} image{'s' if len(lines) != 1 else ''} to {out.resolve()}"
    if failed:
        head += f" ({failed} of {len(outcome.items)} inputs failed, see above)"
    cost_line = _cost_line(outcome.items, currency=currency, emulated=emulated)
    return "\n".join([head + ":", *lines, f"  {report_path.name}  the report", cost_line])


def _keep_arrived(exc: CanceledError, inputs: Sequence[_Input], out: Path, *, term: Terminal) -> None:
    """On Ctrl-C, the images that had already arrived (billed) are written, not dropped."""
    if not isinstance(exc.outcome, EditOutcome):
        return
    for item in exc.outcome.items:
        one = inputs[item.index]
        files = item.files if len(item.files) == len(item.images) else [None] * len(item.images)
        for i, (data, array) in enumerate(zip(files, item.images, strict=True)):
            path = _save_result(data, array, out / f"{one.stem}_{exc.outcome.function}_{i}")
            term.say(f"{one.label}: kept {path} (it had arrived before the cancel)")


def _save_result(data: bytes | None, array: np.ndarray, stem: Path) -> Path:
    """The file exactly as the service returned it when the run kept it and it is a PNG or JPEG;
    else the decoded image as PNG."""
    if data is None:
        path = stem.with_suffix(".png")
        Image.fromarray(array).save(path)
    elif data.startswith(b"\x89PNG\r\n\x1a\n"):
        path = stem.with_suffix(".png")
        path.write_bytes(data)
    elif data.startswith(b"\xff\xd8"):
        path = stem.with_suffix(".jpg")
        path.write_bytes(data)
    else:
        path = stem.with_suffix(".png")
        Image.fromarray(array).save(path)
    return path


def _cost_line(items: Sequence[ItemResult], *, currency: str, emulated: bool) -> str:
    """What this run cost: images from the cache, or attached to an earlier run's task, were not billed by it."""
    price = PRICE_PER_IMAGE[currency]
    paid = sum(item.image_count for item in items if not item.cached and not item.attached)
    cached = sum(len(item.images) for item in items if item.cached)
    attached = sum(item.image_count for item in items if item.attached)
    if paid == 0 and attached == 0 and cached:
        return "from cache, nothing billed"
    if emulated:
        return (f"emulated run: nothing billed (the emulator counted {paid} image{'s' if paid != 1 else ''}; "
                f"the real service would bill {currency} {paid * price:.2f})")
    line = f"billed: {paid} image{'s' if paid != 1 else ''}, {currency} {paid * price:.2f}"
    extras = [f"{cached} more from the cache, free" if cached else "",
              f"{attached} more from an earlier run's task, billed once, there" if attached else ""]
    extras = [extra for extra in extras if extra]
    return line + (f" ({'; '.join(extras)})" if extras else "")


# --- connections --------------------------------------------------------------------------------


@contextlib.contextmanager
def _connection(*, emulated: bool, term: Terminal, running_s: tuple[float, float] = DEMO_RUNNING_S) -> Iterator[Engine]:
    """The real service from the environment's settings, or a private emulator when asked. A
    private emulator dies with this process, so its tasks are not journaled, cached or budgeted."""
    if not emulated:
        current = Settings.from_env()
        shape = _key_shape(current.api_key)
        if shape is not None and shape[1]:
            raise ConfigError(f"the API key from {current.key_source} {shape[0]}, so no endpoint can take it",
                              advice=f"Copy the key again without it, then `export {KEY_ENV}=sk-...`.")
        yield connect(current, store=_store(current))
        return
    from .emulator import Emulator

    with Emulator(running_s=running_s) as emulator:
        env = {KEY_ENV: EMULATOR_KEY, BASE_URL_ENV: emulator.base_url}
        term.say(f"emulated: using a private emulator at {emulator.base_url}; results are stamped EMULATED and "
                 "nothing is billed")
        yield connect(Settings.from_env(env, home=Path(tempfile.gettempdir())), store=None)


def _store(current: Settings) -> Store:
    return Store.open(StateSettings.from_env(default_dir=DEFAULT_CLI_DIR, currency=current.currency))


# --- demo ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _DemoRow:
    title: str
    source: Image.Image
    result: Image.Image


def _demo(out: Path, term: Terminal) -> int:
    """Every function on its sample image, through request.prepare, runner.run, plus one contact sheet."""
    _make_folder(out)
    rows: list[_DemoRow] = []
    with _connection(emulated=True, term=term) as engine:
        for fn in FUNCTIONS:
            example = fn.example
            source = samples.sample_image(example.scene)
            source.save(out / f"input_{fn.api_name}.png")
            mask = samples.sample_mask(example.scene)
            image_tensor = torch.from_numpy(np.asarray(source, dtype=np.float32) / 255.0).unsqueeze(0)
            mask_tensor = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0) if mask is not None else None
            request = prepare(fn, image=image_tensor, mask=mask_tensor, prompt=example.prompt,
                              style=example.style, values=example.values)
            outcome = _run(engine, request, [fn.api_name], term, reuse=False, private=True, keep_final=False)
            item = outcome.items[0]
            result_path = _save_result(item.files[0] if item.files else None, item.images[0],
                                       out / f"result_{fn.api_name}")
            result = Image.open(result_path).convert("RGB")
            (out / f"report_{fn.api_name}.json").write_text(
                json.dumps(outcome.report(emulated=True), ensure_ascii=False, indent=2), encoding="utf-8")
            print(f"  {fn.api_name:26s} {source.width}x{source.height} -> {result.width}x{result.height}  "
                  f"{result_path.name}  task {item.task_id}")
            rows.append(_DemoRow(f"{fn.title_en} ({fn.api_name})", source, result))
    sheet_path = out / "contact_sheet.png"
    contact_sheet(rows).save(sheet_path)
    print(f"demo results in {out.resolve()} (emulated: nothing billed)")
    print(f"contact sheet: {sheet_path.resolve()}")
    return 0


def _font(size_px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size_px)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def contact_sheet(rows: Sequence[_DemoRow], *, cell_px: int = 300, columns: int = 2) -> Image.Image:
    """A title saying the results are emulated, then one panel per function: its name, the input and
    output sizes, and input and result drawn at the same scale (so an upscale shows as larger)."""
    gap_px, title_px, label_px = 16, 64, 44
    panel_w, panel_h = 2 * cell_px + gap_px, label_px + cell_px
    lines = -(-len(rows) // columns)
    sheet = Image.new("RGB", (columns * panel_w + (columns + 1) * gap_px,
                              title_px + lines * (panel_h + gap_px) + gap_px), "white")
    draw = ImageDraw.Draw(sheet)
    draw.rectangle((0, 0, sheet.width, title_px - 8), fill=(150, 20, 20))
    draw.text((gap_px, 10), "EMULATED RESULTS: wanx-imageedit demo against the bundled emulator", font=_font(22),
              fill="white")
    draw.text((gap_px, 36), "Not real model output; nothing was sent to Alibaba Cloud and nothing was billed.",
              font=_font(15), fill="white")
    for index, row in enumerate(rows):
        left = gap_px + (index % columns) * (panel_w + gap_px)
        top = title_px + (index // columns) * (panel_h + gap_px)
        draw.text((left, top), row.title, font=_font(16), fill="black")
        draw.text((left, top + 20), f"input {row.source.width}x{row.source.height}  ->  "
                  f"output {row.result.width}x{row.result.height}", font=_font(14), fill=(70, 70, 70))
        scale = cell_px / max(row.source.width, row.source.height, row.result.width, row.result.height)
        for column, picture in enumerate((row.source, row.result)):
            size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
            x = left + column * (cell_px + gap_px)
            y = top + label_px
            draw.rectangle((x - 1, y - 1, x + cell_px, y + cell_px), outline=(200, 200, 200))
            sheet.paste(picture.resize(size, Image.Resampling.LANCZOS),
                        (x + (cell_px - size[0]) // 2, y + (cell_px - size[1]) // 2))
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


def _fetch(task_id: str | None, out: Path, term: Terminal) -> int:
    current = Settings.from_env()
    engine = connect(current, store=_store(current))
    _make_folder(out)
    assert engine.store is not None
    entry = engine.store.journal.find(task_id) if task_id else engine.store.journal.newest_unrecovered()
    name = f"task {task_id or entry.task_id}" if task_id or (entry and entry.task_id) else "the newest unsaved task"

    def show(progress: Progress) -> None:
        state = progress.states[0].value
        term.status(f"fetching {name}: {state}, {progress.elapsed_s:.0f} s", key=state)

    try:
        with _interruptible() as stop:
            recovered = engine.recover(task_id, should_cancel=stop.is_set, on_progress=show)
    finally:
        term.end(None)
    paths = []
    for i, array in enumerate(recovered.images):
        path = out / f"{recovered.task_id}_{i}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    for failure in recovered.failures:
        term.say(f"  image {failure['image']} failed: {failure['code']} {failure['message']}")
    source = "from the result cache" if recovered.source == "cache" else "from the service"
    emulated = " (emulated)" if engine.client.emulated else ""
    print(f"{len(recovered.images)} image(s) of task {recovered.task_id}{emulated} {source}, in {out.resolve()}; "
          "fetching costs nothing:")
    for path in paths:
        print(f"  {path}")
    return 0
