"""usam.pipeline: the four stages end to end on the bundled sample (SAM 2 with random weights)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from usam import CONF_DIR
from usam.errors import UsamError
from usam.pipeline import (
    SET_BY_PIPELINE,
    STAGES,
    accepted_keys,
    available_targets,
    override_key,
    route,
    training_split,
)


def test_overrides_go_to_the_stages_that_know_them():
    ovr = [
        "dataset=davis",
        "sam_model=random",
        "augment=paper",
        "predictor.lr=0.01",
        "hpo=smac",
        "+trainer.refit_all=false",
        "++evaluator.model=tiny",
        "pipeline.targets=[iou_tiny]",
        "paths.data=/d",
        "+device=cpu",
        "val_container=/v",
        "overwrite=false",
    ]
    assert override_key("~+sam_model.sizes=[tiny]") == "sam_model"
    routed = route(ovr)
    assert routed["extract"] == [
        "dataset=davis",
        "sam_model=random",
        "augment=paper",
        "paths.data=/d",
    ]
    assert routed["container"] == ["dataset=davis", "paths.data=/d", "overwrite=false"]
    assert routed["train"] == [
        "dataset=davis",
        "predictor.lr=0.01",
        "hpo=smac",
        "++trainer.refit_all=false",
        "paths.data=/d",
        "++device=cpu",
        "val_container=/v",
    ]
    assert routed["evaluate"] == [
        "dataset=davis",
        "++evaluator.model=tiny",
        "paths.data=/d",
        "++device=cpu",
    ]


def test_every_group_and_key_of_every_stage_is_routed():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    for stage in STAGES:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name=stage, return_hydra_config=True)
        groups = [g for g in cfg.hydra.runtime.choices if not g.startswith("hydra")]
        keys = [k for k in cfg if k not in ("hydra", "stage")]
        assert {"paths", "dataset"} <= set(groups) and keys
        for name in dict.fromkeys([*groups, *keys]):
            if any(name in SET_BY_PIPELINE.get(s, {}) and name in accepted_keys(s) for s in STAGES):
                with pytest.raises(UsamError, match=f"'s {name} itself"):
                    route([f"++{name}.x=1"])
                continue
            assert f"++{name}.x=1" in route([f"++{name}.x=1"])[stage], (stage, name)
            # and it reaches no stage whose config lacks it
            for other in STAGES:
                if other != stage and name not in accepted_keys(other):
                    assert f"++{name}.x=1" not in route([f"++{name}.x=1"])[other]
    GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+bogus=1", "no stage of the pipeline accepts 'bogus'"),
        ("+trainr.refit_all=false", "no stage of the pipeline accepts 'trainr'"),
        ("predictor=iou_tiny", "pipeline.targets"),
        ("split=all", "the pipeline sets evaluate's split itself"),
        ("estimators=/m", "the pipeline sets evaluate's estimators itself"),
        ("predictors=/m", "the pipeline sets evaluate's predictors itself"),  # the old name
        ("container=/c", "the pipeline sets train's container itself"),
    ],
)
def test_an_override_no_stage_accepts_is_an_error(override, message):
    with pytest.raises(UsamError, match=message):
        route(["dataset=davis", override])


def test_training_split_by_protocol():
    assert training_split("auto", ["train", "val", "test"], "val", "davis") == "train"
    assert training_split("auto", ["val"], "val", "sample") is None
    assert training_split("auto", ["train", "val"], "train", "mose") is None
    assert training_split(None, ["train", "val"], "val", "mose") is None
    assert training_split("test", ["train", "val", "test"], "val", "sav") == "test"
    with pytest.raises(UsamError, match="equals dataset.split"):
        training_split("val", ["train", "val"], "val", "davis")
    with pytest.raises(UsamError, match="has splits val"):
        training_split("train", ["val"], "val", "sample")


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
        assert (tmp_path / summary["estimators"] / target / "model.safetensors").is_file()
    report = json.loads((folders["evaluate"] / "report.json").read_text())
    assert report["random_weights"] is True
    # one split (the sample's val, 2 videos): train on one video, evaluate the other
    assert (
        summary["protocol"]["name"] == "group split" and summary["protocol"]["train_split"] is None
    )
    assert summary["protocol"]["evaluation"] == "out-of-sample"
    assert report["protocol"]["status"] == "out-of-sample" and report["split"] == "val"
    assert report["protocol"]["groups"] == 1
    bundle = json.loads((tmp_path / summary["estimators"] / "task_gap" / "config.json").read_text())
    assert bundle["data"]["fit"] == "train" and bundle["data"]["seen_groups"] == 1
    assert "out-of-sample" in res.stderr + res.stdout
    assert (folders["evaluate"] / "curves_model_selection.png").is_file()
    assert "RANDOM weights" in res.stderr + res.stdout


def test_pipeline_trains_on_the_train_split_and_evaluates_the_other(tmp_path):
    """A dataset with a training split: both splits are extracted and contained, the
    estimators are fitted on train and evaluated on every row of val."""
    from video_trees import make_davis

    video = {"frames": 2, "size": (24, 32), "ids": (1, 2)}
    make_davis(
        tmp_path / "DAVIS",
        {v: video for v in ("bear", "cat", "dog", "elk", "fox")},
        {"train": ["bear", "cat", "dog"], "val": ["elk", "fox"]},
    )
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "usam.pipeline",
            "dataset=davis",
            "dataset.resolution=480p",
            "sam_model=random",
            "sam_model.sizes=[tiny]",
            "sam_model.image_size=64",
            "predictor.epochs=1",
            "pipeline.targets=[iou_tiny,task_gap]",
            "+device=cpu",
            f"paths.data={tmp_path}",
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
    protocol = summary["protocol"]
    assert protocol["name"] == "train/test splits" and protocol["train_split"] == "train"
    assert protocol["evaluation"] == "out-of-sample"
    assert set(summary["run_folders"]) == {
        "extract_train",
        "container_train",
        "extract",
        "container",
        "train",
        "evaluate",
    }
    assert summary["stages"]["extract_train"]["done"] == 6  # 3 videos x 2 frames
    assert summary["stages"]["extract"]["done"] == 4
    inference = tmp_path / "inference" / "davis"
    bundle = json.loads((tmp_path / summary["estimators"] / "task_gap" / "config.json").read_text())
    assert [c["path"] for c in bundle["data"]["containers"]] == [str(inference / "train_container")]
    assert bundle["data"]["fit"] == "train+val" and bundle["data"]["seen_groups"] == 3
    assert summary["stages"]["train"]["task_gap"]["device"] == "cpu"  # +device reached train
    report = json.loads((tmp_path / summary["run_folders"]["evaluate"] / "report.json").read_text())
    assert report["container"] == str(inference / "val_container") and report["split"] == "all"
    assert report["protocol"]["groups"] == 2 and report["rows"] == 2 * 2 * 2
