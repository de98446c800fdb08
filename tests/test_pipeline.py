"""usam.pipeline: the four stages end to end on the bundled sample (SAM 2 with random weights)."""

from __future__ import annotations

import json
import subprocess
import sys

from usam.pipeline import available_targets, override_key, stage_overrides


def test_overrides_go_to_the_stages_that_know_them():
    ovr = [
        "dataset=davis",
        "sam_model=random",
        "augment=paper",
        "predictor=iou_tiny",
        "predictor.lr=0.01",
        "hpo=smac",
        "+trainer.refit_all=false",
        "++evaluator.model=tiny",
        "pipeline.targets=[iou_tiny]",
        "paths.data=/d",
    ]
    assert override_key("~+sam_model.sizes=[tiny]") == "sam_model"
    assert stage_overrides("extract", ovr) == [
        "dataset=davis",
        "sam_model=random",
        "augment=paper",
        "paths.data=/d",
    ]
    assert stage_overrides("container", ovr) == ["dataset=davis", "paths.data=/d"]
    assert stage_overrides("train", ovr) == [
        "dataset=davis",
        "predictor.lr=0.01",
        "hpo=smac",
        "++trainer.refit_all=false",
        "paths.data=/d",
    ]
    assert stage_overrides("evaluate", ovr) == [
        "dataset=davis",
        "++evaluator.model=tiny",
        "paths.data=/d",
    ]


def test_targets_follow_the_models():
    assert available_targets(["tiny", "small", "base_plus", "large"]) == [
        "iou_tiny",
        "iou_small",
        "iou_base_plus",
        "iou_large",
        "iou_dense_prompt",
        "unsupervised_iou",
        "model_gap",
        "task_gap",
        "prompt_gap",
    ]
    assert available_targets(["tiny"]) == [
        "iou_tiny",
        "iou_dense_prompt",
        "unsupervised_iou",
        "task_gap",
        "prompt_gap",
    ]


def test_pipeline_end_to_end_on_the_sample(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "usam.pipeline",
            "sam_model=random",
            "sam_model.sizes=[tiny,large]",
            "sam_model.image_size=64",
            "predictor.epochs=3",
            f"paths.inference={tmp_path / 'inference'}",
            f"paths.log_dir={tmp_path / 'outputs'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["random_weights"] is True
    assert summary["targets"] == [
        "iou_tiny",
        "iou_large",
        "iou_dense_prompt",
        "unsupervised_iou",
        "model_gap",
        "task_gap",
        "prompt_gap",
    ]
    folders = {s: tmp_path / d for s, d in summary["run_folders"].items()}
    assert all(
        f.is_dir() and (f / "summary.json").is_file() for s, f in folders.items() if s != "train"
    )
    assert summary["stages"]["extract"]["done"] == 6
    for target in summary["targets"]:
        assert (tmp_path / summary["predictors"] / target / "model.safetensors").is_file()
    report = json.loads((folders["evaluate"] / "report.json").read_text())
    assert report["random_weights"] is True
    assert (folders["evaluate"] / "curves_model_selection.png").is_file()
    assert "RANDOM weights" in res.stderr + res.stdout
