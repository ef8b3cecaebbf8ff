"""images.py and png.py: tensor conventions, size planning, the checks, mask rules, the payload rule,
encoding and decoding. All tensors and files are built in memory; the large ones are the real-size
JPEG fallback checks and the 13600^2 result that Pillow's own limit refuses."""

from __future__ import annotations

import base64
import collections
import hashlib
import io
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from wanx_imageedit.nodes.core import images, png
from wanx_imageedit.nodes.core.errors import DownloadError, InputError
from wanx_imageedit.nodes.core.functions import ImageSize


def file_bytes(encoded: images.Encoded) -> bytes:
    header, payload = encoded.data_uri.split(",", 1)
    assert header == f"data:{encoded.mime};base64"
    return base64.b64decode(payload)


def random_uint8(height: int, width: int, channels: int = 3, *, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def as_image(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [H,W,C] -> float [H,W,C] holding exactly k/255."""
    return torch.from_numpy(pixels.astype(np.float32) / 255.0)


def encode_one(image_hwc: torch.Tensor, **options: int) -> images.Encoded:
    """Check, then encode, one image [H,W,C]."""
    return images.encode_image(images.check_image(image_hwc), **options)


# --- plan_fit ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((512, 512), (512, 512)),
        ((4096, 4096), (4096, 4096)),
        ((4096, 512), (4096, 512)),  # exactly 8:1 fits unchanged
        ((1000, 600), (1000, 600)),
        ((511, 600), (512, 601)),  # 600 * 512/511 = 601.17
        ((4097, 1000), (4096, 1000)),  # 1000 * 4096/4097 = 999.76
        ((300, 300), (512, 512)),
        ((8000, 6000), (4096, 3072)),
        ((700, 5000), (573, 4096)),  # 700 * 0.8192 = 573.44
    ],
)
def test_plan_fit_keeps_in_limit_sizes_and_scales_the_rest_uniformly(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert images.plan_fit(ImageSize(*size)) == ImageSize(*expected)


@pytest.mark.parametrize("size", [(511, 511), (4097, 4097), (300, 2000), (9000, 1200), (600, 4800), (513, 4095)])
def test_plan_fit_result_is_inside_the_limits_with_aspect_within_one_pixel(size: tuple[int, int]) -> None:
    width_px, height_px = size
    fitted = images.plan_fit(ImageSize(width_px, height_px))
    assert 512 <= fitted.width <= 4096 and 512 <= fitted.height <= 4096
    # one side is pinned to a bound; the other is the exactly scaled value, rounded
    assert min(
        abs(fitted.width - fitted.height * width_px / height_px),
        abs(fitted.height - fitted.width * height_px / width_px),
    ) <= 1


@pytest.mark.parametrize("size", [(5000, 400), (300, 4000), (600, 5000), (4097, 512)])
def test_plan_fit_refuses_strips_no_uniform_scale_can_fit(size: tuple[int, int]) -> None:
    # 600x5000 is 8.33:1: height 4096 would make the width 491.5 px, below 512.
    with pytest.raises(InputError) as caught:
        images.plan_fit(ImageSize(*size))
    message = str(caught.value)
    assert f"{size[0]}x{size[1]}" in message
    assert "8:1" in message and "Crop or pad" in message


def test_plan_fit_refuses_an_empty_size() -> None:
    with pytest.raises(InputError, match="positive"):
        images.plan_fit(ImageSize(0, 600))


def test_image_size_reads_batches_and_single_images() -> None:
    assert images.image_size(torch.zeros(2, 30, 40, 3)) == ImageSize(40, 30)
    assert images.image_size(torch.zeros(30, 40, 4)) == ImageSize(40, 30)
    with pytest.raises(InputError):
        images.image_size(torch.zeros(30, 40))


# --- encode_image ------------------------------------------------------------------------------------


def test_alpha_is_flattened_onto_white_with_exact_pixel_values() -> None:
    rgba = torch.zeros(512, 512, 4)
    rgba[0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # fully transparent red -> white
    rgba[0, 1] = torch.tensor([1.0, 0.0, 0.0, 1.0])  # opaque red stays red
    rgba[0, 2] = torch.tensor([0.2, 0.6, 1.0, 0.5])  # half: rgb*0.5 + 0.5 = 0.6, 0.8, 1.0
    rgba[0, 3] = torch.tensor([0.0, 0.0, 0.0, 0.25])  # 0.75 * 255 = 191.25
    encoded = encode_one(rgba)
    assert encoded.mime == "image/png"
    decoded = images.decode_image(file_bytes(encoded))
    assert decoded[0, 0].tolist() == [255, 255, 255]
    assert decoded[0, 1].tolist() == [255, 0, 0]
    assert decoded[0, 2].tolist() == [153, 204, 255]
    assert decoded[0, 3].tolist() == [191, 191, 191]
    assert decoded[5, 5].tolist() == [255, 255, 255]  # zeros with alpha 0 -> white


def test_in_limit_png_round_trip_keeps_pixels_exactly() -> None:
    pixels = random_uint8(520, 640)
    encoded = encode_one(as_image(pixels))
    data = file_bytes(encoded)
    assert encoded.mime == "image/png"
    assert encoded.sent_size == encoded.original_size == ImageSize(640, 520)
    assert encoded.byte_count == len(data)
    assert encoded.sha256 == hashlib.sha256(data).hexdigest()
    np.testing.assert_array_equal(images.decode_image(data), pixels)


def test_values_are_clamped_and_the_callers_tensor_is_untouched() -> None:
    image = torch.full((512, 512, 3), 0.5)
    image[0, 0] = torch.tensor([-0.5, 1.5, 0.5])
    checked = images.check_image(image)
    # The check refuses NaN (see the NaN tests); written after it, the trusting encoder still writes 0.
    image[0, 0, 2] = float("nan")
    before = image.clone()
    decoded = images.decode_image(file_bytes(images.encode_image(checked)))
    assert decoded[0, 0].tolist() == [0, 255, 0]
    assert torch.equal(image[1:], before[1:]) and torch.equal(image[0, 0, :2], before[0, 0, :2])


def test_small_image_is_upscaled_to_the_planned_size() -> None:
    encoded = encode_one(torch.rand(200, 300, 3))
    assert encoded.original_size == ImageSize(300, 200)
    assert encoded.sent_size == ImageSize(768, 512)
    assert images.decode_image(file_bytes(encoded)).shape == (512, 768, 3)


def test_png_over_max_bytes_falls_back_to_jpeg_that_fits() -> None:
    noise = as_image(random_uint8(600, 600))  # PNG ~1.08 MB: incompressible
    encoded = encode_one(noise, max_bytes=400_000)
    assert encoded.mime == "image/jpeg"
    assert encoded.data_uri.startswith("data:image/jpeg;base64,")
    assert encoded.byte_count <= 400_000
    assert images.decode_image(file_bytes(encoded)).shape == (600, 600, 3)


def test_image_that_fits_no_jpeg_quality_is_refused() -> None:
    with pytest.raises(InputError, match="at most 1000 bytes"):
        encode_one(as_image(random_uint8(512, 512)), max_bytes=1000)


def test_real_size_noisy_4096_image_is_sent_as_jpeg_under_the_service_limit() -> None:
    noise = torch.rand(4096, 4096, 3, generator=torch.Generator().manual_seed(1))
    started = time.perf_counter()
    encoded = encode_one(noise)
    elapsed_s = time.perf_counter() - started
    assert encoded.mime == "image/jpeg"
    assert encoded.byte_count <= images.MAX_FILE_BYTES
    assert encoded.byte_count <= images.MAX_BASE64_FILE_BYTES  # uniform noise, the worst case, within the guidance
    assert encoded.sent_size == ImageSize(4096, 4096)
    assert elapsed_s < 5, f"encoding took {elapsed_s:.1f} s"


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        (torch.zeros(512, 512, 2), "3 (RGB) or 4 (RGBA)"),
        (torch.zeros(512, 512, 3, dtype=torch.uint8), "floating-point"),
        (torch.zeros(1, 512, 512, 3), "[height, width, channels]"),
    ],
)
def test_check_image_refuses_wrong_shapes_and_dtypes(image: torch.Tensor, fragment: str) -> None:
    with pytest.raises(InputError) as caught:
        images.check_image(image)
    assert fragment in str(caught.value)


# --- masks -------------------------------------------------------------------------------------------


def test_mask_is_resized_with_its_image_and_binarized() -> None:
    mask = torch.full((200, 300), 0.3)  # 0.3 -> black
    mask[:, 150:] = 0.7  # right half -> white
    image_encoded, mask_encoded = images.encode(images.check_image(torch.rand(200, 300, 3), mask))
    assert mask_encoded is not None
    data = file_bytes(mask_encoded)
    with Image.open(io.BytesIO(data)) as pil:
        assert pil.mode == "L"
        assert pil.size == tuple(image_encoded.sent_size) == (768, 512)
        values = np.array(pil)
    assert set(np.unique(values).tolist()) == {0, 255}
    assert (values[:, :384] == 0).all() and (values[:, 384:] == 255).all()
    assert mask_encoded.sent_size == ImageSize(768, 512)
    assert mask_encoded.original_size == ImageSize(300, 200)
    assert mask_encoded.mime == "image/png"


def test_empty_mask_is_refused() -> None:
    with pytest.raises(InputError, match="no white"):
        images.check_image(torch.rand(512, 512, 3), torch.full((512, 512), 0.49))


def test_mask_whose_white_vanishes_when_shrunk_is_refused() -> None:
    image = torch.rand(600, 4800, 3)  # 8:1, sent at 4096x512: its 600 rows shrink to 512
    mask = torch.zeros(600, 4800)
    mask[3, :] = 1.0  # one row, which NEAREST from 600 to 512 rows does not sample
    with pytest.raises(InputError, match="after scaling"):
        images.check_image(image, mask)


def image_batch(batch: int, height: int = 8, width: int = 6) -> torch.Tensor:
    return torch.rand(batch, height, width, 3)


def pairs_of(image: torch.Tensor, mask: torch.Tensor | None) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    return [(checked.image, checked.mask) for checked in images.check_batch(image, mask)]


def test_single_mask_applies_to_every_image() -> None:
    mask = torch.rand(1, 8, 6)
    pairs = pairs_of(image_batch(3), mask)
    assert len(pairs) == 3
    assert all(m is not None and torch.equal(m, mask[0]) for _, m in pairs)


def test_two_dimensional_mask_is_normalised_like_comfyui() -> None:
    mask = torch.rand(8, 6)
    pairs = pairs_of(image_batch(2), mask)
    assert [p[1].shape for p in pairs] == [torch.Size([8, 6])] * 2  # type: ignore[union-attr]


def test_mask_batch_of_the_same_length_pairs_by_index() -> None:
    batch = image_batch(3)
    masks = torch.rand(3, 8, 6)
    pairs = pairs_of(batch, masks)
    for index, (image, mask) in enumerate(pairs):
        assert torch.equal(image, batch[index])
        assert mask is not None and torch.equal(mask, masks[index])


def test_no_mask_gives_none_for_every_image() -> None:
    assert [m for _, m in pairs_of(image_batch(2), None)] == [None, None]


def test_mask_batch_of_another_length_is_refused() -> None:
    with pytest.raises(InputError, match="2 masks for 3 images"):
        pairs_of(image_batch(3), torch.rand(2, 8, 6))


def test_mask_size_mismatch_names_both_sizes_and_the_load_image_pitfall() -> None:
    image = torch.rand(1, 512, 600, 3)
    empty_load_image_mask = torch.zeros(1, 64, 64)
    with pytest.raises(InputError) as caught:
        pairs_of(image, empty_load_image_mask)
    message = str(caught.value)
    assert "mask 64x64" in message and "image 600x512" in message
    assert "Load Image" in message


@pytest.mark.parametrize(
    ("image", "mask", "fragment"),
    [
        (torch.rand(8, 6, 3), None, "[batch, height, width, channels]"),
        (torch.rand(0, 8, 6, 3), None, "empty"),
        (torch.rand(1, 8, 6, 5), None, "3 (RGB) or 4 (RGBA)"),
        (torch.zeros(1, 8, 6, 3, dtype=torch.uint8), None, "floating-point"),
        (torch.rand(1, 8, 6, 3), torch.rand(1, 1, 8, 6), "[batch, height, width]"),
        (torch.rand(1, 8, 6, 3), torch.ones(1, 8, 6, dtype=torch.int64), "floating-point"),
    ],
)
def test_check_batch_refuses_malformed_inputs(image: torch.Tensor, mask: torch.Tensor | None, fragment: str) -> None:
    with pytest.raises(InputError) as caught:
        pairs_of(image, mask)
    assert fragment in str(caught.value)


# --- decode and stack --------------------------------------------------------------------------------


def png_bytes(pil: Image.Image) -> bytes:
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


def test_decoded_rgba_result_is_flattened_onto_white() -> None:
    pil = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    pil.putpixel((1, 0), (0, 0, 255, 255))
    decoded = images.decode_image(png_bytes(pil))
    assert decoded.dtype == np.uint8 and decoded.shape == (1, 2, 3)
    assert decoded.tolist() == [[[255, 255, 255], [0, 0, 255]]]


def test_decoded_palette_and_gray_results_become_rgb() -> None:
    palette = Image.new("P", (3, 2), 0)
    palette.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    assert images.decode_image(png_bytes(palette))[0, 0].tolist() == [10, 20, 30]
    gray = Image.new("L", (3, 2), 77)
    assert images.decode_image(png_bytes(gray)).shape == (2, 3, 3)


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>"],
)
def test_decoding_garbage_raises_download_error(data: bytes) -> None:
    with pytest.raises(DownloadError, match="not an image"):
        images.decode_image(data)


def test_decoding_a_truncated_png_raises_download_error() -> None:
    data = png_bytes(Image.fromarray(random_uint8(64, 64)))
    with pytest.raises(DownloadError, match="not an image"):
        images.decode_image(data[: len(data) // 2])


def test_stack_images_gives_float32_batch_in_zero_to_one() -> None:
    first, second = random_uint8(5, 7, seed=1), random_uint8(5, 7, seed=2)
    first[0, 0] = [0, 128, 255]
    stacked = images.stack_images([first, second])
    assert stacked.shape == (2, 5, 7, 3)
    assert stacked.dtype == torch.float32
    assert float(stacked.min()) >= 0.0 and float(stacked.max()) <= 1.0
    assert stacked[0, 0, 0].tolist() == pytest.approx([0.0, 128 / 255, 1.0])
    np.testing.assert_array_equal(np.rint(stacked.numpy() * 255).astype(np.uint8), np.stack([first, second]))


def test_stack_images_refuses_unequal_sizes_naming_them() -> None:
    with pytest.raises(InputError) as caught:
        images.stack_images([random_uint8(5, 7), random_uint8(6, 7)])
    message = str(caught.value)
    assert "7x5" in message and "7x6" in message and "one image at a time" in message


# --- the parallel PNG encoder ------------------------------------------------------------------------


def photo_like(height: int, width: int, *, seed: int = 0, sigma: float = 0.02) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1)
    return (np.clip(base + rng.normal(0, sigma, base.shape), 0, 1) * 255).round().astype(np.uint8)


def flat_drawing(height: int, width: int) -> np.ndarray:
    pixels = np.full((height, width, 3), 240, np.uint8)
    pixels[height // 4: height // 2, :, 0] = 30
    pixels[:, width // 3: width // 3 + 5] = (10, 200, 90)
    return pixels


def decoded_with_pillow(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.format == "PNG"
        return np.asarray(opened)


@pytest.mark.parametrize(
    "pixels",
    [
        random_uint8(1, 1), random_uint8(3, 7), random_uint8(2, 1), random_uint8(513, 1), random_uint8(1, 777),
        photo_like(777, 513), photo_like(1100, 700, seed=3),  # several bands, odd sizes
        flat_drawing(600, 901),  # flat bands: LZ77
        random_uint8(700, 700),  # incompressible: stored blocks
        photo_like(517, 611)[..., 1].copy(), random_uint8(9, 5)[..., 0].copy(),  # grayscale
    ],
    ids=["1x1", "3x7", "2x1", "513x1", "1x777", "photo-777x513", "photo-1100x700", "flat", "noise", "gray",
         "gray-tiny"],
)
def test_encode_png_decodes_with_pillow_to_exactly_the_same_pixels(pixels: np.ndarray) -> None:
    data = png.encode_png(pixels)
    np.testing.assert_array_equal(decoded_with_pillow(data), pixels)


def test_encode_png_writes_one_valid_zlib_stream_of_filtered_rows() -> None:
    pixels = photo_like(900, 640)
    data = png.encode_png(pixels)
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = np.frombuffer(data[offset: offset + 4], ">u4")
        tag = data[offset + 4: offset + 8]
        body = data[offset + 8: offset + 8 + length]
        (crc,) = np.frombuffer(data[offset + 8 + length: offset + 12 + length], ">u4")
        assert crc == zlib.crc32(tag + body)
        chunks.append((tag, body))
        offset += 12 + int(length)
    assert [tag for tag, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    raw = zlib.decompress(chunks[1][1])  # checks the combined adler32 too
    rows = np.frombuffer(raw, np.uint8).reshape(900, 640 * 3 + 1)
    assert set(np.unique(rows[:, 0])) <= {1, 2, 3, 4}


def reference_filter(cur: np.ndarray, above: np.ndarray, ftype: int, bpp: int) -> np.ndarray:
    """PNG filters straight from the specification, one byte at a time."""
    out = np.zeros_like(cur)
    for y in range(cur.shape[0]):
        for x in range(cur.shape[1]):
            a = int(cur[y, x - bpp]) if x >= bpp else 0
            b = int(above[y, x])
            c = int(above[y, x - bpp]) if x >= bpp else 0
            if ftype == 1:
                predictor = a
            elif ftype == 2:
                predictor = b
            elif ftype == 3:
                predictor = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                predictor = a if pa <= pb and pa <= pc else b if pb <= pc else c
            out[y, x] = (int(cur[y, x]) - predictor) % 256
    return out


@pytest.mark.parametrize("bpp", [1, 3])
@pytest.mark.parametrize("ftype", [1, 2, 3, 4])
def test_each_row_filter_matches_the_png_specification(ftype: int, bpp: int) -> None:
    rng = np.random.default_rng(ftype * 10 + bpp)
    cur = rng.integers(0, 256, (4, 7 * bpp), dtype=np.uint8)
    above = rng.integers(0, 256, (4, 7 * bpp), dtype=np.uint8)
    above[0] = 0
    np.testing.assert_array_equal(png.filter_rows(cur, above, ftype, bpp), reference_filter(cur, above, ftype, bpp))


def test_adler32_of_parts_combines_into_the_adler32_of_the_whole() -> None:
    data = random_uint8(300, 300).tobytes() + bytes(70_000)
    for cut in (0, 1, 5552, 65521, 200_000, len(data)):
        first, second = data[:cut], data[cut:]
        assert png.adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second)) == zlib.adler32(data)


def test_photo_png_is_no_larger_than_pillows_default() -> None:
    pixels = photo_like(1024, 1024, seed=5)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    ours = encode_one(as_image(pixels))
    assert ours.mime == "image/png"
    assert ours.byte_count <= len(buffer.getvalue()) * 1.05
    np.testing.assert_array_equal(images.decode_image(file_bytes(ours)), pixels)


@pytest.mark.parametrize(
    "pixels", [np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4), np.float32), np.zeros((0, 4, 3), np.uint8)],
    ids=["four-channels", "float", "empty"],
)
def test_encode_png_refuses_what_it_cannot_write(pixels: np.ndarray) -> None:
    with pytest.raises(ValueError):
        png.encode_png(pixels)


@pytest.mark.parametrize(("flat_zeros", "paeth_gain"), [(1.1, 1e9), (1.1, 0.0), (-1.0, 0.0)],
                         ids=["paeth-rle", "cheap-filter-rle", "cheap-filter-lz77"])
def test_every_encoder_path_decodes_to_the_same_pixels(flat_zeros: float, paeth_gain: float) -> None:
    # flat_zeros 1.1: never flat; -1: always flat. paeth_gain 1e9: Paeth whenever not flat.
    tuning = png.PngTuning(flat_zeros=flat_zeros, paeth_gain=paeth_gain)
    for pixels in (photo_like(801, 603, seed=9), flat_drawing(700, 515), photo_like(333, 555)[..., 2].copy()):
        np.testing.assert_array_equal(decoded_with_pillow(png.encode_png(pixels, tuning=tuning)), pixels)


def test_tunings_that_cut_bands_differently_give_the_same_pixels() -> None:
    pixels = photo_like(700, 515, seed=4)
    for tuning in (png.PngTuning(workers=1), png.PngTuning(band_bytes=1, max_bands=64, workers=3),
                   png.PngTuning(sample_every_rows=1, level=1, strategy=zlib.Z_DEFAULT_STRATEGY)):
        np.testing.assert_array_equal(decoded_with_pillow(png.encode_png(pixels, tuning=tuning)), pixels)
    with pytest.raises(ValueError):
        png.PngTuning(workers=0)


# --- check once, encode later ------------------------------------------------------------------------


def test_nan_and_infinite_pixels_are_refused_naming_the_count_the_image_and_the_fix() -> None:
    batch = torch.rand(2, 512, 512, 3)
    batch[1, :10, :10, 0] = float("nan")  # 100 values
    batch[1, 20, :5] = float("inf")  # 15 values
    batch[1, 30, 0, 2] = float("-inf")
    with pytest.raises(InputError) as caught:
        images.check_batch(batch)
    message = str(caught.value)
    assert "116 NaN / infinite pixel values" in message and "image 2 of 2" in message
    assert "VAE decode in fp16" in message and "Nan-to-num" in message


def test_an_overflowed_half_precision_image_is_refused_and_a_finite_one_encodes_like_float32() -> None:
    pixels = random_uint8(512, 512)
    half = as_image(pixels).half()
    assert images.decode_image(file_bytes(encode_one(half))).tolist() == \
        images.decode_image(file_bytes(encode_one(half.float()))).tolist()
    half[7, 7, 1] = 70000.0  # beyond float16's 65504: inf, as an fp16 VAE decode that overflowed
    with pytest.raises(InputError, match="1 NaN / infinite"):
        images.check_image(half)


def test_masks_with_nan_are_refused() -> None:
    mask = torch.ones(1, 512, 512)
    mask[0, 0, :3] = float("nan")
    with pytest.raises(InputError) as caught:
        images.check_batch(torch.rand(2, 512, 512, 3), mask)
    assert "the mask has 3 NaN / infinite values" in str(caught.value)
    assert "used for every image" in str(caught.value)


def test_every_batch_wide_rule_refuses_before_any_pixel_is_read() -> None:
    # A NaN image with a mismatched mask, and a NaN strip: the structural rule is named, not the NaN.
    nan_batch = torch.full((2, 512, 600, 3), float("nan"))
    with pytest.raises(InputError, match="same width and height"):
        images.check_batch(nan_batch, torch.ones(1, 64, 64))
    with pytest.raises(InputError, match="8:1"):
        images.check_batch(torch.full((1, 400, 5000, 3), float("nan")))


def test_check_notes_say_what_will_be_done_to_each_image() -> None:
    batch = torch.rand(2, 200, 300, 4)
    batch[..., 3] = 1.0
    batch[1, 0, 0, 3] = 0.25  # only image 2 has transparency
    batch[1, 5, 5, 0] = 1.5
    mask = torch.zeros(1, 200, 300)
    mask[:, 50:150, 100:200] = 1.0
    mask[:, 60, 110] = 0.7
    first, second = images.check_batch(batch, mask)
    assert (first.index, first.count, second.index) == (0, 2, 1)
    assert first.original_size == ImageSize(300, 200) and first.sent_size == ImageSize(768, 512)
    assert any(note.startswith("resized 300x200 -> 768x512") for note in first.notes)
    assert not any("alpha" in note for note in first.notes)
    assert any("alpha flattened onto white" in note for note in second.notes)
    assert any("clamped" in note and "1.5" in note for note in second.notes)
    assert not any("clamped" in note for note in first.notes)
    assert any("binarized at 0.5: 1 pixels" in note for note in first.notes)
    assert first.mask_pixels is not None and first.mask_pixels.shape == (512, 768)
    assert set(np.unique(first.mask_pixels).tolist()) == {0, 255}
    assert first.mask_pixels is second.mask_pixels  # one mask for both images: made once


def test_in_limit_images_and_masks_get_no_notes() -> None:
    mask = torch.zeros(512, 512, dtype=torch.bool)
    mask[100:200, 100:200] = True
    assert images.check_image(torch.rand(512, 512, 3), mask).notes == ()


def test_checking_and_encoding_never_write_the_callers_tensors() -> None:
    batch = torch.rand(2, 300, 200, 4) * 1.4 - 0.2  # out-of-range values and alpha: the copying paths
    mask = torch.rand(2, 300, 200)
    batch_before, mask_before = batch.clone(), mask.clone()
    for checked in images.check_batch(batch, mask):
        images.encode(checked)
    assert torch.equal(batch, batch_before) and torch.equal(mask, mask_before)


def _counting(name: str) -> type[torch.Tensor]:
    class Counting(torch.Tensor):
        """Counts every torch function called on this tensor or a tensor derived from it."""

        calls: collections.Counter[str] = collections.Counter()

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            cls.calls[getattr(func, "__name__", str(func))] += 1
            return super().__torch_function__(func, types, args, kwargs or {})

    Counting.__name__ = name
    return Counting


READS_EVERY_VALUE = {"aminmax", "amin", "amax", "min", "max", "isfinite", "isnan", "any", "all", "sum",
                     "count_nonzero", "nan_to_num", "__ge__", "__gt__", "__lt__", "__le__", "__eq__"}


def test_checks_read_each_image_once_and_the_encoder_never_checks_again() -> None:
    image_type, mask_type = _counting("CountedImage"), _counting("CountedMask")
    batch = torch.rand(3, 512, 512, 3).as_subclass(image_type)
    mask = (torch.rand(1, 512, 512) > 0.5).float().as_subclass(mask_type)
    checked = images.check_batch(batch, mask)
    image_reads = {name: n for name, n in image_type.calls.items() if name in READS_EVERY_VALUE}  # type: ignore[attr-defined]
    assert image_reads == {"aminmax": 3}  # one pass per image
    assert mask_type.calls["aminmax"] == 1  # type: ignore[attr-defined]  # the shared mask, once for 3 images
    image_type.calls.clear()  # type: ignore[attr-defined]
    mask_type.calls.clear()  # type: ignore[attr-defined]
    for item in checked:
        images.encode(item)
    assert not READS_EVERY_VALUE & set(image_type.calls)  # type: ignore[attr-defined]
    assert not mask_type.calls  # type: ignore[attr-defined]  # the mask file is made from the check's pixels


def test_encode_trusts_the_check() -> None:
    image = torch.rand(512, 512, 3)
    mask = torch.ones(512, 512)
    checked = images.check_image(image, mask)
    image[0, 0] = float("nan")  # what the check would refuse, written after it
    mask.zero_()
    encoded, encoded_mask = images.encode(checked)
    assert images.decode_image(file_bytes(encoded))[0, 0].tolist() == [0, 0, 0]
    assert encoded_mask is not None and (images.decode_image(file_bytes(encoded_mask)) == 255).all()


def test_encode_mask_without_a_mask_is_a_programming_error() -> None:
    checked = images.check_image(torch.rand(512, 512, 3))
    assert images.encode(checked)[1] is None
    with pytest.raises(ValueError, match="without a mask"):
        images.encode_mask(checked)


# --- the payload rule --------------------------------------------------------------------------------


def test_the_png_limit_is_exact_in_bytes() -> None:
    image = as_image(photo_like(600, 700, seed=2))
    png_bytes_count = encode_one(image).byte_count
    assert encode_one(image, max_bytes=png_bytes_count).mime == "image/png"
    fallback = encode_one(image, max_bytes=png_bytes_count - 1)
    assert fallback.mime == "image/jpeg" and fallback.byte_count < png_bytes_count
    assert len(fallback.notes) == 1 and "JPEG quality 95" in fallback.notes[0]


def test_a_photo_whose_png_is_between_7_and_10_mb_is_sent_as_jpeg_within_the_base64_guidance() -> None:
    pixels = photo_like(2048, 2048, seed=8)
    png_size = len(png.encode_png(pixels))
    assert images.MAX_BASE64_FILE_BYTES < png_size <= images.MAX_FILE_BYTES  # the case of issue 10
    encoded = encode_one(as_image(pixels))
    assert encoded.mime == "image/jpeg" and encoded.byte_count <= images.MAX_BASE64_FILE_BYTES
    assert len(encoded.data_uri) < png_size * 4 / 3  # the body the PNG would have made is gone
    assert "JPEG quality 95" in encoded.notes[0]  # the top of the ladder: a photo fits there
    assert images.decode_image(file_bytes(encoded)).shape == (2048, 2048, 3)


def test_masks_are_always_png_and_small() -> None:
    mask = torch.rand(4096, 4096, generator=torch.Generator().manual_seed(3))  # worst case: salt and pepper
    _, encoded_mask = images.encode(images.check_image(torch.zeros(4096, 4096, 3), mask))
    assert encoded_mask is not None and encoded_mask.mime == "image/png"
    assert encoded_mask.byte_count <= images.MAX_BASE64_FILE_BYTES


# --- results: size bound and decode limit ------------------------------------------------------------


def bilevel_png(width_px: int, height_px: int) -> bytes:
    """A valid all-black 1-bit PNG: a few KB however large, built without holding its pixels."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = bytes(1 + (width_px + 7) // 8)  # filter byte 0, then zero bits
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height_px)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width_px, height_px, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_a_result_over_pillows_limit_decodes_with_the_requests_own_limit() -> None:
    data = bilevel_png(13600, 13600)  # a 3400^2 input with upscale_factor 4: 185 Mpx
    limit_before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(DownloadError, match="too large"):
        images.decode_image(data)  # Pillow's process-wide limit, as before
    decoded = images.decode_image(data, max_pixels=images.decode_limit_px(ImageSize(13600, 13600)))
    assert decoded.shape == (13600, 13600, 3) and decoded.dtype == np.uint8 and not decoded[::97, ::89].any()
    assert Image.MAX_IMAGE_PIXELS == limit_before


def test_a_result_over_the_given_limit_is_refused_from_its_header() -> None:
    data = bilevel_png(13600, 13600)[:200]  # the header alone: refused before any pixel is read
    with pytest.raises(DownloadError) as caught:
        images.decode_image(data, max_pixels=100_000_000)
    assert "13600x13600" in str(caught.value) and "100000000 px" in str(caught.value)


def test_the_given_limit_replaces_pillows_for_that_call_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's global, as another part of the host set it
    data = png_bytes(Image.fromarray(random_uint8(64, 64)))  # 4096 px: over 2 x 1000
    assert images.decode_image(data, max_pixels=4096).shape == (64, 64, 3)
    with pytest.raises(DownloadError, match="4095 px"):
        images.decode_image(data, max_pixels=4095)
    assert Image.MAX_IMAGE_PIXELS == 1000
    with pytest.raises(DownloadError, match="too large"):
        images.decode_image(data)
    with pytest.raises(DownloadError, match="not an image"):
        images.decode_image(b"<html>error</html>", max_pixels=4096)


def test_decode_limit_allows_a_result_twice_the_prediction_per_side() -> None:
    assert images.decode_limit_px(ImageSize(1024, 1024)) == 2 * 89_478_485  # never below Pillow's own refusal
    assert images.decode_limit_px(ImageSize(7000, 7000)) == 4 * 7000 * 7000
    assert images.decode_limit_px(ImageSize(13600, 13600)) == images.MAX_RESULT_PIXELS >= 13600 * 13600
    assert images.decode_limit_px(ImageSize(16384, 16384)) == 16384 * 16384


def test_result_size_bound_refuses_before_sending_with_the_rule_the_size_and_the_fix() -> None:
    images.check_result_size(ImageSize(16384, 16384))  # 4096^2 upscaled 4x, one result: 4 GB
    images.check_result_size(ImageSize(13600, 13600), count=2)
    with pytest.raises(InputError) as caught:
        images.check_result_size(ImageSize(16384, 16384), count=4)  # n=4: 16 GB
    message = str(caught.value)
    assert "8 GiB" in message and "4 results of 16384x16384 = 15.0 GiB" in message and "fewer results (n)" in message
    with pytest.raises(InputError, match="at most 16384 px per side"):
        images.check_result_size(ImageSize(16385, 512))
    with pytest.raises(InputError, match="2 results of 2048x2048"):
        images.check_result_size(ImageSize(2048, 2048), count=2, memory_limit_bytes=10_000_000)
    assert images.result_memory_bytes(ImageSize(100, 10), count=3) == 3 * 1000 * 15
