"""Safe decoding: every bad input is an ImageError naming it; every mode becomes upright RGB."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from twinnet.core.imaging import build_transforms, decode_image
from twinnet.core.spec import ModelSpec
from twinnet.errors import ImageError

pytestmark = pytest.mark.unit


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo(w: int = 160, h: int = 120) -> Image.Image:
    """A smooth, JPEG-friendly colour image."""
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.uint8)
    return Image.fromarray(arr)


def png_with_header_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims ``width`` x ``height``: a decompression bomb's shape."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "empty"),
        (b"this is not an image at all", "not a readable image"),
        (b"\x89PNG\r\n\x1a\n", "not a readable image"),
    ],
    ids=["zero-bytes", "text", "png-signature-only"],
)
def test_bad_bytes_raise_image_error_naming_the_input(data, words):
    with pytest.raises(ImageError, match=words) as info:
        decode_image(data, "left")
    assert str(info.value).startswith("left:")
    assert info.value.field == "left"


def test_truncated_jpeg_raises_image_error():
    data = encode(photo(), "JPEG", quality=90)
    with pytest.raises(ImageError, match="corrupt or truncated") as info:
        decode_image(data[: len(data) // 2], "right")
    assert "right" in str(info.value)


def test_truncated_png_raises_image_error():
    data = encode(photo(), "PNG")
    with pytest.raises(ImageError, match="right"):
        decode_image(data[: len(data) - 40], "right")


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="no such file") as info:
        decode_image(missing)
    assert str(missing) in str(info.value)


def test_text_mode_file_object_is_refused(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hello")
    with open(path) as fh, pytest.raises(ImageError, match="binary mode"):
        decode_image(fh)


def test_decompression_bomb_header_is_refused_before_decoding():
    with pytest.raises(ImageError, match="too large|over the limit"):
        decode_image(png_with_header_size(20_000, 20_000), "left")


def test_pixel_cap_is_adjustable():
    data = encode(photo(200, 100), "PNG")
    assert decode_image(data, max_pixels=20_000).size == (200, 100)
    with pytest.raises(ImageError, match="over the limit of 19,999"):
        decode_image(data, max_pixels=19_999)


def test_exif_orientation_is_applied():
    # Left half red, right half blue; orientation 6 means "rotate 90 degrees clockwise to view".
    arr = np.zeros((40, 80, 3), dtype=np.uint8)
    arr[:, :40] = (255, 0, 0)
    arr[:, 40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes())
    img = decode_image(data)
    assert img.size == (40, 80)
    out = np.asarray(img).astype(int)
    top, bottom = out[:30].reshape(-1, 3).mean(0), out[50:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 60  # red ends up on top after the clockwise turn
    assert bottom[2] > 200 and bottom[0] < 60


def _modes() -> dict[str, bytes]:
    base = photo(64, 48)
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.new("L", base.size, 0))  # fully transparent: composited on white
    grey16 = Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16))
    palette_t = base.convert("P", palette=Image.ADAPTIVE, colors=16)
    palette_t.info["transparency"] = 0
    return {
        "L": encode(base.convert("L"), "PNG"),
        "LA": encode(base.convert("LA"), "PNG"),
        "RGBA": encode(rgba, "PNG"),
        "P": encode(base.convert("P", palette=Image.ADAPTIVE, colors=16), "PNG"),
        "P+transparency": encode(palette_t, "PNG", transparency=0),
        "I;16": encode(grey16, "PNG"),
        "1": encode(base.convert("1"), "PNG"),
        "CMYK": encode(base.convert("CMYK"), "JPEG"),
        "PGM": encode(base.convert("L"), "PPM"),
        "GIF": encode(base, "GIF"),
        "WEBP": encode(base, "WEBP"),
    }


@pytest.mark.parametrize("mode", list(_modes()))
def test_every_mode_becomes_rgb(mode):
    img = decode_image(_modes()[mode], mode)
    assert img.mode == "RGB" and img.size == (64, 48)


def test_transparent_pixels_become_white():
    img = decode_image(_modes()["RGBA"])
    assert np.asarray(img).min() == 255


def _grey(img: Image.Image) -> np.ndarray:
    """The one channel of a decoded grey image (all three RGB channels are equal)."""
    arr = np.asarray(img).astype(int)
    assert np.array_equal(arr[..., 0], arr[..., 2])
    return arr[..., 0]


@pytest.mark.parametrize(
    "array, fmt, expected",
    [
        (np.full((8, 8), 65535, np.uint16), "PNG", 255),
        (np.full((8, 8), 128 * 257, np.uint16), "PNG", 128),
        (np.full((8, 8), 0, np.uint16), "PNG", 0),
        (np.full((8, 8), 1.0, np.float32), "TIFF", 255),
        (np.full((8, 8), 0.5, np.float32), "TIFF", 128),
        (np.full((8, 8), 3.0, np.float32), "TIFF", 255),
        (np.full((8, 8), -1.0, np.float32), "TIFF", 0),
    ],
    ids=["white-16", "mid-16", "black-16", "white-float", "mid-float", "over-float", "under-float"],
)
def test_sixteen_bit_and_float_decode_on_a_fixed_scale(array, fmt, expected):
    # A flat image has no range of its own: only a fixed scale can decode it right.
    assert (_grey(decode_image(encode(Image.fromarray(array), fmt))) == expected).all()


def test_sixteen_bit_ramp_is_divided_by_257():
    data = _modes()["I;16"]
    ramp = np.asarray(Image.open(io.BytesIO(data))).astype(float)
    assert np.array_equal(_grey(decode_image(data)), np.rint(ramp / 257))


def _colour_photo_at_16_bit(path) -> tuple[bytes, Image.Image]:
    """A colour photo's luminance as a 16-bit PNG, and its 8-bit grey original."""
    rgb = Image.open(path).convert("RGB")
    lum = np.asarray(rgb, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])
    return encode(Image.fromarray(np.rint(lum * 257).astype(np.uint16)), "PNG"), rgb.convert("L")


def _grey_photo_at_16_bit(path) -> tuple[bytes, Image.Image]:
    """An 8-bit grey photo widened to 16 bits as image tools do (x 257)."""
    grey = Image.open(path).convert("L")
    wide = np.asarray(grey).astype(np.uint16) * 257
    return encode(Image.fromarray(wide), "PNG"), grey


@pytest.mark.parametrize(
    "rel, make",
    [
        ("samples/c4.jpg", _colour_photo_at_16_bit),
        ("att-faces/s1/1.pgm", _grey_photo_at_16_bit),
    ],
    ids=["colour-photo", "grey-face"],
)
def test_sixteen_bit_photo_decodes_like_its_eight_bit_original(shared_data, rel, make):
    # Neither photo spans the full 16-bit range, so stretching it to its own range is wrong.
    data, original = make(shared_data / rel)
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    decoded = _grey(decode_image(data))
    reference = _grey(decode_image(encode(original, "PNG")))
    assert np.abs(decoded - reference).max() <= 1


def test_float_photo_decodes_like_its_eight_bit_original(shared_data):
    grey = Image.open(shared_data / "att-faces/s1/1.pgm").convert("L")
    unit = np.asarray(grey, dtype=np.float32) / 255.0
    data = encode(Image.fromarray(unit), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    assert np.abs(_grey(decode_image(data)) - np.asarray(grey).astype(int)).max() <= 1


def test_all_source_kinds_decode_alike(tmp_path):
    data = encode(photo(), "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(data)
    ref = np.asarray(decode_image(data))
    for src in (path, str(path), bytearray(data), memoryview(data), io.BytesIO(data)):
        assert np.array_equal(np.asarray(decode_image(src)), ref)
    assert np.array_equal(np.asarray(decode_image(Image.open(io.BytesIO(data)))), ref)


def test_draft_decodes_large_jpeg_at_reduced_scale_but_not_below_request():
    data = encode(photo(1024, 768), "JPEG", quality=90)
    img = decode_image(data, draft=(336, 336))
    assert img.size == (512, 384)  # 1/2 scale; 1/4 would fall below 336
    assert decode_image(data, draft=(600, 600)).size == (1024, 768)


def test_batch_preprocessing_equals_single_images():
    pre = build_transforms(ModelSpec(arch="resnet18", image_size=64))
    imgs = [photo(160, 120), photo(90, 200), photo(64, 64)]
    batch = pre.batch(imgs)
    assert batch.shape == (3, 3, 64, 64)
    assert torch.equal(batch, torch.stack([pre(img) for img in imgs]))


def test_a_callers_pil_image_is_left_as_it_was():
    """Decoding in place is only for images opened from bytes: a caller's image keeps its
    size and orientation, and the decoded copy is upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(photo(80, 40), "JPEG", quality=95, exif=exif.tobytes())
    theirs = Image.open(io.BytesIO(data))
    theirs.load()
    before = np.asarray(theirs).copy()
    out = decode_image(theirs)
    assert out is not theirs and out.size == (40, 80)
    assert theirs.size == (80, 40) and np.array_equal(np.asarray(theirs), before)
    assert theirs.getexif().get(0x0112) == 6


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_fast_resize_gives_pillows_pixels_within_one_grey_level(shared_data, interpolation):
    spec = ModelSpec(arch="resnet18", image_size=224, interpolation=interpolation)
    exact, fast = build_transforms(spec), build_transforms(spec, fast_resize=True)
    for name in ("c1.jpg", "c2.jpg", "c3.jpg"):
        img = decode_image(shared_data / "samples" / name)
        ref = np.asarray(
            img.resize((224, 224), Image.Resampling[interpolation.upper()], reducing_gap=None)
        ).astype(int)
        assert np.array_equal(exact.pixels(img), ref)  # training and fp32: Pillow, exactly
        got = fast.pixels(img).astype(int)
        assert got.shape == ref.shape and got.dtype == ref.dtype
        diff = np.abs(got - ref)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.005


def test_fast_resize_leaves_crop_pad_and_other_filters_to_pillow():
    img = photo(160, 120)
    for kw in ({"resize_method": "crop"}, {"resize_method": "pad"}, {"interpolation": "lanczos"}):
        spec = ModelSpec(arch="resnet18", image_size=64, **kw)
        exact, fast = build_transforms(spec), build_transforms(spec, fast_resize=True)
        assert np.array_equal(fast.pixels(img), exact.pixels(img))


def test_small_images_upscale_alike_on_both_kernels():
    img = Image.fromarray((np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8))
    spec = ModelSpec(arch="resnet18", image_size=32)
    exact, fast = build_transforms(spec), build_transforms(spec, fast_resize=True)
    assert np.abs(fast.pixels(img).astype(int) - exact.pixels(img).astype(int)).max() <= 1
