"""Data sources: generated shapes (tests, benchmarks), scikit-learn digits (offline demo), Pets."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, ImageDraw

from twinnet.errors import TwinnetError

__all__ = [
    "resolve_source",
    "make_shapes_dataset",
    "SHAPES",
    "DATASETS",
    "PETS_LABELS",
    "PETS_URL",
    "cache_dir",
    "export_digits",
    "check_reachable",
    "download_pets",
    "resolve_dataset",
]

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
        (220, 40, 40),
        (40, 180, 40),
        (40, 80, 220),
        (230, 200, 30),
        (200, 40, 200),
        (30, 200, 210),
        (240, 130, 20),
        (120, 60, 20),
        (150, 150, 150),
        (90, 30, 160),
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


# --------------------------------------------------------------------------- cache and digits

#: Labels of the Oxford-IIIT Pet file names: ``Abyssinian_12.jpg`` is breed ``Abyssinian``.
PETS_LABELS = r"regex:^(.*)_\d+\.jpg$"
PETS_URL = "https://s3.amazonaws.com/fast-ai-imageclas/oxford-iiit-pet.tgz"
DATASETS = ("digits", "pets")


def cache_dir() -> Path:
    """Where downloaded or exported data sets live: ``$TWINNET_CACHE`` or ``~/.cache/twinnet``."""
    base = os.environ.get("TWINNET_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "twinnet"
    )
    return Path(base)


def export_digits(root: str | Path | None = None, scale: int = 4) -> Path:
    """Write scikit-learn's 1,797 handwritten digits as ``root/<digit>/<i>.png`` (once).

    The 8x8 images (values 0-16) ship inside scikit-learn, so the demo runs offline on real
    data. They are stretched to 0-255 grey and enlarged ``scale`` times with nearest-neighbour
    sampling, which keeps the original pixels exact. Writing goes to a temporary folder that is
    renamed at the end, so concurrent callers (torchrun ranks) never see a half-written set.
    """
    from sklearn.datasets import load_digits

    root = Path(root) if root is not None else cache_dir() / "digits"
    if (root / ".complete").is_file():
        return root
    bunch = load_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=root.parent))
    try:
        for i, (img, target) in enumerate(zip(images, bunch.target, strict=True)):
            folder = tmp / str(int(target))
            folder.mkdir(exist_ok=True)
            pil = Image.fromarray(img, mode="L")
            if scale > 1:
                pil = pil.resize((8 * scale, 8 * scale), Image.NEAREST)
            pil.save(folder / f"{i:04d}.png")
        (tmp / ".complete").write_text(f"{len(images)} images from sklearn.datasets.load_digits\n")
        try:
            tmp.rename(root)
        except OSError:  # another process finished first
            if not (root / ".complete").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


# --------------------------------------------------------------------------- Oxford-IIIT Pet


def _resolve(host: str, port: int, timeout: float) -> None:
    """DNS lookup bounded by ``timeout`` (``getaddrinfo`` ignores socket timeouts)."""
    result: list[BaseException | None] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            result.append(None)
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        raise OSError(f"DNS lookup of {host} timed out after {timeout:g} s")
    if result[0] is not None:
        raise result[0]


def check_reachable(url: str, timeout: float = 3.0) -> None:
    """Fail fast, before a download starts, when ``url``'s host cannot be reached.

    Raises:
        OSError: the name does not resolve or the host does not accept a connection within
            ``timeout`` seconds.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    _resolve(host, port, timeout)
    with socket.create_connection((host, port), timeout=timeout):
        pass


def download_pets(url: str = PETS_URL, timeout: float = 3.0) -> Path:
    """The Oxford-IIIT Pet ``images`` folder, downloaded and unpacked by fastai on first use.

    fastai's ``untar_data`` keeps it under ``$FASTAI_HOME`` (``~/.fastai``). Offline, this fails
    within about ``2 * timeout`` seconds instead of hanging in the download.

    Raises:
        TwinnetError: the data are not cached and ``url`` cannot be reached.
    """
    import fastai.data
    from fastai.data.external import fastai_cfg, untar_data
    from fastdownload import FastDownload
    from fastdownload.core import urldest

    loader = FastDownload(fastai_cfg(), module=fastai.data, base="~/.fastai")
    unpacked = loader.data_path("data", urldest(url, loader.arch_path()))
    if not unpacked.exists():
        try:
            check_reachable(url, timeout)
        except OSError as exc:
            raise TwinnetError(
                f"cannot download the Oxford-IIIT Pet images from {url} ({exc}). Download and "
                "unpack them where there is internet, then pass the images folder as DATA_DIR "
                f"(or --data DIR) with --labels '{PETS_LABELS}'"
            ) from None
    try:
        path = untar_data(url)
    except Exception as exc:
        raise TwinnetError(
            f"downloading {url} failed ({exc.__class__.__name__}: {exc}); pass a local copy "
            "of the images folder as DATA_DIR (or --data DIR)"
        ) from None
    images = path / "images"
    return images if images.is_dir() else path


def resolve_dataset(name: str) -> tuple[Path, str]:
    """A named data set's folder and label source, fetched or exported on first use."""
    if name == "digits":
        return export_digits(), "folder"
    if name == "pets":
        return download_pets(), PETS_LABELS
    raise TwinnetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def resolve_source(
    data: str | os.PathLike | None,
    dataset: str | None,
    labels: str | None,
    fallback: str | os.PathLike | None = None,
) -> tuple[Path, str | None]:
    """The folder to read and its label rule: DATA_DIR, a named data set, or ``fallback``.

    The one place that chooses the data of a command (``train``, ``evaluate``, ``calibrate``):
    DATA_DIR and ``dataset`` exclude each other, a named data set brings its label rule
    unless ``labels`` is given (otherwise ``labels`` as given, ``None`` included), and ``fallback`` (for ``evaluate``, the folder a model was
    trained on) is used only when nothing else is given and it still exists.
    """
    if dataset:
        if data:
            raise TwinnetError("give either DATA_DIR (--data) or --dataset, not both")
        root, dataset_labels = resolve_dataset(dataset)
        return root, labels or dataset_labels
    if not data and fallback and Path(fallback).is_dir():
        data = fallback
    if not data:
        raise TwinnetError("no data: give DATA_DIR (or --data DIR), or --dataset digits|pets")
    return Path(data), labels
