"""Where the key, the endpoint and the limits come from. The key is read the way the official
SDK reads it, so an existing setup just works: DASHSCOPE_API_KEY, else the file named by
DASHSCOPE_API_KEY_FILE_PATH, else ~/.dashscope/api_key. It never appears in a repr."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError

BEIJING_BASE_URL = "https://dashscope.aliyuncs.com/api/v1"
INTL_HOST = "dashscope-intl.aliyuncs.com"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})  # names of this machine: the emulator's home


@dataclass(frozen=True)
class Settings:
    api_key: str = field(repr=False)
    key_source: str  # "environment", "key file <path>", "settings": shown instead of the key
    base_url: str = BEIJING_BASE_URL
    max_in_flight: int = 2  # the account's concurrent-task quota (spec section 10)
    submits_per_s: float = 2.0  # the account's task-submission quota
    task_timeout_s: float = 900.0  # our whole wait for one task, queue included
    poll_outage_s: float = 600.0  # how long polls may keep failing before we give up on a task
    currency: str = "CNY"  # for cost estimates and the report: CNY (China site) or USD (international site)

    @property
    def key_hint(self) -> str:
        """Where the key comes from and its last 4 characters: all the UI may ever show."""
        return f"{self.key_source}, ending …{self.api_key[-4:]}" if len(self.api_key) >= 8 else self.key_source

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, home: Path | None = None, stored_dir: Path | None = None,
    ) -> Settings:
        """Read settings from ``environ`` (default os.environ). ``stored_dir`` holds what was saved
        through ComfyUI's settings (``api_key``, ``settings.json``); the environment and the SDK's
        key files win over it."""
        env = os.environ if environ is None else environ
        stored = read_stored(stored_dir)
        key, source = find_key(env, home=home or Path.home(),
                               stored_key_file=stored_dir / KEY_FILE_NAME if stored_dir else None)
        base_url = (env.get("DASHSCOPE_HTTP_BASE_URL", "").strip() or str(stored.get("base_url") or "")).rstrip("/")
        base_url = base_url or BEIJING_BASE_URL
        check_base_url(base_url)
        return cls(
            api_key=key, key_source=str(source), base_url=base_url,
            max_in_flight=_int(env, "WANX_MAX_CONCURRENT_TASKS", 2, minimum=1),
            submits_per_s=float(_int(env, "WANX_SUBMITS_PER_SECOND", 2, minimum=1)),
            task_timeout_s=float(_int(env, "WANX_TASK_TIMEOUT_S", 900, minimum=10)),
            poll_outage_s=float(_int(env, "WANX_POLL_OUTAGE_S", 600, minimum=10)),
            currency="USD" if str(stored.get("currency", "")).upper() == "USD" else "CNY",
        )


KEY_FILE_NAME = "api_key"
SETTINGS_FILE_NAME = "settings.json"


def read_stored(stored_dir: Path | None) -> dict[str, object]:
    """The non-secret settings saved from ComfyUI's settings panel (endpoint, currency)."""
    path = stored_dir / SETTINGS_FILE_NAME if stored_dir else None
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError(f"the saved settings file {path} is unreadable",
                          advice="Fix or delete it, then save the settings again.") from None
    return data if isinstance(data, dict) else {}


def check_base_url(base_url: str) -> None:
    """Refuse endpoints this model cannot work with, before any request is made."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"DASHSCOPE_HTTP_BASE_URL is not an http(s) URL: {base_url!r}",
                          advice="Use e.g. https://dashscope.aliyuncs.com/api/v1, or unset it.")
    if parts.hostname == INTL_HOST:
        raise ConfigError(
            "DASHSCOPE_HTTP_BASE_URL points at the international (Singapore) endpoint, but "
            "wanx2.1-imageedit exists only in China (Beijing)",
            advice=f"Use {BEIJING_BASE_URL} with a Beijing-region key.",
        )
    if parts.scheme == "http" and parts.hostname not in LOOPBACK:
        raise ConfigError(f"refusing to send the API key over plain http to {parts.hostname}",
                          advice="Use https, or a loopback address for the emulator.")


@dataclass(frozen=True)
class KeySource:
    """Where the key came from; the only thing about the key the interface may show."""

    kind: str  # "environment", "key_file" or "settings"
    detail: str | None = None  # the variable or the file

    def __str__(self) -> str:
        return {"environment": f"environment ({self.detail})", "key_file": f"key file {self.detail}",
                "settings": "ComfyUI settings"}[self.kind]


def find_key(env: Mapping[str, str], *, home: Path, stored_key_file: Path | None) -> tuple[str, KeySource]:
    """The one rule for which key wins: DASHSCOPE_API_KEY, then the file named by
    DASHSCOPE_API_KEY_FILE_PATH, then ~/.dashscope/api_key, then the key saved in ComfyUI."""
    key = env.get("DASHSCOPE_API_KEY", "").strip()
    if key:
        return key, KeySource("environment", "DASHSCOPE_API_KEY")
    candidates = []
    if env.get("DASHSCOPE_API_KEY_FILE_PATH"):
        candidates.append(Path(env["DASHSCOPE_API_KEY_FILE_PATH"]).expanduser())
    candidates.append(home / ".dashscope" / "api_key")
    for path in candidates:
        if path.is_file():
            key = path.read_text(encoding="utf-8").strip()
            if key:
                return key, KeySource("key_file", str(path))
    if stored_key_file is not None and stored_key_file.is_file():
        key = stored_key_file.read_text(encoding="utf-8").strip()
        if key:
            return key, KeySource("settings", str(stored_key_file))
    raise ConfigError(
        "no DashScope API key is configured",
        advice=(
            "Set DASHSCOPE_API_KEY in the environment ComfyUI starts from, or put the key alone in "
            "~/.dashscope/api_key. It must be a China (Beijing) region key. To try the pack without "
            "a key, run the emulator (`wanx-imageedit emulator`) and set DASHSCOPE_HTTP_BASE_URL to it."
        ),
    )




def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    value = env_number(env, name, minimum=minimum, whole=True)
    return default if value is None else int(value)


def env_number(env: Mapping[str, str], name: str, *, minimum: float = 0, whole: bool = False) -> float | None:
    """A numeric setting from the environment, or None when unset; anything else is a ConfigError."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(int(raw)) if whole else float(raw)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"{name} must be {kind}; got {raw!r}", advice="Fix or unset it.") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}; got {raw!r}", advice="Fix or unset it.")
    return value
