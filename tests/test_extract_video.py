"""python -m usam.extract_video: tracked frames as ordinary records the container and trainer read."""

from __future__ import annotations

import json
import math

import numpy as np
from safetensors.numpy import load_file

from tests.video_trees import tracking_davis as davis_tree
from usam import container as container_stage
from usam import train as train_stage
from usam.container import Container
from usam.extract_video import run


def test_tracked_frames_become_records_that_container_and_trainer_consume(
    compose_cfg, tmp_path, one_thread
):
    root = davis_tree(tmp_path / "DAVIS")
    cfg = compose_cfg(
        "extract_video",
        [
            "dataset=davis",
            f"dataset.root={root}",
            "dataset.resolution=480p",
            "sam_model=random",
            "sam_model.sizes=[tiny,small]",
        ],
    )
    summary = run(cfg)
    assert (summary["records"], summary["instances"], summary["done"]) == (7, 10, 2)
    assert summary["random_weights"] is True and summary["models"] == ["tiny", "small"]
    out = tmp_path / "inference" / "davis" / "val_track"
    rec = json.loads((out / "JPEGImages/480p/dance/00002.json").read_text())
    assert rec["kind"] == "usam.record" and rec["mode"] == "track" and rec["group"] == "dance"
    # frame 2 of dance: objects 1 and 2 tracked, object 3 lost (empty GT); 2 and 3 started later
    assert [i["id"] for i in rec["instances"]] == [1, 2, 3]
    assert [i["start_frame"] for i in rec["instances"]] == [0, 1, 0]
    assert [i["gt_area"] for i in rec["instances"]] == [20 * 25, 8 * 10, 0]
    for size in ("tiny", "small"):
        f = rec["fields"][size]["original"]
        assert f["iou"] == f["unsupervised_iou"] and f["sam_score"] == f["unsupervised_sam_score"]
        assert all(b in (0, 1, 2) for b in f["best"])
        assert all(v is None for v in f["iou_dense_prompt"] + f["h_all"] + f["h_prompt"])
        # the lost object: IoU 1 if the track is empty too, else 0
        assert f["iou"][2] == (1.0 if f["pred_area"][2] == 0 else 0.0)
    tensors = load_file(out / "JPEGImages/480p/dance/00002.safetensors")
    assert tensors["tiny/original/mask_tokens"].shape == (3, 3, 256)
    assert not np.allclose(tensors["tiny/original/iou_token"], tensors["small/original/iou_token"])
    first = json.loads((out / "JPEGImages/480p/dance/00000.json").read_text())
    assert first["instances"] == []  # the prompted frame: nothing tracked yet
    assert first["fields"]["small"]["original"]["iou"] == []

    container_dir = tmp_path / "container"
    c_cfg = compose_cfg("container", ["dataset=davis", f"roots=[{out}]", f"out={container_dir}"])
    c_summary = container_stage.run(c_cfg)
    assert c_summary["skipped"] == 0  # frames without a tracked object are zero rows
    c = Container.open(container_dir)
    assert len(c) == 20  # 10 (frame, object) pairs x 2 sizes
    iou_tiny = np.asarray(c.column("iou_tiny"))
    assert np.isfinite(iou_tiny).all()
    # the row's mask token is the kept mask's: tokens[best] of the record
    best = rec["fields"]["tiny"]["original"]["best"]
    kept = tensors["tiny/original/mask_tokens"][np.arange(3), best]
    tokens = np.asarray(c.tokens)
    assert any(np.allclose(tokens[r, 1], kept[0]) for r in range(len(c)))

    t_cfg = compose_cfg(
        "train",
        [
            f"container={container_dir}",
            "predictor=iou_tiny",
            "predictor.epochs=2",
            "predictor.batch_size=4",
            "predictor.lr=0.01",
            "predictor.momentum=0.5",
            "trainer.progress=false",
            f"out_dir={tmp_path / 'models'}",
        ],
    )
    summary = train_stage.run(t_cfg)
    assert (tmp_path / "models" / "iou_tiny" / "model.safetensors").is_file()
    assert summary["target"] == "iou_tiny" and math.isfinite(summary["val_loss"])

    again = run(cfg)  # a second run finds every frame's record and tracks nothing
    assert (again["done"], again["skipped"], again["records"]) == (0, 2, 0)
