"""python -m usam.track on the bundled sample video with random-weight SAM 2 at 256 px."""

from __future__ import annotations

import csv
import json
import logging
import math

import cv2
import pytest
import torch

from usam.datasets.sample import SAMPLE_ROOT
from usam.errors import UsamError
from usam.mlp import UsamMLP, save_bundle
from usam.track import object_prompts, pick_check_score, quality_colour, run

VIDEO = SAMPLE_ROOT / "JPEGImages" / "480p" / "shapes-a"


def bundles(root, targets=("iou_tiny", "task_gap")):
    for k, target in enumerate(targets):
        torch.manual_seed(10 + k)
        shift = 0.5 if target.endswith("_gap") else 0.0
        config = {
            "target": target,
            "output_shift": shift,
            "sam_version": "sam2.1",
            "models": ["tiny"],
            "random_weights": True,
        }
        save_bundle(root / target, UsamMLP(), config)
    return root


def test_track_scores_every_frame_and_object_and_marks_frames_to_check(
    compose_cfg, tmp_path, one_thread, caplog
):
    cfg = compose_cfg(
        "track",
        [
            "sam_model=random",
            f"video={VIDEO}",
            "objects=[{id:5,point:[80,60]},{id:2,box:[150,100,300,230],frame:1}]",
            f"estimators={bundles(tmp_path / 'bundles')}",
            "threshold=0.5",
            "overlay=video",
        ],
    )
    with caplog.at_level(logging.WARNING):
        summary = run(cfg)
    assert "RANDOM" in caplog.text
    assert summary["random_weights"] is True and summary["random_estimators"] == [
        "iou_tiny",
        "task_gap",
    ]
    assert summary["check_score"] == "iou_tiny"  # the estimator of this size
    run_dir = tmp_path / "run"
    with open(run_dir / "frames.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["frame"], r["object"]) for r in rows] == [
        ("0", "5"),
        ("0", "2"),
        ("1", "5"),
        ("1", "2"),
        ("2", "5"),
        ("2", "2"),
    ]
    assert [r["prompt"] for r in rows] == ["points", "", "", "box", "", ""]
    for r in rows:
        assert 0 <= float(r["iou_tiny"]) <= 1 and -0.5 <= float(r["task_gap"]) <= 0.5
        assert (r["check"] == "True") == (float(r["iou_tiny"]) < 0.5)
    flagged = sorted({int(r["frame"]) for r in rows if r["check"] == "True"})
    assert summary["frames_to_check"] == flagged
    data = json.loads((run_dir / "frames.json").read_text())
    assert data["kind"] == "usam.track" and len(data["rows"]) == 6
    assert data["rows"][3]["iou_tiny"] == pytest.approx(float(rows[3]["iou_tiny"]))
    for name in ("scores.png", "contact_sheet.png"):
        img = cv2.imread(str(run_dir / name))
        assert img is not None and img.shape[0] > 100
    cap = cv2.VideoCapture(str(run_dir / "overlay.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    cap.release()
    assert not list(run_dir.glob(".*tmp*"))


def test_objects_come_from_one_prompt_or_a_list(compose_cfg):
    cfg = compose_cfg("track", ["point=[3,4]", "frame=2"])
    [obj] = object_prompts(cfg)
    assert (obj["id"], obj["frame"], obj["point_coords"].tolist()) == (1, 2, [[3.0, 4.0]])
    cfg = compose_cfg("track", ["objects=[{box:[1,2,3,4]},{id:9,point:[5,6],label:[1]}]"])
    a, b = object_prompts(cfg)
    assert (a["id"], a["box"].tolist(), a["point_coords"]) == (1, [1.0, 2.0, 3.0, 4.0], None)
    assert (b["id"], b["frame"], b["point_coords"].tolist()) == (9, 0, [[5.0, 6.0]])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["point=[3,4]", "objects=[{point:[1,2]}]"], "not both"),
        (["objects=[{point:[1,2],colour:1}]"], "unknown keys"),
        (["objects=[{id:1,point:[1,2]},{id:1,box:[1,2,3,4]}]"], "used twice"),
        (["objects=[{frame:x,point:[1,2]}]"], "frame number"),
        ([], "no prompt"),
    ],
)
def test_bad_prompts_are_one_line_errors(compose_cfg, overrides, message):
    with pytest.raises(UsamError, match=message):
        object_prompts(compose_cfg("track", overrides))


def test_run_refuses_a_missing_video_before_building_sam(compose_cfg):
    with pytest.raises(UsamError, match="no video"):
        run(compose_cfg("track", ["point=[1,2]"]))


def test_the_check_score_is_this_sizes_iou_estimator_else_any_iou_estimator_else_sams():
    cols = ["predicted_iou", "object_score", "task_gap", "iou_large", "iou_tiny"]
    assert pick_check_score(cols, "tiny", None) == "iou_tiny"
    assert pick_check_score(cols, "small", None) == "iou_large"
    assert pick_check_score(cols[:3], "small", None) == "predicted_iou"
    assert pick_check_score(cols, "tiny", "object_score") == "object_score"
    with pytest.raises(UsamError, match="not a score"):
        pick_check_score(cols, "tiny", "h_all")


def test_quality_colours_run_from_red_to_green():
    assert quality_colour(0.0).tolist() == [255, 0, 40]
    assert quality_colour(1.0).tolist() == [0, 255, 40]
    assert quality_colour(0.5).tolist() == [255, 255, 40]
    assert quality_colour(math.nan).tolist() == [160, 160, 160]
