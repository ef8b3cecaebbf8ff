"""The node help pages (web/docs/<NodeId>/<lang>.md) and the interface translations
(locales/<lang>/{main,nodeDefs,settings}.json), generated from the function table so they never
drift from the nodes. ``write_all(repo_root)`` rewrites them; a test keeps the files in sync.

Host-free: no ComfyUI import. The English locale repeats what the node schema shows (display
names, descriptions, tooltips from the table); the host test compares it with the real /object_info."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from .functions import (
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
from .samples import EXAMPLES, sample_image

LANGS = ("en", "zh")
CATEGORY = "image/Wanx 2.1 Edit"  # the node category; its last segment is translated in main.json
CATEGORY_ZH = "万相 2.1 编辑"
SETTINGS_CATEGORY = "Wanx Image Edit"  # the settings panel's section (SETTING ids start WanxImageEdit.)
SETTINGS_CATEGORY_ZH = "万相图像编辑"
SETTINGS_SUBCATEGORY = "DashScope"

# --- what the node schema shows (edit_nodes.py should import these; see the report) ----------------


def display_name(fn: EditFunction, lang: str = "en") -> str:
    return f"Wanx {fn.title_en}" if lang == "en" else f"万相 {fn.title_zh}"


def description(fn: EditFunction, lang: str = "en") -> str:
    if lang == "en":
        return f"{fn.summary_en} ({fn.title_zh}; wanx2.1-imageedit `{fn.api_name}`)"
    return f"{fn.summary_zh}（{fn.title_en}；wanx2.1-imageedit `{fn.api_name}`）"


OUTPUTS = (
    ("images", "Every result, grouped per input image, in order.", "图像", "全部结果，按输入图片分组并保持顺序。"),
    ("report", "JSON: task ids, image counts, failures, timings.", "报告", "JSON：任务 ID、图片数量、失败原因、耗时。"),
)
INPUT_NAMES_ZH = {
    "image": "图像", "mask": "蒙版", "style": "风格", "prompt": "提示词", "n": "生成数量", "seed": "随机种子",
    "watermark": "水印", "strength": "修改幅度", "top_scale": "向上扩展", "bottom_scale": "向下扩展",
    "left_scale": "向左扩展", "right_scale": "向右扩展", "upscale_factor": "放大倍数", "is_sketch": "输入为线稿", "use_cache": "复用结果",
}


# The task-recovery node is not an edit function of the table; its texts live here (the English ones
# must equal its schema in edit_nodes.py; the host test checks that).
FETCH_NODE_ID = "WanxImageEdit_FetchTask"
FETCH_NODE = {
    "display_name": ("Wanx Fetch Task Result", "万相 取回任务结果"),
    "description": (
        ("Returns the images of an earlier wanx2.1-imageedit task (kept 24 hours by the service). "
        "Leave task_id empty for the newest task whose results were never saved."),
        "取回之前某个 wanx2.1-imageedit 任务的图片（服务保留 24 小时）。task_id 留空则取回最近一个结果尚未保存的任务。",
    ),
    "inputs": {"task_id": ("task_id", "任务 ID", "A task id, or empty for the newest unsaved task.",
                           "任务 ID；留空则为最近一个未保存的任务。")},
    "outputs": (
        ("images", "The task's result images.", "图像", "该任务的结果图片。"),
        ("report", "JSON: the task's status, image count and result URLs.", "报告", "JSON：任务状态、图片数量和结果链接。"),
    ),
}


def tooltip(spec: NodeInput, lang: str = "en") -> str:
    return spec.help_en if lang == "en" else spec.help_zh


def input_label(spec: NodeInput, lang: str) -> str:
    return spec.name if lang == "en" else INPUT_NAMES_ZH[spec.name]


# --- the vendor guide's prompt advice (dashscope-imageedit-api.md section 4.4) ----------------------

GUIDE_TIPS: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "stylization_all": (
        (("The guide's pattern is 转换成xx风格 (convert to xx style), and only two styles are supported: "
         "法国绘本 (French picture book) and 金箔艺术 (gold foil art). Pick one in `style` and the pack writes "
         "the prompt; leave the prompt empty then."),
         "`strength` near 0 keeps the original; 1 changes the most (the guide's examples use 0.5)."),
        (("官方句式为“转换成xx风格”，仅支持“法国绘本”和“金箔艺术”两种风格。在 `style` 中选择风格，插件会自动生成提示词，"
         "此时提示词留空。"),
         "`strength` 越接近 0 越接近原图，1 为最大幅度（官方示例用 0.5）。"),
    ),
    "stylization_local": (
        (("The guide's pattern is 把<object>变成<style>风格 (turn <object> into <style> style). Choose the style "
         "and type only the object, e.g. 房子 (the house) gives 把房子变成木板风格."),),
        ("官方句式为“把xx变成xx风格”。选择风格后，提示词只写物体，例如“房子”会生成“把房子变成木板风格”。",),
    ),
    "description_edit": (
        (("Write explicit 'add …' or 'change … to …' instructions, e.g. 把她的头发修改为红色。 "
         "(change her hair to red)."),
         "To delete something, use Inpaint with a mask instead: the guide recommends it for removals."),
        ("写明确的“增加……”或“把……修改为……”指令，例如“把她的头发修改为红色。”",
         "删除内容请改用局部重绘（带蒙版），官方推荐用它来删除。"),
    ),
    "description_edit_with_mask": (
        ("Describe the action (give the dog a hat) or the final result (a dog wearing a hat).",
         ("To remove an object, describe what should be there afterwards (a clear glass vase on a table), "
         "not 'delete the bear'. For tiny objects an empty prompt works."),
         "The mask must be the image's size: white = edit, black = keep."),
        ("可以描述动作（给狗戴上帽子），也可以描述结果（一只戴着帽子的狗）。",
         "删除物体时，描述删除后该处应有的内容（如“桌子上只有一个透明玻璃花瓶”），而不是“删除小熊”。小物体可留空提示词。",
         "蒙版须与图片同尺寸：白色为编辑区域，黑色为保留区域。"),
    ),
    "remove_watermark": (
        (("Generic: 去除图像中的文字 (remove the text in the image). Specific: 去除图像中的英文文字 "
         "(remove the English text)."),),
        ("通用写法：“去除图像中的文字”；具体写法：“去除图像中的英文文字”。",),
    ),
    "expand": (
        (("The prompt is for the whole picture, not only what the new borders should show (the guide's example: "
         "一位绿色仙子, a green fairy)."),
         ("Each scale is 1.0–2.0. The canvas grows by half the scale sum per axis: all four at 1.5 gives "
         "1.5× width and height.")),
        ("提示词描述整幅画面，而不只是新增边缘的内容（官方示例：“一位绿色仙子”）。",
         "每个比例为 1.0–2.0。每个方向按两侧比例之和的一半放大：四个都为 1.5 时宽高各为 1.5 倍。"),
    ),
    "super_resolution": (
        ("The guide's prompt is 图像超分。 (image super-resolution); the default is fine.",
         "`upscale_factor` 1 only sharpens; 2–4 also enlarges each side."),
        ("官方提示词为“图像超分。”，保持默认即可。",
         "`upscale_factor` 为 1 时只增强清晰度；2–4 同时放大每条边。"),
    ),
    "colorization": (
        (("Name the colours of key elements, e.g. 蓝色背景，黄色的叶子。 (blue background, yellow leaves), "
         "or leave the prompt empty for automatic colouring."),),
        ("写出关键元素的颜色，例如“蓝色背景，黄色的叶子。”；或留空自动上色。",),
    ),
    "doodle": (
        ("Describe the result, e.g. 北欧极简风格的客厅。 (a Nordic minimalist living room).",
         ("Turn `is_sketch` on for line art or a scribble (the guide's scribble example: 一颗树，二次元动漫风格); "
         "off for a photo, whose lines are extracted first.")),
        ("描述生成的画面，例如“北欧极简风格的客厅。”",
         "输入为线稿或涂鸦时打开 `is_sketch`（官方涂鸦示例：“一颗树，二次元动漫风格”）；输入为照片时关闭，会先提取线稿。"),
    ),
    "control_cartoon_feature": (
        (("Start with 卡通形象… (the cartoon character …) and describe its action and surroundings, e.g. "
         "卡通形象小心翼翼地探出头，窥视着房间内一颗璀璨的蓝色宝石。"),),
        ("以“卡通形象……”开头，描述其动作和环境，例如“卡通形象小心翼翼地探出头，窥视着房间内一颗璀璨的蓝色宝石。”",),
    ),
}

# --- the extension's own texts (the settings panel, the node overlays) ------------------------------

SETTINGS: Mapping[str, dict[str, object]] = {
    # id -> English and Chinese name/tooltip (and option labels). The JS declares the same ids.
    "WanxImageEdit.ApiKey": {
        "name": ("DashScope API key (China (Beijing))", "DashScope API 密钥（中国北京）"),
        "tooltip": (
            ("Stored on the ComfyUI server in its user directory (owner-only file), never in workflows, images or "
            "the browser. DASHSCOPE_API_KEY in the environment wins over it."),
            ("保存在 ComfyUI 服务器的用户目录中（仅所有者可读的文件），不会写入工作流、图片或浏览器。"
            "环境变量 DASHSCOPE_API_KEY 优先于此处保存的密钥。"),
        ),
    },
    "WanxImageEdit.Endpoint": {
        "name": ("Endpoint", "服务地址"),
        "tooltip": (
            ("China (Beijing) is the only region with wanx2.1-imageedit. Choose a custom base URL for a gateway "
            "or the local emulator. DASHSCOPE_HTTP_BASE_URL in the environment wins."),
            ("wanx2.1-imageedit 仅在中国（北京）地域提供。使用网关或本地模拟器时选择自定义地址。"
            "环境变量 DASHSCOPE_HTTP_BASE_URL 优先。"),
        ),
        "options": {"China (Beijing)": "中国（北京）", "Custom base URL": "自定义地址"},
    },
    "WanxImageEdit.CustomBaseUrl": {
        "name": ("Custom base URL", "自定义服务地址"),
        "tooltip": (
            ("Used when Endpoint is 'Custom base URL', e.g. https://gateway.example.com/api/v1. Plain http only "
            "to loopback; the international endpoint is refused."),
            ("当服务地址为“自定义地址”时使用，例如 https://gateway.example.com/api/v1。"
            "http 仅限本机地址；国际站地址会被拒绝。"),
        ),
    },
    "WanxImageEdit.Currency": {
        "name": ("Currency for cost estimates", "费用估算币种"),
        "tooltip": (
            (f"CNY {PRICE_PER_IMAGE['CNY']} per image (China site) or USD {PRICE_PER_IMAGE['USD']:.6f} "
            "(international site). Only generated images are billed."),
            (f"每张 CNY {PRICE_PER_IMAGE['CNY']}（中国站）或 USD {PRICE_PER_IMAGE['USD']:.6f}（国际站）。"
            "只有成功生成的图片计费。"),
        ),
        "options": {"CNY": "人民币 CNY", "USD": "美元 USD"},
    },
}

MESSAGES: Mapping[str, tuple[str, str]] = {
    "cost_line": ("Cost {n} × {batch} × {unit} = {total}", "费用 {n} × {batch} × {unit} = {total}"),
    "cost_line_unknown": ("Cost {n} × batch × {unit} (batch size unknown)", "费用 {n} × 批量 × {unit}（批量未知）"),
    "cost_badge_unknown": ("{amount} × batch", "{amount} × 批量"),
    "session": ("Session: {total} billed ({images} images)", "本次会话已计费 {total}（{images} 张）"),
    "session_estimate": ("Session: ≈{total} ({images} images, estimated)", "本次会话约 {total}（{images} 张，估算）"),
    "input_unknown": ("Input size unknown until it runs", "输入尺寸运行前未知"),
    "input_size": ("Input {w}×{h}", "输入 {w}×{h}"),
    "resized": ("will be resized to {w}×{h} ({min}–{max} px)", "将缩放为 {w}×{h}（{min}–{max} 像素）"),
    "cannot_fit": ("Aspect ratio above 8:1: crop or pad it first", "宽高比超过 8:1：请先裁剪或填充"),
    "output_size": ("Output {w}×{h}", "输出 {w}×{h}"),
    "output_relative": ("Output {fw}× width, {fh}× height", "输出 宽 {fw} 倍，高 {fh} 倍"),
    "original_at": ("original at x {x}, y {y}", "原图位于 x {x}，y {y}"),
    "over_limit": ("Above {max} px per side: may be refused (limit undocumented)",
                   "超过每边 {max} 像素：可能被拒绝（官方未说明上限）"),
    "key_placeholder": ("Paste a China (Beijing) DashScope key", "粘贴中国（北京）地域的 DashScope 密钥"),
    "key_save": ("Save key", "保存密钥"),
    "key_remove": ("Remove stored key", "删除已存密钥"),
    "key_test": ("Test connection", "测试连接"),
    "key_testing": ("Testing…", "测试中……"),
    "key_saved": ("Key saved on the ComfyUI server.", "密钥已保存到 ComfyUI 服务器。"),
    "key_removed": ("Stored key removed.", "已删除保存的密钥。"),
    "key_empty": ("Paste a key first.", "请先粘贴密钥。"),
    "source_environment": ("Key from the environment (DASHSCOPE_API_KEY)", "密钥来自环境变量（DASHSCOPE_API_KEY）"),
    "source_key_file": ("Key from a key file ({detail})", "密钥来自密钥文件（{detail}）"),
    "source_settings": ("Key stored by these settings", "密钥由此设置保存"),
    "source_none": ("No key configured", "未配置密钥"),
    "key_hint": ("ending …{last4}", "末尾 …{last4}"),
    "key_overridden": ("A key is also stored here ({hint}), but the {source} wins.",
                       "此处也保存了密钥（{hint}），但{source}优先。"),
    "endpoint_line": ("Endpoint {url} ({source})", "服务地址 {url}（{source}）"),
    "endpoint_source_default": ("default", "默认"),
    "endpoint_source_settings": ("from these settings", "来自此设置"),
    "endpoint_source_environment": ("DASHSCOPE_HTTP_BASE_URL wins", "环境变量 DASHSCOPE_HTTP_BASE_URL 优先"),
    "lan_note": ("Anyone who can reach this ComfyUI can replace the key, but no one can read it back.",
                 "能访问此 ComfyUI 的人都可以替换密钥，但任何人都无法读回密钥。"),
    "request_failed": ("Failed: {message}", "失败：{message}"),
}

# --- help pages --------------------------------------------------------------------------------------

_T = {
    "inputs": ("Inputs", "输入"),
    "default": ("default", "默认"),
    "outputs": ("Outputs", "输出"),
    "size": ("Output size", "输出尺寸"),
    "tips": ("Prompt tips", "提示词技巧"),
    "cost": ("Cost", "费用"),
    "example": ("Example", "示例"),
    "limits": ("Input limits", "输入限制"),
    "key": ("Key and region", "密钥与地域"),
}


def _t(name: str, lang: str) -> str:
    return _T[name][0 if lang == "en" else 1]


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
    example = EXAMPLES[fn.api_name]
    width, height = sample_image(fn.api_name).size
    sent = ImageSize(width, height)  # the samples are inside 512-4096, so nothing is resized
    assert all(MIN_SIDE_PX <= side <= MAX_SIDE_PX for side in sent)
    return sent, output_size(fn, sent, example.values), dict(example.values)


def _size_rule(fn: EditFunction, lang: str) -> str:
    en = lang == "en"
    if fn.output_rule is OutputRule.UPSCALE:
        return ("The size that was sent × `upscale_factor` on each side. Above 4096 px per side the service may "
                "refuse it (the output limit is not documented); the node warns before it runs." if en else
                "发送尺寸的每条边 × `upscale_factor`。每边超过 4096 像素时服务可能拒绝（官方未说明输出上限），节点会在运行前提示。")
    if fn.output_rule is OutputRule.EXPAND:
        return ("New width = W·(left_scale + right_scale)/2 and new height = H·(top_scale + bottom_scale)/2, with the "
                "original placed W·(left_scale − 1)/2 px from the left and H·(top_scale − 1)/2 px from the top. "
                "The node draws this canvas before it runs." if en else
                "新宽度 = W·(left_scale + right_scale)/2，新高度 = H·(top_scale + bottom_scale)/2；原图距左边 "
                "W·(left_scale − 1)/2 像素、距上边 H·(top_scale − 1)/2 像素。节点在运行前画出这个画布。")
    return "The same size as the image that was sent." if en else "与发送的图片尺寸相同。"


def _has_cache(fn: EditFunction) -> bool:
    return any(spec.name == "use_cache" for spec in node_inputs(fn))


def fetch_help_markdown(lang: str) -> str:
    """The help page of the task-recovery node."""
    i = 0 if lang == "en" else 1
    _, _, tip_en, tip_zh = FETCH_NODE["inputs"]["task_id"]  # type: ignore[index]
    lines = [f"# {FETCH_NODE['display_name'][i]}", "", FETCH_NODE["description"][i], ""]  # type: ignore[index]
    lines += [f"## {_t('inputs', lang)}", "", f"- `task_id`: {tip_en if i == 0 else tip_zh}", ""]
    lines += [f"## {_t('outputs', lang)}", ""]
    for name, out_en, out_zh_name, out_zh in FETCH_NODE["outputs"]:  # type: ignore[misc]
        lines.append(f"- `{name}`: {out_en}" if i == 0 else f"- `{name}` {out_zh_name}：{out_zh}")
    lines += ["", f"## {_t('cost', lang)}", ""]
    lines += ["Free: it only reads a finished task and downloads its images. Task data and result URLs are kept for "
              "24 hours, and only keys of the same account (and region) can see a task." if i == 0 else
              "免费：只读取已完成的任务并下载图片。任务数据和结果链接保留 24 小时，且只有同一账号（同一地域）的密钥能看到该任务。"]
    lines += ["", f"## {_t('example', lang)}", ""]
    lines += ["A run was cancelled while a task was RUNNING (it is billed anyway): paste the task id from the node's "
              "message or from `wanx-imageedit tasks` into `task_id`, connect `images` to a Save Image, and queue." if i == 0
              else "任务在 RUNNING 时取消了运行（仍会计费）：把节点提示或 `wanx-imageedit tasks` 中的任务 ID 填入 `task_id`，"
              "将 `images` 连接到保存图像节点后排队运行。"]
    return "\n".join(lines).rstrip() + "\n"


def help_markdown(fn: EditFunction, lang: str) -> str:
    """The help page of one node, in English (en) or Chinese (zh)."""
    en = lang == "en"
    zh_or_en = 0 if en else 1
    lines = [f"# {display_name(fn, lang)}", "", description(fn, lang), ""]
    lines += [f"**Model**: `{MODEL}`, function `{fn.api_name}` (China (Beijing) region only)." if en else
              f"**模型**：`{MODEL}`，功能 `{fn.api_name}`（仅中国北京地域）。", ""]
    lines += [f"## {_t('inputs', lang)}", ""]
    for spec in node_inputs(fn):
        label = f"**`{spec.name}`**" if en else f"**`{spec.name}` {INPUT_NAMES_ZH[spec.name]}**"
        default = _default(fn, spec, lang)
        facts = [spec.socket, _range(spec, lang),
                 default if default in ("required", "必填") else
                 f"{_t('default', lang)}{'' if default == '为空' else ' '}{default}"]
        if spec.socket in ("IMAGE", "MASK"):
            facts = facts[:2]
        lines.append(f"- {label} ({'; '.join(facts) if en else '；'.join(facts)}): {tooltip(spec, lang)}"
                     if en else f"- {label}（{'；'.join(facts)}）：{tooltip(spec, lang)}")
    lines += ["", f"## {_t('outputs', lang)}", ""]
    for name, tip_en, name_zh, tip_zh in OUTPUTS:
        lines.append(f"- `{name}`: {tip_en}" if en else f"- `{name}` {name_zh}：{tip_zh}")
    lines += ["", f"## {_t('size', lang)}", "", _size_rule(fn, lang), ""]
    lines += [f"## {_t('tips', lang)}", "", f"- {fn.prompt_hint_en if en else fn.prompt_hint_zh}"]
    lines += [f"- {tip}" for tip in GUIDE_TIPS[fn.api_name][zh_or_en]]
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
                  f"{SETTINGS_CATEGORY}), and the `report` output carries `usage.image_count` and the billed cost.")]
        if _has_cache(fn):
            lines += ["", ("With `use_cache` on (the default), an identical edit (same image, mask, prompt, parameters "
                      "and seed) is served from the stored result for free.")]
    else:
        lines += [(f"每张成功生成的图片计费：{_money('CNY', cny)}（中国站）或 {_money('USD', usd)}（国际站）；"
                  "失败的图片和被拒绝的请求不计费。估算为 `n` × 批量图片数 × 单价：批量 3 张、`n` = 2 即 6 张，"
                  f"{_money('CNY', 6 * cny)}。节点在排队前显示估算（币种在 设置 → {SETTINGS_CATEGORY_ZH} 中选择），"
                  "`report` 输出包含 `usage.image_count` 和实际计费金额。")]
        if _has_cache(fn):
            lines += ["", "`use_cache` 打开时（默认），相同的编辑（图片、蒙版、提示词、参数和种子都相同）直接复用已保存的结果，不计费。"]
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
              f"`InvalidApiKey`. Enter it in Settings → {SETTINGS_CATEGORY} (stored on the server, never in the "
              "workflow), or set `DASHSCOPE_API_KEY`, which wins." if en else
              "需要**中国（北京）**地域的 DashScope 密钥：国际站（新加坡）密钥会被拒绝（`InvalidApiKey`）。"
              f"在 设置 → {SETTINGS_CATEGORY_ZH} 中填写（保存在服务器上，不会写入工作流），"
              "或设置环境变量 `DASHSCOPE_API_KEY`（优先）。", ""]
    example = EXAMPLES[fn.api_name]
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
                  + ", ".join(settings_list) + f". It sends the prompt {quoted(sent_prompt)} and returns one {out} image "
                  f"for {_money('CNY', cny)}."]
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


def node_defs(lang: str) -> dict[str, object]:
    defs: dict[str, object] = {}
    for fn in FUNCTIONS:
        inputs = {spec.name: {"name": input_label(spec, lang), "tooltip": tooltip(spec, lang)}
                  for spec in node_inputs(fn)}
        outputs = {str(i): {"name": name if lang == "en" else name_zh, "tooltip": tip_en if lang == "en" else tip_zh}
                   for i, (name, tip_en, name_zh, tip_zh) in enumerate(OUTPUTS)}
        defs[fn.node_id] = {"display_name": display_name(fn, lang), "description": description(fn, lang),
                            "inputs": inputs, "outputs": outputs}
    i = 0 if lang == "en" else 1
    name_en, name_zh, tip_en, tip_zh = FETCH_NODE["inputs"]["task_id"]  # type: ignore[index]
    defs[FETCH_NODE_ID] = {
        "display_name": FETCH_NODE["display_name"][i], "description": FETCH_NODE["description"][i],  # type: ignore[index]
        "inputs": {"task_id": {"name": (name_en, name_zh)[i], "tooltip": (tip_en, tip_zh)[i]}},
        "outputs": {str(k): {"name": (name, name_zh_)[i], "tooltip": (tip_en_, tip_zh_)[i]}
                    for k, (name, tip_en_, name_zh_, tip_zh_) in enumerate(FETCH_NODE["outputs"])},  # type: ignore[arg-type]
    }
    return defs


def settings_locale(lang: str) -> dict[str, object]:
    index = 0 if lang == "en" else 1
    out: dict[str, object] = {}
    for setting_id, entry in SETTINGS.items():
        item: dict[str, object] = {"name": entry["name"][index], "tooltip": entry["tooltip"][index]}  # type: ignore[index]
        options = entry.get("options")
        if options:
            item["options"] = {k: (k if lang == "en" else v) for k, v in options.items()}  # type: ignore[union-attr]
        out[setting_id.replace(".", "_")] = item
    return out


def main_locale(lang: str) -> dict[str, object]:
    index = 0 if lang == "en" else 1
    segment = CATEGORY.split("/")[-1]
    return {
        "settingsCategories": {SETTINGS_CATEGORY: SETTINGS_CATEGORY if lang == "en" else SETTINGS_CATEGORY_ZH,
                               SETTINGS_SUBCATEGORY: SETTINGS_SUBCATEGORY},
        # The frontend looks categories up by segment without escaping dots, so "Wanx 2.1 Edit" is the
        # nested path "Wanx 2" -> "1 Edit".
        "nodeCategories": _nested(segment, segment if lang == "en" else CATEGORY_ZH),
        "wanxImageEdit": {key: texts[index] for key, texts in MESSAGES.items()},
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
