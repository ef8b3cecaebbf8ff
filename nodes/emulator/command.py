"""The emulator's command line, shared by ``python -m wanx_imageedit.nodes.emulator`` and
``wanx-imageedit emulator``: every option is defined once, in `add_arguments`, and `serve` runs
what they ask for. Faults and outcomes given here let a user rehearse failures offline, e.g.

    wanx-imageedit emulator --fault create=accept_then_504 --fault download=http403+always
    wanx-imageedit emulator --outcome unknown_once --outcome partial:1,3:DataInspectionFailed
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Sequence
from typing import Any

from .faults import OUTCOMES, ROUTE_FAULTS, parse_fault, parse_outcome
from .rules import DEFAULT_API_KEY, LINK_LIFETIME_S
from .service import Emulator

DEFAULT_PORT = 8089  # the README's example port


def _fault_option(text: str) -> tuple[str, str]:
    route, sep, fault = text.partition("=")
    try:
        if not sep:
            raise ValueError(f"expected ROUTE=FAULT (routes: {', '.join(ROUTE_FAULTS)}), got {text!r}")
        parse_fault(route, fault)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return route, fault


def _outcome_option(text: str) -> str:
    try:
        parse_outcome(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _catalogue() -> str:
    def spelled(name: str) -> str:
        return "slow:SECONDS" if name == "slow" else name

    routes = "\n".join(f"  {route}: {', '.join(sorted(map(spelled, names)))}" for route, names in ROUTE_FAULTS.items())
    return ("faults (--fault ROUTE=FAULT[:ARG][+times:N][+always][+index:I]; each applies once unless a "
            f"modifier says otherwise):\n{routes}\n"
            f"outcomes (--outcome, one per created task, in order; join parts with +):\n  {', '.join(OUTCOMES)}\n"
            "Every fault is described in wanx_imageedit/nodes/emulator/faults.py.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options to `parser` (and its fault catalogue as the epilog)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free)")
    parser.add_argument("--api-key", action="append", dest="api_keys", metavar="KEY",
                        help=f"an accepted API key (repeatable; default {DEFAULT_API_KEY})")
    parser.add_argument("--pending-s", type=float, default=0.05, help="seconds a task waits before it runs")
    parser.add_argument("--running-s", type=float, nargs=2, metavar=("LOW", "HIGH"), default=(5.0, 15.0),
                        help="range of task running times in seconds (default 5 15)")
    parser.add_argument("--submit-rps", type=int, default=2, help="task submissions per second (default 2)")
    parser.add_argument("--max-running", type=int, default=2, help="tasks running at once (default 2)")
    parser.add_argument("--task-api-qps", type=int, default=20, help="queries, lists, cancels per second (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawn running times")
    parser.add_argument("--async-validation", action="store_true",
                        help="accept invalid requests and fail the task instead of answering 400")
    parser.add_argument("--link-lifetime-s", type=float, default=LINK_LIFETIME_S,
                        help="seconds a signed result link stays valid (default 86400, as the service)")
    parser.add_argument("--fault", action="append", dest="faults", type=_fault_option, default=[],
                        metavar="ROUTE=FAULT", help="queue a fault, e.g. create=accept_then_504 (repeatable)")
    parser.add_argument("--outcome", action="append", dest="outcomes", type=_outcome_option, default=[],
                        metavar="OUTCOME", help="outcome of the next created task, e.g. unknown_once (repeatable)")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _catalogue()


def serve(args: argparse.Namespace) -> int:
    """Run the emulator `add_arguments`' options describe until Ctrl-C."""
    serve_forever(
        host=args.host, port=args.port, faults=args.faults, outcomes=args.outcomes,
        api_keys=tuple(args.api_keys or (DEFAULT_API_KEY,)), pending_s=args.pending_s,
        running_s=tuple(args.running_s), submit_rps=args.submit_rps, max_running=args.max_running,
        task_api_qps=args.task_api_qps, seed=args.seed, sync_validation=not args.async_validation,
        link_lifetime_s=args.link_lifetime_s,
    )
    return 0


def serve_forever(*, host: str, port: int, faults: Iterable[tuple[str, str]] = (), outcomes: Iterable[str] = (),
                  **options: Any) -> None:
    """Run an emulator until Ctrl-C. `faults` are (route, fault) pairs for `Emulator.inject`,
    `outcomes` go to `Emulator.next_task_outcomes`; `options` are Emulator's keyword arguments."""
    faults, outcomes = list(faults), list(outcomes)  # each is read twice: applied, then printed
    with Emulator(host=host, port=port, **options) as emulator:
        for route, fault in faults:
            emulator.inject(route, fault)
        emulator.next_task_outcomes(*outcomes)
        try:  # from the first line on: a Ctrl-C while the banner prints stops cleanly too
            print(f"wanx2.1-imageedit emulator listening on {emulator.base_url}", flush=True)
            print(f"  point the SDK or the pack at it: DASHSCOPE_HTTP_BASE_URL={emulator.base_url}", flush=True)
            for route, fault in faults:
                print(f"  fault queued for {route}: {fault}", flush=True)
            for outcome in outcomes:
                print(f"  outcome queued: {outcome}", flush=True)
            print("  press Ctrl-C to stop", flush=True)
            while True:
                time.sleep(0.5)  # short sleeps keep Ctrl-C responsive on every platform
        except KeyboardInterrupt:
            print("stopping", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wanx_imageedit.nodes.emulator",
                                     description="Local emulator of DashScope wanx2.1-imageedit.")
    add_arguments(parser)
    return serve(parser.parse_args(argv))
