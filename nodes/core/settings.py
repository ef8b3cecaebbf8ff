"""Every setting of the pack, from the environment and from what the settings panel stored: the
one module that reads them. Nothing is read at import time.

The key is read the way the official SDK reads it, so an existing setup just works:
DASHSCOPE_API_KEY, else the file named by DASHSCOPE_API_KEY_FILE_PATH, else ~/.dashscope/api_key,
else the key saved in ComfyUI's settings panel. It never appears in a repr.

A key is bound to the endpoint it was configured with. The environment key and the key files go
only to DASHSCOPE_HTTP_BASE_URL, else the default (China (Beijing)) endpoint: never to an endpoint
stored from the panel, so whoever can reach the panel cannot redirect them. A key saved in the
panel is stored together with the endpoint it was saved for, and goes only there."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from .errors import Advice, ConfigError
from .files import atomic_write
from .functions import PRICE_PER_IMAGE

BEIJING_BASE_URL = "https://dashscope.aliyuncs.com/api/v1"
INTL_HOST = "dashscope-intl.aliyuncs.com"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})  # names of this machine: the emulator's home

KEY_ENV = "DASHSCOPE_API_KEY"
KEY_FILE_ENV = "DASHSCOPE_API_KEY_FILE_PATH"
BASE_URL_ENV = "DASHSCOPE_HTTP_BASE_URL"
REMOTE_SETTINGS_ENV = "WANX_ALLOW_REMOTE_SETTINGS"  # lets other machines change the key and endpoint

KEY_FILE_NAME = "api_key"  # in the panel's folder: {"api_key", "base_url"} (a bare key before the binding)
SETTINGS_FILE_NAME = "settings.json"  # in the panel's folder: {"base_url", "currency"}
CURRENCIES = tuple(PRICE_PER_IMAGE)
DEFAULT_CURRENCY = "CNY"

REGION_ADVICE = (
    "wanx2.1-imageedit exists only in the China (Beijing) region, so it needs a Beijing-region DashScope key: "
    "an international (Singapore) key is refused with InvalidApiKey."
)

KeyKind = Literal["environment", "key_file", "settings"]
UrlSource = Literal["environment", "settings", "default"]


@dataclass(frozen=True)
class KeySource:
    """Where the key came from; the only thing about the key the interface may show."""

    kind: KeyKind
    detail: str | None = None  # the variable or the file

    def __str__(self) -> str:
        return {"environment": f"environment ({self.detail})", "key_file": f"key file {self.detail}",
                "settings": "ComfyUI settings"}.get(self.kind, self.kind)


def key_hint(key: str | None) -> str | None:
    """The last 4 characters, and only for a key long enough that they give nothing away."""
    return f"…{key[-4:]}" if key and len(key) >= 8 else None


@dataclass(frozen=True)
class Settings:
    api_key: str = field(repr=False)
    key_source: KeySource
    base_url: str = BEIJING_BASE_URL  # the endpoint bound to this key: the only place it is sent
    max_in_flight: int = 2  # the account's concurrent-task quota (spec section 10)
    submits_per_s: float = 2.0  # the account's task-submission quota
    task_timeout_s: float = 900.0  # our whole wait for one task, queue included
    poll_outage_s: float = 600.0  # how long polls may keep failing before we give up on a task
    currency: str = DEFAULT_CURRENCY  # for cost estimates and the report: CNY (China site) or USD (international)

    @property
    def key_hint(self) -> str:
        """Where the key comes from and its last 4 characters: all the UI may ever show."""
        hint = key_hint(self.api_key)
        return f"{self.key_source}, ending {hint}" if hint else str(self.key_source)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, home: Path | None = None, stored_dir: Path | None = None,
    ) -> Settings:
        """Read settings from ``environ`` (default os.environ). ``stored_dir`` holds what was saved
        through ComfyUI's settings panel; the environment and the SDK's key files win over it."""
        env = os.environ if environ is None else environ
        stored = read_stored(stored_dir)
        chosen = bound_key(env, home=home or Path.home(), stored_dir=stored_dir, stored=stored)
        return cls(
            api_key=chosen.api_key, key_source=chosen.source, base_url=chosen.base_url,
            max_in_flight=_int(env, "WANX_MAX_CONCURRENT_TASKS", 2, minimum=1),
            submits_per_s=float(_int(env, "WANX_SUBMITS_PER_SECOND", 2, minimum=1)),
            task_timeout_s=float(_int(env, "WANX_TASK_TIMEOUT_S", 900, minimum=10)),
            poll_outage_s=float(_int(env, "WANX_POLL_OUTAGE_S", 600, minimum=10)),
            currency=stored.currency,
        )


# --- endpoints -----------------------------------------------------------------------------------


def normalise_base_url(raw: object) -> str:
    """The one spelling of an endpoint: trimmed, no trailing slash; empty means the default."""
    return str(raw or "").strip().rstrip("/") or BEIJING_BASE_URL


def check_base_url(base_url: str, *, name: str = BASE_URL_ENV) -> None:
    """Refuse endpoints this model cannot work with, before any request is made. ``name`` is what
    the message calls the URL (the variable, or the panel's field)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} is not an http(s) URL: {display_url(base_url)!r}",
                          advice=f"Use e.g. {BEIJING_BASE_URL}, or leave it empty.")
    if parts.hostname == INTL_HOST:
        raise ConfigError(
            f"{name} points at the international (Singapore) endpoint, but wanx2.1-imageedit exists only in "
            "China (Beijing)",
            advice=f"Use {BEIJING_BASE_URL} with a Beijing-region key.",
        )
    if parts.scheme == "http" and parts.hostname not in LOOPBACK:
        raise ConfigError(f"refusing to send the API key over plain http to {parts.hostname}",
                          advice="Use https, or a loopback address for the emulator.")


def display_url(url: str) -> str:
    """The endpoint without any user:password@ or query string (a gateway might carry a token)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def env_base_url(env: Mapping[str, str]) -> str | None:
    """DASHSCOPE_HTTP_BASE_URL, normalised, or None when unset."""
    raw = env.get(BASE_URL_ENV, "").strip()
    return normalise_base_url(raw) if raw else None


def environment_endpoint(env: Mapping[str, str]) -> tuple[str, UrlSource]:
    """Where the environment key and the key files go: DASHSCOPE_HTTP_BASE_URL, else the default.
    Never an endpoint stored from the panel."""
    url = env_base_url(env)
    return (url, "environment") if url else (BEIJING_BASE_URL, "default")


def panel_endpoint(env: Mapping[str, str], stored: StoredSettings) -> tuple[str, UrlSource]:
    """Where a key saved in the panel now is bound: DASHSCOPE_HTTP_BASE_URL (it wins), else the
    endpoint stored from the panel, else the default."""
    url = env_base_url(env)
    if url:
        return url, "environment"
    return (stored.base_url, "settings") if stored.base_url else (BEIJING_BASE_URL, "default")


# --- what the panel stored -----------------------------------------------------------------------


def normalise_currency(raw: object) -> str | None:
    """CNY or USD (any case; empty means CNY), or None for anything else."""
    value = str(raw or DEFAULT_CURRENCY).strip().upper()
    return value if value in CURRENCIES else None


@dataclass(frozen=True)
class StoredSettings:
    """The non-secret settings saved from the panel."""

    base_url: str = ""  # normalised; empty: none stored
    currency: str = DEFAULT_CURRENCY


def read_stored(stored_dir: Path | None) -> StoredSettings:
    """The non-secret settings saved from ComfyUI's settings panel (endpoint, currency)."""
    path = stored_dir / SETTINGS_FILE_NAME if stored_dir else None
    if path is None or not path.is_file():
        return StoredSettings()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError(f"the saved settings file {path} is unreadable",
                          advice="Fix or delete it, then save the settings again.") from None
    if not isinstance(data, dict):
        return StoredSettings()
    url = str(data.get("base_url") or "").strip().rstrip("/")
    return StoredSettings(base_url=url, currency=normalise_currency(data.get("currency")) or DEFAULT_CURRENCY)


def write_stored(stored_dir: Path, stored: StoredSettings) -> None:
    atomic_write(stored_dir / SETTINGS_FILE_NAME,
                 json.dumps({"base_url": stored.base_url, "currency": stored.currency}, indent=1) + "\n",
                 private=True)


@dataclass(frozen=True)
class StoredKey:
    """The key saved in the panel and the endpoint it was saved for."""

    api_key: str = field(repr=False)
    base_url: str  # normalised
    path: Path
    migrated: bool = False  # a bare key from before the binding: bound to the default endpoint


def read_stored_key(stored_dir: Path | None) -> StoredKey | None:
    path = stored_dir / KEY_FILE_NAME if stored_dir else None
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"the stored key file {path} cannot be read ({exc.strerror})",
                          advice="Fix its permissions, or remove it and save the key again.") from None
    if not text:
        return None
    if not text.startswith("{"):  # written before keys were bound: it was meant for the default endpoint
        return StoredKey(api_key=text, base_url=BEIJING_BASE_URL, path=path, migrated=True)
    try:
        data = json.loads(text)
        key, url = data["api_key"].strip(), normalise_base_url(data["base_url"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"the stored key file {path} is unreadable",
                          advice="Remove the stored key in the settings panel and save it again.") from None
    return StoredKey(api_key=key, base_url=url, path=path) if key else None


def write_stored_key(stored_dir: Path, *, api_key: str, base_url: str) -> Path:
    """The key and its endpoint in one atomic write: a 0600 file in a 0700 folder."""
    path = stored_dir / KEY_FILE_NAME
    atomic_write(path, json.dumps({"api_key": api_key, "base_url": normalise_base_url(base_url)}) + "\n",
                 private=True)
    return path


def delete_stored_key(stored_dir: Path) -> bool:
    try:
        (stored_dir / KEY_FILE_NAME).unlink()
    except FileNotFoundError:
        return False
    return True


# --- which key, to which endpoint ----------------------------------------------------------------


@dataclass(frozen=True)
class BoundKey:
    """The key that is used and the endpoint in effect for it."""

    api_key: str = field(repr=False)
    source: KeySource
    base_url: str
    base_url_source: UrlSource
    saved_for: str | None = None  # a panel key saved for another endpoint than the one in effect: not usable

    def check(self) -> None:
        """Refuse, before anything is sent, a pair that is not bound or not usable."""
        if self.saved_for is not None:
            raise ConfigError(
                f"the key saved in the settings panel was saved for {display_url(self.saved_for)}, but the endpoint "
                f"is now {display_url(self.base_url)}; it is sent only to the endpoint it was saved for",
                advice="Save the key again in Settings → Wanx Image Edit (it is then bound to the endpoint in use), "
                       "or set the endpoint back.",
            )
        check_base_url(self.base_url, name=BASE_URL_ENV if self.base_url_source == "environment" else "the endpoint")


NO_KEY = "no DashScope API key is configured"
EMULATOR_KEY = "sk-emulator-key"  # the bundled emulator's default key (emulator/rules.py; a test keeps them equal)
NO_KEY_ADVICE = Advice(
    f"Set {KEY_ENV} in the environment ComfyUI starts from, or put the key alone in ~/.dashscope/api_key. "
    f"{REGION_ADVICE} To try the pack without a key, run the emulator (`wanx-imageedit emulator`) and set "
    f"{BASE_URL_ENV} to it and {KEY_ENV}={EMULATOR_KEY}.",
    cli=f"Run `export {KEY_ENV}=sk-...` (or put the key alone in ~/.dashscope/api_key). {REGION_ADVICE} "
    f"To try it without a key, add --emulator (a private emulator, nothing billed), or start "
    f"`wanx-imageedit emulator` and `export {BASE_URL_ENV}=http://127.0.0.1:8089/api/v1 {KEY_ENV}={EMULATOR_KEY}`.",
)


def find_key(env: Mapping[str, str], *, home: Path) -> tuple[str, KeySource] | None:
    """The SDK's rule, highest first: DASHSCOPE_API_KEY, the file named by
    DASHSCOPE_API_KEY_FILE_PATH, ~/.dashscope/api_key. None when none is set."""
    key = env.get(KEY_ENV, "").strip()
    if key:
        return key, KeySource("environment", KEY_ENV)
    candidates = []
    if env.get(KEY_FILE_ENV):
        candidates.append(Path(env[KEY_FILE_ENV]).expanduser())
    candidates.append(home / ".dashscope" / "api_key")
    for path in candidates:
        if path.is_file():
            key = path.read_text(encoding="utf-8").strip()
            if key:
                return key, KeySource("key_file", str(path))
    return None


def choose_key(env: Mapping[str, str], *, home: Path, saved: StoredKey | None,
               stored: StoredSettings) -> BoundKey | None:
    """Which key is used and where it may go, without refusing anything yet (see BoundKey.check).
    The environment key and the key files go to the environment's endpoint; the panel's key to the
    endpoint it was saved for, if that is still the panel's endpoint."""
    found = find_key(env, home=home)
    if found is not None:
        url, url_source = environment_endpoint(env)
        return BoundKey(api_key=found[0], source=found[1], base_url=url, base_url_source=url_source)
    if saved is None:
        return None
    current, url_source = panel_endpoint(env, stored)
    return BoundKey(api_key=saved.api_key, source=KeySource("settings", str(saved.path)), base_url=current,
                    base_url_source=url_source, saved_for=None if saved.base_url == current else saved.base_url)


def bound_key(env: Mapping[str, str], *, home: Path, stored_dir: Path | None,
              stored: StoredSettings | None = None) -> BoundKey:
    """The key that is used and the one endpoint it may go to, or a ConfigError saying why none."""
    chosen = choose_key(env, home=home, saved=read_stored_key(stored_dir),
                        stored=stored if stored is not None else read_stored(stored_dir))
    if chosen is None:
        raise ConfigError(NO_KEY, advice=NO_KEY_ADVICE)
    chosen.check()
    return chosen


def remote_settings_allowed(env: Mapping[str, str]) -> bool:
    """WANX_ALLOW_REMOTE_SETTINGS=1: other machines may change the key and the endpoint too."""
    return env.get(REMOTE_SETTINGS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


# --- the pack's state on disk --------------------------------------------------------------------


@dataclass(frozen=True)
class StateSettings:
    """Where the journal, result cache and budget live, and their limits."""

    folder: Path
    cache: bool = True
    cache_max_mb: float | None = None  # None: the cache's default size
    daily_image_limit: int | None = None
    limit_source: str | None = None  # the setting that set the limit, for the message when it is hit

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, default_dir: Path,
                 currency: str = DEFAULT_CURRENCY) -> StateSettings:
        """WANX_STATE_DIR (else ``default_dir``); WANX_CACHE=off; WANX_CACHE_MAX_MB; the daily limits
        WANX_DAILY_IMAGE_LIMIT and WANX_DAILY_BUDGET (in ``currency``), the tighter one wins."""
        env = os.environ if environ is None else environ
        limit, source = _daily_limit(env, currency=currency)
        return cls(
            folder=Path(env.get("WANX_STATE_DIR") or default_dir).expanduser(),
            cache=env.get("WANX_CACHE", "").strip().lower() not in ("off", "0", "false", "no"),
            cache_max_mb=env_number(env, "WANX_CACHE_MAX_MB"),
            daily_image_limit=limit, limit_source=source,
        )


def _daily_limit(env: Mapping[str, str], *, currency: str) -> tuple[int | None, str | None]:
    images = env_number(env, "WANX_DAILY_IMAGE_LIMIT")
    money = env_number(env, "WANX_DAILY_BUDGET")
    limits = []
    if images is not None:
        limits.append((int(images), f"WANX_DAILY_IMAGE_LIMIT={int(images)}"))
    if money is not None:
        unit = PRICE_PER_IMAGE[currency]
        limits.append((math.floor(money / unit + 1e-9), f"WANX_DAILY_BUDGET={money:g} {currency} at {unit} per image"))
    if not limits:
        return None, None
    limit, source = min(limits)
    return limit, source


# --- numbers -------------------------------------------------------------------------------------


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
