"""Host-free checks of the front-end files: the help pages and locale files are exactly what
nodes/authoring/docs.py generates from the function table, say what a user needs (inputs, ranges,
tips, cost, an example, in English and Chinese), a function's entry alone drives its texts, and the
extension's JavaScript computes sizes exactly like the Python core (its web/lib/ modules, run under
Node as they are: they import nothing of ComfyUI)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from wanx_imageedit.nodes.authoring import docs, samples, workflows
from wanx_imageedit.nodes.core import texts
from wanx_imageedit.nodes.core.errors import InputError
from wanx_imageedit.nodes.core.functions import (
    FUNCTIONS,
    MAX_SIDE_PX,
    MIN_SIDE_PX,
    PRICE_PER_IMAGE,
    STRENGTH,
    EditFunction,
    Example,
    ImageSize,
    OutputRule,
    build_parameters,
    build_prompt,
    node_inputs,
    output_size,
)
from wanx_imageedit.nodes.core.images import plan_fit
from wanx_imageedit.nodes.core.texts import Text

REPO_ROOT = Path(__file__).resolve().parents[1]
WEB = REPO_ROOT / "web"
JS = WEB / "wanx_imageedit.js"
LIB = WEB / "lib"
NODE = shutil.which("node")


def _load(relative: str) -> dict:
    return json.loads((REPO_ROOT / relative).read_text(encoding="utf-8"))


def test_generated_files_are_in_sync_with_the_table() -> None:
    stale = [path for path, text in docs.render_all().items()
             if not (REPO_ROOT / path).is_file() or (REPO_ROOT / path).read_text(encoding="utf-8") != text]
    assert stale == [], f"stale or missing: {stale}; run docs.write_all(repo_root)"


def test_the_web_dir_holds_only_the_extension_and_its_docs() -> None:
    # ComfyUI loads every .js under the web dir as an extension, so nothing else may be there.
    expected_docs = {f"docs/{fn.node_id}/{lang}.md" for fn in FUNCTIONS for lang in texts.LANGS}
    expected_docs |= {f"docs/{texts.FETCH_NODE_ID}/{lang}.md" for lang in texts.LANGS}
    files = {p.relative_to(WEB).as_posix() for p in WEB.rglob("*") if p.is_file()}
    assert expected_docs <= files
    scripts = files - expected_docs
    assert "wanx_imageedit.js" in scripts
    for name in sorted(scripts - {"wanx_imageedit.js"}):
        # web/lib/ modules are loaded as extensions too: they may only export, never import ComfyUI or register.
        assert re.fullmatch(r"lib/[a-z_]+\.js", name), name
        text = (WEB / name).read_text(encoding="utf-8")
        assert "scripts/app.js" not in text and "scripts/api.js" not in text and ".registerExtension(" not in text, name


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda fn: fn.node_id)
def test_each_help_page_covers_inputs_tips_cost_and_an_example(fn) -> None:
    for lang in texts.LANGS:
        page = (WEB / "docs" / fn.node_id / f"{lang}.md").read_text(encoding="utf-8")
        assert page.startswith(f"# {texts.edit_node(fn).display_name.get(lang)}\n")
        for spec in node_inputs(fn):
            row = next(line for line in page.splitlines() if line.startswith(f"- **`{spec.name}`"))
            assert (spec.help_en if lang == "en" else spec.help_zh) in row
            if spec.param is not None and spec.param.minimum is not None:
                assert f"{docs._num(spec.param.minimum)}–{docs._num(spec.param.maximum)}" in row
        assert fn.prompt_hint_en in page if lang == "en" else fn.prompt_hint_zh in page
        for tip in fn.tips:
            assert tip.get(lang) in page
        assert "CNY 0.14" in page and "USD 0.02007" in page
        assert f"wanx_{fn.key.lower()}" in page  # the example workflow
        example = fn.example
        if example.prompt:
            assert example.prompt in page
        heading = {"en": ("## Cost", "## Example", "## Prompt tips"),
                   "zh": ("## 费用", "## 示例", "## 提示词技巧")}[lang]
        assert all(h in page for h in heading)
        if lang == "zh":
            assert fn.title_zh in page and fn.summary_zh in page
    if fn.output_rule is OutputRule.EXPAND:
        assert "x = 192, y = 96 inside the 1152x960 canvas" in (WEB / "docs" / fn.node_id / "en.md").read_text()


def test_locales_translate_every_node_input_output_and_setting() -> None:
    node_ids = [fn.node_id for fn in FUNCTIONS] + [texts.FETCH_NODE_ID]
    for lang in texts.LANGS:
        defs = _load(f"locales/{lang}/nodeDefs.json")
        assert list(defs) == node_ids
        for fn in FUNCTIONS:
            entry = defs[fn.node_id]
            assert entry["display_name"] == texts.edit_node(fn).display_name.get(lang)
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



# --- a function's entry is all its texts need ----------------------------------------------------------

CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda fn: fn.node_id)
def test_each_entry_carries_its_tips_labels_and_a_valid_example(fn: EditFunction) -> None:
    assert fn.tips, "the vendor guide's advice for this function"
    for tip in fn.tips:
        assert tip.en.strip() and CJK.search(tip.zh), tip
    for spec in node_inputs(fn):
        assert CJK.search(spec.label_zh), (spec.name, spec.label_zh)
    example = fn.example
    assert example.scene in samples.SCENES
    width, height = samples.sample_image(example.scene).size
    assert MIN_SIDE_PX <= min(width, height) and max(width, height) <= MAX_SIDE_PX  # sent unresized
    assert (samples.sample_mask(example.scene) is not None) == fn.needs_mask
    wire = build_parameters(fn, example.values)
    assert {name: wire[name] for name in example.values} == dict(example.values)
    sent = build_prompt(fn, prompt=example.prompt, style=example.style)
    assert sent.strip()
    if fn.styles is not None:
        assert example.style in fn.styles.keys


def test_an_eleventh_function_needs_only_its_entry() -> None:
    # A new entry that no side table knows: its help pages, locale entries and workflow come out whole.
    new = EditFunction(
        "new_function", "NewFunction", "New Function", "新功能", "Does something new.", "做新的事。",
        "Describe it.", "描述它。", params=(dataclasses.replace(STRENGTH, label_zh="新幅度"),),
        tips=(Text("A tip only this entry has.", "只有这个条目的提示。"),),
        example=Example("line_art", "一只新的猫。", values={"strength": 0.25}),
    )
    en, zh = docs.help_markdown(new, "en"), docs.help_markdown(new, "zh")
    assert en.startswith("# Wanx New Function\n") and zh.startswith("# 万相 新功能\n")
    assert "- A tip only this entry has." in en and "- 只有这个条目的提示。" in zh
    assert "**`strength` 新幅度**" in zh and "**`prompt` 提示词**" in zh
    assert "`prompt` = '一只新的猫。', `strength` = `0.25`" in en and "768x768 sample" in en
    flow = workflows.single(new)
    edit_node = next(node for node in flow["nodes"] if node["type"] == "WanxImageEdit_NewFunction")
    assert edit_node["title"] == "Wanx New Function"
    assert edit_node["widgets_values"][:2] == ["一只新的猫。", 0.25]


def test_the_node_texts_are_one_type() -> None:
    node = texts.edit_node(FUNCTIONS[0])
    assert node.display_name == Text("Wanx Global Stylization", "万相 全局风格化")
    assert [port.name for port in node.outputs] == ["images", "report"] == [p.name for p in texts.FETCH_NODE.outputs]
    assert texts.CATEGORY == "image/Wanx 2.1 Edit"
    with pytest.raises(ValueError, match="no language 'fr'"):
        node.display_name.get("fr")


# --- the JavaScript, under Node -----------------------------------------------------------------------

RUNNER = """
import { readFileSync } from "node:fs";
const lib = process.argv[2];
const geometry = await import(`${lib}/geometry.js`);
const session = await import(`${lib}/session.js`);
const panel = await import(`${lib}/panel.js`);
const cases = JSON.parse(readFileSync(0, "utf-8"));
const out = {
  fit: cases.fit.map(([w, h]) => geometry.fitSize(w, h, cases.min, cases.max)),
  output: cases.output.map(([rule, w, h, values]) => geometry.outputSize(rule, {width: w, height: h}, values)),
  round: cases.round.map((x) => geometry.roundHalfEven(x)),
  money: cases.money.map(([c, a]) => session.formatMoney(c, a)),
  report: session.parseReport(cases.report),
  progress: session.parseProgress(cases.progress),
  settings: panel.SETTING_DEFS.map((s) => ({id: s.id, name: s.name, tooltip: s.tooltip,
    options: (s.options ?? []).map((o) => o.text)})),
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
    (folder / "runner.mjs").write_text(RUNNER)
    expand = next(fn for fn in FUNCTIONS if fn.output_rule is OutputRule.EXPAND)
    upscale = next(fn for fn in FUNCTIONS if fn.output_rule is OutputRule.UPSCALE)
    output_cases = []
    for width, height in [(512, 512), (768, 768), (1000, 563), (4096, 4096), (777, 513), (1023, 4095)]:
        for left, right, top, bottom in zip(SCALES, reversed(SCALES), SCALES[3:] + SCALES[:3], SCALES[5:] + SCALES[:5],
                                            strict=True):
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
        "report": report,
        # The payload of the websocket event wanx_imageedit.progress.
        "progress": {"node": 7, "finished": 1, "total": 3, "elapsed_s": 3.2, "n": 2,
                     "items": [{"state": "done", "task_id": "t-1"}, {"state": "RUNNING", "task_id": "t-2"},
                               {"state": "queued", "task_id": None}]},
    }
    result = subprocess.run(
        [NODE, str(folder / "runner.mjs"), LIB.as_uri()],
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
    assert out["progress"] == {"node": "7", "finished": 1, "total": 3, "elapsedS": 3.2, "n": 2,
                               "items": [{"state": "done", "taskId": "t-1"}, {"state": "RUNNING", "taskId": "t-2"},
                                         {"state": "queued", "taskId": None}]}


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
    source = "\n".join(path.read_text(encoding="utf-8") for path in [JS, *sorted(LIB.glob("*.js"))])
    used = set(re.findall(r"""msg\(\s*["'`]([a-z_]+)["'`]""", source))
    used |= {f"source_{kind}" for kind in ("environment", "key_file", "settings", "none")}  # msg(`source_${...}`)
    used |= {f"endpoint_source_{kind}" for kind in ("default", "settings", "environment")}
    assert used, "no msg() calls found"
    for lang in texts.LANGS:
        assert used <= set(_load(f"locales/{lang}/main.json")["wanxImageEdit"]), lang
    assert "localStorage" not in source and "sessionStorage" not in source and "indexedDB" not in source
