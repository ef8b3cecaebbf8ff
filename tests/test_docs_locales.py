"""Host-free checks of the front-end files: the help pages and locale files are exactly what
nodes/core/docs.py generates from the function table, say what a user needs (inputs, ranges,
tips, cost, an example, in English and Chinese), and the extension's JavaScript computes sizes
exactly like the Python core (run under Node with stand-ins for ComfyUI's app and api modules)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from wanx_imageedit.nodes.core import docs
from wanx_imageedit.nodes.core.errors import InputError
from wanx_imageedit.nodes.core.functions import (
    FUNCTIONS,
    MAX_SIDE_PX,
    MIN_SIDE_PX,
    PRICE_PER_IMAGE,
    ImageSize,
    OutputRule,
    node_inputs,
    output_size,
)
from wanx_imageedit.nodes.core.images import plan_fit
from wanx_imageedit.nodes.core.samples import EXAMPLES

REPO_ROOT = Path(__file__).resolve().parents[1]
WEB = REPO_ROOT / "web"
JS = WEB / "wanx_imageedit.js"
NODE = shutil.which("node")


def _load(relative: str) -> dict:
    return json.loads((REPO_ROOT / relative).read_text(encoding="utf-8"))


def test_generated_files_are_in_sync_with_the_table() -> None:
    stale = [path for path, text in docs.render_all().items()
             if not (REPO_ROOT / path).is_file() or (REPO_ROOT / path).read_text(encoding="utf-8") != text]
    assert stale == [], f"stale or missing: {stale}; run docs.write_all(repo_root)"


def test_the_web_dir_holds_only_the_extension_and_its_docs() -> None:
    # ComfyUI loads every .js under the web dir as an extension, so nothing else may be there.
    expected_docs = {f"docs/{fn.node_id}/{lang}.md" for fn in FUNCTIONS for lang in docs.LANGS}
    expected_docs |= {f"docs/{docs.FETCH_NODE_ID}/{lang}.md" for lang in docs.LANGS}
    files = {p.relative_to(WEB).as_posix() for p in WEB.rglob("*") if p.is_file()}
    assert files == expected_docs | {"wanx_imageedit.js"}


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda fn: fn.node_id)
def test_each_help_page_covers_inputs_tips_cost_and_an_example(fn) -> None:
    for lang in docs.LANGS:
        page = (WEB / "docs" / fn.node_id / f"{lang}.md").read_text(encoding="utf-8")
        assert page.startswith(f"# {docs.display_name(fn, lang)}\n")
        for spec in node_inputs(fn):
            row = next(line for line in page.splitlines() if line.startswith(f"- **`{spec.name}`"))
            assert (spec.help_en if lang == "en" else spec.help_zh) in row
            if spec.param is not None and spec.param.minimum is not None:
                assert f"{docs._num(spec.param.minimum)}–{docs._num(spec.param.maximum)}" in row
        assert fn.prompt_hint_en in page if lang == "en" else fn.prompt_hint_zh in page
        for tip in docs.GUIDE_TIPS[fn.api_name][0 if lang == "en" else 1]:
            assert tip in page
        assert "CNY 0.14" in page and "USD 0.02007" in page
        assert f"wanx_{fn.key.lower()}" in page  # the example workflow
        example = EXAMPLES[fn.api_name]
        if example.prompt:
            assert example.prompt in page
        heading = {"en": ("## Cost", "## Example", "## Prompt tips"), "zh": ("## 费用", "## 示例", "## 提示词技巧")}[lang]
        assert all(h in page for h in heading)
        if lang == "zh":
            assert fn.title_zh in page and fn.summary_zh in page
    if fn.output_rule is OutputRule.EXPAND:
        assert "x = 192, y = 96 inside the 1152x960 canvas" in (WEB / "docs" / fn.node_id / "en.md").read_text()


def test_locales_translate_every_node_input_output_and_setting() -> None:
    node_ids = [fn.node_id for fn in FUNCTIONS] + [docs.FETCH_NODE_ID]
    for lang in docs.LANGS:
        defs = _load(f"locales/{lang}/nodeDefs.json")
        assert list(defs) == node_ids
        for fn in FUNCTIONS:
            entry = defs[fn.node_id]
            assert entry["display_name"] == docs.display_name(fn, lang)
            assert list(entry["inputs"]) == [spec.name for spec in node_inputs(fn)]
            assert set(entry["outputs"]) == {"0", "1"}
        settings = _load(f"locales/{lang}/settings.json")
        assert set(settings) == {key.replace(".", "_") for key in docs.SETTINGS}
        main = _load(f"locales/{lang}/main.json")
        assert set(main["wanxImageEdit"]) == set(docs.MESSAGES)
        assert main["settingsCategories"]["Wanx Image Edit"]
    zh = _load("locales/zh/nodeDefs.json")
    for fn in FUNCTIONS:
        assert zh[fn.node_id]["display_name"] == f"万相 {fn.title_zh}"
        for name, entry in zh[fn.node_id]["inputs"].items():
            assert re.search(r"[\u4e00-\u9fff]", entry["name"] + entry["tooltip"]), (fn.node_id, name)
    assert _load("locales/en/nodeDefs.json")["WanxImageEdit_Expand"]["inputs"]["left_scale"]["tooltip"] == (
        next(s.help_en for s in node_inputs(FUNCTIONS[5]) if s.name == "left_scale"))


# --- the JavaScript, under Node -----------------------------------------------------------------------

HOOKS = """
export async function resolve(specifier, context, next) {
  if (specifier.endsWith("/scripts/app.js")) {
    return { url: "data:text/javascript," + encodeURIComponent(
      "export const app = { registerExtension(e) { globalThis.__registered = e; } };"), shortCircuit: true };
  }
  if (specifier.endsWith("/scripts/api.js")) {
    return { url: "data:text/javascript,export const api = {};", shortCircuit: true };
  }
  return next(specifier, context);
}
"""
REGISTER = 'import { register } from "node:module"; register("./hooks.mjs", import.meta.url);\n'
RUNNER = """
import { readFileSync } from "node:fs";
const js = await import(process.argv[2]);
const cases = JSON.parse(readFileSync(0, "utf-8"));
const out = {
  fit: cases.fit.map(([w, h]) => js.fitSize(w, h, cases.min, cases.max)),
  output: cases.output.map(([rule, w, h, values]) => js.outputSize(rule, {width: w, height: h}, values)),
  round: cases.round.map((x) => js.roundHalfEven(x)),
  money: cases.money.map(([c, a]) => js.formatMoney(c, a)),
  report: js.parseReport(cases.report),
  progress: js.parseProgress(cases.progress),
  settings: globalThis.__registered.settings.map((s) => ({id: s.id, name: s.name, tooltip: s.tooltip,
    options: (s.options ?? []).map((o) => o.text)})),
  name: globalThis.__registered.name,
};
process.stdout.write(JSON.stringify(out));
"""

SIZES = [
    (512, 512), (768, 768), (4096, 4096), (511, 700), (300, 200), (200, 300), (5000, 1000), (1000, 5000),
    (4097, 4096), (8000, 6000), (6000, 8000), (100, 100), (1, 1), (300, 2400), (4096, 512), (5000, 625),
    (5000, 624), (4100, 513), (333, 777), (513, 1), (640, 479), (1023, 511), (4099, 2049), (12345, 6789),
    (2, 3), (3, 2), (7, 5), (4095, 4097), (4097, 1000), (1025, 128), (5000, 400), (300, 4000), (100000, 20000),
]
SCALES = [1.0, 1.01, 1.25, 1.3, 1.33, 1.5, 1.55, 1.75, 1.99, 2.0]


def _expected_fit(width: int, height: int) -> dict | None:
    try:
        fitted = plan_fit(ImageSize(width, height))
    except InputError:
        return None
    return {"width": fitted.width, "height": fitted.height, "resized": fitted != (width, height)}


@pytest.fixture(scope="module")
def js_run(tmp_path_factory: pytest.TempPathFactory):
    if NODE is None:
        pytest.skip("node (Node.js) is not installed")
    folder = tmp_path_factory.mktemp("node")
    (folder / "hooks.mjs").write_text(HOOKS)
    (folder / "register.mjs").write_text(REGISTER)
    (folder / "runner.mjs").write_text(RUNNER)
    expand = next(fn for fn in FUNCTIONS if fn.output_rule is OutputRule.EXPAND)
    upscale = next(fn for fn in FUNCTIONS if fn.output_rule is OutputRule.UPSCALE)
    output_cases = []
    for width, height in [(512, 512), (768, 768), (1000, 563), (4096, 4096), (777, 513), (1023, 4095)]:
        for left, right, top, bottom in zip(SCALES, reversed(SCALES), SCALES[3:] + SCALES[:3], SCALES[5:] + SCALES[:5]):
            output_cases.append(("expand", width, height, {"left_scale": left, "right_scale": right,
                                                           "top_scale": top, "bottom_scale": bottom}))
        for factor in (1, 2, 3, 4):
            output_cases.append(("upscale", width, height, {"upscale_factor": factor}))
        output_cases.append(("same", width, height, {}))
    report = json.dumps({"model": "wanx2.1-imageedit", "usage": {"image_count": 2},
                         "cost": {"currency": "CNY", "unit_price": 0.14, "billed": 0.28},
                         "items": [{"task_id": "t-1", "image_count": 2}, {"task_id": "t-0", "image_count": 0,
                                                                          "cached": True}]})
    cases = {
        "min": MIN_SIDE_PX, "max": MAX_SIDE_PX, "fit": SIZES, "output": output_cases,
        "round": [0.5, 1.5, 2.5, -0.5, 2.4999, 2.5001, 767.5, 1152.0, 960.4999999999999],
        "money": [["CNY", 0.14], ["CNY", 0.84], ["USD", 0.02007], ["USD", 0.1204200000001], ["USD", 1.0]],
        "report": report, "progress": "2/2 done, 3 s\nimage 1: done (task t-1)\nimage 2: RUNNING (task t-2)\nimage 3: queued",
    }
    result = subprocess.run(
        [NODE, "--import", str(folder / "register.mjs"), str(folder / "runner.mjs"), JS.as_uri()],
        input=json.dumps(cases), capture_output=True, text=True, timeout=60, check=False, cwd=folder,
    )
    assert result.returncode == 0, result.stderr
    return cases, json.loads(result.stdout), {"expand": expand, "upscale": upscale}


def test_js_fit_rule_equals_plan_fit(js_run) -> None:
    cases, out, _ = js_run
    assert out["fit"] == [_expected_fit(w, h) for w, h in cases["fit"]]


def test_js_output_size_equals_output_size(js_run) -> None:
    cases, out, fns = js_run
    for (rule, width, height, values), got in zip(cases["output"], out["output"], strict=True):
        fn = fns.get(rule) or FUNCTIONS[0]
        want = output_size(fn, ImageSize(width, height), values)
        assert (got["width"], got["height"]) == tuple(want), (rule, width, height, values)


def test_js_rounding_money_report_and_progress(js_run) -> None:
    cases, out, _ = js_run
    assert out["round"] == [round(x) for x in cases["round"]]
    assert out["money"] == ["CNY 0.14", "CNY 0.84", "USD 0.02007", "USD 0.12042", "USD 1.00"]
    assert out["report"] == {"items": [{"taskId": "t-1", "imageCount": 2, "cached": False},
                                       {"taskId": "t-0", "imageCount": 0, "cached": True}],
                             "imageCount": 2, "currency": "CNY", "unitPrice": 0.14, "billed": 0.28}
    assert out["progress"] == [{"index": 1, "state": "done", "taskId": "t-1"},
                               {"index": 2, "state": "RUNNING", "taskId": "t-2"},
                               {"index": 3, "state": "queued", "taskId": None}]


def test_js_settings_match_the_english_locale(js_run) -> None:
    _, out, _ = js_run
    en = _load("locales/en/settings.json")
    assert [s["id"] for s in out["settings"]] == list(docs.SETTINGS)
    for entry in out["settings"]:
        locale = en[entry["id"].replace(".", "_")]
        assert (entry["name"], entry["tooltip"]) == (locale["name"], locale["tooltip"])
        assert set(entry["options"]) <= set(locale.get("options", {}))
    assert f"CNY {PRICE_PER_IMAGE['CNY']}" in en["WanxImageEdit_Currency"]["tooltip"]


def test_every_message_the_js_uses_exists_in_both_languages() -> None:
    source = JS.read_text(encoding="utf-8")
    used = set(re.findall(r"""msg\(\s*["'`]([a-z_]+)["'`]""", source))
    used |= {f"source_{kind}" for kind in ("environment", "key_file", "settings", "none")}  # msg(`source_${...}`)
    used |= {f"endpoint_source_{kind}" for kind in ("default", "settings", "environment")}
    assert used, "no msg() calls found"
    for lang in docs.LANGS:
        assert used <= set(_load(f"locales/{lang}/main.json")["wanxImageEdit"]), lang
    assert "localStorage" not in source and "sessionStorage" not in source and "indexedDB" not in source
