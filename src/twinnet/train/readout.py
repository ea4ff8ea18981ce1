"""A cosine model compares the layer its held-out classes separate best: pooled or projected.

The metric loss trains a projection of the pooled encoder features onto ``embedding_dim``
dimensions, and pulls each training class towards its proxy there. That fits the training
classes; the wider pooled features before it keep more of what tells new classes apart (as
self-supervised encoders compare the features before their projection head). On Omniglot's
unseen alphabets the pooled features raised pair AUC and 20-way one-shot accuracy in each
of four models, and on unseen digits in each of four (docs/training.md). The run's own
calibration classes, which never train, choose between the two, on the same seeded pairs:
pair ROC AUC of cosine scores, ties going to the pooled features. The choice is the spec's
``readout``; calibration then fits the threshold on the layer chosen.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from twinnet.core.metrics import roc_auc
from twinnet.core.spec import READOUTS, ModelSpec
from twinnet.evaluate.calibrate import calibration_scores

__all__ = ["choose_readout", "readout_scores"]


def readout_scores(
    model: torch.nn.Module, spec: ModelSpec, items: Any, seed: int
) -> dict[str, float]:
    """Pair ROC AUC of each readout's cosine scores on labelled images of untrained classes."""
    from twinnet.infer.twin import Twin

    head, chosen = model.head, model.head.readout
    scores: dict[str, float] = {}
    try:
        for readout in READOUTS:
            head.readout = readout
            twin = Twin.from_model(model, replace(spec, readout=readout), cache_mb=0)
            cos, same = calibration_scores(twin, items, seed=seed)
            scores[readout] = float(roc_auc(same, cos))
    finally:
        head.readout = chosen
    return scores


def choose_readout(
    model: torch.nn.Module, spec: ModelSpec, items: Any, seed: int
) -> tuple[str, dict[str, Any]]:
    """Set the model's readout to the better-scoring one; return it and what the spec records."""
    scores = readout_scores(model, spec, items, seed)
    readout = "pooled" if scores["pooled"] >= scores["projection"] else "projection"
    model.head.readout = readout
    print(
        f"readout: {readout} (pair AUC {scores[readout]:.4f} on {len(items.classes)} held-out "
        f"classes; pooled {scores['pooled']:.4f}, projection {scores['projection']:.4f})"
    )
    return readout, {
        "kept": readout,
        "metric": "pair_auc on the calibration classes",
        "scores": {k: round(v, 6) for k, v in scores.items()},
    }
