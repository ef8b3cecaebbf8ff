"""The real ComfyUI front end (the comfyui-frontend-package ComfyUI serves), driven by headless
Chromium from Debian's packages through Playwright, with the emulator as the service:

- every example workflow loads with no missing-node warning;
- a key typed into the settings panel is stored on the server and makes the nodes work, and a
  full-text search of the exported workflow, the saved PNGs, ComfyUI's log and files, and the
  browser's storage (localStorage, sessionStorage, IndexedDB, cookies, the profile on disk) finds
  no trace of it;
- the cost badge and the expand preview render and follow widget changes; sizes outside 512-4096
  say "will be resized"; the session total counts what was billed;
- the help page opens in the node help panel, in English and Chinese.

Screenshots go to tests/artifacts/browser/ (git-ignored). Skips with the reason when there is no
ComfyUI, no /usr/bin/chromium or no playwright module. Never runs `playwright install`."""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from comfy_host import ComfyHost, find_host
from wanx_imageedit.nodes.core import docs
from wanx_imageedit.nodes.core.emulator import Emulator
from wanx_imageedit.nodes.core.functions import FUNCTIONS

CHROMIUM = Path(os.environ.get("WANX_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--password-store=basic"]
REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO_ROOT / "workflows"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "browser"
SECRET = "sk-wanx-browser-" + secrets.token_hex(12)  # what the user types; searched for everywhere afterwards

FOUND = find_host()
try:
    from playwright.sync_api import Page, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None  # type: ignore[assignment]


def _skip_reason() -> str | None:
    if isinstance(FOUND, str):
        return f"browser tests need ComfyUI: {FOUND}"
    if sync_playwright is None:
        return "browser tests need the Python package playwright (pip install playwright; no browser download)"
    if not CHROMIUM.is_file():
        return f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(api_keys=(SECRET,), running_s=(0.2, 0.3)) as running:
        yield running


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyHost]:
    assert not isinstance(FOUND, str)
    root, python = FOUND
    workdir = tmp_path_factory.mktemp("browser_host")
    # A returning user: no first-run template dialog in front of the canvas.
    (workdir / "user" / "default").mkdir(parents=True)
    (workdir / "user" / "default" / "comfy.settings.json").write_text(
        json.dumps({"Comfy.TutorialCompleted": True, "Comfy.Locale": "en"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "WANX_"))}
    env["HOME"] = str(workdir)  # no key of the machine's user: only what the settings panel stores
    running = ComfyHost(root=root, python=python, workdir=workdir, env=env).start()
    # Inputs for the size checks: one too small, one too wide (both fit by one uniform scale).
    from PIL import Image

    Image.new("RGB", (300, 200), (200, 120, 40)).save(running.input_dir / "wanx_small_300x200.png")
    Image.new("RGB", (5000, 1000), (40, 120, 200)).save(running.input_dir / "wanx_wide_5000x1000.png")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chromium_profile")


@pytest.fixture(scope="module")
def page(host: ComfyHost, browser_profile: Path) -> Iterator[Page]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(browser_profile), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 900},
        )
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(30_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(host.url)
        page.wait_for_function("() => window.app?.graph && window.wanxImageEdit?.state.status", timeout=90_000)
        page.wanx_errors = errors  # type: ignore[attr-defined]
        yield page
        context.close()


def _shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def _load(page: Page, path: Path) -> None:
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", json.loads(path.read_text(encoding="utf-8")))
    page.wait_for_timeout(300)


def _focus(page: Page, node_type: str) -> None:
    page.evaluate("""(type) => { const n = app.graph.nodes.find(n => n.type === type);
        app.canvas.ds.scale = 1.0; app.canvas.ds.offset = [-n.pos[0] + 480, -n.pos[1] + 170];
        app.canvas.setDirty(true, true); }""", node_type)
    page.wait_for_timeout(250)


def _drawn(page: Page, node_type: str) -> dict:
    """What our extension drew on the node in the last frame (it records it on the node)."""
    return page.evaluate("""(type) => { const n = app.graph.nodes.find(n => n.type === type);
        return {badge: n.wanxBadge, lines: (n.wanxInfo?.lines ?? []).map(l => l.text), preview: n.wanxInfo?.preview,
                batch: n.wanxInfo?.batch}; }""", node_type)


def _set_widgets(page: Page, node_type: str, values: dict) -> None:
    page.evaluate("""([type, values]) => { const n = app.graph.nodes.find(n => n.type === type);
        for (const [name, value] of Object.entries(values)) {
          const w = n.widgets.find(w => w.name === name); w.value = value; w.callback?.(value, app.canvas, n);
        }
        app.canvas.setDirty(true, true); }""", [node_type, values])


def _wait_drawn(page: Page, node_type: str, predicate: str) -> dict:
    page.wait_for_function(f"""() => {{ const n = app.graph.nodes.find(n => n.type === {json.dumps(node_type)});
        const info = n?.wanxInfo; return !!info && ({predicate}); }}""", timeout=10_000)
    return _drawn(page, node_type)


MISSING = "() => !!document.querySelector('.comfy-missing-nodes')"


def test_every_example_workflow_loads_without_a_missing_node_warning(page: Page) -> None:
    assert page.evaluate("() => app.extensionManager.setting.get('Comfy.Workflow.ShowMissingNodesWarning')") is True
    # Positive control: a workflow with an unknown node does raise the warning this test looks for.
    bogus = {"last_node_id": 1, "last_link_id": 0, "links": [], "groups": [], "config": {}, "extra": {},
             "version": 0.4, "nodes": [{"id": 1, "type": "NoSuchNode_Wanx", "pos": [0, 0], "size": [200, 100],
                                        "flags": {}, "order": 0, "mode": 0, "properties": {}}]}
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", bogus)
    page.wait_for_function(MISSING, timeout=10_000)
    page.keyboard.press("Escape")
    page.wait_for_function(f"() => !({MISSING[6:]})", timeout=10_000)
    files = sorted(WORKFLOWS.glob("*.json"))
    assert len(files) >= len(FUNCTIONS)
    for path in files:
        _load(page, path)
        assert not page.evaluate(MISSING), path.name
        unknown = page.evaluate("() => app.graph.nodes.filter(n => !LiteGraph.registered_node_types[n.type])"
                                ".map(n => n.type)")
        assert unknown == [], (path.name, unknown)
        ours = page.evaluate("() => app.graph.nodes.filter(n => n.type.startsWith('WanxImageEdit_')).length")
        assert ours >= 1, path.name
        page.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
        page.wait_for_timeout(150)
        _shot(page, f"workflow_{path.stem}")
    assert [e for e in page.wanx_errors if "wanx" in e.lower()] == []  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def key_entered(page: Page, host: ComfyHost, emulator: Emulator) -> dict:
    """The user's path: endpoint and currency as ordinary settings, the key typed into our field."""
    page.evaluate("""async (url) => { const s = app.extensionManager.setting;
        await s.set('WanxImageEdit.CustomBaseUrl', url); await s.set('WanxImageEdit.Endpoint', 'custom');
        await s.set('WanxImageEdit.Currency', 'CNY'); }""", emulator.base_url)
    page.wait_for_function(f"() => window.wanxImageEdit.state.status?.base_url === {json.dumps(emulator.base_url)}",
                           timeout=15_000)
    page.evaluate("() => app.extensionManager.command.execute('Comfy.ShowSettingsDialog')")
    page.get_by_text("Wanx Image Edit", exact=True).first.click()
    field = page.locator("[data-wanx=key-input]")
    field.fill(SECRET)
    page.locator("[data-wanx=save]").click()
    page.wait_for_function("() => document.querySelector('[data-wanx=status]')?.textContent.includes('…')")
    assert field.input_value() == ""  # the page forgets the key as soon as it is sent
    page.locator("[data-wanx=test]").click()
    page.wait_for_function("() => document.querySelector('[data-wanx=result]')?.dataset.ok !== undefined")
    result = {"status": page.locator("[data-wanx=status]").inner_text(),
              "test": page.locator("[data-wanx=result]").inner_text(),
              "ok": page.locator("[data-wanx=result]").get_attribute("data-ok")}
    _shot(page, "settings_key_saved_and_tested")
    page.keyboard.press("Escape")
    page.wait_for_timeout(200)
    return result


def test_the_settings_panel_stores_the_key_on_the_server_only(key_entered: dict, host: ComfyHost,
                                                              emulator: Emulator) -> None:
    assert key_entered["ok"] == "true", key_entered
    assert "works for wanx2.1-imageedit" in key_entered["test"]
    assert f"ending …{SECRET[-4:]}" in key_entered["status"] and "Key stored by these settings" in key_entered["status"]
    assert SECRET not in json.dumps(key_entered)
    key_file = host.workdir / "user" / "wanx_imageedit" / "api_key"
    assert key_file.read_text().strip() == SECRET and (key_file.stat().st_mode & 0o777) == 0o600
    status = requests.get(host.url + "/wanx_imageedit/status", timeout=10).json()
    assert (status["key_source"], status["base_url"]) == ("settings", emulator.base_url)
    comfy_settings = json.loads((host.workdir / "user" / "default" / "comfy.settings.json").read_text())
    assert comfy_settings["WanxImageEdit.Endpoint"] == "custom"  # ordinary settings land in ComfyUI's store...
    assert comfy_settings.get("WanxImageEdit.ApiKey", "") == ""  # ...the key never does
    assert SECRET not in json.dumps(comfy_settings)


def test_cost_badge_and_expand_preview_follow_the_widgets(page: Page) -> None:
    _load(page, WORKFLOWS / "wanx_expand.json")
    _focus(page, "WanxImageEdit_Expand")
    before = _wait_drawn(page, "WanxImageEdit_Expand", "info.input && info.preview && !info.preview.relative")
    _shot(page, "expand_before")
    assert before["badge"] == "CNY 0.14" and before["batch"] == 1
    assert before["lines"][0] == "Cost 1 × 1 × CNY 0.14 = CNY 0.14"
    assert before["lines"][1] == "Input 768×768"
    assert before["preview"] | {} == {"relative": False, "width": 1152, "height": 960, "x": 192, "y": 96,
                                      "originalWidth": 768, "originalHeight": 768}
    _set_widgets(page, "WanxImageEdit_Expand", {"n": 3, "left_scale": 2.0, "top_scale": 1.5})
    after = _wait_drawn(page, "WanxImageEdit_Expand", "info.preview?.width === 1344")
    _shot(page, "expand_after_widget_change")
    assert after["badge"] == "CNY 0.42" and after["lines"][0] == "Cost 3 × 1 × CNY 0.14 = CNY 0.42"
    assert (after["preview"]["width"], after["preview"]["height"], after["preview"]["x"], after["preview"]["y"]) == (
        1344, 1056, 384, 192)
    assert "Output 1344×1056, original at x 384, y 192" in after["lines"]
    page.evaluate("async () => { await app.extensionManager.setting.set('WanxImageEdit.Currency', 'USD'); }")
    usd = _wait_drawn(page, "WanxImageEdit_Expand", "info.currency === 'USD'")
    assert usd["badge"] == "USD 0.06021"
    page.evaluate("async () => { await app.extensionManager.setting.set('WanxImageEdit.Currency', 'CNY'); }")
    _wait_drawn(page, "WanxImageEdit_Expand", "info.currency === 'CNY'")


def test_batch_size_resize_and_output_limit_are_shown_before_running(page: Page) -> None:
    _load(page, WORKFLOWS / "wanx_chain_batch_colorize_blend.json")
    batch = _wait_drawn(page, "WanxImageEdit_Colorize", "info.batch === 3")
    assert batch["badge"] == "CNY 0.42" and batch["lines"][0] == "Cost 1 × 3 × CNY 0.14 = CNY 0.42"
    page.evaluate("() => { const r = app.graph.nodes.find(n => n.type === 'RepeatImageBatch');"
                  " r.widgets[0].value = 5; app.canvas.setDirty(true, true); }")
    assert _wait_drawn(page, "WanxImageEdit_Colorize", "info.batch === 5")["badge"] == "CNY 0.70"
    # An upstream node whose batch is unknown before running: the badge says so.
    page.evaluate("""() => { const c = app.graph.nodes.find(n => n.type === 'WanxImageEdit_Colorize');
        const r = app.graph.nodes.find(n => n.type === 'RepeatImageBatch');
        const scale = LiteGraph.createNode('ImageScale'); app.graph.add(scale);
        r.connect(0, scale, 0); scale.connect(0, c, 0); app.canvas.setDirty(true, true); }""")
    unknown = _wait_drawn(page, "WanxImageEdit_Colorize", "info.batch === null")
    assert unknown["badge"] == "CNY 0.14 × batch" and "batch size unknown" in unknown["lines"][0]

    _load(page, WORKFLOWS / "wanx_superresolution.json")
    page.evaluate("() => { const l = app.graph.nodes.find(n => n.type === 'LoadImage');"
                  " const w = l.widgets.find(w => w.name === 'image'); w.value = 'wanx_wide_5000x1000.png';"
                  " w.callback?.(w.value); }")
    wide = _wait_drawn(page, "WanxImageEdit_SuperResolution", "info.input?.width === 5000")
    _focus(page, "WanxImageEdit_SuperResolution")
    _shot(page, "superresolution_resized_and_over_limit")
    assert "Input 5000×1000 will be resized to 4096×819 (512–4096 px)" in wide["lines"]
    assert "Output 8192×1638" in wide["lines"]
    assert any(line.startswith("Above 4096 px per side") for line in wide["lines"])

    _load(page, WORKFLOWS / "wanx_expand.json")
    page.evaluate("() => { const l = app.graph.nodes.find(n => n.type === 'LoadImage');"
                  " const w = l.widgets.find(w => w.name === 'image'); w.value = 'wanx_small_300x200.png';"
                  " w.callback?.(w.value); }")
    small = _wait_drawn(page, "WanxImageEdit_Expand", "info.input?.width === 300")
    assert "Input 300×200 will be resized to 768×512 (512–4096 px)" in small["lines"]
    assert small["preview"]["originalWidth"] == 768 and small["preview"]["width"] == 1152


def _storage_dump(page: Page) -> str:
    return page.evaluate("""async () => {
        const out = {local: {...localStorage}, session: {...sessionStorage}, cookies: document.cookie, idb: {}};
        for (const info of (await indexedDB.databases?.()) ?? []) {
          const db = await new Promise((ok, fail) => { const r = indexedDB.open(info.name); r.onsuccess = () => ok(r.result);
                                                       r.onerror = () => fail(r.error); });
          for (const store of db.objectStoreNames) {
            out.idb[`${info.name}/${store}`] = await new Promise((ok) => {
              const r = db.transaction(store).objectStore(store).getAll(); r.onsuccess = () => ok(r.result);
              r.onerror = () => ok(String(r.error)); });
          }
          db.close();
        }
        return JSON.stringify(out, (k, v) => (v instanceof Blob ? `blob:${v.size}` : v));
    }""")


def test_a_queued_run_bills_once_and_leaves_no_trace_of_the_key(page: Page, key_entered: dict, host: ComfyHost,
                                                                  emulator: Emulator,
                                                                  browser_profile: Path) -> None:
    assert key_entered["ok"] == "true"
    _load(page, WORKFLOWS / "wanx_colorize.json")
    before = len(emulator.task_ids)
    _queue_and_wait(page)
    assert len(emulator.task_ids) == before + 1
    create = [r for r in emulator.requests if r.route == "create"][-1]
    assert create.auth_valid  # the node used the key typed into the settings panel
    total = page.evaluate("() => window.wanxImageEdit.sessionTotal()")
    assert (total["images"], total["estimated"], total["text"]) == (1, False, "CNY 0.14")
    _focus(page, "WanxImageEdit_Colorize")
    assert "Session: CNY 0.14 billed (1 images)" in _drawn(page, "WanxImageEdit_Colorize")["lines"]
    _shot(page, "colorize_after_run_session_total")
    _queue_and_wait(page)  # unchanged: ComfyUI replays the cached report, which must not count again
    assert len(emulator.task_ids) == before + 1
    assert page.evaluate("() => window.wanxImageEdit.sessionTotal().images") == 1

    exported = page.evaluate("async () => JSON.stringify([app.graph.serialize(), (await app.graphToPrompt())])")
    assert "WanxImageEdit_Colorize" in exported and SECRET not in exported
    pngs = sorted(host.output_dir.rglob("*.png"))
    assert pngs
    from PIL import Image

    for path in pngs:
        with Image.open(path) as png:
            text = json.dumps(png.info, default=str)
            assert "workflow" in png.info and SECRET not in text, path
        assert SECRET.encode() not in path.read_bytes()
    assert SECRET not in host.log()
    storage = _storage_dump(page)
    assert SECRET not in storage
    assert "WanxImageEdit" in storage or "workflow" in storage  # the dump really holds the page's state
    for root, _, names in os.walk(host.workdir, followlinks=False):
        for name in names:
            path = Path(root) / name
            if name != "api_key" and not path.is_symlink():
                assert SECRET.encode() not in path.read_bytes(), path
    page.evaluate("() => localStorage.setItem('wanx-flush-probe', '1')")  # make the profile write its stores
    page.wait_for_timeout(500)
    for root, _, names in os.walk(browser_profile):
        for name in names:
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                assert SECRET.encode() not in data and SECRET.encode("utf-16-le") not in data, path


def test_runs_without_a_report_preview_are_counted_from_the_nodes_own_ui(page: Page, key_entered: dict,
                                                                         emulator: Emulator) -> None:
    assert key_entered["ok"] == "true"
    _load(page, WORKFLOWS / "wanx_chain_inpaint_expand_upscale.json")  # no Preview Any on the reports
    before = page.evaluate("() => window.wanxImageEdit.sessionTotal()")
    tasks = len(emulator.task_ids)
    _queue_and_wait(page)
    sent = len(emulator.task_ids) - tasks  # the inpaint step may be served from the result cache
    assert sent in (2, 3)
    after = page.evaluate("() => window.wanxImageEdit.sessionTotal()")
    assert after["images"] == before["images"] + sent and after["estimated"] is False
    assert after["text"] == f"CNY {0.14 * after['images']:.2f}"
    _focus(page, "WanxImageEdit_Expand")
    assert any(line.startswith("Session: CNY") for line in _drawn(page, "WanxImageEdit_Expand")["lines"])
    _shot(page, "chain_after_run_session_total")


def _queue_and_wait(page: Page) -> None:
    outcome = page.evaluate("""() => new Promise((resolve) => {
        const api = window.comfyAPI.api.api;
        const done = (kind) => (e) => resolve({kind, detail: e.detail});
        api.addEventListener('execution_success', done('success'), {once: true});
        api.addEventListener('execution_error', done('error'), {once: true});
        app.queuePrompt(0, 1);
        setTimeout(() => resolve({kind: 'timeout'}), 90000); })""")
    assert outcome["kind"] == "success", outcome
    page.wait_for_timeout(300)  # our own execution_success listener runs too


def test_the_help_page_opens_in_english_and_chinese(page: Page, host: ComfyHost) -> None:
    module = requests.get(host.url + "/object_info/WanxImageEdit_Expand", timeout=10).json()[
        "WanxImageEdit_Expand"]["python_module"]
    folder = module.split(".", 1)[1]
    for lang in docs.LANGS:
        text = page.evaluate("async (url) => (await fetch(url)).text()",
                             f"/extensions/{folder}/docs/WanxImageEdit_Expand/{lang}.md")
        assert text == (REPO_ROOT / "web/docs/WanxImageEdit_Expand" / f"{lang}.md").read_text(encoding="utf-8")
    _load(page, WORKFLOWS / "wanx_expand.json")
    expected = {"en": ("Prompt tips", "Wanx Expand (Outpaint)"), "zh": ("提示词技巧", "万相 扩图")}
    try:
        for lang in docs.LANGS:
            page.evaluate("async (l) => { await app.extensionManager.setting.set('Comfy.Locale', l); }", lang)
            page.wait_for_timeout(300)
            _focus(page, "WanxImageEdit_Expand")
            page.evaluate("() => { const n = app.graph.nodes.find(n => n.type === 'WanxImageEdit_Expand');"
                          " app.canvas.deselectAll?.(); app.canvas.selectNode(n); app.canvas.setDirty(true, true); }")
            page.locator("[data-testid=info-button]").first.click()
            page.wait_for_selector(".markdown-content h2")
            heading, title = expected[lang]
            page.wait_for_function(f"() => document.querySelector('.markdown-content')?.innerText.includes({json.dumps(heading)})")
            content = page.locator(".markdown-content").inner_text()
            assert title in content and re.search(r"1152\s*x\s*960", content), content[:500]
            if lang == "zh":  # the node itself is translated too
                assert page.evaluate("() => app.graph.nodes.find(n => n.type === 'WanxImageEdit_Expand')"
                                     ".wanxInfo.lines[0].text").startswith("费用 1 × 1 × CNY 0.14")
            _shot(page, f"help_panel_{lang}")
            page.locator("[data-testid=info-button]").first.click()  # close it again
            page.wait_for_timeout(200)
    finally:
        page.evaluate("async () => { await app.extensionManager.setting.set('Comfy.Locale', 'en'); }")
