"""Result images: deterministic, derived from the input with a function-specific effect, and
visibly fake (stamped "EMULATED <function> #<index>") so nobody mistakes them for real output.
Sizes follow the spec's section 6 ([Inf] defaults). `render_result` is the default renderer of
`Emulator(render=...)`."""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from .rules import MASKED_FUNCTION, DecodedImage, Job


class Renderer(Protocol):
    """What `Emulator(render=...)` calls, outside its lock, on the first download of a result:
    the PNG bytes of result `index` of `job`. It should be a pure function of (job, index);
    `job.image_key(index)` names everything the image may depend on."""

    def __call__(self, job: Job, *, index: int) -> bytes: ...


_TINTS: Mapping[str, tuple[int, int, int]] = {
    "stylization_all": (212, 166, 55),  # gold foil
    "stylization_local": (90, 180, 235),  # ice
    "description_edit": (225, 70, 70),
    MASKED_FUNCTION: (60, 205, 120),
    "remove_watermark": (215, 215, 215),
    "expand": (95, 120, 205),
    "super_resolution": (255, 255, 255),
    "colorization": (235, 150, 40),
    "doodle": (45, 95, 185),
    "control_cartoon_feature": (250, 120, 200),
}


def output_size(function: str, width_px: int, height_px: int, params: Mapping[str, Any]) -> tuple[int, int]:
    """Result size for an input of width_px x height_px (spec section 6)."""
    if function == "super_resolution":
        factor = int(params.get("upscale_factor") or 1)
        return width_px * factor, height_px * factor
    if function == "expand":
        left, right, top, bottom = (float(params.get(f"{side}_scale") or 1.0)
                                    for side in ("left", "right", "top", "bottom"))
        return round(width_px * (left + right) / 2), round(height_px * (top + bottom) / 2)
    return width_px, height_px


def render_result(job: Job, *, index: int) -> bytes:
    """PNG bytes of result `index`; a pure function of the job and the index."""
    rng = random.Random(job.image_key(index))
    tint = tuple(max(0, min(255, c + rng.randint(-40, 40))) for c in _TINTS[job.function])
    with Image.open(io.BytesIO(job.base.data)) as opened:
        base = opened.convert("RGB")
    label = f"EMULATED\n{job.function} #{index + 1}"
    if job.function == MASKED_FUNCTION:
        assert job.mask is not None
        image = _masked_edit(base, job.mask, tint, label=label)
    else:
        image = _EFFECTS[job.function](base, job.params, tint)
        _stamp(image, label, origin=(0, 0))
    if job.params.get("watermark"):
        _watermark(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _flat(image: Image.Image, colour: tuple[int, ...]) -> Image.Image:
    return Image.new("RGB", image.size, colour)


def _stylize_all(image: Image.Image, params: Mapping[str, Any], tint: tuple[int, ...]) -> Image.Image:
    styled = Image.blend(ImageOps.posterize(image, 3), _flat(image, tint), 0.35)
    return Image.blend(image, styled, float(params["strength"]))  # 0 keeps the original (spec 4.3)


def _stylize_local(image: Image.Image, params: Mapping[str, Any], tint: tuple[int, ...]) -> Image.Image:
    styled = Image.blend(ImageOps.posterize(image, 2), _flat(image, tint), 0.45)
    region = Image.new("L", image.size, 0)
    w, h = image.size
    ImageDraw.Draw(region).ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=255)
    return Image.composite(styled, image, region)


def _describe_edit(image: Image.Image, params: Mapping[str, Any], tint: tuple[int, ...]) -> Image.Image:
    red, green, blue = image.split()
    styled = Image.blend(Image.merge("RGB", (blue, red, green)), _flat(image, tint), 0.25)
    return Image.blend(image, styled, float(params["strength"]))


def _masked_edit(image: Image.Image, mask: DecodedImage, tint: tuple[int, ...], *, label: str) -> Image.Image:
    """Only the white (>= 128) mask area changes; the stamp is drawn inside it too, so pixels
    outside the mask stay byte-identical to the input."""
    with Image.open(io.BytesIO(mask.data)) as opened:
        region = opened.convert("L").point(lambda v: 255 if v >= 128 else 0)
    edited = Image.blend(ImageOps.invert(image), _flat(image, tint), 0.4)
    box = region.getbbox()
    if box is None:  # an all-black mask edits nothing; still mark the image as fake
        result = image.copy()
        _stamp(result, label, origin=(0, 0))
        return result
    text, origin, size_px = _inside(region, label, box=box)
    _stamp(edited, text, origin=origin, size_px=size_px)
    return Image.composite(edited, image, region)


def _inside(region: Image.Image, label: str, *,
            box: tuple[int, int, int, int]) -> tuple[str, tuple[int, int], int]:
    """Where the stamp fits wholly inside the white area (the mask would clip it anywhere else):
    the whole label at a readable size if it fits, else "EMULATED" alone at the largest size that
    fits, scanning the area's bounding box; the box's corner when nothing fits (a sliver of a mask)."""
    draw = ImageDraw.Draw(region)
    largest = _stamp_font_px(region.size)
    tries = [(label, size) for size in range(largest, 13, -2)] + [("EMULATED", size) for size in range(largest, 9, -2)]
    for text, size_px in tries:
        _, _, text_w, text_h = draw.multiline_textbbox((0, 0), text, font=_font(size_px))
        width_px, height_px = text_w + 2 * _STAMP_PAD_PX, text_h + 2 * _STAMP_PAD_PX
        step_px = max(4, size_px // 2)
        for y in range(box[1], box[3] - height_px + 1, step_px):
            for x in range(box[0], box[2] - width_px + 1, step_px):
                if region.crop((x, y, x + width_px + 1, y + height_px + 1)).getextrema() == (255, 255):
                    return text, (x, y), size_px
    return "EMULATED", (box[0], box[1]), 10


def _remove_watermark(image: Image.Image, params: Mapping[str, Any], tint: tuple[int, ...]) -> Image.Image:
    return Image.blend(image.filter(ImageFilter.MedianFilter(5)), _flat(image, tint), 0.08)


def _expand(image: Image.Image, params: Mapping[str, Any], tint: tuple[int, ...]) -> Image.Image:
    """New border in a flat colour, the original pasted at the half-dimension offset (spec 6)."""
    w, h = image.size
    canvas = Image.new("RGB", output_size("expand", w, h, params), tint)
    left_px = round(w * (float(params["left_scale"]) - 1) / 2)
    top_px = round(h * (float(params["top_scale"]) - 1) / 2)
    canvas.paste(image, (left_px, top_px))
    return canvas


def _super_resolution(image: Image.Image, params: Mapping[str, Any], tint: tuple[int, ...]) -> Image.Image:
    size = output_size("super_resolution", *image.size, params)
    enlarged = image.resize(size, Image.Resampling.LANCZOS) if size != image.size else image
    return Image.blend(enlarged.filter(ImageFilter.UnsharpMask(2, 150, 3)), _flat(enlarged, tint), 0.05)


def _colorize(image: Image.Image, params: Mapping[str, Any], tint: tuple[int, ...]) -> Image.Image:
    dark = tuple(c // 5 for c in tint)
    light = tuple(255 - (255 - c) // 5 for c in tint)
    return ImageOps.colorize(ImageOps.grayscale(image), black=dark, white=light, mid=tint)


def _doodle(image: Image.Image, params: Mapping[str, Any], tint: tuple[int, ...]) -> Image.Image:
    gray = ImageOps.grayscale(image)
    if not params["is_sketch"]:
        # A photo: extract line art first, as the service does (spec 4.3).
        gray = ImageOps.invert(gray.filter(ImageFilter.FIND_EDGES))
    return ImageOps.colorize(gray, black=tint, white=(250, 245, 232))


def _cartoon(image: Image.Image, params: Mapping[str, Any], tint: tuple[int, ...]) -> Image.Image:
    scene = ImageOps.mirror(ImageOps.posterize(image, 2)).filter(ImageFilter.EDGE_ENHANCE_MORE)
    return Image.blend(scene, _flat(image, tint), 0.2)


_Effect = Callable[[Image.Image, Mapping[str, Any], tuple[int, ...]], Image.Image]
_EFFECTS: Mapping[str, _Effect] = {
    "stylization_all": _stylize_all,
    "stylization_local": _stylize_local,
    "description_edit": _describe_edit,
    "remove_watermark": _remove_watermark,
    "expand": _expand,
    "super_resolution": _super_resolution,
    "colorization": _colorize,
    "doodle": _doodle,
    "control_cartoon_feature": _cartoon,
}


def _font(size_px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size_px)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


_STAMP_PAD_PX = 6


def _stamp_font_px(size: tuple[int, int]) -> int:
    return max(12, min(size) // 24)


def _stamp(image: Image.Image, text: str, *, origin: tuple[int, int], size_px: int | None = None) -> None:
    """A black box with the text; the font shrinks until the box fits inside the canvas."""
    draw = ImageDraw.Draw(image)
    x, y = origin
    size_px = size_px or _stamp_font_px(image.size)
    while True:
        font = _font(size_px)
        _, _, right, bottom = draw.multiline_textbbox((x + _STAMP_PAD_PX, y + _STAMP_PAD_PX), text, font=font)
        if size_px <= 8 or (right + _STAMP_PAD_PX < image.width and bottom + _STAMP_PAD_PX < image.height):
            break
        size_px -= 1
    draw.rectangle((x, y, right + _STAMP_PAD_PX, bottom + _STAMP_PAD_PX), fill=(0, 0, 0))
    draw.multiline_text((x + _STAMP_PAD_PX, y + _STAMP_PAD_PX), text, font=font, fill=(255, 255, 255))


def _watermark(image: Image.Image) -> None:
    # The service writes "AI生成"; the default font has no CJK glyphs, so we write it in English.
    draw = ImageDraw.Draw(image)
    font = _font(max(12, min(image.size) // 30))
    text = "AI-generated"
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = image.width - (right - left) - 10
    y = image.height - (bottom - top) - 10
    draw.text((x, y), text, font=font, fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0))

