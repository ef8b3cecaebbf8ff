"""Sample inputs drawn in code, so the demo and the example workflows need no downloaded or
copyrighted material. Deterministic: the same call gives the same pixels. A function's entry in the
table names its scene (``fn.example.scene``); the scenes are drawn here.

A new scene is one drawing function and one line in SCENES."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from PIL import Image, ImageDraw, ImageFilter

SIDE_PX = 768


def _scene(*, width_px: int = SIDE_PX, height_px: int = SIDE_PX) -> Image.Image:
    """A small landscape: sky gradient, sun, hills and a house."""
    image = Image.new("RGB", (width_px, height_px))
    draw = ImageDraw.Draw(image)
    horizon = int(height_px * 0.62)
    for y in range(horizon):
        t = y / horizon
        draw.line([(0, y), (width_px, y)], fill=(int(90 + 120 * t), int(150 + 80 * t), int(235 - 20 * t)))
    draw.ellipse([width_px * 0.7, height_px * 0.08, width_px * 0.86, height_px * 0.24], fill=(255, 214, 90))
    draw.polygon([(0, horizon), (width_px * 0.35, height_px * 0.42), (width_px * 0.7, horizon)], fill=(86, 140, 90))
    draw.polygon([(width_px * 0.4, horizon), (width_px * 0.8, height_px * 0.47), (width_px, horizon)],
                 fill=(70, 120, 80))
    draw.rectangle([0, horizon, width_px, height_px], fill=(110, 170, 90))
    x0, y0 = width_px * 0.18, height_px * 0.55
    draw.rectangle([x0, y0, x0 + width_px * 0.22, y0 + height_px * 0.2], fill=(200, 120, 80))
    draw.polygon([(x0 - 12, y0), (x0 + width_px * 0.11, y0 - height_px * 0.12), (x0 + width_px * 0.22 + 12, y0)],
                 fill=(150, 60, 50))
    draw.rectangle([x0 + width_px * 0.08, y0 + height_px * 0.1, x0 + width_px * 0.13, y0 + height_px * 0.2],
                   fill=(90, 60, 40))
    return image


def _vase_on_table() -> Image.Image:
    image = Image.new("RGB", (SIDE_PX, SIDE_PX), (236, 228, 214))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 520, SIDE_PX, SIDE_PX], fill=(150, 105, 70))
    draw.ellipse([300, 300, 460, 540], fill=(70, 110, 170))
    draw.rectangle([350, 240, 410, 320], fill=(70, 110, 170))
    draw.ellipse([520, 430, 620, 530], fill=(200, 60, 60))  # the object the mask covers
    return image


def _with_text() -> Image.Image:
    image = _scene()
    draw = ImageDraw.Draw(image)
    for row in range(3):
        draw.text((40, 40 + 40 * row), f"SAMPLE WATERMARK {row + 1}", fill=(255, 255, 255))
    draw.text((SIDE_PX - 260, SIDE_PX - 40), "(c) example text", fill=(20, 20, 20))
    return image


def _line_art() -> Image.Image:
    image = Image.new("RGB", (SIDE_PX, SIDE_PX), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([120, 420, 650, 600], outline="black", width=5)  # sofa
    draw.rectangle([150, 360, 620, 430], outline="black", width=5)
    draw.line([(100, 650), (700, 650)], fill="black", width=4)  # floor
    draw.rectangle([520, 160, 680, 320], outline="black", width=5)  # picture frame
    draw.ellipse([220, 120, 320, 220], outline="black", width=5)  # lamp
    draw.line([(270, 220), (270, 360)], fill="black", width=4)
    return image


def _cartoon_character() -> Image.Image:
    image = Image.new("RGB", (SIDE_PX, SIDE_PX), (250, 246, 236))
    draw = ImageDraw.Draw(image)
    draw.ellipse([234, 300, 534, 640], fill=(255, 190, 70), outline="black", width=6)  # body
    draw.ellipse([259, 130, 509, 380], fill=(255, 205, 90), outline="black", width=6)  # head
    for x in (330, 438):
        draw.ellipse([x - 22, 220, x + 22, 270], fill="white", outline="black", width=4)
        draw.ellipse([x - 9, 238, x + 9, 262], fill="black")
    draw.arc([334, 270, 434, 330], 20, 160, fill="black", width=5)
    draw.polygon([(279, 170), (259, 60), (339, 140)], fill=(255, 205, 90), outline="black")  # ears
    draw.polygon([(489, 170), (509, 60), (429, 140)], fill=(255, 205, 90), outline="black")
    return image


def _grayscale() -> Image.Image:
    return _scene().convert("L").convert("RGB")


def _small_and_blurred() -> Image.Image:
    return _scene().resize((512, 512), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(1.5))


def _vase_mask() -> Image.Image:
    """White = edit: the red ball next to the vase."""
    mask = Image.new("L", (SIDE_PX, SIDE_PX), 0)
    ImageDraw.Draw(mask).ellipse([505, 415, 635, 545], fill=255)
    return mask


SCENES: Mapping[str, Callable[[], Image.Image]] = {
    "landscape": _scene,
    "vase_on_table": _vase_on_table,
    "landscape_with_text": _with_text,
    "line_art": _line_art,
    "cartoon_character": _cartoon_character,
    "grayscale_landscape": _grayscale,
    "small_blurred_landscape": _small_and_blurred,
}
# The scenes made for inpainting, with the area to edit.
MASKS: Mapping[str, Callable[[], Image.Image]] = {"vase_on_table": _vase_mask}


def sample_image(scene: str) -> Image.Image:
    """A scene of SCENES (RGB)."""
    return SCENES[scene]()


def sample_mask(scene: str) -> Image.Image | None:
    """The scene's inpainting mask (white = edit); None for a scene without one."""
    draw = MASKS.get(scene)
    return draw() if draw is not None else None
