"""One training recipe per head, registered by name: its fastai Learner, and what it measures.

``concat`` is the original sample's pair classifier: pair cross-entropy, validated on pairs
at the sample's threshold. ``cosine`` learns an embedding with a metric loss, then fits its
cosine-to-probability mapping and threshold on classes held out of the gradient
(:mod:`twinnet.core.calibration`), on the layer those classes separate best
(:mod:`twinnet.train.readout`). :mod:`twinnet.train.fit` runs whichever the spec names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from twinnet.core.calibration import Calibration, fit_calibration
from twinnet.core.metrics import eer, roc_auc
from twinnet.core.spec import ModelSpec
from twinnet.evaluate.calibrate import calibration_scores
from twinnet.infer.twin import Twin
from twinnet.train.config import TrainConfig
from twinnet.train.distributed import Dist
from twinnet.train.fastai_parts import EmbeddingNet, proxy_sync_callback, twin_splitter
from twinnet.train.losses import PairAUC, build_metric_loss
from twinnet.train.readout import choose_readout

__all__ = ["HeadRecipe", "HEAD_RECIPES"]


@dataclass(frozen=True)
class HeadRecipe:
    """How one head trains (``learner``) and what is measured once it has (``measure``).

    ``measure`` returns the spec fields it fitted (the calibration and threshold, or nothing)
    and the validation metrics.
    """

    learner: Callable[..., Any]
    measure: Callable[..., tuple[dict[str, Any], dict[str, Any]]]


def _pair_learner(cfg: TrainConfig, data: Any, model, device, scratch, dist: Dist):
    """The sample's objective: pair cross-entropy over balanced pairs of images."""
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import accuracy

    from twinnet.train.loaders import build_dataloaders

    dls = build_dataloaders(
        data.parts.split, data.preprocess, bs=cfg.bs, seed=cfg.seed,
        epoch_pairs=cfg.epoch_pairs, valid_pairs=cfg.valid_pairs, augment=cfg.augment,
        workers=data.workers, cache=data.cache, device=device,
    )  # fmt: skip
    return Learner(
        dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy,
        splitter=twin_splitter, path=scratch, wd=cfg.wd,
    )  # fmt: skip


def _metric_learner(cfg: TrainConfig, data: Any, model, device, scratch, dist: Dist):
    """The cosine head's objective: a metric loss over batches of single images."""
    from fastai.learner import Learner

    from twinnet.train.loaders import ImageDataset, ImageStore, make_dataloaders

    split = data.parts.split
    store = ImageStore(data.preprocess, data.cache)
    images = cfg.epoch_pairs or max(len(split.train), 1024)
    n_batches = -(-images // (cfg.bs * dist.world_size)) * dist.world_size
    train_ds = ImageDataset(
        split.train, store, cfg.seed, cfg.per_class, cfg.bs, n_batches, cfg.sampler == "balanced"
    )
    valid_ds = ImageDataset(split.valid, store, cfg.seed)
    dls = make_dataloaders(
        train_ds, valid_ds, data.preprocess, bs=train_ds.batch_size, augment=cfg.augment,
        workers=data.workers, device=device,
    )  # fmt: skip
    loss = build_metric_loss(cfg.loss, len(split.train.classes), data.spec.embedding_dim)

    def splitter(m):
        return [list(m.encoder.parameters()), list(m.head.parameters()) + list(loss.parameters())]

    cbs = [proxy_sync_callback(loss)] if dist.active and loss.has_proxies else []
    return Learner(
        dls, EmbeddingNet(model), loss_func=loss, metrics=PairAUC(), splitter=splitter,
        path=scratch, cbs=cbs, wd=cfg.wd,
    )  # fmt: skip


def _pair_measure(model, spec: ModelSpec, parts: Any, run: Any) -> tuple[dict, dict[str, Any]]:
    prob, truth = _valid_scores(model, run.valid_dl)
    return {}, _pair_report(prob, truth, spec.threshold)


def _cosine_measure(model, spec: ModelSpec, parts: Any, run: Any) -> tuple[dict, dict[str, Any]]:
    choice = choose_readout(model, spec, parts.calib, int(parts.split.seed))
    spec = replace(spec, readout=choice.readout)
    cal, metrics = _calibrate_and_measure(model, spec, parts, (choice.cosines, choice.same))
    model.head.set_calibration(cal.scale, cal.bias)
    fitted = {
        "readout": choice.readout, "calibration": cal.to_dict(), "threshold": float(cal.threshold)
    }  # fmt: skip
    return fitted, {**metrics, "readout": choice.record}


def _calibrate_and_measure(
    model, spec: ModelSpec, parts: Any, calib: tuple[np.ndarray, np.ndarray]
) -> tuple[Calibration, dict[str, Any]]:
    """Fit the cosine head's mapping and threshold on the calibration pairs; report validation.

    ``calib`` holds the cosines and truth of the calibration pairs, scored by the inference
    library at its default precision, so the threshold is fitted on the numbers that
    ``compare`` will compute.
    """
    cos, same = calib
    cal = fit_calibration(same, cos, target="accuracy", method=parts.calib_method)
    print(
        f"calibration: threshold {cal.threshold:.4f} (cosine {cal.score_threshold:.4f}) on "
        f"{cal.pairs} pairs of {len(parts.calib.classes)} classes not trained on; "
        f"EER {cal.eer:.4f}"
    )
    if parts.calib is parts.split.valid:
        v_cos, v_same = cos, same
    else:
        twin = Twin.from_model(model, spec, cache_mb=0)
        v_cos, v_same = calibration_scores(twin, parts.split.valid, seed=int(parts.split.seed))
    return cal, _pair_report(cal.probability(v_cos), v_same, cal.threshold)


def _pair_report(prob: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, Any]:
    return {
        "pair_accuracy": float(np.mean((prob >= threshold) == truth)),
        "pair_auc": roc_auc(truth, prob),
        "pair_eer": eer(truth, prob)[0],
        "valid_pairs": len(truth),
    }


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


#: head name -> its recipe; a new head is a learner, a measure and a line here.
HEAD_RECIPES: dict[str, HeadRecipe] = {
    "concat": HeadRecipe(_pair_learner, _pair_measure),
    "cosine": HeadRecipe(_metric_learner, _cosine_measure),
}
