"""Safe image decoding and the preprocessing built from a :class:`ModelSpec`.

Every stage decodes through :func:`decode_image` and preprocesses through
:func:`build_transforms`, so training, the library, the handler and the app agree
pixel for pixel.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from twinnet.core.spec import ModelSpec
from twinnet.errors import ImageError

__all__ = [
    "ImageSource",
    "MAX_PIXELS",
    "decode_image",
    "read_bytes",
    "source_name",
    "Preprocess",
    "build_transforms",
]

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | IO[bytes]
#: Default cap on decoded pixels (about 8000 x 5000), against decompression bombs.
MAX_PIXELS = 40_000_000
ImageFile.LOAD_TRUNCATED_IMAGES = False


def source_name(src: ImageSource, name: str | None = None) -> str:
    """A short human name for an input, for error messages."""
    if name:
        return name
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, Image.Image):
        return "<PIL image>"
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    return getattr(src, "name", None) or "<file object>"


def read_bytes(src: ImageSource, name: str | None = None) -> bytes:
    """The encoded bytes of a path, buffer or file-like source (used for cache keys)."""
    label = source_name(src, name)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_file():
            raise ImageError(f"{label}: no such file", field=name)
        return path.read_bytes()
    if hasattr(src, "read"):
        data = src.read()
        if not isinstance(data, (bytes, bytearray)):
            raise ImageError(f"{label}: file object must be opened in binary mode", field=name)
        return bytes(data)
    raise ImageError(f"{label}: unsupported input type {type(src).__name__}", field=name)


def _open(src: ImageSource, name: str | None, label: str, max_pixels: int) -> Image.Image:
    """Open encoded bytes lazily (header only); a bomb, empty or unknown input is an ImageError."""
    data = read_bytes(src, name)
    if not data:
        raise ImageError(f"{label}: empty input (0 bytes), expected an image", field=name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"{label}: image too large (over {max_pixels:,} pixels)", field=name
        ) from None
    except Exception:
        raise ImageError(
            f"{label}: not a readable image (supported: JPEG, PNG, WebP, BMP, GIF, TIFF, PGM)",
            field=name,
        ) from None


def decode_image(
    src: ImageSource,
    name: str | None = None,
    *,
    max_pixels: int = MAX_PIXELS,
    draft: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode an input to an RGB PIL image, or raise :class:`ImageError` naming it.

    EXIF orientation is applied, any mode (grey, palette, RGBA, 16-bit, float) becomes RGB
    (16-bit and float on a fixed scale, see :func:`_to_eight_bit`), and an image whose
    header claims more than ``max_pixels`` is refused before its pixels are decoded.
    ``draft`` lets JPEG decode at a reduced scale no smaller than the given size.

    Args:
        src: a path, encoded bytes, a binary file object or a PIL image.
        name: what to call the input in errors (e.g. the form field ``left``).
        max_pixels: the decompression-bomb cap.
        draft: minimum (width, height) kept when JPEG decodes at reduced scale.
    """
    label = source_name(src, name)
    # An image opened here is changed in place (no copies of a large photo); a caller's
    # PIL image is left as it was.
    own = not isinstance(src, Image.Image)
    img = _open(src, name, label, max_pixels) if own else src
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(
            f"{label}: image of {width}x{height} pixels is over the limit of {max_pixels:,}",
            field=name,
        )
    if width < 1 or height < 1:
        raise ImageError(f"{label}: image has no pixels", field=name)
    try:
        if draft is not None and img.format == "JPEG":
            img.draft("RGB", draft)
        img.load()
        if own:
            ImageOps.exif_transpose(img, in_place=True)
        else:
            img = ImageOps.exif_transpose(img)
        img = _to_eight_bit(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, img)
        return img if own and img.mode == "RGB" else img.convert("RGB")
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(
            f"{label}: image data is corrupt or truncated ({exc.__class__.__name__}: {exc})",
            field=name,
        ) from None


#: Integer modes holding 16-bit samples (Pillow opens 16-bit grey PNG and TIFF as these).
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def _to_eight_bit(img: Image.Image) -> Image.Image:
    """Grey 16-bit and float images as 8-bit ``L``, on a fixed scale as image libraries do.

    16-bit samples are divided by 257 (65535 becomes 255) and float samples, taken to lie in
    [0, 1], are multiplied by 255; both are clipped. A fixed scale keeps a white image white
    and the same scene equal at any bit depth, where stretching each image to its own
    range would not. Other modes pass through unchanged.
    """
    if img.mode in _SIXTEEN_BIT_MODES:
        scale = 1.0 / 257.0
    elif img.mode == "F":
        scale = 255.0
    else:
        return img
    arr = np.asarray(img, dtype=np.float64) * scale
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


#: Filters that torch's uint8 kernels run as Pillow does (antialiased, separable, fixed-point
#: weights): on photos they give Pillow's pixels within one grey level on under 0.3% of the
#: values, about four times faster (0.6 ms against 3.0 ms for 1024x768 to 224 px). The
#: fast inference paths use them; training and fp32 keep Pillow's pixels exactly.
_TORCH_FILTERS = ("bilinear", "bicubic")


# Pillow's arrays are read-only and torch only reads this one: a copy of a large photo
# just to quiet torch's warning would cost more than the resize.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", module=__name__)


def _torch_resize(arr: np.ndarray, size: int, mode: str) -> np.ndarray:
    """An (h, w, 3) uint8 array squished to (size, size, 3) by torch's antialiased kernel."""
    x = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)
    with torch.inference_mode():
        out = torch.nn.functional.interpolate(
            x.contiguous(memory_format=torch.channels_last),
            size=(size, size), mode=mode, antialias=True, align_corners=False,
        )  # fmt: skip
    return out[0].permute(1, 2, 0).contiguous().numpy()


@dataclass(frozen=True)
class Preprocess:
    """The spec's preprocessing: resize, then [0, 1] tensor, then normalise.

    Split in two steps because fastai's batch augmentations run between them in training.
    With ``fast_resize`` a squish runs torch's uint8 kernel instead of Pillow's (see
    :data:`_TORCH_FILTERS`): the bf16 and int8 paths take it, whose own rounding is larger;
    training and fp32 keep Pillow's pixels, so an fp32 forward stays exactly the sample's.
    """

    size: int
    resize_method: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    fast_resize: bool = False

    def pixels(self, img: Image.Image) -> np.ndarray:
        """An RGB image resized to the network's square input, as an (s, s, 3) uint8 array.

        With ``fast_resize``, a squish with a bilinear or bicubic filter runs torch's
        antialiased uint8 kernel; everything else runs Pillow's.
        """
        s = self.size
        if img.size == (s, s) and img.mode == "RGB":
            return np.asarray(img, dtype=np.uint8)
        fast = self.fast_resize and self.resize_method == "squish"
        if fast and self.interpolation in _TORCH_FILTERS:
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            return _torch_resize(np.asarray(rgb, np.uint8), s, self.interpolation)
        resample = Image.Resampling[self.interpolation.upper()]
        if self.resize_method == "squish":
            out = img.resize((s, s), resample, reducing_gap=None)
        elif self.resize_method == "crop":
            out = ImageOps.fit(img, (s, s), resample)
        else:
            out = ImageOps.pad(img, (s, s), resample, color=(0, 0, 0))
        return np.asarray(out if out.mode == "RGB" else out.convert("RGB"), dtype=np.uint8)

    def to_unit_tensor(self, img: Image.Image) -> torch.Tensor:
        """A resized image as a float tensor (3, s, s) in [0, 1]."""
        arr = self.pixels(img)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a (..., 3, H, W) tensor in [0, 1] with the spec's mean and std."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x - mean) / std

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Full preprocessing of one decoded image to a normalised (3, s, s) tensor."""
        return self.normalize(self.to_unit_tensor(img))

    def batch(self, imgs: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        """Preprocess several images into one (N, 3, s, s) batch, equal to stacking ``__call__``.

        Images may be decoded PIL images or :meth:`pixels` arrays. The same element-wise
        steps run once over the batch, on a contiguous NCHW tensor made from the uint8
        pixels: converting the channels-last view to float took twice as long, and five
        times as long outside the main thread (where Ray's replicas run the model).
        """
        arr = np.stack([a if isinstance(a, np.ndarray) else self.pixels(a) for a in imgs])
        unit = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
        return self.normalize(unit)


def build_transforms(spec: ModelSpec, fast_resize: bool = False) -> Preprocess:
    """The only constructor of the preprocessing; every stage calls it with the model's spec
    (and the inference fast paths with ``fast_resize``)."""
    return Preprocess(
        spec.image_size, spec.resize_method, spec.mean, spec.std, spec.interpolation, fast_resize
    )
