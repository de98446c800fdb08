"""Hostile and careless training inputs: every bad option is one UsamError line naming the key,
raised before the container is read; NaN / inf data and a diverging loss stop training; no
bundle with a non-finite weight is ever written."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from usam.cli import user_error
from usam.container import Container, ContainerWriter
from usam.errors import UsamError
from usam.mlp import UsamMLP
from usam.synthetic import make_record, write_record
from usam.train import Diverged, Objective, Trainer, check_finite_model, run

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


def small_container(tmp_path: Path, groups: int = 4) -> Path:
    """`groups` images x 2 instances x (tiny, large); iou differs per model, image and instance."""
    root = tmp_path / "records"
    for g in range(groups):
        fields = {
            m: {"original": {"iou": [0.25 + g / 16 + k / 8, 0.5 + g / 32 + k / 16]}}
            for k, m in enumerate(("tiny", "large"))
        }
        write_record(
            root,
            *make_record(
                f"img/{g}.jpg",
                f"g{g}",
                dataset="coco",
                instances=[(1, 50), (2, 60)],
                models=["tiny", "large"],
                fields=fields,
            ),
        )
    out = tmp_path / "container"
    ContainerWriter(roots=[root], out=out).write()
    return out


def train_cfg(compose_cfg, tmp_path: Path, container: Path, *overrides: str):
    return compose_cfg(
        "train",
        [
            f"container={container}",
            f"out_dir={tmp_path / 'models'}",
            "trainer.progress=false",
            "trainer.device=cpu",
            *overrides,
        ],
    )


def refused(cfg, message: str, tmp_path: Path) -> None:
    """run(cfg) fails with exactly `message` and writes no bundle and no TensorBoard folder."""
    with pytest.raises(Exception) as err:
        run(cfg)
    # what the command line prints (Hydra wraps what a configured constructor raises)
    assert str(user_error(err.value)) == message
    assert not (tmp_path / "models").exists() and not (tmp_path / "run" / "tb").exists()


# The container does not exist: each of these must fail on the option, before it is looked for.
BAD_OPTIONS = [
    ("predictor.momentum=-1", "predictor.momentum must be a number in [0, 1), got -1"),
    ("predictor.momentum=1", "predictor.momentum must be a number in [0, 1), got 1"),
    ("predictor.weight_decay=-1", "predictor.weight_decay must be a number >= 0, got -1"),
    ("predictor.epochs=abc", "predictor.epochs must be a whole number >= 1, got 'abc'"),
    ("predictor.epochs=2.5", "predictor.epochs must be a whole number >= 1, got 2.5"),
    ("predictor.epochs=0", "predictor.epochs must be a whole number >= 1, got 0"),
    ("predictor.epochs=nan", "predictor.epochs must be a whole number >= 1, got nan"),
    ("predictor.lr=abc", "predictor.lr must be a number > 0, got 'abc'"),
    ("predictor.lr=0", "predictor.lr must be a number > 0, got 0"),
    ("predictor.lr=inf", "predictor.lr must be a finite number > 0, got inf"),
    ("predictor.lr=true", "predictor.lr must be a number > 0, got True"),
    ("predictor.lr=[0.1]", "predictor.lr must be a number > 0, got [0.1]"),
    ("predictor.batch_size=0", "predictor.batch_size must be a whole number >= 1, got 0"),
    ("predictor.batch_size=-8", "predictor.batch_size must be a whole number >= 1, got -8"),
    (
        "predictor.hidden=[0]",
        "predictor.hidden[0] must be a whole number in [1, 65536], got 0",
    ),
    (
        "predictor.hidden=[512,-3]",
        "predictor.hidden[1] must be a whole number in [1, 65536], got -3",
    ),
    (
        "predictor.hidden=[64,1.5]",
        "predictor.hidden[1] must be a whole number in [1, 65536], got 1.5",
    ),
    (
        "predictor.hidden=[]",
        "predictor.hidden must name at least one hidden layer, e.g. [512, 512]",
    ),
    (
        "predictor.hidden=512",
        "predictor.hidden must be a list of layer widths such as [512, 512], got 512",
    ),
    (
        "predictor.hidden=[65536,65536]",
        "predictor.hidden=[65536, 65536]: 4,328,718,337 parameters, more than the "
        "100,000,000 allowed",
    ),
    ("predictor.augmented=maybe", "predictor.augmented must be true or false, got 'maybe'"),
    ("trainer.val_fraction=1", "trainer.val_fraction must be a number in (0, 1), got 1"),
    ("trainer.val_fraction=abc", "trainer.val_fraction must be a number in (0, 1), got 'abc'"),
    ("trainer.eval_batch_size=0", "trainer.eval_batch_size must be a whole number >= 1, got 0"),
    ("trainer.seed=-1", "trainer.seed must be a whole number >= 0, got -1"),
    ("trainer.refit_all=no", "trainer.refit_all must be true or false, got 'no'"),
    ("trainer.progress=1", "trainer.progress must be true or false, got 1"),
    # the hpo group: ConfigSpace / SMAC would fail deep inside
    ("hpo=smac hpo.n_trials=0", "hpo.n_trials must be a whole number >= 1, got 0"),
    (
        "hpo=smac hpo.lr=[0.1,0.01]",
        "hpo.lr must be a range [low, high] with low < high, got [0.1, 0.01]",
    ),
    ("hpo=smac hpo.lr=[0,0.1]", "hpo.lr[0] must be a number > 0, got 0"),
    ("hpo=smac hpo.momentum=[0.5,1.5]", "hpo.momentum[1] must be a number in [0, 1), got 1.5"),
    (
        "hpo=smac hpo.batch_size=[16,abc]",
        "hpo.batch_size[1] must be a whole number >= 1, got 'abc'",
    ),
    ("hpo=smac hpo.epochs=5", "hpo.epochs must be a range [low, high], got 5"),
    ("hpo=smac_hyperband hpo.eta=1", "hpo.eta must be a whole number >= 2, got 1"),
    (
        "hpo=smac_hyperband hpo.min_budget=40",
        "need 1 <= hpo.min_budget <= hpo.max_budget, got 40, 35",
    ),
    ("hpo=smac hpo.walltime_limit=-5", "hpo.walltime_limit must be a number > 0, got -5"),
    ("hpo=smac hpo.n_workers=two", "hpo.n_workers must be a whole number >= 1, got 'two'"),
]


@pytest.mark.parametrize("overrides, message", BAD_OPTIONS, ids=[o for o, _ in BAD_OPTIONS])
def test_a_bad_option_is_one_line_naming_the_key_before_any_data_is_read(
    compose_cfg, tmp_path, overrides, message
):
    cfg = train_cfg(compose_cfg, tmp_path, tmp_path / "no_container", *overrides.split())
    refused(cfg, message, tmp_path)


def test_an_out_dir_that_is_a_file_is_refused_before_training(compose_cfg, tmp_path):
    (tmp_path / "models").write_text("my notes")
    cfg = train_cfg(compose_cfg, tmp_path, tmp_path / "no_container")
    with pytest.raises(UsamError) as err:
        run(cfg)
    assert str(err.value) == (
        f"out_dir: {tmp_path / 'models'} exists and is not a folder; choose another out_dir"
    )
    assert (tmp_path / "models").read_text() == "my notes"


def test_the_command_line_prints_the_line_and_exits_1_without_a_traceback(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "usam.train",
            "predictor.momentum=-1",
            f"container={tmp_path / 'none'}",
            f"paths.log_dir={tmp_path / 'outputs'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "error: predictor.momentum must be a number in [0, 1), got -1"
    )


def test_good_values_in_other_types_are_accepted(tmp_path):
    hp = Trainer(device="cpu").hyperparameters(
        {
            "target": "iou_tiny",
            "epochs": 3.0,
            "batch_size": 7,
            "lr": 1,
            "momentum": 0,
            "weight_decay": 0,
            "hidden": [8, 4.0],
        },
        {},
        "coco",
    )
    assert hp == {
        "batch_size": 7,
        "epochs": 3,
        "lr": 1.0,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "hidden": [8, 4],
    }
    assert type(hp["epochs"]) is int and type(hp["lr"]) is float


# -- non-finite data ------------------------------------------------------------------------
def corrupt(container: Path, name: str, model: str, instance: int, *, column: str | None, value):
    """Write `value` into one row's tokens (column=None) or one column of a built container."""
    c = Container.open(container)
    row = int(
        np.flatnonzero((c.names == name) & (c.models == model) & (c["instance_id"] == instance))[0]
    )
    file = container / ("tokens.npy" if column is None else f"columns/{column}.npy")
    a = np.load(file, mmap_mode="r+")
    if column is None:
        a[row, 1, 17] = value  # one coordinate of the mask token
    else:
        a[row] = value
    a.flush()
    del a
    return row


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_tokens_stop_training_naming_the_image(compose_cfg, tmp_path, value):
    container = small_container(tmp_path)
    corrupt(container, "img/2.jpg", "large", 2, column=None, value=value)
    cfg = train_cfg(
        compose_cfg,
        tmp_path,
        container,
        "predictor=iou_tiny",
        f"val_container={container}",
        "predictor.epochs=1",
    )
    refused(
        cfg,
        f"{container} (train): 1 of 16 rows: tokens hold NaN or inf (first: image 'img/2.jpg', "
        "model large); the container is damaged, rebuild it with python -m usam.container from "
        "intact records",
        tmp_path,
    )


def test_an_infinite_target_stops_training_a_nan_target_is_a_dropped_row(compose_cfg, tmp_path):
    container = small_container(tmp_path)
    corrupt(container, "img/3.jpg", "tiny", 1, column="iou_tiny", value=np.inf)
    cfg = train_cfg(
        compose_cfg,
        tmp_path,
        container,
        "predictor=iou_tiny",
        f"val_container={container}",
        "predictor.epochs=1",
    )
    refused(
        cfg,
        f"{container} (train): 1 of 16 rows: iou_tiny is infinite (first: image 'img/3.jpg', "
        "model tiny); the container is damaged, rebuild it with python -m usam.container from "
        "intact records",
        tmp_path,
    )
    # NaN = "no value" (a model missing for an image): the row is dropped and counted
    corrupt(container, "img/3.jpg", "tiny", 1, column="iou_tiny", value=np.nan)
    summary = run(cfg)
    assert summary["rows"]["train"] == 15 and summary["rows"]["train_dropped_nan"] == 1


def test_a_diverging_loss_stops_training_and_writes_no_bundle(compose_cfg, tmp_path):
    container = small_container(tmp_path)
    cfg = train_cfg(
        compose_cfg,
        tmp_path,
        container,
        "predictor=iou_tiny",
        "predictor.lr=1e30",
        "predictor.momentum=0.9",
        "predictor.batch_size=4",
        "predictor.epochs=5",
    )
    with pytest.raises(Diverged) as err:
        run(cfg)
    assert str(err.value).startswith("iou_tiny (train split): the loss became nan in epoch ")
    assert str(err.value).endswith("(lr=1e+30, momentum=0.9, batch_size=4); lower predictor.lr")
    assert not (tmp_path / "models").exists()


def test_a_diverged_search_trial_scores_the_worst_loss_and_the_search_goes_on(tmp_path):
    trainer = Trainer(device="cpu", progress=False)
    data = trainer.load(container=small_container(tmp_path), target="iou_tiny")
    objective = Objective(trainer, data, {"hidden": [512, 512], "weight_decay": 0.001})
    hp = {"batch_size": 4, "epochs": 5, "momentum": 0.9}
    assert objective({**hp, "lr": 1e30}) == 1.0
    assert 0 < objective({**hp, "lr": 0.01}) < 0.25  # a sane setting still gets its real loss


def test_a_model_with_a_non_finite_weight_is_never_saved():
    model = UsamMLP(hidden=[8, 4])
    check_finite_model(model, "estimator iou_tiny")  # finite: passes
    with torch.no_grad():
        model.net[2].weight[3, 1] = math.inf  # the second hidden layer, not the first
    with pytest.raises(Diverged) as err:
        check_finite_model(model, "estimator iou_tiny")
    assert str(err.value) == (
        "estimator iou_tiny: weights ['net.2.weight'] are NaN or infinite; no bundle written"
    )


@pytest.mark.parametrize(
    "hidden, message",
    [
        ([0], "hidden[0] must be a whole number >= 1, got 0"),
        ([16, -2], "hidden[1] must be a whole number >= 1, got -2"),
        ([8, 2.5], "hidden[1] must be a whole number >= 1, got 2.5"),
    ],
)
def test_the_model_itself_refuses_a_zero_width(hidden, message):
    """Also what a hand-edited bundle config.json with such an architecture gets."""
    with pytest.raises(UsamError) as err:
        UsamMLP(hidden=hidden)
    assert str(err.value) == message
