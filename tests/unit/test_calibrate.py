"""Calibration: the Platt mapping, the threshold per target, serialisation and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from twinnet.core.calibration import Calibration, fit_calibration, parse_target

pytestmark = pytest.mark.unit

# Highest score first (P = same, N = different), 4 of each:
#   0.9 P, 0.8 P, 0.7 N, 0.6 P, 0.4 N, 0.35 P, 0.3 N, 0.1 N
# threshold:  0.9  0.8  0.7  0.6  0.4  0.35 0.3  0.1
# false acc.:  0    0    1    1    2    2    3    4      (FAR = /4)
# correct:     5    6    5    6    5    6    5    4      (TP + TN, accepting down to it)
TARGETS = [1, 1, 0, 1, 0, 1, 0, 0]
SCORES = [0.9, 0.8, 0.7, 0.6, 0.4, 0.35, 0.3, 0.1]


@pytest.mark.parametrize(
    ("target", "score_threshold"),
    [
        ("accuracy", 0.75),  # 6/8 first reached cutting between 0.8 and 0.7: the midpoint
        ("eer", 0.6),  # FAR = FRR = 1/4 at 0.6
        ("far=0.25", 0.6),  # lowest threshold with at most 1 false accept of 4
        ("far=0.1", 0.8),  # no false accept allowed: down to 0.8
        ("far=0.001", 0.8),
    ],
)
def test_threshold_per_target(target: str, score_threshold: float) -> None:
    cal = fit_calibration(TARGETS, SCORES, target=target)
    assert cal.score_threshold == pytest.approx(score_threshold)
    assert cal.target == target
    assert cal.pairs == 8
    assert cal.eer == 0.25
    # 0.75 accepts 0.9, 0.8 (6/8 right); 0.6 accepts 0.9 .. 0.6 (also 6/8); 0.8 is as 0.75
    assert cal.accuracy == 0.75
    assert float(cal.probability(cal.score_threshold)) == pytest.approx(cal.threshold, rel=1e-12)
    assert 0 < cal.threshold < 1
    # deciding on the probability is deciding on the score
    scores = np.asarray(SCORES)
    np.testing.assert_array_equal(
        cal.probability(scores) >= cal.threshold, scores >= cal.score_threshold
    )


def test_far_target_that_no_sample_threshold_meets() -> None:
    # the highest score, 0.95, is a different pair: only accepting nothing has FAR <= 0.1
    cal = fit_calibration([0, 1, 1, 0], [0.95, 0.9, 0.8, 0.1], target="far=0.1")
    assert 0.95 < cal.score_threshold < 0.95 + 1e-12
    assert cal.accuracy == 0.5  # everything rejected: the 2 different pairs are right


def test_platt_fit_hand_computed() -> None:
    # score 0: 1 same of 4; score 1: 3 same of 4. Logistic regression fits each frequency:
    # sigmoid(bias) = 1/4 -> bias = -ln 3; sigmoid(scale + bias) = 3/4 -> scale = 2 ln 3.
    # (the tiny slope penalty moves these by about 1e-3)
    targets = [1, 0, 0, 0, 1, 1, 1, 0]
    scores = [0, 0, 0, 0, 1, 1, 1, 1]
    cal = fit_calibration(targets, scores)
    assert cal.scale == pytest.approx(2 * math.log(3), abs=1e-2)
    assert cal.bias == pytest.approx(-math.log(3), abs=1e-2)
    # best cut: between 0 and 1 (6/8), midpoint 0.5, where the logit is about 0
    assert cal.score_threshold == 0.5
    assert cal.accuracy == 0.75
    assert cal.threshold == pytest.approx(0.5, abs=1e-3)


def test_platt_fit_matches_the_base_rate() -> None:
    # with a free bias, the fitted probabilities sum to the number of same pairs: 4
    cal = fit_calibration(TARGETS, SCORES)
    assert cal.probability(np.asarray(SCORES)).sum() == pytest.approx(4.0, abs=1e-8)


def test_separable_scores_give_a_finite_large_scale() -> None:
    targets = [1] * 5 + [0] * 5
    scores = [0.9, 0.8, 0.7, 0.6, 0.55, 0.45, 0.4, 0.3, 0.2, 0.1]
    cal = fit_calibration(targets, scores)
    assert 10 < cal.scale < 100  # the slope penalty holds it near 65, well below the cap
    assert cal.score_threshold == pytest.approx(0.5)
    assert (cal.accuracy, cal.eer) == (1.0, 0.0)
    assert fit_calibration(targets, scores) == cal  # deterministic


def test_scale_is_capped_when_the_classes_barely_separate() -> None:
    # a gap of 1e-9 would need an unbounded scale; at the cap of 1000 the loss is symmetric
    # about the midpoint 0.1 + 5e-10, so the refitted bias is -1000 * that, about -100
    cal = fit_calibration([1, 0], [0.1 + 1e-9, 0.1])
    assert cal.scale == 1000.0
    assert cal.bias == pytest.approx(-100.0, abs=1e-6)
    assert cal.accuracy == 1.0


def test_logits_softmax_is_the_probability() -> None:
    cal = fit_calibration(TARGETS, SCORES)
    scores = np.array([-1.0, -0.3, 0.0, 0.52, 1.0])
    logits = cal.logits(scores)
    assert logits.shape == (5, 2)
    np.testing.assert_allclose(logits[:, 0], -logits[:, 1])
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(softmax[:, 1], cal.probability(scores), rtol=1e-12)
    assert np.all(np.diff(cal.probability(scores)) > 0)


def test_dict_round_trip_through_json() -> None:
    cal = fit_calibration(TARGETS, SCORES, target="far=1e-3", method="user data")
    assert cal.target == "far=0.001"
    data = json.loads(json.dumps(cal.to_dict()))
    assert Calibration.from_dict(data) == cal
    assert set(data) == {
        "scale", "bias", "threshold", "method", "target",
        "pairs", "eer", "score_threshold", "accuracy", "impostor_tail",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scale": None}, r"missing \['scale'\]"),
        ({"extra": 1}, r"unknown \['extra'\]"),
        ({"scale": "5"}, "scale must be a number"),
        ({"scale": -1.0}, "scale is out of range"),
        ({"bias": math.inf}, "bias must be finite"),
        ({"threshold": 1.0}, "threshold is out of range"),
        ({"pairs": 2.5}, "pairs must be an integer"),
        ({"pairs": True}, "pairs must be an integer"),
        ({"eer": 1.5}, "eer is out of range"),
        ({"method": ""}, "method must be a non-empty string"),
        ({"target": "far=2"}, "unknown calibration target"),
    ],
)
def test_from_dict_rejects_bad_values(change: dict, message: str) -> None:
    data = fit_calibration(TARGETS, SCORES).to_dict()
    data.update(change)
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        Calibration.from_dict(data)


def test_from_dict_needs_a_mapping() -> None:
    with pytest.raises(ValueError, match="mapping"):
        Calibration.from_dict([1, 2])  # type: ignore[arg-type]


def test_needs_both_kinds_of_pair() -> None:
    with pytest.raises(ValueError, match="both same and different pairs, got 3 same and 0"):
        fit_calibration([1, 1, 1], [0.9, 0.5, 0.1])


def test_anti_correlated_scores_are_refused() -> None:
    with pytest.raises(ValueError, match="do not separate same from different"):
        fit_calibration(TARGETS, [-s for s in SCORES])
    with pytest.raises(ValueError, match="do not separate same from different"):
        fit_calibration([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5])


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("accuracy", "accuracy"),
        (" EER ", "eer"),
        ("far=1e-3", "far=0.001"),
        ("far=0.01", "far=0.01"),
    ],
)
def test_parse_target(text: str, canonical: str) -> None:
    assert parse_target(text) == canonical


@pytest.mark.parametrize(
    "text",
    ["", "acc", "far", "far=", "far=0", "far=1", "far=-0.1", "far=abc", "far=nan", "tar=0.1"],
)
def test_bad_targets_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match='"accuracy", "eer" or "far=X"'):
        parse_target(text)
    with pytest.raises(ValueError, match="unknown calibration target"):
        fit_calibration(TARGETS, SCORES, target=text)


# --------------------------------------------------------- identification against a gallery
def test_the_impostor_tail_is_read_off_the_different_pairs():
    from twinnet.core.calibration import impostor_tail

    scores = np.linspace(0.0, 0.999, 1000)[::-1]  # 1000 "different" pairs, any order
    tail = impostor_tail(scores)
    # 100 of 1000 pairs reach 0.9, 30 reach 0.97, 10 reach 0.99, 3 reach 0.997, 1 reaches 0.999;
    # 3e-4 of 1000 is less than one pair, so the tail stops at 1e-3.
    assert [r for r, _ in tail] == [0.1, 0.03, 0.01, 0.003, 0.001]
    assert [c for _, c in tail] == pytest.approx([0.9, 0.97, 0.99, 0.997, 0.999])


def _gaussian_calibration(rng: np.random.Generator) -> Calibration:
    """Same pairs score N(0.6, 0.1), different pairs N(0, 0.1): 10,000 of each."""
    same, different = rng.normal(0.6, 0.1, 10000), rng.normal(0.0, 0.1, 10000)
    truth = np.r_[np.ones(10000, bool), np.zeros(10000, bool)]
    return fit_calibration(truth, np.r_[same, different])


def test_the_open_set_threshold_rises_with_the_gallery_and_keeps_the_pair_threshold_as_floor():
    cal = _gaussian_calibration(np.random.default_rng(0))
    assert cal.impostor_tail  # recorded by the fit
    thresholds = [cal.open_set_threshold(n) for n in (1, 10, 100, 1000)]
    assert all(t >= cal.threshold for t in thresholds)
    assert thresholds == sorted(thresholds) and thresholds[-1] > thresholds[0]
    # An older calibration (no tail) keeps its pair threshold for any gallery.
    old = {k: v for k, v in cal.to_dict().items() if k != "impostor_tail"}
    legacy = Calibration.from_dict(old)
    assert legacy.impostor_tail == () and legacy.open_set_threshold(1000) == legacy.threshold
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal


def test_a_stranger_is_accepted_about_as_often_as_the_open_set_rate_says():
    """Strangers meet every gallery image: at the pair threshold most of them would pass."""
    from twinnet.core.calibration import OPEN_SET_FAR

    rng = np.random.default_rng(0)
    cal = _gaussian_calibration(rng)
    gallery = 1000
    best = rng.normal(0.0, 0.1, (4000, gallery)).max(axis=1)  # each stranger's best match
    p_best = cal.probability(best)
    at_pair = np.mean(p_best >= cal.threshold)
    at_open_set = np.mean(p_best >= cal.open_set_threshold(gallery))
    assert at_pair > 0.5
    assert 0.2 * OPEN_SET_FAR <= at_open_set <= 1.6 * OPEN_SET_FAR


@pytest.mark.parametrize(
    "tail", [[[0.1, 0.5], [0.2, 0.6]], [[0.1, 0.6], [0.01, 0.5]], [[1.5, 0.1]], "x", [[0.1]]]
)
def test_a_bad_impostor_tail_is_refused(tail):
    good = fit_calibration(TARGETS, SCORES).to_dict()
    with pytest.raises(ValueError, match="impostor_tail"):
        Calibration.from_dict({**good, "impostor_tail": tail})
