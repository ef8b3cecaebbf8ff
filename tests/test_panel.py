"""The settings panel without ComfyUI: core/panel.py against the emulator on loopback, and the
aiohttp routes of nodes/web_routes.py on a plain aiohttp app. The rules under test (issue 14):

* a key is bound to the endpoint it was configured with: the environment's key and the key files
  never go to an endpoint stored from the panel (a capture server on loopback stands in for that
  endpoint and records every Authorization header), a key saved in the panel goes only to the
  endpoint saved with it, and changing the panel's endpoint removes that key and says so;
* only this machine may change the key or the endpoint, unless WANX_ALLOW_REMOTE_SETTINGS=1.

Nothing leaves loopback: HTTPS goes to a proxy address where nothing listens, so the default
(Beijing) endpoint is "unreachable" the same way on every machine."""

from __future__ import annotations

import asyncio
import json
import stat
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import requests
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request

from capture_server import CaptureServer
from comfy_host import free_port
from conftest import TEST_KEY
from wanx_imageedit.nodes import web_routes
from wanx_imageedit.nodes.core.panel import Panel
from wanx_imageedit.nodes.core.settings import BEIJING_BASE_URL, Settings
from wanx_imageedit.nodes.emulator import Emulator

STORED_KEY = "sk-stored-through-settings-7f3a9c"  # what the user types in the panel
WRONG_KEY = "sk-singapore-region-key-000000"
SECRETS = (TEST_KEY, STORED_KEY, WRONG_KEY)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPS only through a dead loopback proxy: the real service is never reached from a test."""
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost,::1")


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(api_keys=(TEST_KEY, STORED_KEY), running_s=(0.1, 0.2)) as running:
        yield running


@pytest.fixture
def capture() -> Iterator[CaptureServer]:
    with CaptureServer() as running:
        yield running


def _panel(tmp_path: Path, **env: str) -> Panel:
    return Panel(folder=tmp_path / "user" / "wanx_imageedit", environ=env, home=tmp_path)


def _no_key_reached(capture: CaptureServer) -> None:
    assert not any(auth and secret in auth for auth in capture.authorizations() for secret in SECRETS)


# --- the binding -----------------------------------------------------------------------------------


def test_status_without_any_key(tmp_path: Path) -> None:
    status = _panel(tmp_path).status()
    assert (status["key_source"], status["key_hint"], status["stored_key"]) == ("none", None, False)
    assert (status["base_url"], status["base_url_source"], status["base_url_is_default"]) == (
        BEIJING_BASE_URL, "default", True)
    assert status["problems"] == [] and status["notes"] == [] and status["remote_changes_allowed"] is False
    test = _panel(tmp_path).connection_test()
    assert test["ok"] is False and "No DashScope key is configured" in test["message"]


def test_a_panel_key_is_bound_to_the_panels_endpoint(tmp_path: Path, emulator: Emulator) -> None:
    panel = _panel(tmp_path)
    assert panel.store_settings({"base_url": emulator.base_url + "/", "currency": "usd"})["message"] == "Saved."
    answer = panel.store_key({"api_key": f"  {STORED_KEY}\n"})
    assert answer["message"] == f"The key ending …{STORED_KEY[-4:]} is saved and goes only to {emulator.base_url}."
    assert (answer["key_source"], answer["key_hint"], answer["base_url"]) == ("settings", "…" + STORED_KEY[-4:],
                                                                             emulator.base_url)
    assert (answer["base_url_is_default"], answer["stored_key_base_url"], answer["currency"]) == (
        False, emulator.base_url, "USD")
    path = panel.folder / "api_key"
    assert json.loads(path.read_text()) == {"api_key": STORED_KEY, "base_url": emulator.base_url}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in panel.folder.iterdir()) == ["api_key", "settings.json"]  # no temp file left
    test = panel.connection_test()
    assert test["ok"] is True and test["message"].startswith(f"Connected to {emulator.base_url}: the key ending …")
    assert "from these settings" in test["message"]
    assert [r.auth_valid for r in emulator.requests if r.route == "list"] == [True]


def test_changing_the_endpoint_removes_the_panel_key_and_says_so(tmp_path: Path, emulator: Emulator,
                                                                 capture: CaptureServer) -> None:
    panel = _panel(tmp_path)
    panel.store_key({"api_key": STORED_KEY, "base_url": emulator.base_url})
    assert json.loads((panel.folder / "settings.json").read_text())["base_url"] == emulator.base_url
    # The same endpoint again (the front end pushes it on every load) and a new currency keep the key.
    assert panel.store_settings({"base_url": emulator.base_url + "/", "currency": "USD"})["stored_key"] is True
    answer = panel.store_settings({"base_url": capture.base_url})
    assert answer["stored_key"] is False and not (panel.folder / "api_key").exists()
    assert "The key saved in these settings was removed" in answer["message"]
    assert f"Save it again to use it with {capture.base_url}." in answer["message"]
    test = panel.connection_test()
    assert test["ok"] is False and "No DashScope key is configured" in test["message"]
    assert capture.seen == []


def test_the_environment_key_never_goes_to_a_panel_endpoint(tmp_path: Path, capture: CaptureServer) -> None:
    panel = _panel(tmp_path, DASHSCOPE_API_KEY=TEST_KEY)
    answer = panel.store_settings({"base_url": capture.base_url})  # the first request of the attack
    assert "The key from the environment (DASHSCOPE_API_KEY) is not redirected: it still goes only to " \
           f"{BEIJING_BASE_URL} (the default)." in answer["message"]
    assert (answer["key_source"], answer["base_url"], answer["base_url_source"]) == ("environment",
                                                                                     BEIJING_BASE_URL, "default")
    assert answer["stored_base_url"] == capture.base_url and answer["base_url_is_default"] is True
    assert answer["notes"] == [f"The endpoint saved here ({capture.base_url}) is not used: the key from the "
                               f"environment (DASHSCOPE_API_KEY) goes only to {BEIJING_BASE_URL} (the default). It "
                               "applies to a key saved in these settings."]
    test = panel.connection_test()  # the second: the key goes to Beijing (unreachable here), not to the capture
    assert test["ok"] is False and test["message"].startswith("Could not reach dashscope.aliyuncs.com")
    assert capture.seen == []


def test_an_edit_gets_the_environment_endpoint_not_the_panels(tmp_path: Path, capture: CaptureServer) -> None:
    panel = _panel(tmp_path)
    panel.store_settings({"base_url": capture.base_url})
    # What the node and the command line build for an edit: the key from the environment, Beijing.
    settings = Settings.from_env({"DASHSCOPE_API_KEY": TEST_KEY}, home=tmp_path, stored_dir=panel.folder)
    assert settings.base_url == BEIJING_BASE_URL != capture.base_url and settings.key_source.kind == "environment"


def test_the_environment_endpoint_and_key_files_stay_bound(tmp_path: Path, emulator: Emulator,
                                                           capture: CaptureServer) -> None:
    env_panel = _panel(tmp_path, DASHSCOPE_API_KEY=TEST_KEY, DASHSCOPE_HTTP_BASE_URL=emulator.base_url)
    env_panel.store_settings({"base_url": capture.base_url})
    test = env_panel.connection_test()
    assert test["ok"] is True and f"Connected to {emulator.base_url}" in test["message"]
    assert "the environment (DASHSCOPE_API_KEY)" in test["message"]
    key_file = tmp_path / "named_key"
    key_file.write_text(TEST_KEY + "\n")
    file_panel = _panel(tmp_path, DASHSCOPE_API_KEY_FILE_PATH=str(key_file))
    status = file_panel.status()
    assert (status["key_source"], status["key_source_detail"], status["base_url"]) == ("key_file", "~/named_key",
                                                                                      BEIJING_BASE_URL)
    assert file_panel.connection_test()["message"].startswith("Could not reach dashscope.aliyuncs.com")
    assert capture.seen == []


def test_a_key_saved_for_another_endpoint_is_not_sent(tmp_path: Path, emulator: Emulator,
                                                     capture: CaptureServer) -> None:
    panel = _panel(tmp_path)
    folder = panel.folder
    folder.mkdir(parents=True)
    (folder / "api_key").write_text(STORED_KEY + "\n")  # stored before keys were bound: meant for Beijing
    (folder / "settings.json").write_text(json.dumps({"base_url": capture.base_url}))
    status = panel.status()
    assert (status["key_source"], status["stored_key_base_url"]) == ("settings", BEIJING_BASE_URL)
    assert any("was saved for https://dashscope.aliyuncs.com/api/v1" in p for p in status["problems"])
    test = panel.connection_test()
    assert test["ok"] is False and "Save the key again" in test["message"]
    assert capture.seen == []
    # Saving it again binds it to the endpoint in use, in one write.
    panel.store_key({"api_key": STORED_KEY})
    assert json.loads((folder / "api_key").read_text())["base_url"] == capture.base_url
    assert panel.status()["problems"] == []


def test_the_environment_endpoint_wins_for_a_panel_key(tmp_path: Path, emulator: Emulator,
                                                      capture: CaptureServer) -> None:
    panel = _panel(tmp_path, DASHSCOPE_HTTP_BASE_URL=emulator.base_url)
    refused = _refusal(lambda: panel.store_key({"api_key": STORED_KEY, "base_url": capture.base_url}))
    assert "DASHSCOPE_HTTP_BASE_URL is set on the server" in refused
    answer = panel.store_key({"api_key": STORED_KEY})
    assert "goes only to " + emulator.base_url in answer["message"]
    assert panel.connection_test()["ok"] is True
    answer = panel.store_settings({"base_url": capture.base_url})
    assert "DASHSCOPE_HTTP_BASE_URL is set on the server" in answer["message"] and answer["stored_key"] is False
    assert capture.seen == []


def _refusal(action: Any) -> str:
    from wanx_imageedit.nodes.core.errors import SettingsRefused

    with pytest.raises(SettingsRefused) as caught:
        action()
    return str(caught.value)


def test_a_wrong_key_gets_the_region_explanation(tmp_path: Path, emulator: Emulator) -> None:
    panel = _panel(tmp_path)
    panel.store_key({"api_key": WRONG_KEY, "base_url": emulator.base_url})
    test = panel.connection_test()
    assert test["ok"] is False and test["message"].startswith("The service refused the key (InvalidApiKey).")
    assert "China (Beijing)" in test["message"] and "Singapore" in test["message"]
    assert WRONG_KEY not in json.dumps(test)


def test_bad_requests_are_refused_without_echoing_them(tmp_path: Path) -> None:
    panel = _panel(tmp_path)
    secretish = "sk-has a space" + "x" * 10
    assert secretish not in _refusal(lambda: panel.store_key({"api_key": secretish}))
    assert _refusal(lambda: panel.store_key({"api_key": ""})) == "The key is empty."
    assert "Send the key as" in _refusal(lambda: panel.store_key({"key": STORED_KEY}))
    assert "Send the key as" in _refusal(lambda: panel.store_key(["api_key"]))
    assert "China (Beijing)" in _refusal(lambda: panel.store_settings(
        {"base_url": "https://dashscope-intl.aliyuncs.com/api/v1"}))
    assert "plain http" in _refusal(lambda: panel.store_settings({"base_url": "http://gateway.example.com/api/v1"}))
    assert "currency must be one of CNY, USD" in _refusal(lambda: panel.store_settings({"currency": "EUR"}))
    assert not panel.folder.exists()  # nothing of the refused requests was stored


# --- the routes: who may change what -------------------------------------------------------------------


def _table(panel: Panel) -> dict[tuple[str, str], Any]:
    table = web.RouteTableDef()
    web_routes.add_routes(table, lambda: panel)
    return {(route.method, route.path): route.handler for route in table}  # type: ignore[union-attr]


def _call(handlers: Mapping[tuple[str, str], Any], method: str, path: str, *, peer: str,
          host: str = "127.0.0.1:8188", body: object = None) -> tuple[int, dict[str, Any]]:
    """Call a route's handler with a request whose socket peer is ``peer``."""

    async def run() -> tuple[int, dict[str, Any]]:
        transport = mock.Mock()
        transport.get_extra_info.side_effect = lambda name, default=None: {
            "peername": (peer, 5555), "sockname": ("10.1.2.1", 8188)}.get(name, default)
        payload = StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())
        payload.feed_data(json.dumps(body).encode() if body is not None else b"")
        payload.feed_eof()
        request = make_mocked_request(method, web_routes.PREFIX + path, headers={
            "Host": host, "Content-Type": "application/json"}, transport=transport, payload=payload)
        response = await handlers[(method, web_routes.PREFIX + path)](request)
        return response.status, json.loads(response.body)

    return asyncio.run(run())


CHANGES = [("POST", "/key", {"api_key": STORED_KEY}), ("DELETE", "/key", None),
           ("POST", "/settings", {"base_url": "https://evil.example.com/api/v1"}), ("POST", "/test", None)]


@pytest.mark.parametrize(("method", "path", "body"), CHANGES, ids=[f"{m} {p}" for m, p, _ in CHANGES])
def test_only_this_machine_may_change_the_key_or_endpoint(tmp_path: Path, capture: CaptureServer, method: str,
                                                          path: str, body: object) -> None:
    panel = _panel(tmp_path, DASHSCOPE_API_KEY=TEST_KEY)
    handlers = _table(panel)
    panel.store_key({"api_key": STORED_KEY})  # so DELETE has something to remove
    before = sorted((p.name, p.read_bytes()) for p in panel.folder.iterdir())
    status, answer = _call(handlers, method, path, peer="10.1.2.3", body=body)
    assert status == 403 and "came from 10.1.2.3" in answer["error"]
    assert "WANX_ALLOW_REMOTE_SETTINGS=1" in answer["error"] and "DASHSCOPE_API_KEY" in answer["error"]
    assert "~/.dashscope/api_key on the server" in answer["error"]
    assert sorted((p.name, p.read_bytes()) for p in panel.folder.iterdir()) == before  # nothing changed
    # A loopback peer reached under another name: a reverse proxy passing the Host on, or DNS rebinding.
    status, answer = _call(handlers, method, path, peer="127.0.0.1", host="evil.example.com:8188", body=body)
    assert status == 403 and "'evil.example.com'" in answer["error"]
    for peer, host in (("127.0.0.1", "127.0.0.1:8188"), ("::1", "[::1]:8188"), ("::ffff:127.0.0.1", "localhost")):
        assert _call(handlers, method, path, peer=peer, host=host, body=body)[0] == 200, (peer, host)
    status, answer = _call(handlers, "GET", "/status", peer="10.1.2.3")  # reading stays open, and keyless
    assert status == 200 and not any(secret in json.dumps(answer) for secret in SECRETS)
    opted_in = Panel(folder=panel.folder, environ={**panel.environ, "WANX_ALLOW_REMOTE_SETTINGS": "1"},
                     home=panel.home)
    status, answer = _call(_table(opted_in), method, path, peer="10.1.2.3", body=body)
    assert status == 200 and not any(secret in json.dumps(answer) for secret in SECRETS)
    _no_key_reached(capture)


class RoutesServer:
    """The routes on a real aiohttp server on loopback, in a thread of its own."""

    def __init__(self, panel: Panel, *, host: str = "127.0.0.1") -> None:
        table = web.RouteTableDef()
        web_routes.add_routes(table, lambda: panel)
        app = web.Application()
        app.add_routes(table)
        self._runner = web.AppRunner(app)
        self._host = host
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""

    def __enter__(self) -> RoutesServer:
        self._thread.start()

        async def start() -> str:
            await self._runner.setup()
            await web.TCPSite(self._runner, self._host, 0).start()
            host, port = self._runner.addresses[0][:2]
            return f"http://{'[' + host + ']' if ':' in host else host}:{port}{web_routes.PREFIX}"

        self.url = asyncio.run_coroutine_threadsafe(start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_routes_over_real_http_on_loopback(tmp_path: Path, emulator: Emulator, capture: CaptureServer,
                                               host: str) -> None:
    panel = _panel(tmp_path, DASHSCOPE_API_KEY=TEST_KEY)
    answers: list[str] = []

    with RoutesServer(panel, host=host) as server:
        def call(method: str, path: str, body: object = None, *, raw: str | None = None) -> requests.Response:
            response = requests.request(method, server.url + path, json=body if raw is None else None, data=raw,
                                        timeout=30)
            answers.append(response.text)
            return response

        status = call("GET", "/status").json()
        assert (status["key_source"], status["key_hint"]) == ("environment", "…" + TEST_KEY[-4:])
        saved = call("POST", "/settings", {"base_url": capture.base_url, "currency": "USD"})
        assert saved.status_code == 200 and "is not redirected" in saved.json()["message"]
        assert call("POST", "/test").json()["message"].startswith("Could not reach dashscope.aliyuncs.com")
        saved = call("POST", "/settings", {"base_url": emulator.base_url})
        key = call("POST", "/key", {"api_key": STORED_KEY}).json()
        assert (key["stored_key"], key["stored_key_base_url"], key["key_source"]) == (True, emulator.base_url,
                                                                                     "environment")
        assert "While the key from the environment (DASHSCOPE_API_KEY) is set, that key is used instead" in \
            key["message"]
        assert call("POST", "/key", raw="api_key=" + STORED_KEY).status_code == 400
        assert call("POST", "/settings", {"currency": "EUR"}).status_code == 400
        removed = call("DELETE", "/key").json()
        assert removed["stored_key"] is False and removed["message"] == "The stored key was removed."
        assert call("DELETE", "/key").json()["message"] == "No key was stored."
    assert capture.seen == []
    assert not any(secret in answer for answer in answers for secret in SECRETS)
