"""The settings panel's logic, host-free: what the panel shows, storing and removing the key,
storing the endpoint and currency, the connection test in plain words, and who may change them.
nodes/web_routes.py is only the HTTP glue around it; the folder and the environment are given.

The rules (see settings.py): a key is bound to the endpoint it was configured with, so changing
the panel's endpoint removes the key saved in the panel and never redirects the environment's key
or a key file; only this machine (a loopback peer, reached as localhost) may change anything,
unless WANX_ALLOW_REMOTE_SETTINGS=1. The key is write-only: no answer carries it, at most its
last 4 characters."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import settings as cfg
from .client import DashScopeClient, Timeouts, TransientError
from .errors import ApiError, ConfigError, SettingsRefused, WanxError
from .functions import FUNCTIONS, MAX_SIDE_PX, MIN_SIDE_PX, PRICE_PER_IMAGE

log = logging.getLogger(__name__)

MAX_KEY_CHARS = 256
OTHER_WAYS = (
    f"set {cfg.KEY_ENV} (and {cfg.BASE_URL_ENV} for another endpoint) in the environment ComfyUI starts from, "
    "or put the key in ~/.dashscope/api_key on the server, or change it in a browser on the server itself "
    f"(http://127.0.0.1:<port>). To allow changes from other machines, start ComfyUI with {cfg.REMOTE_SETTINGS_ENV}=1"
)


def check_change_allowed(*, peer: str | None, host: str | None, environ: Mapping[str, str]) -> None:
    """Only this machine may change the key or the endpoint: the peer must be loopback, and the
    request must name this machine (127.0.0.1, ::1 or localhost), which a web page rebinding its
    own name to 127.0.0.1 cannot do. WANX_ALLOW_REMOTE_SETTINGS=1 lifts both."""
    if cfg.remote_settings_allowed(environ):
        return
    if not _loopback_address(peer):
        raise SettingsRefused(f"Only this machine can change the DashScope key or endpoint, and this request came "
                              f"from {peer or 'an unknown address'}. Instead, {OTHER_WAYS}", http_status=403)
    name = urlsplit("//" + host).hostname if host else None
    if name is not None and not (_loopback_address(name) or name == "localhost" or name.endswith(".localhost")):
        raise SettingsRefused(f"Only this machine can change the DashScope key or endpoint, and this request named "
                              f"the server {name[:80]!r} (through a reverse proxy or another name) instead of "
                              f"127.0.0.1 or localhost. Instead, {OTHER_WAYS}", http_status=403)


def _loopback_address(text: str | None) -> bool:
    try:
        address = ipaddress.ip_address((text or "").split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return (mapped or address).is_loopback


@dataclass(frozen=True)
class Panel:
    folder: Path  # where the panel stores the key and the settings
    environ: Mapping[str, str]
    home: Path  # for ~/.dashscope/api_key

    # --- what the panel shows ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Never the key: its source, at most its last 4 characters, and where it goes."""
        problems: list[str] = []
        stored = self._stored(problems)
        saved = self._saved_key(problems)
        try:
            chosen = cfg.choose_key(self.environ, home=self.home, saved=saved, stored=stored)
        except OSError as exc:  # an unreadable key file named by DASHSCOPE_API_KEY_FILE_PATH
            chosen = None
            problems.append(f"A key file cannot be read ({exc.strerror}).")
        if chosen is None:
            base_url, url_source = cfg.panel_endpoint(self.environ, stored)
        else:
            base_url, url_source = chosen.base_url, chosen.base_url_source
        try:
            if chosen is not None:
                chosen.check()
            else:
                cfg.check_base_url(base_url, name="the endpoint")
        except ConfigError as exc:
            problems.append(str(exc))
        currency = stored.currency
        kind = chosen.source.kind if chosen else "none"
        return {
            "key_source": kind,
            "key_source_detail": self._detail(chosen.source) if chosen else None,
            "key_hint": cfg.key_hint(chosen.api_key) if chosen else None,
            "stored_key": saved is not None,
            "stored_key_hint": cfg.key_hint(saved.api_key) if saved else None,
            "stored_key_base_url": cfg.display_url(saved.base_url) if saved else None,
            "base_url": cfg.display_url(base_url),  # where the key in use goes (with no key: where a saved one would)
            "base_url_source": url_source,
            "base_url_is_default": base_url == cfg.BEIJING_BASE_URL,
            "stored_base_url": cfg.display_url(stored.base_url) if stored.base_url else "",
            "currency": currency,
            "unit_price": PRICE_PER_IMAGE[currency],
            "prices": dict(PRICE_PER_IMAGE),
            "env_overrides": {"api_key": kind in ("environment", "key_file"),
                              "base_url": cfg.env_base_url(self.environ) is not None},
            "remote_changes_allowed": cfg.remote_settings_allowed(self.environ),
            "side_px": [MIN_SIDE_PX, MAX_SIDE_PX],
            "functions": {fn.node_id: {"api_name": fn.api_name, "output_rule": fn.output_rule.name.lower()}
                          for fn in FUNCTIONS},
            "notes": self._notes(chosen, stored),
            "problems": problems,
        }

    def _notes(self, chosen: cfg.BoundKey | None, stored: cfg.StoredSettings) -> list[str]:
        """Why the endpoint saved here is not the one in use, when it is not."""
        if chosen is None or chosen.source.kind == "settings" or not stored.base_url:
            return []
        if cfg.normalise_base_url(stored.base_url) == chosen.base_url:
            return []
        return [f"The endpoint saved here ({cfg.display_url(stored.base_url)}) is not used: {self._whose(chosen)} "
                f"goes only to {_where(chosen)}. It applies to a key saved in these settings."]

    def _stored(self, problems: list[str]) -> cfg.StoredSettings:
        try:
            return cfg.read_stored(self.folder)
        except ConfigError as exc:
            problems.append(str(exc))
            return cfg.StoredSettings()

    def _saved_key(self, problems: list[str]) -> cfg.StoredKey | None:
        try:
            return cfg.read_stored_key(self.folder)
        except ConfigError as exc:
            problems.append(str(exc))
            return None

    # --- changes ------------------------------------------------------------------------------

    def store_key(self, body: object) -> dict[str, Any]:
        """{"api_key", "base_url"?}: the key and the endpoint it is for, in one write. Without
        base_url the key is bound to the panel's endpoint in use."""
        if not isinstance(body, dict):
            raise SettingsRefused("Send the key as {\"api_key\": \"...\"}.")
        key = _valid_key(body.get("api_key"))
        stored = self._stored([])
        env_url = cfg.env_base_url(self.environ)
        if "base_url" in body:
            raw = _valid_url(body["base_url"])
            binding = cfg.normalise_base_url(raw)
            if env_url is not None and binding != env_url:
                raise SettingsRefused(f"{cfg.BASE_URL_ENV} is set on the server ({cfg.display_url(env_url)}), so a "
                                      "key saved here can only be used with that endpoint. Leave base_url out, "
                                      "or change the variable.")
        else:
            raw, binding = stored.base_url, cfg.panel_endpoint(self.environ, stored)[0]
        path = cfg.write_stored_key(self.folder, api_key=key, base_url=binding)
        if raw != stored.base_url:
            cfg.write_stored(self.folder, replace(stored, base_url=raw))
        log.info("wanx_imageedit: a DashScope key was stored in %s (mode 0600), bound to %s",
                 path, cfg.display_url(binding))
        message = f"The key ending {cfg.key_hint(key) or '(short)'} is saved and goes only to " \
                  f"{cfg.display_url(binding)}."
        found = self._environment_key()
        if found is not None:
            message += f" While {self._whose(found)} is set, that key is used instead (it goes to {_where(found)})."
        return {**self.status(), "message": message}

    def delete_key(self) -> dict[str, Any]:
        removed = cfg.delete_stored_key(self.folder)
        if removed:
            log.info("wanx_imageedit: the stored DashScope key was removed")
        return {**self.status(), "message": "The stored key was removed." if removed else "No key was stored."}

    def store_settings(self, body: object) -> dict[str, Any]:
        """{"base_url"?, "currency"?}. A new endpoint removes the key saved in the panel (it was
        bound to the old one) and never redirects the environment's key or a key file."""
        if not isinstance(body, dict):
            raise SettingsRefused("Send the settings as {\"base_url\": \"...\", \"currency\": \"CNY\"}.")
        problems: list[str] = []
        current = self._stored(problems)  # an unreadable file is replaced by what is saved now
        new = current
        if "base_url" in body:
            new = replace(new, base_url=_valid_url(body["base_url"]))
        if "currency" in body:
            currency = cfg.normalise_currency(body["currency"])
            if currency is None:
                raise SettingsRefused(f"currency must be one of {', '.join(cfg.CURRENCIES)}.")
            new = replace(new, currency=currency)
        moved = cfg.normalise_base_url(new.base_url) != cfg.normalise_base_url(current.base_url)
        messages = ["Saved."]
        # The key goes first: a crash between the two writes leaves no key bound to an old endpoint in use.
        if moved and cfg.delete_stored_key(self.folder):
            log.info("wanx_imageedit: the endpoint changed, so the stored DashScope key was removed")
            target = cfg.display_url(cfg.panel_endpoint(self.environ, new)[0])
            messages.append("The key saved in these settings was removed: a key goes only to the endpoint it was "
                            f"saved with. Save it again to use it with {target}.")
        if current != new or problems:
            cfg.write_stored(self.folder, new)
        found = self._environment_key()
        if moved and found is not None:
            whose = self._whose(found)
            messages.append(f"{whose[0].upper()}{whose[1:]} is not redirected: it still goes only to {_where(found)}.")
        elif moved and cfg.env_base_url(self.environ):
            messages.append(f"{cfg.BASE_URL_ENV} is set on the server, so its endpoint stays in use.")
        return {**self.status(), "message": " ".join(messages)}

    def _detail(self, source: cfg.KeySource) -> str | None:
        if source.kind == "environment":
            return source.detail
        return self._home_short(source.detail or "") if source.kind == "key_file" else None

    def _whose(self, chosen: cfg.BoundKey) -> str:
        if chosen.source.kind == "environment":
            return f"the key from the environment ({chosen.source.detail})"
        return f"the key from the key file {self._home_short(chosen.source.detail or '')}"

    def _home_short(self, path: str) -> str:
        home = str(self.home)
        return "~" + path[len(home):] if path.startswith(home + os.sep) else path

    def _environment_key(self) -> cfg.BoundKey | None:
        """The environment's key or a key file, with the endpoint it goes to; None without one."""
        try:
            chosen = cfg.choose_key(self.environ, home=self.home, saved=None, stored=cfg.StoredSettings())
        except OSError:
            return None
        return chosen

    # --- the connection test ------------------------------------------------------------------

    def connection_test(self, *, timeouts: Timeouts | None = None) -> dict[str, Any]:
        """Check the bound key and endpoint with a free call (listing this model's tasks). Plain
        words, never the key."""
        try:
            current = cfg.Settings.from_env(self.environ, home=self.home, stored_dir=self.folder)
        except ConfigError as exc:
            if exc.what == cfg.NO_KEY:
                return _result(False, "No DashScope key is configured. Paste a China (Beijing) key above and save "
                               f"it, or set {cfg.KEY_ENV} in the environment ComfyUI starts from.", "")
            return _result(False, str(exc), "")
        except OSError as exc:
            return _result(False, f"A key file cannot be read ({exc.strerror}).", "")
        try:
            DashScopeClient(current, timeouts=timeouts).list_tasks(page_size=1)
        except WanxError as exc:
            return _result(False, _failure(exc, current.base_url), current.api_key)
        ending = f" ending {cfg.key_hint(current.api_key)}" if cfg.key_hint(current.api_key) else ""
        source = {"environment": f"the environment ({cfg.KEY_ENV})", "settings": "these settings"}.get(
            current.key_source.kind, "a key file")
        return _result(True, f"Connected to {cfg.display_url(current.base_url)}: the key{ending} from {source} works "
                       "for wanx2.1-imageedit (checked by listing tasks, which is free).", current.api_key)


def _failure(exc: WanxError, base_url: str) -> str:
    endpoint = cfg.display_url(base_url)
    if isinstance(exc, TransientError):
        if exc.http_status is None:
            return (f"Could not reach {urlsplit(base_url).hostname or endpoint}: {exc.what}. Check the network, any "
                    "proxy (HTTPS_PROXY / NO_PROXY) and the endpoint.")
        if exc.http_status == 429:
            return "The service is throttling requests right now. Wait a minute and test again."
        return f"The service answered HTTP {exc.http_status}; it may be having trouble. Try again in a moment."
    if isinstance(exc, ApiError) and exc.code == "InvalidApiKey":
        return (f"The service refused the key (InvalidApiKey). {cfg.REGION_ADVICE} Check that the key was created "
                "in the Beijing region of Model Studio and was copied completely.")
    if isinstance(exc, ApiError) and exc.http_status == 404 and not exc.code:
        return (f"{endpoint} does not look like a DashScope endpoint (HTTP 404 on /tasks). Check the base URL; it "
                "usually ends in /api/v1.")
    return str(exc)


def _result(ok: bool, message: str, key: str) -> dict[str, Any]:
    if key and key in message:  # belt and braces: no message of ours contains it
        message = message.replace(key, "…")
    log.info("wanx_imageedit: connection test %s: %s", "passed" if ok else "failed", message)
    return {"ok": ok, "message": message}


def _valid_key(key: object) -> str:
    if not isinstance(key, str):
        raise SettingsRefused("Send the key as {\"api_key\": \"...\"}.")
    key = key.strip()
    if not key:
        raise SettingsRefused("The key is empty.")
    if (len(key) > MAX_KEY_CHARS or not key.isascii() or key.startswith("{")
            or any(c.isspace() or not c.isprintable() for c in key)):
        # Never echo the value: it may be a real key pasted with a typo.
        raise SettingsRefused("That does not look like a DashScope API key (expected one line of letters, digits "
                              "and symbols, like sk-...). Copy it again from the Model Studio console.")
    return key


def _valid_url(url: object) -> str:
    """The endpoint as typed, trimmed; empty for the default. Refused before anything is stored."""
    if url is None:
        url = ""
    if not isinstance(url, str):
        raise SettingsRefused("base_url must be a string (empty for China (Beijing)).")
    url = url.strip().rstrip("/")
    if url:
        try:
            cfg.check_base_url(url, name="The base URL")
        except ConfigError as exc:
            raise SettingsRefused(str(exc)) from None
    return url


def _where(chosen: cfg.BoundKey) -> str:
    url = cfg.display_url(chosen.base_url)
    return f"{url} ({cfg.BASE_URL_ENV})" if chosen.base_url_source == "environment" else f"{url} (the default)"


