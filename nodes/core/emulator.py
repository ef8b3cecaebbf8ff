"""A local emulator of DashScope's asynchronous ``wanx2.1-imageedit`` image-edit service.

It implements the spec (``dashscope-imageedit-api.md``) on its own, independently of the pack's
client table (``functions.py``), so a mistake in that table shows up as a disagreement here.
Users run it to build graphs offline; tests use it to provoke every failure the real service
can produce (see ``Emulator.inject`` and ``Emulator.next_task_outcomes``).

Design choices:

* Stdlib HTTP server (``ThreadingHTTPServer`` on a daemon thread) plus Pillow for images.
* Task state is computed lazily from the clock on every request (an event simulation under one
  lock) rather than by background timers, so a run is deterministic and ``advance()`` can jump
  a day ahead without anything firing late.
* The API key is never stored or logged: configured keys are kept only as SHA-256 digests and
  each logged request records only whether a key was present and whether it was valid.
* Result images are visibly fake: derived from the input with a function-specific effect and
  stamped "EMULATED <function>", so nobody mistakes them for real output.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import hashlib
import io
import json
import math
import random
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

# --------------------------------------------------------------------------------------------
# Service constants (spec sections 1, 4, 5, 7, 10)
# --------------------------------------------------------------------------------------------

MODEL = "wanx2.1-imageedit"
API_PREFIX = "/api/v1"
DEFAULT_API_KEY = "sk-emulator-key"
REGION = "cn-beijing"
ACCOUNT_ID = "emulator-account"

PROMPT_MAX_CHARS = 800
SEED_MAX = 2_147_483_647
MIN_SIDE_PX = 512
MAX_SIDE_PX = 4096
MAX_IMAGE_BYTES = 10 * 1024 * 1024
RETENTION_S = 24 * 3600.0  # task data and result URLs live 24 h after the task ends
TASK_TIMEOUT_S = 3 * 3600.0  # a task with no result within 3 h fails with InternalError.Timeout
LIST_WINDOW_S = 24 * 3600.0

# Two base64 images of at most 10 MiB each, plus JSON; anything far bigger is not a real request.
_MAX_BODY_BYTES = 64 * 1024 * 1024
# How often the server thread checks for stop(); short so tests that start many emulators
# do not wait on teardown, long enough that an idle emulator costs nothing noticeable.
_SHUTDOWN_POLL_S = 0.02
# Bounded so a long-running `serve_forever` does not grow without limit.
_MAX_LOGGED_REQUESTS = 10_000

_BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")

MASKED_FUNCTION = "description_edit_with_mask"
# The user guide allows "" for small-object removal and automatic colouring (spec 4.1).
_EMPTY_PROMPT_FUNCTIONS = frozenset({MASKED_FUNCTION, "colorization"})
_INPUT_FIELDS = frozenset({"function", "prompt", "base_image_url", "mask_image_url"})

_MIME_TO_PIL_FORMATS: Mapping[str, frozenset[str]] = {
    "image/jpeg": frozenset({"JPEG", "MPO"}),  # Pillow opens many camera JPEGs as MPO
    "image/png": frozenset({"PNG"}),
    "image/bmp": frozenset({"BMP"}),
    "image/tiff": frozenset({"TIFF"}),
    "image/webp": frozenset({"WEBP"}),
}


@dataclass(frozen=True)
class _ParamRule:
    kind: str  # "int" (JSON integer, not bool), "number" (int or float, not bool) or "bool"
    low: float | None = None
    high: float | None = None
    default: int | float | bool | None = None

    def describe(self) -> str:
        if self.kind == "bool":
            return "a boolean"
        noun = "an integer" if self.kind == "int" else "a number"
        return f"{noun} in [{_fmt_num(self.low)}, {_fmt_num(self.high)}]"

    def accepts(self, value: object) -> bool:
        if self.kind == "bool":
            return isinstance(value, bool)
        if isinstance(value, bool):
            return False  # JSON true/false is never a number here
        if self.kind == "int" and not isinstance(value, int):
            return False
        if not isinstance(value, int | float):
            return False
        assert self.low is not None and self.high is not None
        return self.low <= value <= self.high  # NaN fails both comparisons


def _fmt_num(x: float | None) -> str:
    return "?" if x is None else (str(int(x)) if float(x).is_integer() else str(x))


_COMMON_PARAMS: Mapping[str, _ParamRule] = {
    "n": _ParamRule("int", 1, 4, 1),
    "seed": _ParamRule("int", 0, SEED_MAX, None),
    "watermark": _ParamRule("bool", default=False),
}
_STRENGTH = _ParamRule("number", 0.0, 1.0, 0.5)
_SCALE = _ParamRule("number", 1.0, 2.0, 1.0)

# Function -> the parameters it takes besides the common ones (spec 4.3).
FUNCTION_PARAMS: Mapping[str, Mapping[str, _ParamRule]] = {
    "stylization_all": {"strength": _STRENGTH},
    "stylization_local": {},
    "description_edit": {"strength": _STRENGTH},
    MASKED_FUNCTION: {},
    "remove_watermark": {},
    "expand": {"top_scale": _SCALE, "bottom_scale": _SCALE, "left_scale": _SCALE, "right_scale": _SCALE},
    "super_resolution": {"upscale_factor": _ParamRule("int", 1, 4, 1)},
    "colorization": {},
    "doodle": {"is_sketch": _ParamRule("bool", default=False)},
    "control_cartoon_feature": {},
}

# Messages quoted from the spec's error tables (section 9) where it gives them.
MSG_NO_KEY = "No API-key provided."
MSG_BAD_KEY = "Invalid API-key provided."
MSG_SYNC = "current user api does not support synchronous calls."
MSG_BAD_BODY = "Required body invalid, please check the request body format."
MSG_NOT_JSON_OBJECT = "The input parameter requires json format."
MSG_EMPTY_MODEL = 'Required parameter "model" missing from request.'
MSG_EMPTY_INPUT = "Required input parameter missing from request."
MSG_MODEL = "Model not exist."
MSG_URL_ERROR = "url error, please check url!"
MSG_FORMAT = "The media format is not supported or incorrect for the data inspection."
MSG_DOWNLOAD = "Unable to download the media resource during the data inspection process."
MSG_OSS_MISSING = "Failed to find the requested media resource during the data inspection process."
MSG_BAD_URL = ("The provided URL does not appear to be valid. Ensure it is correctly formatted "
               "(http(s)://, data:{mime};base64, or oss:// with X-DashScope-OssResourceResolve).")
MSG_RATE_QUOTA = "Requests rate limit exceeded, please try again later."
MSG_THROTTLING = "Requests throttling triggered."
MSG_CANCEL = "Failed to cancel the task, please confirm if the task is in PENDING status."
MSG_INTERNAL = "An internal error has occured, please try again later or contact service support."
MSG_TIMEOUT = ("An internal timeout error has occured during execution, please try again later "
               "or contact service support.")
MSG_UNAVAILABLE = "The service is temporarily unavailable, please try again later."
MSG_NOT_FOUND = "The requested resource does not exist."
MSG_NO_SUCH_KEY = "The specified key does not exist."

# Messages for `next_task_outcomes("fail:CODE")`, from spec section 9.
TASK_ERROR_MESSAGES: Mapping[str, str] = {
    "InvalidParameter": "Required parameter(s) missing or invalid, please check the request parameters.",
    "InvalidParameter.DataInspection": MSG_DOWNLOAD,
    "DataInspectionFailed": "Input data may contain inappropriate content.",
    "IPInfringementSuspect": "Input data is suspected of being involved in IP infringement.",
    "InternalError": MSG_INTERNAL,
    "InternalError.Algo": "inference internal error.",
    "InternalError.Timeout": MSG_TIMEOUT,
    "InternalError.FileUpload": "oss upload error.",
    "InternalError.Upload": "Failed to upload result.",
    "SystemError": "An system error has occured, please try again later.",
    "Arrearage": "Access denied, please make sure your account is in good standing.",
}

# --------------------------------------------------------------------------------------------
# Small value types
# --------------------------------------------------------------------------------------------


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
    at_s: float  # emulator clock, epoch seconds

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method, "path": self.path, "query": self.query, "route": self.route,
            "status": self.status, "body": self.body, "headers": self.headers,
            "auth_present": self.auth_present, "auth_valid": self.auth_valid, "at_s": self.at_s,
        }


class _ApiError(Exception):
    """An error answer: HTTP status plus the DashScope ``code``/``message`` pair."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _invalid(message: str) -> _ApiError:
    return _ApiError(400, "InvalidParameter", message)


@dataclass(frozen=True)
class _Incoming:
    method: str
    path: str
    query: dict[str, str]
    headers: Mapping[str, str]  # lower-case names; lives only for the request
    body: bytes
    body_too_large: bool = False  # the body was not read (over _MAX_BODY_BYTES or a bad length)


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    drop: bool = False  # close the connection without answering

    @classmethod
    def json(cls, status: int, payload: Mapping[str, Any]) -> _Reply:
        data = {"request_id": str(uuid.uuid4()), **payload}
        return cls(status, json.dumps(data, ensure_ascii=False).encode("utf-8"))

    @classmethod
    def error(cls, status: int, code: str, message: str) -> _Reply:
        return cls.json(status, {"code": code, "message": message})


_DROPPED = _Reply(0, drop=True)


@dataclass(frozen=True)
class _Fault:
    name: str
    seconds: float = 0.0  # for "slow"


_ROUTE_FAULTS: Mapping[str, frozenset[str]] = {
    "create": frozenset({"throttle", "http500", "http502_plain", "drop_before", "drop_after", "slow",
                         "arrearage", "invalid_key", "moderation"}),
    "query": frozenset({"http503", "http500", "throttle", "drop_before", "slow"}),
    "list": frozenset({"http503", "http500", "throttle", "drop_before", "slow"}),
    "cancel": frozenset({"http503", "http500", "throttle", "drop_before", "slow"}),
    "download": frozenset({"http404", "garbage", "drop_before", "http503", "slow"}),
}


def _parse_fault(route: str, text: str) -> _Fault:
    if route not in _ROUTE_FAULTS:
        raise ValueError(f"no faults for route {route!r}; routes: {', '.join(_ROUTE_FAULTS)}")
    name, _, arg = text.partition(":")
    if name not in _ROUTE_FAULTS[route]:
        known = ", ".join(sorted(_ROUTE_FAULTS[route]))
        raise ValueError(f"unknown fault {text!r} for route {route!r}; known: {known}")
    if name == "slow":
        return _Fault(name, _parse_seconds(arg, what=text))
    if arg:
        raise ValueError(f"fault {name!r} takes no argument (got {text!r})")
    return _Fault(name)


def _parse_seconds(arg: str, *, what: str) -> float:
    try:
        seconds = float(arg)
    except ValueError:
        raise ValueError(f"{what!r}: expected a number of seconds after ':'") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what!r}: seconds must be finite and >= 0")
    return seconds


@dataclass(frozen=True)
class _TaskPlan:
    """What `next_task_outcomes` asked of one task. Parts may be combined with '+',
    e.g. "partial+running_s:3"."""

    fail_code: str | None = None
    partial: bool = False
    unknown: bool = False
    all_images_fail: bool = False
    running_s: float | None = None


def _parse_outcome(text: str) -> _TaskPlan:
    plan: dict[str, Any] = {}
    for part in text.split("+"):
        name, _, arg = part.partition(":")
        if name == "ok" and not arg:
            continue  # the normal course, for lining up outcomes of later tasks
        if name == "fail" and arg:
            plan["fail_code"] = arg
        elif name == "running_s":
            plan["running_s"] = _parse_seconds(arg, what=part)
        elif name in ("partial", "unknown", "all_images_fail") and not arg:
            plan[name] = True
        else:
            raise ValueError(f"unknown task outcome {part!r}; known: ok, fail:CODE, partial, "
                             "unknown, all_images_fail, running_s:SECONDS")
    return _TaskPlan(**plan)


@dataclass(frozen=True)
class _DecodedImage:
    data: bytes
    width_px: int
    height_px: int
    sha256: str


@dataclass(frozen=True)
class _Job:
    """A validated create request: everything needed to run the task and render its results."""

    function: str
    prompt: str  # already truncated to PROMPT_MAX_CHARS
    params: Mapping[str, Any]  # effective values, defaults filled in, seed resolved
    base: _DecodedImage
    mask: _DecodedImage | None

    @property
    def n(self) -> int:
        return int(self.params["n"])

    def image_key(self, index: int) -> bytes:
        """Everything a result image depends on; same key, same bytes."""
        parts = [self.function, self.prompt, json.dumps(self.params, sort_keys=True), str(index),
                 self.base.sha256, self.mask.sha256 if self.mask else "-"]
        return hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()


class _Status:
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    UNKNOWN = "UNKNOWN"


@dataclass
class _Task:
    task_id: str
    seq: int  # 1-based creation counter; drives the deterministic running duration
    request_id: str  # of the create call, shown by the list API
    api_key_id: str
    submit_s: float
    running_s: float
    n: int
    job: _Job | None  # None when (asynchronous) validation failed
    validation_error: _ApiError | None
    plan: _TaskPlan
    status: str = _Status.PENDING
    started_s: float | None = None
    ended_s: float | None = None
    code: str | None = None
    message: str | None = None
    image_errors: list[tuple[str, str] | None] = field(default_factory=list)
    png_cache: dict[int, bytes] = field(default_factory=dict)

    @property
    def ok_indices(self) -> list[int]:
        return [i for i, err in enumerate(self.image_errors) if err is None]


class _SlidingWindow:
    """At most `limit` admissions in any window of `window_s` seconds (rejections do not count)."""

    def __init__(self, *, limit: int, window_s: float = 1.0) -> None:
        self._limit = limit
        self._window_s = window_s
        self._times: collections.deque[float] = collections.deque()

    def admit(self, now_s: float) -> bool:
        while self._times and self._times[0] <= now_s - self._window_s:
            self._times.popleft()
        if len(self._times) >= self._limit:
            return False
        self._times.append(now_s)
        return True


# --------------------------------------------------------------------------------------------
# Request validation (spec sections 4 and 5)
# --------------------------------------------------------------------------------------------


def _parse_json_body(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _invalid(MSG_BAD_BODY) from None


def _check_envelope(body: Any) -> None:
    """The gateway-level checks; always synchronous, even with sync_validation=False."""
    if not isinstance(body, dict):
        raise _ApiError(400, "BadRequest.IllegalInput", MSG_NOT_JSON_OBJECT)
    if body.get("model") in (None, ""):
        raise _ApiError(400, "BadRequest.EmptyModel", MSG_EMPTY_MODEL)
    if body["model"] != MODEL:
        raise _invalid(MSG_MODEL)
    if "input" not in body or body["input"] is None:
        raise _ApiError(400, "BadRequest.EmptyInput", MSG_EMPTY_INPUT)
    if not isinstance(body["input"], dict):
        raise _ApiError(400, "BadRequest.IllegalInput", MSG_NOT_JSON_OBJECT)


def _validate_job(body: Mapping[str, Any], *, oss_resolve: bool) -> _Job:
    """Validate the input and parameters; raise _ApiError on the first problem. Cheap checks
    come before decoding images."""
    inputs: Mapping[str, Any] = body["input"]
    unknown_inputs = sorted(set(inputs) - _INPUT_FIELDS)
    if unknown_inputs:
        raise _invalid(f"input.{unknown_inputs[0]} is not supported by {MODEL}.")
    function = _check_function(inputs.get("function"))
    prompt = _check_prompt(inputs.get("prompt"), function=function)
    params = _check_parameters(body.get("parameters"), function=function)
    base_url = inputs.get("base_image_url")
    mask_url = inputs.get("mask_image_url")
    if base_url in (None, ""):
        raise _invalid("Field required: input.base_image_url")
    if function == MASKED_FUNCTION and mask_url in (None, ""):
        raise _invalid(f"Field required: input.mask_image_url (function {function} needs a mask)")
    if function != MASKED_FUNCTION and mask_url is not None:
        raise _invalid(f"input.mask_image_url is not supported by function '{function}'; only "
                       f"{MASKED_FUNCTION} takes a mask.")
    base = _decode_image_url(base_url, field_name="base_image_url", oss_resolve=oss_resolve)
    mask = None
    if mask_url is not None:
        mask = _decode_image_url(mask_url, field_name="mask_image_url", oss_resolve=oss_resolve)
        if (mask.width_px, mask.height_px) != (base.width_px, base.height_px):
            raise _invalid(f"The resolution of mask_image_url ({mask.width_px}x{mask.height_px}) must equal "
                           f"the resolution of base_image_url ({base.width_px}x{base.height_px}).")
    if params["seed"] is None:
        # The real service picks a random seed; we derive one from the request so the same
        # request gives the same images.
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8")).digest()
        params["seed"] = int.from_bytes(digest[:4], "big") & SEED_MAX
    return _Job(function=function, prompt=prompt, params=params, base=base, mask=mask)


def _check_function(value: Any) -> str:
    if value in (None, ""):
        raise _invalid("Field required: input.function")
    if not isinstance(value, str) or value not in FUNCTION_PARAMS:
        raise _invalid(f"input.function {value!r} is not supported; supported: {', '.join(FUNCTION_PARAMS)}.")
    return value


def _check_prompt(value: Any, *, function: str) -> str:
    if value is None:
        raise _invalid("Field required: input.prompt")
    if not isinstance(value, str):
        raise _invalid("input.prompt must be a string.")
    if not value.strip() and function not in _EMPTY_PROMPT_FUNCTIONS:
        raise _invalid(f"input.prompt must not be empty for function '{function}'.")
    return value[:PROMPT_MAX_CHARS]  # longer prompts are silently truncated (spec 4.1)


def _check_parameters(value: Any, *, function: str) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _invalid("parameters must be a JSON object.")
    rules = {**FUNCTION_PARAMS[function], **_COMMON_PARAMS}
    for name in sorted(value):
        if name not in rules:
            raise _invalid(f"parameters.{name} is not supported by function '{function}'"
                           f" (it takes: {', '.join(rules)}).")
        if not rules[name].accepts(value[name]):
            raise _invalid(f"parameters.{name} must be {rules[name].describe()}, got {json.dumps(value[name])}.")
    return {name: value.get(name, rule.default) for name, rule in rules.items()}


def _decode_image_url(url: Any, *, field_name: str, oss_resolve: bool) -> _DecodedImage:
    if not isinstance(url, str):
        raise _invalid(f"input.{field_name} must be a string.")
    lowered = url[:16].lower()
    if lowered.startswith(("http://", "https://")):
        # The emulator has no network; the real service reports a failed download this way.
        raise _ApiError(400, "InvalidParameter.DataInspection", MSG_DOWNLOAD)
    if lowered.startswith("oss://"):
        if not oss_resolve:
            raise _invalid(MSG_BAD_URL)
        raise _ApiError(400, "InvalidParameter.DataInspection", MSG_OSS_MISSING)  # no uploads here
    if not lowered.startswith("data:"):
        raise _invalid(MSG_BAD_URL)
    data = _data_uri_bytes(url)
    if len(data) > MAX_IMAGE_BYTES:
        raise _invalid(f"input.{field_name}: the image file is {len(data)} bytes; at most "
                       f"{MAX_IMAGE_BYTES} bytes (10 MB) are allowed.")
    return _inspect_image(data, mime=url[5:].split(";", 1)[0].strip().lower(), field_name=field_name)


def _data_uri_bytes(url: str) -> bytes:
    header, sep, payload = url.partition(",")
    parts = [p.strip().lower() for p in header[5:].split(";")]
    if not sep or parts[0] not in _MIME_TO_PIL_FORMATS or "base64" not in parts[1:]:
        raise _invalid(MSG_FORMAT)
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(MSG_FORMAT) from None


def _inspect_image(data: bytes, *, mime: str, field_name: str) -> _DecodedImage:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in _MIME_TO_PIL_FORMATS[mime]:
                raise _invalid(MSG_FORMAT)
            width_px, height_px = image.size
            _check_side_lengths(width_px, height_px, field_name=field_name)
            image.load()  # a truncated or corrupt file fails here, not at render time
    except _ApiError:
        raise
    except Exception:  # Pillow raises many types for undecodable data
        raise _invalid(MSG_FORMAT) from None
    return _DecodedImage(data, width_px, height_px, hashlib.sha256(data).hexdigest())


def _check_side_lengths(width_px: int, height_px: int, *, field_name: str) -> None:
    if not (MIN_SIDE_PX <= width_px <= MAX_SIDE_PX and MIN_SIDE_PX <= height_px <= MAX_SIDE_PX):
        raise _invalid(f"input.{field_name}: the image is {width_px}x{height_px}; width and height must each "
                       f"be between {MIN_SIDE_PX} and {MAX_SIDE_PX} pixels.")


def _summarize_data_uris(value: Any) -> Any:
    """Copy of a JSON value with every data URI replaced by a short, loggable summary."""
    if isinstance(value, str) and value[:5].lower() == "data:":
        header, _, payload = value.partition(",")
        try:
            data = base64.b64decode("".join(payload.split()), validate=True)
        except (binascii.Error, ValueError):
            return f"{header},<{len(payload)} chars, not base64>"
        return f"{header},<{len(data)} bytes sha256:{hashlib.sha256(data).hexdigest()[:12]}>"
    if isinstance(value, dict):
        return {k: _summarize_data_uris(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_summarize_data_uris(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Result images (spec section 6: sizes are the spec's [Inf] defaults)
# --------------------------------------------------------------------------------------------

_TINTS: Mapping[str, tuple[int, int, int]] = {
    "stylization_all": (212, 166, 55),  # gold foil
    "stylization_local": (90, 180, 235),  # ice
    "description_edit": (225, 70, 70),
    MASKED_FUNCTION: (60, 205, 120),
    "remove_watermark": (215, 215, 215),
    "expand": (95, 120, 205),
    "super_resolution": (255, 255, 255),
    "colorization": (235, 150, 40),
    "doodle": (45, 95, 185),
    "control_cartoon_feature": (250, 120, 200),
}


def output_size(function: str, width_px: int, height_px: int, params: Mapping[str, Any]) -> tuple[int, int]:
    """Result size for an input of width_px x height_px (spec section 6)."""
    if function == "super_resolution":
        factor = int(params.get("upscale_factor") or 1)
        return width_px * factor, height_px * factor
    if function == "expand":
        left, right, top, bottom = (float(params.get(f"{side}_scale") or 1.0)
                                    for side in ("left", "right", "top", "bottom"))
        return round(width_px * (left + right) / 2), round(height_px * (top + bottom) / 2)
    return width_px, height_px


def render_result(job: _Job, *, index: int) -> bytes:
    """PNG bytes of result `index`; a pure function of the job and the index."""
    rng = random.Random(job.image_key(index))
    tint = tuple(max(0, min(255, c + rng.randint(-40, 40))) for c in _TINTS[job.function])
    with Image.open(io.BytesIO(job.base.data)) as opened:
        base = opened.convert("RGB")
    label = f"EMULATED\n{job.function} #{index + 1}"
    if job.function == MASKED_FUNCTION:
        assert job.mask is not None
        image = _masked_edit(base, job.mask, tint, label=label)
    else:
        image = _EFFECTS[job.function](base, job.params, tint)
        _stamp(image, label, origin=(0, 0))
    if job.params.get("watermark"):
        _watermark(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _flat(image: Image.Image, colour: tuple[int, ...]) -> Image.Image:
    return Image.new("RGB", image.size, colour)


def _stylize_all(image: Image.Image, params: Mapping[str, Any], tint: tuple[int, ...]) -> Image.Image:
    styled = Image.blend(ImageOps.posterize(image, 3), _flat(image, tint), 0.35)
    return Image.blend(image, styled, float(params["strength"]))  # 0 keeps the original (spec 4.3)


def _stylize_local(image: Image.Image, params: Mapping[str, Any], tint: tuple[int, ...]) -> Image.Image:
    styled = Image.blend(ImageOps.posterize(image, 2), _flat(image, tint), 0.45)
    region = Image.new("L", image.size, 0)
    w, h = image.size
    ImageDraw.Draw(region).ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=255)
    return Image.composite(styled, image, region)


def _describe_edit(image: Image.Image, params: Mapping[str, Any], tint: tuple[int, ...]) -> Image.Image:
    red, green, blue = image.split()
    styled = Image.blend(Image.merge("RGB", (blue, red, green)), _flat(image, tint), 0.25)
    return Image.blend(image, styled, float(params["strength"]))


def _masked_edit(image: Image.Image, mask: _DecodedImage, tint: tuple[int, ...], *, label: str) -> Image.Image:
    """Only the white (>= 128) mask area changes; the stamp is drawn inside it too, so pixels
    outside the mask stay byte-identical to the input."""
    with Image.open(io.BytesIO(mask.data)) as opened:
        region = opened.convert("L").point(lambda v: 255 if v >= 128 else 0)
    edited = Image.blend(ImageOps.invert(image), _flat(image, tint), 0.4)
    box = region.getbbox()
    if box is None:  # an all-black mask edits nothing; still mark the image as fake
        result = image.copy()
        _stamp(result, label, origin=(0, 0))
        return result
    _stamp(edited, label, origin=(box[0], box[1]))
    return Image.composite(edited, image, region)


def _remove_watermark(image: Image.Image, params: Mapping[str, Any], tint: tuple[int, ...]) -> Image.Image:
    return Image.blend(image.filter(ImageFilter.MedianFilter(5)), _flat(image, tint), 0.08)


def _expand(image: Image.Image, params: Mapping[str, Any], tint: tuple[int, ...]) -> Image.Image:
    """New border in a flat colour, the original pasted at the half-dimension offset (spec 6)."""
    w, h = image.size
    canvas = Image.new("RGB", output_size("expand", w, h, params), tint)
    left_px = round(w * (float(params["left_scale"]) - 1) / 2)
    top_px = round(h * (float(params["top_scale"]) - 1) / 2)
    canvas.paste(image, (left_px, top_px))
    return canvas


def _super_resolution(image: Image.Image, params: Mapping[str, Any], tint: tuple[int, ...]) -> Image.Image:
    size = output_size("super_resolution", *image.size, params)
    enlarged = image.resize(size, Image.Resampling.LANCZOS) if size != image.size else image
    return Image.blend(enlarged.filter(ImageFilter.UnsharpMask(2, 150, 3)), _flat(enlarged, tint), 0.05)


def _colorize(image: Image.Image, params: Mapping[str, Any], tint: tuple[int, ...]) -> Image.Image:
    dark = tuple(c // 5 for c in tint)
    light = tuple(255 - (255 - c) // 5 for c in tint)
    return ImageOps.colorize(ImageOps.grayscale(image), black=dark, white=light, mid=tint)


def _doodle(image: Image.Image, params: Mapping[str, Any], tint: tuple[int, ...]) -> Image.Image:
    gray = ImageOps.grayscale(image)
    if not params["is_sketch"]:
        # A photo: extract line art first, as the service does (spec 4.3).
        gray = ImageOps.invert(gray.filter(ImageFilter.FIND_EDGES))
    return ImageOps.colorize(gray, black=tint, white=(250, 245, 232))


def _cartoon(image: Image.Image, params: Mapping[str, Any], tint: tuple[int, ...]) -> Image.Image:
    scene = ImageOps.mirror(ImageOps.posterize(image, 2)).filter(ImageFilter.EDGE_ENHANCE_MORE)
    return Image.blend(scene, _flat(image, tint), 0.2)


_Effect = Callable[[Image.Image, Mapping[str, Any], tuple[int, ...]], Image.Image]
_EFFECTS: Mapping[str, _Effect] = {
    "stylization_all": _stylize_all,
    "stylization_local": _stylize_local,
    "description_edit": _describe_edit,
    "remove_watermark": _remove_watermark,
    "expand": _expand,
    "super_resolution": _super_resolution,
    "colorization": _colorize,
    "doodle": _doodle,
    "control_cartoon_feature": _cartoon,
}


def _font(size_px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size_px)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _stamp(image: Image.Image, text: str, *, origin: tuple[int, int]) -> None:
    draw = ImageDraw.Draw(image)
    font = _font(max(12, min(image.size) // 24))
    pad_px = 6
    x, y = origin
    _, _, right, bottom = draw.multiline_textbbox((x + pad_px, y + pad_px), text, font=font)
    draw.rectangle((x, y, right + pad_px, bottom + pad_px), fill=(0, 0, 0))
    draw.multiline_text((x + pad_px, y + pad_px), text, font=font, fill=(255, 255, 255))


def _watermark(image: Image.Image) -> None:
    # The service writes "AI生成"; the default font has no CJK glyphs, so we write it in English.
    draw = ImageDraw.Draw(image)
    font = _font(max(12, min(image.size) // 30))
    text = "AI-generated"
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = image.width - (right - left) - 10
    y = image.height - (bottom - top) - 10
    draw.text((x, y), text, font=font, fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0))


# --------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------


def _beijing_time(epoch_s: float) -> str:
    """The service's timestamp format, Beijing local time: YYYY-MM-DD HH:mm:ss.SSS."""
    moment = datetime.fromtimestamp(epoch_s, _BEIJING)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _parse_compact_time(value: str | None, *, name: str) -> float | None:
    """The list API's YYYYMMDDhhmmss (Beijing time) -> epoch seconds."""
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=_BEIJING).timestamp()
    except ValueError:
        raise _invalid(f"{name} must be formatted YYYYMMDDhhmmss, got {value!r}.") from None


def _positive_int(value: str | None, *, name: str, default: int) -> int:
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise _invalid(f"{name} must be a positive integer, got {value!r}.")
    return number


def _key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


_RouteFn = Callable[..., _Reply]


class Emulator:
    """The wanx2.1-imageedit service on loopback. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: Iterable[str] = (DEFAULT_API_KEY,),
        pending_s: float = 0.05,
        running_s: tuple[float, float] = (5.0, 15.0),
        submit_rps: int = 2,
        max_running: int = 2,
        task_api_qps: int = 20,
        seed: int = 0,
        sync_validation: bool = True,
    ) -> None:
        low_s, high_s = running_s
        if not 0 <= low_s <= high_s:
            raise ValueError(f"running_s must be (low, high) with 0 <= low <= high, got {running_s!r}")
        if pending_s < 0 or submit_rps < 1 or max_running < 1 or task_api_qps < 1:
            raise ValueError("pending_s must be >= 0; submit_rps, max_running and task_api_qps >= 1")
        if isinstance(api_keys, str):
            api_keys = (api_keys,)  # one key, not an iterable of characters
        self._host = host
        self._requested_port = port
        # Keys are kept only as digests so the emulator never holds a key in the clear.
        self._key_ids = {_key_digest(k): f"emulator-key-{i + 1}" for i, k in enumerate(api_keys)}
        self._pending_s = pending_s
        self._running_s = (low_s, high_s)
        self._max_running = max_running
        self._seed = seed
        self._sync_validation = sync_validation

        self._lock = threading.Lock()
        # The clock: wall time at construction + monotonic progress + advance() offset.
        self._epoch0_s = time.time()
        self._mono0_s = time.monotonic()
        self._offset_s = 0.0
        self._sim_s = self._now_s()  # time of the last lifecycle event processed

        self._tasks: dict[str, _Task] = {}
        self._queue: collections.deque[_Task] = collections.deque()  # PENDING, FIFO
        self._running: list[_Task] = []
        self._created_count = 0
        self._log: collections.deque[LoggedRequest] = collections.deque(maxlen=_MAX_LOGGED_REQUESTS)
        self._faults: dict[str, collections.deque[_Fault]] = {r: collections.deque() for r in _ROUTE_FAULTS}
        self._outcomes: collections.deque[_TaskPlan] = collections.deque()
        self._submit_window = _SlidingWindow(limit=submit_rps)
        self._task_api_windows = {r: _SlidingWindow(limit=task_api_qps) for r in ("query", "list", "cancel")}

        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._routes: list[tuple[str, re.Pattern[str], str, _RouteFn]] = [
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

    # ---- lifecycle of the server ----------------------------------------------------------

    def start(self) -> Emulator:
        if self._server is not None:
            return self
        self._server = _Server((self._host, self._requested_port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": _SHUTDOWN_POLL_S},
            name=f"wanx-emulator-{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_open_connections()  # keep-alive clients must see a dead server too
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---- public properties -----------------------------------------------------------------

    @property
    def host(self) -> str:
        # A wildcard bind address is not something a client can connect to.
        return "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the emulator is not running; call start() first")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}{API_PREFIX}"

    @property
    def created_count(self) -> int:
        with self._lock:
            return self._created_count

    @property
    def requests(self) -> list[LoggedRequest]:
        """A snapshot of the request log, oldest first."""
        with self._lock:
            return list(self._log)

    # ---- test and demo controls -------------------------------------------------------------

    def inject(self, route: str, *faults: str) -> None:
        """Queue faults for `route`; each is consumed by the next request of that route."""
        parsed = [_parse_fault(route, f) for f in faults]
        with self._lock:
            self._faults[route].extend(parsed)

    def next_task_outcomes(self, *outcomes: str) -> None:
        """Apply these outcomes to the next created tasks, one each, in order."""
        parsed = [_parse_outcome(o) for o in outcomes]
        with self._lock:
            self._outcomes.extend(parsed)

    def advance(self, seconds: float) -> None:
        """Move the emulator's clock forward (timestamps, lifecycle, rate windows, expiry)."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be finite and >= 0, got {seconds!r}")
        with self._lock:
            self._offset_s += seconds

    def task_status(self, task_id: str) -> str:
        """The task's true status now (ignores the "unknown" outcome, which only hides it from
        queries); UNKNOWN if it never existed or was forgotten."""
        with self._lock:
            self._catch_up()
            task = self._tasks.get(task_id)
            return task.status if task else _Status.UNKNOWN

    @property
    def task_ids(self) -> list[str]:
        """Ids of the tasks it still remembers, oldest first."""
        with self._lock:
            return list(self._tasks)

    def live_count(self) -> int:
        """Tasks PENDING or RUNNING right now: what the account's concurrency quota counts."""
        with self._lock:
            self._catch_up()
            return sum(1 for t in self._tasks.values() if t.status in (_Status.PENDING, _Status.RUNNING))

    # ---- clock and task lifecycle (all under self._lock) -----------------------------------

    def _now_s(self) -> float:
        return self._epoch0_s + (time.monotonic() - self._mono0_s) + self._offset_s

    def _draw_running_s(self, seq: int) -> float:
        low_s, high_s = self._running_s
        digest = hashlib.sha256(f"{self._seed}:{seq}".encode()).digest()
        return low_s + (high_s - low_s) * (int.from_bytes(digest[:8], "big") / 2**64)

    def _catch_up(self) -> float:
        """Replay every lifecycle event up to now, in time order; return now."""
        now_s = self._now_s()
        while (event := self._next_event()) is not None and event[0] <= now_s:
            at_s, _, kind, task = event
            self._sim_s = at_s
            if kind == "finish":
                self._running.remove(task)
                self._finish(task, at_s=at_s)
            elif kind == "start":
                self._queue.popleft()
                task.status, task.started_s = _Status.RUNNING, at_s
                self._running.append(task)
            else:  # "timeout": still queued 3 h after submission
                self._queue.popleft()
                self._fail(task, at_s=at_s, code="InternalError.Timeout", message=MSG_TIMEOUT)
        self._forget_expired(now_s)
        return now_s

    def _next_event(self) -> tuple[float, int, str, _Task] | None:
        # The int orders simultaneous events: a finish frees its slot before a start uses it.
        events = [(self._finish_at_s(t), 0, "finish", t) for t in self._running]
        if self._queue:
            head = self._queue[0]  # FIFO: later tasks never overtake the head
            if len(self._running) < self._max_running:
                events.append((max(head.submit_s + self._pending_s, self._sim_s), 1, "start", head))
            events.append((head.submit_s + TASK_TIMEOUT_S, 2, "timeout", head))
        return min(events, key=lambda e: (e[0], e[1])) if events else None

    def _finish_at_s(self, task: _Task) -> float:
        assert task.started_s is not None
        return min(task.started_s + task.running_s, task.submit_s + TASK_TIMEOUT_S)

    def _finish(self, task: _Task, *, at_s: float) -> None:
        assert task.started_s is not None
        if task.started_s + task.running_s > task.submit_s + TASK_TIMEOUT_S:
            self._fail(task, at_s=at_s, code="InternalError.Timeout", message=MSG_TIMEOUT)
        elif task.validation_error is not None:
            self._fail(task, at_s=at_s, code=task.validation_error.code, message=task.validation_error.message)
        elif task.plan.fail_code is not None:
            code = task.plan.fail_code
            self._fail(task, at_s=at_s, code=code, message=TASK_ERROR_MESSAGES.get(code, f"{code} (emulated failure)."))
        elif task.plan.all_images_fail:
            # Zero successful images cannot be SUCCEEDED (spec 7.4).
            self._fail(task, at_s=at_s, code="InternalError.Timeout", message=MSG_TIMEOUT)
        else:
            failed = (task.plan.partial and task.n > 1)
            # Successes come first, as in the spec's examples (spec 15.10).
            task.image_errors = [None if i == 0 or not failed else ("InternalError.Timeout", MSG_TIMEOUT)
                                 for i in range(task.n)]
            task.status, task.ended_s = _Status.SUCCEEDED, at_s

    def _fail(self, task: _Task, *, at_s: float, code: str, message: str) -> None:
        task.status, task.ended_s, task.code, task.message = _Status.FAILED, at_s, code, message
        task.image_errors = [(code, message)] * task.n

    def _forget_expired(self, now_s: float) -> None:
        expired = [tid for tid, t in self._tasks.items() if t.ended_s is not None and now_s - t.ended_s >= RETENTION_S]
        for task_id in expired:
            del self._tasks[task_id]

    def _new_task(self, *, job: _Job | None, error: _ApiError | None, n: int, request_id: str,
                  api_key_id: str) -> _Task:
        self._catch_up()
        self._created_count += 1
        plan = self._outcomes.popleft() if self._outcomes else _TaskPlan()
        if plan.running_s is not None:
            running_s = plan.running_s
        elif error is not None:
            running_s = 0.0  # parameter validation fails as soon as the task is scheduled
        else:
            running_s = self._draw_running_s(self._created_count)
        task = _Task(task_id=str(uuid.uuid4()), seq=self._created_count, request_id=request_id,
                     api_key_id=api_key_id, submit_s=self._now_s(), running_s=running_s, n=n, job=job,
                     validation_error=error, plan=plan)
        self._tasks[task.task_id] = task
        self._queue.append(task)
        return task

    # ---- request handling -------------------------------------------------------------------

    def _handle(self, req: _Incoming) -> _Reply:
        """Entry point from the HTTP handler thread."""
        route, handler, groups = self._resolve(req)
        if req.body_too_large:
            reply = _Reply.error(413, "RequestTooLarge", f"The request body must be at most {_MAX_BODY_BYTES} bytes.")
        else:
            reply = self._run(handler, req, groups, self._take_fault(route), route=route)
        self._record(req, route=route, status=reply.status)
        return reply

    def _resolve(self, req: _Incoming) -> tuple[str, _RouteFn, dict[str, str]]:
        for method, pattern, route, handler in self._routes:
            match = pattern.fullmatch(req.path)
            if match and method == req.method:
                return route, handler, match.groupdict()
        return "unknown", self._not_found, {}

    def _take_fault(self, route: str) -> _Fault | None:
        with self._lock:
            queue = self._faults.get(route)
            return queue.popleft() if queue else None

    def _run(self, handler: _RouteFn, req: _Incoming, groups: dict[str, str], fault: _Fault | None, *,
             route: str) -> _Reply:
        if fault is not None and fault.name == "slow":
            time.sleep(fault.seconds)
        elif fault is not None and fault.name != "drop_after":
            return _fault_reply(fault, route=route)
        try:
            reply = handler(req, **groups)
        except _ApiError as err:
            reply = _Reply.error(err.status, err.code, err.message)
        if fault is not None and fault.name == "drop_after":
            return _DROPPED  # whatever the handler did (e.g. created a task) stays done
        return reply

    def _record(self, req: _Incoming, *, route: str, status: int) -> None:
        body = None
        if req.body:
            try:
                body = _summarize_data_uris(json.loads(req.body.decode("utf-8")))
            except (UnicodeDecodeError, ValueError):
                body = None
        kept = {name: req.headers[name.lower()] for name in ("X-DashScope-Async", "Content-Type", "User-Agent")
                if name.lower() in req.headers}
        present, key_id = self._key_id(req)
        with self._lock:
            self._log.append(LoggedRequest(
                method=req.method, path=req.path, query=dict(req.query), route=route, status=status, body=body,
                headers=kept, auth_present=present, auth_valid=key_id is not None, at_s=self._now_s(),
            ))

    def _key_id(self, req: _Incoming) -> tuple[bool, str | None]:
        """(whether a key was sent, the id of the configured key it matches)."""
        header = req.headers.get("authorization", "").strip()
        if not header:
            return False, None
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return True, None
        return True, self._key_ids.get(_key_digest(key.strip()))

    def _authorize(self, req: _Incoming) -> str:
        present, key_id = self._key_id(req)
        if not present:
            raise _ApiError(401, "InvalidApiKey", MSG_NO_KEY)
        if key_id is None:
            raise _ApiError(401, "InvalidApiKey", MSG_BAD_KEY)
        return key_id

    def _require_async(self, req: _Incoming) -> None:
        if req.headers.get("x-dashscope-async", "").strip().lower() != "enable":
            raise _ApiError(403, "AccessDenied", MSG_SYNC)

    def _limit_task_api(self, route: str) -> None:
        with self._lock:
            if not self._task_api_windows[route].admit(self._now_s()):
                raise _ApiError(429, "Throttling", MSG_THROTTLING)

    # ---- routes -----------------------------------------------------------------------------

    def _create(self, req: _Incoming) -> _Reply:
        key_id = self._authorize(req)
        self._require_async(req)
        with self._lock:
            if not self._submit_window.admit(self._now_s()):
                raise _ApiError(429, "Throttling.RateQuota", MSG_RATE_QUOTA)
        body = _parse_json_body(req.body)
        _check_envelope(body)
        oss_resolve = req.headers.get("x-dashscope-ossresourceresolve", "").strip().lower() == "enable"
        job: _Job | None = None
        error: _ApiError | None = None
        try:
            job = _validate_job(body, oss_resolve=oss_resolve)
        except _ApiError as err:
            if self._sync_validation:
                raise
            error = err  # mimic post-queue validation: accept now, fail the task later
        request_id = str(uuid.uuid4())
        with self._lock:
            task = self._new_task(job=job, error=error, n=job.n if job else _requested_n(body),
                                  request_id=request_id, api_key_id=key_id)
        return _Reply.json(200, {"request_id": request_id,
                                 "output": {"task_status": _Status.PENDING, "task_id": task.task_id}})

    def _text2image(self, req: _Incoming) -> _Reply:
        self._authorize(req)
        self._require_async(req)
        body = _parse_json_body(req.body)
        _check_envelope(body)  # another model gets "Model not exist."; this one is on the wrong path
        raise _invalid(MSG_URL_ERROR)

    def _query(self, req: _Incoming, *, task_id: str) -> _Reply:
        self._authorize(req)
        self._limit_task_api("query")
        with self._lock:
            self._catch_up()
            task = self._tasks.get(task_id)
            if task is None or task.plan.unknown:
                return _Reply.json(200, {"output": {"task_id": task_id, "task_status": _Status.UNKNOWN}})
            return _Reply.json(200, self._query_payload(task))

    def _query_payload(self, task: _Task) -> dict[str, Any]:
        output: dict[str, Any] = {"task_id": task.task_id, "task_status": task.status,
                                  "submit_time": _beijing_time(task.submit_s)}
        if task.started_s is not None:
            output["scheduled_time"] = _beijing_time(task.started_s)
        if task.ended_s is not None:
            output["end_time"] = _beijing_time(task.ended_s)
        payload: dict[str, Any] = {"output": output}
        if task.status == _Status.CANCELED:
            return payload
        ok = task.ok_indices if task.status == _Status.SUCCEEDED else []
        failed = task.n - len(ok) if task.status in (_Status.SUCCEEDED, _Status.FAILED) else 0
        if task.status == _Status.SUCCEEDED:
            output["results"] = [{"url": self._result_url(task.task_id, i)} if err is None
                                 else {"code": err[0], "message": err[1]} for i, err in enumerate(task.image_errors)]
            payload["usage"] = {"image_count": len(ok)}  # only successes are billed
        elif task.status == _Status.FAILED:
            output["code"], output["message"] = task.code, task.message
        output["task_metrics"] = {"TOTAL": task.n, "SUCCEEDED": len(ok), "FAILED": failed}
        return payload

    def _result_url(self, task_id: str, index: int) -> str:
        return f"http://{self.host}:{self.port}/results/{task_id}/{index}.png"

    def _cancel(self, req: _Incoming, *, task_id: str) -> _Reply:
        self._authorize(req)
        self._limit_task_api("cancel")
        with self._lock:
            now_s = self._catch_up()
            task = self._tasks.get(task_id)
            if task is None or task.status != _Status.PENDING:
                raise _ApiError(400, "UnsupportedOperation", MSG_CANCEL)
            self._queue.remove(task)
            task.status, task.ended_s = _Status.CANCELED, now_s
        return _Reply.json(200, {})

    def _list(self, req: _Incoming) -> _Reply:
        self._authorize(req)
        self._limit_task_api("list")
        q = req.query
        page_no = _positive_int(q.get("page_no"), name="page_no", default=1)
        page_size = _positive_int(q.get("page_size"), name="page_size", default=10)
        with self._lock:
            now_s = self._catch_up()
            start_s, end_s = _list_window(q, now_s=now_s)
            items = [self._list_item(t) for t in sorted(self._tasks.values(), key=lambda t: -t.submit_s)
                     if start_s <= t.submit_s <= end_s]
        filters = {"task_id": "task_id", "model_name": "model_name", "status": "status",
                   "api_key_id": "api_key_id", "region": "region"}
        for param, key in filters.items():
            if q.get(param):
                items = [item for item in items if str(item[key]).lower() == q[param].lower()]
        page = items[(page_no - 1) * page_size: page_no * page_size]
        return _Reply.json(200, {"total": len(items), "total_page": math.ceil(len(items) / page_size),
                                 "page_no": page_no, "page_size": page_size, "data": page})

    def _list_item(self, task: _Task) -> dict[str, Any]:
        item: dict[str, Any] = {
            "api_key_id": task.api_key_id, "caller_parent_id": ACCOUNT_ID, "caller_uid": ACCOUNT_ID,
            "gmt_create": int(task.submit_s * 1000), "model_name": MODEL, "region": REGION,
            "request_id": task.request_id, "status": _Status.UNKNOWN if task.plan.unknown else task.status,
            "task_id": task.task_id,
            "user_api_unique_key": f"apikey:v1:aigc:image2image:image-synthesis:{MODEL}",
        }
        if task.started_s is not None:
            item["start_time"] = int(task.started_s * 1000)
        if task.ended_s is not None:
            item["end_time"] = int(task.ended_s * 1000)
        return item

    def _download(self, req: _Incoming, *, task_id: str, index: str) -> _Reply:
        """Result files, like signed OSS URLs: no Authorization needed."""
        i = int(index)
        with self._lock:
            self._catch_up()
            task = self._tasks.get(task_id)
            if task is None or task.status != _Status.SUCCEEDED or i not in task.ok_indices or task.job is None:
                raise _ApiError(404, "NoSuchKey", MSG_NO_SUCH_KEY)
            job, cached = task.job, task.png_cache.get(i)
        if cached is None:
            cached = render_result(job, index=i)  # outside the lock: rendering can take a while
            with self._lock:
                task.png_cache.setdefault(i, cached)
        return _Reply(200, cached, content_type="image/png")

    def _admin_state(self, req: _Incoming) -> _Reply:
        with self._lock:
            self._catch_up()
            tasks = [{"task_id": t.task_id, "status": t.status,
                      "reported_status": _Status.UNKNOWN if t.plan.unknown else t.status}
                     for t in sorted(self._tasks.values(), key=lambda t: t.seq)]
            state = {"created_count": self._created_count, "tasks": tasks,
                     "requests": [r.to_json() for r in self._log]}
        return _Reply.json(200, state)

    def _admin_faults(self, req: _Incoming) -> _Reply:
        body = _parse_json_body(req.body)
        if not isinstance(body, dict):
            raise _ApiError(400, "BadRequest.IllegalInput", MSG_NOT_JSON_OBJECT)
        faults, outcomes = body.get("faults", []), body.get("outcomes", [])
        if not isinstance(faults, list) or not isinstance(outcomes, list):
            raise _invalid('"faults" and "outcomes" must be lists of strings.')
        try:
            if faults:
                self.inject(str(body.get("route", "")), *map(str, faults))
            if outcomes:
                self.next_task_outcomes(*map(str, outcomes))
        except ValueError as err:
            raise _invalid(str(err)) from None
        return _Reply.json(200, {"queued": {"route": body.get("route"), "faults": faults, "outcomes": outcomes}})

    def _not_found(self, req: _Incoming) -> _Reply:
        return _Reply.error(404, "NotFound", f"{MSG_NOT_FOUND} ({req.method} {req.path})")


def _requested_n(body: Mapping[str, Any]) -> int:
    """n for a task whose validation failed: the requested n when usable, else 1."""
    params = body.get("parameters")
    n = params.get("n") if isinstance(params, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 4 else 1


def _list_window(query: Mapping[str, str], *, now_s: float) -> tuple[float, float]:
    """Spec 8.1: default last 24 h; one bound given implies 24 h from it; at most 24 h."""
    start_s = _parse_compact_time(query.get("start_time"), name="start_time")
    end_s = _parse_compact_time(query.get("end_time"), name="end_time")
    if start_s is None and end_s is None:
        return now_s - LIST_WINDOW_S, now_s
    if start_s is None:
        assert end_s is not None
        start_s = end_s - LIST_WINDOW_S
    if end_s is None:
        end_s = start_s + LIST_WINDOW_S
    if not 0 <= end_s - start_s <= LIST_WINDOW_S:
        raise _invalid("end_time must not be before start_time, and the window must not exceed 24 hours.")
    # Whole seconds on the wire: include the whole last second.
    return start_s, end_s + 0.999


def _fault_reply(fault: _Fault, *, route: str) -> _Reply:
    if fault.name == "drop_before":
        return _DROPPED
    if fault.name == "http502_plain":
        return _Reply(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", content_type="text/html")
    if fault.name == "garbage":
        return _Reply(200, b"this is not a PNG file\x00\x01\x02" * 8, content_type="image/png")
    if fault.name == "throttle" and route != "create":
        return _Reply.error(429, "Throttling", MSG_THROTTLING)  # what the task API's own limit answers
    status, code, message = _FAULT_ERRORS[fault.name]
    return _Reply.error(status, code, message)


_FAULT_ERRORS: Mapping[str, tuple[int, str, str]] = {
    "throttle": (429, "Throttling.RateQuota", MSG_RATE_QUOTA),
    "http500": (500, "InternalError", MSG_INTERNAL),
    "http503": (503, "ServiceUnavailable", MSG_UNAVAILABLE),
    "http404": (404, "NoSuchKey", MSG_NO_SUCH_KEY),
    "arrearage": (400, "Arrearage", TASK_ERROR_MESSAGES["Arrearage"]),
    "invalid_key": (401, "InvalidApiKey", MSG_BAD_KEY),
    "moderation": (400, "DataInspectionFailed", TASK_ERROR_MESSAGES["DataInspectionFailed"]),
}


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        self.emulator = emulator
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def track(self, conn: socket.socket, *, is_open: bool) -> None:
        with self._open_lock:
            (self._open.add if is_open else self._open.discard)(conn)

    def close_open_connections(self) -> None:
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real gateway
    server_version = "wanx-imageedit-emulator"
    timeout = 60  # idle keep-alive connections are closed after this
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle plus the client's
    # delayed ACK adds ~40 ms to every answer.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, is_open=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, is_open=False)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        too_large = not 0 <= length <= _MAX_BODY_BYTES
        body = self.rfile.read(length) if length > 0 and not too_large else b""
        split = urlsplit(self.path)
        incoming = _Incoming(
            method=method, path=unquote(split.path), query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers={k.lower(): v for k, v in self.headers.items()}, body=body, body_too_large=too_large,
        )
        reply = self.server.emulator._handle(incoming)
        if reply.drop or too_large:
            self.close_connection = True  # dropped, or an unread body is still on the wire
        if not reply.drop:  # a drop writes nothing: the client just sees the connection close
            self._send(reply)

    def _send(self, reply: _Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server signature
        """Silent: the request log lives in Emulator.requests (and never includes the key)."""


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def serve_forever(*, host: str, port: int, **options: Any) -> None:
    """Run an emulator until Ctrl-C. `options` are Emulator's keyword arguments."""
    with Emulator(host=host, port=port, **options) as emulator:
        print(f"wanx2.1-imageedit emulator listening on {emulator.base_url}", flush=True)
        print(f"  point the SDK or the pack at it: DASHSCOPE_HTTP_BASE_URL={emulator.base_url}", flush=True)
        print("  press Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(0.5)  # short sleeps keep Ctrl-C responsive on every platform
        except KeyboardInterrupt:
            print("stopping", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local emulator of DashScope wanx2.1-imageedit.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", action="append", dest="api_keys",
                        help=f"an accepted API key (repeatable; default {DEFAULT_API_KEY})")
    parser.add_argument("--pending-s", type=float, default=0.05)
    parser.add_argument("--running-s", type=float, nargs=2, metavar=("LOW", "HIGH"), default=(5.0, 15.0))
    parser.add_argument("--submit-rps", type=int, default=2)
    parser.add_argument("--max-running", type=int, default=2)
    parser.add_argument("--task-api-qps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--async-validation", action="store_true",
                        help="accept invalid requests and fail the task instead of answering 400")
    args = parser.parse_args(argv)
    serve_forever(
        host=args.host, port=args.port, api_keys=tuple(args.api_keys or (DEFAULT_API_KEY,)),
        pending_s=args.pending_s, running_s=tuple(args.running_s), submit_rps=args.submit_rps,
        max_running=args.max_running, task_api_qps=args.task_api_qps, seed=args.seed,
        sync_validation=not args.async_validation,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
