"""ComfyUI IMAGE/MASK tensors <-> the files wanx2.1-imageedit accepts and returns. Pure functions;
the only module of ``nodes.core`` that imports torch (the PNG writer, ``png.py``, is numpy only).

Host conventions (comfyui-notes.md section f):

- IMAGE is ``torch.Tensor [B, H, W, C]``, floating point, 0..1, C = 3 (RGB) or 4 (RGBA).
- MASK is ``[B, H, W]`` (or ``[H, W]``), floating point, 0..1, 1 = selected. LoadImage's mask is
  1 - alpha, and a 64x64 zeros tensor when the file has no alpha.

Service rules (dashscope-imageedit-api.md section 5): each side 512..4096 px, file <= 10 MB,
JPEG/PNG/BMP/TIFF/WEBP; the mask has exactly the image's resolution, pure white = edit, pure black
= keep.

Check once, encode later: ``check_batch`` runs every rule that can refuse a batch (shapes, dtypes,
mask pairing and size, NaN / infinite values, empty masks, the 8:1 aspect limit) without encoding
anything, and gives one ``Checked`` per image (a batch is never reduced to its first item). ``encode``
then trusts a Checked and only writes files. The checks read the caller's tensors in place (one
min/max reduction per image, no float copy) and never write them.

What is sent (section 5.1: "keep the original file < 7 MB when Base64-encoding ... use a URL for 7-10
MB files"; this pack sends data URIs only, so ``MAX_BASE64_FILE_BYTES`` = 7 MB, decimal):

- lossless PNG (our parallel writer, ``png.py``) when the file is at most 7 MB;
- otherwise JPEG at the first quality of ``JPEG_QUALITIES`` (95, 90, ...) that is at most 7 MB.

Lossless WebP (the service takes it, and so does nodes/emulator) was measured as the step between and
left out. Pillow 13.0 / libwebp 1.6, 2 CPUs, against our PNG, on gradients + Gaussian noise (sigma
0.005 and 0.02), 1/f-textured "detailed photos" and noisy illustrations at 2048^2, 3000^2 and 4096^2
(19 images): WebP method 0 (its fastest) is 1.09-1.21x the PNG's bytes on every one; method 1 is
0.90-1.03x the bytes but takes 0.6-8.8 s where the PNG takes 0.07-1.0 s; method 4 (the default) takes
1.3-39 s and is at most 2% smaller than method 1. In no measured image was any WebP under 7 MB while
the PNG was over it (e.g. 2048^2 sigma 0.02: PNG 7.44 MB, WebP m1 7.47 MB in 2.2 s; JPEG 95 1.34 MB in
0.02 s). On clean drawings WebP is 0.3-0.65x the PNG, but there the PNG is far under 7 MB anyway
(<= 2.3 MB at 4096^2). JPEG 95 of the photo-like images: 0.5-3.4 MB at 2048^2, 1.7-5.3 MB at 4096^2
(textured: 13 MB, so lower rungs); uniform noise at 4096^2, the worst case, fits at quality 50 (6.9 MB).

The rule as built (check + encode, same machine): 2048^2 sigma 0.02 -> JPEG 95, 1.34 MB (the 10 MB rule
sent its 7.44 MB PNG, a 9.9 MB data URI); 2048^2 sigma 0.005 -> PNG 4.43 MB; 2048^2 textured -> JPEG 95
3.35 MB (PNG 10.1 MB); 3000^2 -> JPEG 95 0.95-2.86 MB, textured JPEG 90 5.09 MB; 4096^2 -> JPEG 95
1.73-5.31 MB, textured JPEG 80 5.65 MB; 0.13-0.75 s each, of which the checks take 5-40 ms.

Results: ``check_result_size`` refuses, before anything is sent, a request whose results could not be
decoded or held (``MAX_RESULT_SIDE_PX`` per side, ``RESULT_MEMORY_BYTES`` for all results), and
``decode_image(data, max_pixels=decode_limit_px(expected))`` decodes a result beyond Pillow's own
decompression-bomb limit (about 179 Mpx: a 3400^2 input upscaled 4x is 13600^2 = 185 Mpx) without
touching Pillow's process-wide setting.
"""

from __future__ import annotations

import base64
import ctypes
import functools
import hashlib
import io
import logging
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from .errors import Advice, DownloadError, InputError
from .functions import MAX_SIDE_PX, MIN_SIDE_PX, ImageSize
from .png import DEFAULT_TUNING, PixelRows, PngTuning, codec_pool, encode_png, encode_png_rows

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 10_000_000  # the service's limit, 10 MB (section 5.1); decimal, the smaller reading of "MB"
MAX_BASE64_FILE_BYTES = 7_000_000  # DashScope's guidance for base64 data URIs (section 5.1): files under 7 MB

# JPEG fallback ladder. Pillow's libjpeg-turbo encodes 4096^2 in < 0.13 s per try, so a ladder is
# cheap. Measured at 4096^2: a photo-like image fits at 95 (5.3 MB); uniform noise needs 50 (6.9 MB),
# and 40 (5.8 MB) is the margin below it.
JPEG_QUALITIES: tuple[int, ...] = (95, 90, 85, 80, 75, 70, 60, 50, 40)
MASK_PNG_LEVEL = 4  # masks go through Pillow's PNG: 1-bit content it compresses fast and well

# When the raw pixels are over max_bytes (only then can a PNG be: stored deflate adds < 0.1%), the
# PNG size is first estimated from bands of rows (1/8 of the image, ~1/7 of a full PNG's time) and
# the full PNG is skipped when the estimate is over the limit by more than the estimate's error: at
# 4096^2 a photo's PNG is ~31 MB, far over; at 2048^2 a photo-like image's is 7.44 MB (estimated
# 7.54), and making it only to throw it away took 60% of the encode. The estimate was within 1% of
# the full size on photo-like and noise images; flat images come out underestimated, which only
# costs the full encode. The JPEG ladder starts at the first quality whose estimate from the same
# bands fits (within 0.5% of the full size at 95..50 on noise, photo-like and textured 3000^2-4096^2
# images), so a 4096^2 noise image makes two full JPEGs instead of eight.
_PNG_ESTIMATE_SKIP_FACTOR = 1.05
_SAMPLE_BAND_ROWS = 32
_SAMPLE_EVERY_ROWS = 256

_DECODE_BAND_ROWS = 128  # a result goes into its output slot this many rows at a time

_MASK_THRESHOLD = 0.5  # mask values >= this are white (edit), below are black (keep)

# Results. The documented parameters make at most 4096 * upscale_factor 4 = 16384 px per side
# (expand at most doubles a side, spec section 6). While a run downloads, each result pixel is held
# as 8-bit RGB (3 bytes); the IMAGE batch handed to ComfyUI is float32 RGB (12 bytes).
MAX_RESULT_SIDE_PX = 16_384
MAX_RESULT_PIXELS = MAX_RESULT_SIDE_PX * MAX_RESULT_SIDE_PX
BYTES_PER_RESULT_PIXEL = 3 + 12
RESULT_MEMORY_BYTES = 8 * 1024**3  # all results of one run: e.g. 2 results of 16384^2 (8.1 GB) fit, 4 do not
# The output-size rules are inferred (spec sections 6 and 15): a result may be up to 2x each side of
# the prediction and still decode. Never below Pillow's own refusal limit (2 * its MAX_IMAGE_PIXELS
# default), so nothing that decoded before is refused now.
_RESULT_SLACK = 4
_PILLOW_REFUSAL_PIXELS = 2 * 89_478_485

_MASK_NAN_FIX = "Check the node that made the mask, or replace the values with a Clamp/Nan-to-num step."
_IMAGE_NAN_FIX = ("Check the node that produced it (a VAE decode in fp16 can overflow), or replace them with a "
                  "Clamp/Nan-to-num step.")


@dataclass(frozen=True)
class Encoded:
    """One file ready to send, as a data URI, with what was done to get it."""

    data_uri: str  # "data:image/png;base64,..." (or image/jpeg after the size fallback)
    mime: str
    byte_count: int  # size of the encoded file, before base64
    sent_size: ImageSize  # size actually sent
    original_size: ImageSize  # size the tensor had
    sha256: str  # hex digest of the encoded file bytes (a cache key)
    notes: tuple[str, ...] = ()  # what the encoder chose that the user may want to know (the JPEG fallback)


@dataclass(frozen=True, eq=False)  # holds tensors: compared by identity
class Checked:
    """One image of a batch that passed every rule, ready for ``encode``. Holds views of the caller's
    tensors, which must not change before the encode (the encoder does not look again)."""

    index: int  # 0-based position in the batch
    count: int  # images in the batch
    image: torch.Tensor  # [H,W,C] view of the caller's IMAGE
    mask: torch.Tensor | None  # [H,W] view of the caller's MASK, None without a mask
    original_size: ImageSize
    sent_size: ImageSize  # plan_fit(original_size)
    notes: tuple[str, ...]  # what will be done to the input on the way: resized, alpha flattened, clamped, binarized
    # The mask as sent: uint8 [h,w] of 0/255 at sent_size (read-only). The check makes it, because
    # "no white left after the resize" can only be checked on it.
    mask_pixels: np.ndarray | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"image {self.index + 1} of {self.count}"


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


# --- checks ------------------------------------------------------------------------------------------


def check_batch(image: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[Checked, ...]:
    """Every rule that can refuse IMAGE ``[B,H,W,C]`` (+ MASK), checked before anything is encoded or sent.

    MASK may be ``[H,W]`` or ``[Bm,H,W]``: Bm == 1 applies to every image, Bm == B pairs by index.
    Raises InputError, naming the image where it matters, for: an image that is not a 4-D
    floating-point tensor with 3 or 4 channels, an empty batch, a mask that is not 2-D/3-D or not
    float/bool, a mask batch other than 1 or B, a mask whose height/width differ from the image's, an
    aspect ratio beyond 8:1, NaN or infinite values in an image or a mask, a mask with no white, or a
    mask whose white vanishes in the resize to the sent size. The batch-wide rules come first, so a
    malformed batch is refused before any pixel is read."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        raise InputError(
            "an IMAGE must have shape [batch, height, width, channels]",
            value=f"shape {list(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__,
            fix="Connect an IMAGE output (for example from Load Image).",
        )
    if int(image.shape[0]) == 0:
        raise InputError("the image batch is empty", value="0 images", fix="Connect at least one image.")
    _check_pixel_format(image)
    batch = int(image.shape[0])
    original = image_size(image)
    masks = _mask_batch(mask, batch=batch, size=original)
    sent = plan_fit(original)

    shared_mask: tuple[np.ndarray, tuple[str, ...]] | None = None
    items = []
    for index in range(batch):
        notes = list(_image_value_notes(image[index], index=index, count=batch))
        if original != sent:
            notes.insert(0, f"resized {original} -> {sent} (the service takes sides of {MIN_SIDE_PX}-{MAX_SIDE_PX} px; "
                            "one scale for both sides)")
        mask_hw, pixels = None, None
        if masks is not None:
            mask_hw = masks[0] if len(masks) == 1 else masks[index]
            if len(masks) > 1 or shared_mask is None:  # one mask for every image is checked once
                where = ("" if batch == 1 else "the mask used for every image" if len(masks) == 1
                         else f"image {index + 1} of {batch}")
                shared_mask = _checked_mask(mask_hw, original=original, sent=sent, where=where)
            pixels, mask_notes = shared_mask
            notes += mask_notes
        items.append(Checked(index=index, count=batch, image=image[index], mask=mask_hw, original_size=original,
                             sent_size=sent, notes=tuple(notes), mask_pixels=pixels))
    return tuple(items)


def check_image(image_hwc: torch.Tensor, mask_hw: torch.Tensor | None = None) -> Checked:
    """``check_batch`` for one image ``[H,W,C]`` and its mask ``[H,W]`` (a batch of one)."""
    if not isinstance(image_hwc, torch.Tensor) or image_hwc.dim() != 3:
        raise InputError(
            "one image must have shape [height, width, channels]",
            value=f"shape {list(image_hwc.shape)}" if isinstance(image_hwc, torch.Tensor) else type(image_hwc).__name__,
            fix="Check a whole IMAGE batch with check_batch.",
        )
    if mask_hw is not None and (not isinstance(mask_hw, torch.Tensor) or mask_hw.dim() != 2):
        raise InputError(
            "one mask must have shape [height, width]",
            value=f"shape {list(mask_hw.shape)}" if isinstance(mask_hw, torch.Tensor) else type(mask_hw).__name__,
            fix="Check a whole MASK batch with check_batch.",
        )
    return check_batch(image_hwc[None], None if mask_hw is None else mask_hw[None])[0]


def _check_pixel_format(image: torch.Tensor) -> None:
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


def _mask_batch(mask: torch.Tensor | None, *, batch: int, size: ImageSize) -> torch.Tensor | None:
    """MASK as a view ``[Bm,H,W]`` after the shape, dtype, batch and size rules; None without a mask."""
    if mask is None:
        return None
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
    masks = mask.reshape(-1, mask.shape[-2], mask.shape[-1])  # the same normalisation as ComfyUI's mask nodes
    mask_batch = int(masks.shape[0])
    if mask_batch not in (1, batch):
        raise InputError(
            "the mask batch must hold one mask (used for every image) or one mask per image",
            value=f"{mask_batch} masks for {batch} images",
            fix="Use a single mask, or a mask batch of the same length as the image batch.",
        )
    mask_size = ImageSize(int(masks.shape[2]), int(masks.shape[1]))
    if mask_size != size:
        raise InputError(
            "the mask must have the same width and height as the image",
            value=f"mask {mask_size} for image {size}",
            fix=Advice("Draw or resize the mask at the image's size. Note that Load Image gives a 64x64 empty "
                       "mask for a file without alpha; paint the mask in the mask editor or load it separately.",
                       cli=f"Give --mask a file of exactly {size} px (white = edit), the size of the image."),
        )
    return masks


def _image_value_notes(image_hwc: torch.Tensor, *, index: int, count: int) -> tuple[str, ...]:
    """The value rules of one image, from one min/max pass over the caller's memory (NaN and
    infinities propagate into the min or the max); the exact count only on the way to refusing."""
    low, high = (float(v) for v in torch.aminmax(image_hwc.detach()))
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = int(torch.count_nonzero(~torch.isfinite(image_hwc.detach())))
        raise InputError(f"the image has {bad} NaN / infinite pixel values", value=f"image {index + 1} of {count}",
                         fix=_IMAGE_NAN_FIX)
    notes = []
    if low < 0.0 or high > 1.0:
        notes.append(f"values from {low:.3g} to {high:.3g} clamped to 0..1")
    if int(image_hwc.shape[-1]) == 4 and float(image_hwc[..., 3].detach().amin()) < 1.0:
        notes.append("alpha flattened onto white (the service has no transparency)")
    return tuple(notes)


def _checked_mask(mask_hw: torch.Tensor, *, original: ImageSize, sent: ImageSize,
                  where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """One mask's value rules, and the mask as sent: uint8 0/255 at ``sent`` (NEAREST, which
    commutes with the threshold, so the file holds only 0 and 255)."""
    mask_hw = mask_hw.detach()
    suffix = f" ({where})" if where else ""
    notes = []
    if mask_hw.is_floating_point():
        low, high = (float(v) for v in torch.aminmax(mask_hw))
        if not (math.isfinite(low) and math.isfinite(high)):
            bad = int(torch.count_nonzero(~torch.isfinite(mask_hw)))
            raise InputError(f"the mask has {bad} NaN / infinite values", value=f"mask {original}{suffix}",
                             fix=_MASK_NAN_FIX)
        gray = int(torch.count_nonzero((mask_hw > 0.0) & (mask_hw < 1.0)))
        if gray:
            notes.append(f"mask binarized at {_MASK_THRESHOLD}: {gray} pixels between 0 and 1 became black or white")
        white = mask_hw >= _MASK_THRESHOLD  # a new tensor: the caller's mask is only read
    else:
        white = mask_hw
    pixels = white.to(torch.uint8).mul_(255).cpu().numpy()
    had_white = bool(pixels.any())
    pil = Image.fromarray(pixels)  # uint8 [H,W] -> mode "L"
    if sent != original:
        pil = pil.resize(sent, Image.Resampling.NEAREST)
        pixels = np.asarray(pil)
        notes.append(f"mask resized {original} -> {sent} with its image (nearest neighbour)")
    if not pixels.any():
        if had_white:
            # NEAREST shrinking can skip a small or thin white area entirely.
            raise InputError(
                "the mask has no white (edit) area left after scaling it to the size sent",
                value=f"mask {original} scaled to {sent}{suffix}",
                fix="Enlarge or thicken the white area of the mask.",
            )
        raise InputError(
            "the mask has no white (edit) area", value=f"an all-black {original} mask{suffix}",
            fix=Advice("Paint the area to edit in white (values >= 0.5). Note that Load Image gives an empty mask "
                       "for a file without alpha.",
                       cli="Paint the area to edit white in the --mask file (gray from 50% counts as white)."),
        )
    pixels.flags.writeable = False  # shared by every image of the batch when there is one mask
    return pixels, tuple(notes)


# --- encoding ----------------------------------------------------------------------------------------


def encode(checked: Checked, *, max_bytes: int = MAX_BASE64_FILE_BYTES,
           tuning: PngTuning = DEFAULT_TUNING) -> tuple[Encoded, Encoded | None]:
    """The files to send for one checked image: (image, mask or None)."""
    return (encode_image(checked, max_bytes=max_bytes, tuning=tuning),
            encode_mask(checked) if checked.mask_pixels is not None else None)


def encode_image(checked: Checked, *, max_bytes: int = MAX_BASE64_FILE_BYTES,
                 tuning: PngTuning = DEFAULT_TUNING) -> Encoded:
    """Encode a checked image as the file to send (no rule is checked again).

    - Alpha is flattened onto white: ``out = rgb * a + 1 * (1 - a)`` (the service has no alpha rule,
      and white matches a blank page).
    - Values are clamped to 0..1 and converted with ``round(x * 255)``.
    - Resized to ``checked.sent_size`` when needed: LANCZOS when shrinking, BICUBIC when enlarging.
    - PNG (lossless) when it is at most ``max_bytes``, else JPEG at the first quality of
      JPEG_QUALITIES that fits (see the module notes for why not WebP).

    Raises InputError when even the lowest JPEG quality is over ``max_bytes`` (the one rule that
    needs the encode; at the default 7 MB no 4096^2 image measured reaches it). Raises ValueError
    for a non-positive ``max_bytes``."""
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    original, target = checked.original_size, checked.sent_size
    source = PixelRows(_float_rgb(checked.image))  # converted to 8 bits band by band, on the codec threads
    if target != original:
        shrinking = target.width < original.width
        resized = Image.fromarray(source.full(tuning=tuning)).resize(
            target, Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC)
        source = PixelRows(np.asarray(resized))
        logger.debug("resized image %s -> %s", original, target)
    data, mime, notes = _encode_within(source, max_bytes=max_bytes, tuning=tuning)
    return _encoded(data, mime=mime, sent_size=target, original_size=original, notes=notes, tuning=tuning)


def encode_mask(checked: Checked) -> Encoded:
    """The checked mask as a black/white grayscale PNG of ``checked.sent_size`` (made by the check).

    Raises ValueError when the image was checked without a mask."""
    if checked.mask_pixels is None:
        raise ValueError(f"{checked.label} was checked without a mask")
    buffer = io.BytesIO()
    Image.fromarray(checked.mask_pixels).save(buffer, format="PNG", compress_level=MASK_PNG_LEVEL)
    # At most ~2 MB for 1-bit content within 4096^2, under MAX_BASE64_FILE_BYTES; JPEG would break pure black/white.
    return _encoded(buffer.getvalue(), mime="image/png", sent_size=checked.sent_size,
                    original_size=checked.original_size, notes=(), tuning=DEFAULT_TUNING)


def _float_rgb(image_hwc: torch.Tensor) -> np.ndarray:
    """[H,W,3|4] float -> float [H,W,3] numpy on the CPU, alpha flattened onto white. For an RGB
    float32/float16 CPU tensor this is a view of the caller's own memory: it is only ever read (the
    8-bit conversion widens float16 per band)."""
    x = image_hwc.detach().cpu()
    if x.dtype not in (torch.float32, torch.float16) or x.shape[-1] == 4:
        x = x.to(torch.float32)
    if x.shape[-1] == 4:
        x = x.clamp(0.0, 1.0)  # a copy: the caller's IMAGE is untouched
        alpha = x[..., 3:4]
        x = x[..., :3].mul(alpha).add_(1.0 - alpha)  # rgb * a + white * (1 - a)
    return x.numpy()


def _encode_within(source: PixelRows, *, max_bytes: int, tuning: PngTuning) -> tuple[bytes, str, tuple[str, ...]]:
    """PNG if it fits in ``max_bytes``, else the best JPEG that does. Returns (bytes, mime, notes)."""
    height_px, width_px = source.height, source.width
    sampled = source.height >= 2 * _SAMPLE_EVERY_ROWS
    estimate = None
    if sampled and source.nbytes > max_bytes:
        estimate = _estimated(source, lambda sample: encode_png(sample, tuning=tuning))
    if estimate is None or estimate <= max_bytes * _PNG_ESTIMATE_SKIP_FACTOR:
        png = encode_png_rows(source, tuning=tuning)
        if len(png) <= max_bytes:
            return png, "image/png", ()
        png_note = f"{len(png) / 1e6:.2f} MB"
    else:
        png_note = f"about {estimate / 1e6:.0f} MB (estimated)"
    pixels = source.full(tuning=tuning)
    for quality in _jpeg_ladder(pixels, max_bytes=max_bytes) if sampled else JPEG_QUALITIES:
        jpeg = _jpeg(pixels, quality=quality)
        if len(jpeg) <= max_bytes:
            note = (f"sent as JPEG quality {quality} ({len(jpeg) / 1e6:.2f} MB): the lossless PNG would be {png_note}, "
                    f"over the {max_bytes / 1e6:g} MB limit for base64 images")
            logger.info("%dx%d %s", width_px, height_px, note)
            return jpeg, "image/jpeg", (note,)
    raise InputError(
        f"the image file must be at most {max_bytes} bytes, and even JPEG quality {JPEG_QUALITIES[-1]} "
        "is larger",
        value=f"{width_px}x{height_px}, {len(jpeg)} bytes as JPEG",
        fix="Downscale the image (or reduce its noise/detail) before sending it.",
    )


def _estimated(source: PixelRows, encode: Callable[[np.ndarray], bytes]) -> float:
    """A file size extrapolated from bands of rows spread over the image (1/8 of it)."""
    height_px = source.height
    bands = [source.rows(top, min(top + _SAMPLE_BAND_ROWS, height_px))
             for top in range(0, height_px, _SAMPLE_EVERY_ROWS)]
    sample = np.concatenate(bands).reshape(-1, source.width, source.channels)
    return len(encode(sample if source.channels == 3 else sample[..., 0])) * height_px / sample.shape[0]


def _jpeg_ladder(pixels: np.ndarray, *, max_bytes: int) -> tuple[int, ...]:
    """JPEG_QUALITIES from the first one whose estimate fits (1% slack: the full file decides)."""
    rows = PixelRows(pixels)
    for index, quality in enumerate(JPEG_QUALITIES):
        if _estimated(rows, functools.partial(_jpeg, quality=quality)) <= max_bytes * 1.01:
            return JPEG_QUALITIES[index:]
    return JPEG_QUALITIES[-1:]


def _jpeg(pixels: np.ndarray, *, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _encoded(data: bytes, *, mime: str, sent_size: ImageSize, original_size: ImageSize, notes: tuple[str, ...],
             tuning: PngTuning) -> Encoded:
    # The digest runs on a codec thread (hashlib releases the GIL) while base64 runs here.
    digest = codec_pool(tuning.workers).submit(_sha256_hex, data)
    data_uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return Encoded(data_uri=data_uri, mime=mime, byte_count=len(data), sent_size=sent_size,
                   original_size=original_size, sha256=digest.result(), notes=notes)


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- results -----------------------------------------------------------------------------------------


def result_memory_bytes(expected: ImageSize, *, count: int) -> int:
    """Memory that ``count`` results of ``expected`` size take once downloaded and stacked."""
    return count * expected.width * expected.height * BYTES_PER_RESULT_PIXEL


def check_result_size(expected: ImageSize, *, count: int = 1, memory_limit_bytes: int = RESULT_MEMORY_BYTES) -> None:
    """Refuse, before anything is sent (and paid), results that could not be handed back.

    ``expected`` is one result's predicted size (functions.output_size of the sent size) and ``count``
    every result of the run (images x n), since they all end up in one IMAGE batch. Raises InputError
    when a side is over MAX_RESULT_SIDE_PX, or when the results need more than ``memory_limit_bytes``
    (BYTES_PER_RESULT_PIXEL per pixel: the downloaded 8-bit file plus the float32 IMAGE)."""
    if expected.width > MAX_RESULT_SIDE_PX or expected.height > MAX_RESULT_SIDE_PX:
        raise InputError(
            f"a result may have at most {MAX_RESULT_SIDE_PX} px per side to be decoded",
            value=f"a predicted {expected} result",
            fix="Lower the enlargement (upscale_factor or the expand scales), or send a smaller image.",
        )
    need = result_memory_bytes(expected, count=count)
    if need > memory_limit_bytes:
        raise InputError(
            f"the results of one run must fit in {memory_limit_bytes / 2**30:.3g} GiB of memory "
            f"({BYTES_PER_RESULT_PIXEL} bytes per pixel: the 8-bit download plus the float32 IMAGE)",
            value=f"{count} result{'s' if count != 1 else ''} of {expected} = {need / 2**30:.1f} GiB",
            fix="Ask for fewer results (n), send fewer images per run, or lower the enlargement "
            "(upscale_factor or the expand scales).",
        )


def decode_limit_px(expected: ImageSize) -> int:
    """The pixel limit for decoding a result predicted at ``expected``: 4x its pixels (each side may be
    twice the inferred rule's), at least Pillow's own refusal limit, at most MAX_RESULT_PIXELS. A
    prediction within check_result_size always decodes."""
    return min(MAX_RESULT_PIXELS, max(_RESULT_SLACK * expected.width * expected.height, _PILLOW_REFUSAL_PIXELS))


# --- decoding ----------------------------------------------------------------------------------------


def decode_image(data: bytes, *, max_pixels: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Result file bytes -> uint8 ``[H,W,3]`` (C-contiguous, writable); or, when ``out`` (float32
    ``[H,W,3]``, e.g. a ResultBatch slot) has the file's size, straight into ``out`` as value / 255
    in bands of rows, returning ``out``: no 8-bit copy of the whole image is made.

    RGBA/LA/transparent palette images are flattened onto white with the same rule as encode_image;
    palette, grayscale and CMYK are converted to RGB. Only the first frame of an animation is used.

    ``max_pixels`` None: Pillow's process-wide decompression-bomb limit applies, as for any file.
    Given (see ``decode_limit_px``): that limit is replaced, for this call only, by ``max_pixels``,
    checked on the header before any pixel is decoded; Pillow's setting is never changed, so other
    threads of the host keep theirs. (A few Pillow plugins, e.g. WebP and MPO, still apply Pillow's
    limit inside themselves; the results are PNG.)

    Raises DownloadError when the bytes do not decode as an image (e.g. an HTML/XML error page, a
    truncated file), or when the image is over the pixel limit."""
    try:
        with _open(data, max_pixels=max_pixels) as opened:
            opened.load()
            if out is None or out.shape != (opened.height, opened.width, 3):
                return _to_rgb_array(opened)
            for top in range(0, opened.height, _DECODE_BAND_ROWS):
                bottom = min(top + _DECODE_BAND_ROWS, opened.height)
                _to_float(_to_rgb_array(opened.crop((0, top, opened.width, bottom))), out=out[top:bottom])
            return out
    except Image.DecompressionBombError as exc:
        raise DownloadError(f"the downloaded result is too large to decode safely ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        looks_like_text = data[:1] in (b"<", b"{")
        hint = "; it looks like a text/XML error page" if looks_like_text else ""
        raise DownloadError(
            f"the downloaded result is not an image ({len(data)} bytes{hint}: {type(exc).__name__})"
        ) from exc


def _open(data: bytes, *, max_pixels: int | None) -> Image.Image:
    if max_pixels is None:
        return Image.open(io.BytesIO(data))
    opened = _open_without_pillow_limit(data)
    width_px, height_px = opened.size
    if width_px * height_px > max_pixels:
        opened.close()
        raise DownloadError(
            f"the downloaded result is {width_px}x{height_px} ({width_px * height_px} px), over the "
            f"{max_pixels} px this request can decode; it was not decoded")
    return opened


def _open_without_pillow_limit(data: bytes) -> ImageFile.ImageFile:
    """Image.open's format probe (same plugins, same order) without its size check, which reads
    Pillow's process-wide MAX_IMAGE_PIXELS: Pillow has no per-call limit, and setting the global,
    even briefly, would change it for every thread of the host. Reads only the header."""
    prefix = data[:16]
    tried: set[str] = set()
    for load_plugins in (Image.preinit, Image.init):
        load_plugins()
        for format_id in [f for f in Image.ID if f not in tried]:
            tried.add(format_id)
            factory, accept = Image.OPEN[format_id]
            verdict = accept(prefix) if accept is not None else True
            if isinstance(verdict, str) or not verdict:  # a str is Pillow's "maybe, but warn"
                continue
            try:
                return factory(io.BytesIO(data), "")
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue
    raise UnidentifiedImageError("cannot identify image file")


def _to_rgb_array(pil: Image.Image) -> np.ndarray:
    has_alpha = pil.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        pil.mode == "P" and "transparency" in pil.info
    )
    if not has_alpha:
        # np.array copies once from Pillow's buffer; convert() would add a copy for RGB files.
        return np.array(pil if pil.mode == "RGB" else pil.convert("RGB"))
    rgba = np.asarray(pil.convert("RGBA"), dtype=np.float32)
    alpha = rgba[..., 3:4] / 255.0
    flat = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return np.rint(flat).astype(np.uint8)


def stack_images(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 ``[H,W,3]`` arrays (or float32 ones in 0..1) -> one float32 IMAGE ``[n,H,W,3]`` in 0..1
    (value / 255).

    The output is allocated once and filled image by image, so peak extra memory is one output
    tensor plus the inputs (no float copy of the whole batch). Raises InputError when the sizes
    differ (a ComfyUI IMAGE batch has one size), ValueError for an empty sequence or arrays that are
    not uint8/float32 [H,W,3] (decode_image always gives uint8)."""
    if len(images) == 0:
        raise ValueError("stack_images needs at least one image")
    for arr in images:
        if arr.dtype not in (np.uint8, np.float32) or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected uint8 or float32 [H,W,3] arrays, got {arr.dtype} {list(arr.shape)}")
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
        _to_float(arr, out=out_np[index])
    return out


def _to_float(arr: np.ndarray, *, out: np.ndarray) -> None:
    if arr.dtype == np.uint8:
        np.divide(arr, np.float32(255.0), out=out)  # in small buffered chunks, straight into ``out``
    else:
        np.copyto(out, arr)


def give_back_freed_memory() -> None:
    """Return freed heap memory to the OS (glibc's malloc_trim; elsewhere nothing). glibc keeps what
    a thread freed in that thread's arena, resident: the multi-megabyte buffers of encodes and
    decodes, freed on several threads, would otherwise stay counted in the process's memory."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class ResultBatch:
    """The IMAGE batch a run hands over, filled as each result arrives, so a run never holds the
    decoded 8-bit results besides it: one float32 slot per result the run may bill (images x n, in
    input order), allocated at once but made resident only as slots are written (the pages of a
    large torch.empty are mapped lazily). A result of another size than predicted (the output-size
    rules are inferred) is not put in: the caller keeps it as it is."""

    def __init__(self, *, size: ImageSize, slots: int) -> None:
        self._out = torch.empty((slots, size.height, size.width, 3), dtype=torch.float32)
        self._out_np = self._out.numpy()  # shares memory with ``_out``

    @property
    def slots(self) -> int:
        return int(self._out.shape[0])

    def slot(self, slot: int) -> np.ndarray | None:
        """The float32 [H,W,3] array of ``slot`` to decode a result into (``decode_image(out=)``);
        None for no such slot."""
        return self._out_np[slot] if 0 <= slot < self.slots else None

    def slot_of(self, view: np.ndarray) -> int | None:
        """The slot ``view`` (a slot's array) is, or None for an array outside the batch."""
        slot_bytes = self._out_np[0].nbytes
        offset = view.__array_interface__["data"][0] - self._out_np.__array_interface__["data"][0]
        if view.shape != self._out_np.shape[1:] or not 0 <= offset < self._out_np.nbytes or offset % slot_bytes:
            return None
        return offset // slot_bytes

    def take(self, slots: Sequence[int]) -> torch.Tensor:
        """The IMAGE of the filled ``slots`` (ascending): moved to the front in place when some are
        missing (a result that failed), so no second batch is ever allocated. Arrays of moved slots
        are stale afterwards."""
        if list(slots) != sorted(set(slots)):
            raise ValueError(f"slots must ascend without repeats: {list(slots)}")
        for dest, src in enumerate(slots):
            if dest != src:  # src > dest: a slot is moved before anything is written over it
                self._out[dest].copy_(self._out[src])
        return self._out[:len(slots)]
