"""python -m usam.evaluate_video on small DAVIS trees and by hand (random SAM 2, 256 px)."""

from __future__ import annotations

import csv
import json
import logging
import math

import numpy as np
import pytest
import torch

from tests.video_trees import tracking_davis as davis_tree
from usam.errors import UsamError
from usam.evaluate_video import run
from usam.mlp import UsamMLP, save_bundle
from usam.track_metrics import score_report


def bundle(path, seed):
    torch.manual_seed(seed)
    config = {
        "target": "iou_tiny",
        "output_shift": 0.0,
        "sam_version": "sam2.1",
        "models": ["tiny"],
        "random_weights": True,
    }
    return save_bundle(path, UsamMLP(), config).parent


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One run over both videos with two estimator sets side by side."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import CONF

    tmp = tmp_path_factory.mktemp("evaluate_video")
    root = davis_tree(tmp / "DAVIS")
    image, track = bundle(tmp / "image" / "iou_tiny", 1), bundle(tmp / "track" / "iou_tiny", 2)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "evaluate_video",
            [
                f"paths.output_dir={tmp / 'run'}",
                f"paths.log_dir={tmp / 'outputs'}",
                f"paths.data={tmp / 'data'}",
                f"paths.inference={tmp / 'inference'}",
                f"paths.checkpoints={tmp / 'checkpoints'}",
                "dataset=davis",
                f"dataset.root={root}",
                "dataset.resolution=480p",
                "sam_model=random",
                f"estimators={{image: {image}, track: {track}}}",
                "r_points=11",
            ],
        )
    GlobalHydra.instance().clear()
    (tmp / "run").mkdir()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run(cfg)
    finally:
        torch.set_num_threads(before)
    with open(tmp / "run" / "frames.csv") as f:
        rows = list(csv.DictReader(f))
    return tmp, summary, rows


def test_every_object_is_scored_on_annotated_frames_after_its_first(evaluated):
    _, summary, rows = evaluated
    got = [(r["video"], int(r["frame"]), int(r["object"])) for r in rows]
    assert sorted(got) == sorted(
        [("dance", f, 1) for f in (1, 2, 3)]
        + [("dance", f, 3) for f in (1, 2, 3)]
        + [("dance", f, 2) for f in (2, 3)]
        + [("cars", f, 4) for f in (1, 2)]
    )
    assert summary["videos"] == 2 and summary["frames"] == 10
    assert summary["random_weights"] is True


def test_a_lost_object_scores_one_when_the_prediction_is_empty_too_else_zero(evaluated):
    _, _, rows = evaluated
    lost = [r for r in rows if r["object"] == "3" and r["frame"] in ("2", "3")]
    assert len(lost) == 2
    for r in lost:
        assert int(r["gt_area"]) == 0
        assert float(r["iou"]) == (1.0 if int(r["pred_area"]) == 0 else 0.0)
    for r in rows:  # a present object: the IoU is bounded by the areas
        g, p = int(r["gt_area"]), int(r["pred_area"])
        if g:
            assert 0 <= float(r["iou"]) <= min(g, p) / max(g, p) + 1e-9


def test_image_and_track_estimators_are_reported_side_by_side(evaluated):
    tmp, summary, rows = evaluated
    assert {"image/iou_tiny", "track/iou_tiny"} <= set(rows[0])
    assert any(r["image/iou_tiny"] != r["track/iou_tiny"] for r in rows)
    report = json.loads((tmp / "run" / "report.json").read_text())
    assert report["kind"] == "usam.video_report"
    assert set(report["scores"]) == {
        "predicted_iou",
        "object_score",
        "entropy",
        "h_task",
        "image/iou_tiny",
        "track/iou_tiny",
    }
    # the report is score_report over the rows it wrote
    iou = np.array([float(r["iou"]) for r in rows])
    cols = {s: np.array([float(r[s]) for r in rows]) for s in report["scores"]}
    again = score_report(iou, cols, r_points=11)
    for s, v in again["scores"].items():
        for k in ("pearson", "failure_auroc", "relative_auc"):
            a, b = v[k], report["scores"][s][k]
            # the CSV keeps 10 significant digits
            assert (math.isnan(a) and b is None) or a == pytest.approx(b, rel=1e-5)
    for name in ("scores.csv", "frames_to_check.csv", "frames_to_check.png", "summary.json"):
        assert (tmp / "run" / name).is_file()


def test_merging_frames_gives_the_numbers_computed_by_hand(compose_cfg, tmp_path):
    """Four frames written by hand (see test_track_metrics for the arithmetic)."""
    path = tmp_path / "shard0" / "frames.csv"
    path.parent.mkdir()
    rows = [
        ("v", 0, 1, 10, 9, 0.9, 0.9),
        ("v", 1, 1, 10, 2, 0.2, 0.2),
        ("w", 0, 2, 10, 7, 0.7, 0.5),
        ("w", 1, 2, 10, 4, 0.4, 0.7),
    ]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "frame", "object", "gt_area", "pred_area", "iou", "predicted_iou"])
        w.writerows(rows)
    cfg = compose_cfg("evaluate_video", [f"frames=[{path.parent}]", "r_points=3"])
    summary = run(cfg)
    s = summary["scores"]["predicted_iou"]
    assert (summary["frames"], summary["failures"]) == (4, 2)
    assert summary["mean_iou"] == pytest.approx(0.55)
    assert s["relative_auc"] == pytest.approx(0.9)
    assert s["failure_auroc"] == pytest.approx(0.75)


def test_shards_split_the_videos_and_a_gt_mask_start_works(
    compose_cfg, tmp_path, one_thread, caplog
):
    root = davis_tree(tmp_path / "DAVIS")
    cfg = compose_cfg(
        "evaluate_video",
        [
            "dataset=davis",
            f"dataset.root={root}",
            "dataset.resolution=480p",
            "sam_model=random",
            "shard.index=1",
            "shard.count=2",
            "init=mask",
        ],
    )
    with caplog.at_level(logging.WARNING):
        summary = run(cfg)
    assert "RANDOM" in caplog.text
    with open(tmp_path / "run" / "frames.csv") as f:
        got = [(r["video"], r["frame"], r["object"]) for r in csv.DictReader(f)]
    assert got == [("cars", "1", "4"), ("cars", "2", "4")]
    assert summary["init"] == "mask" and summary["shard"] == {"index": 1, "count": 2}


def test_bad_options_are_one_line_errors(compose_cfg, tmp_path):
    with pytest.raises(UsamError, match="frames.csv"):
        run(compose_cfg("evaluate_video", [f"frames=[{tmp_path / 'nothing'}]"]))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(UsamError, match="not a usam.evaluate_video"):
        run(compose_cfg("evaluate_video", [f"frames=[{bad}]"]))


def test_sav_val_frames_are_numbered_at_24_fps_and_a_vanished_object_is_scored(
    compose_cfg, tmp_path, one_thread
):
    """SA-V val: annotations every 4th of the 24 fps JPEG frames; object 7 is empty at 4."""
    from tests.test_sav import make_val

    root = make_val(tmp_path / "SAV")
    cfg = compose_cfg("evaluate_video", ["dataset=sav", f"dataset.root={root}", "sam_model=random"])
    summary = run(cfg)
    with open(tmp_path / "run" / "frames.csv") as f:
        rows = list(csv.DictReader(f))
    # v2 has one annotated frame only: nothing to score after it
    assert [(r["video"], r["frame"], r["object"]) for r in rows] == [
        ("v1", "4", "1"),
        ("v1", "4", "7"),
        ("v1", "8", "1"),
        ("v1", "8", "7"),
    ]
    lost = rows[1]
    assert int(lost["gt_area"]) == 0
    assert float(lost["iou"]) == (1.0 if int(lost["pred_area"]) == 0 else 0.0)
    assert summary["frames"] == 4


def test_sav_train_videos_are_tracked_in_their_mp4(compose_cfg, tmp_path, one_thread):
    """SA-V train: frames from the mp4, annotated every 4th frame (vid_c: frames 0, 4, 8)."""
    from tests.test_sav import make_train

    root = make_train(tmp_path / "SAV")
    cfg = compose_cfg(
        "evaluate_video",
        [
            "dataset=sav",
            f"dataset.root={root}",
            "dataset.split=train",
            "sam_model=random",
            "shard.index=2",
            "shard.count=3",
        ],
    )
    run(cfg)
    with open(tmp_path / "run" / "frames.csv") as f:
        got = [(r["video"], r["frame"], r["object"]) for r in csv.DictReader(f)]
    assert got == [("vid_c", "4", "1"), ("vid_c", "8", "1")]
