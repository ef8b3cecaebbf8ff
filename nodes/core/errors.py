"""One error family for the pack. Every message is written for the artist: what happened,
the service's code and the task or request id, and what to do next. ComfyUI shows
``str(exc)`` to the user, so these strings are UI text. No message ever carries the API key.

Each adapter words the remedy for its own user: an ``Advice`` is the node's wording (it *is*
that string) and carries the command line's wording of the same remedy; ``str(exc)`` stays the
node's text and ``exc.text(for_cli=True)`` is the CLI's. Plain-string advice suits both."""

from __future__ import annotations


class Advice(str):
    """A remedy worded for the node's user, with ``cli``: the same remedy for the command line
    (``--mask FILE`` where the node says "Connect a MASK")."""

    cli: str

    def __new__(cls, node: str, *, cli: str) -> Advice:
        made = super().__new__(cls, node)
        made.cli = cli
        return made

    def __reduce__(self) -> tuple[object, ...]:  # copy/pickle keep both wordings
        return (_advice, (str(self), self.cli))


def _advice(node: str, cli: str) -> Advice:
    return Advice(node, cli=cli)


def cli_wording(advice: str | None) -> str | None:
    """The command line's wording of ``advice`` (the same text when it has no CLI variant)."""
    return getattr(advice, "cli", advice)


# What the artist should do, by the service's error code (spec section 9). Codes not listed
# fall back to the generic advice of their error class.
_ADVICE_BY_CODE: dict[str, str] = {
    "InvalidApiKey": Advice(
        "Check the API key. wanx2.1-imageedit runs only in the China (Beijing) region, so it "
        "needs a Beijing-region DashScope key; a Singapore/international key is refused here. "
        "Set DASHSCOPE_API_KEY, or put the key in ~/.dashscope/api_key.",
        cli="Check the API key. wanx2.1-imageedit runs only in the China (Beijing) region, so it "
        "needs a Beijing-region DashScope key; a Singapore/international key is refused here. "
        "Run `export DASHSCOPE_API_KEY=sk-...` with a Beijing key, or put the key alone in ~/.dashscope/api_key.",
    ),
    "Arrearage": "Your Alibaba Cloud account has an overdue payment. Top it up in the console, then retry.",
    "AccessDenied.Unpurchased": (
        "Model Studio (Bailian) is not activated for this account, or the model is not enabled. "
        "Activate it in the Alibaba Cloud console (China (Beijing) region), then retry."
    ),
    "Model.AccessDenied": "This workspace has no permission for wanx2.1-imageedit. Grant it in the console.",
    "Workspace.AccessDenied": "This workspace has no permission for wanx2.1-imageedit. Grant it in the console.",
    "AllocationQuota.FreeTierOnly": (
        "The free tier is used up and 'stop when free quota is used up' is on. Turn it off in the "
        "console to pay per image."
    ),
    "DataInspectionFailed": (
        "Content moderation refused this input or output. Change the image or the prompt; "
        "a moderated request is not billed."
    ),
    "IPInfringementSuspect": (
        "The service suspects intellectual-property infringement in the prompt or image. "
        "Change the input; nothing was billed."
    ),
    "Throttling": "The account's rate limit was hit. Wait a minute and retry, or run fewer tasks at once.",
    "Throttling.RateQuota": "The account's rate limit was hit. Wait a minute and retry, or run fewer tasks at once.",
    "Throttling.BurstRate": "Requests rose too quickly. Wait a minute and retry with a smaller batch.",
    "Throttling.AllocationQuota": "The account's quota is used up. Raise the quota in the console.",
    "InternalError": "The service had an internal error. Retry in a moment.",
    "InternalError.Timeout": "The service timed out on this image. Retry it.",
    "UNKNOWN": (
        "The service no longer knows this task: task data is kept only 24 hours, and a task is "
        "visible only to keys of the account (and region) that created it."
    ),
}


def advice_for(code: str | None) -> str | None:
    """Return the advice sentence for a service error code, matching its family prefix too."""
    if not code:
        return None
    if code in _ADVICE_BY_CODE:
        return _ADVICE_BY_CODE[code]
    if code.startswith("Throttling"):
        return _ADVICE_BY_CODE["Throttling"]
    if code.startswith("InvalidParameter"):
        return "Fix the named parameter or input and run again; nothing was billed."
    if code.startswith("InternalError"):
        return _ADVICE_BY_CODE["InternalError"]
    return None


def _compose(what: str, *, code: str | None, ids: dict[str, str | None], todo: str | None) -> str:
    parts = [what.rstrip(".") + "."]
    tags = [f"code {code}"] if code else []
    tags += [f"{name} {value}" for name, value in ids.items() if value and value not in what]  # each id once
    if tags:
        parts.append("(" + ", ".join(tags) + ")")
    if todo:
        parts.append(todo)
    return " ".join(parts)


class WanxError(Exception):
    """Base of everything this pack raises on purpose."""

    default_advice: str | None = None

    def __init__(
        self,
        what: str,
        *,
        code: str | None = None,
        request_id: str | None = None,
        task_id: str | None = None,
        advice: str | None = None,
    ) -> None:
        self.what = what
        self.code = code
        self.request_id = request_id
        self.task_id = task_id
        self.advice = advice or advice_for(code) or self.default_advice
        super().__init__(self.text())

    def text(self, *, for_cli: bool = False) -> str:
        """The whole message: the node's wording (``str(exc)``), or with ``for_cli`` the command line's."""
        todo = cli_wording(self.advice) if for_cli else self.advice
        return _compose(self.what, code=self.code, ids={"task": self.task_id, "request": self.request_id}, todo=todo)


class InputError(WanxError):
    """The input breaks a rule of the service; raised before anything billable is sent."""

    def __init__(self, rule: str, *, value: object, fix: str) -> None:
        super().__init__(f"{rule}; got {value}", advice=fix)


class ConfigError(WanxError):
    """The pack is not set up to reach the service (no key, bad base URL)."""


class ApiError(WanxError):
    """The HTTP call failed: the service refused it, or it could not be completed."""

    default_advice = "Retry in a moment; if it persists, check the service status and your network."

    def __init__(self, what: str, *, http_status: int | None = None, **kwargs: object) -> None:
        self.http_status = http_status
        super().__init__(what, **kwargs)  # type: ignore[arg-type]


class TransientError(ApiError):
    """A failure that is safe to retry for idempotent calls (query, list, download)."""


class SubmitUncertainError(ApiError):
    """The create request went out but no clear answer came back: a paid task may exist.

    It is never resent blindly, because that could bill the same edit twice: the runner first asks
    the task list whether the service took it (``sent_at_s`` is when the request went out)."""

    def __init__(self, what: str, *, sent_at_s: float | None = None, slow: bool = False, **kwargs: object) -> None:
        self.sent_at_s = sent_at_s
        self.slow = slow  # no answer in time: the service may still be working on the request
        super().__init__(what, **kwargs)  # type: ignore[arg-type]

    default_advice = Advice(
        "A task may have been created and may be billed. Do not simply queue again: list recent "
        "tasks with `wanx-imageedit tasks` (or in the Model Studio console) and recover the result "
        "with `wanx-imageedit fetch TASK_ID` before retrying.",
        cli="A task may have been created and may be billed. Do not simply run the edit again: list recent "
        "tasks with `wanx-imageedit tasks` and recover the result with `wanx-imageedit fetch TASK_ID` first.",
    )


class TaskFailedError(WanxError):
    """The task ran and the service reports it failed (whole task, or every image of it)."""

    default_advice = "Failed images are not billed. Adjust the input or retry."


class TaskTimeoutError(WanxError):
    """Our wait ran out while the task was still pending or running on the service."""

    default_advice = (
        "The task may still finish and be billed. Recover its result within 24 hours with "
        "`wanx-imageedit fetch TASK_ID`, or raise the wait limit (WANX_TASK_TIMEOUT_S)."
    )


class CanceledError(WanxError):
    """The user interrupted the run. Pending tasks were cancelled on the service. ``outcome``: the
    images that had already arrived (an EditOutcome), or None."""

    outcome: object = None


class BudgetError(WanxError):
    """A submission would cross the daily limit; nothing was sent."""

    @classmethod
    def over_limit(cls, *, images: int, used: int, limit: int, source: str | None) -> BudgetError:
        return cls(f"this run would send {images} image(s), but {used} of today's limit of {limit} ({source}) "
                   "are already used or in flight",
                   advice="Nothing was sent. Raise or unset WANX_DAILY_IMAGE_LIMIT / WANX_DAILY_BUDGET, or wait "
                   "until tomorrow.")


class SettingsRefused(WanxError):
    """A change to the stored settings that the settings panel refuses; the message is shown as is."""

    def __init__(self, what: str, *, http_status: int = 400) -> None:
        self.http_status = http_status
        super().__init__(what)


class Interrupted(Exception):  # noqa: N818 - control flow, not an error the user sees
    """Raised by Ticker.wait once the user cancels; the runner turns it into CanceledError."""


def billed_advice(task_id: str | None) -> Advice:
    """What to say about an image that was generated and billed but not handed over."""
    target = f" {task_id}" if task_id else " TASK_ID"
    return Advice("It was generated and billed, and it is not lost: recover it within 24 hours with the Wanx Fetch "
                  f"Task Result node or `wanx-imageedit fetch{target}` (free, never a new task).",
                  cli=f"It was generated and billed, and it is not lost: recover it within 24 hours with "
                  f"`wanx-imageedit fetch{target}` (free, never a new task).")


class DownloadError(WanxError):
    """A result image could not be fetched or decoded. It was billed; `fetch` recovers it.

    ``final``: retrying the same bytes cannot help (too large to decode), unlike a truncated transfer."""

    def __init__(self, what: str, *, final: bool = False, **kwargs: object) -> None:
        self.final = final
        kwargs.setdefault("advice", billed_advice(kwargs.get("task_id")))  # type: ignore[arg-type]
        super().__init__(what, **kwargs)  # type: ignore[arg-type]


class ProtocolError(WanxError):
    """The service answered in a shape this pack does not understand."""

    default_advice = "This pack may be out of date for the service. Please report it with the ids above."
