"""An independent emulator of the DashScope wanx2.1-imageedit service, for tests, the demo and
offline rehearsal of failures. It keeps its own copy of the service rules (spec
``dashscope-imageedit-api.md``) and never imports the pack's core, so a mistake in the client's
function table shows up as a disagreement here.

Modules, along the service's own sections:

* rules.py      the service's validation rules, limits, messages and timestamp formats;
* rendering.py  deterministic result images stamped EMULATED (the default `render`);
* faults.py     the fault and outcome mini-language (documented there) and the faulty answers;
* state.py      the clock, tasks, queue, lifecycle, rate windows and the money counters;
* routes.py     the route handlers, auth, signed result links and the request log;
* http.py       the stdlib HTTP server and handler;
* service.py    `Emulator`, the public face;
* command.py    the command line (`python -m wanx_imageedit.nodes.emulator`, `wanx-imageedit emulator`).
"""

from .command import add_arguments, serve, serve_forever
from .rendering import Renderer, render_result
from .routes import LoggedRequest
from .rules import API_PREFIX, DEFAULT_API_KEY, MODEL, Job, validate_job
from .service import Emulator
from .state import TaskTimes

__all__ = [
    "API_PREFIX", "DEFAULT_API_KEY", "MODEL", "Emulator", "Job", "LoggedRequest", "Renderer", "TaskTimes",
    "add_arguments", "render_result", "serve", "serve_forever", "validate_job",
]
