"""Hyperparameter search: SMAC 2 (BO and Hyperband) on tiny containers and on known objectives."""

from __future__ import annotations

import json
import math

import pytest
from test_train import hand_container, tensorboard_tags, train_cfg

from usam.errors import UsamError
from usam.hpo import NoHPO, SmacHPO
from usam.train import run

pytest.importorskip("smac", reason="smac is not installed: pip install smac (see README)")

SMALL = [
    "hpo.epochs=[1,3]",
    "hpo.batch_size=[8,32]",
    "trainer.progress=false",
    "hpo.progress=false",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def bowl(hp: dict) -> float:
    """A known objective: best at lr = 0.01, momentum = 0.5 (module level, so Dask can pickle it)."""
    return (math.log10(hp["lr"]) + 2) ** 2 + (hp["momentum"] - 0.5) ** 2 + 0.001 * hp["epochs"]


def test_no_hpo_returns_the_configured_values(tmp_path):
    hp = {"lr": 0.1, "epochs": 3}
    assert NoHPO().search(bowl, hp, out_dir=tmp_path, name="x") == (hp, {"method": "none"})


def test_smac_incumbent_is_the_best_trial(tmp_path):
    seen = []

    def objective(hp):
        seen.append(hp)
        return bowl(hp)

    base = {
        "lr": 1.0,
        "epochs": 1,
        "batch_size": 1,
        "momentum": 0.0,
        "weight_decay": 0.001,
        "hidden": [4],
    }
    best, info = SmacHPO(n_trials=6, progress=False).search(
        objective, base, out_dir=tmp_path, name="t"
    )
    assert info["trials_run"] == len(seen) == 6
    # SMAC is told losses to 5 significant digits (usam.hpo.told)
    assert info["best_loss"] == min(info["trial_losses"]) == pytest.approx(bowl(best), rel=5e-5)
    # searched keys come from the space, the rest from the configured values
    assert best["weight_decay"] == 0.001 and best["hidden"] == [4]
    assert (
        1e-4 <= best["lr"] <= 0.1 and 5 <= best["epochs"] <= 80 and 16 <= best["batch_size"] <= 256
    )
    assert (tmp_path / "t" / "0" / "runhistory.json").is_file()


def test_smac_run_saves_the_incumbent(tmp_path, compose_cfg):
    container = hand_container(tmp_path, groups=5)
    cfg = train_cfg(
        compose_cfg,
        container,
        "predictor=task_gap",
        "hpo=smac",
        "hpo.n_trials=3",
        *SMALL,
        f"out_dir={tmp_path / 'models'}",
    )
    summary = run(cfg)
    hpo = summary["hpo"]
    assert hpo["method"] == "smac" and hpo["trials_run"] == 3
    config = json.loads((tmp_path / "models" / "task_gap" / "config.json").read_text())
    hp = config["hyperparameters"]
    assert {k: hp[k] for k in ("batch_size", "epochs", "lr", "momentum")} == hpo["incumbent"]
    assert 1 <= hp["epochs"] <= 3 and 8 <= hp["batch_size"] <= 32
    # SMAC's own files stay in the run folder
    assert (tmp_path / "run" / "hpo" / "task_gap" / "0" / "runhistory.json").is_file()
    tags = tensorboard_tags(tmp_path / "run" / "tb" / "task_gap")
    assert {"hpo/trial_loss", "hpo/best_loss", "loss/train", "loss/val", "val/r2"} <= tags
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run" / "tb" / "task_gap"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("hpo/trial_loss")] == [0, 1, 2]
    assert [e.value for e in acc.Scalars("hpo/trial_loss")] == pytest.approx(hpo["trial_losses"])


def test_hyperband_run_saves_the_incumbent(tmp_path, compose_cfg):
    container = hand_container(tmp_path, groups=5)
    cfg = train_cfg(
        compose_cfg,
        container,
        "predictor=iou_large",
        "hpo=smac_hyperband",
        "hpo.n_trials=5",
        "hpo.min_budget=1",
        "hpo.max_budget=3",
        *SMALL,
        f"out_dir={tmp_path / 'models'}",
    )
    summary = run(cfg)
    assert summary["hpo"]["method"] == "smac_hyperband" and summary["hpo"]["trials_run"] == 5
    config = json.loads((tmp_path / "models" / "iou_large" / "config.json").read_text())
    assert config["hyperparameters"]["epochs"] == 3  # the incumbent is trained at the top budget
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run" / "tb" / "iou_large"))
    acc.Reload()
    budgets = {e.value for e in acc.Scalars("hpo/trial_epochs")}
    assert budgets == {1.0, 3.0}  # eta = 3: brackets at 1 and 3 epochs


def test_parallel_trials_through_dask(tmp_path, compose_cfg):
    container = hand_container(tmp_path, groups=5)
    cfg = train_cfg(
        compose_cfg,
        container,
        "predictor=iou_tiny",
        "hpo=smac",
        "hpo.n_trials=4",
        "hpo.n_workers=2",
        *SMALL,
        f"out_dir={tmp_path / 'models'}",
    )
    hpo = run(cfg)["hpo"]
    assert hpo["trials_run"] == 4 and hpo["best_loss"] == min(hpo["trial_losses"])
    # every sent trial came back under its own configuration (none left "running")
    history = json.loads(
        (tmp_path / "run" / "hpo" / "iou_tiny" / "0" / "runhistory.json").read_text()
    )
    assert history["stats"] == {"submitted": 4, "finished": 4, "running": 0}


def test_bad_settings():
    with pytest.raises(UsamError, match="n_trials"):
        SmacHPO(n_trials=0)
    with pytest.raises(UsamError, match="min_budget"):
        SmacHPO(multi_fidelity=True, min_budget=10, max_budget=5)
    with pytest.raises(UsamError, match="initial_design"):
        SmacHPO(initial_design=0)


def test_default_space_is_log_and_the_published_one_uniform(compose_cfg):
    from hydra.utils import instantiate

    def scales(option: str) -> dict[str, bool]:
        runner = instantiate(compose_cfg("train", [f"hpo={option}"]).hpo)
        return {h.name: bool(getattr(h, "log", False)) for h in runner.space().values()}

    assert scales("smac") == {"lr": True, "batch_size": True, "momentum": False, "epochs": False}
    assert scales("smac_published") == {
        "lr": False,
        "batch_size": False,
        "momentum": False,
        "epochs": False,
    }
    # Hyperband: epochs are the budget, not searched
    assert scales("smac_hyperband_published") == {
        "lr": False,
        "batch_size": False,
        "momentum": False,
    }
    published = compose_cfg("train", ["hpo=smac_hyperband_published"]).hpo
    assert (published.min_budget, published.max_budget, published.eta) == (5, 35, 3)
    assert (published.initial_design, published.incumbent_epochs, published.n_trials) == (
        5,
        60,
        100,
    )
    ours = compose_cfg("train", ["hpo=smac_hyperband"]).hpo
    assert ours.initial_design is None and ours.incumbent_epochs is None and ours.log_scale


def test_initial_design_size_and_incumbent_epochs(tmp_path):
    base = {"lr": 1.0, "epochs": 1, "batch_size": 1, "momentum": 0.0}
    # SMAC's default initial design is capped at 25% of the trials: 2 of 8
    _, info = SmacHPO(n_trials=8, progress=False).search(
        bowl, base, out_dir=tmp_path / "a", name="t"
    )
    assert info["initial_design"] == 2 and info["space"] == "log"
    best, info = SmacHPO(n_trials=8, initial_design=5, log_scale=False, progress=False).search(
        bowl, base, out_dir=tmp_path / "b", name="t"
    )
    assert info["initial_design"] == 5 and info["space"] == "uniform"
    assert 5 <= best["epochs"] <= 80  # BO searches epochs; no incumbent_epochs given
    # Hyperband: the incumbent is retrained for incumbent_epochs, not the top budget
    best, info = SmacHPO(
        n_trials=6,
        multi_fidelity=True,
        min_budget=1,
        max_budget=3,
        initial_design=3,
        incumbent_epochs=7,
        progress=False,
    ).search(bowl, base, out_dir=tmp_path / "c", name="t")
    assert best["epochs"] == 7 and info["incumbent"]["epochs"] == 7
    assert info["initial_design"] == 3
