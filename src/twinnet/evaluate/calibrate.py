"""Calibration with a model: score held-out pairs, record the fit, re-fit a model directory.

The maths (Platt scaling, thresholds) is :mod:`twinnet.core.calibration`; this module feeds it
the cosines of a trained model's embeddings.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from twinnet.core.calibration import (
    CALIBRATION_PAIRS,
    DEFAULT_CALIBRATION,
    fit_calibration,
    parse_target,
    probability,
)
from twinnet.data.items import check_images, draw_pairs, require_pairs, scan_folder
from twinnet.errors import TwinnetError
from twinnet.infer.twin import Twin

__all__ = ["calibration_scores", "pair_cosines", "recalibrate"]


def calibration_scores(
    twin: Any, items: Any, pairs: int = CALIBRATION_PAIRS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Cosines and truth of ``pairs`` seeded balanced pairs of labelled images.

    Each image goes through the encoder once (``Twin.embed``); pairs are dot products.
    """
    if not twin.has_embeddings:
        raise TwinnetError(
            "calibration fits a cosine model's score mapping; this model has the concat head "
            "(train one with --head cosine)"
        )
    emb = twin.embed([str(f) for f in items.files])
    return pair_cosines(emb, items.labels, pairs, seed)


def pair_cosines(
    emb: Any, labels: Any, pairs: int = CALIBRATION_PAIRS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Cosines and truth of the seeded pairs :func:`calibration_scores` draws, from embeddings.

    ``emb`` holds one unit-norm row per image, in the order of ``labels``; the same ``seed``
    draws the same pairs, so embeddings of two layers are scored on the same pairs.
    """
    emb = np.asarray(emb, dtype=np.float64)
    drawn = draw_pairs(labels, pairs, np.random.default_rng([seed, 13]), swap=False)
    cos = np.einsum("nd,nd->n", emb[drawn[:, 0]], emb[drawn[:, 1]])
    return cos, drawn[:, 2].astype(bool)


def _decision_report(
    targets: np.ndarray, scores: np.ndarray, scale: float, bias: float, threshold: float
) -> dict[str, float]:
    accept = probability({"scale": scale, "bias": bias}, scores) >= threshold
    return {
        "threshold": float(threshold),
        "accuracy": float(np.mean(accept == targets)),
        "far": float(np.mean(accept[~targets])),
        "frr": float(np.mean(~accept[targets])),
    }


def recalibrate(
    model_dir: str | os.PathLike,
    data: str | os.PathLike,
    labels: str | None = None,
    target: str = "accuracy",
    pairs: int = CALIBRATION_PAIRS,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Re-fit a cosine model's mapping and threshold on a labelled folder; write the spec back.

    The weights do not change. The spec is replaced atomically, so a reader never sees half
    of it; a served or archived model uses the new threshold once it is re-archived.

    Returns:
        the decision figures on the same pairs before and after (threshold, accuracy, FAR,
        FRR), the latter with ``eer``, ``target``, ``pairs`` and the ``spec`` path added.
    """
    target = parse_target(target)
    if pairs < 2:
        raise TwinnetError(f"--pairs must be at least 2, got {pairs}")
    twin = Twin.load(model_dir)
    spec = twin.spec
    items = scan_folder(data, labels or spec.labels)
    items, _ = check_images(items)
    require_pairs(items, f"the calibration data in {data}")
    cos, same = calibration_scores(twin, items, pairs, seed)
    old = spec.calibration or DEFAULT_CALIBRATION
    before = _decision_report(same, cos, old["scale"], old["bias"], spec.threshold)
    try:
        cal = fit_calibration(same, cos, target, method=f"user data ({os.fspath(data)})")
    except ValueError as exc:
        raise TwinnetError(str(exc)) from None
    after = _decision_report(same, cos, cal.scale, cal.bias, cal.threshold)
    spec.calibration = cal.to_dict()
    spec.threshold = float(cal.threshold)
    path = spec.save(model_dir)
    return before, {**after, "eer": cal.eer, "target": target, "pairs": cal.pairs, "spec": path}
