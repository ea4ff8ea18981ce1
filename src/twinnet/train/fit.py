"""The fastai training run: frozen head first, then the whole network; distributed-ready.

Two objectives share the recipe. The concat head learns the original sample's pair
cross-entropy over balanced pairs. The cosine head learns an embedding with a metric loss
(:mod:`twinnet.train.losses`) over class-balanced batches of single images; its cosine-to-logit
map and decision threshold are then fitted on classes held out from the gradient
(:mod:`twinnet.core.calibration`), since training classes sit tighter than new ones.
The run's options are :class:`~twinnet.train.config.TrainConfig`.

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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from twinnet.core.artifacts import library_versions, save_model_dir
from twinnet.core.backbones import backbone_fields
from twinnet.core.imaging import build_transforms
from twinnet.core.model import build_model
from twinnet.core.spec import ModelSpec
from twinnet.data.datasets import resolve_source
from twinnet.data.items import LabelledImages, check_images, scan_folder, split_items
from twinnet.errors import DataError, TwinnetError
from twinnet.train.config import TrainConfig, calibration_classes, check_config, resolve_defaults
from twinnet.train.distributed import Dist, init_distributed
from twinnet.train.fastai_compat import quiet_fastai_import
from twinnet.train.fastai_parts import (
    bf16_callback,
    training_bf16,
)
from twinnet.train.heads import HEAD_RECIPES
from twinnet.train.keep import StartOrMix
from twinnet.train.start import apply_start, with_init_defaults

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    """What a training run produced (on rank 0; other ranks get ``model_dir=None``)."""

    model_dir: Path | None
    spec: ModelSpec
    metrics: dict[str, Any]
    lr_suggestion: float | None = None


def train(cfg: TrainConfig) -> TrainResult:
    """Train a twin network with fastai and write its model directory to ``cfg.out``.

    The steps: resolve and check the options; read, check and split the data (problems
    surface here, before any training); fit; calibrate and measure; write the spec, complete,
    beside the weights.
    """
    quiet_fastai_import()
    cfg = resolve_defaults(with_init_defaults(cfg))
    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist = init_distributed()
    if cfg.lr_find and dist.active:
        raise TwinnetError("run --lr-find in a single process, not under torchrun")
    try:
        data = _prepare_data(cfg, dist)
        run = _run(cfg, data, dist)
        if run.lr_suggestion is not None or dist.rank != 0:
            return TrainResult(None, data.spec, {}, lr_suggestion=run.lr_suggestion)
        spec = _finished_spec(cfg, data, run, dist)
        return TrainResult(save_model_dir(run.model, spec, cfg.out), spec, spec.metrics)
    finally:
        if dist.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------- data


@dataclass
class _Parts:
    """The images of a run: what trains, what validates each epoch, what calibrates."""

    split: Any
    calib: LabelledImages | None
    calib_method: str | None


@dataclass
class _Data:
    """Everything a run reads before it trains: where, which images, how they are split."""

    root: Path
    labels: str
    spec: ModelSpec  # the architecture; the finished spec adds what training measured
    preprocess: Any
    items: LabelledImages
    cache: Any
    parts: _Parts
    workers: int


def _resolve_data(cfg: TrainConfig, dist: Dist) -> tuple[Path, str]:
    """The data folder and its label rule; rank 0 downloads or exports a named data set first."""
    if not cfg.dataset:
        root, labels = resolve_source(cfg.data, None, cfg.labels)
        return root, labels or "folder"
    if dist.rank != 0:
        dist.barrier()  # the others then find it in the cache
    try:
        root, labels = resolve_source(cfg.data, cfg.dataset, cfg.labels)
        return root, labels or "folder"
    finally:
        if dist.rank == 0:
            dist.barrier()


def _prepare_data(cfg: TrainConfig, dist: Dist) -> _Data:
    root, labels = _resolve_data(cfg, dist)
    spec = ModelSpec(
        **backbone_fields(cfg.arch, cfg.size), arch=cfg.arch, resize_method=cfg.resize, name=cfg.name,
        labels=labels, head=cfg.head, embedding_dim=cfg.embedding_dim,
    )  # fmt: skip
    preprocess = build_transforms(spec)
    items = scan_folder(root, labels)
    if not len(items):
        raise DataError(f"no labelled images found in {root} (labels: {labels})")
    with warnings.catch_warnings():
        if dist.rank:
            warnings.simplefilter("ignore")  # rank 0 reports unreadable files once
        items, cache = check_images(items, preprocess, workers=min(8, os.cpu_count() or 1))
    workers = cfg.workers
    if workers is None:
        workers = 0 if cache else min(4, os.cpu_count() or 1)
    parts = _split_for(cfg, items)
    return _Data(Path(root), labels, spec, preprocess, items, cache, parts, workers)


def _split_for(cfg: TrainConfig, items) -> _Parts:
    """The split, and for the cosine head the classes its threshold is fitted on.

    With ``--split classes`` the validation classes calibrate. With ``--split random`` a
    ``calib_pct`` share of whole classes is held out of training first; with too few classes
    for that, the random validation images calibrate, with a warning that the threshold
    will then be optimistic.
    """
    split = split_items(items, cfg.split, cfg.valid_pct, cfg.seed)
    if cfg.head != "cosine":
        return _Parts(split, None, None)
    if cfg.split == "classes":
        return _Parts(split, split.valid, "held-out classes (validation split)")
    try:
        n_calib = calibration_classes(len(items.classes), cfg.calib_pct, cfg.calib_max_classes)
        share = n_calib / len(items.classes)
        held = split_items(items, "classes", share, cfg.seed + 1)
        split = split_items(held.train, "random", cfg.valid_pct, cfg.seed)
    except DataError:
        warnings.warn(
            "too few classes to hold some out for calibration; the threshold is fitted on "
            "validation images of the training classes and may be optimistic for new classes "
            "(use --split classes, or more classes)",
            stacklevel=3,
        )
        return _Parts(split, split.valid, "validation images of training classes")
    print(
        f"calibration: {len(held.valid.classes)} classes ({len(held.valid)} images) held out "
        f"of training to fit the threshold: {', '.join(held.valid.classes[:8])}"
        + (" ..." if len(held.valid.classes) > 8 else "")
    )
    return _Parts(split, held.valid, "held-out calibration classes")


# --------------------------------------------------------------------------- fit


@dataclass
class _Run:
    """What fitting left: the model on the CPU, its history and how it ran."""

    model: Any
    start: dict[str, Any] | None = None
    lr_suggestion: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"
    bf16: bool = False
    epoch_items: int = 0
    valid_items: int = 0
    valid_dl: Any = None
    kept: dict[str, Any] | None = None


def _run(cfg: TrainConfig, data: _Data, dist: Dist) -> _Run:
    """Build the model and its Learner, then fit (or, with ``lr_find``, only look)."""
    from fastai.callback.schedule import fit_one_cycle, lr_find  # noqa: F401  (Learner methods)
    from fastai.torch_core import default_device, set_seed

    set_seed(cfg.seed)
    model = build_model(data.spec, pretrained=cfg.pretrained)
    start = apply_start(model, data.spec, cfg)
    device = default_device()
    bf16 = training_bf16(cfg.precision, torch.device(device))
    with tempfile.TemporaryDirectory(prefix="twinnet-train-") as scratch:
        learn = HEAD_RECIPES[data.spec.head].learner(cfg, data, model, device, scratch, dist)
        if bf16:
            learn.add_cb(bf16_callback())
        if cfg.lr_find:
            if cfg.frozen_epochs:
                learn.freeze()
            return _Run(model, start, lr_suggestion=float(learn.lr_find(show_plot=False).valley))
        started = time.monotonic()
        keeper = _keeper(cfg, data, model)
        if keeper is not None:
            learn.add_cb(keeper.callback())
        history = _fit(learn, cfg, dist)
        kept = keeper.restore() if keeper is not None else None
        dls = learn.dls
        return _Run(
            model.to("cpu").eval(), start, None, history, time.monotonic() - started, str(device), bf16,
            len(dls.train.dataset), len(dls.valid.dataset), dls.valid, kept,
        )  # fmt: skip


def _keeper(cfg: TrainConfig, data: _Data, model: Any) -> StartOrMix | None:
    """With ``--init`` and a cosine head, what ends the run on the start or a mixture."""
    calib = data.parts.calib
    if not cfg.init or not data.spec.has_embeddings or calib is None or len(calib.classes) < 2:
        return None
    return StartOrMix(model, data.spec, calib, int(data.parts.split.seed))


def _fit(learn, cfg: TrainConfig, dist: Dist) -> list[dict[str, Any]]:
    """The two stages, inside fastai's distributed context when there are several processes."""
    history: list[dict[str, Any]] = []
    context: contextlib.AbstractContextManager = contextlib.nullcontext()
    originals = list(learn.dls.loaders)
    if dist.active:
        from twinnet.train.loaders import distributed_dl

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
                learn.fit_one_cycle(cfg.epochs, slice(cfg.lr_lo, cfg.lr_hi))
                history += _history(learn.recorder)
    finally:
        learn.dls.loaders = originals
    return history


def _history(recorder) -> list[dict[str, Any]]:
    names = [n for n in recorder.metric_names if n not in ("epoch", "time")]
    return [
        {n: float(v) for n, v in zip(names, row, strict=False) if v is not None}
        for row in recorder.values
    ]


# --------------------------------------------------------------------------- the finished spec


def _finished_spec(cfg: TrainConfig, data: _Data, run: _Run, dist: Dist) -> ModelSpec:
    """The model's spec, complete: calibration, what was measured, the data and the recipe."""
    fitted, metrics = HEAD_RECIPES[data.spec.head].measure(run.model, data.spec, data.parts, run)
    last = run.history[-1] if run.history else {}
    return replace(
        data.spec,
        **fitted,
        metrics={
            "valid_loss": last.get("valid_loss"), "valid_accuracy": last.get("accuracy"),
            **metrics, "train_seconds": round(run.seconds, 1), "history": run.history,
        },
        split={**data.parts.split.describe(), **_calib_description(data.parts)},
        classes=data.items.counts(),
        recipe={
            **asdict(cfg), "data": str(data.root.resolve()), "labels": data.labels,
            "workers": data.workers, "epoch_items": run.epoch_items,
            "valid_items": run.valid_items, "world_size": dist.world_size, "device": run.device,
            "wd": cfg.wd if cfg.wd is not None else 0.01,
            "precision": "bf16" if run.bf16 else "fp32", "optimizer": "Adam",
            "schedule": "fit_one_cycle", "start": run.start,
            **({"kept": run.kept} if run.kept else {}),
        },
        versions=library_versions(),
    )  # fmt: skip


def _calib_description(parts: _Parts) -> dict[str, Any]:
    if parts.calib is None:
        return {}
    return {
        "calibration_method": parts.calib_method,
        "calibration_classes": list(parts.calib.classes),
        "calibration_images": len(parts.calib),
    }
