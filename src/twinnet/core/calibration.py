"""Calibration of a pair score (a cosine) into the probability of "same" and a threshold.

The mapping is Platt scaling, fitted on pairs the model did not train on (classes held out
from training): ``z = scale * score + bias`` is the logit of "same". The model's two logits are
``[-z / 2, z / 2]``, so ``softmax(logits)[1] == sigmoid(z)``, and a pair is "same" when that
probability is at least ``threshold``. Pure numpy, so it is cheap to import.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from twinnet.core import metrics

__all__ = [
    "Calibration",
    "fit_calibration",
    "parse_target",
    "CALIBRATION_PAIRS",
    "OPEN_SET_FAR",
    "TAIL_RATES",
    "impostor_tail",
    "sigmoid",
    "probability",
    "DEFAULT_CALIBRATION",
]

#: Balanced pairs drawn from the calibration images: with embeddings each pair costs one dot
#: product, so many pairs cost nothing and steady the threshold.
CALIBRATION_PAIRS = 20000

#: L2 penalty on the slope of the standardised scores: negligible against the information in
#: a handful of overlapping pairs, but it keeps the slope finite on perfectly separable data.
PENALTY = 1e-3
#: The largest scale: one logit per 0.001 of cosine is finer than any score is meaningful.
MAX_SCALE = 1000.0
#: The threshold probability is kept this far inside (0, 1).
EDGE = 1e-6
#: False-accept rates at which the tail of the "different" pairs' scores is recorded, so a
#: gallery search can raise the threshold with the gallery's size.
TAIL_RATES = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)
#: The chance that a query of a class not in the gallery is accepted as some gallery class.
OPEN_SET_FAR = 0.05
_MAX_STEPS = 200

_TARGET_FORMS = (
    '"accuracy", "eer" or "far=X" with X a rate strictly between 0 and 1 (e.g. "far=0.001")'
)


def parse_target(text: str) -> str:
    """The canonical form of a threshold target: ``accuracy``, ``eer`` or ``far=X``, 0 < X < 1."""
    clean = str(text).strip().lower()
    if clean in ("accuracy", "eer"):
        return clean
    if clean.startswith("far="):
        try:
            rate = float(clean[4:])
        except ValueError:
            rate = math.nan
        if 0.0 < rate < 1.0:
            return f"far={rate!r}"
    raise ValueError(f"unknown calibration target {text!r}: use {_TARGET_FORMS}")


#: The mapping of a cosine model that was never calibrated: p(same) = 0.5 at cosine 0.5.
DEFAULT_CALIBRATION = {"scale": 10.0, "bias": -5.0}


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow for large ``|z|``."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def probability(calibration: dict[str, Any] | None, cosines: object) -> np.ndarray:
    """The probability of "same" for each cosine: ``sigmoid(scale * cosine + bias)``.

    The one cosine-to-probability mapping: the gallery, the reports and the head's logits
    (``[-z / 2, z / 2]``) all follow it. ``None`` means :data:`DEFAULT_CALIBRATION`.
    """
    cal = calibration or DEFAULT_CALIBRATION
    z = float(cal["scale"]) * np.asarray(cosines, dtype=np.float64) + float(cal["bias"])
    return sigmoid(z)


def _number(name: str, value: object, integer: bool = False) -> float | int:
    """``value`` as a plain finite float (or int), or a ValueError naming ``name``."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(
            f"calibration {name} must be {'an integer' if integer else 'a number'}, got {value!r}"
        )
    if not math.isfinite(value):
        raise ValueError(f"calibration {name} must be finite, got {value!r}")
    return int(value) if integer else float(value)


@dataclass(frozen=True)
class Calibration:
    """A fitted score-to-probability mapping, its threshold, and how they were chosen."""

    scale: float
    bias: float
    threshold: float
    method: str
    target: str
    pairs: int
    eer: float
    score_threshold: float
    accuracy: float
    #: (rate, score) pairs, rates falling: the score that "different" pairs pass that often.
    impostor_tail: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "impostor_tail", _tail(self.impostor_tail))
        for f in fields(self):
            if f.name in ("method", "target", "impostor_tail"):
                continue
            value = _number(f.name, getattr(self, f.name), integer=f.name == "pairs")
            object.__setattr__(self, f.name, value)
        checks = {
            "scale": self.scale > 0,
            "threshold": 0.0 < self.threshold < 1.0,
            "pairs": self.pairs >= 2,
            "eer": 0.0 <= self.eer <= 1.0,
            "accuracy": 0.0 <= self.accuracy <= 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"calibration {name} is out of range: {getattr(self, name)!r}")
        if not isinstance(self.method, str) or not self.method.strip():
            raise ValueError(f"calibration method must be a non-empty string, got {self.method!r}")
        if not isinstance(self.target, str):
            raise ValueError(f"calibration target must be a string, got {self.target!r}")
        parse_target(self.target)

    def logit(self, scores: object) -> np.ndarray:
        """The logit of "same", ``scale * score + bias``, in the shape of ``scores``."""
        return self.scale * np.asarray(scores, dtype=np.float64) + self.bias

    def logits(self, scores: object) -> np.ndarray:
        """The two logits ("different", "same") per score, shape (N, 2)."""
        z = self.logit(scores).reshape(-1)
        return np.stack([-z / 2.0, z / 2.0], axis=1)

    def probability(self, scores: object) -> np.ndarray:
        """The probability of "same", in the shape of ``scores``."""
        return sigmoid(self.logit(scores))

    def open_set_threshold(self, gallery: int, far: float = OPEN_SET_FAR) -> float:
        """The probability threshold for identification against ``gallery`` images.

        A query of a class the gallery lacks meets every gallery image, so at the pair
        threshold it would be accepted about ``gallery`` times as often as one pair is. The
        score is raised until the "different" pairs of the calibration pass it at a rate of
        ``far / gallery`` (interpolated in log rate over :attr:`impostor_tail`, held at its
        ends), so such a query is accepted with a chance of about ``far``. Never below the
        pair threshold; without a recorded tail (older calibrations), the pair threshold.
        """
        if not self.impostor_tail or gallery < 1:
            return self.threshold
        rates = np.array([r for r, _ in self.impostor_tail])
        scores = np.array([c for _, c in self.impostor_tail])
        per_image = math.log(far / gallery)
        score = float(np.interp(per_image, np.log(rates[::-1]), scores[::-1]))
        raised = float(np.clip(self.probability(score), EDGE, 1.0 - EDGE))
        return max(self.threshold, raised)

    def to_dict(self) -> dict[str, object]:
        """Plain values, ready for JSON."""
        out = asdict(self)
        out["impostor_tail"] = [list(pair) for pair in self.impostor_tail]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Calibration:
        """The calibration ``to_dict`` wrote; every key is required and no other is allowed
        (but ``impostor_tail``, which older calibrations lack)."""
        if not isinstance(data, dict):
            raise ValueError(f"calibration must be a mapping, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        missing = sorted(names - data.keys() - {"impostor_tail"})
        unknown = sorted(set(data) - names)
        if missing or unknown:
            raise ValueError(f"calibration keys: missing {missing}, unknown {unknown}")
        return cls(**data)  # type: ignore[arg-type]


def _tail(value: object) -> tuple[tuple[float, float], ...]:
    """``value`` as (rate, score) pairs with rates in (0, 1) falling and scores not falling."""
    try:
        pairs = tuple((float(r), float(c)) for r, c in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(
            f"calibration impostor_tail must be (rate, score) pairs, got {value!r}"
        ) from None
    rates = [r for r, _ in pairs]
    scores = [c for _, c in pairs]
    if not all(0.0 < r < 1.0 and math.isfinite(c) for r, c in pairs) or (
        rates != sorted(rates, reverse=True) or scores != sorted(scores)
    ):
        raise ValueError(f"calibration impostor_tail is out of range: {value!r}")
    return pairs


def impostor_tail(scores: object) -> tuple[tuple[float, float], ...]:
    """The score that "different" pairs reach at each of :data:`TAIL_RATES` they can measure.

    ``scores`` are the "different" pairs' scores; a rate needs at least one pair above it,
    so 10,000 pairs measure down to 1e-4.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    out = []
    for rate in TAIL_RATES:
        above = int(math.floor(rate * len(s)))
        if above < 1:
            break
        out.append((rate, float(s[len(s) - above])))  # ``above`` pairs score at least this
    return tuple(out)


def _newton(x: np.ndarray, y: np.ndarray, offset: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """Weights minimising the logistic loss of ``offset + x @ w`` plus ``penalty * w**2 / 2``.

    Damped Newton steps (IRLS) from zero: the loss is convex, so this is deterministic.
    """

    def loss(w: np.ndarray) -> float:
        z = offset + x @ w
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * penalty @ w**2)

    w = np.zeros(x.shape[1])
    current = loss(w)
    for _ in range(_MAX_STEPS):
        p = sigmoid(offset + x @ w)
        grad = x.T @ (p - y) + penalty * w
        hess = (x * (p * (1.0 - p))[:, None]).T @ x + np.diag(penalty + 1e-12)
        step, size = np.linalg.solve(hess, grad), 1.0
        while (trial := loss(w - size * step)) > current and size > 1e-12:
            size /= 2.0  # halve until the loss does not rise
        if trial > current:
            break
        w, current = w - size * step, trial
        if np.max(np.abs(size * step)) < 1e-10 * (1.0 + np.max(np.abs(w))):
            break
    return w


def _platt(targets: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Scale and bias of the logistic regression of ``targets`` on ``scores``.

    Scores are standardised first, so the slope penalty does not depend on their spread. On
    separable data the penalty alone would let the scale grow as the gap between the classes
    shrinks, so it is also capped at ``MAX_SCALE`` and the bias refitted at that scale.
    """
    mean, spread = float(scores.mean()), float(scores.std())
    if spread == 0.0:
        raise ValueError("the scores do not separate same from different pairs (all are equal)")
    y = targets.astype(np.float64)
    x = np.column_stack([(scores - mean) / spread, np.ones_like(scores)])
    slope, intercept = _newton(x, y, np.zeros_like(y), np.array([PENALTY, 0.0]))
    scale, bias = float(slope / spread), float(intercept - slope * mean / spread)
    if scale > MAX_SCALE:
        scale = MAX_SCALE
        bias = float(_newton(np.ones((len(y), 1)), y, scale * scores, np.zeros(1))[0])
    return scale, bias


def _score_threshold(targets: np.ndarray, scores: np.ndarray, target: str) -> float:
    """The score threshold that ``target`` asks for, on these pairs."""
    if target == "accuracy":
        return metrics.best_threshold(targets, scores)[0]
    if target == "eer":
        return metrics.eer(targets, scores)[1]
    far, _, thresholds = metrics.roc_points(targets, scores)
    last = np.count_nonzero(far <= float(target[4:])) - 1  # far rises as thresholds fall
    if last == 0:  # only accepting nothing keeps FAR low enough: just above every score
        return float(np.nextafter(scores.max(), np.inf))
    return float(thresholds[last])


def fit_calibration(
    targets: object, scores: object, target: str = "accuracy", method: str = "held-out classes"
) -> Calibration:
    """Fit the score-to-probability mapping and pick the threshold on calibration pairs.

    Args:
        targets: true for "same" pairs.
        scores: the model's score per pair, higher for "same".
        target: ``accuracy`` (the most accurate threshold), ``eer`` (where false accepts and
            false rejects balance) or ``far=X`` (the lowest score threshold with a false
            accept rate of at most X).
        method: how the calibration pairs were drawn, recorded for the reader.

    The threshold probability is ``sigmoid(scale * t + bias)`` at the chosen score threshold
    ``t``, kept within ``[1e-6, 1 - 1e-6]`` (only there does ``probability(score_threshold)``
    differ from ``threshold``); the recorded accuracy is that of the probability decision on
    these pairs, as the model will decide.
    """
    target = parse_target(target)
    t, s = metrics._pairs(targets, scores)
    if t.all() or not t.any():
        raise ValueError(
            f"calibration needs both same and different pairs, got {int(t.sum())} same "
            f"and {int((~t).sum())} different"
        )
    scale, bias = _platt(t, s)
    if not scale > 0:
        raise ValueError(
            "the scores do not separate same from different pairs: higher scores must mean "
            f"'same', but the fitted scale is {scale:.4g}"
        )
    cut = _score_threshold(t, s, target)
    probability = float(np.clip(sigmoid(np.float64(scale * cut + bias)), EDGE, 1.0 - EDGE))
    accepted = sigmoid(scale * s + bias) >= probability
    return Calibration(
        scale=scale,
        bias=bias,
        threshold=probability,
        method=method,
        target=target,
        pairs=len(s),
        eer=metrics.eer(t, s)[0],
        score_threshold=cut,
        accuracy=float(np.mean(accepted == t)),
        impostor_tail=impostor_tail(s[~t]),
    )
