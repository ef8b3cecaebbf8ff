"""The settings panel's server side, under the prefix /wanx_imageedit/ (ComfyUI also serves each
route under /api). With nodes/host.py, the only module that touches the ComfyUI runtime.

    GET    /wanx_imageedit/status    where the key comes from (never the key), endpoint, currency, prices
    POST   /wanx_imageedit/key       {"api_key"}: store the key in <user dir>/wanx_imageedit/api_key (0600)
    DELETE /wanx_imageedit/key       forget the stored key
    POST   /wanx_imageedit/settings  {"base_url", "currency"}: store them in .../settings.json
    POST   /wanx_imageedit/test      check the key with a free call (listing tasks), in plain words

The key is write-only: no route returns it, and no response, log line or error message contains
it; the status shows at most its last 4 characters. Anyone who can reach this ComfyUI over the
network can replace or delete the stored key (as they can queue paid work), but cannot read it.
Unless started with --enable-cors-header, ComfyUI refuses cross-origin requests to a loopback
server, so a web page cannot do it either."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web
from server import PromptServer

from . import host
from .core import settings as core_settings
from .core.client import DashScopeClient, TransientError
from .core.errors import ApiError, ConfigError, WanxError
from .core.functions import FUNCTIONS, MAX_SIDE_PX, MIN_SIDE_PX, PRICE_PER_IMAGE

log = logging.getLogger(__name__)

PREFIX = "/wanx_imageedit"
MAX_KEY_CHARS = 256
CURRENCIES = tuple(PRICE_PER_IMAGE)
KEY_ENV = "DASHSCOPE_API_KEY"
BASE_URL_ENV = "DASHSCOPE_HTTP_BASE_URL"

Handler = Callable[[web.Request], Awaitable[web.Response]]


class BadRequest(Exception):
    """A request we refuse; the message is shown to the user and never contains the key."""


# --- files -------------------------------------------------------------------------------------------


def stored_dir() -> Path:
    return host.pack_user_dir()


def write_private(path: Path, text: str) -> None:
    """Write ``text`` so that the file is never readable by others, not even for an instant: a temp
    file created with mode 0600 in the same folder, then os.replace (atomic on POSIX and Windows)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            if hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), 0o600)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"the stored key file {path} cannot be read ({exc.strerror})",
                          advice="Fix its permissions, or remove it and save the key again.") from None


def hint(key: str | None) -> str | None:
    """The last 4 characters, and only for a key long enough that they give nothing away."""
    return f"…{key[-4:]}" if key and len(key) >= 8 else None


def display_url(url: str) -> str:
    """The endpoint without any user:password@ or query string (a gateway might carry a token)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _home_short(path: str) -> str:
    home = str(Path.home())
    return "~" + path[len(home):] if path.startswith(home + os.sep) else path


# --- status ------------------------------------------------------------------------------------------


def status() -> dict[str, Any]:
    """What the settings panel shows. Never the key: its source and at most its last 4 characters."""
    folder = stored_dir()
    problems: list[str] = []
    env = os.environ
    try:
        stored = core_settings.read_stored(folder)
    except ConfigError as exc:
        stored, problems = {}, [str(exc)]
    try:
        stored_key = _read_text(folder / core_settings.KEY_FILE_NAME)
    except ConfigError as exc:
        stored_key = None
        problems.append(str(exc))
    try:
        key, source = core_settings.find_key(env, home=Path.home(),
                                             stored_key_file=folder / core_settings.KEY_FILE_NAME)
    except (ConfigError, OSError):
        key, source = None, None
    if source is None:
        key_source, detail = "none", None
    elif source.kind == "key_file":
        key_source, detail = source.kind, _home_short(source.detail or "")
    else:
        key_source, detail = source.kind, (KEY_ENV if source.kind == "environment" else None)
    env_url = env.get(BASE_URL_ENV, "").strip()
    stored_url = str(stored.get("base_url") or "").strip()
    base_url = (env_url or stored_url).rstrip("/") or core_settings.BEIJING_BASE_URL
    try:
        core_settings.check_base_url(base_url)
    except ConfigError as exc:
        problems.append(str(exc))
    currency = "USD" if str(stored.get("currency", "")).upper() == "USD" else "CNY"
    return {
        "key_source": key_source,
        "key_source_detail": detail,
        "key_hint": hint(key),
        "stored_key": stored_key is not None,
        "stored_key_hint": hint(stored_key),
        "base_url": display_url(base_url),
        "base_url_source": "environment" if env_url else ("settings" if stored_url else "default"),
        "stored_base_url": display_url(stored_url) if stored_url else "",
        "currency": currency,
        "unit_price": PRICE_PER_IMAGE[currency],
        "prices": dict(PRICE_PER_IMAGE),
        "env_overrides": {
            "api_key": key_source in ("environment", "key_file"),
            "base_url": bool(env_url),
        },
        "side_px": [MIN_SIDE_PX, MAX_SIDE_PX],
        "functions": {fn.node_id: {"api_name": fn.api_name, "output_rule": fn.output_rule.name.lower()}
                      for fn in FUNCTIONS},
        "problems": problems,
    }


# --- changes -----------------------------------------------------------------------------------------


def store_key(body: Any) -> None:
    key = body.get("api_key") if isinstance(body, dict) else None
    if not isinstance(key, str):
        raise BadRequest("Send the key as {\"api_key\": \"...\"}.")
    key = key.strip()
    if not key:
        raise BadRequest("The key is empty.")
    if len(key) > MAX_KEY_CHARS or not key.isascii() or any(c.isspace() or not c.isprintable() for c in key):
        # Never echo the value: it may be a real key pasted with a typo.
        raise BadRequest("That does not look like a DashScope API key (expected one line of letters, digits and "
                         "symbols, like sk-...). Copy it again from the Model Studio console.")
    path = stored_dir() / core_settings.KEY_FILE_NAME
    write_private(path, key + "\n")
    log.info("wanx_imageedit: a DashScope key was stored in %s (mode 0600)", path)


def delete_key() -> None:
    path = stored_dir() / core_settings.KEY_FILE_NAME
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        log.info("wanx_imageedit: the stored DashScope key was removed")


def store_settings(body: Any) -> None:
    if not isinstance(body, dict):
        raise BadRequest("Send the settings as {\"base_url\": \"...\", \"currency\": \"CNY\"}.")
    folder = stored_dir()
    try:
        current = core_settings.read_stored(folder)
    except ConfigError:
        current = {}  # an unreadable file is replaced by what is saved now
    if "base_url" in body:
        url = body["base_url"]
        if url is None:
            url = ""
        if not isinstance(url, str):
            raise BadRequest("base_url must be a string (empty for China (Beijing)).")
        url = url.strip().rstrip("/")
        if url:
            try:
                core_settings.check_base_url(url)
            except ConfigError as exc:
                raise BadRequest(str(exc).replace(BASE_URL_ENV, "The base URL", 1)) from None
        current["base_url"] = url
    if "currency" in body:
        currency = str(body["currency"] or "CNY").upper()
        if currency not in CURRENCIES:
            raise BadRequest(f"currency must be one of {', '.join(CURRENCIES)}.")
        current["currency"] = currency
    write_private(folder / core_settings.SETTINGS_FILE_NAME, json.dumps(current, indent=1) + "\n")


# --- the connection test -----------------------------------------------------------------------------

REGION_ADVICE = (
    "The service refused the key (InvalidApiKey). wanx2.1-imageedit exists only in the China (Beijing) region, "
    "so it needs a Beijing-region DashScope key: an international (Singapore) key is refused here. Check that the "
    "key was created in the Beijing region of Model Studio and was copied completely."
)


def connection_test() -> dict[str, Any]:
    """Check the key with a free call (listing this model's tasks). Plain words, never the key."""
    try:
        current = host.settings()
    except ConfigError as exc:
        if status()["key_source"] == "none":
            return {"ok": False, "message": "No DashScope key is configured. Paste a China (Beijing) key above and "
                    f"save it, or set {KEY_ENV} in the environment ComfyUI starts from."}
        return {"ok": False, "message": str(exc)}
    endpoint = display_url(current.base_url)
    netloc = urlsplit(current.base_url).hostname or endpoint
    try:
        DashScopeClient(current).list_tasks(page_size=1)
    except TransientError as exc:
        if exc.http_status is None:
            message = (f"Could not reach {netloc}: {exc.what}. Check the network, any proxy (HTTPS_PROXY / "
                       "NO_PROXY) and the endpoint.")
        elif exc.http_status == 429:
            message = "The service is throttling requests right now. Wait a minute and test again."
        else:
            message = f"The service answered HTTP {exc.http_status}; it may be having trouble. Try again in a moment."
        return _scrubbed(False, message, current.api_key)
    except ApiError as exc:
        if exc.code == "InvalidApiKey":
            return _scrubbed(False, REGION_ADVICE, current.api_key)
        if exc.http_status == 404 and not exc.code:
            return _scrubbed(False, f"{endpoint} does not look like a DashScope endpoint (HTTP 404 on /tasks). "
                             "Check the base URL; it usually ends in /api/v1.", current.api_key)
        return _scrubbed(False, str(exc), current.api_key)
    except WanxError as exc:
        return _scrubbed(False, str(exc), current.api_key)
    if current.key_source.startswith("environment"):
        source = f"the environment ({KEY_ENV})"
    elif current.key_source == "ComfyUI settings":
        source = "these settings"
    else:
        source = "a key file"
    ending = f" ending {hint(current.api_key)}" if hint(current.api_key) else ""
    return _scrubbed(True, f"Connected to {endpoint}: the key{ending} from {source} works for wanx2.1-imageedit "
                     "(checked by listing tasks, which is free).", current.api_key)


def _scrubbed(ok: bool, message: str, key: str) -> dict[str, Any]:
    if key and key in message:  # belt and braces: no message of ours contains it
        message = message.replace(key, "…")
    log.info("wanx_imageedit: connection test %s: %s", "passed" if ok else "failed", message)
    return {"ok": ok, "message": message}


# --- aiohttp glue ------------------------------------------------------------------------------------


async def _body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The request body must be JSON.") from None


def _guarded(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except BadRequest as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except WanxError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except OSError as exc:
            log.warning("wanx_imageedit: %s %s failed: %s", request.method, request.path, exc.strerror)
            return web.json_response({"error": f"Could not write the settings file ({exc.strerror})."}, status=500)

    wrapped.__name__ = handler.__name__
    return wrapped


async def get_status(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(status))


async def post_key(request: web.Request) -> web.Response:
    body = await _body(request)
    await asyncio.to_thread(store_key, body)
    return web.json_response(await asyncio.to_thread(status))


async def delete_key_route(request: web.Request) -> web.Response:
    await asyncio.to_thread(delete_key)
    return web.json_response(await asyncio.to_thread(status))


async def post_settings(request: web.Request) -> web.Response:
    body = await _body(request)
    await asyncio.to_thread(store_settings, body)
    return web.json_response(await asyncio.to_thread(status))


async def post_test(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(connection_test))


_registered = False


def register() -> None:
    """Add the routes to ComfyUI's server. Called from comfy_entrypoint(), before ComfyUI builds its
    route table (so every route also exists under /api)."""
    global _registered
    if _registered:
        return
    routes = PromptServer.instance.routes
    routes.get(f"{PREFIX}/status")(_guarded(get_status))
    routes.post(f"{PREFIX}/key")(_guarded(post_key))
    routes.delete(f"{PREFIX}/key")(_guarded(delete_key_route))
    routes.post(f"{PREFIX}/settings")(_guarded(post_settings))
    routes.post(f"{PREFIX}/test")(_guarded(post_test))
    _registered = True
