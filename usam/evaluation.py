"""Stage 4 math: correction curves, relative AUC, Pearson correlations (numpy only, no I/O).

A use case gives every sample a cheap IoU and a refined one (what a more expensive step
would reach). A UQ score ranks samples from most to least uncertain; the correction curve
is the mean IoU when the top fraction r of that ranking is refined. The oracle ranks by the
true gain (refined - cheap). Relative AUC = the area between a curve and its r=0 level,
divided by the same area for the oracle (so the oracle scores 1 exactly).

Conventions, chosen so the numbers do not depend on row order or on the grid:
- Fractional refinement: at r*n between two integers the boundary sample counts partly
  (the curve is linear between k and k+1 refined samples). Curves are then piecewise
  linear in r; the oracle's is concave, and every curve is non-decreasing when no gain is
  negative.
- Ties: samples with equal scores share their mean gain, i.e. the curve is the expectation
  over a uniformly random order within ties. A constant score gives exactly the random line.
- Random order: its expected curve is the straight line mean(cheap) + r * mean(gain)
  (computed analytically, not by sampling permutations).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from usam.schema import DIRECTION, HIGH, LOW

R_MAX = 0.5
R_POINTS = 51


def r_grid(r_max: float = R_MAX, points: int = R_POINTS) -> np.ndarray:
    """The fractions r at which curves are evaluated: `points` values evenly in [0, r_max]."""
    if not 0 < r_max <= 1 or points < 2:
        raise ValueError(f"need 0 < r_max <= 1 and points >= 2, got r_max={r_max}, points={points}")
    return np.linspace(0.0, r_max, int(points))


# ---- which scores rank which use case ---------------------------------------------------------
# A score is "uncertain" when it is high ("high") or low ("low"); orient() makes high = uncertain.

# UQ measures read from the container's stage-1 columns (row of the model being evaluated).
# `sam_score` stands for the SAM score of the cheap prediction, see UseCase.sam_score.
MEASURES: dict[str, str] = {
    "sam_score": LOW,
    "entropy": HIGH,  # H_std
    "h_all": HIGH,  # H_Y
    "h_theta": HIGH,  # NaN with one model
    "h_task": HIGH,  # H_A
    "h_prompt": HIGH,  # H_XP
    "h_augmentation": HIGH,  # NaN without augmentations
}

# USAM estimator targets and their direction (usam.schema.TARGET_TABLE)
ESTIMATOR_DIRECTION = DIRECTION


@dataclass(frozen=True)
class UseCase:
    """Columns of one use case; `{model}` in a name becomes the evaluated model."""

    cheap: str  # column with the IoU before refinement
    refined: str | None  # column with the IoU after refinement; None = 1 (a perfect mask)
    sam_score: str  # column with the SAM score of the cheap prediction's mask
    estimators: tuple[str, ...]  # USAM targets that rank this case (direction: ESTIMATOR_DIRECTION)
    rows_model: str | None = None  # rows of this model only; None = the evaluated model
    label: str = ""
    needs_models: tuple[str, ...] = field(default=())  # models the container must hold

    def columns(self, model: str) -> tuple[str, str | None, str, tuple[str, ...]]:
        """(cheap, refined, sam_score, estimator targets) with `{model}` filled in."""
        return (
            self.cheap.format(model=model),
            None if self.refined is None else self.refined.format(model=model),
            self.sam_score.format(model=model),
            tuple(p.format(model=model) for p in self.estimators),
        )


USE_CASES: dict[str, UseCase] = {
    # cheap = SAM tiny's prediction, refined = SAM large's; ranked on tiny's rows
    "model_selection": UseCase(
        cheap="iou_tiny",
        refined="iou_large",
        sam_score="sam_score",
        estimators=("model_gap", "iou_tiny"),
        rows_model="tiny",
        label="model selection (tiny -> large)",
        needs_models=("tiny", "large"),
    ),
    "prompt_refinement": UseCase(
        cheap="iou",
        refined="iou_dense_prompt",
        sam_score="sam_score",
        estimators=("prompt_gap", "iou_{model}"),
        label="prompt refinement (center point -> dense prompt)",
    ),
    # cheap = the mask SAM's own score picks, refined = the best of the three
    "task_supervision": UseCase(
        cheap="unsupervised_iou",
        refined="iou",
        sam_score="unsupervised_sam_score",
        estimators=("task_gap", "unsupervised_iou"),
        label="task supervision (SAM-score mask -> best mask)",
    ),
    "segmentation": UseCase(
        cheap="iou",
        refined=None,
        sam_score="sam_score",
        estimators=("iou_{model}", "unsupervised_iou"),
        label="segmentation (prediction -> ground truth)",
    ),
}


def orient(values: np.ndarray, direction: str) -> np.ndarray:
    """Scores such that higher = more uncertain."""
    if direction not in (HIGH, LOW):
        raise ValueError(f"direction must be {HIGH!r} or {LOW!r}, got {direction!r}")
    values = np.asarray(values, dtype=np.float64)
    return values if direction == HIGH else -values


# ---- curves -----------------------------------------------------------------------------------
def _pair(cheap: np.ndarray, refined: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cheap = np.asarray(cheap, dtype=np.float64).ravel()
    refined = np.broadcast_to(np.asarray(refined, dtype=np.float64), cheap.shape).ravel()
    if len(cheap) == 0:
        raise ValueError("no samples")
    if not (np.isfinite(cheap).all() and np.isfinite(refined).all()):
        raise ValueError("cheap and refined IoUs must be finite (drop NaN rows first)")
    return cheap, refined


def correction_curve(
    cheap: np.ndarray,
    refined: np.ndarray,
    uncertainty: np.ndarray,
    r: np.ndarray | None = None,
) -> np.ndarray:
    """Mean IoU after refining the fraction r of samples with the highest `uncertainty`.

    `refined` may be a scalar (1.0 for segmentation). Equal scores share their mean gain.
    """
    cheap, refined = _pair(cheap, refined)
    r = r_grid() if r is None else np.asarray(r, dtype=np.float64)
    u = np.asarray(uncertainty, dtype=np.float64).ravel()
    if u.shape != cheap.shape:
        raise ValueError(f"{len(u)} scores for {len(cheap)} samples")
    if not np.isfinite(u).all():
        raise ValueError("scores must be finite (drop NaN rows first)")
    n = len(cheap)
    order = np.argsort(-u)  # any order within ties: a run of equal scores shares its mean gain
    gain, us = (refined - cheap)[order], u[order]
    starts = np.flatnonzero(np.r_[True, us[1:] != us[:-1]])  # first sample of each run of ties
    counts = np.diff(np.r_[starts, n])
    gain = np.repeat(np.add.reduceat(gain, starts) / counts, counts)
    cum = np.r_[0.0, np.cumsum(gain)]  # total gain after refining k = 0..n samples
    # np.interp holds the end values outside [0, n]: r < 0 gains nothing, r > 1 everything
    return cheap.mean() + np.interp(r * n, np.arange(n + 1), cum) / n


def oracle_curve(cheap: np.ndarray, refined: np.ndarray, r: np.ndarray | None = None) -> np.ndarray:
    """The best any ranking can do: refine the samples with the largest true gain first."""
    cheap, refined = _pair(cheap, refined)
    return correction_curve(cheap, refined, refined - cheap, r)


def random_curve(cheap: np.ndarray, refined: np.ndarray, r: np.ndarray | None = None) -> np.ndarray:
    """The expected curve of a uniformly random order: a straight line."""
    cheap, refined = _pair(cheap, refined)
    r = r_grid() if r is None else np.asarray(r, dtype=np.float64)
    return cheap.mean() + np.clip(r, 0.0, 1.0) * (refined - cheap).mean()


def area(curve: np.ndarray, r: np.ndarray) -> float:
    """Trapezoid area between a curve and its value at r=0 (negative if it falls below)."""
    curve, r = np.asarray(curve, dtype=np.float64), np.asarray(r, dtype=np.float64)
    y = curve - curve[0]
    return float(np.sum((y[1:] + y[:-1]) * np.diff(r)) / 2)


def relative_auc(curve: np.ndarray, oracle: np.ndarray, r: np.ndarray) -> float:
    """area(curve) / area(oracle); NaN when the oracle gains nothing (no sample improves)."""
    best = area(oracle, r)
    return area(curve, r) / best if best > 0 else math.nan


# ---- correlations ----------------------------------------------------------------------------
def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r over the samples where both are finite; NaN if < 3 of them or one is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return math.nan
    x, y = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else math.nan


def pearson_matrix(columns: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> np.ndarray:
    """Pairwise Pearson r (pairwise-complete samples); the diagonal is 1 unless a column is constant."""
    cols = list(columns.values()) if isinstance(columns, Mapping) else list(columns)
    k = len(cols)
    out = np.full((k, k), np.nan)
    for i in range(k):
        for j in range(i, k):
            out[i, j] = out[j, i] = pearson(cols[i], cols[j])
    return out


def compare(
    cheap: np.ndarray,
    refined: np.ndarray,
    scores: Mapping[str, np.ndarray],
    r: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Curves and relative AUCs of `oracle`, `random` and each score (oriented: high = uncertain)."""
    r = r_grid() if r is None else r
    curves = {"oracle": oracle_curve(cheap, refined, r), "random": random_curve(cheap, refined, r)}
    for name, u in scores.items():
        curves[name] = correction_curve(cheap, refined, u, r)
    aucs = {name: relative_auc(c, curves["oracle"], r) for name, c in curves.items()}
    return curves, aucs
