"""fastai pieces of the data path: pair DataLoaders, batch transforms, a gloo-ready DistributedDL.

Kept apart from :mod:`twinnet.data` so that pair sampling and folder scanning (used by
evaluation) do not import fastai.
"""

from __future__ import annotations

import torch

from .data import quiet_fastai_import

quiet_fastai_import()

from fastai.data.core import DataLoaders, TfmdDL  # noqa: E402
from fastai.torch_core import TensorImage  # noqa: E402
from fastai.vision.augment import aug_transforms  # noqa: E402
from fasttransform import ItemTransform, Pipeline, Transform  # noqa: E402

from .imaging import Preprocess  # noqa: E402

__all__ = ["PairAugment", "SpecNormalize", "PairDL", "pair_dataloaders", "distributed_dl"]


class PairAugment(ItemTransform):
    """fastai's ``aug_transforms`` on a batch of pairs, drawn independently for each side.

    fastai draws one random transform per batch element and applies it to every image of a
    tuple (right for image + mask, wrong for two photos), so the two sides are stacked into one
    batch first, augmented, and split again. Training batches only (``split_idx = 0``).
    """

    split_idx = 0
    order = 50

    def __init__(self, tfms: list[Transform]) -> None:
        super().__init__()
        self.pipe = Pipeline(tfms, split_idx=0)

    def encodes(self, batch):
        left, right, *rest = batch
        n = left.shape[0]
        both = self.pipe(TensorImage(torch.cat([left, right])))
        return (TensorImage(both[:n]), TensorImage(both[n:]), *rest)


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
    """A ``TfmdDL`` over a :class:`~twinnet.data.PairDataset` that redraws training pairs per pass."""

    def before_iter(self) -> None:
        if getattr(self.dataset, "train", False):
            self.dataset.next_epoch()
        super().before_iter()


def pair_dataloaders(
    train,
    valid,
    preprocess: Preprocess,
    *,
    bs: int = 32,
    augment: bool = True,
    workers: int = 0,
    device: torch.device | str | None = None,
) -> DataLoaders:
    """Training (shuffled, augmented, last partial batch dropped) and validation DataLoaders."""
    tfms: list[Transform] = [SpecNormalize(preprocess)]
    if augment:
        tfms.insert(0, PairAugment(aug_transforms()))
    common = {"num_workers": workers, "device": device, "after_batch": tfms}
    train_dl = PairDL(train, bs=bs, shuffle=True, drop_last=len(train) > bs, **common)
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
