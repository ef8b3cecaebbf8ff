"""The settings panel's HTTP glue, under the prefix /wanx_imageedit/ (ComfyUI also serves each
route under /api). The logic lives in core/panel.py; this module only parses, checks the peer,
runs it off the event loop and answers in JSON.

    GET    /wanx_imageedit/status    where the key comes from (never the key), where it goes, currency, prices
    POST   /wanx_imageedit/key       {"api_key", "base_url"?}: store the key bound to its endpoint (0600 file)
    DELETE /wanx_imageedit/key       forget the stored key
    POST   /wanx_imageedit/settings  {"base_url", "currency"}: store them; a new endpoint removes the stored key
    POST   /wanx_imageedit/test      check the bound key and endpoint with a free call, in plain words

The four that change or use the key answer only this machine (loopback), unless
WANX_ALLOW_REMOTE_SETTINGS=1. ComfyUI's `server` is imported in register() only, so the handlers
run without ComfyUI (tests build them on a plain aiohttp app)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from .core.errors import SettingsRefused, WanxError
from .core.panel import Panel, check_change_allowed

log = logging.getLogger(__name__)

PREFIX = "/wanx_imageedit"
MakePanel = Callable[[], Panel]


def add_routes(routes: web.RouteTableDef, make_panel: MakePanel) -> None:
    """Add the five routes to ``routes``; ``make_panel`` gives the folder and environment per request."""

    def add(method: str, path: str, action: Callable[..., dict[str, Any]], *, changes: bool, body: bool) -> None:
        async def handle(request: web.Request) -> web.Response:
            try:
                panel = make_panel()
                if changes:
                    check_change_allowed(peer=_peer(request), host=request.headers.get("Host"), environ=panel.environ)
                args = [await _json(request)] if body else []
                return web.json_response(await asyncio.to_thread(action, panel, *args))
            except SettingsRefused as exc:
                return web.json_response({"error": str(exc)}, status=exc.http_status)
            except WanxError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            except OSError as exc:
                log.warning("wanx_imageedit: %s %s failed: %s", request.method, request.path, exc.strerror)
                return web.json_response({"error": f"Could not write the settings file ({exc.strerror})."},
                                         status=500)

        handle.__name__ = f"wanx_{action.__name__}"
        routes.route(method, PREFIX + path)(handle)

    add("GET", "/status", Panel.status, changes=False, body=False)
    add("POST", "/key", Panel.store_key, changes=True, body=True)
    add("DELETE", "/key", Panel.delete_key, changes=True, body=False)
    add("POST", "/settings", Panel.store_settings, changes=True, body=True)
    add("POST", "/test", Panel.connection_test, changes=True, body=False)


def _peer(request: web.Request) -> str | None:
    """The socket's peer address, never a forwarded header (which any client can write)."""
    peername = request.transport.get_extra_info("peername") if request.transport is not None else None
    return str(peername[0]) if isinstance(peername, (tuple, list)) and peername else None


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError):
        raise SettingsRefused("The request body must be JSON.") from None


_registered = False


def register() -> None:
    """Add the routes to ComfyUI's server. Called from comfy_entrypoint(), before ComfyUI builds its
    route table (so every route also exists under /api)."""
    global _registered
    if _registered:
        return
    from server import PromptServer

    from . import host

    add_routes(PromptServer.instance.routes,
               lambda: Panel(folder=host.pack_user_dir(), environ=os.environ, home=Path.home()))
    _registered = True
