"""Verification metrics: pair accuracy, ROC AUC, EER, TAR@FAR, k-fold and N-way one-shot.

Scoring goes through the inference library (:class:`twinnet.infer.twin.Twin`), so the numbers
describe exactly what ``compare`` and ``search`` return to users. On a model trained with
``--split classes``, evaluate on classes it never saw: that is what a twin network is for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from twinnet.core.metrics import eer, kfold_accuracy, roc_auc, tar_at_far
from twinnet.core.spec import ModelSpec
from twinnet.data.items import LabelledImages, check_images, draw_pairs, scan_folder, split_items
from twinnet.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from twinnet.infer.twin import Twin

__all__ = ["roc_auc", "FARS", "pair_metrics", "way_metrics", "evaluation_items", "evaluate"]

#: Pairs per ``compare_batch`` call.
PAIR_BATCH = 256
#: False accept rates at which the true accept rate is reported.
FARS = (1e-2, 1e-3)
#: Folds of the k-fold accuracy (the LFW protocol's ten).
FOLDS = 10


def pair_metrics(
    twin: Twin, items: LabelledImages, pairs: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Verification figures over ``pairs`` seeded balanced pairs.

    Accuracy is at the model's own threshold, fixed before these pairs were seen. EER,
    TAR at each FAR of :data:`FARS` and ROC AUC describe the whole score range. The k-fold
    accuracy chooses each fold's threshold on the other folds (the LFW protocol): the
    figure a threshold fitted on data like this would reach.
    """
    drawn = draw_pairs(items.labels, pairs, np.random.default_rng([seed, 10]), swap=True)
    files = [str(f) for f in items.files]
    margins, same = [], []
    for start in range(0, len(drawn), PAIR_BATCH):
        chunk = drawn[start : start + PAIR_BATCH]
        results = twin.compare_batch([(files[a], files[b]) for a, b, _ in chunk])
        # the log-odds order pairs as the probability does, without rounding ties at 1.0
        margins += [r.logits[1] - r.logits[0] for r in results]
        same += [r.same for r in results]
    truth = drawn[:, 2].astype(bool)
    scores = np.asarray(margins, dtype=np.float64)
    report: dict[str, Any] = {
        "accuracy": float(np.mean(np.asarray(same) == truth)),
        "threshold": float(twin.spec.threshold),
        "auc": roc_auc(truth, scores),
        "eer": eer(truth, scores)[0],
        "tar_at_far": {str(far): tar for far, tar in tar_at_far(truth, scores, FARS).items()},
        "pairs": int(len(drawn)),
    }
    if len(drawn) >= FOLDS:
        report["kfold_accuracy"], report["kfold_std"] = kfold_accuracy(truth, scores, FOLDS, seed)
    return report


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
        held = set(split.get("calibration_classes") or [])
        if held and split.get("calibration_method") == "held-out calibration classes":
            # the random split was drawn after these classes were set aside for calibration
            items = items.subset(
                [i for i, lab in enumerate(items.labels) if items.classes[lab] not in held]
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
