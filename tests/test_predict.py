"""python -m usam.predict: config, end to end on a random tiny SAM, the overlay, bad input.

The bundles are constant MLPs (zero weights, a chosen last bias), so the printed estimates
are known by hand whatever SAM's random tokens are.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from usam import options
from usam.cli import run_stage
from usam.errors import UsamError
from usam.inference import Prediction
from usam.mlp import UsamMLP, save_bundle
from usam.predict import _TINT, overlay, prompt_arrays, run
from usam.schema import TARGETS

H, W = 48, 64
CONSTANT = {"iou_tiny": 0.75, "task_gap": 0.6, "model_gap": 0.5}  # MLP outputs before the shift
EXPECTED = {"iou_tiny": 0.75, "task_gap": 0.1, "model_gap": 0.0}  # gap targets: minus 0.5


@pytest.fixture
def image_file(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 50, (H, W, 3), dtype=np.uint8)
    img[10:40, 15:50] = (200, 40, 40)
    path = tmp_path / "photo.png"
    Image.fromarray(img).save(path)
    return path


@pytest.fixture
def bundles(tmp_path):
    for target, p in CONSTANT.items():
        model = UsamMLP(hidden=[8])
        with torch.no_grad():
            for param in model.parameters():
                param.zero_()
            model.net[-2].bias.fill_(math.log(p / (1 - p)))
        save_bundle(
            tmp_path / "models" / target,
            model,
            {
                "target": target,
                "output_shift": TARGETS[target],
                "sam_version": "sam2.1",
                "random_weights": True,
            },
        )
    return tmp_path / "models"


def test_end_to_end_writes_the_overlay_and_prints_json(compose_cfg, image_file, bundles, capsys):
    cfg = compose_cfg(
        "predict",
        [
            "sam_model=random",
            "sam_model.image_size=128",
            "sam_model.device=cpu",
            f"image={image_file}",
            "point=[30,25]",
            f"estimators={bundles}",
        ],
    )
    assert cfg.out.endswith("run/overlay.png")
    summary = run_stage(run, cfg)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads(json.dumps(summary))
    assert printed["size"] == "tiny" and printed["sam_version"] == "sam2.1"
    assert printed["random_weights"] is True and printed["point"] == [[30.0, 25.0]]
    assert printed["label"] == [1] and printed["box"] is None
    assert list(printed["estimates"]) == ["iou_tiny", "model_gap", "task_gap"]
    for target, want in EXPECTED.items():
        np.testing.assert_allclose(printed["estimates"][target], [want] * 3, atol=1e-6)
        assert printed["best_estimates"][target] == pytest.approx(want, abs=1e-6)
    assert printed["best"] == int(np.argmax(printed["scores"]))
    png = np.asarray(Image.open(cfg.out))
    assert png.ndim == 3 and png.shape[0] >= H and png.shape[1] > W  # image + text panel
    run_dir = Path(cfg.paths.output_dir)
    assert json.loads((run_dir / "summary.json").read_text())["overlay"] == cfg.out
    assert (run_dir / "config.yaml").is_file()


def test_overlay_tints_the_best_mask_marks_the_point_and_writes_text():
    img = np.full((60, 80, 3), 100, np.uint8)
    masks = np.zeros((3, 60, 80), bool)
    masks[1, 10:50, 10:70] = True  # the best one (highest score)
    masks[0, :, :] = True  # a worse mask: must not be drawn
    pred = Prediction(
        masks=masks,
        scores=np.array([0.2, 0.9, 0.5], np.float32),
        low_res_logits=np.zeros((3, 16, 16), np.float32),
        estimates={"iou_tiny": np.array([0.1, 0.8, 0.3], np.float32)},
    )
    prompt = prompt_arrays([20, 20], None, None)
    canvas = overlay(img, pred, prompt, ["sam2.1 tiny"])
    assert canvas.shape[0] >= 60 and canvas.shape[1] > 80 and canvas.dtype == np.uint8
    tinted = np.round(0.45 * 100 + 0.55 * _TINT).astype(np.uint8)
    np.testing.assert_array_equal(canvas[30, 50], tinted)  # inside, away from point and edge
    np.testing.assert_array_equal(canvas[55, 5], [100, 100, 100])  # outside: untouched
    np.testing.assert_array_equal(canvas[20, 20], [0, 220, 0])  # the foreground point
    panel = canvas[:, 80:]
    assert (panel < 128).any() and (panel == 255).any()  # dark text on white


@pytest.mark.parametrize(
    "point, label, box, message",
    [
        (None, None, None, "no prompt"),
        ([1], None, None, "expected \\[x, y\\]"),
        ([[1, 2, 3]], None, None, "expected \\[x, y\\]"),
        ([1, 2], [1, 0], None, "one label \\(1 or 0\\) per point"),
        (None, [1], [0, 0, 5, 5], "label given without point"),
        (None, None, [1, 2, 3], "expected \\[x0, y0, x1, y1\\]"),
    ],
)
def test_bad_prompts(point, label, box, message):
    with pytest.raises(UsamError, match=message):
        prompt_arrays(point, label, box)


def test_prompt_arrays_shapes():
    p = prompt_arrays([[1, 2], [3, 4]], [1, 0], [0, 0, 5, 5])
    assert p["point_coords"].shape == (2, 2) and p["point_labels"].tolist() == [1, 0]
    assert p["box"].shape == (4,)
    assert prompt_arrays(None, None, [0, 0, 5, 5])["point_coords"] is None


def test_missing_files_are_named(compose_cfg, image_file, bundles, tmp_path):
    cases = [
        (["image=" + str(tmp_path / "nope.jpg"), "point=[1,2]"], "nope.jpg not found"),
        (["point=[1,2]"], "no image"),
        ([f"image={image_file}"], "no prompt"),
        # sam_model=sam2.1 looks for the tiny checkpoint under paths.checkpoints
        (
            [f"image={image_file}", "point=[1,2]", f"estimators={bundles}"],
            "sam2.1/sam2.1_hiera_tiny.pt not found",
        ),
        # a SAM 2.0 file name switches the version (and the download hint) by itself
        (
            [
                f"image={image_file}",
                "point=[1,2]",
                f"checkpoint={tmp_path / 'sam2_hiera_small.pt'}",
            ],
            "sam2_hiera_small.pt not found.*sam_model=sam2.0",
        ),
        (
            [
                f"image={image_file}",
                "point=[1,2]",
                "sam_model=random",
                f"estimators={tmp_path / 'no_models'}",
            ],
            "no_models not found",
        ),
    ]
    for overrides, message in cases:
        with pytest.raises(UsamError, match=message):
            run(compose_cfg("predict", overrides))


def test_predictors_still_works_as_the_old_name_of_estimators(compose_cfg, image_file, bundles):
    base = [
        "sam_model=random",
        "sam_model.image_size=128",
        "sam_model.device=cpu",
        f"image={image_file}",
        "point=[30,25]",
    ]
    assert options.estimators(compose_cfg("predict", base)) == "models"  # the default
    summary = run(compose_cfg("predict", [*base, f"predictors={bundles}"]))
    assert list(summary["estimates"]) == ["iou_tiny", "model_gap", "task_gap"]
    both = compose_cfg("predict", [*base, f"predictors={bundles}", f"estimators={bundles}"])
    assert options.estimators(both) == str(bundles)  # the same folder twice is no conflict
    assert options.estimators(compose_cfg("predict", [*base, "predictors=null"])) is None


def test_estimators_and_predictors_with_different_folders_is_a_one_line_error(
    compose_cfg, image_file, bundles, tmp_path, capsys
):
    cfg = compose_cfg(
        "predict",
        [f"image={image_file}", "point=[30,25]", f"estimators={bundles}", "predictors=elsewhere"],
    )
    with pytest.raises(SystemExit) as exit_:
        run_stage(run, cfg)
    message = str(exit_.value.code)
    assert message == (
        f"error: estimators='{bundles}' and predictors='elsewhere' disagree (predictors is the "
        "old name of estimators); give estimators= only"
    )
    assert capsys.readouterr().out == ""  # no summary: nothing ran


def test_unreadable_image_is_a_usam_error(compose_cfg, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(UsamError, match="broken.jpg: unreadable image"):
        run(compose_cfg("predict", [f"image={bad}", "point=[1,2]"]))


def test_cli_reports_a_missing_image_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "usam.predict",
            f"image={tmp_path / 'gone.png'}",
            "point=[1,2]",
            f"paths.log_dir={tmp_path / 'outputs'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "gone.png not found" in proc.stderr and "Traceback" not in proc.stderr
