"""The answer to "which known class is this, if any?": matches, the open-set threshold.

Kept apart from the index on disk (:mod:`twinnet.index.gallery`) so that clients can read an
answer without FAISS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from twinnet.core.calibration import Calibration, probability
from twinnet.core.spec import ModelSpec
from twinnet.errors import TwinnetError

__all__ = [
    "Match",
    "Identification",
    "aggregate",
    "check_top_k",
    "identification_threshold",
    "require_cosine",
    "gallery_probability",
    "MAX_TOP_K",
    "NEIGHBOURS_PER_CLASS",
    "MIN_NEIGHBOURS",
    "MAX_NEIGHBOURS",
]

#: The largest ``top_k`` accepted: each class costs up to ten neighbours of search.
MAX_TOP_K = 1000
#: Neighbours searched per class asked for, and at least this many, before grouping.
NEIGHBOURS_PER_CLASS = 10
MIN_NEIGHBOURS = 50
#: When one class fills the neighbours, the search widens up to this many.
MAX_NEIGHBOURS = 16_384


@dataclass(frozen=True)
class Match:
    """One class of the gallery, as close as its best-matching image is to the query.

    Attributes:
        label: the class.
        probability: probability of "same" between the query and that image.
        path: the best-matching gallery image of the class.
        cosine: their cosine similarity.
    """

    label: str
    probability: float
    path: str
    cosine: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "probability": self.probability, "path": self.path}


@dataclass(frozen=True)
class Identification:
    """The answer for one query: its best classes, and whether any of them is a match.

    Attributes:
        known: True when the best class reaches the threshold.
        matches: the best classes, best first (below the threshold too).
        threshold: the model's decision threshold on the probability.
        model: the model's name.
    """

    known: bool
    matches: list[Match]
    threshold: float
    model: str

    def to_dict(self) -> dict[str, Any]:
        """The response object: ``{"known", "matches", "threshold", "model"}``."""
        return {
            "known": self.known,
            "matches": [m.to_dict() for m in self.matches],
            "threshold": self.threshold,
            "model": self.model,
        }


def aggregate(
    cosines: np.ndarray, labels: Sequence[str], paths: Sequence[str], top_k: int
) -> list[tuple[str, float, str]]:
    """The best ``top_k`` classes of neighbours given best first: (label, cosine, path).

    A class's score is its best neighbour's cosine; its path is that neighbour's.
    """
    best: dict[str, tuple[str, float, str]] = {}
    for cos, label, path in zip(cosines, labels, paths, strict=True):
        if label not in best:
            best[label] = (label, float(cos), path)
            if len(best) == top_k:
                break
    return sorted(best.values(), key=lambda m: -m[1])


def check_top_k(top_k: object) -> int:
    """``top_k`` as an int in 1..MAX_TOP_K, or a TwinnetError that says what is allowed."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
        raise TwinnetError(f"top_k must be a whole number, got {top_k!r}")
    if not 1 <= int(top_k) <= MAX_TOP_K:
        raise TwinnetError(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
    return int(top_k)


def require_cosine(spec: ModelSpec) -> None:
    if not spec.has_embeddings:
        raise TwinnetError(
            f"identification needs a cosine model: {spec.name!r} has a {spec.head} head, which "
            "scores pairs and gives no per-image embedding to index. Train one with "
            "`twinnet train DATA_DIR --out MODEL_DIR --head cosine`."
        )


def gallery_probability(spec: ModelSpec, cosines: np.ndarray) -> np.ndarray:
    """The model's probability of "same" for each cosine (:func:`~twinnet.core.calibration.probability`)."""
    return probability(spec.calibration, cosines)


def identification_threshold(spec: ModelSpec, gallery: int) -> float:
    """The probability a query's best class must reach against ``gallery`` images.

    The model's pair threshold, raised with the gallery's size from the calibration's
    "different" pairs so a query of a class not in the gallery is accepted with a chance of
    about :data:`~twinnet.core.calibration.OPEN_SET_FAR`
    (:meth:`~twinnet.core.calibration.Calibration.open_set_threshold`). Calibrations that record no
    such tail (older models; re-run ``twinnet calibrate``) keep the pair threshold.
    """
    try:
        cal = Calibration.from_dict(dict(spec.calibration or {}))
    except (TypeError, ValueError):
        return float(spec.threshold)
    return max(float(spec.threshold), cal.open_set_threshold(gallery))
