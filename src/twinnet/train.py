"""The fastai training recipe: frozen head first, then the whole network; distributed-ready.

``torchrun --nproc_per_node N -m twinnet train ...`` runs data-parallel through fastai's
``distrib_ctx`` (Hugging Face Accelerate underneath). Without a GPU the processes talk over
gloo. Every rank draws the same pairs from the seed; only rank 0 writes the model directory.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import quiet_fastai_import
from .errors import DataError, TwinnetError
from .spec import ModelSpec

__all__ = ["TrainConfig", "TrainResult", "train", "twin_splitter"]


@dataclass
class TrainConfig:
    """Everything ``twinnet train`` takes; recorded in the spec's ``recipe``.

    ``lr_lo``/``lr_hi`` default to 1e-6/1e-4 with pretrained weights and to ``lr`` for every
    layer group from scratch, where there is nothing to protect in the encoder.
    """

    out: str
    data: str | None = None
    dataset: str | None = None
    labels: str | None = None
    split: str = "random"
    valid_pct: float = 0.2
    seed: int = 0
    arch: str = "resnet50"
    size: int = 224
    resize: str = "squish"
    pretrained: bool = True
    frozen_epochs: int = 4
    epochs: int = 4
    lr: float = 1e-3
    lr_lo: float | None = None
    lr_hi: float | None = None
    bs: int = 32
    workers: int | None = None
    augment: bool = True
    epoch_pairs: int | None = None
    valid_pairs: int | None = None
    lr_find: bool = False
    name: str = "twin"
    threads: int | None = None


@dataclass
class TrainResult:
    """What a training run produced (on rank 0; other ranks get ``model_dir=None``)."""

    model_dir: Path | None
    spec: ModelSpec
    metrics: dict[str, Any]
    lr_suggestion: float | None = None


def twin_splitter(model: torch.nn.Module) -> list[list[torch.nn.Parameter]]:
    """Two fastai parameter groups, encoder then head, so ``freeze`` trains the head alone."""
    return [list(model.encoder.parameters()), list(model.head.parameters())]


# --------------------------------------------------------------------------- distributed


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


def _init_distributed() -> _Dist:
    """Join the process group that torchrun describes in the environment, if any.

    fastai's ``setup_distrib`` assumes NCCL; on a machine without CUDA the group uses gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    rank = int(os.environ.get("RANK", "0"))
    owns = False
    if not torch.distributed.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            torch.distributed.init_process_group("nccl", init_method="env://")
        else:
            torch.distributed.init_process_group("gloo", init_method="env://")
        owns = True
    return _Dist(rank, world, owns)


# --------------------------------------------------------------------------- recipe


def _resolve_data(cfg: TrainConfig, dist: _Dist) -> tuple[Path, str]:
    from .datasets import resolve_dataset

    if cfg.dataset:
        if cfg.data:
            raise TwinnetError("give either DATA_DIR (--data) or --dataset, not both")
        # rank 0 downloads or exports first; the others then find it in the cache
        if dist.rank != 0:
            dist.barrier()
        try:
            root, labels = resolve_dataset(cfg.dataset)
        finally:
            if dist.rank == 0:
                dist.barrier()
        return root, cfg.labels or labels
    if not cfg.data:
        raise TwinnetError("no data: give DATA_DIR (or --data DIR), or --dataset digits|pets")
    return Path(cfg.data), cfg.labels or "folder"


def _lr_range(cfg: TrainConfig) -> tuple[float, float]:
    lo = cfg.lr_lo if cfg.lr_lo is not None else (1e-6 if cfg.pretrained else cfg.lr)
    hi = cfg.lr_hi if cfg.lr_hi is not None else (1e-4 if cfg.pretrained else cfg.lr)
    return lo, hi


def _check_config(cfg: TrainConfig) -> None:
    if cfg.frozen_epochs < 0 or cfg.epochs < 0 or cfg.frozen_epochs + cfg.epochs == 0:
        raise TwinnetError("--frozen-epochs and --epochs must be >= 0, and not both 0")
    if cfg.bs < 2:
        raise TwinnetError(f"--bs must be at least 2 (batch norm needs it), got {cfg.bs}")
    for flag, value in (("--epoch-pairs", cfg.epoch_pairs), ("--valid-pairs", cfg.valid_pairs)):
        if value is not None and value < 2:
            raise TwinnetError(f"{flag} must be at least 2, got {value}")
    if cfg.lr <= 0 or any(v is not None and v <= 0 for v in (cfg.lr_lo, cfg.lr_hi)):
        raise TwinnetError("learning rates must be positive")


def _history(recorder) -> list[dict[str, Any]]:
    names = [n for n in recorder.metric_names if n not in ("epoch", "time")]
    return [
        {n: float(v) for n, v in zip(names, row, strict=False) if v is not None}
        for row in recorder.values
    ]


def train(cfg: TrainConfig) -> TrainResult:
    """Train a twin network with fastai and write its model directory to ``cfg.out``.

    Data problems (no classes, unreadable files, impossible split) surface before any
    training starts.
    """
    quiet_fastai_import()
    from fastai.callback.schedule import fit_one_cycle, lr_find  # noqa: F401  (Learner methods)
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import accuracy
    from fastai.torch_core import default_device, set_seed

    from .artifacts import library_versions, save_model_dir
    from .data import build_dataloaders, check_images, scan_folder, split_items
    from .evaluate import roc_auc
    from .imaging import build_transforms
    from .model import build_model

    _check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist = _init_distributed()
    if cfg.lr_find and dist.active:
        raise TwinnetError("run --lr-find in a single process, not under torchrun")
    try:
        root, labels = _resolve_data(cfg, dist)
        spec = ModelSpec(
            arch=cfg.arch,
            image_size=cfg.size,
            resize_method=cfg.resize,
            name=cfg.name,
            labels=labels,
        )
        preprocess = build_transforms(spec)
        items = scan_folder(root, labels)
        if not len(items):
            raise DataError(f"no labelled images found in {root} (labels: {labels})")
        with warnings.catch_warnings():
            if dist.rank:
                warnings.simplefilter("ignore")  # rank 0 reports unreadable files once
            items, cache = check_images(items, preprocess, workers=min(8, os.cpu_count() or 1))
        split = split_items(items, cfg.split, cfg.valid_pct, cfg.seed)
        workers = (
            cfg.workers
            if cfg.workers is not None
            else (0 if cache else min(4, os.cpu_count() or 1))
        )

        set_seed(cfg.seed)
        model = build_model(spec, pretrained=cfg.pretrained)
        device = default_device()
        dls = build_dataloaders(
            split,
            preprocess,
            bs=cfg.bs,
            seed=cfg.seed,
            epoch_pairs=cfg.epoch_pairs,
            valid_pairs=cfg.valid_pairs,
            augment=cfg.augment,
            workers=workers,
            cache=cache,
            device=device,
        )
        with tempfile.TemporaryDirectory(prefix="twinnet-train-") as scratch:
            learn = Learner(
                dls,
                model,
                loss_func=CrossEntropyLossFlat(),
                metrics=accuracy,
                splitter=twin_splitter,
                path=scratch,
            )
            if cfg.lr_find:
                if cfg.frozen_epochs:
                    learn.freeze()
                found = learn.lr_find(show_plot=False)
                return TrainResult(None, spec, {}, lr_suggestion=float(found.valley))
            lo, hi = _lr_range(cfg)
            started = time.monotonic()
            history = _fit(learn, cfg, dist, lo, hi)
            seconds = time.monotonic() - started
            if dist.rank != 0:
                return TrainResult(None, spec, {})
            prob, truth = _valid_scores(learn.model, dls.valid)
        last = history[-1] if history else {}
        spec.metrics = {
            "valid_loss": last.get("valid_loss"),
            "valid_accuracy": last.get("accuracy"),
            "pair_accuracy": float(np.mean((prob >= spec.threshold) == truth)),
            "pair_auc": roc_auc(truth, prob),
            "valid_pairs": len(truth),
            "train_seconds": round(seconds, 1),
            "history": history,
        }
        spec.split = split.describe()
        spec.classes = items.counts()
        spec.recipe = {
            **asdict(cfg),
            "data": str(Path(root).resolve()),
            "labels": labels,
            "lr_lo": lo,
            "lr_hi": hi,
            "workers": workers,
            "epoch_pairs": len(dls.train.dataset),
            "valid_pairs": len(dls.valid.dataset),
            "world_size": dist.world_size,
            "device": str(device),
            "loss": "CrossEntropyLossFlat",
            "optimizer": "Adam",
            "schedule": "fit_one_cycle",
        }
        spec.versions = library_versions()
        out = save_model_dir(learn.model.to("cpu").eval(), spec, cfg.out)
        return TrainResult(out, spec, spec.metrics)
    finally:
        if dist.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _valid_scores(model: torch.nn.Module, dl) -> tuple[np.ndarray, np.ndarray]:
    """P(same) and truth of every validation pair, in this process alone.

    (fastai's ``get_preds`` would gather across ranks that have already finished.)
    """
    model.eval()
    probs, truth = [], []
    with torch.no_grad():
        for left, right, same in dl:
            probs.append(torch.softmax(model(left, right).float(), dim=1)[:, 1].cpu())
            truth.append(same.cpu())
    return torch.cat(probs).numpy(), torch.cat(truth).numpy().astype(bool)


def _fit(learn, cfg: TrainConfig, dist: _Dist, lo: float, hi: float) -> list[dict[str, Any]]:
    """The two stages, inside fastai's distributed context when there are several processes."""
    history: list[dict[str, Any]] = []
    context: contextlib.AbstractContextManager = contextlib.nullcontext()
    originals = list(learn.dls.loaders)
    if dist.active:
        from .dataloaders import distributed_dl

        on_gpu = torch.cuda.is_available()
        learn.dls.loaders = [distributed_dl(dl, dist.rank, dist.world_size) for dl in originals]
        # sync_bn stays off: SyncBatchNorm needs CUDA, and the saved model keeps plain BatchNorm
        context = learn.distrib_ctx(sync_bn=False, cpu=not on_gpu)
    try:
        with context:
            if cfg.frozen_epochs:
                learn.freeze()
                learn.fit_one_cycle(cfg.frozen_epochs, cfg.lr)
                history += _history(learn.recorder)
            if cfg.epochs:
                learn.unfreeze()
                learn.fit_one_cycle(cfg.epochs, slice(lo, hi))
                history += _history(learn.recorder)
    finally:
        learn.dls.loaders = originals
    return history
