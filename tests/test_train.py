"""Stage 3: training. Synthetic containers built through the real writer (usam/synthetic.py
-> usam.container.ContainerWriter) with targets whose answer is known by construction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from usam.container import Container, ContainerWriter
from usam.errors import UsamError
from usam.mlp import Estimator, UsamMLP, load_bundle, predict, save_bundle
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


def hand_container(tmp_path: Path, *, groups: int = 4, augmented: bool = True) -> Path:
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
