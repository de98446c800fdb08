"""Uncertainty and quality measures on SAM outputs (SPEC, Stage 1).

All functions take torch tensors on any device (numpy arrays are accepted through
`torch.as_tensor`), work on arbitrary leading batch dims and return tensors on the
input's device. No Python loops over pixels or batch entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray


def _float(x: ArrayLike) -> Tensor:
    x = torch.as_tensor(x)
    # half precision loses too much in sums over 256x256 maps; float64 stays float64
    return x if x.dtype == torch.float64 else x.float()


def binary_entropy(p: ArrayLike, eps: float = 1e-6) -> Tensor:
    """Per-element h(p) = -p log2 p - (1-p) log2(1-p) in bits, p clipped to [eps, 1-eps]."""
    p = _float(p).clamp(eps, 1 - eps)
    return -p * torch.log2(p) - (1 - p) * torch.log2(1 - p)


def entropy(p: ArrayLike, eps: float = 1e-6) -> Tensor:
    """Foreground-weighted mean binary entropy of maps (..., h, w) -> (...), in bits.

    H = sum(p * h(p)) / sum(p) with p clipped to [eps, 1-eps] first, so an all-zero map
    gives h(eps) (tiny, finite) instead of 0/0.
    """
    p = _float(p).clamp(eps, 1 - eps)
    return (p * binary_entropy(p, eps)).sum((-2, -1)) / p.sum((-2, -1))


def _normalise(w: Tensor) -> Tensor:
    """Weights over the last dim scaled to sum 1; an all-zero row becomes uniform."""
    total = w.sum(-1, keepdim=True)
    uniform = torch.full_like(w, 1.0 / w.shape[-1])
    # an all-zero row divides 0 / 0 in the branch `where` discards
    return torch.where(total > 0, w / total, uniform)


def score_weights(scores: ArrayLike) -> Tensor:
    """SAM scores (..., K) clipped at 0 and normalised to sum 1 over K (all <= 0: uniform)."""
    return _normalise(_float(scores).clamp_min(0))


def mixture(maps: ArrayLike, weights: ArrayLike) -> Tensor:
    """Weighted mean map: maps (..., K, h, w), weights (..., K) >= 0 -> (..., h, w).

    Weights are renormalised to sum 1 over K; all-zero weights mean uniform.
    """
    maps = _float(maps)
    w = _float(weights).to(maps.device)
    if maps.ndim < 3 or w.shape[-1] != maps.shape[-3]:
        raise ValueError(
            f"maps (..., K, h, w) and weights (..., K) disagree: "
            f"{tuple(maps.shape)} vs {tuple(w.shape)}"
        )
    if (w < 0).any():
        raise ValueError("mixture weights must be >= 0 (use score_weights for SAM scores)")
    w = _normalise(w).to(maps.dtype)
    # einsum: no (..., K, h, w) temporary; h_all mixes hundreds of maps
    return torch.einsum("...k,...khw->...hw", w, maps)


def _bool(x: ArrayLike, what: str) -> Tensor:
    x = torch.as_tensor(x)
    if x.dtype == torch.bool:
        return x
    if x.is_floating_point() or x.is_complex():
        # a float array may be probabilities or logits: thresholding is the caller's call
        raise ValueError(f"{what} must be a bool (or 0/1 integer) mask, got {x.dtype}")
    return x != 0


def count_dtype(shape: Sequence[int]) -> torch.dtype:
    """The integer type pixel counts of masks (..., H, W) are summed in.

    int32 while H * W < 2**30, so a union (at most 2 * H * W) cannot overflow; int64 past
    that. Exact either way, and int32 sums of 0/1 bytes run about twice as fast on a CPU.
    """
    return torch.int32 if shape[-2] * shape[-1] < 2**30 else torch.int64


def pixel_count(masks: Tensor) -> Tensor:
    """Pixels set in 0/1 byte masks (..., H, W) -> (...), summed in `count_dtype`."""
    return masks.sum((-2, -1), dtype=count_dtype(masks.shape))


def mask_iou(pred: ArrayLike, gt: ArrayLike) -> Tensor:
    """IoU of bool masks over the last two dims: pred (..., H, W), gt broadcastable -> (...).

    Counts are integer sums, so big masks lose no precision before the one division.
    Two empty masks give 0.0, as pycocotools.mask.iou does.
    """
    pred = _bool(pred, "pred")
    gt = _bool(gt, "gt").to(pred.device)
    # a gt of fewer than 2 dims has a shorter shape[-2:] than pred's, so it fails the second test
    if pred.ndim < 2 or pred.shape[-2:] != gt.shape[-2:]:
        raise ValueError(
            f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must end in the same (H, W)"
        )
    p, g = pred.view(torch.uint8), gt.view(torch.uint8)
    inter = pixel_count(p * g)
    union = pixel_count(p) + pixel_count(g) - inter
    iou = inter.double() / union.clamp_min(1).double()
    return iou.float()
