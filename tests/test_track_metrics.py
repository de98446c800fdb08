"""usam.track_metrics on cases computed by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from usam.track_metrics import auroc, direction, frame_iou, score_report


def test_frame_iou_counts_an_empty_gt_as_one_when_the_prediction_is_empty_too():
    empty = np.zeros((3, 4), bool)
    blob = empty.copy()
    blob[0, :2] = True  # 2 pixels
    other = empty.copy()
    other[0, 1:4] = True  # 3 pixels, 1 shared
    assert frame_iou(empty, empty) == 1.0  # object correctly gone
    assert frame_iou(blob, empty) == 0.0  # lost object painted somewhere
    assert frame_iou(empty, blob) == 0.0  # object missed
    assert frame_iou(blob, other) == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="differ"):
        frame_iou(blob, np.zeros((4, 3), bool))


def test_auroc_is_the_share_of_failure_non_failure_pairs_ranked_right():
    # failures (positives) score 0.8 and 0.3, the others 0.1 and 0.5:
    # pairs 0.8>0.1, 0.8>0.5, 0.3>0.1 right, 0.3<0.5 wrong -> 3/4
    assert auroc([False, True, False, True], [0.1, 0.8, 0.5, 0.3]) == pytest.approx(0.75)
    # a tie between a failure and a non-failure counts one half: (1 + 0.5) / 2
    assert auroc([True, False, False], [0.5, 0.5, 0.2]) == pytest.approx(0.75)
    assert auroc([True, True], [0.1, 0.2]) != auroc([True, True], [0.1, 0.2])  # NaN
    assert auroc([False, True], [0.9, 0.1]) == 0.0


def test_score_report_numbers_match_the_hand_computation():
    iou = np.array([0.9, 0.2, 0.7, 0.4])
    # predicted IoU: low = uncertain. Oriented ranking: frame 1, 2, 3, 0 (values 0.2..0.9)
    predicted = np.array([0.9, 0.2, 0.5, 0.7])
    # entropy: high = uncertain, ranks frame 3 first then 1, 0, 2
    ent = np.array([0.3, 0.6, 0.1, 0.9])
    rep = score_report(iou, {"predicted_iou": predicted, "entropy": ent}, r_points=3)
    assert rep["r"] == [0.0, 0.25, 0.5]
    assert (rep["frames"], rep["failures"]) == (4, 2)
    assert rep["mean_iou"] == pytest.approx(0.55)
    # gains 1 - iou = [0.1, 0.8, 0.3, 0.6]
    # predicted_iou: frames 1, 2 -> 0.55, 0.75, 0.825; oracle: frames 1, 3 -> 0.55, 0.75, 0.9
    assert rep["curves"]["predicted_iou"] == pytest.approx([0.55, 0.75, 0.825])
    assert rep["curves"]["oracle"] == pytest.approx([0.55, 0.75, 0.9])
    # areas: (0.2/2 + (0.2+0.275)/2) * 0.25 = 0.084375 vs (0.2/2 + (0.2+0.35)/2) * 0.25 = 0.09375
    assert rep["scores"]["predicted_iou"]["relative_auc"] == pytest.approx(0.9)
    # entropy: frames 3, 1 first -> 0.55, 0.7, 0.9; the oracle reaches 0.75
    # at r=0.25 (a gain of 0.15 vs 0.2): (0.15/2 + (0.15+0.35)/2) * 0.25 = 0.08125 -> 0.8667
    assert rep["scores"]["entropy"]["relative_auc"] == pytest.approx(0.08125 / 0.09375)
    # failure AUROC: failures are frames 1, 3
    # predicted (oriented -p): failures -0.2, -0.7 vs -0.9, -0.5 -> 3 of 4 pairs
    assert rep["scores"]["predicted_iou"]["failure_auroc"] == pytest.approx(0.75)
    # entropy: failures 0.6, 0.9 vs 0.3, 0.1 -> all 4 pairs
    assert rep["scores"]["entropy"]["failure_auroc"] == pytest.approx(1.0)
    expected = np.corrcoef(predicted, iou)[0, 1]
    assert rep["scores"]["predicted_iou"]["pearson"] == pytest.approx(expected)
    assert rep["scores"]["entropy"]["direction"] == "high"


def test_rows_with_a_missing_score_are_left_out_of_every_number():
    iou = np.array([0.9, 0.2, 0.7, 0.4, 0.0])
    rep = score_report(
        iou,
        {
            "predicted_iou": np.array([0.9, 0.2, 0.5, 0.7, 0.1]),
            "image/iou_tiny": np.array([0.8, 0.1, 0.6, 0.3, math.nan]),
        },
        r_points=3,
    )
    assert (rep["frames"], rep["frames_left_out"]) == (4, 1)
    assert rep["scores"]["predicted_iou"]["relative_auc"] == pytest.approx(0.9)
    # iou_tiny ranks frames 1, 3, 2, 0: the oracle's order
    assert rep["scores"]["image/iou_tiny"]["relative_auc"] == pytest.approx(1.0)


def test_directions_of_estimators_follow_their_target_even_with_a_set_prefix():
    assert direction("track/iou_large") == "low"
    assert direction("image/task_gap") == "high"
    assert direction("object_score") == "low"
    with pytest.raises(ValueError, match="unknown score"):
        direction("h_all")


# -- from the mutation run (issue 16) --
def test_frame_iou_reads_label_masks_as_bool_whatever_the_object_id():
    """A uint8 mask of object id 2 is True where it is non-zero; a bitwise `2 & True` is 0."""
    ids = np.array([[2, 0, 2, 0]], np.uint8)  # object 2 on pixels 0 and 2
    gt = np.array([[True, True, False, False]])  # pixels 0 and 1: 1 shared of 3
    assert frame_iou(ids, gt) == pytest.approx(1 / 3)
    assert frame_iou(gt, ids) == pytest.approx(1 / 3)


def test_auroc_takes_0_1_labels_and_numbers_given_as_text():
    """0/1 ints are labels, not indices; "10" > "9" by value, not as text."""
    # same case as above with 0/1 labels: failures 0.8, 0.3 vs 0.1, 0.5 -> 3/4
    assert auroc([0, 1, 0, 1], [0.1, 0.8, 0.5, 0.3]) == pytest.approx(0.75)
    # the failure scores 10 against 9 and 2: ranked right in both pairs
    assert auroc([False, True, False], ["9", "10", "2"]) == 1.0


def test_auroc_size_mismatch_message():
    with pytest.raises(ValueError) as e:
        auroc([True, False, True], [0.1, 0.2])
    assert str(e.value) == "3 labels for 2 scores"


def test_auroc_without_positives_or_negatives_is_nan_without_dividing_by_zero():
    """One class only -> NaN at once (no 0/0 RuntimeWarning from the U statistic)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(auroc([False, False, False], [0.1, 0.7, 0.3]))
        assert math.isnan(auroc([True, True], [0.4, 0.2]))


def test_direction_uses_only_the_last_part_of_a_nested_name():
    assert direction("video/track/iou_large") == "low"
    assert direction("a/b/h_task") == "high"


def test_score_report_default_grid_is_51_points_up_to_one_half():
    iou = np.array([0.9, 0.2, 0.7, 0.4])
    rep = score_report(iou, {"predicted_iou": np.array([0.9, 0.2, 0.5, 0.7])})
    assert len(rep["r"]) == 51
    assert rep["r"][1] == pytest.approx(0.01) and rep["r"][-1] == 0.5


def test_score_report_missing_values_given_as_none_are_left_out():
    """None in the IoU or in a score is NaN (left out), not an object array."""
    iou = [0.9, 0.2, None, 0.7, 0.4]
    rep = score_report(iou, {"predicted_iou": [0.9, 0.2, 0.5, 0.5, 0.7]}, r_points=3)
    assert (rep["frames"], rep["frames_left_out"]) == (4, 1)
    assert rep["mean_iou"] == pytest.approx(0.55)
    iou = [0.9, 0.2, 0.3, 0.7, 0.4]
    rep = score_report(iou, {"predicted_iou": [0.9, 0.2, None, 0.5, 0.7]}, r_points=3)
    assert (rep["frames"], rep["frames_left_out"]) == (4, 1)
    assert rep["scores"]["predicted_iou"]["relative_auc"] == pytest.approx(0.9)


def test_score_report_a_nan_in_any_column_or_in_the_iou_drops_the_frame():
    """NaN in the first of two score columns (frame 0) and in the IoU (frame 4) both count."""
    iou = np.array([0.3, 0.9, 0.2, 0.7, math.nan, 0.4])
    rep = score_report(
        iou,
        {
            "predicted_iou": np.array([math.nan, 0.9, 0.2, 0.5, 0.6, 0.7]),
            "entropy": np.array([0.5, 0.3, 0.6, 0.1, 0.2, 0.9]),
        },
        r_points=3,
    )
    assert (rep["frames"], rep["frames_left_out"], rep["failures"]) == (4, 2, 2)
    assert rep["mean_iou"] == pytest.approx(0.55)


def test_score_report_an_iou_of_exactly_the_threshold_is_not_a_failure():
    iou = np.array([0.5, 0.2, 0.9, 0.49])
    rep = score_report(iou, {"entropy": np.array([0.4, 0.8, 0.1, 0.3])}, r_points=3)
    assert rep["failure_iou"] == 0.5
    assert rep["failures"] == 2  # 0.2 and 0.49, not 0.5
    # failures 0.8, 0.3 vs 0.4, 0.1: 3 of 4 pairs right (0.3 < 0.4)
    assert rep["scores"]["entropy"]["failure_auroc"] == pytest.approx(0.75)


def test_score_report_with_no_usable_frame_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = score_report([math.nan, 0.4], {"entropy": [0.2, math.nan]})
    assert (rep["frames"], rep["frames_left_out"], rep["failures"]) == (0, 2, 0)
    assert math.isnan(rep["mean_iou"])
    assert rep["scores"] == {} and "relative_auc" not in rep


def test_score_report_lists_the_relative_auc_of_every_curve():
    """Top-level relative_auc: the oracle, random and each score, same as per score."""
    iou = np.array([0.9, 0.2, 0.7, 0.4])
    rep = score_report(iou, {"predicted_iou": np.array([0.9, 0.2, 0.5, 0.7])}, r_points=3)
    assert sorted(rep["relative_auc"]) == ["oracle", "predicted_iou", "random"]
    assert rep["relative_auc"]["oracle"] == pytest.approx(1.0)
    assert rep["relative_auc"]["predicted_iou"] == pytest.approx(0.9)
    # random: mean gain 0.45 per unit r -> 0.45 * 0.5**2 / 2 = 0.05625 of the oracle's 0.09375
    assert rep["relative_auc"]["random"] == pytest.approx(0.6)
