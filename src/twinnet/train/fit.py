"""The fastai training recipe: frozen head first, then the whole network; distributed-ready.

Two objectives share the recipe. The concat head learns the original sample's pair
cross-entropy over balanced pairs. The cosine head learns an embedding with a metric loss
(:mod:`twinnet.train.losses`) over class-balanced batches of single images; its cosine-to-logit
map and decision threshold are then fitted on classes held out from the gradient
(:mod:`twinnet.core.calibration`), since training classes sit tighter than new ones.

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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twinnet.core.spec import ModelSpec
from twinnet.errors import DataError, TwinnetError
from twinnet.train.augment import AUG_POLICIES, policy_name
from twinnet.train.fastai_compat import quiet_fastai_import
from twinnet.train.losses import PROXY_LOSSES, default_loss

__all__ = [
    "TrainConfig",
    "TrainResult",
    "PRESETS",
    "SAMPLERS",
    "CALIB_MAX_CLASSES",
    "resolve_defaults",
    "calibration_classes",
    "train",
    "twin_splitter",
    "training_bf16",
]


#: With many classes, a few dozen calibrate the threshold as well as a fifth of them
#: (measured on Omniglot); the rest go to training.
CALIB_MAX_CLASSES = 50


@dataclass
class TrainConfig:
    """Everything ``twinnet train`` takes; recorded in the spec's ``recipe``.

    Fields left ``None`` are filled by :func:`resolve_defaults`: first from the named
    ``recipe`` preset (:data:`PRESETS`), then from the defaults for the starting point.
    ``frozen_epochs``/``epochs``/``lr`` default to the original sample's 4/4/1e-3 with
    pretrained weights, and from scratch to 0/12/3e-3 (freezing a random encoder teaches
    nothing; measured on AT&T faces and digits). ``lr_lo``/``lr_hi`` default to 1e-6/1e-4
    with pretrained weights and to ``lr`` for every layer group from scratch, where there is
    nothing to protect in the encoder. For the cosine head, ``bs`` counts images: with the
    ``balanced`` sampler ``per_class`` of each of ``bs // per_class`` classes, with ``random``
    a plain shuffle. For the concat head it counts pairs. ``calib_pct`` is the share of
    classes held out for calibration when ``split`` is ``random``, at most
    ``calib_max_classes`` (:func:`calibration_classes`). ``augment`` is a policy of :mod:`twinnet.train.augment`
    (True means ``fastai``, False ``none``); ``wd`` is the decoupled weight decay (fastai's
    0.01 when unset).
    """

    out: str
    data: str | None = None
    dataset: str | None = None
    labels: str | None = None
    split: str = "random"
    valid_pct: float = 0.2
    seed: int = 0
    recipe: str | None = None
    arch: str | None = None
    size: int | None = None
    resize: str = "squish"
    pretrained: bool | None = None
    frozen_epochs: int | None = None
    epochs: int | None = None
    lr: float | None = None
    lr_lo: float | None = None
    lr_hi: float | None = None
    bs: int | None = None
    workers: int | None = None
    augment: bool | str | None = None
    epoch_pairs: int | None = None
    valid_pairs: int | None = None
    lr_find: bool = False
    name: str = "twin"
    threads: int | None = None
    head: str = "cosine"
    loss: str | None = None
    sampler: str | None = None
    wd: float | None = None
    embedding_dim: int = 128
    per_class: int = 4
    calib_pct: float = 0.2
    calib_max_classes: int = CALIB_MAX_CLASSES
    precision: str = "auto"


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
    from twinnet.data.datasets import resolve_dataset

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


#: (frozen epochs, epochs, lr) by whether the encoder starts from ImageNet weights.
RECIPE_DEFAULTS = {True: (4, 4, 1e-3), False: (0, 12, 3e-3)}
#: What a run without a preset starts from: the original sample's Oxford-IIIT Pet recipe.
BASE_DEFAULTS: dict[str, Any] = {
    "arch": "resnet50",
    "size": 224,
    "pretrained": True,
    "bs": 32,
    "augment": "fastai",
}
#: Named recipes: values for the fields a command leaves unset. ``small-grey`` is the
#: measured recipe for small grey images with many classes (handwriting, glyphs, digits).
PRESETS: dict[str, dict[str, Any]] = {
    "small-grey": {
        "arch": "resnet18",
        "size": 48,
        "pretrained": False,
        "frozen_epochs": 0,
        "epochs": 10,
        "lr": 3e-3,
        "bs": 64,
        "sampler": "random",
        "augment": "affine",
    },
}
SAMPLERS = ("balanced", "random")


def resolve_defaults(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every unset field filled: the preset's value, else the default."""
    if cfg.recipe is not None and cfg.recipe not in PRESETS:
        raise TwinnetError(f"--recipe must be one of {', '.join(PRESETS)}, got {cfg.recipe!r}")
    preset = PRESETS.get(cfg.recipe or "", {})
    asked_sampler = cfg.sampler
    if cfg.augment is True:  # "on": the preset's policy
        cfg = replace(cfg, augment=preset.get("augment", BASE_DEFAULTS["augment"]))
    values = {
        name: preset.get(name, BASE_DEFAULTS.get(name))
        for name in (*BASE_DEFAULTS, *preset)
        if getattr(cfg, name) is None
    }
    cfg = replace(cfg, **values)
    frozen, epochs, lr = RECIPE_DEFAULTS[bool(cfg.pretrained)]
    loss = cfg.loss or default_loss(cfg.head)
    return replace(
        cfg,
        frozen_epochs=frozen if cfg.frozen_epochs is None else cfg.frozen_epochs,
        epochs=epochs if cfg.epochs is None else cfg.epochs,
        lr=lr if cfg.lr is None else cfg.lr,
        loss=loss,
        augment=policy_name(cfg.augment),
        # a preset's random batches suit its proxy loss; a pair loss needs balanced ones
        sampler=asked_sampler
        or (cfg.sampler if cfg.sampler and loss in PROXY_LOSSES else "balanced"),
    )


def _check_config(cfg: TrainConfig) -> None:
    from twinnet.core.spec import HEADS
    from twinnet.infer.runtime import PRECISIONS
    from twinnet.train.losses import LOSSES, METRIC_LOSSES

    if cfg.frozen_epochs < 0 or cfg.epochs < 0 or cfg.frozen_epochs + cfg.epochs == 0:
        raise TwinnetError("--frozen-epochs and --epochs must be >= 0, and not both 0")
    if cfg.bs < 2:
        raise TwinnetError(f"--bs must be at least 2 (batch norm needs it), got {cfg.bs}")
    for flag, value in (("--epoch-pairs", cfg.epoch_pairs), ("--valid-pairs", cfg.valid_pairs)):
        if value is not None and value < 2:
            raise TwinnetError(f"{flag} must be at least 2, got {value}")
    if cfg.lr <= 0 or any(v is not None and v <= 0 for v in (cfg.lr_lo, cfg.lr_hi)):
        raise TwinnetError("learning rates must be positive")
    if cfg.head not in HEADS:
        raise TwinnetError(f"--head must be one of {', '.join(HEADS)}, got {cfg.head!r}")
    if cfg.loss is not None and cfg.loss not in LOSSES:
        raise TwinnetError(f"--loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    if cfg.head == "concat" and cfg.loss not in (None, "pair-ce"):
        raise TwinnetError(f"--loss {cfg.loss} trains a cosine head; --head concat uses pair-ce")
    if cfg.head == "cosine" and cfg.loss == "pair-ce":
        raise TwinnetError(f"--head cosine trains with one of {', '.join(METRIC_LOSSES)}")
    if cfg.augment not in AUG_POLICIES:
        raise TwinnetError(f"augmentation must be one of {', '.join(AUG_POLICIES)}")
    if cfg.sampler not in SAMPLERS:
        raise TwinnetError(f"the sampler must be one of {', '.join(SAMPLERS)}")
    if cfg.head == "cosine" and cfg.sampler == "random" and cfg.loss not in PROXY_LOSSES:
        raise TwinnetError(
            f"--loss {cfg.loss} learns from the pairs inside a batch and needs class-balanced "
            f"batches; random batches suit the class-proxy losses ({', '.join(PROXY_LOSSES)})"
        )
    if cfg.wd is not None and cfg.wd < 0:
        raise TwinnetError(f"weight decay must be >= 0, got {cfg.wd}")
    if cfg.head == "cosine" and not 2 <= cfg.per_class <= cfg.bs // 2:
        raise TwinnetError(
            f"--per-class must be at least 2 and at most --bs/2 ({cfg.bs // 2}), got {cfg.per_class}"
        )
    if not 0.0 < cfg.calib_pct < 1.0:
        raise TwinnetError(f"--calib-pct must lie strictly between 0 and 1, got {cfg.calib_pct}")
    if cfg.precision not in PRECISIONS:
        raise TwinnetError(f"--precision must be one of {', '.join(PRECISIONS)}")


def training_bf16(precision: str, device: torch.device) -> bool:
    """Whether training runs under bf16 autocast: on CPUs with native bf16, unless ``fp32``.

    As in inference, bf16 only pays where the CPU computes it natively; elsewhere oneDNN
    emulates it and fp32 is faster.
    """
    from twinnet.infer.runtime import cpu_has_native_bf16

    if precision == "fp32" or device.type != "cpu":
        return False
    if precision == "bf16":
        return True
    return cpu_has_native_bf16()


def _bf16_callback():
    """A fastai callback running the forward pass under CPU bf16 autocast (loss in fp32).

    fastai's own ``MixedPrecision`` is written for CUDA; this is its CPU counterpart, and
    bf16 needs no gradient scaler since it has fp32's range.
    """
    from fastai.callback.core import Callback

    class CPUBF16(Callback):
        order = 10

        def before_batch(self) -> None:
            self.ctx = torch.autocast("cpu", dtype=torch.bfloat16)
            self.ctx.__enter__()

        def after_pred(self) -> None:
            self.learn.pred = self.pred.float()
            self._exit()

        def _exit(self) -> None:
            ctx, self.ctx = getattr(self, "ctx", None), None
            if ctx is not None:
                ctx.__exit__(None, None, None)

        def after_cancel_batch(self) -> None:
            self._exit()

        def after_batch(self) -> None:
            self._exit()

    return CPUBF16()


def _proxy_sync_callback(loss: torch.nn.Module):
    """Average the loss's own parameters' gradients across processes (class proxies).

    DistributedDataParallel averages the model's gradients, but proxies live in the loss,
    outside the model's forward pass, so they are averaged here after each backward pass.
    """
    from fastai.callback.core import Callback

    class ProxySync(Callback):
        order = 5

        def after_backward(self) -> None:
            world = torch.distributed.get_world_size()
            for p in loss.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world

    return ProxySync()


class _EmbeddingNet(torch.nn.Module):
    """The twin model seen by a metric loss: images in, unit-norm embeddings out.

    It shares the encoder and head modules with the twin model, so the twin model is what
    is trained and saved; ``encoder``/``head`` keep :func:`twin_splitter` working.
    """

    def __init__(self, twin: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = twin.encoder
        self.head = twin.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.embed(self.encoder(x))


def _history(recorder) -> list[dict[str, Any]]:
    names = [n for n in recorder.metric_names if n not in ("epoch", "time")]
    return [
        {n: float(v) for n, v in zip(names, row, strict=False) if v is not None}
        for row in recorder.values
    ]


@dataclass
class _Parts:
    """The images of a run: what trains, what validates each epoch, what calibrates."""

    split: Any
    calib: Any | None
    calib_method: str | None


def calibration_classes(
    n_classes: int, calib_pct: float, max_classes: int = CALIB_MAX_CLASSES
) -> int:
    """How many classes ``--split random`` holds out for calibration: ``calib_pct``, at most 50.

    A threshold is one number and its mapping two: a few dozen classes (tens of thousands of
    pairs) fit them as well as a fifth of a large data set does (on Omniglot's unseen
    alphabets, thresholds fitted on 50 and on 161 held-out characters lost 0.0040 and 0.0038
    of accuracy against the best one), and the classes it frees go to training.
    """
    return max(2, min(round(calib_pct * n_classes), max_classes))


def _split_for(cfg: TrainConfig, items) -> _Parts:
    """The split, and for the cosine head the classes its threshold is fitted on.

    With ``--split classes`` the validation classes calibrate. With ``--split random`` a
    ``calib_pct`` share of whole classes is held out of training first; with too few classes
    for that, the random validation images calibrate, with a warning that the threshold
    will then be optimistic.
    """
    from twinnet.data.items import split_items

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


def _learner(
    cfg: TrainConfig,
    spec: ModelSpec,
    model,
    parts: _Parts,
    preprocess,
    cache,
    workers,
    device,
    scratch,
    dist,
):
    """The fastai Learner of either objective: pair cross-entropy, or a metric loss."""
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import accuracy

    from twinnet.train.loaders import ImageDataset, ImageStore, build_dataloaders

    split = parts.split
    if spec.head == "concat":
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
        learn = Learner(
            dls,
            model,
            loss_func=CrossEntropyLossFlat(),
            metrics=accuracy,
            splitter=twin_splitter,
            path=scratch,
            wd=cfg.wd,
        )
        return learn

    from twinnet.train.loaders import make_dataloaders
    from twinnet.train.losses import PairAUC, build_metric_loss

    store = ImageStore(preprocess, cache)
    images = cfg.epoch_pairs or max(len(split.train), 1024)
    n_batches = -(-images // (cfg.bs * dist.world_size)) * dist.world_size
    train_ds = ImageDataset(
        split.train, store, cfg.seed, cfg.per_class, cfg.bs, n_batches, cfg.sampler == "balanced"
    )
    valid_ds = ImageDataset(split.valid, store, cfg.seed)
    dls = make_dataloaders(
        train_ds, valid_ds, preprocess, bs=train_ds.batch_size, augment=cfg.augment,
        workers=workers, device=device,
    )  # fmt: skip
    loss = build_metric_loss(cfg.loss, len(split.train.classes), spec.embedding_dim)
    net = _EmbeddingNet(model)

    def splitter(m):
        return [list(m.encoder.parameters()), list(m.head.parameters()) + list(loss.parameters())]

    cbs = [_proxy_sync_callback(loss)] if dist.active and loss.has_proxies else []
    learn = Learner(
        dls, net, loss_func=loss, metrics=PairAUC(), splitter=splitter, path=scratch, cbs=cbs,
        wd=cfg.wd,
    )  # fmt: skip
    return learn


def train(cfg: TrainConfig) -> TrainResult:
    """Train a twin network with fastai and write its model directory to ``cfg.out``.

    Data problems (no classes, unreadable files, impossible split) surface before any
    training starts.
    """
    quiet_fastai_import()
    from fastai.callback.schedule import fit_one_cycle, lr_find  # noqa: F401  (Learner methods)
    from fastai.torch_core import default_device, set_seed

    from twinnet.core.artifacts import library_versions, save_model_dir
    from twinnet.core.imaging import build_transforms
    from twinnet.core.model import build_model
    from twinnet.data.items import check_images, scan_folder

    cfg = resolve_defaults(cfg)
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
            head=cfg.head,
            embedding_dim=cfg.embedding_dim,
        )
        preprocess = build_transforms(spec)
        items = scan_folder(root, labels)
        if not len(items):
            raise DataError(f"no labelled images found in {root} (labels: {labels})")
        with warnings.catch_warnings():
            if dist.rank:
                warnings.simplefilter("ignore")  # rank 0 reports unreadable files once
            items, cache = check_images(items, preprocess, workers=min(8, os.cpu_count() or 1))
        parts = _split_for(cfg, items)
        workers = (
            cfg.workers
            if cfg.workers is not None
            else (0 if cache else min(4, os.cpu_count() or 1))
        )

        set_seed(cfg.seed)
        model = build_model(spec, pretrained=cfg.pretrained)
        device = default_device()
        bf16 = training_bf16(cfg.precision, torch.device(device))
        with tempfile.TemporaryDirectory(prefix="twinnet-train-") as scratch:
            learn = _learner(
                cfg, spec, model, parts, preprocess, cache, workers, device, scratch, dist
            )
            if bf16:
                learn.add_cb(_bf16_callback())
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
            model = model.to("cpu").eval()
            dls = learn.dls
        if spec.head == "cosine":
            metrics = _calibrate_and_measure(model, spec, parts)
        else:
            prob, truth = _valid_scores(model, dls.valid)
            metrics = _pair_report(prob, truth, spec.threshold)
        last = history[-1] if history else {}
        spec.metrics = {
            "valid_loss": last.get("valid_loss"),
            "valid_accuracy": last.get("accuracy"),
            **metrics,
            "train_seconds": round(seconds, 1),
            "history": history,
        }
        spec.split = {**parts.split.describe(), **_calib_description(parts)}
        spec.classes = items.counts()
        spec.recipe = {
            **asdict(cfg),
            "data": str(Path(root).resolve()),
            "labels": labels,
            "lr_lo": lo,
            "lr_hi": hi,
            "workers": workers,
            "epoch_items": len(dls.train.dataset),
            "valid_items": len(dls.valid.dataset),
            "world_size": dist.world_size,
            "device": str(device),
            "wd": cfg.wd if cfg.wd is not None else 0.01,
            "precision": "bf16" if bf16 else "fp32",
            "optimizer": "Adam",
            "schedule": "fit_one_cycle",
        }
        spec.versions = library_versions()
        out = save_model_dir(model, spec, cfg.out)
        return TrainResult(out, spec, spec.metrics)
    finally:
        if dist.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _calib_description(parts: _Parts) -> dict[str, Any]:
    if parts.calib is None:
        return {}
    return {
        "calibration_method": parts.calib_method,
        "calibration_classes": list(parts.calib.classes),
        "calibration_images": len(parts.calib),
    }


def _pair_report(prob: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, Any]:
    from twinnet.core.metrics import eer, roc_auc

    return {
        "pair_accuracy": float(np.mean((prob >= threshold) == truth)),
        "pair_auc": roc_auc(truth, prob),
        "pair_eer": eer(truth, prob)[0],
        "valid_pairs": len(truth),
    }


def _calibrate_and_measure(model, spec: ModelSpec, parts: _Parts) -> dict[str, Any]:
    """Fit the cosine head's mapping and threshold on the calibration classes; report validation.

    Embeddings come from the inference library at its default precision, so the threshold
    is fitted on the numbers that ``compare`` will compute.
    """
    from twinnet.core.calibration import fit_calibration
    from twinnet.evaluate.calibrate import apply_calibration, calibration_scores
    from twinnet.infer.twin import Twin

    twin = Twin.from_model(model, spec, cache_mb=0)
    cos, same = calibration_scores(twin, parts.calib, seed=int(parts.split.seed))
    cal = fit_calibration(same, cos, target="accuracy", method=parts.calib_method)
    apply_calibration(model, spec, cal)
    print(
        f"calibration: threshold {cal.threshold:.4f} (cosine {cal.score_threshold:.4f}) on "
        f"{cal.pairs} pairs of {len(parts.calib.classes)} classes not trained on; "
        f"EER {cal.eer:.4f}"
    )
    if parts.calib is parts.split.valid:
        v_cos, v_same = cos, same
    else:
        v_cos, v_same = calibration_scores(twin, parts.split.valid, seed=int(parts.split.seed))
    return _pair_report(cal.probability(v_cos), v_same, cal.threshold)


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
                learn.fit_one_cycle(cfg.epochs, slice(lo, hi))
                history += _history(learn.recorder)
    finally:
        learn.dls.loaders = originals
    return history
