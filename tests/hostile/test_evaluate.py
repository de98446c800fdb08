"""Hostile and careless evaluation inputs: bad evaluator options are one UsamError line naming
the key (before any file is read), and bundles made for other SAM tokens are refused with
the same check inference uses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from usam.cli import user_error
from usam.container import ContainerWriter
from usam.errors import UsamError
from usam.evaluate import Evaluator, run
from usam.mlp import UsamMLP, save_bundle
from usam.schema import TARGETS
from usam.synthetic import make_record, write_record

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def container(tmp_path_factory) -> Path:
    """SAM 2.1 rows of tiny and large, 6 images x 2 instances, IoUs differing per row."""
    tmp = tmp_path_factory.mktemp("eval")
    for g in range(6):
        fields = {
            m: {
                "original": {
                    "iou": [0.3 + g / 20 + k / 10, 0.6 - g / 30],
                    "iou_dense_prompt": [0.5 + g / 20, 0.9 - k / 10],
                }
            }
            for k, m in enumerate(("tiny", "large"))
        }
        write_record(
            tmp / "records",
            *make_record(
                f"img/{g}.jpg",
                f"g{g}",
                dataset="coco",
                instances=[(1, 50), (2, 60)],
                models=["tiny", "large"],
                fields=fields,
            ),
        )
    ContainerWriter(roots=[tmp / "records"], out=tmp / "container").write()
    return tmp / "container"


def bundle(root: Path, target: str, **config) -> Path:
    torch.manual_seed(len(target))
    config = {
        "target": target,
        "output_shift": TARGETS[target],
        "sam_version": "sam2.1",
        "models": ["tiny", "large"],
        **config,
    }
    save_bundle(root / target, UsamMLP(hidden=[8]), config)
    return root


BAD_OPTIONS = [
    ({"batch_size": 0}, "evaluator.batch_size must be a whole number >= 1, got 0"),
    ({"batch_size": "many"}, "evaluator.batch_size must be a whole number >= 1, got 'many'"),
    ({"batch_size": 2.5}, "evaluator.batch_size must be a whole number >= 1, got 2.5"),
    ({"r_points": 1}, "evaluator.r_points must be a whole number in [2, 100001], got 1"),
    ({"r_max": 0}, "evaluator.r_max must be a number in (0, 1], got 0"),
    ({"r_max": 1.5}, "evaluator.r_max must be a number in (0, 1], got 1.5"),
    ({"val_fraction": "abc"}, "evaluator.val_fraction must be a number in (0, 1), got 'abc'"),
    ({"val_fraction": 0}, "evaluator.val_fraction must be a number in (0, 1), got 0"),
    ({"seed": 1.5}, "evaluator.seed must be a whole number >= 0, got 1.5"),
    ({"augmented": "no"}, "evaluator.augmented must be true or false, got 'no'"),
    ({"plots": 1}, "evaluator.plots must be true or false, got 1"),
    ({"tensorboard": None}, "evaluator.tensorboard must be true or false, got None"),
    (
        {"use_cases": ["segmentation", "magic"]},
        "unknown use case(s) ['magic']; choose from "
        "model_selection, prompt_refinement, task_supervision, segmentation",
    ),
]


@pytest.mark.parametrize("options, message", BAD_OPTIONS, ids=[str(o) for o, _ in BAD_OPTIONS])
def test_a_bad_evaluator_option_is_one_line_naming_the_key(options, message):
    with pytest.raises(UsamError) as err:
        Evaluator(device="cpu", **options)
    assert str(err.value) == message


def test_the_stage_checks_options_before_it_looks_for_the_container(compose_cfg, tmp_path):
    cfg = compose_cfg(
        "evaluate", [f"container={tmp_path / 'none'}", "evaluator.batch_size=0", "device=cpu"]
    )
    with pytest.raises(Exception) as err:
        run(cfg)
    assert str(user_error(err.value)) == "evaluator.batch_size must be a whole number >= 1, got 0"
    assert not (tmp_path / "run" / "report.json").exists()


MISMATCHES = [
    # (bundle target, its config, evaluator options, the error)
    (
        "iou_large",
        {"sam_version": "sam2.0"},
        {},
        "estimator 'iou_large' was trained on sam2.0 tokens but the container {c} (rows "
        "evaluated here) is sam2.1: use sam2.0 tokens or bundles trained on this version",
    ),
    (
        "task_gap",
        {"models": ["tiny", "small"]},
        {},
        "estimator 'task_gap' was trained on tokens of SAM tiny+small but the container {c} "
        "(rows evaluated here) is SAM large: use that size or bundles trained on large tokens",
    ),
    (
        "prompt_gap",
        {"filter_model": "large"},
        {"model": "tiny"},
        "estimator 'prompt_gap' was trained on tokens of SAM large but the container {c} "
        "(rows evaluated here) is SAM tiny: use that size or bundles trained on tiny tokens",
    ),
    # model selection ranks tiny's rows with model_gap, whatever model the rest evaluates
    (
        "model_gap",
        {"filter_model": "large"},
        {},
        "estimator 'model_gap' was trained on tokens of SAM large but the container {c} "
        "(rows evaluated here) is SAM tiny: use that size or bundles trained on tiny tokens",
    ),
]


@pytest.mark.parametrize(
    "target, config, options, message", MISMATCHES, ids=[m[0] for m in MISMATCHES]
)
def test_bundles_of_other_sam_tokens_are_refused(
    container, tmp_path, target, config, options, message
):
    root = bundle(tmp_path / "models", "iou_tiny")  # a fitting one beside it
    bundle(root, target, **config)
    ev = Evaluator(device="cpu", plots=False, tensorboard=False, **options)
    with pytest.raises(UsamError) as err:
        ev.run(container=container, estimators=root, split="all", run_dir=tmp_path / "run")
    assert str(err.value) == message.format(c=container)
    assert not (tmp_path / "run" / "report.json").exists()


def test_bundles_that_fit_are_evaluated(container, tmp_path):
    root = bundle(tmp_path / "models", "model_gap", filter_model=None, sam_version="sam2.0+sam2.1")
    bundle(root, "iou_large", filter_model="large")  # the evaluated model's rows only
    bundle(root, "task_gap", sam_version=None, models=None)  # says nothing: not checked
    ev = Evaluator(device="cpu", plots=False, tensorboard=False)
    summary = ev.run(container=container, estimators=root, split="all", run_dir=tmp_path / "run")
    assert summary["model"] == "large"
    assert "usam_model_gap" in summary["relative_auc"]["model_selection"]
    assert "usam_task_gap" in summary["relative_auc"]["task_supervision"]
