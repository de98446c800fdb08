"""Quality of per-frame scores along tracks (SPEC "Video"): pure numpy, no I/O.

Per frame and object the true IoU of the propagated mask (`frame_iou`: an empty GT with an
empty prediction is IoU 1, with a non-empty one 0). A per-frame score is judged by
- Pearson r with the true IoU (`usam.evaluation.pearson`);
- failure detection: AUROC of the score (oriented: high = uncertain) for frames with
  IoU < 0.5 against the others (`auroc`: ties count one half, the Mann-Whitney U statistic);
- the "frames to check" curve: rank frames from most to least uncertain, replace the top
  fraction r by the GT (IoU 1), mean IoU over r in [0, r_max]; relative AUC against the
  oracle as in stage 4 (`usam.evaluation.compare` with refined = 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from usam.evaluation import ESTIMATOR_DIRECTION, HIGH, LOW, compare, orient, pearson, r_grid

FAILURE_IOU = 0.5
# SAM 2's own per-frame scores and the entropies of the kept mask
SCORE_DIRECTION: dict[str, str] = {
    "predicted_iou": LOW,
    "object_score": LOW,
    "entropy": HIGH,
    "h_task": HIGH,
}


def frame_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two bool masks; both empty = 1 (the object is correctly absent), SPEC "Video"."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and GT {gt.shape} differ in size")
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


def auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties count 1/2.

    NaN when there is no positive or no negative.
    """
    positive = np.asarray(positive, dtype=bool).ravel()
    score = np.asarray(score, dtype=np.float64).ravel()
    if positive.shape != score.shape:
        raise ValueError(f"{len(positive)} labels for {len(score)} scores")
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # midranks: tied scores share the mean of their ranks
    order = np.argsort(score, kind="stable")
    s = score[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    ranks = np.empty(len(s))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def direction(name: str) -> str:
    """high/low = uncertain for a score column; estimators may be named `<set>/<target>`."""
    base = name.rsplit("/", 1)[-1]
    if base in SCORE_DIRECTION:
        return SCORE_DIRECTION[base]
    if base in ESTIMATOR_DIRECTION:
        return ESTIMATOR_DIRECTION[base]
    raise ValueError(f"unknown score {name!r}: not one of {sorted(SCORE_DIRECTION)} or a target")


def score_report(
    iou: np.ndarray,
    scores: Mapping[str, np.ndarray],
    *,
    failure_iou: float = FAILURE_IOU,
    r_max: float = 0.5,
    r_points: int = 51,
) -> dict[str, Any]:
    """Pearson, failure AUROC and frames-to-check relative AUC of every score.

    Rows where any score is NaN (e.g. a frame whose mask was the user's) are left out of
    every number, so all scores are compared on the same frames; their count is reported.
    """
    iou = np.asarray(iou, dtype=np.float64)
    cols = {k: np.asarray(v, dtype=np.float64) for k, v in scores.items()}
    ok = np.isfinite(iou)
    for v in cols.values():
        ok &= np.isfinite(v)
    iou_ok = iou[ok]
    failed = iou_ok < failure_iou
    report: dict[str, Any] = {
        "frames": int(ok.sum()),
        "frames_left_out": int((~ok).sum()),
        "failures": int(failed.sum()),
        "failure_iou": failure_iou,
        "mean_iou": float(iou_ok.mean()) if ok.any() else float("nan"),
        "scores": {},
    }
    if not ok.any():
        return report
    r = r_grid(r_max, r_points)
    uncertain = {k: orient(v[ok], direction(k)) for k, v in cols.items()}
    curves, aucs = compare(iou_ok, 1.0, uncertain, r)
    report["r"] = r.tolist()
    report["curves"] = {k: c.tolist() for k, c in curves.items()}
    report["relative_auc"] = {k: aucs[k] for k in curves}
    for k, v in cols.items():
        report["scores"][k] = {
            "direction": direction(k),
            "pearson": pearson(v[ok], iou_ok),
            "failure_auroc": auroc(failed, uncertain[k]),
            "relative_auc": aucs[k],
        }
    return report
