"""The ten wanx2.1-imageedit functions as data. One table drives payloads, validation, the CLI's
options, the node schemas and the docs; nothing else in the pack lists functions or parameters.

Source: spec sections 1, 4 and 6 (``dashscope-imageedit-api.md``). Output sizes are the spec's
[Inf] defaults; the client checks every result against them and fails loudly on a mismatch."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from .errors import InputError
from .texts import Text

MODEL = "wanx2.1-imageedit"
PROMPT_MAX_CHARS = 800
SEED_MAX = 2_147_483_647
MIN_SIDE_PX = 512
MAX_SIDE_PX = 4096
# Per generated image; failed images are free (spec section 1: China site CNY, international site USD).
PRICE_PER_IMAGE = {"CNY": 0.14, "USD": 0.020070}


class ImageSize(NamedTuple):
    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


class Kind(enum.Enum):
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"


@dataclass(frozen=True)
class Param:
    """One entry of ``parameters``. ``default`` is what we send when the user gives nothing."""

    name: str
    kind: Kind
    default: int | float | bool
    help_en: str
    help_zh: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    label_zh: str = field(kw_only=True)  # the node input's Chinese label (the English one is ``name``)

    def check(self, value: object) -> int | float | bool:
        """Return ``value`` as its wire type, or raise InputError naming the rule."""
        if self.kind is Kind.BOOL:
            if not isinstance(value, bool):
                raise InputError(f"'{self.name}' must be true or false", value=repr(value), fix="Pass a boolean.")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"'{self.name}' must be a number", value=repr(value), fix="Pass a number.")
        if self.kind is Kind.INT:
            if float(value) != int(value):
                raise InputError(f"'{self.name}' must be a whole number", value=value, fix="Drop the fraction.")
            value = int(value)
        else:
            value = float(value)
        assert self.minimum is not None and self.maximum is not None  # every numeric param has a range
        if not self.minimum <= value <= self.maximum:
            raise InputError(
                f"'{self.name}' must be between {_num(self.minimum)} and {_num(self.maximum)}",
                value=value,
                fix=f"Choose a value in that range (default {self.default}).",
            )
        return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


N = Param(
    "n", Kind.INT, 1, "How many images to generate (each one is billed).", "生成图片数量（每张计费）。", 1, 4, 1,
    label_zh="生成数量",
)
SEED = Param(
    "seed", Kind.INT, 0,
    "Random seed. The same seed gives a more stable (not identical) result.",
    "随机种子。相同种子结果更稳定（不保证完全一致）。",
    0, SEED_MAX, 1, label_zh="随机种子",
)
WATERMARK = Param(
    "watermark", Kind.BOOL, False, "Add an 'AI生成' mark at the bottom right.", "在右下角添加“AI生成”水印。",
    label_zh="水印",
)
COMMON_PARAMS = (N, SEED, WATERMARK)

STRENGTH = Param(
    "strength", Kind.FLOAT, 0.5,
    "How much to change: near 0 keeps the original, 1 changes the most.",
    "修改幅度：接近0接近原图，1为最大幅度。",
    0.0, 1.0, 0.01, label_zh="修改幅度",
)


def _scale(side: str, side_zh: str) -> Param:
    return Param(
        f"{side}_scale", Kind.FLOAT, 1.0,
        f"Expand the canvas {side}ward by this ratio (1.0 = no expansion, 2.0 = most).",
        f"向{side_zh}扩展的比例（1.0为不扩展，最大2.0）。",
        1.0, 2.0, 0.01, label_zh=f"向{side_zh}扩展",
    )


class OutputRule(enum.Enum):
    SAME = "same size as the sent image"
    UPSCALE = "sent size times upscale_factor"
    EXPAND = "sent size grown by the four scales"


class Style(NamedTuple):
    key: str  # the stable option value saved in workflows
    zh: str  # the name the service understands


@dataclass(frozen=True)
class StyleSet:
    styles: tuple[Style, ...]
    pattern: str  # documented prompt pattern; {style} and, for local styles, {subject}

    @property
    def keys(self) -> tuple[str, ...]:
        return (CUSTOM_STYLE, *(s.key for s in self.styles))


CUSTOM_STYLE = "custom"

GLOBAL_STYLES = StyleSet(
    (Style("french picture book", "法国绘本"), Style("gold foil art", "金箔艺术")),
    pattern="转换成{style}风格",
)
LOCAL_STYLES = StyleSet(
    (
        Style("ice", "冰雕"),
        Style("cloud", "云朵"),
        Style("chinese festive lantern", "花灯"),
        Style("wooden", "木板"),
        Style("blue and white porcelain", "青花瓷"),
        Style("fluffy", "毛茸茸"),
        Style("weaving", "毛线"),
        Style("balloon", "气球"),
    ),
    pattern="把{subject}变成{style}风格",
)


@dataclass(frozen=True)
class Example:
    """What the demo, the help page and the example workflow run: the vendor guide's prompt pattern
    on one of the sample scenes that nodes/authoring/samples.py draws (by this name)."""

    scene: str
    prompt: str
    style: str = CUSTOM_STYLE
    values: Mapping[str, object] = field(default_factory=dict, hash=False)  # parameters, in help-page order


@dataclass(frozen=True)
class EditFunction:
    api_name: str
    key: str  # node id suffix and CLI name; a public contract
    title_en: str
    title_zh: str
    summary_en: str
    summary_zh: str
    prompt_hint_en: str
    prompt_hint_zh: str
    default_prompt: str | None = None  # None: the prompt is required
    needs_mask: bool = False
    styles: StyleSet | None = None
    params: tuple[Param, ...] = ()
    output_rule: OutputRule = OutputRule.SAME
    tips: tuple[Text, ...] = field(kw_only=True)  # the vendor guide's prompt advice (spec section 4.4)
    example: Example = field(kw_only=True)

    @property
    def node_id(self) -> str:
        return f"WanxImageEdit_{self.key}"

    @property
    def all_params(self) -> tuple[Param, ...]:
        return (*self.params, *COMMON_PARAMS)

    @property
    def prompt_required(self) -> bool:
        return self.default_prompt is None and self.styles is None


FUNCTIONS: tuple[EditFunction, ...] = (
    EditFunction(
        "stylization_all", "GlobalStylization", "Global Stylization", "全局风格化",
        "Restyles the whole image: French picture book or gold-foil art.",
        "整张图片风格迁移：法国绘本风格或金箔艺术风格。",
        "Pick a style; choose 'custom' to write the prompt yourself, e.g. 转换成法国绘本风格.",
        "选择风格；选“custom”可自行填写提示词，例如“转换成法国绘本风格”。",
        styles=GLOBAL_STYLES, params=(STRENGTH,),
        tips=(
            Text("The guide's pattern is 转换成xx风格 (convert to xx style), and only two styles are supported: "
                 "法国绘本 (French picture book) and 金箔艺术 (gold foil art). Pick one in `style` and the pack writes "
                 "the prompt; leave the prompt empty then.",
                 "官方句式为“转换成xx风格”，仅支持“法国绘本”和“金箔艺术”两种风格。"
                 "在 `style` 中选择风格，插件会自动生成提示词，此时提示词留空。"),
            Text("`strength` near 0 keeps the original; 1 changes the most (the guide's examples use 0.5).",
                 "`strength` 越接近 0 越接近原图，1 为最大幅度（官方示例用 0.5）。"),
        ),
        example=Example("landscape", "", style="french picture book", values={"strength": 0.5}),
    ),
    EditFunction(
        "stylization_local", "LocalStylization", "Local Stylization", "局部风格化",
        "Turns one object into a material style (ice, cloud, lantern, wood, porcelain, fluffy, "
        "knitted, balloon).",
        "将图中某个物体变成指定材质风格（冰雕、云朵、花灯、木板、青花瓷、毛茸茸、毛线、气球）。",
        "With a style chosen, the prompt names the object, e.g. 房子 (the house).",
        "选择风格后，提示词填写要变化的物体，例如“房子”。",
        styles=LOCAL_STYLES,
        tips=(
            Text("The guide's pattern is 把<object>变成<style>风格 (turn <object> into <style> style). "
                 "Choose the style and type only the object, e.g. 房子 (the house) gives 把房子变成木板风格.",
                 "官方句式为“把xx变成xx风格”。选择风格后，提示词只写物体，例如“房子”会生成“把房子变成木板风格”。"),
        ),
        example=Example("landscape", "房子", style="wooden"),
    ),
    EditFunction(
        "description_edit", "InstructionEdit", "Instruction Edit", "指令编辑",
        "Adds or changes content by instruction, with no mask.",
        "通过指令增加或修改图片内容，无需指定区域。",
        "Give an explicit instruction, e.g. 把她的头发修改为红色。 For deletions use Inpaint.",
        "写明确的指令，例如“把她的头发修改为红色。”；删除内容请用局部重绘。",
        params=(STRENGTH,),
        tips=(
            Text("Write explicit 'add …' or 'change … to …' instructions, e.g. 把她的头发修改为红色。 "
                 "(change her hair to red).",
                 "写明确的“增加……”或“把……修改为……”指令，例如“把她的头发修改为红色。”"),
            Text("To delete something, use Inpaint with a mask instead: the guide recommends it for removals.",
                 "删除内容请改用局部重绘（带蒙版），官方推荐用它来删除。"),
        ),
        example=Example("landscape", "把太阳修改为月亮。", values={"strength": 0.5}),
    ),
    EditFunction(
        "description_edit_with_mask", "Inpaint", "Inpaint (Masked Edit)", "局部重绘",
        "Adds, removes or changes content inside the white area of the mask.",
        "在蒙版白色区域内增加、删除或修改内容。",
        "Describe what the masked area should show afterwards (not 'delete X'); may be empty for tiny objects.",
        "描述重绘后该区域应呈现的内容（而非“删除某物”）；移除小物体时可留空。",
        default_prompt="", needs_mask=True,
        tips=(
            Text("Describe the action (give the dog a hat) or the final result (a dog wearing a hat).",
                 "可以描述动作（给狗戴上帽子），也可以描述结果（一只戴着帽子的狗）。"),
            Text("To remove an object, describe what should be there afterwards (a clear glass vase on a table), "
                 "not 'delete the bear'. For tiny objects an empty prompt works.",
                 "删除物体时，描述删除后该处应有的内容（如“桌子上只有一个透明玻璃花瓶”），而不是“删除小熊”。小物体可留空提示词。"),
            Text("The mask must be the image's size: white = edit, black = keep.",
                 "蒙版须与图片同尺寸：白色为编辑区域，黑色为保留区域。"),
        ),
        example=Example("vase_on_table", "桌子上只有一个蓝色花瓶。"),
    ),
    EditFunction(
        "remove_watermark", "RemoveWatermark", "Remove Text & Watermark", "去文字水印",
        "Removes Chinese or English text and watermarks.",
        "去除图片中的中英文文字和水印。",
        "Generic (去除图像中的文字) or specific (remove the English text).",
        "可通用（“去除图像中的文字”）或具体（“去除英文文字”）。",
        default_prompt="去除图像中的文字",
        tips=(
            Text("Generic: 去除图像中的文字 (remove the text in the image). Specific: 去除图像中的英文文字 "
                 "(remove the English text).",
                 "通用写法：“去除图像中的文字”；具体写法：“去除图像中的英文文字”。"),
        ),
        example=Example("landscape_with_text", "去除图像中的文字"),
    ),
    EditFunction(
        "expand", "Expand", "Expand (Outpaint)", "扩图",
        "Extends the canvas in four directions and fills it.",
        "按比例向四个方向扩展画面并补全内容。",
        "Describe the whole expanded scene, e.g. 一位绿色仙子.",
        "描述扩展后的完整画面，例如“一位绿色仙子”。",
        params=(_scale("top", "上"), _scale("bottom", "下"), _scale("left", "左"), _scale("right", "右")),
        output_rule=OutputRule.EXPAND,
        tips=(
            Text("The prompt is for the whole picture, not only what the new borders should show (the guide's "
                 "example: 一位绿色仙子, a green fairy).",
                 "提示词描述整幅画面，而不只是新增边缘的内容（官方示例：“一位绿色仙子”）。"),
            Text("Each scale is 1.0–2.0. The canvas grows by half the scale sum per axis: all four at 1.5 gives "
                 "1.5× width and height.",
                 "每个比例为 1.0–2.0。每个方向按两侧比例之和的一半放大：四个都为 1.5 时宽高各为 1.5 倍。"),
        ),
        example=Example("landscape", "阳光下的乡村风景，远处有小房子。",
                        values={"top_scale": 1.25, "bottom_scale": 1.25, "left_scale": 1.5, "right_scale": 1.5}),
    ),
    EditFunction(
        "super_resolution", "SuperResolution", "Super-Resolution", "图像超分",
        "Sharpens and optionally enlarges the image.",
        "图像高清化，可选放大倍数。",
        "Usually left at the default (图像超分。).",
        "通常保持默认（“图像超分。”）。",
        default_prompt="图像超分。",
        params=(
            Param(
                "upscale_factor", Kind.INT, 1,
                "Magnification per side; 1 sharpens without enlarging.",
                "放大倍数；1为仅增强不放大。",
                1, 4, 1, label_zh="放大倍数",
            ),
        ),
        output_rule=OutputRule.UPSCALE,
        tips=(
            Text("The guide's prompt is 图像超分。 (image super-resolution); the default is fine.",
                 "官方提示词为“图像超分。”，保持默认即可。"),
            Text("`upscale_factor` 1 only sharpens; 2–4 also enlarges each side.",
                 "`upscale_factor` 为 1 时只增强清晰度；2–4 同时放大每条边。"),
        ),
        example=Example("small_blurred_landscape", "图像超分。", values={"upscale_factor": 2}),
    ),
    EditFunction(
        "colorization", "Colorize", "Colorize", "图像上色",
        "Turns a black-and-white or grayscale image into colour.",
        "将黑白或灰度图片转为彩色。",
        "Name the colours of key elements (蓝色背景，黄色的叶子。), "
        "or keep the generic 图像上色。 for automatic colour.",
        "写出关键元素的颜色（如“蓝色背景，黄色的叶子。”），或保留通用的“图像上色。”自动上色。",
        # The guide allows an empty prompt here, but the reference marks it required and the official
        # SDK never sends one: a generic prompt in the documented "图像超分。" pattern is the safe default.
        default_prompt="图像上色。",
        tips=(
            Text("Name the colours of key elements, e.g. 蓝色背景，黄色的叶子。 (blue background, yellow leaves), "
                 "or leave the prompt empty for automatic colouring.",
                 "写出关键元素的颜色，例如“蓝色背景，黄色的叶子。”；或留空自动上色。"),
        ),
        example=Example("grayscale_landscape", "蓝色的天空，绿色的草地，红色的房子。"),
    ),
    EditFunction(
        "doodle", "Doodle", "Sketch to Image", "线稿生图",
        "Generates an image from line art or a scribble (or from a photo's extracted lines).",
        "根据线稿或涂鸦生成图片（照片会先提取线稿）。",
        "Describe the result, e.g. 北欧极简风格的客厅。",
        "描述生成的画面，例如“北欧极简风格的客厅。”",
        params=(
            Param(
                "is_sketch", Kind.BOOL, False,
                "On: the input already is line art or a scribble. Off: a photo; lines are extracted first.",
                "开：输入已是线稿或涂鸦；关：输入为照片，先提取线稿。",
                label_zh="输入为线稿",
            ),
        ),
        tips=(
            Text("Describe the result, e.g. 北欧极简风格的客厅。 (a Nordic minimalist living room).",
                 "描述生成的画面，例如“北欧极简风格的客厅。”"),
            Text("Turn `is_sketch` on for line art or a scribble (the guide's scribble example: "
                 "一颗树，二次元动漫风格); off for a photo, whose lines are extracted first.",
                 "输入为线稿或涂鸦时打开 `is_sketch`（官方涂鸦示例：“一颗树，二次元动漫风格”）；"
                 "输入为照片时关闭，会先提取线稿。"),
        ),
        example=Example("line_art", "北欧极简风格的客厅。", values={"is_sketch": True}),
    ),
    EditFunction(
        "control_cartoon_feature", "CartoonReference", "Cartoon Character Reference", "参考卡通形象生图",
        "Draws a new scene with the cartoon character of the reference image.",
        "参考输入图中的卡通形象生成新画面。",
        "Start with 卡通形象… and describe its action and surroundings.",
        "以“卡通形象……”开头，描述其动作和环境。",
        tips=(
            Text("Start with 卡通形象… (the cartoon character …) and describe its action and surroundings, e.g. "
                 "卡通形象小心翼翼地探出头，窥视着房间内一颗璀璨的蓝色宝石。",
                 "以“卡通形象……”开头，描述其动作和环境，例如“卡通形象小心翼翼地探出头，窥视着房间内一颗璀璨的蓝色宝石。”"),
        ),
        example=Example("cartoon_character", "卡通形象在花园里开心地跳舞，周围有蝴蝶。"),
    ),
)

BY_API_NAME: Mapping[str, EditFunction] = {f.api_name: f for f in FUNCTIONS}
BY_KEY: Mapping[str, EditFunction] = {f.key: f for f in FUNCTIONS}


def lookup(name: str) -> EditFunction:
    """Find a function by API name (``expand``) or key (``Expand``), case-insensitively."""
    for fn in FUNCTIONS:
        if name.lower() in (fn.api_name, fn.key.lower()):
            return fn
    choices = ", ".join(f.api_name for f in FUNCTIONS)
    raise InputError("unknown edit function", value=repr(name), fix=f"Use one of: {choices}.")


def build_prompt(fn: EditFunction, *, prompt: str, style: str = CUSTOM_STYLE) -> str:
    """Return the prompt to send: the style pattern, the user's text, or the function's default."""
    text = prompt.strip()
    if fn.styles is not None and style != CUSTOM_STYLE:
        chosen = next((s for s in fn.styles.styles if s.key == style), None)
        if chosen is None:
            raise InputError(
                f"{fn.title_en} has no style '{style}'", value=repr(style),
                fix="Choose one of: " + ", ".join(fn.styles.keys) + ".",
            )
        if "{subject}" in fn.styles.pattern:
            if not text:
                raise InputError(
                    f"{fn.title_en} with a style needs the prompt to name the object to restyle",
                    value="an empty prompt", fix="Type the object, e.g. 房子 (the house).",
                )
            return fn.styles.pattern.format(subject=text, style=chosen.zh)
        if text:
            raise InputError(
                f"{fn.title_en} with style '{style}' uses the fixed prompt 转换成{chosen.zh}风格",
                value=repr(text), fix="Clear the prompt, or choose style 'custom' to send your own text.",
            )
        return fn.styles.pattern.format(style=chosen.zh)
    if style != CUSTOM_STYLE:
        raise InputError(f"{fn.title_en} takes no style", value=repr(style), fix="Leave style unset.")
    if not text:
        if fn.default_prompt is None:
            raise InputError(
                f"{fn.title_en} needs a prompt", value="an empty prompt", fix=fn.prompt_hint_en,
            )
        text = fn.default_prompt
    if len(text) > PROMPT_MAX_CHARS:
        # The service silently truncates; we refuse instead, so the user knows what is sent.
        raise InputError(
            f"the prompt may have at most {PROMPT_MAX_CHARS} characters", value=f"{len(text)} characters",
            fix="Shorten it; the service would silently drop the rest.",
        )
    return text


def build_parameters(fn: EditFunction, values: Mapping[str, object]) -> dict[str, object]:
    """Return the wire ``parameters`` object. Every parameter of the function is sent explicitly
    (its default when not given); ``seed`` only when given. A name the function does not take
    is an error, never dropped silently."""
    known = {p.name: p for p in fn.all_params}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InputError(
            f"{fn.title_en} ({fn.api_name}) does not take {', '.join(unknown)}",
            value=", ".join(f"{k}={values[k]!r}" for k in unknown),
            fix="Its parameters are: " + ", ".join(known) + ".",
        )
    wire: dict[str, object] = {}
    for param in fn.all_params:
        value = values.get(param.name)
        if value is None:
            if param is SEED:
                continue  # the service picks one
            value = param.default
        wire[param.name] = param.check(value)
    return wire


def build_body(
    fn: EditFunction, *, prompt: str, base_image_url: str, mask_image_url: str | None,
    parameters: Mapping[str, object],
) -> dict[str, object]:
    """Return the create-task JSON body (spec section 4) from values already checked by
    ``request.prepare``: the built prompt, the wire parameters and the mask rule."""
    inputs: dict[str, object] = {"function": fn.api_name, "prompt": prompt, "base_image_url": base_image_url}
    if mask_image_url is not None:
        inputs["mask_image_url"] = mask_image_url
    return {"model": MODEL, "input": inputs, "parameters": dict(parameters)}


def output_size(fn: EditFunction, sent: ImageSize, parameters: Mapping[str, object]) -> ImageSize:
    """The size results come back at, for an image sent at ``sent`` (spec section 6, [Inf])."""
    if fn.output_rule is OutputRule.UPSCALE:
        factor = int(parameters.get("upscale_factor", 1))  # type: ignore[call-overload]
        return ImageSize(sent.width * factor, sent.height * factor)
    if fn.output_rule is OutputRule.EXPAND:
        def grow(side: int, a: str, b: str) -> int:
            return round(side * (float(parameters.get(a, 1.0)) + float(parameters.get(b, 1.0))) / 2)  # type: ignore[arg-type]
        return ImageSize(grow(sent.width, "left_scale", "right_scale"), grow(sent.height, "top_scale", "bottom_scale"))
    return sent


@dataclass(frozen=True)
class NodeInput:
    """One input of a function's ComfyUI node, in the node's order. Names are a public contract:
    saved workflows bind to them."""

    name: str
    socket: str  # IMAGE, MASK, COMBO, STRING, INT, FLOAT, BOOLEAN
    param: Param | None = None
    options: tuple[str, ...] = ()
    default: object = None
    help_en: str = ""
    help_zh: str = ""
    optional: bool = False  # added after release: API prompts written without it keep working
    label_zh: str = field(kw_only=True)  # the Chinese label (the English one is ``name``)

    @property
    def is_widget(self) -> bool:
        return self.socket not in ("IMAGE", "MASK")

    @property
    def control_after_generate(self) -> bool:
        return self.param is SEED


def node_inputs(fn: EditFunction) -> tuple[NodeInput, ...]:
    """The node's inputs: image, mask (inpainting), style (stylization), prompt, the function's
    own parameters, then n, seed and watermark."""
    inputs = [NodeInput("image", "IMAGE", help_en="The image(s) to edit; a batch runs one task per image.",
                        help_zh="要编辑的图片；批量时每张图片一个任务。", label_zh="图像")]
    if fn.needs_mask:
        inputs.append(NodeInput("mask", "MASK",
                                help_en="White (1) = the area to edit. A batch of 1 applies to every image.",
                                help_zh="白色（1）为要编辑的区域。单张蒙版用于批次中的每张图片。", label_zh="蒙版"))
    if fn.styles is not None:
        inputs.append(NodeInput("style", "COMBO", options=fn.styles.keys, default=fn.styles.styles[0].key,
                                help_en="A documented style, or 'custom' to send the prompt as written.",
                                help_zh="官方支持的风格；选“custom”则按原样发送提示词。", label_zh="风格"))
    inputs.append(NodeInput("prompt", "STRING", default=fn.default_prompt or "", help_en=fn.prompt_hint_en,
                            help_zh=fn.prompt_hint_zh, label_zh="提示词"))
    for param in fn.all_params:
        inputs.append(NodeInput(param.name, param.kind.name if param.kind is not Kind.BOOL else "BOOLEAN",
                                param=param, default=param.default, help_en=param.help_en, help_zh=param.help_zh,
                                label_zh=param.label_zh))
    inputs.append(USE_CACHE)
    return tuple(inputs)


# Not a service parameter: whether an identical seeded edit may be served from the result cache.
USE_CACHE = NodeInput(
    "use_cache", "BOOLEAN", default=True, optional=True,
    help_en="Reuse the stored result of an identical edit (same image, mask, prompt, parameters and seed) "
    "instead of paying again. Turn off to force a new paid run.",
    help_zh="相同编辑（图片、蒙版、提示词、参数和种子都相同）直接复用已保存的结果，不再计费。关闭则强制重新付费生成。",
    label_zh="复用结果",
)
