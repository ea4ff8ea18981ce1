"""Verification metrics against values worked out by hand on tiny data."""

from __future__ import annotations

import numpy as np
import pytest

from twinnet.core.metrics import (
    accuracy_at,
    best_threshold,
    eer,
    kfold_accuracy,
    roc_auc,
    roc_points,
    tar_at_far,
)

pytestmark = pytest.mark.unit

# Data A, highest score first (P = same, N = different), 4 of each:
#   0.9 P, 0.8 P, 0.7 N, 0.6 P, 0.4 N, 0.35 P, 0.3 N, 0.1 N
# threshold:  inf  0.9  0.8  0.7  0.6  0.4  0.35 0.3  0.1
# true acc.:   0    1    2    2    3    3    4    4    4     (TAR = /4, FRR = 1 - TAR)
# false acc.:  0    0    0    1    1    2    2    3    4     (FAR = /4)
A_TARGETS = [1, 1, 0, 1, 0, 1, 0, 0]
A_SCORES = [0.9, 0.8, 0.7, 0.6, 0.4, 0.35, 0.3, 0.1]


def test_roc_points_hand_computed() -> None:
    far, tar, thresholds = roc_points(A_TARGETS, A_SCORES)
    assert thresholds.tolist() == [np.inf, 0.9, 0.8, 0.7, 0.6, 0.4, 0.35, 0.3, 0.1]
    assert far.tolist() == [0, 0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 1]
    assert tar.tolist() == [0, 0.25, 0.5, 0.5, 0.75, 0.75, 1, 1, 1]


def test_roc_points_merges_tied_scores_and_ignores_input_order() -> None:
    # 0.5 is scored by one P and one N: a single threshold moves both counts at once
    far, tar, thresholds = roc_points([0, 1, 1, 0], [0.5, 0.9, 0.5, 0.1])
    assert thresholds.tolist() == [np.inf, 0.9, 0.5, 0.1]
    assert far.tolist() == [0, 0, 0.5, 1]
    assert tar.tolist() == [0, 0.5, 1, 1]


def test_roc_auc_hand_computed() -> None:
    # P>N pairs: 0.9 beats 4 N, 0.8 beats 4, 0.6 beats 3 (0.4, 0.3, 0.1), 0.35 beats 2 -> 13/16
    assert roc_auc(A_TARGETS, A_SCORES) == 13 / 16
    # a tie between a P and an N counts one half: (1 + 0.5) / 2
    assert roc_auc([1, 1, 0], [0.5, 0.9, 0.5]) == 0.75
    assert np.isnan(roc_auc([1, 1], [0.1, 0.2]))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_equals_brute_force_pair_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    targets = rng.random(60) < 0.4
    scores = np.round(rng.normal(targets * 0.5, 1.0), 1)  # rounded, so many ties
    pos, neg = scores[targets], scores[~targets]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_auc(targets, scores) == pytest.approx(wins / (len(pos) * len(neg)), abs=1e-12)


def test_eer_where_far_and_frr_meet_exactly() -> None:
    # at t = 0.6: FAR = 1/4 and FRR = 1 - 3/4 = 1/4
    assert eer(A_TARGETS, A_SCORES) == (0.25, 0.6)


def test_eer_between_thresholds_takes_the_smallest_gap() -> None:
    # 0.9 P, 0.8 N, 0.7 P, 0.2 N, 0.1 N (2 P, 3 N):
    #   t=0.9: FAR 0,   FRR 1/2 -> gap 1/2
    #   t=0.8: FAR 1/3, FRR 1/2 -> gap 1/6, EER (1/3 + 1/2) / 2 = 5/12
    #   t=0.7: FAR 1/3, FRR 0   -> gap 1/3
    rate, threshold = eer([1, 0, 1, 0, 0], [0.9, 0.8, 0.7, 0.2, 0.1])
    assert rate == pytest.approx(5 / 12)
    assert threshold == 0.8


def test_eer_tie_goes_to_the_smaller_mean_error() -> None:
    # 0.9 P, 0.8 N, 0.6 P, 0.5 P, 0.3 N (3 P, 2 N):
    #   t=0.8: FAR 1/2, FRR 2/3 -> gap 1/6, mean 7/12
    #   t=0.6: FAR 1/2, FRR 1/3 -> gap 1/6, mean 5/12  <- taken
    rate, threshold = eer([1, 0, 1, 1, 0], [0.9, 0.8, 0.6, 0.5, 0.3])
    assert rate == pytest.approx(5 / 12)
    assert threshold == 0.6


def test_eer_of_one_kind_is_nan() -> None:
    assert all(np.isnan(v) for v in eer([0, 0, 0], [0.1, 0.2, 0.3]))


def test_tar_at_far_hand_computed() -> None:
    # FAR <= 0.1 allows no false accept: down to t=0.8, TAR 2/4
    # FAR <= 0.25 allows one: down to t=0.6, TAR 3/4; FAR <= 0.5 allows two: t=0.35, TAR 1
    assert tar_at_far(A_TARGETS, A_SCORES, (0.1, 0.25, 0.5)) == {0.1: 0.5, 0.25: 0.75, 0.5: 1.0}


def test_tar_at_far_is_zero_when_only_accepting_nothing_qualifies() -> None:
    # the highest score is an N, so any sample threshold has FAR >= 1/2
    assert tar_at_far([0, 1, 1, 0], [0.95, 0.9, 0.8, 0.1], 0.1) == {0.1: 0.0}
    assert tar_at_far([0, 1], [0.95, 0.9]) == {0.01: 0.0, 0.001: 0.0}


def test_tar_at_far_rejects_rates_outside_0_1() -> None:
    with pytest.raises(ValueError, match="fars"):
        tar_at_far(A_TARGETS, A_SCORES, (0.1, 1.5))


def test_best_threshold_breaks_ties_to_the_highest_midpoint() -> None:
    # correct decisions (TP + TN) after accepting the top k scores, k = 0..8:
    #   4 5 6 5 6 5 6 5 4 -> 6/8 at k=2 (cut 0.8|0.7), k=4 (0.6|0.4), k=6 (0.35|0.3)
    # the highest cut wins; its midpoint is (0.8 + 0.7) / 2 = 0.75
    threshold, accuracy = best_threshold(A_TARGETS, A_SCORES)
    assert threshold == pytest.approx(0.75)
    assert accuracy == 0.75


def test_best_threshold_at_the_extremes() -> None:
    # all same: accepting everything is right, at the lowest score
    assert best_threshold([1, 1, 1], [0.2, 0.5, 0.3]) == (0.2, 1.0)
    # all different: accepting nothing is right, just above the highest score
    threshold, accuracy = best_threshold([0, 0], [0.2, 0.5])
    assert accuracy == 1.0
    assert 0.5 < threshold < 0.5 + 1e-12


def test_accuracy_at_hand_computed() -> None:
    # t=0.5 accepts 0.9 P, 0.8 P, 0.7 N, 0.6 P; rejects 0.4 N, 0.35 P, 0.3 N, 0.1 N -> 6/8
    assert accuracy_at(A_TARGETS, A_SCORES, 0.5) == 0.75
    assert accuracy_at(A_TARGETS, A_SCORES, 0.6) == 0.75  # 0.6 itself is accepted
    assert accuracy_at(A_TARGETS, A_SCORES, np.inf) == 0.5


# k-fold data: 9 same pairs scored 0.6 .. 0.94 and 9 different pairs 0.1 .. 0.48, separable
# at 0.5, plus two designed errors: a same pair scored 0.05 and a different pair scored 0.95.
# On any training folds the gap between 0.48 and 0.6 is the only best cut (every other cut
# adds errors), so a test fold loses exactly its error pairs.
SAME = [0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.92, 0.94]
DIFFERENT = [0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.48]
#: np.random.default_rng([0, 12]).permutation(20): folds are its consecutive pairs.
PERMUTATION = [9, 14, 2, 17, 7, 16, 11, 1, 19, 12, 13, 5, 8, 4, 15, 6, 3, 18, 0, 10]


def kfold_data(bad_same: int, bad_different: int) -> tuple[np.ndarray, np.ndarray]:
    """20 pairs with the two designed errors at the given indices."""
    targets = np.zeros(20, dtype=bool)
    scores = np.zeros(20)
    targets[bad_same], scores[bad_same] = True, 0.05
    scores[bad_different] = 0.95
    rest = [i for i in range(20) if i not in (bad_same, bad_different)]
    targets[rest[:9]], scores[rest[:9]] = True, SAME
    scores[rest[9:]] = DIFFERENT
    return targets, scores


def test_kfold_shuffle_is_the_documented_seeded_permutation() -> None:
    assert np.random.default_rng([0, 12]).permutation(20).tolist() == PERMUTATION


def test_kfold_accuracy_errors_in_one_fold() -> None:
    # indices 2 and 17 form fold 1: fold accuracies 0, 1 x 9
    # mean 9/10 = 0.9; std sqrt((0.9^2 + 9 * 0.1^2) / 10) = sqrt(0.09) = 0.3
    targets, scores = kfold_data(2, 17)
    mean, std = kfold_accuracy(targets, scores, folds=10, seed=0)
    assert mean == pytest.approx(0.9)
    assert std == pytest.approx(0.3)


def test_kfold_accuracy_errors_in_two_folds() -> None:
    # index 9 is in fold 0, index 2 in fold 1: fold accuracies 0.5, 0.5, 1 x 8
    # mean 0.9; std sqrt((2 * 0.4^2 + 8 * 0.1^2) / 10) = sqrt(0.04) = 0.2
    targets, scores = kfold_data(9, 2)
    mean, std = kfold_accuracy(targets, scores, folds=10, seed=0)
    assert mean == pytest.approx(0.9)
    assert std == pytest.approx(0.2)


def test_kfold_accuracy_leave_one_out_does_not_depend_on_the_shuffle() -> None:
    # 20 folds of one pair: the two error pairs score 0, the rest 1 -> 0.9, sqrt(0.9 * 0.1)
    targets, scores = kfold_data(0, 1)
    for seed in (0, 1):
        mean, std = kfold_accuracy(targets, scores, folds=20, seed=seed)
        assert mean == pytest.approx(0.9)
        assert std == pytest.approx(0.3)


def test_kfold_accuracy_never_lets_a_fold_choose_its_own_threshold() -> None:
    # 0.9 P, 0.7 N, 0.6 P, 0.1 N, one pair per fold; threshold from the other three:
    #   without 0.9: .7N .6P .1N -> accept nothing (2/3, tie with 0.35, higher wins): 0.9 in, right
    #   without 0.6: .9P .7N .1N -> 0.8 (3/3): 0.6 out, wrong
    #   without 0.7: .9P .6P .1N -> 0.35 (3/3): 0.7 in, wrong
    #   without 0.1: .9P .7N .6P -> 0.8 (2/3, tie with accepting all): 0.1 out, right
    # fold accuracies 1, 0, 0, 1: mean 0.5, std 0.5 (one threshold from all four: 0.75)
    mean, std = kfold_accuracy([1, 0, 1, 0], [0.9, 0.7, 0.6, 0.1], folds=4)
    assert (mean, std) == (0.5, 0.5)


def test_kfold_accuracy_needs_a_pair_per_fold() -> None:
    with pytest.raises(ValueError, match="10-fold accuracy needs at least 10 pairs, got 9"):
        kfold_accuracy([1, 0] * 4 + [1], [0.5] * 9, folds=10)
    with pytest.raises(ValueError, match="folds must be an integer of at least 2"):
        kfold_accuracy([1, 0], [0.9, 0.1], folds=1)


@pytest.mark.parametrize(
    "function", [roc_auc, roc_points, eer, tar_at_far, best_threshold, kfold_accuracy]
)
def test_inputs_are_checked(function) -> None:
    with pytest.raises(ValueError, match="differ in length"):
        function([1, 0, 1], [0.5, 0.4])
    with pytest.raises(ValueError, match="empty"):
        function([], [])
    with pytest.raises(ValueError, match="finite"):
        function([1, 0], [0.5, np.nan])


def test_accuracy_at_checks_inputs() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        accuracy_at([1], [0.5, 0.4], 0.5)
    with pytest.raises(ValueError, match="NaN"):
        accuracy_at([1], [0.5], float("nan"))


def test_roc_points_needs_both_kinds() -> None:
    with pytest.raises(ValueError, match="both same and different"):
        roc_points([1, 1], [0.2, 0.3])
