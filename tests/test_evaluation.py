"""Stage 4 math (usam.evaluation): curves, relative AUC and correlations on hand-made arrays."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from usam.evaluation import (
    ESTIMATOR_DIRECTION,
    HIGH,
    LOW,
    MEASURES,
    USE_CASES,
    area,
    compare,
    correction_curve,
    oracle_curve,
    orient,
    pearson,
    pearson_matrix,
    r_grid,
    random_curve,
    relative_auc,
)
from usam.schema import TARGETS

# 4 samples: gains 0.1, 0.6, 0, 0; mean cheap 0.5
CHEAP = np.array([0.5, 0.2, 0.9, 0.4])
REFINED = np.array([0.6, 0.8, 0.9, 0.4])
R3 = np.array([0.0, 0.25, 0.5])  # k = 0, 1, 2 samples refined


def test_hand_example_curves_and_auc():
    # oracle refines sample 1 (gain 0.6) then sample 0 (0.1): 0.5, 0.5 + 0.6/4, 0.5 + 0.7/4
    oracle = oracle_curve(CHEAP, REFINED, R3)
    np.testing.assert_allclose(oracle, [0.5, 0.65, 0.675])
    # a score that puts sample 0 first, then 1
    score = np.array([4.0, 3.0, 2.0, 1.0])
    curve = correction_curve(CHEAP, REFINED, score, R3)
    np.testing.assert_allclose(curve, [0.5, 0.525, 0.675])
    # areas by hand (trapezoids): oracle 0.25 * 0.15 / 2 + 0.25 * (0.15 + 0.175) / 2 = 0.059375
    assert area(oracle, R3) == pytest.approx(0.059375)
    assert area(curve, R3) == pytest.approx(0.028125)
    assert relative_auc(curve, oracle, R3) == pytest.approx(9 / 19)
    # random: 0.5 + r * mean gain (0.175); area 0.175 * 0.5^2 / 2 = 0.021875 -> 7/19
    rand = random_curve(CHEAP, REFINED, R3)
    np.testing.assert_allclose(rand, [0.5, 0.54375, 0.5875])
    assert relative_auc(rand, oracle, R3) == pytest.approx(7 / 19)


def test_fractional_refinement_between_grid_points():
    # 3 samples, r = 1/6 -> k = 0.5: half of the first gain counts
    cheap, refined = np.array([0.0, 0.0, 0.0]), np.array([0.9, 0.3, 0.0])
    r = np.array([0.0, 1 / 6, 1 / 3, 0.5])
    np.testing.assert_allclose(oracle_curve(cheap, refined, r), [0.0, 0.15, 0.3, 0.35])


def test_oracle_is_one_and_the_best_and_inverted_is_the_worst():
    rng = np.random.default_rng(1)
    n = 6
    cheap = rng.uniform(0.2, 0.8, n)
    refined = np.clip(cheap + rng.normal(0, 0.2, n), 0, 1)  # mixed-sign gains
    gain = refined - cheap
    r = r_grid()
    oracle = oracle_curve(cheap, refined, r)
    assert relative_auc(oracle, oracle, r) == 1.0  # exactly
    # every ranking of the 6 samples (distinct scores): none beats the oracle, none is below the inverse
    aucs = [
        relative_auc(correction_curve(cheap, refined, -np.array(p, float), r), oracle, r)
        for p in itertools.permutations(range(n))
    ]
    inverted = relative_auc(correction_curve(cheap, refined, -gain, r), oracle, r)
    assert max(aucs) == pytest.approx(1.0)
    assert min(aucs) == pytest.approx(inverted)
    assert inverted < 0  # worst samples first, and some gains are negative


def test_inverted_ranking_with_only_gains_is_minimal_but_not_negative():
    cheap = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    refined = np.ones(5)  # segmentation: gain = 1 - iou, all > 0
    r = r_grid()
    oracle = oracle_curve(cheap, refined, r)
    inverted = relative_auc(
        correction_curve(cheap, refined, cheap, r), oracle, r
    )  # most accurate first
    rand = relative_auc(random_curve(cheap, refined, r), oracle, r)
    assert 0 < inverted < rand < 1


def test_random_ranking_matches_the_analytic_line():
    rng = np.random.default_rng(2)
    n = 4000
    cheap = rng.uniform(0, 1, n)
    refined = np.clip(cheap + rng.exponential(0.1, n) * (rng.uniform(size=n) < 0.3), 0, 1)
    r = r_grid()
    oracle = oracle_curve(cheap, refined, r)
    expected = relative_auc(random_curve(cheap, refined, r), oracle, r)
    # analytic: area(random) = mean gain * r_max^2 / 2
    assert area(random_curve(cheap, refined, r), r) == pytest.approx(
        (refined - cheap).mean() * 0.125
    )
    # one random score lands near it; the mean of seeded permutations lands very near
    one = relative_auc(correction_curve(cheap, refined, rng.uniform(size=n), r), oracle, r)
    assert one == pytest.approx(expected, abs=0.05)
    mean_curve = np.mean(
        [correction_curve(cheap, refined, rng.permutation(n), r) for _ in range(50)], axis=0
    )
    np.testing.assert_allclose(mean_curve, random_curve(cheap, refined, r), atol=2e-3)
    # and a score unrelated to the gain in a structured way (the sample index) too
    assert relative_auc(
        correction_curve(cheap, refined, np.arange(n), r), oracle, r
    ) == pytest.approx(expected, abs=0.05)


def test_ties_share_their_mean_gain():
    rng = np.random.default_rng(3)
    cheap, refined = rng.uniform(0, 0.5, 50), rng.uniform(0.5, 1, 50)
    r = r_grid()
    # a constant score is exactly the random line, whatever the row order
    np.testing.assert_allclose(
        correction_curve(cheap, refined, np.zeros(50), r), random_curve(cheap, refined, r)
    )
    # two tie groups: {0..24} (score 1) refined before {25..49}; reordering rows changes nothing
    score = np.r_[np.ones(25), np.zeros(25)]
    perm = rng.permutation(50)
    np.testing.assert_allclose(
        correction_curve(cheap, refined, score, r),
        correction_curve(cheap[perm], refined[perm], score[perm], r),
    )


def test_monotone_when_refining_never_hurts_and_oracle_concave():
    rng = np.random.default_rng(4)
    n = 37  # r * n hits no integer for most grid points: the interpolation must keep the shape
    cheap = rng.uniform(0, 1, n)
    refined = cheap + rng.uniform(0, 1 - cheap)  # refined >= cheap
    r = r_grid()
    for score in (rng.normal(size=n), cheap, -cheap, refined - cheap, np.zeros(n)):
        assert np.all(np.diff(correction_curve(cheap, refined, score, r)) >= -1e-12)
    oracle = oracle_curve(cheap, refined, r)
    assert np.all(np.diff(oracle, 2) <= 1e-12)
    # with some negative gains the oracle still rises first, and ranks never pass it
    refined2 = cheap + rng.normal(0, 0.2, n)
    oracle2 = oracle_curve(cheap, refined2, r)
    for _ in range(20):
        assert np.all(correction_curve(cheap, refined2, rng.normal(size=n), r) <= oracle2 + 1e-12)


def test_segmentation_refined_scalar_and_orientation():
    iou = np.array([0.9, 0.3, 0.6])
    r = np.array([0.0, 1 / 3])
    # low predicted IoU = uncertain: a perfect IoU estimator is the oracle
    curve = correction_curve(iou, 1.0, orient(iou, LOW), r)
    np.testing.assert_allclose(curve, [0.6, 0.6 + 0.7 / 3])
    np.testing.assert_allclose(curve, oracle_curve(iou, 1.0, r))
    np.testing.assert_array_equal(orient(iou, HIGH), iou)
    with pytest.raises(ValueError):
        orient(iou, "sideways")


def test_compare_returns_oracle_random_and_scores():
    curves, aucs = compare(
        CHEAP, REFINED, {"perfect": REFINED - CHEAP, "inverse": CHEAP - REFINED}, R3
    )
    assert list(curves) == ["oracle", "random", "perfect", "inverse"]
    assert aucs["oracle"] == 1.0 and aucs["perfect"] == pytest.approx(1.0)
    assert aucs["random"] == pytest.approx(7 / 19)
    # inverse: zero gains first (tied, shared), then 0.1, 0.6 -> stays at 0.5 until k = 2
    np.testing.assert_allclose(curves["inverse"], [0.5, 0.5, 0.5])
    assert aucs["inverse"] == 0.0


def test_no_gain_gives_undefined_auc():
    x = np.array([0.5, 0.7])
    r = r_grid()
    assert np.isnan(relative_auc(oracle_curve(x, x, r), oracle_curve(x, x, r), r))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="finite"):
        correction_curve([0.1, np.nan], [0.2, 0.3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        correction_curve([0.1, 0.2], [0.2, 0.3], [1, np.nan])
    with pytest.raises(ValueError, match="scores"):
        correction_curve([0.1, 0.2], [0.2, 0.3], [1, 2, 3])
    with pytest.raises(ValueError, match="no samples"):
        oracle_curve([], [])
    with pytest.raises(ValueError):
        r_grid(0.5, 1)


def test_r_grid():
    r = r_grid()
    assert len(r) == 51 and r[0] == 0 and r[-1] == 0.5
    np.testing.assert_allclose(np.diff(r), 0.01)


def test_pearson_known_values_and_nan_handling():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    # by hand: x - mean = (-1.5, -.5, .5, 1.5), y = (1, 0, 0, 1) - .5 -> sum xy = 0 -> r = 0
    assert pearson(x, np.array([1.0, 0.0, 0.0, 1.0])) == pytest.approx(0.0)
    # NaN rows are dropped pairwise
    assert pearson(np.r_[x, np.nan], np.r_[2 * x, 5.0]) == pytest.approx(1.0)
    assert np.isnan(pearson(x, np.ones(4)))  # constant
    assert np.isnan(pearson(x[:2], x[:2]))  # too few samples
    rng = np.random.default_rng(5)
    cols = {"a": rng.normal(size=30), "b": rng.normal(size=30), "c": rng.normal(size=30)}
    m = pearson_matrix(cols)
    np.testing.assert_allclose(m, np.corrcoef(np.stack(list(cols.values()))), atol=1e-12)
    cols["c"][3] = np.nan
    m = pearson_matrix(cols)
    assert m[0, 2] == pytest.approx(
        np.corrcoef(np.delete(cols["a"], 3), np.delete(cols["c"], 3))[0, 1]
    )
    np.testing.assert_array_equal(m, m.T)


def test_use_case_table():
    assert set(USE_CASES) == {
        "model_selection",
        "prompt_refinement",
        "task_supervision",
        "segmentation",
    }
    assert set(ESTIMATOR_DIRECTION) == set(TARGETS)  # every trainable target has a direction
    assert ESTIMATOR_DIRECTION["model_gap"] == HIGH and ESTIMATOR_DIRECTION["iou_tiny"] == LOW
    assert MEASURES["sam_score"] == LOW and MEASURES["entropy"] == HIGH
    cheap, refined, sam, preds = USE_CASES["prompt_refinement"].columns("small")
    assert (cheap, refined, sam, preds) == (
        "iou",
        "iou_dense_prompt",
        "sam_score",
        ("prompt_gap", "iou_small"),
    )
    assert USE_CASES["segmentation"].columns("large")[1] is None
    assert USE_CASES["model_selection"].rows_model == "tiny"
    assert USE_CASES["task_supervision"].columns("large")[:3] == (
        "unsupervised_iou",
        "iou",
        "unsupervised_sam_score",
    )
    for case in USE_CASES.values():
        assert all(p.format(model="large") in ESTIMATOR_DIRECTION for p in case.estimators)


# -- from the mutation run (docs/testing.md): each test kills mutants that survived ----------
def test_default_r_grid_is_used_when_r_is_not_given():
    r = r_grid()
    assert len(r) == 51 and r[0] == 0.0 and r[-1] == 0.5
    u = np.array([0.2, 0.9, 0.1, 0.0])  # sample 1 (gain 0.6) first, then sample 0 (gain 0.1)
    np.testing.assert_allclose(
        correction_curve(CHEAP, REFINED, u), correction_curve(CHEAP, REFINED, u, r)
    )
    np.testing.assert_allclose(random_curve(CHEAP, REFINED), 0.5 + r * 0.175)
    curves, aucs = compare(CHEAP, REFINED, {"u": u})
    assert len(curves["u"]) == 51 and curves["u"][-1] == pytest.approx(0.675)
    assert aucs["oracle"] == 1.0


def test_r_grid_bounds_and_message():
    np.testing.assert_array_equal(r_grid(1.0, 2), [0.0, 1.0])  # r_max = 1 and 2 points allowed
    for bad in ((0.0, 5), (1.5, 5), (0.5, 1)):
        with pytest.raises(ValueError) as err:
            r_grid(*bad)
        assert str(err.value) == (
            f"need 0 < r_max <= 1 and points >= 2, got r_max={bad[0]}, points={bad[1]}"
        )


def test_random_curve_clips_r_to_0_1():
    r = np.array([-0.5, 0.0, 1.0, 1.5])
    np.testing.assert_allclose(random_curve(CHEAP, REFINED, r), [0.5, 0.5, 0.675, 0.675])


def test_integer_inputs_are_computed_as_floats():
    """0/1 hit-or-miss IoUs and small integer scores as uint8: a loss must not wrap to 255."""
    cheap = np.array([1, 0, 1], np.uint8)
    refined = np.array([0, 1, 1], np.uint8)  # gains -1, +1, 0
    u = np.array([1, 2, 0], np.uint8)  # sample 1 most uncertain, then sample 0
    curve = correction_curve(cheap, refined, u, np.array([0.0, 1 / 3, 2 / 3]))
    np.testing.assert_allclose(curve, [2 / 3, 1.0, 2 / 3])
    np.testing.assert_array_equal(orient(np.array([1, 2], np.uint8), LOW), [-1.0, -2.0])
    assert area(np.array([3, 1], np.uint8), np.array([0.0, 1.0])) == -1.0


def test_use_case_columns_fill_in_the_model_everywhere():
    from usam.evaluation import UseCase

    case = UseCase(
        cheap="iou_{model}",
        refined="dense_{model}",
        sam_score="score_{model}",
        estimators=("a_{model}",),
    )
    assert case.columns("small") == ("iou_small", "dense_small", "score_small", ("a_small",))
    assert USE_CASES["prompt_refinement"].columns("large") == (
        "iou",
        "iou_dense_prompt",
        "sam_score",
        ("prompt_gap", "iou_large"),
    )


def test_error_messages_name_the_fix():
    cases = [
        (lambda: orient([1.0], "up"), "direction must be 'high' or 'low', got 'up'"),
        (lambda: correction_curve([], [], []), "no samples"),
        (
            lambda: correction_curve([0.5, np.nan], [1.0, 1.0], [0.0, 1.0]),
            "cheap and refined IoUs must be finite (drop NaN rows first)",
        ),
        (
            lambda: correction_curve([0.5, 0.2], [1.0, 1.0], [0.0, np.nan]),
            "scores must be finite (drop NaN rows first)",
        ),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == message


def test_pearson_edges():
    import warnings

    assert pearson([0.0, 0.1, 0.2], [0.0, 0.1, 0.3]) == pytest.approx(27 / np.sqrt(756), rel=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a constant column gives NaN without a 0/0
        assert np.isnan(pearson([1.0, 1.0, 1.0], [0.0, 0.5, 2.0]))
    m = pearson_matrix([np.array([0.0, 1.0, 3.0]), np.array([3.0, 1.0, 0.0])])  # a list, no names
    assert m[0, 1] == m[1, 0] and m[0, 1] == pytest.approx(-13 / 14)


def test_ties_below_the_top_share_their_mean_gain():
    # most uncertain: sample 2 (gain 0); then samples 0 and 1 tie (gains 0.1, 0.6: 0.35 each)
    u = np.array([0.5, 0.5, 0.9, 0.1])
    np.testing.assert_allclose(
        correction_curve(CHEAP, REFINED, u, R3), [0.5, 0.5, 0.5 + 0.35 / 4], rtol=1e-12
    )


def test_correction_curve_holds_its_end_values_outside_0_1():
    r = np.array([-0.5, 0.0, 1.0, 1.5])
    np.testing.assert_allclose(
        correction_curve(CHEAP, REFINED, -CHEAP, r), [0.5, 0.5, 0.675, 0.675]
    )


# float32 inputs (the container's columns are float32) are computed in float64: a float32
# sum, difference or product rounds at ~1e-8, so each check compares exactly with the result
# on the same values cast first; the data are picked so that float32 arithmetic differs
F32 = np.array([0.1, 0.7, 0.35, 0.93, 0.2], np.float32)
F32_OTHER = np.array([0.3, 0.11, 0.62, 0.47, 0.9], np.float32)


def test_float32_pearson_is_computed_in_float64():
    want = pearson(F32.astype(np.float64), F32_OTHER.astype(np.float64))
    assert pearson(F32, F32_OTHER) == want
    assert pearson(F32, F32_OTHER.astype(np.float64)) == want
    assert pearson(F32.astype(np.float64), F32_OTHER) == want


def test_float32_curves_and_areas_are_computed_in_float64():
    cheap64, refined64 = F32.astype(np.float64), F32_OTHER.astype(np.float64)
    r = np.array([0.0, 0.1, 0.45, 1.0], np.float32)  # 0.45 - 0.1 rounds in float32
    r64 = r.astype(np.float64)
    want = correction_curve(cheap64, refined64, F32_OTHER - F32, r64)
    np.testing.assert_array_equal(correction_curve(F32, refined64, F32_OTHER - F32, r64), want)
    np.testing.assert_array_equal(correction_curve(cheap64, refined64, F32_OTHER - F32, r), want)
    curve = np.array([0.1, 0.37, 0.52, 0.61], np.float32)
    assert area(curve, r) == area(curve.astype(np.float64), r64)
    assert area(curve, r64) == area(curve.astype(np.float64), r64)
