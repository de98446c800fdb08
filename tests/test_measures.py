"""Measures on maps and masks whose values are known by hand."""

import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from usam.measures import (
    binary_entropy,
    count_dtype,
    entropy,
    mask_iou,
    mixture,
    pixel_count,
    score_weights,
)


def h(c: float) -> float:
    return -c * math.log2(c) - (1 - c) * math.log2(1 - c)


def full(v, shape=(16, 16), dtype=torch.float32):
    return torch.full(shape, v, dtype=dtype)


def test_entropy_of_constant_maps_is_binary_entropy():
    assert entropy(full(0.5)).item() == pytest.approx(1.0, abs=1e-6)
    for c in (0.1, 0.3, 0.9, 0.99):
        assert entropy(full(c, dtype=torch.float64)).item() == pytest.approx(h(c), abs=1e-12)
        assert entropy(full(c)).item() == pytest.approx(h(c), rel=1e-5)


def test_entropy_of_zero_map_is_tiny_and_finite():
    v = entropy(torch.zeros(8, 8, dtype=torch.float64)).item()
    assert math.isfinite(v) and v == pytest.approx(h(1e-6), rel=1e-9)
    assert 0 < entropy(torch.zeros(256, 256)).item() < 1e-4


def test_entropy_of_certain_binary_map_is_near_zero():
    p = torch.zeros(32, 32, dtype=torch.float64)
    p[:, :16] = 1.0
    assert entropy(p).item() == pytest.approx(h(1e-6), rel=1e-6)  # both levels clip to h(eps)
    assert 0 < entropy(p.float()).item() < 1e-4  # float32 cannot hold 1 - 1e-6 exactly


def test_entropy_two_level_map_is_foreground_weighted():
    p = torch.full((10, 10), 0.2, dtype=torch.float64)
    p[:, :3] = 0.9  # 30 pixels at 0.9, 70 at 0.2
    want = (30 * 0.9 * h(0.9) + 70 * 0.2 * h(0.2)) / (30 * 0.9 + 70 * 0.2)
    assert entropy(p).item() == pytest.approx(want, abs=1e-12)
    # differs from the plain mean, so the weighting is really applied
    assert abs(want - (0.3 * h(0.9) + 0.7 * h(0.2))) > 0.05


def test_entropy_batched_and_numpy():
    maps = torch.stack([full(0.5), full(0.1), full(0.9)]).reshape(3, 1, 16, 16)
    out = entropy(maps)
    assert out.shape == (3, 1)
    assert out[:, 0].tolist() == pytest.approx([1.0, h(0.1), h(0.9)], rel=1e-5)
    assert entropy(np.full((2, 4, 4), 0.5, np.float32)).tolist() == pytest.approx([1.0, 1.0])
    assert torch.isfinite(entropy(torch.full((4, 4), 0.5, dtype=torch.float16)))


def test_mixture_known_weights():
    maps = torch.stack([full(0.2), full(0.8)])
    assert torch.allclose(mixture(maps, torch.tensor([1.0, 3.0])), full(0.65))
    assert torch.allclose(mixture(maps, torch.tensor([0.0, 0.0])), full(0.5))  # uniform
    assert torch.allclose(mixture(maps, [2.0, 0.0]), full(0.2))


def test_mixture_batched_rows_are_independent():
    maps = torch.stack([full(0.2), full(0.8)]).expand(3, 2, 16, 16)
    w = torch.tensor([[1.0, 3.0], [0.0, 0.0], [1.0, 0.0]])
    out = mixture(maps, w)
    assert out.shape == (3, 16, 16)
    assert out[:, 0, 0].tolist() == pytest.approx([0.65, 0.5, 0.2])


def test_mixture_rejects_bad_input():
    with pytest.raises(ValueError, match="disagree"):
        mixture(torch.zeros(3, 4, 4), torch.ones(2))
    with pytest.raises(ValueError, match=">= 0"):
        mixture(torch.zeros(2, 4, 4), torch.tensor([1.0, -1.0]))


def test_score_weights():
    assert score_weights(torch.tensor([0.2, 0.6, 0.2])).tolist() == pytest.approx([0.2, 0.6, 0.2])
    assert score_weights(torch.tensor([1.0, 3.0, -2.0])).tolist() == pytest.approx([0.25, 0.75, 0])
    assert score_weights(torch.tensor([0.0, -1.0, 0.0])).tolist() == pytest.approx([1 / 3] * 3)
    out = score_weights(np.array([[1.0, 1.0], [0.0, 0.0]]))
    assert out.flatten().tolist() == pytest.approx([0.5] * 4)


def box(y, x, h=10, w=10, shape=(40, 40)):
    m = torch.zeros(shape, dtype=torch.bool)
    m[y : y + h, x : x + w] = True
    return m


def test_iou_of_known_rectangles():
    a, b = box(5, 5), box(5, 10)  # overlap 10x5 = 50, union 150
    assert mask_iou(a, b).item() == pytest.approx(50 / 150)
    assert mask_iou(a, a).item() == 1.0
    assert mask_iou(a, box(20, 20)).item() == 0.0
    assert mask_iou(torch.zeros(4, 4, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.bool)) == 0


def test_iou_batched_against_one_gt_and_numpy():
    preds = torch.stack([box(5, 5), box(5, 10), box(20, 20)]).reshape(1, 3, 40, 40)
    out = mask_iou(preds, box(5, 5).numpy())
    assert out.shape == (1, 3)
    assert out[0].tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    assert mask_iou(preds.numpy().astype(np.uint8), box(5, 5)).tolist() == out.tolist()


def test_iou_rejects_float_and_mismatched():
    with pytest.raises(ValueError, match="bool"):
        mask_iou(torch.rand(4, 4), box(0, 0, shape=(4, 4)))
    with pytest.raises(ValueError, match="same"):
        mask_iou(box(0, 0, shape=(4, 4)), box(0, 0, shape=(4, 5)))


def test_iou_agrees_with_pycocotools():
    rng = np.random.default_rng(0)
    preds = rng.random((6, 37, 53)) < rng.random((6, 1, 1))
    gt = rng.random((37, 53)) < 0.4
    preds[5] = False  # empty prediction vs non-empty gt
    rle = lambda m: mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))  # noqa: E731
    want = mask_utils.iou([rle(p) for p in preds], [rle(gt)], [0])[:, 0]
    assert mask_iou(preds, gt).numpy() == pytest.approx(want, abs=1e-7)
    empty = np.zeros((5, 5), bool)
    assert mask_utils.iou([rle(empty)], [rle(empty)], [0])[0, 0] == mask_iou(empty, empty).item()


# -- from the mutation run (docs/testing.md): each test kills mutants that survived ----------
def test_binary_entropy_clips_certain_pixels_to_finite_values():
    p = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    assert binary_entropy(p).tolist() == pytest.approx([h(1e-6), h(0.25), h(1e-6)], rel=1e-12)
    # a larger eps is honoured
    assert binary_entropy(p, eps=0.1).tolist() == pytest.approx([h(0.1), h(0.25), h(0.1)])


def test_entropy_weights_a_certain_pixel_by_one_minus_eps():
    """A pixel at p = 1 weighs 1 - eps in sum(p * h(p)) / sum(p), not 1 (nor 1 + eps)."""
    p = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    e = 1e-6
    want = ((1 - e) * h(e) + 0.5 * 1.0) / (1 - e + 0.5)
    assert entropy(p).item() == pytest.approx(want, rel=1e-13)
    assert abs(want - (h(e) + 0.5) / 1.5) > 1e-7  # the unclipped weight gives another number


def test_half_precision_maps_are_computed_in_float32():
    p = torch.full((4, 4), 0.3, dtype=torch.float16)
    assert entropy(p).dtype == torch.float32 and binary_entropy(p).dtype == torch.float32
    assert mixture(torch.stack([p, p]), [1.0, 1.0]).dtype == torch.float32


def test_mixture_of_float64_maps_with_float32_weights_stays_float64():
    maps = torch.stack([full(0.25, dtype=torch.float64), full(0.75, dtype=torch.float64)])
    out = mixture(maps, torch.tensor([1.0, 3.0]))
    assert out.dtype == torch.float64 and out[0, 0].item() == 0.625


def test_mixture_error_names_the_fix():
    with pytest.raises(ValueError) as err:
        mixture(torch.zeros(2, 4, 4), torch.tensor([1.0, -1.0]))
    assert str(err.value) == "mixture weights must be >= 0 (use score_weights for SAM scores)"


def test_iou_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"^gt must be a bool \(or 0/1 integer\) mask"):
        mask_iou(box(0, 0, shape=(4, 4)), torch.rand(4, 4))
    with pytest.raises(ValueError, match=r"^pred must be a bool"):
        mask_iou(torch.rand(4, 4), box(0, 0, shape=(4, 4)))
    with pytest.raises(ValueError, match=r"^pred \(4,\) and gt \(4, 4\) must end in the same"):
        mask_iou(torch.ones(4, dtype=torch.bool), box(0, 0, shape=(4, 4)))


def test_iou_of_single_pixels_and_of_one_gt_per_row():
    one = box(1, 2, 1, 1, shape=(4, 4))
    assert mask_iou(one, one).item() == 1.0  # union 1 pixel
    # extraction's layout: preds [I, 3, H, W] against gt [I, 1, H, W], a different GT per row
    gts = torch.stack([box(0, 0, 2, 2, shape=(4, 4)), box(0, 0, 4, 4, shape=(4, 4))])[:, None]
    preds = torch.stack(
        [
            torch.stack([box(0, 0, 1, 1, shape=(4, 4)), box(0, 0, 2, 2, shape=(4, 4)), one]),
            torch.stack([box(0, 0, 2, 2, shape=(4, 4)), one, box(0, 0, 4, 4, shape=(4, 4))]),
        ]
    )
    out = mask_iou(preds, gts)
    assert out.shape == (2, 3)
    assert out.flatten().tolist() == pytest.approx([1 / 4, 1.0, 0.0, 4 / 16, 1 / 16, 1.0])


def test_weights_summing_below_one_are_scaled_up():
    assert score_weights(torch.tensor([0.1, 0.3])).tolist() == pytest.approx([0.25, 0.75])
    maps = torch.stack([full(0.2), full(0.6)])
    assert mixture(maps, [0.1, 0.3])[0, 0].item() == pytest.approx(0.5)


def test_entropy_passes_its_eps_on():
    # eps below the default: an all-zero map is clipped to 1e-9, not to 1e-6
    zeros = torch.zeros(4, 4, dtype=torch.float64)
    assert entropy(zeros, eps=1e-9).item() == pytest.approx(h(1e-9), rel=1e-9)


def test_pixel_counts_switch_to_int64_when_a_union_could_overflow_int32():
    # H * W < 2**30 sums in int32 (a union is at most 2 * H * W < 2**31), from 2**30 in int64;
    # non-square shapes behind a batch dim, so H * H, W * W or a batch dim give other types
    assert count_dtype((2**15, 2**15 - 1)) == torch.int32
    assert count_dtype((2**15, 2**15)) == torch.int64
    assert count_dtype((7, 2**13, 2**17)) == torch.int64
    assert count_dtype((7, 2**17, 2**13)) == torch.int64
    assert count_dtype((3, 2**13, 2**16)) == torch.int32
    assert count_dtype((3, 2**16, 2**13)) == torch.int32
    assert count_dtype((2**20, 4, 4)) == torch.int32


def test_pixel_counts_are_exact_integers_of_that_type():
    masks = torch.zeros(2, 3, 5, 7, dtype=torch.uint8)
    masks[0, 1, :2, :3] = 1  # 6 pixels
    masks[1, 2] = 1  # 35 pixels
    counts = pixel_count(masks)
    assert counts.dtype == torch.int32  # not the int64 torch sums bytes into by default
    assert counts.tolist() == [[0, 6, 0], [0, 0, 35]]


def test_iou_refuses_one_dimensional_masks_even_of_equal_shape():
    with pytest.raises(ValueError, match=r"^pred \(4,\) and gt \(4,\) must end in the same"):
        mask_iou(torch.ones(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool))


def test_all_zero_weights_are_uniform_next_to_a_normal_row():
    # one row sums to 0 (uniform), the other is scaled: the 0/0 of the first row stays out
    w = score_weights(torch.tensor([[0.0, -1.0, 0.0], [0.2, 0.0, 0.6]]))
    assert w.flatten().tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.25, 0.0, 0.75])
    assert torch.isfinite(w).all()
