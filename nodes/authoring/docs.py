"""The node help pages (web/docs/<NodeId>/<lang>.md) and the interface translations
(locales/<lang>/{main,nodeDefs,settings}.json), generated from the function table so they never
drift from the nodes. ``write_all(repo_root)`` rewrites them; a test keeps the files in sync.

Host-free: no ComfyUI import. The node texts come from the table (functions.py: titles, tips,
labels, tooltips, the example) and core/texts.py (names, descriptions, outputs, the Fetch node),
which the node schema reads too; the host test compares the English locale with the real
/object_info. Only the pages' own prose and the front end's texts (settings, messages) are here."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from ..core import texts
from ..core.functions import (
    CUSTOM_STYLE,
    FUNCTIONS,
    MAX_SIDE_PX,
    MIN_SIDE_PX,
    MODEL,
    PRICE_PER_IMAGE,
    PROMPT_MAX_CHARS,
    EditFunction,
    ImageSize,
    Kind,
    NodeInput,
    OutputRule,
    build_prompt,
    node_inputs,
    output_size,
)
from ..core.texts import FETCH_NODE, FETCH_NODE_ID, LANGS, Port, Text
from .samples import sample_image

SETTINGS_CATEGORY = Text("Wanx Image Edit", "万相图像编辑")  # the settings panel's section (ids WanxImageEdit.*)
SETTINGS_SUBCATEGORY = "DashScope"


def _label(spec: NodeInput) -> Text:
    return Text(spec.name, spec.label_zh)


def _tooltip(spec: NodeInput) -> Text:
    return Text(spec.help_en, spec.help_zh)


# --- the extension's own texts (the settings panel, the node overlays) ------------------------------


class Setting(NamedTuple):
    name: Text
    tooltip: Text
    options: Mapping[str, str] = {}  # English label (the option's value) -> Chinese label


SETTINGS: Mapping[str, Setting] = {
    # The JS declares the same ids, with the English texts.
    "WanxImageEdit.ApiKey": Setting(
        Text("DashScope API key (China (Beijing))", "DashScope API 密钥（中国北京）"),
        Text("Stored on the ComfyUI server in its user directory (owner-only file), never in workflows, images or "
             "the browser, and sent only to the endpoint saved with it. DASHSCOPE_API_KEY in the environment wins "
             "over it.",
             "保存在 ComfyUI 服务器的用户目录中（仅所有者可读的文件），不会写入工作流、图片或浏览器，"
             "且只发送到与它一起保存的服务地址。环境变量 DASHSCOPE_API_KEY 优先于此处保存的密钥。"),
    ),
    "WanxImageEdit.Endpoint": Setting(
        Text("Endpoint", "服务地址"),
        Text("China (Beijing) is the only region with wanx2.1-imageedit. Choose a custom base URL for a gateway "
             "or the local emulator. Changing it removes a key saved here (save the key again); a key from the "
             "environment or a key file is never redirected. DASHSCOPE_HTTP_BASE_URL in the environment wins.",
             "wanx2.1-imageedit 仅在中国（北京）地域提供。使用网关或本地模拟器时选择自定义地址。"
             "更改后此处保存的密钥会被删除（请重新保存密钥）；来自环境变量或密钥文件的密钥不会被转发到新地址。"
             "环境变量 DASHSCOPE_HTTP_BASE_URL 优先。"),
        {"China (Beijing)": "中国（北京）", "Custom base URL": "自定义地址"},
    ),
    "WanxImageEdit.CustomBaseUrl": Setting(
        Text("Custom base URL", "自定义服务地址"),
        Text("Used when Endpoint is 'Custom base URL', e.g. https://gateway.example.com/api/v1; sent when you "
             "press Enter or leave the field. Plain http only to loopback; the international endpoint is refused.",
             "当服务地址为“自定义地址”时使用，例如 https://gateway.example.com/api/v1；按回车或离开输入框时提交。"
             "http 仅限本机地址；国际站地址会被拒绝。"),
    ),
    "WanxImageEdit.Currency": Setting(
        Text("Currency for cost estimates", "费用估算币种"),
        Text(f"CNY {PRICE_PER_IMAGE['CNY']} per image (China site) or USD {PRICE_PER_IMAGE['USD']:.6f} "
             "(international site). Only generated images are billed.",
             f"每张 CNY {PRICE_PER_IMAGE['CNY']}（中国站）或 USD {PRICE_PER_IMAGE['USD']:.6f}（国际站）。"
             "只有成功生成的图片计费。"),
        {"CNY": "人民币 CNY", "USD": "美元 USD"},
    ),
}

# The front end's messages (msg() in web/wanx_imageedit.js), by key.
MESSAGES: Mapping[str, Text] = {
    "cost_line": Text("Cost {n} × {batch} × {unit} = {total}", "费用 {n} × {batch} × {unit} = {total}"),
    "cost_line_unknown": Text("Cost {n} × batch × {unit} (batch size unknown)", "费用 {n} × 批量 × {unit}（批量未知）"),
    "cost_badge_unknown": Text("{amount} × batch", "{amount} × 批量"),
    "session": Text("Session: {total} billed ({images} images)", "本次会话已计费 {total}（{images} 张）"),
    "session_estimate": Text("Session: ≈{total} ({images} images, estimated)",
                             "本次会话约 {total}（{images} 张，估算）"),
    "input_unknown": Text("Input size unknown until it runs", "输入尺寸运行前未知"),
    "input_size": Text("Input {w}×{h}", "输入 {w}×{h}"),
    "resized": Text("will be resized to {w}×{h} ({min}–{max} px)", "将缩放为 {w}×{h}（{min}–{max} 像素）"),
    "cannot_fit": Text("Aspect ratio above 8:1: crop or pad it first", "宽高比超过 8:1：请先裁剪或填充"),
    "output_size": Text("Output {w}×{h}", "输出 {w}×{h}"),
    "output_relative": Text("Output {fw}× width, {fh}× height", "输出 宽 {fw} 倍，高 {fh} 倍"),
    "original_at": Text("original at x {x}, y {y}", "原图位于 x {x}，y {y}"),
    "over_limit": Text("Above {max} px per side: may be refused (limit undocumented)",
                   "超过每边 {max} 像素：可能被拒绝（官方未说明上限）"),
    "key_placeholder": Text("Paste a China (Beijing) DashScope key", "粘贴中国（北京）地域的 DashScope 密钥"),
    "key_save": Text("Save key", "保存密钥"),
    "key_remove": Text("Remove stored key", "删除已存密钥"),
    "key_test": Text("Test connection", "测试连接"),
    "key_testing": Text("Testing…", "测试中……"),
    "key_saved": Text("Key saved on the ComfyUI server.", "密钥已保存到 ComfyUI 服务器。"),
    "key_removed": Text("Stored key removed.", "已删除保存的密钥。"),
    "key_empty": Text("Paste a key first.", "请先粘贴密钥。"),
    "source_environment": Text("Key from the environment (DASHSCOPE_API_KEY)", "密钥来自环境变量（DASHSCOPE_API_KEY）"),
    "source_key_file": Text("Key from a key file ({detail})", "密钥来自密钥文件（{detail}）"),
    "source_settings": Text("Key stored by these settings", "密钥由此设置保存"),
    "source_none": Text("No key configured", "未配置密钥"),
    "key_hint": Text("ending …{last4}", "末尾 …{last4}"),
    "key_overridden": Text("A key is also stored here ({hint}), but the {source} wins.",
                       "此处也保存了密钥（{hint}），但{source}优先。"),
    "endpoint_line": Text("Endpoint {url} ({source})", "服务地址 {url}（{source}）"),
    "endpoint_source_default": Text("default", "默认"),
    "endpoint_source_settings": Text("from these settings", "来自此设置"),
    "endpoint_source_environment": Text("DASHSCOPE_HTTP_BASE_URL wins", "环境变量 DASHSCOPE_HTTP_BASE_URL 优先"),
    "lan_note": Text("Only this machine can change the key or the endpoint, and no one can read the key back.",
                 "只有本机可以更改密钥或服务地址，任何人都无法读回密钥。"),
    "request_failed": Text("Failed: {message}", "失败：{message}"),
}

# --- help pages --------------------------------------------------------------------------------------

_T = {
    "inputs": Text("Inputs", "输入"),
    "default": Text("default", "默认"),
    "outputs": Text("Outputs", "输出"),
    "size": Text("Output size", "输出尺寸"),
    "tips": Text("Prompt tips", "提示词技巧"),
    "cost": Text("Cost", "费用"),
    "example": Text("Example", "示例"),
    "limits": Text("Input limits", "输入限制"),
    "key": Text("Key and region", "密钥与地域"),
}


def _t(name: str, lang: str) -> str:
    return _T[name].get(lang)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _range(spec: NodeInput, lang: str) -> str:
    param = spec.param
    if spec.socket == "IMAGE":
        return f"{MIN_SIDE_PX}–{MAX_SIDE_PX} px"
    if spec.socket == "MASK":
        return "= image" if lang == "en" else "与图像同尺寸"
    if spec.socket == "COMBO":
        return ", ".join(f"`{o}`" for o in spec.options)
    if spec.socket == "STRING":
        return f"≤ {PROMPT_MAX_CHARS}" + (" characters" if lang == "en" else " 字符")
    if param is not None and param.kind is not Kind.BOOL:
        step = (f", step {_num(param.step)}" if lang == "en" else f"，步长 {_num(param.step)}") if param.step else ""
        return f"{_num(param.minimum or 0)}–{_num(param.maximum or 0)}{step}"
    return "true / false" if lang == "en" else "开 / 关"


def _default(fn: EditFunction, spec: NodeInput, lang: str) -> str:
    if spec.socket in ("IMAGE", "MASK"):
        return "—"
    if spec.socket == "STRING":
        if fn.prompt_required:
            return "required" if lang == "en" else "必填"
        return f"`{spec.default}`" if spec.default else ("empty" if lang == "en" else "为空")
    if isinstance(spec.default, bool):
        return "`true`" if spec.default else "`false`"
    return f"`{spec.default}`"


def _money(currency: str, amount: float) -> str:
    return f"{currency} {amount:.2f}" if currency == "CNY" else f"{currency} {amount:.6f}".rstrip("0")


def _example_size(fn: EditFunction) -> tuple[ImageSize, ImageSize, dict[str, object]]:
    example = fn.example
    width, height = sample_image(example.scene).size
    sent = ImageSize(width, height)  # the samples are inside 512-4096, so nothing is resized
    assert all(MIN_SIDE_PX <= side <= MAX_SIDE_PX for side in sent)
    return sent, output_size(fn, sent, example.values), dict(example.values)


def _size_rule(fn: EditFunction, lang: str) -> str:
    en = lang == "en"
    if fn.output_rule is OutputRule.UPSCALE:
        return ("The size that was sent × `upscale_factor` on each side. Above 4096 px per side the service may "
                "refuse it (the output limit is not documented); the node warns before it runs." if en else
                "发送尺寸的每条边 × `upscale_factor`。每边超过 4096 像素时服务可能拒绝（官方未说明输出上限），"
                "节点会在运行前提示。")
    if fn.output_rule is OutputRule.EXPAND:
        return ("New width = W·(left_scale + right_scale)/2 and new height = H·(top_scale + bottom_scale)/2, with the "
                "original placed W·(left_scale − 1)/2 px from the left and H·(top_scale − 1)/2 px from the top. "
                "The node draws this canvas before it runs." if en else
                "新宽度 = W·(left_scale + right_scale)/2，新高度 = H·(top_scale + bottom_scale)/2；原图距左边 "
                "W·(left_scale − 1)/2 像素、距上边 H·(top_scale − 1)/2 像素。节点在运行前画出这个画布。")
    return "The same size as the image that was sent." if en else "与发送的图片尺寸相同。"


def _has_cache(fn: EditFunction) -> bool:
    return any(spec.name == "use_cache" for spec in node_inputs(fn))


def _output_lines(ports: tuple[Port, ...], lang: str) -> list[str]:
    if lang == "en":
        return [f"- `{port.name}`: {port.tooltip.en}" for port in ports]
    return [f"- `{port.name}` {port.label_zh}：{port.tooltip.zh}" for port in ports]


_FETCH_COST = Text(
    "Free: it only reads a finished task and downloads its images. Task data and result URLs are kept for "
    "24 hours, and only keys of the same account (and region) can see a task.",
    "免费：只读取已完成的任务并下载图片。任务数据和结果链接保留 24 小时，"
    "且只有同一账号（同一地域）的密钥能看到该任务。",
)
_FETCH_EXAMPLE = Text(
    "A run was cancelled while a task was RUNNING (it is billed anyway): paste the task id from the node's "
    "message or from `wanx-imageedit tasks` into `task_id`, connect `images` to a Save Image, and queue.",
    "任务在 RUNNING 时取消了运行（仍会计费）：把节点提示或 `wanx-imageedit tasks` 中的任务 ID 填入 `task_id`，"
    "将 `images` 连接到保存图像节点后排队运行。",
)


def fetch_help_markdown(lang: str) -> str:
    """The help page of the task-recovery node."""
    lines = [f"# {FETCH_NODE.display_name.get(lang)}", "", FETCH_NODE.description.get(lang), ""]
    lines += [f"## {_t('inputs', lang)}", ""]
    lines += [f"- `{port.name}`: {port.tooltip.get(lang)}" for port in FETCH_NODE.inputs]
    lines += ["", f"## {_t('outputs', lang)}", "", *_output_lines(FETCH_NODE.outputs, lang)]
    lines += ["", f"## {_t('cost', lang)}", "", _FETCH_COST.get(lang)]
    lines += ["", f"## {_t('example', lang)}", "", _FETCH_EXAMPLE.get(lang)]
    return "\n".join(lines).rstrip() + "\n"


def help_markdown(fn: EditFunction, lang: str) -> str:
    """The help page of one node, in English (en) or Chinese (zh)."""
    en = lang == "en"
    node = texts.edit_node(fn)
    lines = [f"# {node.display_name.get(lang)}", "", node.description.get(lang), ""]
    lines += [f"**Model**: `{MODEL}`, function `{fn.api_name}` (China (Beijing) region only)." if en else
              f"**模型**：`{MODEL}`，功能 `{fn.api_name}`（仅中国北京地域）。", ""]
    lines += [f"## {_t('inputs', lang)}", ""]
    for spec in node_inputs(fn):
        label = f"**`{spec.name}`**" if en else f"**`{spec.name}` {spec.label_zh}**"
        default = _default(fn, spec, lang)
        facts = [spec.socket, _range(spec, lang),
                 default if default in ("required", "必填") else
                 f"{_t('default', lang)}{'' if default == '为空' else ' '}{default}"]
        if spec.socket in ("IMAGE", "MASK"):
            facts = facts[:2]
        tip = _tooltip(spec).get(lang)
        lines.append(f"- {label} ({'; '.join(facts)}): {tip}" if en else f"- {label}（{'；'.join(facts)}）：{tip}")
    lines += ["", f"## {_t('outputs', lang)}", "", *_output_lines(node.outputs, lang)]
    lines += ["", f"## {_t('size', lang)}", "", _size_rule(fn, lang), ""]
    lines += [f"## {_t('tips', lang)}", "", f"- {fn.prompt_hint_en if en else fn.prompt_hint_zh}"]
    lines += [f"- {tip.get(lang)}" for tip in fn.tips]
    lines += ["- " + (f"Chinese and English prompts both work; at most {PROMPT_MAX_CHARS} characters (longer prompts "
                      "are refused rather than silently cut)." if en else
                      f"中英文提示词均可；最多 {PROMPT_MAX_CHARS} 个字符（超出时拒绝发送，而不是被悄悄截断）。"), ""]
    cny, usd = PRICE_PER_IMAGE["CNY"], PRICE_PER_IMAGE["USD"]
    lines += [f"## {_t('cost', lang)}", ""]
    if en:
        lines += [(f"Every generated image is billed: {_money('CNY', cny)} (China site) or {_money('USD', usd)} "
                  "(international site); failed images and refused requests are free. The estimate is "
                  "`n` × images in the batch × unit price: `n` = 2 on a batch of 3 is 6 images, "
                  f"{_money('CNY', 6 * cny)}. The node shows it before you queue (currency in Settings → "
                  f"{SETTINGS_CATEGORY.en}), and the `report` output carries `usage.image_count` and the billed cost.")]
        if _has_cache(fn):
            lines += ["", ("With `use_cache` on (the default), an identical edit (same image, mask, prompt, parameters "
                      "and seed) is served from the stored result for free.")]
    else:
        lines += [(f"每张成功生成的图片计费：{_money('CNY', cny)}（中国站）或 {_money('USD', usd)}（国际站）；"
                  "失败的图片和被拒绝的请求不计费。估算为 `n` × 批量图片数 × 单价：批量 3 张、`n` = 2 即 6 张，"
                  f"{_money('CNY', 6 * cny)}。节点在排队前显示估算（币种在 设置 → {SETTINGS_CATEGORY.zh} 中选择），"
                  "`report` 输出包含 `usage.image_count` 和实际计费金额。")]
        if _has_cache(fn):
            lines += ["", "`use_cache` 打开时（默认），相同的编辑（图片、蒙版、提示词、参数和种子都相同）"
                      "直接复用已保存的结果，不计费。"]
    lines += ["", f"## {_t('limits', lang)}", ""]
    if en:
        lines += [(f"- Each side must be {MIN_SIDE_PX}–{MAX_SIDE_PX} px; other sizes are brought inside by one uniform "
                  "scale (the node says so before it runs). Aspect ratios above 8:1 are refused: crop or pad first."),
                  "- Transparency is flattened onto white; files over 10 MB are sent as JPEG."]
    else:
        lines += [(f"- 每边须为 {MIN_SIDE_PX}–{MAX_SIDE_PX} 像素；超出时按同一比例整体缩放（节点会在运行前提示）。"
                  "宽高比超过 8:1 时拒绝：请先裁剪或填充。"),
                  "- 透明区域会铺白底；超过 10 MB 的文件改为 JPEG 发送。"]
    lines += ["", f"## {_t('key', lang)}", ""]
    lines += ["Needs a **China (Beijing)** DashScope key: an international (Singapore) key is refused with "
              f"`InvalidApiKey`. Enter it in Settings → {SETTINGS_CATEGORY.en} (stored on the server, never in the "
              "workflow), or set `DASHSCOPE_API_KEY`, which wins." if en else
              "需要**中国（北京）**地域的 DashScope 密钥：国际站（新加坡）密钥会被拒绝（`InvalidApiKey`）。"
              f"在 设置 → {SETTINGS_CATEGORY.zh} 中填写（保存在服务器上，不会写入工作流），"
              "或设置环境变量 `DASHSCOPE_API_KEY`（优先）。", ""]
    example = fn.example
    sent, out, values = _example_size(fn)
    sent_prompt = build_prompt(fn, prompt=example.prompt, style=example.style)
    lines += [f"## {_t('example', lang)}", ""]
    settings_list = [f"`style` = `{example.style}`"] if fn.styles is not None else []
    quoted = (lambda text: f"'{text}'") if en else (lambda text: f"“{text}”")
    settings_list += [f"`prompt` = {quoted(example.prompt)}"]
    settings_list += [f"`{k}` = `{v}`" for k, v in values.items()]
    stem = f"wanx_{fn.key.lower()}"
    if en:
        lines += [f"The example workflow `{stem}` (Templates browser → this pack) loads a {sent} sample and sets "
                  + ", ".join(settings_list) + f". It sends the prompt {quoted(sent_prompt)} and returns one {out} "
                  f"image for {_money('CNY', cny)}."]
    else:
        lines += [f"示例工作流 `{stem}`（模板浏览器 → 本插件）加载一张 {sent} 的示例图片，设置 "
                  + "，".join(settings_list) + f"。发送的提示词为 {quoted(sent_prompt)}，返回一张 {out} 的图片，"
                  f"费用 {_money('CNY', cny)}。"]
    if fn.output_rule is OutputRule.EXPAND:
        left = values.get("left_scale", 1.0)
        top = values.get("top_scale", 1.0)
        x = round(sent.width * (float(left) - 1) / 2)  # type: ignore[arg-type]
        y = round(sent.height * (float(top) - 1) / 2)  # type: ignore[arg-type]
        lines += ["", (f"The original sits at x = {x}, y = {y} inside the {out} canvas." if en else
                       f"原图位于 {out} 画布中的 x = {x}、y = {y} 处。")]
    if fn.styles is not None:
        styles = ", ".join(f"`{s.key}` ({s.zh})" for s in fn.styles.styles)
        lines += ["", (f"Styles: {styles}; `{CUSTOM_STYLE}` sends your prompt as written." if en else
                       f"风格：{styles}；`{CUSTOM_STYLE}` 按原样发送你的提示词。")]
    return "\n".join(lines).rstrip() + "\n"


# --- locale files ------------------------------------------------------------------------------------


def _port_entry(port: Port, lang: str) -> dict[str, str]:
    return {"name": Text(port.name, port.label_zh).get(lang), "tooltip": port.tooltip.get(lang)}


def _node_def(node: texts.NodeTexts, inputs: Mapping[str, object], lang: str) -> dict[str, object]:
    return {"display_name": node.display_name.get(lang), "description": node.description.get(lang),
            "inputs": inputs, "outputs": {str(i): _port_entry(port, lang) for i, port in enumerate(node.outputs)}}


def node_defs(lang: str) -> dict[str, object]:
    defs: dict[str, object] = {}
    for fn in FUNCTIONS:
        inputs = {spec.name: {"name": _label(spec).get(lang), "tooltip": _tooltip(spec).get(lang)}
                  for spec in node_inputs(fn)}
        defs[fn.node_id] = _node_def(texts.edit_node(fn), inputs, lang)
    defs[FETCH_NODE_ID] = _node_def(FETCH_NODE, {port.name: _port_entry(port, lang) for port in FETCH_NODE.inputs},
                                    lang)
    return defs


def settings_locale(lang: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for setting_id, entry in SETTINGS.items():
        item: dict[str, object] = {"name": entry.name.get(lang), "tooltip": entry.tooltip.get(lang)}
        if entry.options:
            item["options"] = {k: Text(k, v).get(lang) for k, v in entry.options.items()}
        out[setting_id.replace(".", "_")] = item
    return out


def main_locale(lang: str) -> dict[str, object]:
    category = texts.CATEGORY_LABEL  # the last segment of texts.CATEGORY
    return {
        "settingsCategories": {SETTINGS_CATEGORY.en: SETTINGS_CATEGORY.get(lang),
                               SETTINGS_SUBCATEGORY: SETTINGS_SUBCATEGORY},
        # The frontend looks categories up by segment without escaping dots, so "Wanx 2.1 Edit" is the
        # nested path "Wanx 2" -> "1 Edit".
        "nodeCategories": _nested(category.en, category.get(lang)),
        "wanxImageEdit": {key: text.get(lang) for key, text in MESSAGES.items()},
    }


def _nested(dotted: str, value: str) -> dict[str, object]:
    parts = dotted.split(".")
    tree: dict[str, object] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        tree = {part: tree}
    return tree


def _json(data: object) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2, sort_keys=False) + "\n"


def render_all() -> dict[str, str]:
    """Relative path (from the repository root) -> file text, for every generated file."""
    files: dict[str, str] = {}
    for fn in FUNCTIONS:
        for lang in LANGS:
            files[f"web/docs/{fn.node_id}/{lang}.md"] = help_markdown(fn, lang)
    for lang in LANGS:
        files[f"web/docs/{FETCH_NODE_ID}/{lang}.md"] = fetch_help_markdown(lang)
    for lang in LANGS:
        files[f"locales/{lang}/main.json"] = _json(main_locale(lang))
        files[f"locales/{lang}/nodeDefs.json"] = _json(node_defs(lang))
        files[f"locales/{lang}/settings.json"] = _json(settings_locale(lang))
    return files


def write_all(repo_root: Path) -> list[Path]:
    """Write every help page and locale file under ``repo_root``; return the paths written."""
    written = []
    for relative, text in render_all().items():
        path = Path(repo_root) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
