"""fastai pieces of the data path: datasets of pairs or images, DataLoaders, batch transforms.

The pipeline is the model's own: items are decoded by :func:`~twinnet.core.imaging.decode_image`
and resized by ``build_transforms(spec).to_unit_tensor``, and the batch is normalised by the
same :class:`~twinnet.core.imaging.Preprocess`, so training sees exactly what inference sees.
The augmentation policy (:mod:`twinnet.train.augment`) runs in between, on the training batches
only. Kept apart from
:mod:`twinnet.data.items` so that sampling and folder scanning (used by evaluation) do not import
fastai.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from twinnet.core.imaging import decode_image
from twinnet.data.items import LabelledImages, Split, draw_class_batches, draw_pairs
from twinnet.train.fastai_compat import quiet_fastai_import

quiet_fastai_import()

from fastai.data.core import DataLoaders, TfmdDL  # noqa: E402
from fastai.torch_core import TensorCategory, TensorImage  # noqa: E402
from fasttransform import ItemTransform, Pipeline, Transform  # noqa: E402

from twinnet.core.imaging import Preprocess  # noqa: E402
from twinnet.train.augment import batch_augmentations, policy_name  # noqa: E402

__all__ = [
    "ImageStore",
    "PairDataset",
    "ImageDataset",
    "build_dataloaders",
    "PairAugment",
    "SpecNormalize",
    "PairDL",
    "make_dataloaders",
    "distributed_dl",
]


class ImageStore:
    """Loads an image as the spec's resized ``[0, 1]`` tensor, from memory when cached."""

    def __init__(
        self, preprocess: Preprocess, cache: dict[Path, torch.Tensor] | None = None
    ) -> None:
        self.preprocess = preprocess
        self.cache = cache or {}

    def __call__(self, path: Path) -> torch.Tensor:
        hit = self.cache.get(path)
        if hit is not None:
            return hit.float().div_(255.0)
        return self.preprocess.to_unit_tensor(decode_image(path))


class PairDataset:
    """Pairs of one image set, as fastai items ``(left, right, same)``.

    Validation pairs are drawn once from the seed. Training pairs are drawn afresh for every
    pass (:meth:`next_epoch`) from ``(seed, pass)``, so every process of a distributed run
    draws the same pairs without talking to the others.
    """

    def __init__(
        self,
        items: LabelledImages,
        store: ImageStore,
        n_pairs: int,
        seed: int,
        train: bool,
    ) -> None:
        self.items, self.store, self.n_pairs, self.seed, self.train = (
            items,
            store,
            n_pairs,
            seed,
            train,
        )
        self.split_idx = 0 if train else 1
        self.epoch = -1
        self.pairs = draw_pairs(items.labels, n_pairs, np.random.default_rng([seed, 0]), swap=False)
        if train:
            self.next_epoch()

    def next_epoch(self) -> None:
        """Draw the next pass's training pairs, with random left/right swaps."""
        self.epoch += 1
        rng = np.random.default_rng([self.seed, 1, self.epoch])
        self.pairs = draw_pairs(self.items.labels, self.n_pairs, rng, swap=True)

    def __len__(self) -> int:
        return self.n_pairs

    def __getitem__(self, i: int):
        left, right, same = self.pairs[i]
        files = self.items.files
        return (
            TensorImage(self.store(files[left])),
            TensorImage(self.store(files[right])),
            TensorCategory(int(same)),
        )


class ImageDataset:
    """Single images and their class indices, as fastai items ``(image, label)``.

    Training datasets (``per_class`` set) lay their items out as class-balanced batches,
    drawn afresh for every pass (:meth:`next_epoch`) from ``(seed, pass)``, or, with
    ``balanced=False``, as a fresh shuffle of all images (what a class-proxy loss needs);
    other datasets list every image once, in a seeded shuffled order so batches mix classes.
    """

    def __init__(
        self,
        items: LabelledImages,
        store: ImageStore,
        seed: int,
        per_class: int | None = None,
        batch_size: int = 32,
        n_batches: int = 0,
        balanced: bool = True,
    ) -> None:
        self.items, self.store, self.seed = items, store, seed
        self.train = per_class is not None
        self.balanced = balanced
        self.split_idx = 0 if self.train else 1
        self.per_class = per_class if per_class and balanced else 1
        if balanced:
            # with fewer usable classes than a batch wants, batches shrink and stay whole
            usable = int((np.bincount(items.labels) >= 2).sum()) if len(items) else 0
            self.classes_per_batch = min(max(2, batch_size // self.per_class), max(2, usable))
        else:  # a plain shuffle: a batch is ``batch_size`` images, whatever their classes
            self.classes_per_batch = batch_size
        self.n_batches = n_batches
        self.epoch = -1
        if self.train:
            self.next_epoch()
        else:
            self.order = np.random.default_rng([seed, 3]).permutation(len(items))

    def next_epoch(self) -> None:
        """Draw the next pass's class-balanced batches (or its shuffle)."""
        self.epoch += 1
        rng = np.random.default_rng([self.seed, 2, self.epoch])
        if not self.balanced:
            n = self.n_batches * self.batch_size
            passes = -(-n // max(1, len(self.items)))
            self.order = np.concatenate([rng.permutation(len(self.items)) for _ in range(passes)])
            self.order = self.order[:n]
            return
        self.order = draw_class_batches(
            self.items.labels, self.n_batches, self.per_class, self.classes_per_batch, rng
        )

    @property
    def batch_size(self) -> int:
        """Items of one laid-out batch: what the training loader must read at a time."""
        return self.classes_per_batch * self.per_class

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int):
        index = int(self.order[i])
        return (
            TensorImage(self.store(self.items.files[index])),
            TensorCategory(int(self.items.labels[index])),
        )


class PairAugment(ItemTransform):
    """Batch augmentations (a policy of :mod:`twinnet.train.augment`), drawn for every image of an item.

    fastai draws one random transform per batch element and applies it to every image of a
    tuple (right for image + mask, wrong for two photos), so the image parts of a batch (both
    sides of a pair, or the one image of a class-labelled item) are stacked into one batch
    first, augmented, and split again. Training batches only (``split_idx = 0``).
    """

    split_idx = 0
    order = 50

    def __init__(self, tfms: list[Transform]) -> None:
        super().__init__()
        self.pipe = Pipeline(tfms, split_idx=0)

    def encodes(self, batch):
        n_img = sum(isinstance(t, TensorImage) for t in batch)
        images, rest = batch[:n_img], batch[n_img:]
        n = images[0].shape[0]
        both = self.pipe(TensorImage(torch.cat(list(images))))
        return (*(TensorImage(both[i * n : (i + 1) * n]) for i in range(n_img)), *rest)


class SpecNormalize(Transform):
    """Normalise image batches with the spec's mean and std, by ``Preprocess.normalize``."""

    order = 99

    def __init__(self, preprocess: Preprocess) -> None:
        super().__init__()
        self.preprocess = preprocess

    def encodes(self, x: TensorImage) -> TensorImage:
        return TensorImage(self.preprocess.normalize(x))

    def decodes(self, x: TensorImage) -> TensorImage:
        mean = torch.tensor(self.preprocess.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.preprocess.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return TensorImage(x * std + mean)


class PairDL(TfmdDL):
    """A ``TfmdDL`` that redraws a training dataset's pairs or class batches for every pass."""

    def before_iter(self) -> None:
        if getattr(self.dataset, "train", False):
            self.dataset.next_epoch()
        super().before_iter()


def _batch_tfms(preprocess: Preprocess, augment: bool | str) -> list[Transform]:
    """Augmentation (a policy of :mod:`twinnet.train.augment`; True means ``fastai``), then normalisation."""
    tfms: list[Transform] = [SpecNormalize(preprocess)]
    aug = batch_augmentations(policy_name(augment))
    if aug:
        tfms.insert(0, PairAugment(aug))
    return tfms


def make_dataloaders(
    train,
    valid,
    preprocess: Preprocess,
    *,
    bs: int = 32,
    augment: bool | str = True,
    workers: int = 0,
    device: torch.device | str | None = None,
) -> DataLoaders:
    """Training (augmented) and validation DataLoaders of pairs or of class-labelled images.

    A :class:`PairDataset` is shuffled, with the last partial batch dropped. An
    :class:`ImageDataset` is already laid out as class-balanced batches of ``bs`` images,
    so it is read in order, one laid-out batch per loader batch.
    """
    laid_out = isinstance(train, ImageDataset)
    common = {
        "num_workers": workers,
        "device": device,
        "after_batch": _batch_tfms(preprocess, augment),
    }
    train_dl = PairDL(
        train, bs=bs, shuffle=not laid_out, drop_last=laid_out or len(train) > bs, **common
    )
    valid_dl = PairDL(valid, bs=bs * 2, shuffle=False, **common)
    return DataLoaders(train_dl, valid_dl, device=device)


def distributed_dl(dl: TfmdDL, rank: int, world_size: int):
    """fastai's ``DistributedDL`` around ``dl``, able to broadcast over gloo as well as NCCL.

    fastai broadcasts the shuffled order from rank 0 with a CUDA tensor, which the gloo
    backend of a CPU run cannot take; the order is broadcast on the backend's device instead.
    """
    from fastai.distributed import DistributedDL

    class _DistributedDL(DistributedDL):
        def _broadcast(self, t, rank):
            on_cuda = torch.distributed.get_backend() == "nccl"
            t = torch.tensor(t, dtype=torch.long, device="cuda" if on_cuda else "cpu")
            torch.distributed.broadcast(t, rank)
            return t.cpu().tolist()

    return _DistributedDL(dl, rank=rank, world_size=world_size)


def build_dataloaders(
    split: Split,
    preprocess: Preprocess,
    *,
    bs: int = 32,
    seed: int = 0,
    epoch_pairs: int | None = None,
    valid_pairs: int | None = None,
    augment: bool | str = True,
    workers: int = 0,
    cache: dict[Path, torch.Tensor] | None = None,
    device: torch.device | str | None = None,
):
    """fastai ``DataLoaders`` of training and validation pairs.

    Args:
        split: the images on each side.
        preprocess: ``build_transforms(spec)``; resizes items and normalises batches.
        bs: pairs per batch.
        seed: draws the pairs.
        epoch_pairs: training pairs per epoch; default ``max(training images, 1024)``.
        valid_pairs: validation pairs; default ``max(validation images, 256)``.
        augment: the augmentation policy of training batches (True: ``fastai``), to each
            side alone.
        workers: DataLoader worker processes.
        cache: resized images from :func:`check_images`.
        device: where batches go; fastai's default device when None.
    """
    store = ImageStore(preprocess, cache)
    train = PairDataset(
        split.train, store, epoch_pairs or max(len(split.train), 1024), seed, train=True
    )
    valid = PairDataset(
        split.valid, store, valid_pairs or max(len(split.valid), 256), seed, train=False
    )
    return make_dataloaders(
        train, valid, preprocess, bs=bs, augment=augment, workers=workers, device=device
    )
