"""The real ComfyUI front end, driven by headless Chromium from Debian's packages through Playwright,
with the emulator as the service, in three configurations: front end 1.27.10 (the one ComfyUI 0.3.64
pins) and 1.58.1 (through --front-end-root), each with Nodes 2.0 off, and 1.58.1 with Nodes 2.0 on.

- every example workflow loads with no missing-node warning, and every edit node has its panel;
- the settings panel looks like the settings dialog around it; a key typed into it is stored on the
  server and makes the nodes work, and a full-text search of the exported workflow, the saved PNGs,
  ComfyUI's log and files, and the browser's storage (localStorage, sessionStorage, IndexedDB,
  cookies, the profile on disk) finds no trace of it;
- each edit node's panel (cost, endpoint, sizes, expand diagram, session total) and its cost badge
  are current after a workflow load, after changing a value with the mouse (on the node itself and
  upstream, through a link) and after a run: the text equals what the test computes, with the Python
  core, from the values the panel draws from, and the node's pixels do not change when it is forced
  to redraw;
- a custom endpoint is shown on the nodes ("→ host"), and the Custom base URL reaches the server
  once, when the user commits it (Enter, leaving the field), never halfway through typing it (a new
  endpoint removes the stored key);
- a browser on another machine (a network namespace) cannot change the key, and the panel shows the
  server's refusal in its own words;
- the help page opens in the node help panel, in English and Chinese;
- nothing the pack's files do logs an error or a warning (deprecations included).

Screenshots go to tests/artifacts/browser/ (git-ignored). Skips with the reason when there is no
ComfyUI, no /usr/bin/chromium, no playwright module or no newer front end (WANX_FRONTEND_1_58, a
comfyui_frontend_package/static folder). Never runs `playwright install`."""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from comfy_host import ComfyHost, find_host
from wanx_imageedit.nodes.authoring import docs
from wanx_imageedit.nodes.core.errors import InputError
from wanx_imageedit.nodes.core.functions import (
    FUNCTIONS,
    MAX_SIDE_PX,
    MIN_SIDE_PX,
    PRICE_PER_IMAGE,
    ImageSize,
    OutputRule,
    output_size,
)
from wanx_imageedit.nodes.core.images import plan_fit
from wanx_imageedit.nodes.emulator import Emulator

CHROMIUM = Path(os.environ.get("WANX_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--password-store=basic", "--no-proxy-server"]
# The newer front end: WANX_FRONTEND_1_58 (a comfyui_frontend_package/static folder), else where this
# project's machine keeps it.
NEW_FRONTEND = Path(os.environ.get("WANX_FRONTEND_1_58", "/work/fe158/comfyui_frontend_package/static"))
REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO_ROOT / "workflows"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "browser"
SECRET = "sk-wanx-browser-" + secrets.token_hex(12)  # what the user types; searched for everywhere afterwards
MESSAGES = json.loads((REPO_ROOT / "locales/en/main.json").read_text(encoding="utf-8"))["wanxImageEdit"]
FN = {fn.node_id: fn for fn in FUNCTIONS}
PACK_FILES = "/extensions/wanx_imageedit/"  # where ComfyUI serves web/ (the pack's folder name)

FOUND = find_host()
try:
    from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright
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


# --- the three configurations -------------------------------------------------------------------------


@dataclass(frozen=True)
class FrontEnd:
    name: str
    root: Path | None  # None: the front end ComfyUI's own requirements pin
    nodes2: bool  # the setting Comfy.VueNodes.Enabled ("Modern Node Design (Nodes 2.0)")

    def version(self) -> str | None:
        """The version this configuration must show in the page, or None when it cannot be known."""
        if self.root is None:
            if isinstance(FOUND, str):
                return None
            pins = re.search(r"comfyui-frontend-package==([\d.]+)", (FOUND[0] / "requirements.txt").read_text())
            return pins.group(1) if pins else None
        infos = sorted(self.root.parent.parent.glob("comfyui_frontend_package-*.dist-info"))
        return infos[-1].name.removeprefix("comfyui_frontend_package-").removesuffix(".dist-info") if infos else None


def _new_frontend_missing() -> str | None:
    if not (NEW_FRONTEND / "index.html").is_file():
        return (f"no newer front end at {NEW_FRONTEND} (pip install --target DIR comfyui-frontend-package==1.58.1, "
                "then set WANX_FRONTEND_1_58=DIR/comfyui_frontend_package/static)")
    return None


FRONTENDS = [
    pytest.param(FrontEnd("fe1.27-classic", None, False), id="fe1.27-classic"),
    pytest.param(FrontEnd("fe1.58-classic", NEW_FRONTEND, False), id="fe1.58-classic",
                 marks=pytest.mark.skipif(_new_frontend_missing() is not None, reason=_new_frontend_missing() or "")),
    pytest.param(FrontEnd("fe1.58-nodes2", NEW_FRONTEND, True), id="fe1.58-nodes2",
                 marks=pytest.mark.skipif(_new_frontend_missing() is not None, reason=_new_frontend_missing() or "")),
]


@pytest.fixture(scope="module", params=FRONTENDS)
def frontend(request: pytest.FixtureRequest) -> FrontEnd:
    return request.param


# --- another machine: a browser in a network namespace ------------------------------------------------


# --- ComfyUI and the browser --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(api_keys=(SECRET,), running_s=(0.2, 0.3)) as running:
        yield running


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, frontend: FrontEnd,
         netns: tuple[str, str, str] | str) -> Iterator[ComfyHost]:
    assert not isinstance(FOUND, str)
    root, python = FOUND
    workdir = tmp_path_factory.mktemp(f"browser_{frontend.name}")
    # A returning user: no first-run template dialog in front of the canvas; Nodes 2.0 as configured.
    (workdir / "user" / "default").mkdir(parents=True)
    (workdir / "user" / "default" / "comfy.settings.json").write_text(json.dumps(
        {"Comfy.TutorialCompleted": True, "Comfy.Locale": "en", "Comfy.VueNodes.Enabled": frontend.nodes2}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "WANX_"))}
    env["HOME"] = str(workdir)  # no key of the machine's user: only what the settings panel stores
    extra = ("--front-end-root", str(frontend.root)) if frontend.root else ()
    listen = "127.0.0.1" if isinstance(netns, str) else f"127.0.0.1,{netns[1]}"
    running = ComfyHost(root=root, python=python, workdir=workdir, env=env, extra_args=extra, listen=listen).start()
    # Inputs for the size checks: one too small, one too wide (both fit by one uniform scale).
    from PIL import Image

    Image.new("RGB", (300, 200), (200, 120, 40)).save(running.input_dir / "wanx_small_300x200.png")
    Image.new("RGB", (5000, 1000), (40, 120, 200)).save(running.input_dir / "wanx_wide_5000x1000.png")
    yield running
    running.stop()


# Recorded in the page before any script runs: console warnings and errors with the stack that made
# them, uncaught errors and rejections. A message is the pack's when a pack file is on its stack.
CONSOLE_RECORDER = """(() => {
  const log = window.__wanxConsole = [];
  const text = (a) => { try { return a instanceof Error ? (a.stack || String(a)) : typeof a === 'string' ? a
    : JSON.stringify(a); } catch { return String(a); } };
  for (const level of ['warn', 'error']) {
    const original = console[level];
    console[level] = function (...args) {
      log.push({ level, text: args.map(text).join(' ').slice(0, 3000), stack: String(new Error().stack) });
      return original.apply(this, args);
    };
  }
  window.addEventListener('error', (e) => log.push({ level: 'pageerror', text: String(e.message),
    stack: String(e.error?.stack ?? `${e.filename}:${e.lineno}`) }));
  window.addEventListener('unhandledrejection', (e) => log.push({ level: 'rejection', text: String(e.reason),
    stack: String(e.reason?.stack ?? '') }));
})();"""


def _open(context: BrowserContext, url: str) -> Page:
    # Loopback only: the newer front end would otherwise look up model files on huggingface.co.
    allowed = url.rstrip("/")
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(allowed) else route.abort())
    context.add_init_script(CONSOLE_RECORDER)
    page = context.pages[0] if context.pages else context.new_page()
    page.set_default_timeout(30_000)
    failures: list[str] = []
    page.on("response", lambda r: failures.append(f"{r.status} {r.request.method} {r.url}")
            if r.status >= 400 and "wanx_imageedit" in r.url else None)
    page.goto(url)
    page.wait_for_function("() => window.app?.graph && window.wanxImageEdit?.state.status", timeout=90_000)
    # Deprecation warnings are shown once per message: repeat them, so a use by the pack after one by
    # the front end itself is not hidden.
    page.evaluate("() => { if (window.LiteGraph) LiteGraph.alwaysRepeatWarnings = true; }")
    page.wanx_failures = failures  # type: ignore[attr-defined]
    return page


@pytest.fixture(scope="module")
def browser_profile(tmp_path_factory: pytest.TempPathFactory, frontend: FrontEnd) -> Path:
    return tmp_path_factory.mktemp(f"chromium_profile_{frontend.name}")


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def page(playwright: Playwright, host: ComfyHost, browser_profile: Path, frontend: FrontEnd) -> Iterator[Page]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = playwright.chromium.launch_persistent_context(
        str(browser_profile), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
        viewport={"width": 1400, "height": 900},
    )
    page = _open(context, host.url)
    shown = page.evaluate("() => [window.__COMFYUI_FRONTEND_VERSION__, window.wanxImageEdit.vueMode()]")
    assert shown == [frontend.version() or shown[0], frontend.nodes2], (frontend, shown)
    page.wanx_frontend = frontend  # type: ignore[attr-defined]
    yield page
    context.close()


def _shot(page: Page, name: str, clip: dict | None = None) -> bytes:
    frontend: FrontEnd = page.wanx_frontend  # type: ignore[attr-defined]
    return page.screenshot(path=str(ARTIFACTS / f"{frontend.name}_{name}.png"), clip=clip)


def _settle(page: Page) -> None:
    """Two animation frames: whatever changed has been drawn."""
    page.evaluate("() => new Promise((ok) => requestAnimationFrame(() => requestAnimationFrame(ok)))")


def _load(page: Page, path: Path) -> None:
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", json.loads(path.read_text(encoding="utf-8")))
    _settle(page)


def _node_id(page: Page, node_type: str) -> int:
    return page.evaluate("(type) => app.graph.nodes.find(n => n.type === type).id", node_type)


def _focus(page: Page, node_type: str) -> None:
    page.evaluate("""(type) => { const n = app.graph.nodes.find(n => n.type === type);
        app.canvas.ds.scale = 1.0; app.canvas.ds.offset = [-n.pos[0] + 480, -n.pos[1] + 170];
        app.canvas.setDirty(true, true); }""", node_type)
    page.wait_for_timeout(250)
    _settle(page)


# --- what a panel shows, and what it should show -------------------------------------------------------


def _panel(page: Page, node_type: str) -> dict[str, Any]:
    """What the node shows, read from the page: the panel's lines, the badge (on the title with the
    canvas renderer, on the panel with Nodes 2.0) and the expand diagram's rectangles."""
    return page.evaluate("""(type) => { const n = app.graph.nodes.find(n => n.type === type);
        const panel = n.widgets.find(w => w.name === 'wanx_info')?.element;
        const lines = [...(panel?.querySelectorAll('.wanx-line') ?? [])].map(e => e.textContent);
        const chip = panel?.querySelector('[data-wanx=badge]')?.textContent ?? null;
        const titleBadges = (n.badges ?? []).filter(b => b.wanxCost).map(b => b().text).filter(Boolean);
        const rects = [...(panel?.querySelectorAll('[data-wanx=expand-preview] rect') ?? [])].map(r =>
          Object.fromEntries(['x', 'y', 'width', 'height'].map(k => [k, Number(r.getAttribute(k))])));
        const svg = panel?.querySelector('[data-wanx=expand-preview]');
        const labels = [...(svg?.querySelectorAll('text') ?? [])].map(t => t.textContent);
        // Cut off: a line or the diagram below the panel's visible box (the node too small for it).
        const box = panel?.getBoundingClientRect();
        const cut = [...(panel?.children ?? [])].filter(e => e.getBoundingClientRect().bottom > box.bottom + 0.5)
          .map(e => e.textContent || e.tagName);
        return { lines, chip, titleBadges, rects, labels, cut,
                 connected: !!panel?.isConnected, visible: !!panel && panel.getBoundingClientRect().height > 0 }; }""",
                         node_type)


def _reading(page: Page, node_type: str) -> dict[str, Any]:
    """The values a node's panel draws from, read through the front end's own API (not the pack's):
    its widgets, the chain of nodes feeding its image input with their widgets, and the server's status."""
    return page.evaluate("""(type) => {
        const primitive = (n, name) => {  // a widget input linked to a primitive node runs with its value
          const slot = n.inputs?.findIndex(i => i.name === name && i.widget) ?? -1;
          const up = slot >= 0 && n.isInputConnected(slot) ? n.getInputNode(slot) : null;
          return up && /^Primitive/.test(up.type) ? up.widgets[0].value : undefined; };
        const widgets = (n) => Object.fromEntries((n.widgets ?? []).filter(w => w.name !== 'wanx_info')
          .map(w => [w.name, primitive(n, w.name) ?? w.value]));
        const node = app.graph.nodes.find(n => n.type === type);
        const chain = [];
        let current = node, input = 'image';
        while (current && input && chain.length < 16) {
          const slot = current.inputs.findIndex(i => i.name === input);
          if (slot < 0 || !current.isInputConnected(slot)) break;
          const up = current.getInputNode(slot);
          chain.push({ type: up.type, slot: current.getInputLink(slot).origin_slot, values: widgets(up) });
          input = up.type.startsWith('WanxImageEdit_') || up.type === 'RepeatImageBatch' ? 'image'
            : up.type === 'ImageBatch' ? 'image1' : null;
          current = up;
        }
        return { type, values: widgets(node), chain }; }""", node_type)


def _status(host: ComfyHost) -> dict[str, Any]:
    return requests.get(host.url + "/wanx_imageedit/status", timeout=10).json()


def _fill(key: str, **values: object) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: str(values.get(m.group(1), m.group(0))), MESSAGES[key])


def _money(currency: str, amount: float) -> str:
    if currency == "CNY":
        return f"CNY {amount:.2f}"
    text = f"{amount:.6f}".rstrip("0").rstrip(".")
    return f"{currency} {text if '.' in text else text + '.00'}"


def _image_size(host: ComfyHost, filename: str) -> ImageSize:
    from PIL import Image

    with Image.open(host.input_dir / filename) as image:
        return ImageSize(*image.size)


def _source(host: ComfyHost, chain: list[dict[str, Any]]) -> tuple[int | None, ImageSize | None]:
    """(batch size, image size) of what reaches the first node of `chain`, by the Python core."""
    if not chain:
        return None, None
    up, rest = chain[0], chain[1:]
    if up["type"] == "LoadImage":
        return 1, _image_size(host, up["values"]["image"])
    if up["type"] == "RepeatImageBatch":
        batch, size = _source(host, rest)
        return (None if batch is None else batch * int(up["values"]["amount"])), size
    if up["type"] in FN and up["slot"] == 0:
        batch, size = _source(host, rest)
        fn = FN[up["type"]]
        sent = None
        if size is not None:
            try:
                sent = plan_fit(size)
            except InputError:
                sent = None
        return (None if batch is None else batch * int(up["values"]["n"])), (
            output_size(fn, sent, up["values"]) if sent is not None else None)
    return None, None


def _expected(host: ComfyHost, reading: dict[str, Any], *, session: str | None = None) -> dict[str, Any]:
    """The lines and badge the panel must show, computed from `reading` with the Python core."""
    status = _status(host)
    fn = FN[reading["type"]]
    values = reading["values"]
    currency = status["currency"]
    unit = PRICE_PER_IMAGE[currency]
    n = int(values["n"])
    batch, size = _source(host, reading["chain"])
    lines = []
    if batch is None:
        badge = _fill("cost_badge_unknown", amount=_money(currency, n * unit))
        lines.append(_fill("cost_line_unknown", n=n, unit=_money(currency, unit)))
    else:
        badge = _money(currency, n * batch * unit)
        lines.append(_fill("cost_line", n=n, batch=batch, unit=_money(currency, unit), total=badge))
    if not status["base_url_is_default"]:
        lines.append("→ " + re.sub(r"^\w+://([^/]+).*$", r"\1", status["base_url"]))
    preview = None
    if size is None:
        lines.append(_fill("input_unknown"))
        if fn.output_rule is OutputRule.EXPAND:
            canvas = output_size(fn, ImageSize(1000, 1000), values)
            lines.append(_fill("output_relative", fw=f"{canvas.width / 1000:.2f}", fh=f"{canvas.height / 1000:.2f}"))
        elif fn.output_rule is OutputRule.UPSCALE:
            factor = int(values["upscale_factor"])
            lines.append(_fill("output_relative", fw=factor, fh=factor))
    else:
        text = _fill("input_size", w=size.width, h=size.height)
        try:
            sent = plan_fit(size)
        except InputError:
            lines.append(f"{text}: {_fill('cannot_fit')}")
        else:
            if sent != size:
                text += " " + _fill("resized", w=sent.width, h=sent.height, min=MIN_SIDE_PX, max=MAX_SIDE_PX)
            lines.append(text)
            out = output_size(fn, sent, values)
            line = _fill("output_size", w=out.width, h=out.height)
            if fn.output_rule is OutputRule.EXPAND:
                # The original's corner on the canvas: half the growth on the left and top (JS Math.round).
                x = math.floor(sent.width * (float(values["left_scale"]) - 1) / 2 + 0.5)
                y = math.floor(sent.height * (float(values["top_scale"]) - 1) / 2 + 0.5)
                preview = {"canvas": (out.width, out.height), "original": (x, y, sent.width, sent.height)}
                line += ", " + _fill("original_at", x=x, y=y)
            lines.append(line)
            if fn.output_rule is not OutputRule.SAME and max(out.width, out.height) > MAX_SIDE_PX:
                lines.append(_fill("over_limit", max=MAX_SIDE_PX))
    if session:
        lines.append(session)
    return {"lines": lines, "badge": badge, "preview": preview}


def _node_clip(page: Page, node_type: str) -> dict[str, float]:
    """The node on screen (with its title badge), in page pixels."""
    box = page.evaluate("""(type) => { const n = app.graph.nodes.find(n => n.type === type);
        const el = document.querySelector(`[data-node-id="${n.id}"]`);
        if (window.wanxImageEdit.vueMode() && el) { const r = el.getBoundingClientRect();
          return [r.left, r.top - 4, r.width, r.height + 8]; }
        const [x, y, w, h] = n.getBounding();
        const [ox, oy] = app.canvas.ds.convertOffsetToCanvas([x, y - 30]);  // graph to screen, despite the name
        const r = app.canvas.canvas.getBoundingClientRect(); const s = app.canvas.ds.scale;
        return [r.left + ox, r.top + oy, w * s, (h + 30) * s]; }""", node_type)
    left, top = max(0.0, box[0]), max(0.0, box[1])
    return {"x": left, "y": top, "width": min(box[2], 1400 - left), "height": min(box[3], 900 - top)}


def _assert_current(page: Page, host: ComfyHost, node_type: str, name: str, *,
                    session: str | None = None) -> dict[str, Any]:
    """The panel shows what the values it draws from say, and a forced redraw changes no pixel."""
    page.evaluate("() => document.activeElement?.blur?.()")  # no caret blinking in a widget
    page.mouse.move(300, 880)  # no hover effects or tooltips over the node...
    page.wait_for_timeout(700)  # ...and the front end's own fade-outs (slot dots, outlines) are over
    _settle(page)
    expected = _expected(host, _reading(page, node_type), session=session)
    shown = _panel(page, node_type)
    assert shown["connected"] and shown["visible"] and shown["cut"] == [], shown
    assert shown["lines"] == expected["lines"], (name, shown, expected)
    frontend: FrontEnd = page.wanx_frontend  # type: ignore[attr-defined]
    if page.evaluate("() => window.wanxImageEdit.vueMode()"):  # Nodes 2.0 reads node.badges once: on the panel
        assert shown["chip"] == expected["badge"] and shown["titleBadges"] == [], shown
    else:
        assert shown["titleBadges"] == [expected["badge"]] and shown["chip"] is None, shown
    if expected["preview"]:
        (cw, ch), (x, y, w, h) = expected["preview"]["canvas"], expected["preview"]["original"]
        assert shown["rects"] == [{"x": 0, "y": 0, "width": cw, "height": ch},
                                  {"x": x, "y": y, "width": w, "height": h}], shown
        assert shown["labels"] == [f"{w}×{h}", f"{cw}×{ch}"]
    clip = _node_clip(page, node_type)
    before = _shot(page, name, clip)
    page.evaluate("""() => { window.wanxImageEdit.refresh(true);
        for (const n of app.graph.nodes) for (const w of n.widgets ?? []) w.triggerDraw?.();
        app.canvas.setDirty(true, true); app.canvas.draw?.(true, true); }""")
    _settle(page)
    page.wait_for_timeout(100)
    after = page.screenshot(clip=clip)
    change = _largest_change(before, after)
    if change > 8:
        (ARTIFACTS / f"{frontend.name}_{name}_redrawn.png").write_bytes(after)
    # Two paints of the same thing may differ by a level or two of anti-aliasing; a stale text or
    # diagram differs by far more (text on the panel's background: over 100 levels).
    assert change <= 8, f"{name}: the node looks different once redrawn (by {change}/255), so it showed something stale"
    return shown


def _largest_change(before: bytes, after: bytes) -> int:
    """The largest difference of any channel of any pixel between two screenshots (0-255)."""
    import io

    from PIL import Image, ImageChops

    with Image.open(io.BytesIO(before)) as a, Image.open(io.BytesIO(after)) as b:
        if a.size != b.size:
            return 255
        return max(high for _, high in ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getextrema())


def _wait_lines(page: Page, node_type: str, predicate: str) -> None:
    """Wait until the panel's lines (`lines`, a list of strings) satisfy a JavaScript predicate."""
    page.wait_for_function(f"""() => {{ const n = app.graph.nodes.find(n => n.type === {json.dumps(node_type)});
        const panel = n?.widgets?.find(w => w.name === 'wanx_info')?.element;
        const lines = [...(panel?.querySelectorAll('.wanx-line') ?? [])].map(e => e.textContent);
        return {predicate}; }}""", timeout=15_000)


# --- changing values as a user does ----------------------------------------------------------------------


def _step_up(page: Page, node_type: str, widget: str, times: int = 1) -> None:
    """Press a number widget's increment control `times` times with the mouse."""
    frontend: FrontEnd = page.wanx_frontend  # type: ignore[attr-defined]
    node_id = _node_id(page, node_type)
    for _ in range(times):
        if frontend.nodes2:
            page.locator(f'[data-node-id="{node_id}"] [data-widget-name="{widget}"] button').last.click()
        else:
            # The canvas draws the widget: click its right arrow (LiteGraph: within 40 px of the right edge).
            x, y = page.evaluate("""([id, name]) => { const n = app.graph.getNodeById(id);
                const w = n.widgets.find(w => w.name === name);
                const [ox, oy] = app.canvas.ds.convertOffsetToCanvas(
                  [n.pos[0] + n.size[0] - 22, n.pos[1] + w.y + LiteGraph.NODE_WIDGET_HEIGHT / 2]);
                const r = app.canvas.canvas.getBoundingClientRect(); return [r.left + ox, r.top + oy]; }""",
                                 [node_id, widget])
            page.mouse.click(x, y)
        page.wait_for_timeout(120)


def _pick_image(page: Page, filename: str) -> None:
    """Point Load Image at another file (as its combo does: set the value, run its callback)."""
    page.evaluate("""(name) => { const l = app.graph.nodes.find(n => n.type === 'LoadImage');
        const w = l.widgets.find(w => w.name === 'image'); w.value = name; w.callback?.(w.value); }""", filename)


# --- console ---------------------------------------------------------------------------------------------


def _pack_messages(page: Page) -> list[dict[str, str]]:
    records = page.evaluate("() => window.__wanxConsole ?? []")
    return [r for r in records if PACK_FILES in r["stack"] or PACK_FILES in r["text"] or "wanx_imageedit:" in r["text"]]


def _assert_quiet(page: Page, *, allow_failures: tuple[str, ...] = ()) -> None:
    assert _pack_messages(page) == []
    failures = [f for f in page.wanx_failures if not any(a in f for a in allow_failures)]  # type: ignore[attr-defined]
    assert failures == [], failures


# --- the tests -------------------------------------------------------------------------------------------

MISSING = """() => !!document.querySelector('.comfy-missing-nodes')
    || [...document.querySelectorAll('[data-testid=error-overlay]')].some(e => /missing node/i.test(e.textContent))"""


def test_every_example_workflow_loads_without_a_missing_node_warning(page: Page, host: ComfyHost) -> None:
    assert page.evaluate("() => app.extensionManager.setting.get('Comfy.Workflow.ShowMissingNodesWarning')") is True
    # Positive control: a workflow with an unknown node does raise the warning this test looks for.
    bogus = {"last_node_id": 1, "last_link_id": 0, "links": [], "groups": [], "config": {}, "extra": {},
             "version": 0.4, "nodes": [{"id": 1, "type": "NoSuchNode_Wanx", "pos": [0, 0], "size": [200, 100],
                                        "flags": {}, "order": 0, "mode": 0, "properties": {}}]}
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", bogus)
    page.wait_for_function(MISSING, timeout=10_000)
    page.keyboard.press("Escape")
    files = sorted(WORKFLOWS.glob("*.json"))
    assert len(files) >= len(FUNCTIONS)
    assert _status(host)["base_url_is_default"] is True  # nothing configured yet: no endpoint line below
    for path in files:
        _load(page, path)
        page.wait_for_function(f"() => !({MISSING[6:]})", timeout=10_000)
        unknown = page.evaluate("() => app.graph.nodes.filter(n => !LiteGraph.registered_node_types[n.type])"
                                ".map(n => n.type)")
        assert unknown == [], (path.name, unknown)
        ours = page.evaluate("() => app.graph.nodes.filter(n => n.type.startsWith('WanxImageEdit_'))"
                             ".filter(n => n.type !== 'WanxImageEdit_FetchTask').map(n => n.type)")
        assert ours, path.name
        for node_type in ours:  # every edit node has its panel, with no endpoint line for the default
            shown = _panel(page, node_type)
            assert shown["connected"] and shown["lines"][0].startswith("Cost "), (path.name, node_type, shown)
            assert not any(line.startswith("→") for line in shown["lines"]), shown
        page.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
        page.wait_for_timeout(150)
        _shot(page, f"workflow_{path.stem}")
    _assert_quiet(page)


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
    looks = _settings_look(page)
    field.fill(SECRET)
    page.locator("[data-wanx=save]").click()
    page.wait_for_function("() => document.querySelector('[data-wanx=status]')?.textContent.includes('…')")
    typed = field.input_value()
    page.locator("[data-wanx=test]").click()
    page.wait_for_function("() => document.querySelector('[data-wanx=result]')?.dataset.ok !== undefined")
    result = {"status": page.locator("[data-wanx=status]").inner_text(),
              "test": page.locator("[data-wanx=result]").inner_text(),
              "ok": page.locator("[data-wanx=result]").get_attribute("data-ok"), "typed": typed, "looks": looks}
    _shot(page, "settings_key_saved_and_tested")
    page.keyboard.press("Escape")
    page.wait_for_timeout(200)
    return result


def _settings_look(page: Page) -> dict[str, Any]:
    """Computed styles of our key field and buttons, and of the dialog's own text field (Custom base URL)."""
    return page.evaluate("""() => {
        const keys = ['backgroundColor', 'color', 'borderTopWidth', 'borderTopColor', 'borderRadius', 'fontSize',
                      'fontFamily', 'height', 'paddingLeft', 'paddingTop'];
        const style = (e) => { const s = getComputedStyle(e);
          const height = String(e.getBoundingClientRect().height);
          return Object.fromEntries(keys.map(k => [k, k === 'height' ? height : s[k]])); };
        const ours = document.querySelector('[data-wanx=key-input]');
        const row = document.getElementById('WanxImageEdit.CustomBaseUrl');  // the front end's own field
        const native = row?.tagName === 'INPUT' ? row : row?.querySelector('input');
        const buttons = ['save', 'remove', 'test'].map(r => style(document.querySelector(`[data-wanx=${r}]`)));
        const classes = [ours, ...document.querySelectorAll('[data-wanx=settings] button')]
          .map(e => e.className).join(' ');
        return { ours: style(ours), native: native ? style(native) : null, buttons, classes,
                 dialogFont: getComputedStyle(ours.closest('[role=dialog]') ?? document.body).fontFamily }; }""")


def test_the_settings_panel_stores_the_key_on_the_server_only(key_entered: dict, host: ComfyHost,
                                                              emulator: Emulator, page: Page) -> None:
    assert key_entered["ok"] == "true", key_entered
    assert key_entered["typed"] == ""  # the page forgets the key as soon as it is sent
    assert "works for wanx2.1-imageedit" in key_entered["test"]
    assert f"ending …{SECRET[-4:]}" in key_entered["status"] and "Key stored by these settings" in key_entered["status"]
    assert SECRET not in json.dumps(key_entered)
    key_files = [p for p in (host.workdir / "user" / "wanx_imageedit").iterdir() if SECRET.encode() in p.read_bytes()]
    assert len(key_files) == 1 and stat.S_IMODE(key_files[0].stat().st_mode) == 0o600, key_files
    status = _status(host)
    assert (status["key_source"], status["base_url"], status["base_url_is_default"]) == (
        "settings", emulator.base_url, False)
    comfy_settings = json.loads((host.workdir / "user" / "default" / "comfy.settings.json").read_text())
    assert comfy_settings["WanxImageEdit.Endpoint"] == "custom"  # ordinary settings land in ComfyUI's store...
    assert comfy_settings.get("WanxImageEdit.ApiKey", "") == ""  # ...the key never does
    assert SECRET not in json.dumps(comfy_settings)
    # It looks like the dialog's own controls: the same colours, border, corners, font and height as
    # the front end's text field for "Custom base URL", and no class names of PrimeVue.
    looks = key_entered["looks"]
    assert looks["native"] is not None, looks

    def same(style: dict[str, str]) -> dict[str, str]:  # a colour of no border does not show
        hidden = style["borderTopWidth"] == "0px"
        return {k: v for k, v in style.items() if k != "height" and not (hidden and k == "borderTopColor")}

    assert same(looks["ours"]) == same(looks["native"]), looks
    assert abs(float(looks["ours"]["height"]) - float(looks["native"]["height"])) <= 1, looks
    for button in looks["buttons"]:
        assert abs(float(button["height"]) - float(looks["native"]["height"])) <= 1, looks
        assert (button["borderRadius"], button["fontFamily"]) == (looks["native"]["borderRadius"],
                                                                  looks["native"]["fontFamily"]), looks
        assert button["backgroundColor"] not in ("rgb(239, 239, 239)", "rgba(0, 0, 0, 0)"), looks  # not the UA's
    assert "p-button" not in looks["classes"] and "p-inputtext" not in looks["classes"]
    _assert_quiet(page)


def test_the_expand_panel_is_current_after_load_and_widget_changes(page: Page, host: ComfyHost,
                                                                   key_entered: dict, emulator: Emulator) -> None:
    assert key_entered["ok"] == "true"
    _load(page, WORKFLOWS / "wanx_expand.json")
    _focus(page, "WanxImageEdit_Expand")
    _wait_lines(page, "WanxImageEdit_Expand", "lines.includes('Input 768×768')")
    loaded = _assert_current(page, host, "WanxImageEdit_Expand", "expand_after_load")
    host_port = emulator.base_url.split("://", 1)[1].split("/", 1)[0]
    assert loaded["lines"][:3] == ["Cost 1 × 1 × CNY 0.14 = CNY 0.14", f"→ {host_port}", "Input 768×768"]
    assert "Output 1152×960, original at x 192, y 96" in loaded["lines"]
    # Positive control for the pixel check: a change the panel is not told about leaves it stale, and
    # the forced redraw shows it.
    clip = _node_clip(page, "WanxImageEdit_Expand")
    page.evaluate("() => { window.wanxImageEdit.state.status.currency = 'USD'; }")  # no event: stale
    stale = page.screenshot(clip=clip)
    page.evaluate("() => window.wanxImageEdit.refresh(true)")
    _settle(page)
    assert _largest_change(stale, page.screenshot(clip=clip)) > 100
    page.evaluate("async () => { await window.wanxImageEdit.refreshStatus(); }")  # the server's CNY again
    _wait_lines(page, "WanxImageEdit_Expand", "lines[0].includes('CNY')")
    # With the mouse, on the node: n up by 2, left_scale up by 3 steps.
    _step_up(page, "WanxImageEdit_Expand", "n", 2)
    _step_up(page, "WanxImageEdit_Expand", "left_scale", 3)
    values = _reading(page, "WanxImageEdit_Expand")["values"]
    assert values["n"] == 3 and values["left_scale"] > 1.5, values
    changed = _assert_current(page, host, "WanxImageEdit_Expand", "expand_after_widget_change")
    assert changed["lines"][0] == "Cost 3 × 1 × CNY 0.14 = CNY 0.42"
    # From a linked input: n fed by a primitive node, changed on that node with the mouse.
    page.evaluate("""() => { const n = app.graph.nodes.find(n => n.type === 'WanxImageEdit_Expand');
        const prim = LiteGraph.createNode('PrimitiveInt'); prim.pos = [n.pos[0] - 260, n.pos[1] + 40];
        app.graph.add(prim); prim.widgets[0].value = 1;
        prim.connect(0, n, n.inputs.findIndex(i => i.name === 'n')); }""")
    _focus(page, "WanxImageEdit_Expand")
    _wait_lines(page, "WanxImageEdit_Expand", "lines[0] === 'Cost 1 × 1 × CNY 0.14 = CNY 0.14'")  # the link now
    _step_up(page, "PrimitiveInt", "value", 3)
    assert _reading(page, "WanxImageEdit_Expand")["values"]["n"] == 4
    linked = _assert_current(page, host, "WanxImageEdit_Expand", "expand_after_linked_input_change")
    assert linked["lines"][0] == "Cost 4 × 1 × CNY 0.14 = CNY 0.56"
    # The currency setting: the badge and the cost line follow.
    page.evaluate("async () => { await app.extensionManager.setting.set('WanxImageEdit.Currency', 'USD'); }")
    _wait_lines(page, "WanxImageEdit_Expand", "lines[0].includes('USD')")
    usd = _assert_current(page, host, "WanxImageEdit_Expand", "expand_in_usd")
    assert "USD 0.08028" in (usd["chip"] or usd["titleBadges"][0])  # 4 images at USD 0.02007
    page.evaluate("async () => { await app.extensionManager.setting.set('WanxImageEdit.Currency', 'CNY'); }")
    _wait_lines(page, "WanxImageEdit_Expand", "lines[0].includes('CNY')")
    _assert_quiet(page)


def test_the_batch_follows_a_linked_input_and_unknown_batches_say_so(page: Page, host: ComfyHost) -> None:
    _load(page, WORKFLOWS / "wanx_chain_batch_colorize_blend.json")
    _focus(page, "RepeatImageBatch")
    _wait_lines(page, "WanxImageEdit_Colorize", "lines[0] === 'Cost 1 × 3 × CNY 0.14 = CNY 0.42'")
    _assert_current(page, host, "WanxImageEdit_Colorize", "batch_after_load")
    _step_up(page, "RepeatImageBatch", "amount", 2)  # upstream, through the link into the edit node
    assert _reading(page, "WanxImageEdit_Colorize")["chain"][0]["values"]["amount"] == 5
    shown = _assert_current(page, host, "WanxImageEdit_Colorize", "batch_after_upstream_change")
    assert shown["lines"][0] == "Cost 1 × 5 × CNY 0.14 = CNY 0.70"
    # An upstream node whose batch is unknown before running: the badge says so.
    page.evaluate("""() => { const c = app.graph.nodes.find(n => n.type === 'WanxImageEdit_Colorize');
        const r = app.graph.nodes.find(n => n.type === 'RepeatImageBatch');
        const scale = LiteGraph.createNode('ImageScale'); scale.pos = [r.pos[0], r.pos[1] + 420]; app.graph.add(scale);
        r.connect(0, scale, 0); scale.connect(0, c, 0); }""")
    _focus(page, "WanxImageEdit_Colorize")
    unknown = _assert_current(page, host, "WanxImageEdit_Colorize", "batch_unknown")
    assert "batch size unknown" in unknown["lines"][0]
    _assert_quiet(page)


def test_resized_inputs_and_the_output_limit_are_shown_before_running(page: Page, host: ComfyHost) -> None:
    _load(page, WORKFLOWS / "wanx_superresolution.json")
    _focus(page, "WanxImageEdit_SuperResolution")
    _pick_image(page, "wanx_wide_5000x1000.png")
    _wait_lines(page, "WanxImageEdit_SuperResolution", "lines.some(l => l.startsWith('Input 5000×1000'))")
    wide = _assert_current(page, host, "WanxImageEdit_SuperResolution", "superresolution_resized_and_over_limit")
    assert "Input 5000×1000 will be resized to 4096×819 (512–4096 px)" in wide["lines"]
    assert "Output 8192×1638" in wide["lines"]
    assert any(line.startswith("Above 4096 px per side") for line in wide["lines"])
    _load(page, WORKFLOWS / "wanx_expand.json")
    _focus(page, "WanxImageEdit_Expand")
    _pick_image(page, "wanx_small_300x200.png")
    _wait_lines(page, "WanxImageEdit_Expand", "lines.some(l => l.startsWith('Input 300×200'))")
    small = _assert_current(page, host, "WanxImageEdit_Expand", "expand_small_input")
    assert "Input 300×200 will be resized to 768×512 (512–4096 px)" in small["lines"]
    _assert_quiet(page)


def test_switching_nodes_2_0_on_or_off_keeps_the_panel_current(page: Page, host: ComfyHost,
                                                               frontend: FrontEnd) -> None:
    if frontend.root is None:
        pytest.skip("Nodes 2.0 is checked with the newer front end (1.27 ships it as an early preview)")
    _load(page, WORKFLOWS / "wanx_expand.json")
    _focus(page, "WanxImageEdit_Expand")
    _wait_lines(page, "WanxImageEdit_Expand", "lines.includes('Input 768×768')")
    try:
        for enabled in (not frontend.nodes2, frontend.nodes2):
            page.evaluate("async (on) => { await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', on); }",
                          enabled)
            page.wait_for_function("(on) => window.wanxImageEdit.vueMode() === on", arg=enabled)
            page.wait_for_timeout(500)  # the nodes are rebuilt in the other renderer
            _focus(page, "WanxImageEdit_Expand")
            _assert_current(page, host, "WanxImageEdit_Expand", f"expand_nodes2_{'on' if enabled else 'off'}")
    finally:
        page.evaluate("async (on) => { await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', on); }",
                      frontend.nodes2)
    _assert_quiet(page)


def _storage_dump(page: Page) -> str:
    return page.evaluate("""async () => {
        const out = {local: {...localStorage}, session: {...sessionStorage}, cookies: document.cookie, idb: {}};
        for (const info of (await indexedDB.databases?.()) ?? []) {
          const db = await new Promise((ok, fail) => {
            const r = indexedDB.open(info.name); r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); });
          for (const store of db.objectStoreNames) {
            out.idb[`${info.name}/${store}`] = await new Promise((ok) => {
              const r = db.transaction(store).objectStore(store).getAll(); r.onsuccess = () => ok(r.result);
              r.onerror = () => ok(String(r.error)); });
          }
          db.close();
        }
        return JSON.stringify(out, (k, v) => (v instanceof Blob ? `blob:${v.size}` : v));
    }""")


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


def _session_line(images: int) -> str:
    return _fill("session", total=_money("CNY", 0.14 * images), images=images)


def test_a_queued_run_bills_once_and_leaves_no_trace_of_the_key(page: Page, key_entered: dict, host: ComfyHost,
                                                                  emulator: Emulator,
                                                                  browser_profile: Path) -> None:
    assert key_entered["ok"] == "true"
    _load(page, WORKFLOWS / "wanx_colorize.json")
    _focus(page, "WanxImageEdit_Colorize")
    before_tasks = len(emulator.task_ids)
    before = page.evaluate("() => window.wanxImageEdit.sessionTotal()")
    page.evaluate("""() => { window.__wanxProgress = [];
        window.comfyAPI.api.api.addEventListener('wanx_imageedit.progress',
                                                 (e) => window.__wanxProgress.push(e.detail)); }""")
    _queue_and_wait(page)
    assert len(emulator.task_ids) == before_tasks + 1
    create = [r for r in emulator.requests if r.route == "create"][-1]
    assert create.auth_valid  # the node used the key typed into the settings panel
    events = page.evaluate("() => window.__wanxProgress")
    assert events and events[-1]["items"][-1]["state"] == "done" and events[-1]["finished"] == events[-1]["total"]
    images = before["images"] + 1
    total = page.evaluate("() => window.wanxImageEdit.sessionTotal()")
    assert (total["images"], total["estimated"], total["text"]) == (images, False, _money("CNY", 0.14 * images))
    _assert_current(page, host, "WanxImageEdit_Colorize", "colorize_after_run", session=_session_line(images))
    _queue_and_wait(page)  # unchanged: ComfyUI replays the cached report, which must not count again
    assert len(emulator.task_ids) == before_tasks + 1
    _assert_current(page, host, "WanxImageEdit_Colorize", "colorize_after_cached_rerun", session=_session_line(images))

    exported = page.evaluate("async () => JSON.stringify([app.graph.serialize(), (await app.graphToPrompt())])")
    assert "WanxImageEdit_Colorize" in exported and SECRET not in exported and "wanx_info" not in exported
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
    key_files = 0
    for root, _, names in os.walk(host.workdir, followlinks=False):
        for name in names:
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            if path.parent == host.workdir / "user" / "wanx_imageedit" and SECRET.encode() in path.read_bytes():
                key_files += 1  # the one place it belongs
                continue
            assert SECRET.encode() not in path.read_bytes(), path
    assert key_files == 1
    page.evaluate("() => localStorage.setItem('wanx-flush-probe', '1')")  # make the profile write its stores
    page.wait_for_timeout(500)
    for root, _, names in os.walk(browser_profile):
        for name in names:
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                assert SECRET.encode() not in data and SECRET.encode("utf-16-le") not in data, path
    _assert_quiet(page)


def test_runs_without_a_report_preview_are_counted_from_the_nodes_own_ui(page: Page, key_entered: dict,
                                                                         host: ComfyHost, emulator: Emulator) -> None:
    assert key_entered["ok"] == "true"
    _load(page, WORKFLOWS / "wanx_chain_inpaint_expand_upscale.json")  # no Preview Any on the reports
    _focus(page, "WanxImageEdit_Expand")
    before = page.evaluate("() => window.wanxImageEdit.sessionTotal()")
    tasks = len(emulator.task_ids)
    _queue_and_wait(page)
    sent = len(emulator.task_ids) - tasks  # the inpaint step may be served from the result cache
    assert sent in (2, 3)
    after = page.evaluate("() => window.wanxImageEdit.sessionTotal()")
    assert after["images"] == before["images"] + sent and after["estimated"] is False
    for node_type in ("WanxImageEdit_Inpaint", "WanxImageEdit_Expand", "WanxImageEdit_SuperResolution"):
        _focus(page, node_type)
        _assert_current(page, host, node_type, f"chain_after_run_{node_type}", session=_session_line(after["images"]))
    _assert_quiet(page)


def test_another_machine_sees_the_servers_refusal_in_plain_words(playwright: Playwright, host: ComfyHost,
                                                                 key_entered: dict, netns: tuple[str, str, str] | str,
                                                                 tmp_path: Path, frontend: FrontEnd) -> None:
    """A browser in another network namespace (another machine, as far as ComfyUI can tell) opens the
    same ComfyUI: it sees the status, but saving or removing the key, testing it and changing the
    endpoint are refused (403), and the panel and the toast show the server's own explanation."""
    if isinstance(netns, str):
        pytest.skip(netns)
    name, address, remote = netns
    before = _status(host)
    wrapper = tmp_path / "chromium-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {name} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    browser = playwright.chromium.launch(executable_path=str(wrapper), args=CHROMIUM_ARGS, headless=True)
    try:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = _open(context, f"http://{address}:{host.port}")
        page.wanx_frontend = frontend  # type: ignore[attr-defined]
        page.evaluate("() => app.extensionManager.command.execute('Comfy.ShowSettingsDialog')")
        page.get_by_text("Wanx Image Edit", exact=True).first.click()
        page.locator("[data-wanx=key-input]").fill("sk-from-another-machine-0000")
        refused = []
        for role in ("save", "test", "remove"):
            page.locator(f"[data-wanx={role}]").click()
            page.wait_for_function("() => document.querySelector('[data-wanx=result]')?.dataset.status === '403'")
            refused.append(page.locator("[data-wanx=result]").inner_text())
            page.evaluate("() => { delete document.querySelector('[data-wanx=result]').dataset.status; }")
        _shot(page, "settings_refused_for_another_machine")
        for text in refused:  # the server's words, as they are: who may change it, and the other ways
            assert text.startswith("Only this machine can change the DashScope key or endpoint"), text
            assert f"came from {remote}" in text and "WANX_ALLOW_REMOTE_SETTINGS=1" in text, text
        page.keyboard.press("Escape")
        page.locator("[data-wanx=key-input]").wait_for(state="detached")

        def change_currency(currency: str, failures: int) -> None:
            page.evaluate("async (c) => { await app.extensionManager.setting.set('WanxImageEdit.Currency', c); }",
                          currency)
            for _ in range(50):  # a chosen option is sent at once: wait for the server's refusal
                if len(page.wanx_failures) >= failures:  # type: ignore[attr-defined]
                    return
                page.wait_for_timeout(200)

        change_currency("USD", 4)
        page.get_by_text(re.compile("^Only this machine can change")).first.wait_for(timeout=15_000)  # the toast
        _shot(page, "settings_change_refused_toast")
        change_currency("CNY", 5)
        assert _pack_messages(page) == []
        assert all(f.startswith("403 ") and "/wanx_imageedit/" in f for f in page.wanx_failures), page.wanx_failures
        assert len(page.wanx_failures) == 5, page.wanx_failures  # key, test, key (DELETE), settings twice
        context.close()
    finally:
        browser.close()
    after = _status(host)
    assert (after["stored_key_hint"], after["base_url"], after["currency"]) == (
        before["stored_key_hint"], before["base_url"], before["currency"])


def test_the_help_page_opens_in_english_and_chinese(page: Page, host: ComfyHost) -> None:
    module = requests.get(host.url + "/object_info/WanxImageEdit_Expand", timeout=10).json()[
        "WanxImageEdit_Expand"]["python_module"]
    folder = module.split(".", 1)[1]
    for lang in docs.LANGS:
        text = page.evaluate("async (url) => (await fetch(url)).text()",
                             f"/extensions/{folder}/docs/WanxImageEdit_Expand/{lang}.md")
        assert text == (REPO_ROOT / "web/docs/WanxImageEdit_Expand" / f"{lang}.md").read_text(encoding="utf-8")
    _load(page, WORKFLOWS / "wanx_expand.json")
    expected = {"en": ("Prompt tips", "Wanx Expand (Outpaint)", "Cost 1 × 1 × CNY 0.14"),
                "zh": ("提示词技巧", "万相 扩图", "费用 1 × 1 × CNY 0.14")}
    content = page.locator(".markdown-content, .comfy-markdown-content")
    try:
        for lang in docs.LANGS:
            heading, title, cost = expected[lang]
            page.evaluate("async (l) => { await app.extensionManager.setting.set('Comfy.Locale', l); }", lang)
            _focus(page, "WanxImageEdit_Expand")
            _wait_lines(page, "WanxImageEdit_Expand", f"lines[0].startsWith({json.dumps(cost)})")  # the node too
            page.evaluate("() => { const n = app.graph.nodes.find(n => n.type === 'WanxImageEdit_Expand');"
                          " app.canvas.deselectAll?.(); app.canvas.selectNode(n); app.canvas.setDirty(true, true); }")
            page.locator("[data-testid=info-button]").first.click()
            help_text = content.filter(has_text=heading).first
            help_text.wait_for()
            text = help_text.inner_text()
            assert title in text and re.search(r"1152\s*x\s*960", text), text[:500]
            _shot(page, f"help_panel_{lang}")
            page.locator("[data-testid=info-button]").first.click()  # close it again
            page.wait_for_timeout(200)
    finally:
        page.evaluate("async () => { await app.extensionManager.setting.set('Comfy.Locale', 'en'); }")
    _assert_quiet(page)


URL_FIELD = '[id="WanxImageEdit.CustomBaseUrl"]'  # the front end's own text field: its id is the setting's


def test_a_url_is_sent_once_when_committed_and_a_pause_while_typing_keeps_the_key(
        page: Page, host: ComfyHost, key_entered: dict, emulator: Emulator) -> None:
    """The front end changes a text setting at every key, and half a URL (https://gate) is already an
    endpoint the server accepts, which would remove the stored key. Typed with a pause in the
    middle, a URL reaches the server once, whole, when it is committed: with Enter, then by leaving
    the field (Tab). Counted at the page's requests."""
    assert key_entered["ok"] == "true"
    assert _status(host)["stored_key_base_url"] == emulator.base_url
    posts: list[Any] = []

    def record(request: Any) -> None:
        if request.method == "POST" and request.url.endswith("/wanx_imageedit/settings"):
            posts.append(request.post_data_json)

    def wait_stored(url: str) -> None:
        page.wait_for_function("(url) => window.wanxImageEdit.state.status?.stored_base_url === url", arg=url)

    gateway = "https://gateway.example.com/api/v1"
    page.on("request", record)
    try:
        page.evaluate("() => app.extensionManager.command.execute('Comfy.ShowSettingsDialog')")
        page.get_by_text("Wanx Image Edit", exact=True).first.click()
        field = page.locator(f"input{URL_FIELD}, {URL_FIELD} input").first
        assert field.input_value() == emulator.base_url
        field.fill("")
        field.press_sequentially("https://gate", delay=60)
        page.wait_for_timeout(3000)  # a pause: well over the 1.2 s after which the panel used to send it
        status = _status(host)
        assert posts == [] and (status["stored_key"], status["stored_base_url"]) == (True, emulator.base_url)
        field.press_sequentially("way.example.com/api/v1", delay=40)
        field.press("Enter")
        wait_stored(gateway)
        result = page.locator("[data-wanx=result]")
        result.filter(has_text="The key saved in these settings was removed").wait_for()  # the rule, said
        status = _status(host)
        assert (status["stored_key"], status["base_url"]) == (False, gateway), status
        _shot(page, "settings_endpoint_committed_with_enter")
        # Leaving the field commits too; the way back to the emulator, typed with a pause again.
        field.fill("")
        field.press_sequentially("http://127.0.0.1", delay=60)  # a loopback endpoint of its own
        page.wait_for_timeout(3000)
        assert posts == [{"base_url": gateway}] and _status(host)["stored_base_url"] == gateway
        field.press_sequentially(emulator.base_url.removeprefix("http://127.0.0.1"), delay=40)
        field.press("Tab")
        wait_stored(emulator.base_url)
        page.locator("[data-wanx=key-input]").fill(SECRET)  # saved again, for the endpoint now in use
        page.locator("[data-wanx=save]").click()
        result.filter(has_text=f"goes only to {emulator.base_url}").wait_for()
        page.keyboard.press("Escape")  # closing the dialog commits nothing new
        page.locator("[data-wanx=key-input]").wait_for(state="detached")
        page.wait_for_timeout(1500)
    finally:
        page.remove_listener("request", record)
    assert posts == [{"base_url": gateway}, {"base_url": emulator.base_url}], posts
    status = _status(host)
    assert (status["key_source"], status["stored_key_base_url"], status["base_url"]) == (
        "settings", emulator.base_url, emulator.base_url), status
    assert requests.post(host.url + "/wanx_imageedit/test", json={}, timeout=30).json()["ok"] is True
    _assert_quiet(page)


def test_nothing_the_pack_does_logs_an_error_or_a_warning(page: Page) -> None:
    records = page.evaluate("() => window.__wanxConsole ?? []")
    assert isinstance(records, list)
    # Positive control: a deprecated call made from a pack file is caught by this check.
    control = page.evaluate(f"""async () => {{
        const path = {json.dumps(PACK_FILES + "lib/graph.js")}, api = window.comfyAPI.api.api;
        const url = new URL(api.fileURL?.(path) ?? path, location.href).href;
        const lib = await import(url);
        const node = app.graph.nodes.find(n => n.inputs?.some(i => i.name === 'image'));
        const saved = node.isInputConnected; node.isInputConnected = undefined;  // as on an old front end
        try {{ lib.inputOrigin(node, 'image'); }} finally {{ node.isInputConnected = saved; }}
        return url; }}""")
    frontend: FrontEnd = page.wanx_frontend  # type: ignore[attr-defined]
    caught = _pack_messages(page)
    if frontend.root is not None:  # 1.58 warns when input.link is read: the check sees it came from the pack
        assert control and any("input.link is deprecated" in r["text"] for r in caught), caught
        page.evaluate("(n) => { window.__wanxConsole.splice(n); }", len(records))
    assert _pack_messages(page) == []
