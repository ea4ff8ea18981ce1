"""Verification metrics: pair accuracy, ROC AUC, and N-way one-shot accuracy.

Scoring goes through the inference library (:class:`twinnet.inference.Twin`), so the numbers
describe exactly what ``compare`` and ``search`` return to users. On a model trained with
``--split classes``, evaluate on classes it never saw: that is what a twin network is for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .data import LabelledImages, check_images, draw_pairs, scan_folder, split_items
from .errors import DataError
from .spec import ModelSpec

if TYPE_CHECKING:  # pragma: no cover
    from .inference import Twin

__all__ = ["roc_auc", "pair_metrics", "way_metrics", "evaluation_items", "evaluate"]

#: Pairs per ``compare_batch`` call.
PAIR_BATCH = 256


def roc_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, as the Mann-Whitney rank statistic (ties count one half).

    Returns NaN when only one kind of target is present.
    """
    targets = np.asarray(targets).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos, n_neg = int(targets.sum()), int((~targets).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over runs of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0  # mean of 1-based ranks s+1 .. e
    return float((ranks[targets].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pair_metrics(
    twin: Twin, items: LabelledImages, pairs: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Accuracy (at the model's threshold) and ROC AUC over ``pairs`` seeded balanced pairs."""
    drawn = draw_pairs(items.labels, pairs, np.random.default_rng([seed, 10]), swap=True)
    files = [str(f) for f in items.files]
    probs, same = [], []
    for start in range(0, len(drawn), PAIR_BATCH):
        chunk = drawn[start : start + PAIR_BATCH]
        results = twin.compare_batch([(files[a], files[b]) for a, b, _ in chunk])
        probs += [r.probability for r in results]
        same += [r.same for r in results]
    truth = drawn[:, 2].astype(bool)
    return {
        "accuracy": float(np.mean(np.asarray(same) == truth)),
        "auc": roc_auc(truth, np.asarray(probs)),
        "pairs": int(len(drawn)),
    }


def way_metrics(
    twin: Twin, items: LabelledImages, way: int = 20, trials: int = 400, seed: int = 0
) -> dict[str, Any]:
    """N-way one-shot accuracy (Koch et al., 2015) over ``trials`` seeded episodes.

    Each episode shows one image of each of ``way`` classes and a query image of one of them
    (never the same file as its support image). It is correct when :meth:`Twin.search` ranks
    the query's own class first. Supports are shuffled, so ties earn no credit by position.
    """
    if way < 2:
        raise DataError(f"--way must be at least 2, got {way}")
    by_class = [np.flatnonzero(items.labels == c) for c in range(len(items.classes))]
    present = [c for c, idx in enumerate(by_class) if len(idx)]
    queryable = [c for c in present if len(by_class[c]) >= 2]
    if way > len(present):
        raise DataError(
            f"--way {way} needs {way} classes; the evaluation data have {len(present)} "
            f"(use --way {len(present)} or fewer)"
        )
    if not queryable:
        raise DataError("N-way evaluation needs a class with at least 2 images")
    rng = np.random.default_rng([seed, 11])
    files = [str(f) for f in items.files]
    correct = 0
    for _ in range(trials):
        target = int(rng.choice(queryable))
        others = rng.choice([c for c in present if c != target], way - 1, replace=False)
        query, support = rng.choice(by_class[target], 2, replace=False)
        gallery = [int(support)] + [int(rng.choice(by_class[c])) for c in others]
        order = rng.permutation(way)
        gallery = [gallery[i] for i in order]
        truth = int(np.flatnonzero(order == 0)[0])
        best = twin.search(files[int(query)], [files[i] for i in gallery], top_k=1)[0]
        correct += int(best.index == truth)
    return {
        "way_accuracy": correct / trials if trials else float("nan"),
        "way": way,
        "trials": trials,
    }


def evaluation_items(
    data: str | Path, spec: ModelSpec, labels: str | None = None, held_out: bool = False
) -> LabelledImages:
    """The readable labelled images of ``data`` to evaluate on.

    With ``held_out``, only the images the model was validated on: its held-out classes for a
    ``--split classes`` model, or the same seeded random split of the same folder otherwise.
    """
    items = scan_folder(data, labels or spec.labels)
    if not len(items):
        raise DataError(f"no labelled images in {data} (labels: {labels or spec.labels})")
    items, _ = check_images(items)
    if not held_out:
        return items
    split = spec.split or {}
    mode = split.get("mode")
    if mode == "classes":
        keep = set(split.get("valid_classes") or [])
        index = [i for i, lab in enumerate(items.labels) if items.classes[lab] in keep]
        if not index:
            raise DataError(
                f"--held-out: none of the model's held-out classes are in {data} "
                "(evaluate on the folder it was trained from)"
            )
        return items.subset(index)
    if mode == "random":
        if spec.classes and items.counts() != spec.classes:
            raise DataError(
                f"--held-out: {data} is not the data the model was trained on (class counts "
                "differ), so its random split cannot be recovered"
            )
        return split_items(items, "random", float(split["valid_pct"]), int(split["seed"])).valid
    raise DataError("--held-out: the model's spec records no split (was it trained by twinnet?)")


def evaluate(
    twin: Twin,
    items: LabelledImages,
    pairs: int = 2000,
    way: int | None = None,
    trials: int = 400,
    seed: int = 0,
) -> dict[str, Any]:
    """Pair metrics (unless ``pairs`` is 0) and, with ``way``, N-way one-shot accuracy."""
    report: dict[str, Any] = {"images": len(items), "classes": len(items.counts()), "seed": seed}
    if pairs:
        report.update(pair_metrics(twin, items, pairs, seed))
    if way:
        report.update(way_metrics(twin, items, way, trials, seed))
    return report
