"""ComfyUI IMAGE/MASK tensors <-> the files wanx2.1-imageedit accepts and returns. Pure functions;
the only module of ``nodes.core`` that imports torch.

Host conventions (comfyui-notes.md section f):

- IMAGE is ``torch.Tensor [B, H, W, C]``, floating point, 0..1, C = 3 (RGB) or 4 (RGBA).
- MASK is ``[B, H, W]`` (or ``[H, W]``), floating point, 0..1, 1 = selected. LoadImage's mask is
  1 - alpha, and a 64x64 zeros tensor when the file has no alpha.

Service rules (dashscope-imageedit-api.md section 5): each side 512..4096 px, file <= 10 MB,
JPEG/PNG/...; the mask has exactly the image's resolution, pure white = edit, pure black = keep.

A batch is never silently reduced to its first item: ``pair_batches`` gives one (image, mask)
pair per image, and the caller sends one task per pair.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import DownloadError, InputError
from .functions import MAX_SIDE_PX, MIN_SIDE_PX, ImageSize

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 10_000_000  # service limit is 10 MB; stay under it with margin for "MB" ambiguity

# Measured on this project's machine (Pillow 13.0, zlib 1.2.13, 2 CPUs) with a photo-like RGB image
# (three smooth sine gradients plus Gaussian grain, sigma in 0..1 units), best of 3, bytes vs level 6:
#   sigma 0.01  1024^2: L1 +17.0% 84 ms | L3 +15.3% 121 ms | L4 -0.1% 178 ms | L6 1.56 MB 264 ms
#               2048^2: L1 +17.0% 352 ms | L3 +15.2% 485 ms | L4 -0.1% 717 ms | L6 6.24 MB 1083 ms
#   sigma 0.02  1024^2: L1 +10.4% 111 ms | L3 +10.3% 114 ms | L4 +0.0% 162 ms | L6 1.94 MB 154 ms
#               2048^2: L1 +10.4% 428 ms | L3 +10.3% 440 ms | L4 +0.0% 613 ms | L6 7.77 MB 634 ms
#   sigma 0.05  2048^2: L1 +2.2% 426 ms | L4 +0.0% 458 ms | L6 9.86 MB 458 ms
# Levels 1..3 cost 10-17% more bytes on realistic grain (over the 5% budget), while level 4 gives
# level 6's bytes to within 0.1% and is up to 1.5x faster, so level 4 it is.
PNG_COMPRESS_LEVEL = 4

# JPEG fallback ladder. Pillow's libjpeg-turbo encodes 4096^2 in < 0.1 s per try, so a ladder is
# cheap. Measured at 4096^2: a photo-like image fits at 95 (5.4 MB); uniform noise needs 70 (9.3 MB).
JPEG_QUALITIES: tuple[int, ...] = (95, 90, 85, 80, 75, 70, 60, 50)

# Above this estimate (a multiple of max_bytes) the full PNG encode is skipped: at 4096^2 it takes
# ~2.5 s and a photo comes out at ~31 MB, far over the limit. The estimate compresses 1/8 of the rows
# (~0.3 s) and was within 0.01% of the full size on both photo-like and noise images.
_PNG_ESTIMATE_SKIP_FACTOR = 1.25
_SAMPLE_BAND_ROWS = 32
_SAMPLE_EVERY_ROWS = 256

_MASK_THRESHOLD = 0.5  # mask values >= this are white (edit), below are black (keep)


@dataclass(frozen=True)
class Encoded:
    """One file ready to send, as a data URI, with what was done to get it."""

    data_uri: str  # "data:image/png;base64,..." (or image/jpeg after the size fallback)
    mime: str
    byte_count: int  # size of the encoded file, before base64
    sent_size: ImageSize  # size actually sent
    original_size: ImageSize  # size the tensor had
    sha256: str  # hex digest of the encoded file bytes (a cache key)


# --- sizes -------------------------------------------------------------------------------------------


def image_size(image: torch.Tensor) -> ImageSize:
    """Width and height of an IMAGE ``[B,H,W,C]`` or of one image ``[H,W,C]``.

    Raises InputError for any other number of dimensions."""
    if image.dim() == 4:
        return ImageSize(int(image.shape[2]), int(image.shape[1]))
    if image.dim() == 3:
        return ImageSize(int(image.shape[1]), int(image.shape[0]))
    raise InputError(
        "an IMAGE must have shape [batch, height, width, channels]",
        value=f"shape {list(image.shape)}",
        fix="Connect an IMAGE output (for example from Load Image).",
    )


def plan_fit(size: ImageSize) -> ImageSize:
    """The size to send for an image of ``size``.

    Unchanged when both sides are within MIN_SIDE_PX..MAX_SIDE_PX (512..4096). Otherwise scaled by
    one factor on both sides, the one closest to 1 that brings both sides inside, so the aspect ratio
    is kept to within rounding (at most 0.5 px on the side not pinned to a bound). The arithmetic is
    exact (Fraction), so rounding can never push a side outside the bounds.

    Raises InputError when a side is not positive, or when no uniform scale fits: an aspect ratio
    beyond 8:1 (MAX/MIN), e.g. 5000x400 or 300x4000."""
    width_px, height_px = int(size[0]), int(size[1])
    if width_px <= 0 or height_px <= 0:
        raise InputError(
            "an image needs a positive width and height", value=f"{width_px}x{height_px}",
            fix="Connect a non-empty image.",
        )
    if all(MIN_SIDE_PX <= side <= MAX_SIDE_PX for side in (width_px, height_px)):
        return ImageSize(width_px, height_px)
    long_px, short_px = max(width_px, height_px), min(width_px, height_px)
    if long_px * MIN_SIDE_PX > short_px * MAX_SIDE_PX:
        raise InputError(
            f"each side must be {MIN_SIDE_PX}-{MAX_SIDE_PX} px, and no uniform scale brings an image "
            f"with an aspect ratio above {MAX_SIDE_PX // MIN_SIDE_PX}:1 inside",
            value=f"{width_px}x{height_px} ({long_px / short_px:.2f}:1)",
            fix=f"Crop or pad the image to an aspect ratio of at most {MAX_SIDE_PX // MIN_SIDE_PX}:1 "
            f"(e.g. {MAX_SIDE_PX}x{MIN_SIDE_PX}) before sending it.",
        )
    # Only one bound can be violated here: both at once would mean an aspect above 8:1.
    scale = Fraction(MAX_SIDE_PX, long_px) if long_px > MAX_SIDE_PX else Fraction(MIN_SIDE_PX, short_px)
    fitted = ImageSize(round(width_px * scale), round(height_px * scale))
    assert all(MIN_SIDE_PX <= side <= MAX_SIDE_PX for side in fitted), fitted  # exact math guarantees it
    return fitted


# --- batches -----------------------------------------------------------------------------------------


def pair_batches(
    image: torch.Tensor, mask: torch.Tensor | None
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Split IMAGE ``[B,H,W,C]`` into B pairs ``(image [H,W,C], mask [H,W] or None)``.

    MASK may be ``[H,W]`` or ``[Bm,H,W]``: Bm == 1 applies to every image, Bm == B pairs by index.
    Items are views (no copy). Raises InputError, before anything is sent, for: an image that is not
    a 4-D floating-point tensor with 3 or 4 channels, an empty batch, a mask that is not 2-D/3-D,
    a mask batch other than 1 or B, or a mask whose height/width differ from the image's."""
    _check_image_batch(image)
    batch = int(image.shape[0])
    if mask is None:
        return [(image[i], None) for i in range(batch)]

    if not isinstance(mask, torch.Tensor) or mask.dim() not in (2, 3):
        raise InputError(
            "a MASK must have shape [batch, height, width] or [height, width]",
            value=f"shape {list(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__,
            fix="Connect a MASK output (for example from Load Image or a mask editor).",
        )
    if not (mask.is_floating_point() or mask.dtype == torch.bool):
        raise InputError(
            "a MASK must hold floating-point values 0..1", value=f"dtype {mask.dtype}",
            fix="Connect a MASK output, or convert it with an image-to-mask node.",
        )
    # Same normalisation as ComfyUI's own mask nodes.
    masks = mask.reshape(-1, mask.shape[-2], mask.shape[-1])
    mask_batch = int(masks.shape[0])
    if mask_batch not in (1, batch):
        raise InputError(
            "the mask batch must hold one mask (used for every image) or one mask per image",
            value=f"{mask_batch} masks for {batch} images",
            fix="Use a single mask, or a mask batch of the same length as the image batch.",
        )
    img_size = image_size(image)
    mask_size = ImageSize(int(masks.shape[2]), int(masks.shape[1]))
    if mask_size != img_size:
        raise InputError(
            "the mask must have the same width and height as the image",
            value=f"mask {mask_size} for image {img_size}",
            fix="Draw or resize the mask at the image's size. Note that Load Image gives a 64x64 empty "
            "mask for a file without alpha; paint the mask in the mask editor or load it separately.",
        )
    return [(image[i], masks[0] if mask_batch == 1 else masks[i]) for i in range(batch)]


def _check_image_batch(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        raise InputError(
            "an IMAGE must have shape [batch, height, width, channels]",
            value=f"shape {list(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__,
            fix="Connect an IMAGE output (for example from Load Image).",
        )
    if int(image.shape[0]) == 0:
        raise InputError("the image batch is empty", value="0 images", fix="Connect at least one image.")
    _check_pixels(image)


def _check_pixels(image: torch.Tensor) -> None:
    """Channel count and dtype, shared by batches [B,H,W,C] and single images [H,W,C]."""
    channels = int(image.shape[-1])
    if channels not in (3, 4):
        raise InputError(
            "an IMAGE must have 3 (RGB) or 4 (RGBA) channels in its last dimension",
            value=f"{channels} channels (shape {list(image.shape)})",
            fix="Convert the image to RGB; a tensor in [B, C, H, W] order must be permuted to [B, H, W, C].",
        )
    if not image.is_floating_point():
        raise InputError(
            "an IMAGE must hold floating-point values 0..1", value=f"dtype {image.dtype}",
            fix="Convert it to float (divide 8-bit values by 255).",
        )


# --- encoding ----------------------------------------------------------------------------------------


def encode_image(image_hwc: torch.Tensor, *, max_bytes: int = MAX_FILE_BYTES) -> Encoded:
    """Encode one image ``[H,W,C]`` (float 0..1, C = 3 or 4) as the file to send.

    - Alpha is flattened onto white: ``out = rgb * a + 1 * (1 - a)`` (the service has no alpha rule,
      and white matches a blank page).
    - Values are clamped to 0..1 (NaN -> 0) and converted with ``round(x * 255)``.
    - Resized to ``plan_fit(size)`` when needed: LANCZOS when shrinking, BICUBIC when enlarging.
    - PNG (lossless) by default; if it is over ``max_bytes``, JPEG at the first quality of
      JPEG_QUALITIES that fits.

    Raises InputError for a bad shape/dtype, a size plan_fit refuses, or when even the lowest JPEG
    quality is over ``max_bytes``. Raises ValueError for a non-positive ``max_bytes``."""
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    if not isinstance(image_hwc, torch.Tensor) or image_hwc.dim() != 3:
        raise InputError(
            "one image must have shape [height, width, channels]",
            value=f"shape {list(image_hwc.shape)}" if isinstance(image_hwc, torch.Tensor) else type(image_hwc).__name__,
            fix="Split the batch first (pair_batches).",
        )
    _check_pixels(image_hwc)
    original = image_size(image_hwc)
    target = plan_fit(original)

    pil = Image.fromarray(_to_rgb_uint8(image_hwc))
    if target != original:
        shrinking = target.width < original.width
        pil = pil.resize(target, Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC)
        logger.debug("resized image %s -> %s", original, target)

    data, mime = _encode_within(pil, max_bytes=max_bytes)
    return _encoded(data, mime=mime, sent_size=target, original_size=original)


def encode_mask(mask_hw: torch.Tensor, *, sent_size: ImageSize) -> Encoded:
    """Encode one mask ``[H,W]`` (float 0..1 or bool) as a black/white grayscale PNG of ``sent_size``.

    Values >= 0.5 become pure white 255 (edit), the rest pure black 0 (keep). The mask is resized to
    ``sent_size`` (the size its image is sent at) with NEAREST, which commutes with the threshold, so
    the file holds only 0 and 255. The caller guarantees the mask had its image's original size
    (pair_batches checks it), so the same resize keeps them aligned.

    Raises InputError for a bad shape/dtype, or when no white (edit) pixel is left after the
    threshold and the resize."""
    if not isinstance(mask_hw, torch.Tensor) or mask_hw.dim() != 2:
        raise InputError(
            "one mask must have shape [height, width]",
            value=f"shape {list(mask_hw.shape)}" if isinstance(mask_hw, torch.Tensor) else type(mask_hw).__name__,
            fix="Split the mask batch first (pair_batches).",
        )
    if not (mask_hw.is_floating_point() or mask_hw.dtype == torch.bool):
        raise InputError(
            "a MASK must hold floating-point values 0..1", value=f"dtype {mask_hw.dtype}",
            fix="Connect a MASK output, or convert it with an image-to-mask node.",
        )
    original = ImageSize(int(mask_hw.shape[1]), int(mask_hw.shape[0]))
    target = ImageSize(int(sent_size[0]), int(sent_size[1]))

    # Threshold first: the resize then works on 1 byte per pixel, and NaN compares false (black).
    white = mask_hw.detach().cpu() >= _MASK_THRESHOLD if mask_hw.is_floating_point() else mask_hw.detach().cpu()
    had_white = bool(white.any())
    pixels = white.to(torch.uint8).mul_(255).numpy()
    pil = Image.fromarray(pixels)  # uint8 [H,W] -> mode "L"
    if target != original:
        pil = pil.resize(target, Image.Resampling.NEAREST)
    if pil.getextrema()[1] == 0:
        if had_white:
            # NEAREST shrinking can skip a small or thin white area entirely.
            raise InputError(
                "the mask has no white (edit) area left after scaling it to the size sent",
                value=f"mask {original} scaled to {target}",
                fix="Enlarge or thicken the white area of the mask.",
            )
        raise InputError(
            "the mask has no white (edit) area", value=f"an all-black {original} mask",
            fix="Paint the area to edit in white (values >= 0.5). Note that Load Image gives an empty mask "
            "for a file without alpha.",
        )
    data = _save(pil, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    if len(data) > MAX_FILE_BYTES:
        # Unreachable for 1-bit content within 4096^2 (at most ~2 MB); JPEG would break pure black/white.
        raise InputError(
            f"the mask file must be at most {MAX_FILE_BYTES} bytes", value=f"{len(data)} bytes",
            fix="Use a simpler mask.",
        )
    return _encoded(data, mime="image/png", sent_size=target, original_size=original)


def _to_rgb_uint8(image_hwc: torch.Tensor) -> np.ndarray:
    """[H,W,3|4] float -> uint8 [H,W,3], alpha flattened onto white, round(clamp(x) * 255)."""
    # `.to` may return the caller's own tensor; nan_to_num makes the copy that the in-place ops
    # below then work on, so the caller's IMAGE is never modified.
    x = image_hwc.detach().to(device="cpu", dtype=torch.float32)
    x = torch.nan_to_num(x, nan=0.0).clamp_(0.0, 1.0)
    if x.shape[-1] == 4:
        alpha = x[..., 3:4]
        rgb = x[..., :3].mul(alpha).add_(1.0 - alpha)  # rgb * a + white * (1 - a)
    else:
        rgb = x
    return np.ascontiguousarray(rgb.mul_(255.0).round_().to(torch.uint8).numpy())


def _encode_within(pil: Image.Image, *, max_bytes: int) -> tuple[bytes, str]:
    """PNG if it fits in ``max_bytes``, else the best JPEG that does. Returns (bytes, mime)."""
    width_px, height_px = pil.size
    raw_bytes = width_px * height_px * 3
    # A PNG can only exceed the limit when the raw pixels do (stored deflate adds < 0.1%).
    if raw_bytes <= max_bytes * 0.99 or _estimate_png_bytes(pil) <= max_bytes * _PNG_ESTIMATE_SKIP_FACTOR:
        png = _save(pil, "PNG", compress_level=PNG_COMPRESS_LEVEL)
        if len(png) <= max_bytes:
            return png, "image/png"
        png_note = f"{len(png)} bytes"
    else:
        png_note = "estimated over the limit"
    for quality in JPEG_QUALITIES:
        jpeg = _save(pil, "JPEG", quality=quality)
        if len(jpeg) <= max_bytes:
            logger.info(
                "PNG of %dx%d is %s (> %d); sending JPEG quality %d (%d bytes)",
                width_px, height_px, png_note, max_bytes, quality, len(jpeg),
            )
            return jpeg, "image/jpeg"
    raise InputError(
        f"the image file must be at most {max_bytes} bytes, and even JPEG quality {JPEG_QUALITIES[-1]} "
        "is larger",
        value=f"{width_px}x{height_px}, {len(jpeg)} bytes as JPEG",
        fix="Downscale the image (or reduce its noise/detail) before sending it.",
    )


def _estimate_png_bytes(pil: Image.Image) -> float:
    """PNG size extrapolated from bands of rows spread over the image (1/8 of it)."""
    width_px, height_px = pil.size
    pixels = np.asarray(pil)
    bands = [pixels[top : top + _SAMPLE_BAND_ROWS] for top in range(0, height_px, _SAMPLE_EVERY_ROWS)]
    sample = np.ascontiguousarray(np.concatenate(bands))
    sample_bytes = len(_save(Image.fromarray(sample), "PNG", compress_level=PNG_COMPRESS_LEVEL))
    return sample_bytes * height_px / sample.shape[0]


def _save(pil: Image.Image, fmt: str, **options: int) -> bytes:
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _encoded(data: bytes, *, mime: str, sent_size: ImageSize, original_size: ImageSize) -> Encoded:
    return Encoded(
        data_uri=f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}",
        mime=mime,
        byte_count=len(data),
        sent_size=sent_size,
        original_size=original_size,
        sha256=hashlib.sha256(data).hexdigest(),
    )


# --- decoding ----------------------------------------------------------------------------------------


def decode_image(data: bytes) -> np.ndarray:
    """Result file bytes -> uint8 ``[H,W,3]`` (C-contiguous, writable).

    RGBA/LA/transparent palette images are flattened onto white with the same rule as encode_image;
    palette, grayscale and CMYK are converted to RGB. Only the first frame of an animation is used.

    Raises DownloadError when the bytes do not decode as an image (e.g. an HTML/XML error page, a
    truncated file), or when Pillow refuses the image as a decompression bomb."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            return _to_rgb_array(opened)
    except Image.DecompressionBombError as exc:
        raise DownloadError(f"the downloaded result is too large to decode safely ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        looks_like_text = data[:1] in (b"<", b"{")
        hint = "; it looks like a text/XML error page" if looks_like_text else ""
        raise DownloadError(
            f"the downloaded result is not an image ({len(data)} bytes{hint}: {type(exc).__name__})"
        ) from exc


def _to_rgb_array(pil: Image.Image) -> np.ndarray:
    has_alpha = pil.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        pil.mode == "P" and "transparency" in pil.info
    )
    if not has_alpha:
        return np.array(pil.convert("RGB"))
    rgba = np.asarray(pil.convert("RGBA"), dtype=np.float32)
    alpha = rgba[..., 3:4] / 255.0
    flat = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return np.rint(flat).astype(np.uint8)


def stack_images(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 ``[H,W,3]`` arrays -> one float32 IMAGE ``[n,H,W,3]`` in 0..1 (value / 255).

    The output is allocated once and filled image by image, so peak extra memory is one output
    tensor plus the inputs (no float copy of the whole batch). Raises InputError when the sizes
    differ (a ComfyUI IMAGE batch has one size), ValueError for an empty sequence or arrays that are
    not uint8 [H,W,3] (decode_image always gives those)."""
    if len(images) == 0:
        raise ValueError("stack_images needs at least one image")
    for arr in images:
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected uint8 [H,W,3] arrays, got {arr.dtype} {list(arr.shape)}")
    sizes = [ImageSize(int(arr.shape[1]), int(arr.shape[0])) for arr in images]
    if len(set(sizes)) > 1:
        raise InputError(
            "a ComfyUI IMAGE batch needs images of equal size, and the results differ",
            value="sizes " + ", ".join(str(s) for s in sizes),
            fix="Send one image at a time (batch of 1 and n=1), or resize the results to one size.",
        )
    height_px, width_px = images[0].shape[:2]
    out = torch.empty((len(images), height_px, width_px, 3), dtype=torch.float32)
    out_np = out.numpy()  # shares memory with `out`
    for index, arr in enumerate(images):
        # Converts uint8 -> float32 in small buffered chunks straight into the output slice.
        np.divide(arr, np.float32(255.0), out=out_np[index])
    return out
