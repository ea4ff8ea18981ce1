"""A cosine model compares the layer its held-out classes separate best: pooled or projected.

The metric loss trains a projection of the pooled encoder features onto ``embedding_dim``
dimensions, and pulls each training class towards its proxy there. That fits the training
classes; the wider pooled features before it keep more of what tells new classes apart (as
self-supervised encoders compare the features before their projection head). On Omniglot's
unseen alphabets the pooled features raised pair AUC and 20-way one-shot accuracy in each
of four models, and on unseen digits in each of four (docs/training.md). The run's own
calibration classes, which never train, choose between the two, on the same seeded pairs:
pair ROC AUC of cosine scores, ties going to the pooled features. The choice is the spec's
``readout``; calibration then fits the threshold on the cosines of the layer chosen, which
this module hands back, so each calibration image goes through the encoder once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from twinnet.core.metrics import roc_auc
from twinnet.core.spec import READOUTS, ModelSpec
from twinnet.evaluate.calibrate import pair_cosines

__all__ = ["ReadoutChoice", "choose_readout", "pick_readout", "readout_cosines"]

#: Images whose feature maps are held at once (resnet50 at 224 px: about 100 MB).
CHUNK = 256


@dataclass(frozen=True)
class ReadoutChoice:
    """The readout kept, what the spec records of the choice, and its calibration pairs.

    Attributes:
        readout: ``projection`` or ``pooled``.
        record: ``{kept, metric, scores}`` for the spec's metrics.
        cosines: cosines of the calibration pairs under the kept readout.
        same: whether each pair is of one class.
    """

    readout: str
    record: dict[str, Any]
    cosines: np.ndarray
    same: np.ndarray


def readout_cosines(
    model: torch.nn.Module, spec: ModelSpec, items: Any, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Cosines and truth of the calibration pairs under each readout, from one encoder pass.

    The numbers are those ``calibration_scores`` gives a :class:`~twinnet.infer.twin.Twin`
    of each readout (the head runs on the same fp32 feature maps), for a third of the work.
    """
    from twinnet.infer.twin import Twin

    twin = Twin.from_model(model, spec, cache_mb=0)
    head = model.head
    files = [str(f) for f in items.files]
    rows: dict[str, list[torch.Tensor]] = {r: [] for r in READOUTS}
    for start in range(0, len(files), CHUNK):
        maps = twin.feature_maps(files[start : start + CHUNK])
        with torch.inference_mode():
            for readout in READOUTS:
                rows[readout].append(head.read(maps, readout))
    return {r: pair_cosines(torch.cat(rows[r]), items.labels, seed=seed) for r in READOUTS}


def pick_readout(scores: dict[str, float]) -> str:
    """The readout with the higher score; ties go to the pooled features."""
    return "pooled" if scores["pooled"] >= scores["projection"] else "projection"


def choose_readout(model: torch.nn.Module, spec: ModelSpec, items: Any, seed: int) -> ReadoutChoice:
    """Set the model's readout to the one the held-out classes score higher; say which."""
    cosines = readout_cosines(model, spec, items, seed)
    scores = {r: float(roc_auc(same, cos)) for r, (cos, same) in cosines.items()}
    readout = pick_readout(scores)
    model.head.readout = readout
    print(
        f"readout: {readout} (pair AUC {scores[readout]:.4f} on {len(items.classes)} held-out "
        f"classes; pooled {scores['pooled']:.4f}, projection {scores['projection']:.4f})"
    )
    record = {
        "kept": readout,
        "metric": "pair_auc on the calibration classes",
        "scores": {k: round(v, 6) for k, v in scores.items()},
    }
    return ReadoutChoice(readout, record, *cosines[readout])
