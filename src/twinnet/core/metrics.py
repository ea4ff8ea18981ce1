"""Verification metrics on scored pairs: ROC, EER, TAR@FAR, best threshold, k-fold accuracy.

The ROC curve and its area are scikit-learn's, imported on first use so that this module
stays cheap to import; the rest is numpy. A pair's target is true for "same"; its score is
higher for "same" (a cosine or a probability). Every decision here is "same iff score >= t".
Each function takes array-likes of equal, non-zero length and raises ValueError otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = [
    "roc_auc",
    "roc_points",
    "eer",
    "tar_at_far",
    "best_threshold",
    "accuracy_at",
    "kfold_accuracy",
]


def _pairs(targets: object, scores: object) -> tuple[np.ndarray, np.ndarray]:
    """Targets as bool and scores as float64, both flat, checked for length and finiteness."""
    t = np.asarray(targets).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if len(t) != len(s):
        raise ValueError(f"targets and scores differ in length ({len(t)} vs {len(s)})")
    if not len(s):
        raise ValueError("no pairs to score: targets and scores are empty")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite (found NaN or infinity)")
    return t, s


def _runs(t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores, highest first, with the true and false accepts at each as threshold."""
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    last = np.append(np.flatnonzero(np.diff(s)), len(s) - 1)  # last index of each run
    return s[last], np.cumsum(t)[last], np.cumsum(~t)[last]


def _both_kinds(t: np.ndarray) -> tuple[int, int]:
    return int(t.sum()), int((~t).sum())


def roc_auc(targets: object, scores: object) -> float:
    """Area under the ROC curve (scikit-learn's; ties count one half).

    Returns NaN when only one kind of target is present.
    """
    t, s = _pairs(targets, scores)
    n_pos, n_neg = _both_kinds(t)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(t, s))


def roc_points(targets: object, scores: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true accept rates at every distinct score used as threshold (scikit-learn's).

    Returns ``(far, tar, thresholds)``, thresholds falling from ``+inf`` (accept nothing:
    FAR = TAR = 0) to the lowest score (accept everything: FAR = TAR = 1). Needs both same
    and different pairs, since each rate divides by the count of one kind.
    """
    t, s = _pairs(targets, scores)
    n_pos, n_neg = _both_kinds(t)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("an ROC curve needs both same and different pairs")
    from sklearn.metrics import roc_curve

    far, tar, thresholds = roc_curve(t, s, drop_intermediate=False)
    return far, tar, thresholds


def eer(targets: object, scores: object) -> tuple[float, float]:
    """Equal error rate and its threshold: where FAR and FRR (= 1 - TAR) cross.

    Over the sample scores as thresholds (:func:`roc_points`), the one with the smallest
    ``|FAR - FRR|`` is taken and ``(FAR + FRR) / 2`` there is reported, which is the exact EER
    when the two meet at a sample threshold. Ties go to the smaller ``FAR + FRR``, then to the
    higher threshold. Accepting nothing is never a candidate (there ``|FAR - FRR| = 1``, no
    better than accepting everything), so the threshold is always a sample score.
    ``(nan, nan)`` with one kind only.
    """
    t, s = _pairs(targets, scores)
    n_pos, n_neg = _both_kinds(t)
    if n_pos == 0 or n_neg == 0:
        return float("nan"), float("nan")
    far, tar, values = (x[1:] for x in roc_points(t, s))
    # counts, so that FAR - FRR and FAR + FRR compare exactly in units of 1 / (n_pos * n_neg)
    fp = np.rint(far * n_neg).astype(np.int64)
    fn = n_pos - np.rint(tar * n_pos).astype(np.int64)
    gap = np.abs(fp * n_pos - fn * n_neg)
    total = fp * n_pos + fn * n_neg
    tied = np.flatnonzero(gap == gap.min())
    best = tied[np.argmin(total[tied])]  # argmin takes the first: the higher threshold
    return float(total[best] / (2.0 * n_pos * n_neg)), float(values[best])


def tar_at_far(
    targets: object, scores: object, fars: Iterable[float] | float = (1e-2, 1e-3)
) -> dict[float, float]:
    """The best true accept rate whose false accept rate is at most each of ``fars``.

    Thresholds are the sample scores; if every one of them passes too many negatives, only
    accepting nothing qualifies and TAR is 0. With fewer than ``1 / far`` negatives, FAR can
    only be 0 below that level, so the figure is coarse (and pessimistic): use many pairs.
    Values are NaN when only one kind of target is present.
    """
    limits = [float(f) for f in np.atleast_1d(np.asarray(fars, dtype=np.float64))]
    if not limits or not all(0.0 <= f <= 1.0 for f in limits):
        raise ValueError(f"fars must be one or more rates in [0, 1], got {fars!r}")
    t, s = _pairs(targets, scores)
    if t.all() or not t.any():
        return dict.fromkeys(limits, float("nan"))
    far, tar, _ = roc_points(t, s)
    # far rises as the threshold falls, so the qualifying points are a prefix
    return {f: float(tar[np.count_nonzero(far <= f) - 1]) for f in limits}


def best_threshold(targets: object, scores: object) -> tuple[float, float]:
    """The threshold with the highest accuracy on these pairs, and that accuracy.

    Between two adjacent distinct scores, the midpoint is returned rather than the lower
    score itself: both decide these pairs alike, and the midpoint sits in the gap, so it
    generalises better to new scores. Accepting everything returns the lowest score;
    accepting nothing returns the next float above the highest. Ties go to the higher
    threshold, which accepts fewer pairs: a false accept usually costs more than a false
    reject.
    """
    t, s = _pairs(targets, scores)
    values, tp, fp = _runs(t, s)
    n_neg = int((~t).sum())
    # cut j accepts the j highest distinct scores (j = 0: nothing; j = len(values): all)
    correct = np.concatenate([[0], tp]) + n_neg - np.concatenate([[0], fp])
    j = int(np.argmax(correct))  # the first maximum: the fewest accepted
    if j == 0:
        threshold = float(np.nextafter(values[0], np.inf))
    elif j == len(values):
        threshold = float(values[-1])
    else:
        high, low = values[j - 1], values[j]
        threshold = float(low + (high - low) / 2.0)
        if not low < threshold <= high:  # adjacent floats: no midpoint between them
            threshold = float(high)
    return threshold, float(correct[j] / len(s))


def accuracy_at(targets: object, scores: object, threshold: float) -> float:
    """Fraction of pairs decided correctly by "same iff score >= threshold"."""
    t, s = _pairs(targets, scores)
    if np.isnan(threshold):
        raise ValueError("threshold must be a number, got NaN")
    return float(np.mean((s >= threshold) == t))


def kfold_accuracy(
    targets: object, scores: object, folds: int = 10, seed: int = 0
) -> tuple[float, float]:
    """Mean and (population) standard deviation of k-fold accuracy, the LFW protocol.

    The pairs are shuffled (seeded) into ``folds`` folds; each fold is scored at the
    :func:`best_threshold` of the other folds, so no fold chooses its own threshold.
    """
    t, s = _pairs(targets, scores)
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"folds must be an integer of at least 2, got {folds!r}")
    if len(s) < folds:
        raise ValueError(f"{folds}-fold accuracy needs at least {folds} pairs, got {len(s)}")
    order = np.random.default_rng([seed, 12]).permutation(len(s))
    accuracies = []
    for test in np.array_split(order, folds):
        train = np.setdiff1d(order, test)
        threshold, _ = best_threshold(t[train], s[train])
        accuracies.append(accuracy_at(t[test], s[test], threshold))
    return float(np.mean(accuracies)), float(np.std(accuracies))
