"""Prompt sampling: answers known by construction."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from usam.prompts import instance_rng, prompt_points, prompt_region


def rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_center_of_odd_square_is_its_middle_pixel():
    m = rect(40, 50, 10, 21, 20, 31)  # 11x11, centre (x=25, y=15)
    pts = prompt_points(m, np.random.default_rng(0))
    assert pts.shape == (8, 2) and pts.dtype == np.float32
    assert tuple(pts[0]) == (25.0, 15.0)


def test_center_tie_takes_first_in_row_major_order():
    # 10x10 square after erosion is 6x6 at rows/cols 12..17; centroid (14.5, 14.5) is
    # equidistant from (14,14), (15,14), (14,15), (15,15); row-major first is y=14, x=14
    m = rect(30, 30, 10, 20, 10, 20)
    assert tuple(prompt_points(m, np.random.default_rng(0))[0]) == (14.0, 14.0)


def test_center_of_ring_is_a_foreground_pixel_nearest_the_hole():
    m = np.zeros((41, 41), np.uint8)
    cv2.circle(m, (20, 20), 15, 1, thickness=7)  # ring; its centroid (20, 20) is background
    m = m.astype(bool)
    region = prompt_region(m)
    x, y = prompt_points(m, np.random.default_rng(0))[0].astype(int)
    assert region[y, x]
    ys, xs = np.nonzero(region)
    d = np.hypot(ys - ys.mean(), xs - xs.mean())
    assert np.isclose(np.hypot(y - ys.mean(), x - xs.mean()), d.min())


def test_points_come_from_eroded_mask():
    m = rect(40, 40, 5, 25, 8, 30)
    pts = prompt_points(m, np.random.default_rng(1), n_samples=200).astype(int)
    x, y = pts[:, 0], pts[:, 1]
    # 5x5 erosion removes 2 pixels from every side
    assert x.min() >= 10 and x.max() <= 27 and y.min() >= 7 and y.max() <= 22
    assert np.array_equal(prompt_region(m), rect(40, 40, 7, 23, 10, 28))


def test_thin_mask_falls_back_to_original():
    m = rect(20, 20, 5, 15, 9, 11)  # 2 px wide: erosion removes it all
    assert np.array_equal(prompt_region(m), m)
    pts = prompt_points(m, np.random.default_rng(0)).astype(int)
    assert m[pts[:, 1], pts[:, 0]].all()


def test_without_replacement_when_enough_pixels():
    m = rect(20, 20, 5, 12, 5, 6)  # 7 pixels, 1 px wide -> original mask, exactly 7
    samples = prompt_points(m, np.random.default_rng(3), n_samples=7)[1:]
    assert len({tuple(p) for p in samples}) == 7


def test_with_replacement_when_too_few_pixels():
    m = np.zeros((10, 10), bool)
    m[4, 4] = m[4, 6] = True
    pts = prompt_points(m, np.random.default_rng(0), n_samples=7)
    assert pts.shape == (8, 2)
    assert {tuple(p) for p in pts[1:].astype(int)} <= {(4, 4), (6, 4)}
    # centroid (5, 4) is equidistant: first in row-major order is x=4
    assert tuple(pts[0]) == (4.0, 4.0)


def test_samples_are_uniform_over_region():
    m = np.zeros((8, 8), bool)
    m[0, 0] = m[0, 7] = m[7, 0] = m[7, 7] = True  # four isolated pixels
    rng = np.random.default_rng(0)
    counts = np.zeros((8, 8))
    for _ in range(800):
        for x, y in prompt_points(m, rng, n_samples=1)[1:].astype(int):
            counts[y, x] += 1
    corners = counts[[0, 0, 7, 7], [0, 7, 0, 7]]
    assert corners.sum() == 800 and np.all(np.abs(corners - 200) < 50)  # sd ~12


def test_object_touching_border_is_not_eroded_from_outside():
    # cv2.erode treats outside pixels as foreground: a full-image mask stays full
    m = np.ones((12, 12), bool)
    assert prompt_region(m).all()


def test_deterministic_per_instance():
    m = rect(60, 60, 10, 50, 10, 50)
    a = prompt_points(m, instance_rng(0, "video/00001.jpg", 3))
    b = prompt_points(m, instance_rng(0, "video/00001.jpg", 3))
    assert np.array_equal(a, b)
    for rng in (
        instance_rng(1, "video/00001.jpg", 3),
        instance_rng(0, "video/00002.jpg", 3),
        instance_rng(0, "video/00001.jpg", 4),
    ):
        assert not np.array_equal(a[1:], prompt_points(m, rng)[1:])


def test_instance_rng_is_stable_across_processes():
    # Python's str hash() is salted per process; the seed must not depend on it
    code = (
        "from usam.prompts import instance_rng; print(instance_rng(0, 'a.jpg', 1).integers(2**62))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": str(s)},
        ).stdout
        for s in (1, 2)
    }
    assert len(outs) == 1 and int(outs.pop()) == instance_rng(0, "a.jpg", 1).integers(2**62)


def test_empty_and_bad_masks_raise():
    with pytest.raises(ValueError, match="empty"):
        prompt_points(np.zeros((5, 5), bool), np.random.default_rng(0))
    with pytest.raises(ValueError, match="2-D"):
        prompt_points(np.ones((2, 5, 5), bool), np.random.default_rng(0))


def test_accepts_uint8_labels():
    m = rect(30, 30, 10, 21, 10, 21).astype(np.uint8) * 7
    assert tuple(prompt_points(m, np.random.default_rng(0))[0]) == (15.0, 15.0)


# -- from the mutation run (docs/testing.md) -------------------------------------------------
def test_instance_rng_takes_zero_and_refuses_each_negative_argument_alone():
    assert instance_rng(0, "a.jpg", 0).integers(10) == instance_rng(0, "a.jpg", 0).integers(10)
    for seed, iid in ((-1, 0), (0, -2)):
        with pytest.raises(ValueError) as err:
            instance_rng(seed, "a.jpg", iid)
        assert str(err.value) == f"seed and instance_id must be >= 0, got {seed}, {iid}"


def test_prompt_region_is_a_bool_mask_and_names_an_empty_one():
    region = prompt_region(rect(9, 9, 1, 8, 1, 8).astype(np.uint8) * 3)
    assert region.dtype == bool and region.sum() == 9  # 7x7 eroded by 5x5: the middle 3x3
    with pytest.raises(ValueError) as err:
        prompt_region(np.zeros((3, 3), bool))
    assert str(err.value) == "empty mask: no foreground pixel to prompt"
