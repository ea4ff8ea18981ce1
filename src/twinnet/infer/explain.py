"""Grad-CAM for both images of a pair, and heatmap overlays.

The math is the original sample's: take the encoder's output activations of both images,
back-propagate the predicted class's logit, weight each channel by its mean gradient and
sum over channels (no ReLU, so the wire format keeps the sample's values).

The gradient that Grad-CAM needs is that of a logit with respect to the encoder's *output*,
and only the head lies between the two. So the encoder runs without autograd (its feature
maps may even come from the cache), and ``torch.autograd.grad`` differentiates the head
with respect to the two feature-map tensors alone. No module hooks are registered, no
parameter ``.grad`` is written, and nothing is stored on shared objects: two requests in a
row, or from two threads at once, cannot see each other's state.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from twinnet.core.imaging import ImageSource, decode_image
from twinnet.core.result import CompareResult
from twinnet.errors import TwinnetError

__all__ = [
    "grad_cam",
    "upsample_cam",
    "normalize_cam",
    "heatmap",
    "overlay",
    "side_by_side",
    "save_cam_picture",
]


def grad_cam(
    head: nn.Module, left: torch.Tensor, right: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits and Grad-CAM maps of a batch of pairs, from their encoder feature maps.

    Args:
        head: the twin head (eval mode), mapping ``cat([left, right], 1)`` to 2 logits.
        left: feature maps of the left images, (N, C, h, w).
        right: feature maps of the right images, (N, C, h, w).

    Returns:
        ``(logits (N, 2), cam_left (N, h, w), cam_right (N, h, w))``, detached, fp32. Each
        pair's map explains its own predicted class: in eval mode the head treats every row
        independently, so summing the chosen logits over the batch gives per-pair gradients.
    """
    # Fresh leaf tensors that own their memory: cached maps may be inference tensors.
    fl = left.detach().float().clone().requires_grad_(True)
    fr = right.detach().float().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = head(torch.cat([fl, fr], dim=1))
        chosen = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()
        grad_l, grad_r = torch.autograd.grad(chosen, (fl, fr))
    with torch.no_grad():
        cam_l = (grad_l.mean(dim=(2, 3), keepdim=True) * fl).sum(dim=1)
        cam_r = (grad_r.mean(dim=(2, 3), keepdim=True) * fr).sum(dim=1)
    return logits.detach(), cam_l, cam_r


def normalize_cam(cam: np.ndarray) -> np.ndarray:
    """Scale a map to [0, 1] (min to max), as the sample's notebooks display it; flat maps give 0."""
    cam = np.asarray(cam, dtype=np.float32)
    lo, hi = float(cam.min()), float(cam.max())
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo < 1e-12:
        return np.zeros_like(cam)
    return (cam - lo) / (hi - lo)


def upsample_cam(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize an encoder-resolution map to ``size`` = (width, height), values kept."""
    arr = np.ascontiguousarray(np.asarray(cam, dtype=np.float32))
    img = Image.fromarray(arr).resize(size, Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def _jet(x: np.ndarray) -> np.ndarray:
    """The jet colour map of values in [0, 1], as uint8 RGB; no plotting library needed."""
    x = np.clip(x, 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)  # red, green, blue
    rgb = np.clip(1.5 - np.abs(4.0 * x - centres), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def _cam_on_canvas(cam01: np.ndarray, size: tuple[int, int], resize_method: str) -> np.ndarray:
    """Place a [0, 1] map over an image of ``size`` the way the preprocessing framed it.

    ``squish`` stretched the whole image to the square, so the map stretches back over all
    of it. ``crop`` kept the centred square, so the map covers that square and the margins
    get 0. ``pad`` letterboxed the image, so the map's padded border is cut off first.
    """
    w, h = size
    if resize_method == "crop":
        side = min(w, h)
        out = np.zeros((h, w), dtype=np.float32)
        x0, y0 = (w - side) // 2, (h - side) // 2
        out[y0 : y0 + side, x0 : x0 + side] = upsample_cam(cam01, (side, side))
        return out
    if resize_method == "pad":
        n = max(w, h)
        square = upsample_cam(cam01, (n, n))
        x0, y0 = (n - w) // 2, (n - h) // 2
        return square[y0 : y0 + h, x0 : x0 + w]
    return upsample_cam(cam01, (w, h))


def heatmap(cam: np.ndarray, size: tuple[int, int], resize_method: str = "squish") -> Image.Image:
    """The map alone, coloured, at ``size`` = (width, height)."""
    return Image.fromarray(_jet(_cam_on_canvas(normalize_cam(cam), size, resize_method)))


def overlay(
    image: Image.Image, cam: np.ndarray, resize_method: str = "squish", alpha: float = 0.5
) -> Image.Image:
    """The heatmap blended over the original image, at the image's own size and aspect ratio.

    Args:
        image: the decoded RGB image the map was computed from.
        cam: its Grad-CAM map at encoder resolution (any real values).
        resize_method: the spec's ``resize_method``, to undo the preprocessing's framing.
        alpha: opacity of the heatmap.
    """
    rgb = image.convert("RGB")
    placed = _cam_on_canvas(normalize_cam(cam), rgb.size, resize_method)
    heat = _jet(placed).astype(np.float32)
    base = np.asarray(rgb, dtype=np.float32)
    weight = np.full(placed.shape + (1,), float(alpha), dtype=np.float32)
    if resize_method == "crop":  # no evidence outside the crop: show the photo untouched
        w, h = rgb.size
        side = min(w, h)
        mask = np.zeros((h, w, 1), dtype=np.float32)
        x0, y0 = (w - side) // 2, (h - side) // 2
        mask[y0 : y0 + side, x0 : x0 + side] = 1.0
        weight *= mask
    out = base * (1.0 - weight) + heat * weight
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def _fit_height(img: Image.Image, height: int) -> Image.Image:
    w, h = img.size
    return img.resize((max(1, round(w * height / h)), height), Image.BILINEAR)


def side_by_side(
    panels: list[Image.Image], caption: str = "", height: int = 320, gap: int = 8
) -> Image.Image:
    """One picture with ``panels`` in a row, each scaled to ``height`` at its own aspect ratio."""
    scaled = [_fit_height(p.convert("RGB"), height) for p in panels]
    top = 28 if caption else 0
    width = sum(p.width for p in scaled) + gap * (len(scaled) + 1)
    canvas = Image.new("RGB", (width, height + top + 2 * gap), (255, 255, 255))
    x = gap
    for p in scaled:
        canvas.paste(p, (x, top + gap))
        x += p.width + gap
    if caption:
        ImageDraw.Draw(canvas).text((gap, 8), caption, fill=(0, 0, 0))
    return canvas


def save_cam_picture(
    left: ImageSource,
    right: ImageSource,
    result: CompareResult,
    out: str | os.PathLike,
    resize_method: str = "squish",
) -> Path:
    """Write both images beside their Grad-CAM overlays, captioned with the verdict.

    One picture serves every backend (in process, TorchServe, SageMaker), since the maps
    travel in the :class:`~twinnet.core.result.CompareResult`.

    Args:
        left: the left image (path, bytes, PIL image or file-like).
        right: the right image.
        result: a :class:`~twinnet.core.result.CompareResult` holding both maps.
        out: the picture's path (PNG, JPEG...).
        resize_method: how the model framed the images (the spec's ``resize_method``).

    Returns:
        The path written.
    """
    if not result.has_cam:
        raise TwinnetError("the backend returned no Grad-CAM maps")
    left_img, right_img = decode_image(left, "left"), decode_image(right, "right")
    picture = side_by_side(
        [
            left_img,
            overlay(left_img, result.cam_left, resize_method),
            right_img,
            overlay(right_img, result.cam_right, resize_method),
        ],
        caption=(
            f"{result.verdict}: p(same) = {result.probability:.3f}, "
            f"threshold {result.threshold:.2f}"
        ),
    )
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        picture.save(path)
    except (ValueError, OSError) as exc:
        raise TwinnetError(f"cannot write {path}: {exc}") from None
    return path
