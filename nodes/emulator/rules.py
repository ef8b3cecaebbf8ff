"""The service's own rules, copied from the spec (``dashscope-imageedit-api.md``) independently of
the pack's client table, so a mistake in that table shows up as a disagreement with the emulator:
constants and limits, the request envelope, functions, prompts, parameters, input images, the
list API's time window and the service's timestamp formats. Everything here is a pure function
of its arguments."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from PIL import Image

# ---- constants (spec sections 1, 4, 5, 7, 10) ------------------------------------------------

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
RETENTION_S = 24 * 3600.0  # task data lives 24 h after the task ends
LINK_LIFETIME_S = 24 * 3600.0  # a signed result URL is valid 24 h from when a query handed it out
TASK_TIMEOUT_S = 3 * 3600.0  # a task with no result within 3 h fails with InternalError.Timeout
LIST_WINDOW_S = 24 * 3600.0
MAX_N = 4

BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")

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

# ---- messages quoted from the spec's error tables (section 9) where it gives them -------------

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
MSG_GATEWAY_TIMEOUT = "Request timed out, please try again later."
MSG_NOT_FOUND = "The requested resource does not exist."
MSG_NO_SUCH_KEY = "The specified key does not exist."

# Whole-task failure messages, for `next_task_outcomes("fail:CODE")` (spec section 9).
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
# A failed image inside a SUCCEEDED task: moderation then speaks of the output (spec 7.3).
IMAGE_ERROR_MESSAGES: Mapping[str, str] = {
    **TASK_ERROR_MESSAGES,
    "DataInspectionFailed": "Output data may contain inappropriate content.",
}


def error_message(code: str, *, per_image: bool = False) -> str:
    """The service's message for `code`, or a marked stand-in for a code the spec does not quote."""
    table = IMAGE_ERROR_MESSAGES if per_image else TASK_ERROR_MESSAGES
    return table.get(code, f"{code} (emulated failure).")


class ApiError(Exception):
    """An error answer: HTTP status plus the DashScope ``code``/``message`` pair."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def invalid(message: str) -> ApiError:
    return ApiError(400, "InvalidParameter", message)


# ---- parameters (spec 4.2, 4.3) --------------------------------------------------------------


@dataclass(frozen=True)
class ParamRule:
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


_COMMON_PARAMS: Mapping[str, ParamRule] = {
    "n": ParamRule("int", 1, MAX_N, 1),
    "seed": ParamRule("int", 0, SEED_MAX, None),
    "watermark": ParamRule("bool", default=False),
}
_STRENGTH = ParamRule("number", 0.0, 1.0, 0.5)
_SCALE = ParamRule("number", 1.0, 2.0, 1.0)

# Function -> the parameters it takes besides the common ones (spec 4.3).
FUNCTION_PARAMS: Mapping[str, Mapping[str, ParamRule]] = {
    "stylization_all": {"strength": _STRENGTH},
    "stylization_local": {},
    "description_edit": {"strength": _STRENGTH},
    MASKED_FUNCTION: {},
    "remove_watermark": {},
    "expand": {"top_scale": _SCALE, "bottom_scale": _SCALE, "left_scale": _SCALE, "right_scale": _SCALE},
    "super_resolution": {"upscale_factor": ParamRule("int", 1, 4, 1)},
    "colorization": {},
    "doodle": {"is_sketch": ParamRule("bool", default=False)},
    "control_cartoon_feature": {},
}


# ---- a validated request ---------------------------------------------------------------------


@dataclass(frozen=True)
class DecodedImage:
    data: bytes
    width_px: int
    height_px: int
    sha256: str


@dataclass(frozen=True)
class Job:
    """A validated create request: everything needed to run the task and render its results."""

    function: str
    prompt: str  # already truncated to PROMPT_MAX_CHARS
    params: Mapping[str, Any]  # effective values, defaults filled in, seed resolved
    base: DecodedImage
    mask: DecodedImage | None

    @property
    def n(self) -> int:
        return int(self.params["n"])

    def image_key(self, index: int) -> bytes:
        """Everything a result image depends on; same key, same bytes."""
        parts = [self.function, self.prompt, json.dumps(self.params, sort_keys=True), str(index),
                 self.base.sha256, self.mask.sha256 if self.mask else "-"]
        return hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()


# ---- request validation (spec sections 4 and 5) ----------------------------------------------


def parse_json_body(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise invalid(MSG_BAD_BODY) from None


def check_envelope(body: Any) -> None:
    """The gateway-level checks; always synchronous, even with sync_validation=False."""
    if not isinstance(body, dict):
        raise ApiError(400, "BadRequest.IllegalInput", MSG_NOT_JSON_OBJECT)
    if body.get("model") in (None, ""):
        raise ApiError(400, "BadRequest.EmptyModel", MSG_EMPTY_MODEL)
    if body["model"] != MODEL:
        raise invalid(MSG_MODEL)
    if "input" not in body or body["input"] is None:
        raise ApiError(400, "BadRequest.EmptyInput", MSG_EMPTY_INPUT)
    if not isinstance(body["input"], dict):
        raise ApiError(400, "BadRequest.IllegalInput", MSG_NOT_JSON_OBJECT)


def validate_job(body: Mapping[str, Any], *, oss_resolve: bool = False) -> Job:
    """The Job a create request with this (envelope-checked) body runs; raises ApiError on the first
    problem. Cheap checks come before decoding images. Public so a caller can build the Job of a
    request up front, e.g. to render its results before the run (see `Emulator(render=...)`)."""
    inputs: Mapping[str, Any] = body["input"]
    unknown_inputs = sorted(set(inputs) - _INPUT_FIELDS)
    if unknown_inputs:
        raise invalid(f"input.{unknown_inputs[0]} is not supported by {MODEL}.")
    function = _check_function(inputs.get("function"))
    prompt = _check_prompt(inputs.get("prompt"), function=function)
    params = _check_parameters(body.get("parameters"), function=function)
    base_url = inputs.get("base_image_url")
    mask_url = inputs.get("mask_image_url")
    if base_url in (None, ""):
        raise invalid("Field required: input.base_image_url")
    if function == MASKED_FUNCTION and mask_url in (None, ""):
        raise invalid(f"Field required: input.mask_image_url (function {function} needs a mask)")
    if function != MASKED_FUNCTION and mask_url is not None:
        raise invalid(f"input.mask_image_url is not supported by function '{function}'; only "
                      f"{MASKED_FUNCTION} takes a mask.")
    base = _decode_image_url(base_url, field_name="base_image_url", oss_resolve=oss_resolve)
    mask = None
    if mask_url is not None:
        mask = _decode_image_url(mask_url, field_name="mask_image_url", oss_resolve=oss_resolve)
        if (mask.width_px, mask.height_px) != (base.width_px, base.height_px):
            raise invalid(f"The resolution of mask_image_url ({mask.width_px}x{mask.height_px}) must equal "
                          f"the resolution of base_image_url ({base.width_px}x{base.height_px}).")
    if params["seed"] is None:
        # The real service picks a random seed; we derive one from the request so the same
        # request gives the same images.
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8")).digest()
        params["seed"] = int.from_bytes(digest[:4], "big") & SEED_MAX
    return Job(function=function, prompt=prompt, params=params, base=base, mask=mask)


def requested_n(body: Mapping[str, Any]) -> int:
    """n for a task whose validation failed: the requested n when usable, else 1."""
    params = body.get("parameters")
    n = params.get("n") if isinstance(params, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_N else 1


def _check_function(value: Any) -> str:
    if value in (None, ""):
        raise invalid("Field required: input.function")
    if not isinstance(value, str) or value not in FUNCTION_PARAMS:
        raise invalid(f"input.function {value!r} is not supported; supported: {', '.join(FUNCTION_PARAMS)}.")
    return value


def _check_prompt(value: Any, *, function: str) -> str:
    if value is None:
        raise invalid("Field required: input.prompt")
    if not isinstance(value, str):
        raise invalid("input.prompt must be a string.")
    if not value.strip() and function not in _EMPTY_PROMPT_FUNCTIONS:
        raise invalid(f"input.prompt must not be empty for function '{function}'.")
    return value[:PROMPT_MAX_CHARS]  # longer prompts are silently truncated (spec 4.1)


def _check_parameters(value: Any, *, function: str) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise invalid("parameters must be a JSON object.")
    rules = {**FUNCTION_PARAMS[function], **_COMMON_PARAMS}
    for name in sorted(value):
        if name not in rules:
            raise invalid(f"parameters.{name} is not supported by function '{function}'"
                          f" (it takes: {', '.join(rules)}).")
        if not rules[name].accepts(value[name]):
            raise invalid(f"parameters.{name} must be {rules[name].describe()}, got {json.dumps(value[name])}.")
    return {name: value.get(name, rule.default) for name, rule in rules.items()}


def _decode_image_url(url: Any, *, field_name: str, oss_resolve: bool) -> DecodedImage:
    if not isinstance(url, str):
        raise invalid(f"input.{field_name} must be a string.")
    lowered = url[:16].lower()
    if lowered.startswith(("http://", "https://")):
        # The emulator has no network; the real service reports a failed download this way.
        raise ApiError(400, "InvalidParameter.DataInspection", MSG_DOWNLOAD)
    if lowered.startswith("oss://"):
        if not oss_resolve:
            raise invalid(MSG_BAD_URL)
        raise ApiError(400, "InvalidParameter.DataInspection", MSG_OSS_MISSING)  # no uploads here
    if not lowered.startswith("data:"):
        raise invalid(MSG_BAD_URL)
    data = _data_uri_bytes(url)
    if len(data) > MAX_IMAGE_BYTES:
        raise invalid(f"input.{field_name}: the image file is {len(data)} bytes; at most "
                      f"{MAX_IMAGE_BYTES} bytes (10 MB) are allowed.")
    return _inspect_image(data, mime=url[5:].split(";", 1)[0].strip().lower(), field_name=field_name)


def _data_uri_bytes(url: str) -> bytes:
    header, sep, payload = url.partition(",")
    parts = [p.strip().lower() for p in header[5:].split(";")]
    if not sep or parts[0] not in _MIME_TO_PIL_FORMATS or "base64" not in parts[1:]:
        raise invalid(MSG_FORMAT)
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(MSG_FORMAT) from None


def _inspect_image(data: bytes, *, mime: str, field_name: str) -> DecodedImage:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in _MIME_TO_PIL_FORMATS[mime]:
                raise invalid(MSG_FORMAT)
            width_px, height_px = image.size
            _check_side_lengths(width_px, height_px, field_name=field_name)
            image.load()  # a truncated or corrupt file fails here, not at render time
    except ApiError:
        raise
    except Exception:  # Pillow raises many types for undecodable data
        raise invalid(MSG_FORMAT) from None
    return DecodedImage(data, width_px, height_px, hashlib.sha256(data).hexdigest())


def _check_side_lengths(width_px: int, height_px: int, *, field_name: str) -> None:
    if not (MIN_SIDE_PX <= width_px <= MAX_SIDE_PX and MIN_SIDE_PX <= height_px <= MAX_SIDE_PX):
        raise invalid(f"input.{field_name}: the image is {width_px}x{height_px}; width and height must each "
                      f"be between {MIN_SIDE_PX} and {MAX_SIDE_PX} pixels.")


def summarize_data_uris(value: Any) -> Any:
    """Copy of a JSON value with every data URI replaced by a short, loggable summary."""
    if isinstance(value, str) and value[:5].lower() == "data:":
        header, _, payload = value.partition(",")
        try:
            data = base64.b64decode("".join(payload.split()), validate=True)
        except (binascii.Error, ValueError):
            return f"{header},<{len(payload)} chars, not base64>"
        return f"{header},<{len(data)} bytes sha256:{hashlib.sha256(data).hexdigest()[:12]}>"
    if isinstance(value, dict):
        return {k: summarize_data_uris(v) for k, v in value.items()}
    if isinstance(value, list):
        return [summarize_data_uris(v) for v in value]
    return value


# ---- the list API and timestamps (spec 7.3, 8.1) ---------------------------------------------


def beijing_time(epoch_s: float) -> str:
    """The service's timestamp format, Beijing local time: YYYY-MM-DD HH:mm:ss.SSS."""
    moment = datetime.fromtimestamp(epoch_s, BEIJING)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _parse_compact_time(value: str | None, *, name: str) -> float | None:
    """The list API's YYYYMMDDhhmmss (Beijing time) -> epoch seconds."""
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=BEIJING).timestamp()
    except ValueError:
        raise invalid(f"{name} must be formatted YYYYMMDDhhmmss, got {value!r}.") from None


def list_window(query: Mapping[str, str], *, now_s: float) -> tuple[float, float]:
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
        raise invalid("end_time must not be before start_time, and the window must not exceed 24 hours.")
    # Whole seconds on the wire: include the whole last second.
    return start_s, end_s + 0.999


def positive_int(value: str | None, *, name: str, default: int) -> int:
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise invalid(f"{name} must be a positive integer, got {value!r}.")
    return number
