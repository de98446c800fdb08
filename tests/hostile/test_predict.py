"""Hostile and careless prompts: points outside the image and inverted, empty or overhanging
boxes are refused with one line (usam.predict before SAM 2 is even built; UncertainSAM.predict
before decoding), instead of masks and estimates that look as trustworthy as any others."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from usam.errors import UsamError
from usam.inference import UncertainSAM, check_prompt_geometry
from usam.predict import run
from usam.sam import load_sam_model

H, W = 40, 56  # rows, columns: not square, so a swapped x / y is caught
TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"
SIZE = "the 56 x 40 image (x in [0, 56], y in [0, 40])"

pytestmark = pytest.mark.usefixtures("one_thread")

POINTS = [
    # points [N, 2] (x, y), labels, the error
    (
        [[60, 10]],
        None,
        f"point_coords: point (60, 10) lies outside {SIZE}; 1 point(s) in all; "
        "give (x, y) pixel coordinates of this image",
    ),
    (
        [[10, 20], [30, 45]],
        [1, 0],
        f"point_coords: point (30, 45) lies outside {SIZE}; "
        "1 point(s) in all; give (x, y) pixel coordinates of this image",
    ),
    (
        [[-0.5, 3], [2, 3], [70, 80]],
        None,
        f"point_coords: point (-0.5, 3) lies outside {SIZE}; "
        "2 point(s) in all; give (x, y) pixel coordinates of this image",
    ),
    # (30, 45) fits a 40-wide, 56-high image: x and y swapped by the caller
    (
        [[45, 30], [20, 50]],
        None,
        f"point_coords: point (20, 50) lies outside {SIZE}; "
        "1 point(s) in all; give (x, y) pixel coordinates of this image",
    ),
]
BOXES = [
    (
        [40, 5, 10, 30],
        "box: [40, 5, 10, 30] is inverted or empty; give [x0, y0, x1, y1] with x0 < x1 and y0 < y1",
    ),
    (
        [5, 30, 40, 10],
        "box: [5, 30, 40, 10] is inverted or empty; give [x0, y0, x1, y1] with x0 < x1 and y0 < y1",
    ),
    (
        [5, 5, 5, 30],
        "box: [5, 5, 5, 30] is inverted or empty; give [x0, y0, x1, y1] with x0 < x1 and y0 < y1",
    ),
    (
        [5, 12, 30, 12],  # no height: empty in y as [5, 5, 5, 30] is in x
        "box: [5, 12, 30, 12] is inverted or empty; give [x0, y0, x1, y1] with x0 < x1 and y0 < y1",
    ),
    ([5, 5, 57, 30], f"box: [5, 5, 57, 30] reaches outside {SIZE}; clip it to the image"),
    ([-1, 5, 20, 30], f"box: [-1, 5, 20, 30] reaches outside {SIZE}; clip it to the image"),
]


@pytest.mark.parametrize("points, labels, message", POINTS)
def test_points_outside_the_image_are_refused(points, labels, message):
    labels = None if labels is None else np.array(labels)
    with pytest.raises(UsamError) as err:
        check_prompt_geometry(np.array(points, float), labels, None, H, W)
    assert str(err.value) == message


@pytest.mark.parametrize("box, message", BOXES)
def test_inverted_empty_and_overhanging_boxes_are_refused(box, message):
    with pytest.raises(UsamError) as err:
        check_prompt_geometry(None, None, np.array([box], float), H, W)
    assert str(err.value) == message


def test_prompts_inside_the_image_pass_and_padding_points_may_lie_anywhere():
    check_prompt_geometry(
        np.array([[[0, 0], [56, 40]], [[55.5, 0.5], [-100, 999]]], float),  # edges included
        np.array([[1, 0], [1, -1]]),  # -1: a padding point of a batch, ignored by SAM
        np.array([[0, 0, 56, 40], [10, 2, 11, 3]], float),
        H,
        W,
    )


def test_the_second_box_of_a_batch_is_checked_too():
    with pytest.raises(UsamError) as err:
        check_prompt_geometry(None, None, np.array([[0, 0, 10, 10], [9, 9, 3, 30]], float), H, W)
    assert str(err.value).startswith("box: [9, 9, 3, 30] is inverted or empty")


@pytest.fixture(scope="module")
def usam():
    sam = load_sam_model("tiny", None, TINY, random_weights=True, image_size=128, device="cpu")
    u = UncertainSAM(sam, {})
    rng = np.random.default_rng(1)
    u.set_image(rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    return u


def test_uncertain_sam_refuses_before_decoding(usam):
    with pytest.raises(UsamError) as err:
        usam.predict(point_coords=[[30, 45]], point_labels=[1])
    assert str(err.value) == POINTS[1][2]
    with pytest.raises(UsamError) as err:
        usam.predict(box=[[5, 5, 20, 20], [30, 20, 10, 30]])
    assert str(err.value).startswith("box: [30, 20, 10, 30] is inverted or empty")
    out = usam.predict(point_coords=[[55, 39]])  # the last pixel: fine
    assert out.masks.shape == (3, H, W)


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    "prompt, message",
    [
        (
            ["point=[56.5,3]"],
            f"point: point (56.5, 3) lies outside {SIZE}; 1 point(s) in all; "
            "give (x, y) pixel coordinates of this image",
        ),
        (
            ["box=[30,20,10,5]"],
            "box: [30, 20, 10, 5] is inverted or empty; give "
            "[x0, y0, x1, y1] with x0 < x1 and y0 < y1",
        ),
        (
            ["point=[[3,3],[5,5]]", "label=[1,2]"],
            "label=[1, 2]: each label must be 1 (foreground) or 0 (background)",
        ),
        (
            ["point=[3,3]", "label=[0.5]"],
            "label=[0.5]: each label must be 1 (foreground) or 0 (background)",
        ),
        (
            ["point=[3,3]", "box=[0,0,80,30]"],
            f"box: [0, 0, 80, 30] reaches outside {SIZE}; clip it to the image",
        ),
    ],
)
def test_the_predict_command_refuses_before_building_sam(
    compose_cfg, image_file, tmp_path, prompt, message
):
    # sam_model=sam2.1 without a checkpoint: building SAM would fail with "not found"
    cfg = compose_cfg("predict", [f"image={image_file}", "estimators=null", *prompt])
    with pytest.raises(UsamError) as err:
        run(cfg)
    assert str(err.value) == message
    assert not (tmp_path / "run" / "overlay.png").exists()
