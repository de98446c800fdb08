"""Stage 3: training. Synthetic containers built through the real writer (usam/synthetic.py
-> usam.container.ContainerWriter) with targets whose answer is known by construction."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from usam.container import Container, ContainerWriter
from usam.errors import UsamError
from usam.mlp import Estimator, UsamMLP, load_bundle, paired_token, predict, save_bundle
from usam.synthetic import make_record, write_record
from usam.train import (
    PAPER_DEFAULTS,
    Trainer,
    paper_hyperparameters,
    regression_metrics,
    run,
    target_rows,
)

REPO = Path(__file__).resolve().parents[1]
TARGET_NAMES = [
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
FAST = [
    "predictor.batch_size=32",
    "predictor.epochs=3",
    "predictor.lr=0.05",
    "predictor.momentum=0.9",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def linear_container(
    root: Path,
    out: Path,
    *,
    groups: int = 60,
    frames: int = 2,
    instances: int = 3,
    models=("tiny", "large"),
    seed: int = 0,
    dataset: str = "davis",
) -> Path:
    """Records whose `unsupervised_iou` is a linear function of the row's own tokens.

    Tokens are low-rank (8 latent dims mapped to 512), as real decoder tokens are strongly
    correlated; coordinate 0 of the IoU token is the group index, so a test can see which
    groups a split put where. `iou` = 0.9 everywhere, so `task_gap` = 0.9 - unsupervised_iou.
    """
    rng = np.random.default_rng(seed)
    lift = rng.normal(size=(8, 512)) / np.sqrt(8)
    w = rng.normal(size=8) / np.sqrt(8)
    for g in range(groups):
        for f in range(frames):
            fields, tokens = {}, {}
            for m in models:
                z = rng.normal(size=(instances, 8))
                x = (z @ lift).astype(np.float32)
                x[:, 0] = g  # the group id; the target below does not depend on it
                y = 0.5 + 0.12 * (z @ w)
                fields[m] = {"original": {"unsupervised_iou": y.tolist(), "iou": [0.9] * instances}}
                mask = np.zeros((instances, 3, 256), np.float32)
                mask[:, 0] = x[:, 256:]  # best = 0: row token = [iou_token, mask_tokens[0]]
                tokens[m] = (x[:, :256], mask)
            rec, tens = make_record(
                f"JPEGImages/480p/v{g:03d}/{f:05d}.jpg",
                f"v{g:03d}",
                dataset=dataset,
                instances=[(i + 1, 100) for i in range(instances)],
                models=models,
                fields=fields,
            )
            for m, (it, mt) in tokens.items():
                tens[f"{m}/original/iou_token"], tens[f"{m}/original/mask_tokens"] = it, mt
            write_record(root, rec, tens)
    ContainerWriter(roots=[root], out=out).write()
    return out


@pytest.fixture(scope="module")
def linear(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("linear")
    return linear_container(tmp / "records", tmp / "container")


def hand_container(
    tmp_path: Path, *, groups: int = 4, augmented: bool = True, random_weights: bool = False
) -> Path:
    """Two instances per image with hand-picked IoUs that exercise the gap shift and the clip."""
    root = tmp_path / "records"
    iou = {"tiny": [0.5, 0.25], "large": [0.75, 1.0]}
    unsup = {"tiny": [0.5, 1.0], "large": [0.125, 0.25]}
    variants = ["original", "jpeg10"] if augmented else ["original"]
    for g in range(groups):
        fields = {
            m: {
                v: {"iou": iou[m], "unsupervised_iou": unsup[m], "iou_dense_prompt": [None, 0.5]}
                for v in variants
            }
            for m in ("tiny", "large")
        }
        write_record(
            root,
            *make_record(
                f"img/{g}.jpg",
                f"g{g}",
                dataset="coco",
                instances=[(1, 50), (2, 60)],
                models=["tiny", "large"],
                variants=variants,
                fields=fields,
                random_weights=random_weights,
            ),
        )
    out = tmp_path / "container"
    ContainerWriter(roots=[root], out=out).write()
    return out


def train_cfg(compose_cfg, container: Path, *overrides: str):
    return compose_cfg("train", [f"container={container}", "trainer.progress=false", *overrides])


# -- targets --------------------------------------------------------------------------------
def test_gap_shift_clip_and_nan_rows(tmp_path):
    c = Container.open(hand_container(tmp_path, groups=1))
    # task_gap = iou - unsupervised_iou, +0.5, clipped: tiny (0, -0.75) -> (0.5, 0); large (0.625, 0.75) -> 1
    _, y, dropped = target_rows(c.filter(model="tiny", augmented=False), "task_gap", "test")
    assert dropped == 0 and y.tolist() == [0.5, 0.0]
    _, y, _ = target_rows(c.filter(model="large", augmented=False), "task_gap", "test")
    assert y.tolist() == [1.0, 1.0]
    # model_gap = iou_large - iou_tiny: (0.25, 0.75) + 0.5 -> (0.75, 1.0), same for both models' rows
    _, y, _ = target_rows(c.filter(augmented=False), "model_gap", "test")
    assert sorted(y.tolist()) == [0.75, 0.75, 1.0, 1.0]
    # plain targets: no shift; a NaN target (iou_dense_prompt of instance 1) drops the row
    x, y, dropped = target_rows(
        c.filter(model="large", augmented=False), "iou_dense_prompt", "test"
    )
    assert dropped == 1 and y.tolist() == [0.5] and x.shape == (1, 512)
    _, y, _ = target_rows(c.filter(model="large", augmented=False), "iou_large", "test")
    assert y.tolist() == [0.75, 1.0]


def test_paper_defaults_table():
    assert set(PAPER_DEFAULTS) == {"coco", "davis", "sav", "ade20k"}
    assert paper_hyperparameters("coco", "iou_large") == {
        "batch_size": 189,
        "epochs": 35,
        "lr": 0.0087130695692,
        "momentum": 0.1639321491122,
    }
    assert paper_hyperparameters("coco", "task_gap")["epochs"] == 36  # COCO default row
    assert paper_hyperparameters("davis", "iou_dense_prompt")["batch_size"] == 62
    assert paper_hyperparameters("ade20k", "prompt_gap")["batch_size"] == 193
    assert paper_hyperparameters("ade20k", "model_gap")["batch_size"] == 106  # ADE20k default
    assert paper_hyperparameters("sav", "model_gap")["epochs"] == 9
    # documented choices: MOSE and the bundled sample use DAVIS's rows
    for target in TARGET_NAMES:
        assert paper_hyperparameters("mose", target) == paper_hyperparameters("davis", target)
        assert paper_hyperparameters("sample", target) == paper_hyperparameters("davis", target)


def test_metrics_by_hand():
    # errors 0, 1/16, -1/32, 1/128, -1/4: exact in float32
    y = [0.5, 0.5, 0.28125, 0.9921875, 0.25]
    m = regression_metrics(torch.tensor([0.5, 0.5625, 0.25, 1.0, 0.0]), torch.tensor(y))
    err = np.array([0, 1 / 16, -1 / 32, 1 / 128, -1 / 4])
    assert m["mse"] == pytest.approx(np.mean(err**2))
    assert m["l1"] == pytest.approx(np.mean(np.abs(err)))
    assert (m["within_0.1"], m["within_0.05"], m["within_0.01"]) == (0.8, 0.6, 0.4)
    assert m["r2"] == pytest.approx(1 - np.sum(err**2) / np.sum((np.array(y) - np.mean(y)) ** 2))
    assert np.isnan(regression_metrics(torch.zeros(3), torch.ones(3))["r2"])  # constant target


# -- training -------------------------------------------------------------------------------
def test_learns_a_linear_target(linear, compose_cfg, tmp_path):
    cfg = train_cfg(
        compose_cfg,
        linear,
        "predictor=unsupervised_iou",
        "predictor.batch_size=32",
        "predictor.epochs=15",
        "predictor.lr=0.05",
        "predictor.momentum=0.9",
        f"out_dir={tmp_path / 'models'}",
    )
    summary = run(cfg)
    assert summary["val_metrics"]["r2"] > 0.9, summary["val_metrics"]
    assert summary["val_loss"] == summary["val_metrics"]["mse"]
    assert summary["hyperparameters"]["epochs"] == 15 and summary["hyperparameters"]["lr"] == 0.05
    assert summary["dataset"] == "davis" and summary["random_weights"] is False
    rows = summary["rows"]
    assert rows["train"] + rows["val"] == 60 * 2 * 3 * 2 and 0.1 < rows["val"] / 720 < 0.3
    assert (
        json.loads((tmp_path / "run" / "summary.json").read_text())["val_loss"]
        == summary["val_loss"]
    )


def test_split_has_no_group_on_both_sides(linear):
    data = Trainer(device="cpu").load(container=linear, target="unsupervised_iou")
    train_groups = set(data.x_train[:, 0].tolist())
    val_groups = set(data.x_val[:, 0].tolist())
    assert not train_groups & val_groups
    assert train_groups | val_groups == set(float(g) for g in range(60))
    # a separate validation container replaces the split
    data = Trainer(device="cpu").load(
        container=linear, val_container=linear, target="unsupervised_iou"
    )
    assert len(data.x_train) == len(data.x_val) == 720


def test_same_seed_same_weights(linear):
    hp = {"batch_size": 16, "epochs": 2, "lr": 0.05, "momentum": 0.9}
    data = Trainer(device="cpu").load(container=linear, target="unsupervised_iou")

    def weights(seed):
        model, _ = Trainer(device="cpu", seed=seed).fit(data.x_train, data.y_train, hp)
        return torch.cat([p.flatten() for p in model.parameters()])

    a, b, c = weights(0), weights(0), weights(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_bundle_round_trip(linear, tmp_path):
    data = Trainer(device="cpu").load(container=linear, target="task_gap")
    model, _ = Trainer(device="cpu").fit(
        data.x_train, data.y_train, {"batch_size": 64, "epochs": 1, "lr": 0.01, "momentum": 0.5}
    )
    save_bundle(tmp_path / "task_gap", model, {"target": "task_gap", "output_shift": 0.5})
    loaded, config = load_bundle(tmp_path / "task_gap")
    assert config["schema"] == 1 and config["architecture"]["hidden"] == [512, 512]
    with torch.no_grad():
        assert torch.equal(loaded(data.x_val), model(data.x_val))
    # the estimator gives the gap itself: model output - 0.5, from [N, 2, 256] tokens too
    p = Estimator.load(tmp_path / "task_gap")
    tokens = data.x_val.reshape(-1, 2, 256)
    assert torch.equal(p(tokens), predict(model, data.x_val, 0.5))
    with torch.no_grad():
        assert torch.equal(p(tokens), model(data.x_val) - 0.5)
    assert not any(f.suffix in (".pt", ".pth", ".pkl") for f in (tmp_path / "task_gap").iterdir())


def test_bundle_errors(tmp_path):
    with pytest.raises(UsamError, match="not an estimator bundle"):
        load_bundle(tmp_path)
    save_bundle(tmp_path / "b", UsamMLP(hidden=[4]), {"target": "iou_tiny", "output_shift": 0.0})
    (tmp_path / "b" / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(
        UsamError, match="sha256 differs"
    ):  # config.json records the weights' digest
        load_bundle(tmp_path / "b")


def test_run_writes_bundle_tensorboard_and_summary(tmp_path, compose_cfg):
    container = hand_container(tmp_path, groups=5)
    cfg = train_cfg(
        compose_cfg,
        container,
        "predictor=model_gap",
        *FAST,
        "predictor.filter_model=large",
        f"out_dir={tmp_path / 'models'}",
    )
    summary = run(cfg)
    bundle = tmp_path / "models" / "model_gap"
    assert summary["bundle"] == str(bundle)
    config = json.loads((bundle / "config.json").read_text())
    assert config["target"] == "model_gap" and config["output_shift"] == 0.5
    assert config["dataset"] == "coco" and config["sam_version"] == "sam2.1"
    assert config["random_weights"] is False and config["trained_on"] == "train+val"
    assert (
        config["hyperparameters"]["epochs"] == 3
        and config["hyperparameters"]["weight_decay"] == 0.001
    )
    assert set(config["val_metrics"]) == {
        "mse",
        "l1",
        "r2",
        "within_0.1",
        "within_0.05",
        "within_0.01",
    }
    # large rows of original images only: 5 images x 2 instances
    assert config["rows"]["train"] + config["rows"]["val"] == 10
    # the model's output is model_gap + 0.5 in (0, 1); the estimator shifts it back
    p = Estimator.load(bundle)
    out = p(torch.zeros(3, 2, 256))
    assert ((out > -0.5) & (out < 0.5)).all()
    tags = tensorboard_tags(tmp_path / "run" / "tb" / "model_gap")
    assert {
        "loss/train",
        "loss/val",
        "loss/refit",
        "val/mse",
        "val/l1",
        "val/r2",
        "val/within_0.1",
        "val/within_0.05",
        "val/within_0.01",
    } <= tags
    assert not any(t.startswith("hpo/") for t in tags)


def test_paper_defaults_apply_and_overrides_win(tmp_path, compose_cfg):
    container = hand_container(tmp_path, groups=3)
    trainer = Trainer(device="cpu")
    meta = Container.open(container).meta
    hp = trainer.hyperparameters(
        {"target": "iou_large", "lr": None, "epochs": None, "batch_size": None, "momentum": None},
        meta,
        "davis",
    )
    assert (hp["batch_size"], hp["epochs"], hp["lr"]) == (
        189,
        35,
        0.0087130695692,
    )  # the container is COCO
    hp = trainer.hyperparameters(
        {"target": "iou_large", "lr": 0.01, "epochs": None, "batch_size": 7, "momentum": None},
        {},
        "ade20k",
    )
    assert (hp["batch_size"], hp["epochs"], hp["lr"]) == (7, 79, 0.01)
    cfg = train_cfg(compose_cfg, container, "predictor=iou_large")
    assert cfg.predictor.lr is None and cfg.predictor.target == "iou_large"


# -- bad input: all fail before any training --------------------------------------------------
def bad(cfg, match: str, tmp_path: Path):
    with pytest.raises(UsamError, match=match):
        run(cfg)
    assert not (tmp_path / "run" / "tb").exists() and not (tmp_path / "models").exists()


def test_missing_container(tmp_path, compose_cfg):
    bad(
        train_cfg(compose_cfg, tmp_path / "nope", f"out_dir={tmp_path / 'models'}"),
        "nope not found; build it with python -m usam.container",
        tmp_path,
    )
    cfg = compose_cfg(
        "train", [f"out_dir={tmp_path / 'models'}"]
    )  # the default location, never built
    bad(cfg, "sample/val_container not found", tmp_path)
    bad(
        train_cfg(compose_cfg, tmp_path, f"val_container={tmp_path / 'v'}"),
        "not a usam container",
        tmp_path,
    )


def test_target_absent(tmp_path, compose_cfg):
    container = hand_container(tmp_path)  # tiny and large only
    bad(
        train_cfg(compose_cfg, container, "predictor=iou_small", f"out_dir={tmp_path / 'models'}"),
        "no column 'iou_small' in this container",
        tmp_path,
    )
    bad(
        train_cfg(
            compose_cfg,
            container,
            "predictor=iou_large",
            "predictor.target=iou_huge",
            f"out_dir={tmp_path / 'models'}",
        ),
        "unknown target 'iou_huge'",
        tmp_path,
    )


def test_empty_split_after_filtering(tmp_path, compose_cfg):
    container = hand_container(tmp_path, groups=3)
    out = f"out_dir={tmp_path / 'models'}"
    # the model is not in the container
    bad(
        train_cfg(compose_cfg, container, "predictor.filter_model=small", out),
        "holds models",
        tmp_path,
    )
    # one group: a split by group is impossible
    one = hand_container(tmp_path / "one", groups=1)
    bad(train_cfg(compose_cfg, one, out), "needs two", tmp_path)
    # every row's target is NaN
    nan = tmp_path / "nan"
    write_record(
        nan / "records",
        *make_record(
            "a.jpg",
            "a",
            dataset="coco",
            models=["large"],
            fields={"large": {"original": {"iou_dense_prompt": [None]}}},
        ),
    )
    write_record(
        nan / "records",
        *make_record(
            "b.jpg",
            "b",
            dataset="coco",
            models=["large"],
            fields={"large": {"original": {"iou_dense_prompt": [None]}}},
        ),
    )
    ContainerWriter(roots=[nan / "records"], out=nan / "c").write()
    bad(
        train_cfg(compose_cfg, nan / "c", "predictor=iou_dense_prompt", out),
        "split is empty",
        tmp_path,
    )


def test_bad_values(tmp_path, compose_cfg):
    container = hand_container(tmp_path, groups=3)
    bad(
        train_cfg(compose_cfg, container, "predictor.epochs=0"),
        "predictor.epochs must be a whole number >= 1",
        tmp_path,
    )
    with pytest.raises(UsamError, match="val_fraction"):
        Trainer(val_fraction=1.5)


# -- config and command line ----------------------------------------------------------------
def test_every_predictor_option_composes(compose_cfg):
    from hydra.utils import instantiate

    for target in TARGET_NAMES:
        cfg = compose_cfg("train", [f"predictor={target}"])
        assert cfg.predictor.target == target and list(cfg.predictor.hidden) == [512, 512]
    for hpo in ("none", "smac", "smac_hyperband"):
        runner = instantiate(compose_cfg("train", [f"hpo={hpo}"]).hpo)
        assert type(runner).__name__ == {"none": "NoHPO"}.get(hpo, "SmacHPO")
    cfg = compose_cfg("train", ["hpo=smac_hyperband", "dataset=davis"])
    assert cfg.hpo.multi_fidelity is True and cfg.hpo.max_budget == 35 and cfg.hpo.n_trials == 100
    assert cfg.container.endswith("inference/davis/val_container")
    assert cfg.trainer._target_ == "usam.train.Trainer"


def test_sweep_via_seed_script(linear, tmp_path):
    """scripts/train_all_predictors.py -> python -m usam.train -m predictor=a,b: one bundle per target."""
    env = {**os.environ, "USAM_OUTPUTS": str(tmp_path / "logs"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "train_all_predictors.py"),
            "--train-data",
            str(linear),
            "--output-dir",
            str(tmp_path / "models"),
            "--skip-smac",
            "--metrics",
            "iou_large",
            "task_gap",
            "--filter-model",
            "large",
            "--",
            "predictor.epochs=1",
            "trainer.progress=false",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for target in ("iou_large", "task_gap"):
        config = json.loads((tmp_path / "models" / target / "config.json").read_text())
        assert config["filter_model"] == "large" and config["hyperparameters"]["epochs"] == 1
        assert config["rows"]["train"] + config["rows"]["val"] == 360
    summaries = sorted((tmp_path / "logs" / "train").rglob("summary.json"))
    assert len(summaries) == 2


def tensorboard_tags(log_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(log_dir.glob("events.out.tfevents.*"))
    assert files, f"no event file in {log_dir}"
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_batches_are_a_fresh_shuffle_every_epoch(monkeypatch):
    """Each epoch visits every row once, in batches of batch_size, in an order that is neither
    the row order nor the previous epoch's (the published code did not shuffle)."""
    import usam.train as train_module

    seen: list[list[int]] = []

    class Recording(UsamMLP):
        def forward(self, x):
            if self.training:
                seen.append(x[:, 0].long().tolist())
            return super().forward(x)

    monkeypatch.setattr(train_module, "UsamMLP", Recording)
    n = 10
    x = torch.zeros(n, 8)
    x[:, 0] = torch.arange(n, dtype=torch.float32)  # column 0 = the row's index
    y = torch.linspace(0.1, 0.9, n)
    hp = {"batch_size": 4, "epochs": 3, "lr": 0.01, "momentum": 0.0, "hidden": [4]}
    Trainer(device="cpu", seed=3, progress=False).fit(x, y, hp)
    assert [len(b) for b in seen] == [4, 4, 2] * 3
    epochs = [sum(seen[3 * e : 3 * e + 3], []) for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(n))
        assert order != list(range(n))
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]


@pytest.mark.parametrize("refit_all", [True, False])
def test_bundle_weights_are_the_fit_on_the_rows_it_claims(linear, tmp_path, refit_all):
    """refit_all: the saved weights are a fresh fit on train + validation rows (train first),
    else the fit on the training split; both differ, so a wrong choice cannot pass."""
    from usam.hpo import NoHPO

    trainer = Trainer(device="cpu", refit_all=refit_all, progress=False)
    hp = {"batch_size": 64, "epochs": 2, "lr": 0.05, "momentum": 0.5}
    trainer.run(
        predictor={"target": "unsupervised_iou", **hp},
        hpo=NoHPO(),
        container=linear,
        out_dir=tmp_path / "models",
        run_dir=tmp_path / "run",
    )
    saved, config = load_bundle(tmp_path / "models" / "unsupervised_iou")
    assert config["trained_on"] == ("train+val" if refit_all else "train")
    data = Trainer(device="cpu").load(container=linear, target="unsupervised_iou")
    hp = trainer.hyperparameters({"target": "unsupervised_iou", **hp}, data.meta, None)
    on_all, _ = trainer.fit(
        torch.cat([data.x_train, data.x_val]), torch.cat([data.y_train, data.y_val]), hp
    )
    on_train, _ = trainer.fit(data.x_train, data.y_train, hp)

    def flat(model):
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    want, other = (on_all, on_train) if refit_all else (on_train, on_all)
    assert torch.equal(flat(saved), flat(want))
    assert not torch.allclose(flat(saved), flat(other), atol=1e-4)


# -- from the mutation run: usam.mlp (issue 16) ----------------------------------------------
def test_mlp_architecture_is_recorded_in_full():
    """The bundle's architecture block is what load_bundle rebuilds from and what a reader of
    config.json sees; widths that differ per layer catch a swapped or dropped one."""
    model = UsamMLP(in_features=6, hidden=[5, 3])
    assert model.architecture() == {
        "type": "mlp",
        "in_features": 6,
        "hidden": [5, 3],
        "activation": "relu",
        "output": "sigmoid",
        "inputs": ["iou_token", "mask_token"],
    }
    shapes = [tuple(m.weight.shape) for m in model.net if isinstance(m, torch.nn.Linear)]
    assert shapes == [(5, 6), (3, 5), (1, 3)]
    assert [type(m).__name__ for m in model.net][-3:] == ["ReLU", "Linear", "Sigmoid"]
    # one value per row, from flat rows or from (iou token, mask token) pairs alike
    x = torch.randn(4, 6)
    assert model(x).shape == (4,) and torch.equal(model(x.view(4, 2, 3)), model(x))


def test_mlp_widths_of_one_are_the_smallest_allowed():
    # one input and one hidden unit build; zero of either is refused with its key
    tiny = UsamMLP(in_features=1, hidden=[1, 2])
    assert tiny(torch.ones(3, 1)).shape == (3,)
    with pytest.raises(UsamError, match=r"^in_features must be a whole number >= 1, got 0$"):
        UsamMLP(in_features=0)
    with pytest.raises(UsamError, match=r"^hidden\[1\] must be a whole number >= 1, got 0$"):
        UsamMLP(hidden=[4, 0])


def test_mlp_bundle_lands_in_new_nested_folders_with_pt_metadata(tmp_path):
    from safetensors import safe_open

    bundle = tmp_path / "not" / "yet" / "there"
    save_bundle(bundle, UsamMLP(hidden=[4]), {"target": "iou_tiny"})
    with safe_open(str(bundle / "model.safetensors"), framework="pt") as f:
        # other safetensors readers (transformers) take the file as torch's only with this tag
        assert f.metadata() == {"format": "pt"}
    config = json.loads((bundle / "config.json").read_text())
    assert (config["schema"], config["kind"], config["token_pairing"]) == (
        1,
        "usam.predictor",
        "usam",
    )


def test_mlp_bundle_without_its_weights_is_not_a_bundle(tmp_path):
    save_bundle(tmp_path / "b", UsamMLP(hidden=[4]), {"target": "iou_tiny"})
    (tmp_path / "b" / "model.safetensors").unlink()
    with pytest.raises(UsamError, match=r"b is not an estimator bundle: it needs config.json and"):
        load_bundle(tmp_path / "b")


def test_mlp_bundle_config_errors_name_the_file_and_the_problem(tmp_path, caplog):
    def bundle_with(**change):
        d = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        save_bundle(d, UsamMLP(hidden=[4]), {"target": "iou_tiny"})
        config = json.loads((d / "config.json").read_text())
        config.update(change)
        (d / "config.json").write_text(json.dumps(config))
        return d

    d = bundle_with()
    (d / "config.json").write_text("[1, 2]")
    with pytest.raises(UsamError, match=r"config.json: not a usam estimator config \(not a JSON"):
        load_bundle(d)
    with pytest.raises(
        UsamError, match=r"config.json: not a usam estimator config of schema 1 \(kind='usam.x'"
    ):
        load_bundle(bundle_with(kind="usam.x"))
    with pytest.raises(UsamError, match=r"kind='usam.predictor', schema=2\); retrain"):
        load_bundle(bundle_with(schema=2))
    with pytest.raises(
        UsamError,
        match=r"config.json: token_pairing 'early' is unknown; use one of usam, published",
    ):
        load_bundle(bundle_with(token_pairing="early"))
    with pytest.raises(UsamError, match=r"config.json: unknown architecture 'cnn'"):
        load_bundle(bundle_with(architecture={"type": "cnn"}))
    with pytest.raises(UsamError, match=r"config.json: unknown architecture None"):
        load_bundle(_without(bundle_with(), "architecture"))
    d = bundle_with()
    (d / "model.safetensors").write_bytes(b"junk")
    described_by = re.escape(str(d / "config.json"))
    with pytest.raises(
        UsamError, match=rf"model.safetensors is not the file {described_by} describes .*; retrain"
    ):
        load_bundle(d)
    # weights of another shape than the architecture says
    d = bundle_with(architecture={**UsamMLP(hidden=[5]).architecture()})
    with pytest.raises(
        UsamError,
        match=r"(?s)model.safetensors: cannot load weights \(.*size mismatch.*\); retrain",
    ):
        load_bundle(d)
    # a bundle from before digests loads, with a warning naming its config
    d = _without(bundle_with(), "weights_sha256")
    with caplog.at_level("WARNING", logger="usam.mlp"):
        model, _ = load_bundle(d)
    assert (
        f"{d / 'config.json'}: records no weights_sha256 (saved by an older usam): the weights "
        "cannot be checked against it"
    ) in caplog.text
    assert model.hidden == [4]
    caplog.clear()
    with caplog.at_level("WARNING", logger="usam.mlp"):
        load_bundle(bundle_with())
    assert not caplog.records  # a bundle with its digest is checked, not warned about


def _without(bundle: Path, key: str) -> Path:
    config = json.loads((bundle / "config.json").read_text())
    del config[key]
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def test_mlp_paired_token_by_hand():
    # tokens that made the masks, every one of 0..3 and not in order
    source = torch.tensor([[3, 1, 2], [0, 2, 1]])
    assert paired_token(source, "usam").tolist() == [[3, 1, 2], [0, 2, 1]]
    # one token early, token 0's own mask reads token 0
    assert paired_token(source, "published").tolist() == [[2, 0, 1], [0, 1, 0]]
    with pytest.raises(UsamError, match=r"token pairing 'early' is unknown; use one of usam, pub"):
        paired_token(source, "early")


def test_mlp_estimator_fields_and_defaults(tmp_path):
    model = UsamMLP(hidden=[4])
    bare = Estimator(model, {"target": "iou_large"})  # a config from before the optional fields
    assert (bare.target, bare.shift, bare.pairing, bare.directory) == (
        "iou_large",
        0.0,
        "usam",
        None,
    )
    shifted = Estimator(
        model, {"target": "task_gap", "output_shift": 0.5, "token_pairing": "published"}
    )
    assert (shifted.shift, shifted.pairing) == (0.5, "published")
    save_bundle(tmp_path / "b", model, {"target": "model_gap", "output_shift": 0.5})
    loaded = Estimator.load(tmp_path / "b", "meta")  # a device other than the default one
    assert loaded.directory == tmp_path / "b" and loaded.target == "model_gap"
    assert next(loaded.model.parameters()).device.type == "meta"
    assert next(load_bundle(tmp_path / "b", "meta")[0].parameters()).device.type == "meta"
    # a bundle of other input and layer widths comes back as it was saved
    odd = UsamMLP(in_features=6, hidden=[5, 3])
    save_bundle(tmp_path / "odd", odd, {"target": "iou_tiny"})
    back, _ = load_bundle(tmp_path / "odd")
    x = torch.randn(4, 6)
    assert back.architecture() == odd.architecture() and torch.equal(back(x), odd(x))


# -- from the mutation run: usam.train (issue 16) --------------------------------------------
def test_paper_defaults_are_the_spec_table_row_by_row():
    coco = (189, 36, 0.0087130695692, 0.1639321491122)
    assert PAPER_DEFAULTS == {
        "coco": {"default": coco, "iou_tiny": coco, "iou_large": (189, 35, *coco[2:])},
        "davis": {
            "default": coco,
            "task_gap": (158, 55, 0.029406075389, 0.7093735218048),
            "iou_base_plus": (130, 70, 0.0016774068549, 0.8908015870842),
            "iou_small": (193, 70, 0.0024243301281, 0.8148493215442),
            "iou_tiny": (151, 63, 0.0702736108729, 0.3075366146863),
            "iou_large": (232, 42, 0.0164839636621, 0.1234703782399),
            "model_gap": (235, 77, 0.0039678611351, 0.1280011787627),
            "iou_dense_prompt": (62, 80, 0.0230261929437, 0.2442788582406),
            "unsupervised_iou": (118, 57, 0.0343696361285, 0.8852591752),
            "prompt_gap": (154, 40, 0.0008989134277, 0.5382621589924),
        },
        "sav": {"default": (193, 9, *coco[2:])},
        "ade20k": {
            "default": (106, 79, 0.0013075788956, 0.8303298246553),
            "iou_tiny": (106, 79, 0.0013075788956, 0.8303298246553),
            "task_gap": (208, 75, 0.0411114656149, 0.2459095045924),
            "prompt_gap": (193, 70, 0.0024243301281, 0.8148493215442),
        },
    }


def test_an_untuned_dataset_gets_cocos_default_with_a_warning(caplog):
    with caplog.at_level("WARNING", logger="usam.train"):
        hp = paper_hyperparameters("lvis", "prompt_gap")
    assert hp == {
        "batch_size": 189,
        "epochs": 36,
        "lr": 0.0087130695692,
        "momentum": 0.1639321491122,
    }
    assert caplog.messages == ["no tuned hyperparameters for dataset 'lvis'; using COCO's default"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="usam.train"):
        paper_hyperparameters("mose", "prompt_gap")  # borrows DAVIS's table: no warning
    assert not caplog.records


def test_within_counts_an_error_exactly_at_the_threshold():
    # float64 in: errors exactly 0.1, 0.05, 0.01 and just above each; 0.3 is within none
    pred = torch.tensor(
        [0.1, 0.05, 0.01, 0.3, 0.1000001, 0.0500001, 0.0100001], dtype=torch.float64
    )
    m = regression_metrics(pred, torch.zeros(7, dtype=torch.float64))
    assert (m["within_0.1"], m["within_0.05"], m["within_0.01"]) == (5 / 7, 3 / 7, 1 / 7)


def test_trainer_defaults_and_bad_options():
    t = Trainer(device="cpu")
    assert (t.seed, t.val_fraction, t.refit_all, t.eval_batch_size, t.progress, t.step) == (
        0,
        0.2,
        True,
        8192,
        True,
        "autograd",
    )
    for kwargs, message in [
        ({"step": "jit"}, r"trainer.step='jit': choose autograd, eager, compile or cuda_graph"),
        ({"val_fraction": 0.0}, r"trainer.val_fraction must be a number in \(0, 1\), got 0.0"),
        ({"val_fraction": 1}, r"trainer.val_fraction must be a number in \(0, 1\), got 1"),
        ({"seed": -1}, r"trainer.seed must be a whole number >= 0, got -1"),
        ({"refit_all": "no"}, r"trainer.refit_all must be true or false, got 'no'"),
        ({"eval_batch_size": 0}, r"trainer.eval_batch_size must be a whole number >= 1, got 0"),
        ({"progress": 2}, r"trainer.progress must be true or false, got 2"),
        ({"device": "tpu"}, r"device"),
    ]:
        with pytest.raises(UsamError, match=message):
            Trainer(**kwargs)


def test_hyperparameter_checks_name_the_key_and_the_range():
    from usam.train import check_hyperparameters

    for given, message in [
        ({"batch_size": 0}, r"predictor.batch_size must be a whole number >= 1, got 0"),
        ({"epochs": 0}, r"predictor.epochs must be a whole number >= 1, got 0"),
        ({"lr": 0.0}, r"predictor.lr must be a number > 0, got 0.0"),
        ({"momentum": 1.0}, r"predictor.momentum must be a number in \[0, 1\), got 1.0"),
        ({"weight_decay": -1e-9}, r"predictor.weight_decay must be a number >= 0, got -1e-09"),
        (
            {"hidden": "512"},
            r"predictor.hidden must be a list of layer widths such as \[512, 512\]",
        ),
        ({"augmented": "yes"}, r"predictor.augmented must be true or false, got 'yes'"),
    ]:
        with pytest.raises(UsamError, match=message):
            check_hyperparameters(given)
    # the edges that are allowed, converted to their types; None (= the paper's) passes
    out = check_hyperparameters(
        {
            "batch_size": 1.0,
            "epochs": 2,
            "lr": 1e-9,
            "momentum": 0,
            "weight_decay": 0,
            "hidden": (3.0, 2),
            "augmented": True,
            "target": "x",
            "extra": None,
        }
    )
    assert out == {
        "batch_size": 1,
        "epochs": 2,
        "lr": 1e-9,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "hidden": [3, 2],
        "augmented": True,
        "target": "x",
        "extra": None,
    }
    assert type(out["batch_size"]) is int and type(out["momentum"]) is float
    assert check_hyperparameters({"lr": None, "epochs": None}, "p") == {"lr": None, "epochs": None}
    with pytest.raises(UsamError, match=r"^hp.lr must"):
        check_hyperparameters({"lr": -1}, "hp")


def test_hidden_widths_and_the_parameter_cap_at_its_edge():
    from usam.train import check_hidden

    # 512 -> 1655 -> 56464 -> 100 -> 1 has exactly 100,000,000 parameters: allowed
    assert check_hidden([1655, 56464, 100], "k") == [1655, 56464, 100]
    with pytest.raises(
        UsamError,
        match=r"^k=\[1655, 56464, 101\]: 100,056,466 parameters, more "
        r"than the 100,000,000 allowed$",
    ):
        check_hidden([1655, 56464, 101], "k")
    # in_features counts: the same widths on 8 inputs are far under the cap
    assert check_hidden([1655, 56464, 101], "k", in_features=8) == [1655, 56464, 101]
    assert check_hidden([65536], "k") == [65536]
    with pytest.raises(
        UsamError, match=r"k\[1\] must be a whole number in \[1, 65536\], got 65537"
    ):
        check_hidden([4, 65537], "k")
    with pytest.raises(
        UsamError, match=r"^k must name at least one hidden layer, e.g. \[512, 512\]$"
    ):
        check_hidden([], "k")
    for bad in ("512", b"512", 512, 5.0, None):
        with pytest.raises(
            UsamError, match=r"^k must be a list of layer widths such as \[512, 512\]"
        ):
            check_hidden(bad, "k")


def test_out_dir_and_container_lists(tmp_path):
    from usam.train import check_out_dir, container_paths

    (tmp_path / "file").write_text("")
    with pytest.raises(UsamError, match=r"^out_dir: .*file exists and is not a folder; choose an"):
        check_out_dir(tmp_path / "file", "iou_tiny")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "iou_tiny").write_text("")
    with pytest.raises(UsamError, match=r"models.iou_tiny exists and is not a folder"):
        check_out_dir(tmp_path / "models", "iou_tiny")
    check_out_dir(tmp_path / "models", "task_gap")  # a folder, or nothing yet: fine
    assert container_paths("a") == ["a"] and container_paths(None) == [None]
    assert container_paths(tmp_path) == [tmp_path] and container_paths("None") == ["None"]
    assert container_paths(["a", tmp_path]) == ["a", str(tmp_path)]
    with pytest.raises(UsamError, match=r"^container=\[\] names no container; give one or more"):
        container_paths([])


def test_run_records_every_field_of_the_fit_in_the_bundle_and_the_summary(tmp_path, caplog):
    """One fast run with every option away from its default (seed 2, a filter, variant rows,
    a width and weight decay of its own), then each config and summary field by hand."""
    from usam.hpo import NoHPO

    container = hand_container(tmp_path, groups=5, random_weights=True)
    predictor = {
        "target": "model_gap",
        "batch_size": 4,
        "epochs": 1,
        "lr": 0.01,
        "momentum": 0.5,
        "hidden": [3],
        "weight_decay": 0.002,
        "filter_model": "large",
        "augmented": True,
    }
    trainer = Trainer(device="cpu", progress=False, seed=2)
    with caplog.at_level("INFO", logger="usam.train"):
        summary = trainer.run(
            predictor=predictor,
            hpo=NoHPO(),
            container=container,
            out_dir=tmp_path / "models",
            run_dir=tmp_path / "run",
            dataset="davis",
        )
    bundle = tmp_path / "models" / "model_gap"
    config = json.loads((bundle / "config.json").read_text())
    hp = {k: predictor[k] for k in ("batch_size", "epochs", "lr", "momentum", "weight_decay")}
    hp["hidden"] = [3]
    # large rows of 5 images x 2 variants x 2 instances: 20, one group of 5 held out
    rows = {"train": 16, "train_dropped_nan": 0, "val": 4, "val_dropped_nan": 0}
    data = config.pop("data")
    assert {k: v for k, v in config.items() if k not in ("val_metrics", "weights_sha256")} == {
        "schema": 1,
        "kind": "usam.predictor",
        "token_pairing": "usam",
        "target": "model_gap",
        "output_shift": 0.5,
        "dataset": "coco",  # the container's, not the dataset= given
        "sam_version": "sam2.1",
        "models": ["tiny", "large"],
        "random_weights": True,
        "container": str(container),
        "val_container": None,
        "filter_model": "large",
        "augmented": True,
        "hyperparameters": hp,
        "hpo": {"method": "none"},
        "rows": rows,
        "trained_on": "train+val",
        "seed": 2,
        "architecture": UsamMLP(hidden=[3]).architecture(),
    }
    assert data["containers"] == [
        {
            "path": str(container.resolve()),
            "meta_sha256": data["containers"][0]["meta_sha256"],
            "rows": 40,
        }
    ]
    assert {k: data[k] for k in ("val_container", "filters", "split", "fit", "seen_groups")} == {
        "val_container": None,
        "filters": {"model": "large", "augmented": True},
        "split": {"by": "group", "val_fraction": 0.2, "seed": 2},
        "fit": "train+val",
        "seen_groups": 5,
    }
    seen = json.loads((bundle / data["seen_groups_file"]).read_text())
    assert seen["groups"] == {"coco": ["g0", "g1", "g2", "g3", "g4"]}
    assert set(config["val_metrics"]) == {
        "mse",
        "l1",
        "r2",
        "within_0.1",
        "within_0.05",
        "within_0.01",
    }
    assert summary["val_metrics"]["mse"] == pytest.approx(config["val_metrics"]["mse"])
    assert summary["val_metrics"]["r2"] < 1  # the targets vary: R^2 is a number
    assert {
        k: v for k, v in summary.items() if k not in ("val_metrics", "val_loss", "seconds")
    } == {
        "target": "model_gap",
        "dataset": "coco",
        "container": str(container),
        "val_container": None,
        "rows": rows,
        "hyperparameters": hp,
        "hpo": {"method": "none"},
        "random_weights": True,
        "fit": "train+val",
        "bundle": str(bundle),
        "device": "cpu",
    }
    assert summary["val_loss"] == summary["val_metrics"]["mse"] and summary["seconds"] > 0
    assert "dataset=davis but the container holds coco; using coco's tuned defaults" in caplog.text
    assert (
        "model_gap: the container came from random SAM weights; this estimator is for testing only"
        in caplog.text
    )
    assert "model_gap: 16 training rows, 4 validation rows" in caplog.text
    assert f"model_gap: bundle written to {bundle}" in caplog.text
    assert (
        "model_gap: training with {'batch_size': 4, 'epochs': 1, 'lr': 0.01, 'momentum': 0.5}"
        in caplog.text
    )
    assert "model_gap validation: mse=" in caplog.text


def test_a_val_container_is_never_trained_on_and_recorded_as_such(tmp_path):
    from usam.hpo import NoHPO

    train = hand_container(tmp_path / "a", groups=2, augmented=False)
    val = hand_container(tmp_path / "b", groups=3, augmented=False)
    trainer = Trainer(device="cpu", progress=False, refit_all=True)
    data = trainer.load(container=train, target="iou_tiny", val_container=val)
    # 2 images x 2 models x 2 instances to train on, 3 x 2 x 2 to validate on
    assert data.rows == {"train": 8, "train_dropped_nan": 0, "val": 12, "val_dropped_nan": 0}
    assert (data.record["fit"], data.record["split"]) == ("all", None)
    assert data.record["val_container"]["path"] == str(val.resolve())
    assert data.seen == {"coco": ["g0", "g1"]}
    summary = trainer.run(
        predictor={
            "target": "iou_tiny",
            "batch_size": 4,
            "epochs": 1,
            "lr": 0.01,
            "momentum": 0.0,
            "hidden": [2],
        },
        hpo=NoHPO(),
        container=train,
        val_container=val,
        out_dir=tmp_path / "models",
        run_dir=tmp_path / "run",
    )
    config = json.loads((tmp_path / "models" / "iou_tiny" / "config.json").read_text())
    assert (config["trained_on"], summary["fit"]) == ("train", "all")
    assert config["val_container"] == summary["val_container"] == str(val)
    assert config["random_weights"] is False and config["hyperparameters"]["weight_decay"] == 0.001


def test_refit_off_records_the_training_split_only(linear):
    data = Trainer(device="cpu", refit_all=False, seed=1).load(container=linear, target="task_gap")
    assert data.record["fit"] == "train" and data.record["split"]["seed"] == 1
    train_groups = {f"v{int(g):03d}" for g in data.x_train[:, 0].tolist()}
    assert data.seen == {"davis": sorted(train_groups)} and len(train_groups) < 60


def test_pooled_containers_merge_their_meta_and_split_together(tmp_path):
    a = linear_container(
        tmp_path / "ra",
        tmp_path / "a",
        groups=3,
        frames=1,
        instances=1,
        models=("small", "large"),
        dataset="davis",
    )
    b = hand_container(tmp_path / "b", groups=4, augmented=False, random_weights=True)
    data = Trainer(device="cpu").load(container=[a, b], target="unsupervised_iou")
    assert data.meta["datasets"] == ["davis", "coco"]
    assert data.meta["models"] == ["small", "large", "tiny"]
    assert data.meta["sam_versions"] == ["sam2.1"]
    assert data.meta["random_weights"] is True
    # 3 x 2 rows of a and 4 x 2 x 2 of b, split by group across both
    assert data.rows["train"] + data.rows["val"] == 6 + 16
    assert [c["path"] for c in data.record["containers"]] == [str(a.resolve()), str(b.resolve())]
    data = Trainer(device="cpu").load(container=[b, b], target="unsupervised_iou")
    assert data.meta["datasets"] == ["coco"] and data.meta["models"] == ["tiny", "large"]
    from usam.train import merged_meta

    one = Container.open(a)
    assert merged_meta([one]) == one.meta and merged_meta([one]) is not one.meta


def test_objective_hands_the_stacked_runner_its_settings_and_step(monkeypatch):
    """Objective.many and Trainer.fit with a stacked step go to usam.stacked (tested there);
    here: with what. torch.optim's "autograd" has no stacked twin: it runs as "eager"."""
    import usam.stacked
    from usam.train import Data, Objective

    calls = []
    monkeypatch.setattr(usam.stacked, "stacked_losses", lambda *a: calls.append(a) or [0.25])
    monkeypatch.setattr(usam.stacked, "fit_one", lambda *a, **k: calls.append((a, k)) or "fit")
    data = Data(torch.zeros(2, 4), torch.zeros(2), torch.zeros(1, 4), torch.zeros(1))
    for step, passed in [("autograd", "eager"), ("compile", "compile")]:
        trainer = Trainer(device="cpu", step=step)
        objective = Objective(trainer, data, {"weight_decay": 0.5, "lr": 0.1})
        assert objective.many([{"lr": 0.2}, {"epochs": 3}]) == [0.25]
        assert calls.pop() == (
            trainer,
            data,
            [{"weight_decay": 0.5, "lr": 0.2}, {"weight_decay": 0.5, "lr": 0.1, "epochs": 3}],
            passed,
        )
    hp, val, on_epoch = {"lr": 0.1}, (data.x_val, data.y_val), print
    assert (
        Trainer(device="cpu", step="eager").fit(
            data.x_train, data.y_train, hp, val=val, on_epoch=on_epoch
        )
        == "fit"
    )
    (args, kwargs) = calls.pop()
    assert args[1:] == (data.x_train, data.y_train, hp) and args[0].step == "eager"
    assert kwargs == {"val": val, "on_epoch": on_epoch}


def test_objective_scores_a_non_finite_validation_loss_as_the_worst(monkeypatch):
    """A fit whose last step sends the weights to NaN ends without Diverged, but its
    validation MSE is NaN: the search must see 1.0 (the worst a sigmoid gives), not NaN."""
    from usam.train import Data, Objective

    data = Data(torch.zeros(2, 4), torch.zeros(2), torch.zeros(1, 4), torch.zeros(1))
    trainer = Trainer(device="cpu")
    monkeypatch.setattr(trainer, "fit", lambda x, y, hp: (None, []))
    for mse, score in [(float("nan"), 1.0), (float("inf"), 1.0), (0.375, 0.375)]:
        monkeypatch.setattr(trainer, "evaluate", lambda model, x, y, mse=mse: {"mse": mse})
        assert Objective(trainer, data, {})({}) == score


def test_merged_meta_unions_in_first_seen_order_and_keeps_the_first_for_the_rest():
    from types import SimpleNamespace

    from usam.train import merged_meta

    a = {
        "datasets": ["davis"],
        "sam_versions": ["sam2.0"],
        "models": ["large", "tiny"],
        "random_weights": False,
        "rows": 6,
    }
    b = {
        "datasets": ["coco", "davis"],
        "sam_versions": ["sam2.1", "sam2.0"],
        "models": ["tiny", "small"],
        "random_weights": True,
        "rows": 9,
    }
    c = {"datasets": None, "rows": 1}  # a meta without the lists or the flag
    merged = merged_meta([SimpleNamespace(meta=m) for m in (a, c, b)])
    assert merged == {
        "datasets": ["davis", "coco"],
        "sam_versions": ["sam2.0", "sam2.1"],
        "models": ["large", "tiny", "small"],
        "random_weights": True,
        "rows": 6,  # every other field: the first container's
    }
    assert (
        merged_meta([SimpleNamespace(meta=a), SimpleNamespace(meta=c)])["random_weights"] is False
    )


def test_target_rows_log_the_dropped_nan_rows_and_hand_float32_on(tmp_path, caplog):
    # from the mutation run of target_rows (issue 16): the log line word for word, and the
    # types the trainer gets (float32 tokens and targets, the dtype of the MLP's weights)
    c = Container.open(hand_container(tmp_path, groups=1))
    view = c.filter(model="large", augmented=False)
    with caplog.at_level(logging.INFO, logger="usam.train"):
        x, y, dropped = target_rows(view, "iou_dense_prompt", "the train side")
    assert dropped == 1 and x.dtype == np.float32 and y.dtype == np.float32
    assert [r.getMessage() for r in caplog.records if r.name == "usam.train"] == [
        "the train side: 1 of 2 rows have no iou_dense_prompt (NaN) and are dropped"
    ]
    caplog.clear()
    x, y, dropped = target_rows(view, "task_gap", "val")
    assert dropped == 0 and x.dtype == np.float32 and y.dtype == np.float32
    assert not [r for r in caplog.records if r.name == "usam.train"]  # nothing dropped: no line


# ---- from the mutation run of Trainer.__init__ and .hyperparameters (2026-11-30) --------------
def test_trainer_takes_every_step_and_names_the_device_key():
    for step in ("autograd", "eager", "compile", "cuda_graph"):
        assert Trainer(device="cpu", step=step).step == step
    with pytest.raises(UsamError) as err:
        Trainer(device="gpu7")
    assert str(err.value).startswith("device='gpu7' is not a device (")


def test_hyperparameters_of_a_mixed_container_and_a_mismatched_dataset(caplog):
    trainer = Trainer(device="cpu")
    unset = {
        "target": "iou_large",
        "lr": None,
        "epochs": None,
        "batch_size": None,
        "momentum": None,
    }
    mixed = {"datasets": ["davis", "mose"]}
    with caplog.at_level(logging.WARNING, logger="usam.train"):
        hp = trainer.hyperparameters(dict(unset), mixed, None)
    assert caplog.messages == [
        "no tuned hyperparameters for dataset 'unknown'; using COCO's default"
    ]
    assert hp == trainer.hyperparameters(dict(unset), {}, "coco")
    assert hp["hidden"] == [512, 512]  # the paper's MLP when predictor.hidden is not given
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="usam.train"):
        hp = trainer.hyperparameters({**unset, "hidden": (64, 32)}, {"datasets": ["mose"]}, "davis")
    assert caplog.messages == [
        "dataset=davis but the container holds mose; using mose's tuned defaults"
    ]
    assert hp["hidden"] == [64, 32]
    assert {k: hp[k] for k in ("batch_size", "epochs", "lr", "momentum")} == (
        paper_hyperparameters("mose", "iou_large")
    )


def test_load_splits_by_the_trainers_seed(tmp_path):
    from usam.protocol import split_groups

    path = hand_container(tmp_path, groups=10, augmented=False)
    c = Container.open(path).filter(augmented=False)
    seen = []
    for seed in (0, 3, 11):
        trainer = Trainer(device="cpu", seed=seed, refit_all=False)
        data = trainer.load(container=path, target="iou_large")
        ((train, _),) = split_groups([c], 0.2, seed)
        groups = sorted({"g" + Path(n).stem for n in train.names})  # img/<k>.jpg is group g<k>
        assert data.seen == {"coco": groups} and data.record["split"]["seed"] == seed
        seen.append(groups)
    assert seen[0] != seen[1] != seen[2] != seen[0]  # the seeds split these data differently
