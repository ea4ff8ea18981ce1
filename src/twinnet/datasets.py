"""Data sources: generated shapes (tests, benchmarks), scikit-learn digits (offline demo), Pets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["make_shapes_dataset", "SHAPES"]

SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar")


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], color) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w = max(2, (x1 - x0) // 6)
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=color)
    elif shape == "cross":
        draw.rectangle((cx - w, y0, cx + w, y1), fill=color)
        draw.rectangle((x0, cy - w, x1, cy + w), fill=color)
    elif shape == "ring":
        draw.ellipse(box, outline=color, width=w)
    else:
        draw.rectangle((x0, cy - w, x1, cy + w), fill=color)


def make_shapes_dataset(
    root: str | Path,
    classes: int = 6,
    per_class: int = 20,
    size: int = 64,
    seed: int = 0,
    fmt: str = "png",
) -> Path:
    """Write ``root/<class>/<i>.<fmt>``: each class is one shape in one hue, jittered in place,
    scale, shade and background noise, so "same class" is learnable but not trivial.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    palette = [
        (220, 40, 40), (40, 180, 40), (40, 80, 220), (230, 200, 30), (200, 40, 200),
        (30, 200, 210), (240, 130, 20), (120, 60, 20), (150, 150, 150), (90, 30, 160),
    ]
    for c in range(classes):
        shape, color = SHAPES[c % len(SHAPES)], palette[c % len(palette)]
        if c >= len(SHAPES):  # more classes than shapes: vary the hue by class too
            color = palette[(c * 3 + 1) % len(palette)]
        folder = root / f"{shape}_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            bg = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
            img = Image.fromarray(bg)
            side = int(size * rng.uniform(0.35, 0.6))
            x0 = int(rng.integers(0, size - side))
            y0 = int(rng.integers(0, size - side))
            shade = rng.uniform(0.8, 1.0)
            col = tuple(int(v * shade) for v in color)
            _draw(ImageDraw.Draw(img), shape, (x0, y0, x0 + side, y0 + side), col)
            img.save(folder / f"{i}.{fmt}")
    return root
