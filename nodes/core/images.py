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
import concurrent.futures
import hashlib
import io
import itertools
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import DownloadError, InputError
from .functions import MAX_SIDE_PX, MIN_SIDE_PX, ImageSize

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 10_000_000  # service limit is 10 MB; stay under it with margin for "MB" ambiguity

# Images are sent as PNG written by our own encoder (encode_png): PNG row filtering in numpy, then
# deflate in row bands on a few threads (zlib releases the GIL), joined into one zlib stream the way
# pigz does (sync-flushed raw deflate parts, adler32 combined). Per band it picks the row filter from a
# sample of rows (Average, Up or Sub; Paeth, the slowest in numpy, only when clearly better: least
# sum of |filtered byte|) and compresses with the RLE strategy: on camera-like pixels the filtered
# residuals are noise, LZ77 string matching finds almost nothing and only costs time, while Huffman
# coding plus runs of repeated bytes gets the bytes. Bands whose filtered sample is mostly zeros (flat
# drawings, text, clean gradients) use LZ77 instead. Float pixels are converted to 8 bits band by band
# on the same threads. Measured on this project's machine (2 CPUs, zlib 1.2.13, Pillow 13.0), time and
# bytes against Pillow's default PNG (level 6, adaptive filters):
#   photo-like 1024^2 and 2048^2 (gradients + noise sigma 0.02): 0.96x the bytes, ~10x faster
#   a real (JPEG-decoded) photo: 1.00x the bytes, ~5x faster; gradients with sigma 0.001-0.005 noise:
#   0.84-0.96x the bytes, 15-30x faster; screenshots, drawings: 1.0-1.3x the bytes (small files either
#   way), 2-3x faster. tests/bench.py (figure 3) measures it against Pillow plus base64.
# Pillow (compress_level 4) is still used for masks: 1-bit content it compresses fast and well.
PNG_COMPRESS_LEVEL = 4
_PNG_STRATEGY = zlib.Z_RLE
_PNG_BAND_BYTES = 256 * 1024  # rows per band: about this many bytes of pixels
_PNG_MAX_BANDS = 16
_PNG_SAMPLE_EVERY_ROWS = 16  # rows sampled to choose a band's filter
_PNG_FLAT_ZEROS = 0.8  # a band whose filtered sample is at least this fraction of zeros is flat
_PNG_PAETH_GAIN = 0.85  # Paeth is used when its cost is under this fraction of the best cheap filter's
_PNG_LEVEL = 6
_PNG_WORKERS = max(1, min(4, os.cpu_count() or 1))

# JPEG fallback ladder. Pillow's libjpeg-turbo encodes 4096^2 in < 0.1 s per try, so a ladder is
# cheap. Measured at 4096^2: a photo-like image fits at 95 (5.4 MB); uniform noise needs 70 (9.3 MB).
JPEG_QUALITIES: tuple[int, ...] = (95, 90, 85, 80, 75, 70, 60, 50)

# When the raw pixels are over this multiple of max_bytes, the PNG size is first estimated from bands
# of rows (1/8 of the image) and the full PNG is skipped when the estimate is over the limit: at
# 4096^2 a photo's PNG is ~31 MB, far over. The estimate was within 1% of the full size on photo-like
# and noise images; flat images come out underestimated, which only costs the full encode.
_PNG_ESTIMATE_ABOVE_RAW = 2.0
_PNG_ESTIMATE_SKIP_FACTOR = 1.25
_SAMPLE_BAND_ROWS = 32
_SAMPLE_EVERY_ROWS = 256

_T = TypeVar("_T")

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
    _require_mask_values(mask)
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

    source = _Rows(_float_rgb(image_hwc))  # converted to 8 bits band by band, on the codec threads
    if target != original:
        shrinking = target.width < original.width
        resized = Image.fromarray(source.full()).resize(
            target, Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC)
        source = _Rows(np.asarray(resized))
        logger.debug("resized image %s -> %s", original, target)

    data, mime = _encode_within(source, max_bytes=max_bytes)
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
    _require_mask_values(mask_hw)
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


def _require_mask_values(mask: torch.Tensor) -> None:
    if not (mask.is_floating_point() or mask.dtype == torch.bool):
        raise InputError(
            "a MASK must hold floating-point values 0..1", value=f"dtype {mask.dtype}",
            fix="Connect a MASK output, or convert it with an image-to-mask node.",
        )


def _float_rgb(image_hwc: torch.Tensor) -> np.ndarray:
    """[H,W,3|4] float -> float32 [H,W,3] on the CPU, alpha flattened onto white. For an RGB float32
    CPU tensor this is a view of the caller's own memory: it is only ever read."""
    x = image_hwc.detach().to(device="cpu", dtype=torch.float32)
    if x.shape[-1] == 4:
        x = torch.nan_to_num(x, nan=0.0).clamp_(0.0, 1.0)  # a copy: the caller's IMAGE is untouched
        alpha = x[..., 3:4]
        x = x[..., :3].mul(alpha).add_(1.0 - alpha)  # rgb * a + white * (1 - a)
    return x.numpy()


def _float_to_uint8(block: np.ndarray) -> np.ndarray:
    """float 0..1 -> uint8 round(clamp(x) * 255), NaN -> 0 (clamping after scaling is the same)."""
    scaled = np.multiply(block, np.float32(255.0), dtype=np.float32)
    np.fmax(scaled, np.float32(0.0), out=scaled)  # fmax ignores NaN: NaN -> 0
    np.fmin(scaled, np.float32(255.0), out=scaled)
    np.rint(scaled, out=scaled)  # half to even, like torch.round
    return scaled.astype(np.uint8)


class _Rows:
    """An image's rows as 8-bit samples: a uint8 ``[H,W,C]``/``[H,W]`` array as it is, or a float
    ``[H,W,3]`` array converted on demand, so each encoder band converts only its own rows."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.height, self.width = int(array.shape[0]), int(array.shape[1])
        self.channels = 1 if array.ndim == 2 else int(array.shape[2])
        self.stride = self.width * self.channels

    @property
    def nbytes(self) -> int:
        return self.height * self.stride

    def rows(self, start: int, stop: int) -> np.ndarray:
        """uint8 ``[stop - start, width * channels]``, C-contiguous."""
        block = self.array[start:stop]
        if block.dtype != np.uint8:
            block = _float_to_uint8(block)
        return np.ascontiguousarray(block).reshape(stop - start, self.stride)

    def full(self) -> np.ndarray:
        """The whole image as uint8 ``[H,W,C]`` (``[H,W]`` for one channel)."""
        shape = (self.height, self.width) if self.channels == 1 else (self.height, self.width, self.channels)
        if self.array.dtype == np.uint8:
            return np.ascontiguousarray(self.array).reshape(shape)
        out = np.empty((self.height, self.stride), np.uint8)
        edges = _band_edges(self.height, self.nbytes)

        def convert(top: int, bottom: int) -> None:
            out[top:bottom] = self.rows(top, bottom)

        _run_bands(convert, edges)
        return out.reshape(shape)


def _encode_within(source: _Rows, *, max_bytes: int) -> tuple[bytes, str]:
    """PNG if it fits in ``max_bytes``, else the best JPEG that does. Returns (bytes, mime)."""
    height_px, width_px = source.height, source.width
    # A PNG can only exceed the limit when the raw pixels do (stored deflate adds < 0.1%).
    if source.nbytes <= max_bytes * _PNG_ESTIMATE_ABOVE_RAW or \
            _estimate_png_bytes(source) <= max_bytes * _PNG_ESTIMATE_SKIP_FACTOR:
        png = _encode_png_rows(source)
        if len(png) <= max_bytes:
            return png, "image/png"
        png_note = f"{len(png)} bytes"
    else:
        png_note = "estimated over the limit"
    pil = Image.fromarray(source.full())
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


def _estimate_png_bytes(source: _Rows) -> float:
    """PNG size extrapolated from bands of rows spread over the image (1/8 of it)."""
    height_px = source.height
    bands = [source.rows(top, min(top + _SAMPLE_BAND_ROWS, height_px)) for top in range(0, height_px, _SAMPLE_EVERY_ROWS)]
    sample = np.concatenate(bands).reshape(-1, source.width, source.channels)
    return len(encode_png(sample if source.channels == 3 else sample[..., 0])) * height_px / sample.shape[0]


def _save(pil: Image.Image, fmt: str, **options: int) -> bytes:
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _encoded(data: bytes, *, mime: str, sent_size: ImageSize, original_size: ImageSize) -> Encoded:
    # The digest runs on a worker (hashlib releases the GIL) while base64 runs here.
    digest = _pool().submit(_sha256_hex, data)
    data_uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return Encoded(
        data_uri=data_uri,
        mime=mime,
        byte_count=len(data),
        sent_size=sent_size,
        original_size=original_size,
        sha256=digest.result(),
    )


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- PNG encoder -------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_SUB, _FILTER_UP, _FILTER_AVERAGE, _FILTER_PAETH = 1, 2, 3, 4
_pool_lock = threading.Lock()
_pool_instance: concurrent.futures.ThreadPoolExecutor | None = None


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _pool_instance
    with _pool_lock:
        if _pool_instance is None:
            _pool_instance = concurrent.futures.ThreadPoolExecutor(
                max_workers=_PNG_WORKERS, thread_name_prefix="wanx-codec")
        return _pool_instance


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 ``[H,W,3]`` (RGB) or ``[H,W]`` (grayscale) -> a lossless 8-bit PNG file.

    The rows are cut into bands that are filtered and deflated in parallel; each band ends with a
    sync flush, so the parts join into one zlib stream (one IDAT chunk) that any PNG reader decodes
    to exactly these pixels. See the notes at PNG_COMPRESS_LEVEL for the choices and measurements."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"expected uint8 [H,W,3] or [H,W] pixels, got {pixels.dtype} {list(pixels.shape)}")
    return _encode_png_rows(_Rows(pixels))


def _encode_png_rows(source: _Rows) -> bytes:
    if source.height == 0 or source.width == 0:
        raise ValueError("a PNG needs at least one pixel")
    edges = _band_edges(source.height, source.nbytes)
    parts = _run_bands(lambda top, bottom: _png_band(source, top, bottom, last=bottom == source.height), edges)
    adler = 1
    for _, band_adler, band_bytes in parts:
        adler = _adler32_combine(adler, band_adler, band_bytes)
    # zlib header 0x78 0x01: deflate, 32 KiB window, no preset dictionary (FCHECK makes it % 31 == 0).
    idat = [b"\x78\x01", *(part for part, _, _ in parts), struct.pack(">I", adler)]
    idat_length = sum(len(piece) for piece in idat)
    crc = zlib.crc32(b"IDAT")
    for piece in idat:
        crc = zlib.crc32(piece, crc)
    color_type = 2 if source.channels == 3 else 0
    header = struct.pack(">IIBBBBB", source.width, source.height, 8, color_type, 0, 0, 0)
    return b"".join([
        _PNG_SIGNATURE, _png_chunk(b"IHDR", header),
        struct.pack(">I", idat_length), b"IDAT", *idat, struct.pack(">I", crc),
        _png_chunk(b"IEND", b""),
    ])


def _band_edges(height_px: int, nbytes: int) -> list[int]:
    count = int(min(_PNG_MAX_BANDS, height_px, max(1, nbytes // _PNG_BAND_BYTES)))
    return [height_px * i // count for i in range(count + 1)]


def _run_bands(work: Callable[[int, int], _T], edges: Sequence[int]) -> list[_T]:
    """``work(top, bottom)`` for each band, on the codec threads when there are several."""
    if len(edges) == 2:
        return [work(edges[0], edges[1])]
    futures = [_pool().submit(work, top, bottom) for top, bottom in itertools.pairwise(edges)]
    return [future.result() for future in futures]


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def _png_band(source: _Rows, top: int, bottom: int, *, last: bool) -> tuple[bytes, int, int]:
    """Filter and deflate rows top..bottom. Returns (raw deflate data, adler32, filtered size)."""
    bpp = source.channels
    block = source.rows(max(top - 1, 0), bottom)  # with the row above, which the filters look at
    band = block[1:] if top > 0 else block
    if top > 0:
        above = block[:-1]
    else:
        above = np.empty_like(band)
        above[0] = 0
        above[1:] = band[:-1]
    sample = slice(0, bottom - top, _PNG_SAMPLE_EVERY_ROWS)
    sample_cur, sample_above = band[sample], above[sample]
    trials = {ftype: _filter_rows(sample_cur, sample_above, ftype, bpp)
              for ftype in (_FILTER_AVERAGE, _FILTER_UP, _FILTER_SUB, _FILTER_PAETH)}
    costs = {ftype: _filter_cost(trial) for ftype, trial in trials.items()}
    cheap = min((_FILTER_AVERAGE, _FILTER_UP, _FILTER_SUB), key=costs.__getitem__)
    flat = np.count_nonzero(trials[cheap]) < trials[cheap].size * (1.0 - _PNG_FLAT_ZEROS)
    # Paeth is by far the slowest filter in numpy (~8x Average): only when it clearly pays.
    filter_type = _FILTER_PAETH if not flat and costs[_FILTER_PAETH] < costs[cheap] * _PNG_PAETH_GAIN else cheap
    filtered = np.empty((bottom - top, source.stride + 1), np.uint8)
    filtered[:, 0] = filter_type
    _filter_rows(band, above, filter_type, bpp, out=filtered[:, 1:])
    # Flat content (drawings, screenshots, clean gradients): LZ77 finds the repeats, and fast.
    strategy = zlib.Z_DEFAULT_STRATEGY if flat else _PNG_STRATEGY
    data = _deflate(filtered, zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH, level=_PNG_LEVEL, strategy=strategy)
    return data, zlib.adler32(filtered), filtered.nbytes


def _deflate(data: np.ndarray, flush: int, *, level: int, strategy: int) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15, 9, strategy)  # raw deflate: no header
    return compressor.compress(data) + compressor.flush(flush)


def _filter_rows(cur: np.ndarray, above: np.ndarray, ftype: int, bpp: int, out: np.ndarray | None = None) -> np.ndarray:
    """PNG filter ``ftype`` applied to rows ``cur`` (each with its row above in ``above``), modulo 256."""
    if out is None:
        out = np.empty_like(cur)
    left, cur_right = cur[:, :-bpp], cur[:, bpp:]
    if ftype == _FILTER_SUB:
        out[:, :bpp] = cur[:, :bpp]
        np.subtract(cur_right, left, out=out[:, bpp:])
    elif ftype == _FILTER_UP:
        np.subtract(cur, above, out=out)
    elif ftype == _FILTER_AVERAGE:
        # floor((left + above) / 2) without overflow: (a & b) + ((a ^ b) >> 1); left is 0 in the first pixel.
        predictor = np.empty_like(cur)
        np.right_shift(above[:, :bpp], 1, out=predictor[:, :bpp])
        right = predictor[:, bpp:]
        np.bitwise_xor(left, above[:, bpp:], out=right)
        np.right_shift(right, 1, out=right)
        right += left & above[:, bpp:]
        np.subtract(cur, predictor, out=out)
    else:  # Paeth: the neighbour (left a, above b, upper-left c) closest to a + b - c
        out[:, :bpp] = cur[:, :bpp] - above[:, :bpp]  # a = c = 0 there, so the predictor is b
        a = left.astype(np.int16)
        b = above[:, bpp:].astype(np.int16)
        c = above[:, :-bpp].astype(np.int16)
        b_minus_c = b - c
        a_minus_c = a - c
        pc = np.abs(b_minus_c + a_minus_c)
        pa = np.abs(b_minus_c, out=b_minus_c)
        pb = np.abs(a_minus_c, out=a_minus_c)
        predictor = np.where(pb <= pc, b, c)
        np.copyto(predictor, a, where=(pa <= pb) & (pa <= pc))
        np.subtract(cur_right, predictor.astype(np.uint8), out=out[:, bpp:])
    return out


def _filter_cost(filtered: np.ndarray) -> int:
    """Sum of |byte| with bytes read as signed (libpng's heuristic for choosing a filter)."""
    return int(np.minimum(filtered, np.negative(filtered)).sum(dtype=np.uint64))


def _adler32_combine(adler1: int, adler2: int, length2: int) -> int:
    """adler32 of A + B from adler32(A), adler32(B) and len(B) (zlib's adler32_combine)."""
    base = 65521
    remainder = length2 % base
    sum1 = adler1 & 0xFFFF
    sum2 = (remainder * sum1) % base
    sum1 = (sum1 + (adler2 & 0xFFFF) + base - 1) % base
    sum2 = (sum2 + ((adler1 >> 16) & 0xFFFF) + ((adler2 >> 16) & 0xFFFF) + base - remainder) % base
    return sum1 | (sum2 << 16)


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
        # np.array copies once from Pillow's buffer; convert() would add a copy for RGB files.
        return np.array(pil if pil.mode == "RGB" else pil.convert("RGB"))
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
