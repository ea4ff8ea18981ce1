"""Safe decoding: every bad input is an ImageError naming it; every mode becomes upright RGB."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from twinnet.errors import ImageError
from twinnet.imaging import build_transforms, decode_image
from twinnet.spec import ModelSpec

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


def test_sixteen_bit_grey_keeps_its_range():
    arr = np.asarray(decode_image(_modes()["I;16"]))
    assert arr.min() == 0 and arr.max() == 255


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
