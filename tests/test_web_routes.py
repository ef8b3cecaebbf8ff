"""The settings routes inside a real ComfyUI (headless, CPU), with the emulator as the service: the
key is stored server-side in a 0600 file, bound to its endpoint, and is write-only (no response,
log line or file of ours carries it), the endpoint and currency are validated and stored, a new
endpoint removes the stored key, the connection test explains failures in plain words, the
environment wins over stored settings, the two-request attack of issue 14 reaches no key, other
machines cannot change anything, and the translations and help pages are served where the front
end looks for them.

Nothing leaves loopback: ComfyUI's HTTPS goes to a proxy address where nothing listens.
Skips with the reason when no ComfyUI is found (see comfy_host.find_host); the test from another
machine also needs root for a network namespace of its own."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

from capture_server import CaptureServer
from comfy_host import ComfyHost, find_host, free_port, load_workflow, ui_to_api
from conftest import TEST_KEY
from wanx_imageedit.nodes.authoring import docs
from wanx_imageedit.nodes.core.functions import FUNCTIONS, PRICE_PER_IMAGE, node_inputs
from wanx_imageedit.nodes.emulator import Emulator

FOUND = find_host()
pytestmark = pytest.mark.skipif(isinstance(FOUND, str), reason=f"host tests need ComfyUI: {FOUND}")
WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
STORED_KEY = "sk-stored-through-settings-7f3a9c"  # what the user types in the settings panel
WRONG_KEY = "sk-singapore-region-key-000000"
BEIJING = "https://dashscope.aliyuncs.com/api/v1"


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(api_keys=(TEST_KEY, STORED_KEY), running_s=(0.2, 0.3)) as running:
        yield running


def _host(tmp_path_factory: pytest.TempPathFactory, name: str, *, listen: str = "127.0.0.1",
          **extra_env: str) -> ComfyHost:
    assert not isinstance(FOUND, str)
    root, python = FOUND
    workdir = tmp_path_factory.mktemp(name)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DASHSCOPE_", "WANX_")) and k.lower() not in PROXY_VARIABLES}
    env.update(HOME=str(workdir), **extra_env)  # no ~/.dashscope/api_key of the machine's user
    # The real service stays out of reach: HTTPS only through a loopback port where nothing listens.
    env.update(HTTPS_PROXY=f"http://127.0.0.1:{free_port()}", NO_PROXY="127.0.0.1,localhost,::1")
    return ComfyHost(root=root, python=python, workdir=workdir, env=env, listen=listen).start()


PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyHost]:
    running = _host(tmp_path_factory, "routes")
    yield running
    running.stop()


class Client:
    """Every answer is kept, so the test can prove none of them carried the key."""

    def __init__(self, host: ComfyHost) -> None:
        self.url = host.url + "/wanx_imageedit"
        self.answers: list[str] = []

    def __call__(self, method: str, path: str, body: object = None, *, raw: str | None = None) -> requests.Response:
        response = requests.request(method, self.url + path, json=body if raw is None else None, data=raw, timeout=60)
        self.answers.append(response.text)
        return response


@pytest.fixture(scope="module")
def api(host: ComfyHost) -> Client:
    return Client(host)


def _key_file(host: ComfyHost) -> Path:
    return host.workdir / "user" / "wanx_imageedit" / "api_key"


def test_status_without_any_key(api: Client, host: ComfyHost) -> None:
    status = api("GET", "/status").json()
    assert status["key_source"] == "none" and status["key_hint"] is None and status["stored_key"] is False
    assert (status["base_url"], status["base_url_source"]) == ("https://dashscope.aliyuncs.com/api/v1", "default")
    assert status["currency"] == "CNY" and status["unit_price"] == PRICE_PER_IMAGE["CNY"]
    assert status["prices"] == PRICE_PER_IMAGE and status["side_px"] == [512, 4096]
    assert status["env_overrides"] == {"api_key": False, "base_url": False}
    assert set(status["functions"]) == {fn.node_id for fn in FUNCTIONS}
    assert status["functions"]["WanxImageEdit_Expand"]["output_rule"] == "expand"
    assert requests.get(host.url + "/api/wanx_imageedit/status", timeout=10).json() == status  # the /api twin
    test = api("POST", "/test").json()
    assert test["ok"] is False and "No DashScope key is configured" in test["message"]


def test_the_key_is_stored_owner_only_and_never_returned(api: Client, host: ComfyHost, emulator: Emulator) -> None:
    status = api("POST", "/key", {"api_key": f"  {STORED_KEY}\n"}).json()
    assert status["key_source"] == "settings" and status["key_hint"] == "…" + STORED_KEY[-4:]
    assert status["stored_key_base_url"] == BEIJING and status["base_url_is_default"] is True
    path = _key_file(host)
    assert json.loads(path.read_text()) == {"api_key": STORED_KEY, "base_url": BEIJING}  # the key and its endpoint
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []  # the temp file was renamed
    # The endpoint is still Beijing (unreachable here): the test says so in plain words.
    assert "Could not reach dashscope.aliyuncs.com" in api("POST", "/test").json()["message"]
    status = api("POST", "/settings", {"base_url": emulator.base_url + "/", "currency": "usd"}).json()
    assert (status["base_url"], status["base_url_source"]) == (emulator.base_url, "settings")
    assert (status["currency"], status["unit_price"]) == ("USD", PRICE_PER_IMAGE["USD"])
    # The key was saved for Beijing: it does not follow the new endpoint, it is removed.
    assert status["stored_key"] is False and not path.exists()
    assert "The key saved in these settings was removed" in status["message"]
    stored = json.loads((path.parent / "settings.json").read_text())
    assert stored == {"base_url": emulator.base_url, "currency": "USD"}
    status = api("POST", "/key", {"api_key": STORED_KEY}).json()
    assert (status["stored_key_base_url"], status["base_url_is_default"]) == (emulator.base_url, False)
    test = api("POST", "/test").json()
    assert test["ok"] is True and "works for wanx2.1-imageedit" in test["message"]
    assert "…" + STORED_KEY[-4:] in test["message"]
    assert any(r.route == "list" and r.auth_valid for r in emulator.requests)


def test_a_wrong_key_gets_the_region_explanation(api: Client, host: ComfyHost, emulator: Emulator) -> None:
    api("POST", "/key", {"api_key": WRONG_KEY})
    test = api("POST", "/test").json()
    assert test["ok"] is False
    assert "InvalidApiKey" in test["message"] and "China (Beijing)" in test["message"]
    assert "Singapore" in test["message"]
    api("POST", "/key", {"api_key": STORED_KEY})
    assert api("POST", "/test").json()["ok"] is True


def test_bad_requests_are_refused_without_echoing_them(api: Client, emulator: Emulator) -> None:
    secretish = "sk-has a space" + "x" * 10
    response = api("POST", "/key", {"api_key": secretish})
    assert response.status_code == 400 and secretish not in response.text
    assert api("POST", "/key", {"api_key": ""}).status_code == 400
    assert api("POST", "/key", {"key": STORED_KEY}).status_code == 400
    assert api("POST", "/key", raw="api_key=" + STORED_KEY).status_code == 400
    intl = api("POST", "/settings", {"base_url": "https://dashscope-intl.aliyuncs.com/api/v1"})
    assert intl.status_code == 400 and "China (Beijing)" in intl.json()["error"]
    plain = api("POST", "/settings", {"base_url": "http://gateway.example.com/api/v1"})
    assert plain.status_code == 400 and "plain http" in plain.json()["error"]
    assert api("POST", "/settings", {"currency": "EUR"}).status_code == 400
    status = api("GET", "/status").json()  # nothing of the refused requests was stored
    assert (status["base_url"], status["currency"], status["key_hint"]) == (emulator.base_url, "USD",
                                                                            "…" + STORED_KEY[-4:])


def test_unreachable_endpoint_is_explained(api: Client, emulator: Emulator) -> None:
    api("POST", "/key", {"api_key": STORED_KEY, "base_url": f"http://127.0.0.1:{free_port()}/api/v1"})
    test = api("POST", "/test").json()
    assert test["ok"] is False and test["message"].startswith("Could not reach 127.0.0.1")
    api("POST", "/key", {"api_key": STORED_KEY, "base_url": emulator.base_url})  # key and endpoint in one request
    assert api("POST", "/settings", {"currency": "CNY"}).json()["stored_key"] is True  # the currency alone keeps it


def test_the_nodes_run_with_the_stored_key(api: Client, host: ComfyHost, emulator: Emulator) -> None:
    object_info = host.object_info()
    before = len(emulator.task_ids)
    prompt = ui_to_api(load_workflow(WORKFLOWS / "wanx_colorize.json"), object_info)
    entry = host.wait(host.queue(prompt))
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert len(emulator.task_ids) == before + 1
    creates = [r for r in emulator.requests if r.route == "create"]
    assert creates and creates[-1].auth_valid
    report = json.loads(next(o["text"][0] for o in entry["outputs"].values() if "text" in o))
    assert report["usage"]["image_count"] == 1 and report["cost"]["currency"] == "CNY"
    saved = [img for o in entry["outputs"].values() for img in o.get("images", [])]
    for image in saved:
        with Image.open(host.output_dir / image["subfolder"] / image["filename"]) as png:
            assert STORED_KEY not in json.dumps(png.info, default=str)


def test_delete_forgets_the_key(api: Client, host: ComfyHost) -> None:
    status = api("DELETE", "/key").json()
    assert status["key_source"] == "none" and status["stored_key"] is False
    assert not _key_file(host).exists()
    assert api("DELETE", "/key").status_code == 200  # deleting twice is fine


def test_the_key_appears_in_no_answer_log_or_other_file(api: Client, host: ComfyHost) -> None:
    # Runs after the others in this module: everything they produced is searched.
    for secret in (STORED_KEY, WRONG_KEY):
        assert not any(secret in answer for answer in api.answers)
        assert secret not in host.log()
        for path in _files(host.workdir):
            if path.name != "api_key":
                assert secret.encode() not in path.read_bytes(), path
    assert "wanx_imageedit: connection test" in host.log()  # the test results are logged, in words


def _files(folder: Path) -> list[Path]:
    """Every file ComfyUI wrote (the symlinked pack itself is not followed)."""
    return [Path(root) / name for root, _, names in os.walk(folder, followlinks=False) for name in names
            if not (Path(root) / name).is_symlink()]


def test_translations_and_help_pages_are_served(host: ComfyHost) -> None:
    i18n = requests.get(host.url + "/i18n", timeout=10).json()
    assert i18n["zh"]["nodeDefs"]["WanxImageEdit_Expand"]["display_name"] == "万相 扩图"
    assert i18n["zh"]["settings"]["WanxImageEdit_ApiKey"]["name"].startswith("DashScope API 密钥")
    assert i18n["en"]["wanxImageEdit"]["key_save"] == "Save key"
    object_info = host.object_info()
    for node_id in [fn.node_id for fn in FUNCTIONS] + [docs.FETCH_NODE_ID]:
        folder = object_info[node_id]["python_module"].split(".", 1)[1]  # how the front end finds the pack
        for lang in docs.LANGS:
            page = requests.get(f"{host.url}/extensions/{folder}/docs/{node_id}/{lang}.md", timeout=10)
            assert page.status_code == 200 and page.text.startswith("# "), (node_id, lang)


def test_the_english_locale_says_what_the_schema_says(host: ComfyHost) -> None:
    # The locale overrides the schema's texts in the UI, so the two must not drift apart.
    object_info = host.object_info()
    en = json.loads((Path(__file__).resolve().parents[1] / "locales/en/nodeDefs.json").read_text(encoding="utf-8"))
    assert set(en) == {name for name, info in object_info.items()
                       if info["python_module"] == "custom_nodes.wanx_imageedit"}
    for node_id, entry in en.items():
        info = object_info[node_id]
        assert (entry["display_name"], entry["description"]) == (info["display_name"], info["description"])
        inputs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        assert list(entry["inputs"]) == [n for n in info["input_order"]["required"] + info["input_order"].get(
            "optional", []) if n in inputs]
        for name, texts in entry["inputs"].items():
            assert texts["tooltip"] == inputs[name][1].get("tooltip"), (node_id, name)
        for index, texts in entry["outputs"].items():
            assert texts["name"] == info["output_name"][int(index)]
            schema_tip = info["output_tooltips"][int(index)]
            assert schema_tip in (None, texts["tooltip"]), (node_id, index)
    assert [s.name for s in node_inputs(FUNCTIONS[0])] == list(en[FUNCTIONS[0].node_id]["inputs"])


@pytest.fixture(scope="module")
def env_host(tmp_path_factory: pytest.TempPathFactory, emulator: Emulator) -> Iterator[ComfyHost]:
    running = _host(tmp_path_factory, "routes_env", DASHSCOPE_API_KEY=TEST_KEY,
                    DASHSCOPE_HTTP_BASE_URL=emulator.base_url)
    yield running
    running.stop()


def test_the_environment_wins_over_stored_settings(env_host: ComfyHost, emulator: Emulator) -> None:
    api = Client(env_host)
    api("POST", "/key", {"api_key": STORED_KEY})
    status = api("POST", "/settings", {"base_url": "https://user:tok3n@gateway.example.com/api/v1?t=tok3n",
                                       "currency": "USD"}).json()
    assert status["stored_key"] is False and "The key saved in these settings was removed" in status["message"]
    assert "is not redirected: it still goes only to " + emulator.base_url in status["message"]
    status = api("POST", "/key", {"api_key": STORED_KEY}).json()  # bound to the endpoint in use: the environment's
    assert status["key_source"] == "environment" and status["key_hint"] == "…" + TEST_KEY[-4:]
    assert status["stored_key"] is True and status["stored_key_hint"] == "…" + STORED_KEY[-4:]
    assert status["stored_key_base_url"] == emulator.base_url
    assert status["env_overrides"] == {"api_key": True, "base_url": True}
    assert (status["base_url"], status["base_url_source"]) == (emulator.base_url, "environment")
    assert status["stored_base_url"] == "https://gateway.example.com/api/v1" and status["currency"] == "USD"
    test = api("POST", "/test").json()
    assert test["ok"] is True and "the environment" in test["message"]
    assert not any(secret in answer for answer in api.answers for secret in (STORED_KEY, TEST_KEY, "tok3n"))
    assert TEST_KEY not in env_host.log() and STORED_KEY not in env_host.log()


# --- issue 14: the two-request attack, from this machine and from another ---------------------------


@pytest.fixture(scope="module")
def capture() -> Iterator[CaptureServer]:
    with CaptureServer() as running:
        yield running


@pytest.fixture(scope="module")
def attacked_host(tmp_path_factory: pytest.TempPathFactory,
                  netns: tuple[str, str, str] | str) -> Iterator[ComfyHost]:
    """The setup of issue 14: the key in ComfyUI's environment, no endpoint there (so Beijing), and
    ComfyUI listening beyond loopback too when a network namespace could be made."""
    listen = "127.0.0.1" if isinstance(netns, str) else f"127.0.0.1,{netns[1]}"
    running = _host(tmp_path_factory, "routes_attack", listen=listen, DASHSCOPE_API_KEY=TEST_KEY)
    yield running
    running.stop()


def test_the_two_request_attack_reaches_no_key(attacked_host: ComfyHost, capture: CaptureServer) -> None:
    api = Client(attacked_host)
    evil = api("POST", "/settings", {"base_url": "https://evil.example.com/api/v1"})  # request 1, as in the issue
    assert evil.status_code == 200
    status = evil.json()
    assert (status["base_url"], status["base_url_source"], status["base_url_is_default"]) == (BEIJING, "default", True)
    assert status["stored_base_url"] == "https://evil.example.com/api/v1"
    assert "is not redirected: it still goes only to " + BEIJING in status["message"]
    test = api("POST", "/test").json()  # request 2: the key goes to Beijing (unreachable here), not to evil.example
    assert test["ok"] is False and test["message"].startswith("Could not reach dashscope.aliyuncs.com")
    # The same with an endpoint that answers and records: the capture server on loopback.
    assert api("POST", "/settings", {"base_url": capture.base_url}).status_code == 200
    assert api("POST", "/test").json()["message"].startswith("Could not reach dashscope.aliyuncs.com")
    # And an edit: the node sends the environment's key to Beijing only, so it fails here. ProxyError: it went
    # out over HTTPS, which only Beijing is (the capture server is plain http on loopback, never proxied).
    prompt = ui_to_api(load_workflow(WORKFLOWS / "wanx_colorize.json"), attacked_host.object_info())
    entry = attacked_host.wait(attacked_host.queue(prompt), timeout_s=180)
    assert capture.seen == []
    assert entry["status"]["status_str"] == "error"
    assert "ProxyError" in json.dumps(entry["status"]["messages"])
    assert TEST_KEY not in attacked_host.log() and not any(TEST_KEY in answer for answer in api.answers)


NETNS_CLIENT = """
import json, sys, requests
url = sys.argv[1]
answers = []
for method, path, body in json.loads(sys.argv[2]):
    response = requests.request(method, url + path, json=body, timeout=30)
    answers.append([response.status_code, response.text])
print(json.dumps(answers))
"""


def test_another_machine_cannot_change_the_key_or_endpoint(attacked_host: ComfyHost, capture: CaptureServer,
                                                           netns: tuple[str, str, str] | str) -> None:
    if isinstance(netns, str):
        pytest.skip(netns)
    name, address, _ = netns
    api = Client(attacked_host)
    api("POST", "/settings", {"base_url": capture.base_url})
    api("POST", "/key", {"api_key": STORED_KEY})  # from this machine: accepted
    folder = _key_file(attacked_host).parent
    before = sorted((p.name, p.read_bytes()) for p in folder.iterdir())
    calls = [["POST", "/settings", {"base_url": "https://evil.example.com/api/v1"}],
             ["POST", "/key", {"api_key": WRONG_KEY, "base_url": "https://evil.example.com/api/v1"}],
             ["DELETE", "/key", None], ["POST", "/test", {}], ["GET", "/status", None]]
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}
    result = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", NETNS_CLIENT,
                             f"http://{address}:{attacked_host.port}/api/wanx_imageedit", json.dumps(calls)],
                            capture_output=True, text=True, check=False, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    for (status_code, text), (method, path, _) in zip(answers[:4], calls[:4], strict=True):
        assert status_code == 403, (method, path, text)
        error = json.loads(text)["error"]
        assert f"came from {netns[2]}" in error and "WANX_ALLOW_REMOTE_SETTINGS=1" in error
        assert "DASHSCOPE_API_KEY" in error and "~/.dashscope/api_key on the server" in error
    status_code, text = answers[4]
    status = json.loads(text)
    assert status_code == 200 and status["stored_key_hint"] == "…" + STORED_KEY[-4:]
    assert not any(secret in text for _, text in answers for secret in (TEST_KEY, STORED_KEY, WRONG_KEY))
    assert sorted((p.name, p.read_bytes()) for p in folder.iterdir()) == before  # nothing changed on disk
    assert capture.seen == []
