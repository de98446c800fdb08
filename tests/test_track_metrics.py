"""usam.track_metrics on cases computed by hand."""

from __future__ import annotations

import math

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
