"""Labelled image folders, splits, and balanced pair and class-balanced sampling.

No fastai here: evaluation, search and the servers use these pieces too. The fastai side of
the data path (datasets as fastai items, DataLoaders, batch transforms) lives in
:mod:`twinnet.train.loaders`, which imports this module and never the reverse.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from twinnet.core.imaging import Preprocess, decode_image
from twinnet.errors import DataError, ImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "visible_files",
    "list_images",
    "SPLITS",
    "UnreadableImagesWarning",
    "LabelledImages",
    "Split",
    "parse_labels",
    "scan_folder",
    "check_images",
    "split_items",
    "draw_pairs",
    "draw_class_batches",
]

#: File suffixes read as images, by training, evaluation, search and the app alike.
IMAGE_SUFFIXES = frozenset(".jpg .jpeg .png .bmp .gif .webp .tif .tiff .pgm .ppm .pbm .pnm".split())
SPLITS = ("random", "classes")
#: Images cached in memory as resized uint8 tensors when they fit in this many bytes.
CACHE_BYTES = 512 * 2**20


class UnreadableImagesWarning(UserWarning):
    """Some files of a data set could not be decoded and were left out."""


@dataclass
class LabelledImages:
    """Image files and their class indices.

    Attributes:
        root: the folder the files were found in.
        files: image paths.
        labels: class index of each file (into ``classes``).
        classes: sorted class names.
    """

    root: Path
    files: list[Path]
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.files)

    def counts(self) -> dict[str, int]:
        """Images per class name."""
        tally = Counter(self.labels.tolist())
        return {name: int(tally.get(i, 0)) for i, name in enumerate(self.classes)}

    def subset(self, index: Sequence[int] | np.ndarray) -> LabelledImages:
        """The given files, with class names re-indexed to those present."""
        index = np.asarray(index, dtype=np.int64)
        names = [self.classes[i] for i in self.labels[index]]
        classes = sorted(set(names))
        lookup = {c: i for i, c in enumerate(classes)}
        return LabelledImages(
            self.root,
            [self.files[i] for i in index],
            np.array([lookup[n] for n in names], dtype=np.int64),
            classes,
        )


def parse_labels(labels: str) -> re.Pattern[str] | None:
    """``folder`` gives None; ``regex:PATTERN`` gives the compiled pattern (group 1 = class)."""
    if labels == "folder":
        return None
    if labels.startswith("regex:"):
        try:
            pattern = re.compile(labels[len("regex:") :])
        except re.error as exc:
            raise DataError(
                f"--labels {labels!r}: not a valid regular expression ({exc})"
            ) from None
        if pattern.groups < 1:
            raise DataError(
                f"--labels {labels!r}: the pattern needs a group that captures the class, "
                r"e.g. 'regex:^(.*)_\d+\.jpg$'"
            )
        return pattern
    raise DataError(f"--labels must be 'folder' or 'regex:PATTERN', got {labels!r}")


def visible_files(root: Path) -> list[Path]:
    """The files under ``root``, recursively and sorted, without hidden ones.

    The one listing rule of twinnet: a file is hidden when its name, or the name of a folder
    between ``root`` and it, starts with a dot (``.DS_Store``, ``.ipynb_checkpoints/``).
    """
    return [
        path
        for path in sorted(root.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files (by suffix) under ``folder``, by :func:`visible_files`' rule."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory")
    return [p for p in visible_files(root) if p.suffix.lower() in IMAGE_SUFFIXES]


def scan_folder(root: str | Path, labels: str = "folder") -> LabelledImages:
    """Find the labelled images under ``root``.

    With ``folder`` labels the class is the parent folder relative to ``root`` and only files
    with an image extension count; files directly in ``root`` have no class and are ignored.
    With ``regex:PATTERN`` the pattern's first group, matched against the file name, is the
    class, and files whose names do not match are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist (pass an image folder as DATA_DIR)")
    pattern = parse_labels(labels)
    files: list[Path] = []
    names: list[str] = []
    for path in visible_files(root):
        rel = path.relative_to(root)
        if pattern is None:
            if path.suffix.lower() not in IMAGE_SUFFIXES or len(rel.parts) < 2:
                continue
            name = rel.parent.as_posix()
        else:
            match = pattern.match(path.name)
            if not match or not match.group(1):
                continue
            name = match.group(1)
        files.append(path)
        names.append(name)
    classes = sorted(set(names))
    lookup = {c: i for i, c in enumerate(classes)}
    return LabelledImages(root, files, np.array([lookup[n] for n in names], np.int64), classes)


def check_images(
    items: LabelledImages,
    preprocess: Preprocess | None = None,
    workers: int = 2,
) -> tuple[LabelledImages, dict[Path, torch.Tensor] | None]:
    """Decode every file once, before training, and drop the unreadable ones.

    Dropped files are reported in one :class:`UnreadableImagesWarning` that lists them, so a
    bad file cannot stop training in the middle of an epoch. When ``preprocess`` is given and
    the resized images fit in memory, they are returned as a cache of uint8 tensors.
    """
    cache_ok = preprocess is not None and len(items) * 3 * preprocess.size**2 <= CACHE_BYTES

    def load(path: Path) -> torch.Tensor | ImageError:
        try:
            img = decode_image(path)
        except ImageError as exc:
            return exc
        if not cache_ok:
            return torch.empty(0)
        return preprocess.to_unit_tensor(img).mul_(255).round_().to(torch.uint8)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        loaded = list(pool.map(load, items.files))
    bad = [(p, r) for p, r in zip(items.files, loaded, strict=True) if isinstance(r, ImageError)]
    if bad:
        shown = "; ".join(str(err) for _, err in bad[:20])
        more = f"; and {len(bad) - 20} more" if len(bad) > 20 else ""
        warnings.warn(
            f"skipping {len(bad)} unreadable image(s) of {len(items)} in {items.root}: {shown}{more}",
            UnreadableImagesWarning,
            stacklevel=2,
        )
        good = [i for i, r in enumerate(loaded) if not isinstance(r, ImageError)]
        kept = (
            items.subset(good)
            if good
            else LabelledImages(items.root, [], np.zeros(0, np.int64), [])
        )
    else:
        kept = items
    cache = None
    if cache_ok:
        cache = {
            p: r for p, r in zip(items.files, loaded, strict=True) if not isinstance(r, ImageError)
        }
    return kept, cache


def require_pairs(items: LabelledImages, what: str) -> None:
    """Raise :class:`DataError` unless both same and different pairs can be drawn."""
    counts = items.counts()
    if len(counts) < 2:
        raise DataError(
            f"{what} has {len(counts)} class(es) in {len(items)} readable image(s); a twin network "
            "needs at least 2 classes (check DATA_DIR and --labels)"
        )
    if max(counts.values()) < 2:
        raise DataError(
            f"{what} has no class with at least 2 images, so no 'same' pair can be drawn "
            "(check DATA_DIR and --labels)"
        )


@dataclass
class Split:
    """Training and validation images, and how they were split."""

    train: LabelledImages
    valid: LabelledImages
    mode: str
    valid_pct: float
    seed: int

    def describe(self) -> dict:
        """The split as recorded in the model's spec."""
        return {
            "mode": self.mode,
            "valid_pct": self.valid_pct,
            "seed": self.seed,
            "train_images": len(self.train),
            "valid_images": len(self.valid),
            "train_classes": list(self.train.classes),
            "valid_classes": list(self.valid.classes),
        }


def split_items(
    items: LabelledImages, mode: str = "random", valid_pct: float = 0.2, seed: int = 0
) -> Split:
    """Split the images for training and validation, reproducibly for a seed.

    ``random`` holds out a random ``valid_pct`` of the files, as the original sample did.
    ``classes`` holds out whole classes (``valid_pct`` of them, at least 2), so validation
    measures verification on classes the network never saw.
    """
    if mode not in SPLITS:
        raise DataError(f"--split must be one of {', '.join(SPLITS)}, got {mode!r}")
    if not 0.0 < valid_pct < 1.0:
        raise DataError(f"--valid-pct must lie strictly between 0 and 1, got {valid_pct}")
    require_pairs(items, f"the data in {items.root}")
    rng = np.random.default_rng(seed)
    if mode == "random":
        order = rng.permutation(len(items))
        n_valid = max(2, round(valid_pct * len(items)))
        valid_idx, train_idx = np.sort(order[:n_valid]), np.sort(order[n_valid:])
    else:
        n_classes = len(items.classes)
        n_valid = min(max(2, round(valid_pct * n_classes)), n_classes - 2)
        if n_valid < 2:
            raise DataError(
                f"--split classes needs at least 4 classes (2 to train on, 2 to hold out); "
                f"{items.root} has {n_classes}"
            )
        held = set(rng.permutation(n_classes)[:n_valid].tolist())
        in_valid = np.array([lab in held for lab in items.labels.tolist()], dtype=bool)
        valid_idx, train_idx = np.flatnonzero(in_valid), np.flatnonzero(~in_valid)
    split = Split(items.subset(train_idx), items.subset(valid_idx), mode, valid_pct, seed)
    require_pairs(split.train, f"the training part of the {mode} split")
    require_pairs(
        split.valid, f"the validation part of the {mode} split (try another --seed or --valid-pct)"
    )
    return split


def draw_pairs(
    labels: np.ndarray, n: int, rng: np.random.Generator, swap: bool = True
) -> np.ndarray:
    """Draw ``n`` balanced pairs: ``n // 2`` of the same class, the rest of different classes.

    Anchors are drawn uniformly over images, partners uniformly over the images that give the
    wanted kind of pair. Rows are shuffled, and with ``swap`` each pair's order is flipped at
    random, so neither side is special.

    Returns:
        an ``(n, 3)`` int64 array of ``(left, right, same)``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    start = np.searchsorted(sorted_labels, np.arange(n_classes), side="left")
    size = np.searchsorted(sorted_labels, np.arange(n_classes), side="right") - start
    rank = np.empty(len(labels), np.int64)  # position of each image within its class block
    rank[order] = np.arange(len(labels)) - start[sorted_labels]
    n_same = n // 2
    n_diff = n - n_same

    can_same = size[labels] >= 2
    if n_same and not can_same.any():
        raise DataError("no class has 2 images, so no 'same' pair can be drawn")
    if n_diff and n_classes < 2:
        raise DataError("only one class, so no 'different' pair can be drawn")
    anchors = rng.choice(np.flatnonzero(can_same), n_same) if n_same else np.zeros(0, np.int64)
    c = labels[anchors]
    r = rng.integers(0, size[c] - 1) if n_same else np.zeros(0, np.int64)
    r = r + (r >= rank[anchors])  # skip the anchor itself
    same = np.stack([anchors, order[start[c] + r], np.ones(n_same, np.int64)], axis=1)

    anchors = rng.choice(len(labels), n_diff)
    c = labels[anchors]
    r = rng.integers(0, len(labels) - size[c])
    r = r + size[c] * (r >= start[c])  # skip the anchor's class block
    diff = np.stack([anchors, order[r], np.zeros(n_diff, np.int64)], axis=1)

    pairs = np.concatenate([same, diff])[rng.permutation(n)]
    if swap:
        flip = rng.random(n) < 0.5
        pairs[flip, :2] = pairs[flip, 1::-1]
    return pairs


def draw_class_batches(
    labels: np.ndarray,
    n_batches: int,
    per_class: int,
    classes_per_batch: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Image indices laid out as class-balanced batches: ``classes_per_batch`` blocks of ``per_class``.

    Metric losses learn from the positives and negatives inside a batch, so every batch holds
    ``per_class`` images of each of ``classes_per_batch`` classes. Classes with fewer images
    than ``per_class`` repeat some (drawn with replacement); classes with one image are never
    drawn, since they give no positive. Consecutive blocks keep their structure when a
    distributed loader hands each process a contiguous slice of whole batches.

    Returns:
        a flat int64 array of ``n_batches * per_class * classes_per_batch`` indices.
    """
    labels = np.asarray(labels, dtype=np.int64)
    members = [
        np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1 if len(labels) else 0)
    ]
    usable = [c for c, m in enumerate(members) if len(m) >= 2]
    if len(usable) < 2:
        raise DataError("class-balanced batches need at least 2 classes with 2 or more images")
    k = min(classes_per_batch, len(usable))
    out = np.empty((n_batches, k, per_class), np.int64)
    for b in range(n_batches):
        for j, c in enumerate(rng.choice(usable, k, replace=False)):
            m = members[c]
            out[b, j] = rng.choice(m, per_class, replace=len(m) < per_class)
    return out.reshape(-1)
