"""Issue 10: no validation leak, original-image training rows by default, the record of the
fitted rows, pooled containers, and the published command lines."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import REPO, hand_container, linear_container, train_cfg

from usam.container import Container, ContainerWriter
from usam.errors import UsamError
from usam.mlp import load_bundle
from usam.protocol import group_table, read_seen, seen_rows, split_groups
from usam.synthetic import make_record, write_record
from usam.train import Trainer, run

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = [
    "predictor=unsupervised_iou",
    "predictor.batch_size=32",
    "predictor.epochs=2",
    "predictor.lr=0.05",
    "predictor.momentum=0.9",
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """A training container (davis, 12 videos) and a validation container (mose, 5 videos)."""
    tmp = tmp_path_factory.mktemp("pair")
    train = linear_container(tmp / "r_train", tmp / "train", groups=12, seed=1)
    val = linear_container(tmp / "r_val", tmp / "val", groups=5, seed=2, dataset="mose")
    return train, val


def flat_weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# -- the group split ------------------------------------------------------------------------------
def test_pooled_split_equals_container_split_for_one_container(pair):
    c = Container.open(pair[0])
    for fraction, seed in ((0.2, 0), (0.35, 3)):
        ((train, val),) = split_groups([c], fraction, seed)
        want_train, want_val = c.split(val_fraction=fraction, seed=seed)
        assert np.array_equal(train.rows, want_train.rows)
        assert np.array_equal(val.rows, want_val.rows)


def test_a_group_in_two_containers_lands_on_one_side(tmp_path):
    # video "shared" is in both containers; each container also has its own videos
    for part, groups in (("a", ["shared", "a1", "a2", "a3"]), ("b", ["shared", "b1", "b2"])):
        for g in groups:
            write_record(
                tmp_path / f"r_{part}", *make_record(f"{g}/00000.jpg", g, models=["large"])
            )
        ContainerWriter(roots=[tmp_path / f"r_{part}"], out=tmp_path / part).write()
    parts = [Container.open(tmp_path / "a"), Container.open(tmp_path / "b")]
    for seed in range(8):
        (ta, va), (tb, vb) = split_groups(parts, 0.3, seed)
        train = set(ta.groups) | set(tb.groups)
        val = set(va.groups) | set(vb.groups)
        assert not train & val and train | val == {"shared", "a1", "a2", "a3", "b1", "b2"}
        assert len(val) == 2  # about 30% of the 7 rows, whole groups


# -- no leak ----------------------------------------------------------------------------------------
def test_a_val_container_is_never_in_the_fit(pair, compose_cfg, tmp_path):
    train, val = pair
    cfg = train_cfg(compose_cfg, train, *FAST, f"val_container={val}", f"out_dir={tmp_path / 'm'}")
    assert cfg.trainer.refit_all is True
    summary = run(cfg)
    assert summary["fit"] == "all" and summary["rows"]["val"] == 5 * 2 * 3 * 2
    model, config = load_bundle(tmp_path / "m" / "unsupervised_iou")
    # the saved weights are exactly those of a fit on the training container's rows alone
    trainer = Trainer(device="cpu", progress=False)
    data = trainer.load(container=train, target="unsupervised_iou", val_container=val)
    alone, _ = trainer.fit(data.x_train, data.y_train, config["hyperparameters"])
    assert torch.equal(flat_weights(model), flat_weights(alone))
    both, _ = trainer.fit(
        torch.cat([data.x_train, data.x_val]),
        torch.cat([data.y_train, data.y_val]),
        config["hyperparameters"],
    )
    assert not torch.equal(flat_weights(model), flat_weights(both))
    # and the record names the training container only
    record = config["data"]
    assert [c["path"] for c in record["containers"]] == [str(train.resolve())]
    assert record["val_container"]["path"] == str(val.resolve()) and record["split"] is None
    seen = read_seen(tmp_path / "m" / "unsupervised_iou", record)
    assert seen == {"davis": {f"v{g:03d}" for g in range(12)}}
    assert not seen_rows(Container.open(val), seen).any()
    # so python -m usam.evaluate scores the separate container, and refuses the training one
    from usam.evaluate import Evaluator

    ev = Evaluator(device="cpu", plots=False, tensorboard=False, use_cases=["segmentation"])
    summary = ev.run(container=val, estimators=tmp_path / "m", split="all", run_dir=tmp_path / "e")
    assert summary["protocol"] == "out-of-sample" and summary["rows"] == 5 * 2 * 3 * 2
    with pytest.raises(UsamError, match="trained on up to 144 of the 144 rows"):
        ev.run(container=train, estimators=tmp_path / "m", split="all", run_dir=tmp_path / "f")


def test_the_refit_and_the_held_out_split_are_recorded(pair, compose_cfg, tmp_path):
    train, _ = pair
    c = Container.open(train)
    tr, va = c.split(val_fraction=0.25, seed=4)
    for refit, fit, groups in (("true", "train+val", c.groups), ("false", "train", tr.groups)):
        out = tmp_path / refit
        run(
            train_cfg(
                compose_cfg,
                train,
                *FAST,
                f"trainer.refit_all={refit}",
                "trainer.val_fraction=0.25",
                "seed=4",
                f"out_dir={out}",
            )
        )
        config = json.loads((out / "unsupervised_iou" / "config.json").read_text())
        record = config["data"]
        assert record["fit"] == fit and record["split"] == {
            "by": "group",
            "val_fraction": 0.25,
            "seed": 4,
        }
        assert record["filters"] == {"model": None, "augmented": False}
        meta = (train / "meta.json").read_bytes()
        assert record["containers"][0]["meta_sha256"] == hashlib.sha256(meta).hexdigest()
        seen = read_seen(out / "unsupervised_iou", record)
        assert seen == {"davis": set(groups)} and record["seen_groups"] == len(set(groups))
        hits = seen_rows(va, seen)  # the held-out groups: in the fit only when refit
        assert hits.all() if refit == "true" else not hits.any()


# -- training rows ------------------------------------------------------------------------------
def test_variant_rows_are_left_out_unless_asked_for(tmp_path):
    container = hand_container(tmp_path, groups=4)  # original + jpeg10 rows
    trainer = Trainer(device="cpu", progress=False)

    def variants(x: torch.Tensor) -> set[int]:
        # usam/synthetic.py: iou_token = 1000 * model + 100 * variant + instance
        return {int(v) % 1000 // 100 for v in x[:, 0].tolist()}

    data = trainer.load(container=container, target="iou_large")
    assert variants(data.x_train) | variants(data.x_val) == {0}  # original only
    assert data.rows["train"] + data.rows["val"] == 4 * 2 * 2
    data = trainer.load(container=container, target="iou_large", augmented=True)
    assert variants(data.x_train) | variants(data.x_val) == {0, 1}  # original + jpeg10
    assert data.rows["train"] + data.rows["val"] == 4 * 2 * 2 * 2
    plain = hand_container(tmp_path / "plain", groups=4, augmented=False)
    with pytest.raises(UsamError, match="holds no image-variant rows"):
        trainer.load(container=plain, target="iou_large", augmented=True)


def test_the_old_no_augmented_key_is_named(tmp_path, compose_cfg):
    container = hand_container(tmp_path, groups=3)
    cfg = train_cfg(compose_cfg, container, "+predictor.no_augmented=true")
    with pytest.raises(UsamError, match="predictor.augmented=true"):
        run(cfg)


def test_evaluation_and_training_agree_on_original_rows(compose_cfg):
    assert compose_cfg("train").predictor.augmented is False
    assert compose_cfg("evaluate").evaluator.augmented is False


# -- pooled containers ---------------------------------------------------------------------------
def test_a_list_of_containers_is_pooled(pair, compose_cfg, tmp_path):
    train, val = pair
    summary = run(train_cfg(compose_cfg, f"[{train},{val}]", *FAST, f"out_dir={tmp_path / 'm'}"))
    assert summary["rows"]["train"] + summary["rows"]["val"] == (12 + 5) * 2 * 3 * 2
    config = json.loads((tmp_path / "m" / "unsupervised_iou" / "config.json").read_text())
    assert config["container"] == [str(train), str(val)]
    assert config["dataset"] == "davis+mose"
    seen = read_seen(tmp_path / "m" / "unsupervised_iou", config["data"])
    assert seen == {
        d: set(g) for d, g in group_table([Container.open(train), Container.open(val)]).items()
    }
    with pytest.raises(UsamError, match=r"container=\[\] names no container"):
        run(train_cfg(compose_cfg, "[]", *FAST, f"out_dir={tmp_path / 'n'}"))


# -- the published command lines ---------------------------------------------------------------
def test_train_all_predictors_sav_all_silent_and_skip(tmp_path):
    """--train-data <dir>/sav_ALL_<suffix> pools every sav_NNN_<suffix> container; --silent is
    accepted; a target already in --output-dir is skipped."""
    inference = tmp_path / "inference"
    for i, groups in ((0, 4), (2, 3)):
        linear_container(
            tmp_path / f"r{i}", inference / f"sav_{i:03d}_container", groups=groups, seed=i
        )
    (inference / "sav_001_other").mkdir()  # another suffix: not taken
    models = tmp_path / "models"
    env = {**os.environ, "USAM_OUTPUTS": str(tmp_path / "logs"), "OMP_NUM_THREADS": "1"}

    def train(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                str(REPO / "scripts" / "train_all_predictors.py"),
                "--train-data",
                str(inference / "sav_ALL_container.pth"),
                "--output-dir",
                str(models),
                "--skip-smac",
                "--silent",
                "--no-augmented",
                *extra,
                "--",
                "predictor.epochs=1",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    done = train("--metrics", "iou_large")
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((models / "iou_large" / "config.json").read_text())
    assert [Path(c).name for c in config["container"]] == ["sav_000_container", "sav_002_container"]
    assert config["rows"]["train"] + config["rows"]["val"] == (4 + 3) * 2 * 3 * 2
    assert "%|" not in done.stderr  # --silent: no progress bars
    before = (models / "iou_large" / "model.safetensors").stat().st_mtime_ns
    done = train("--metrics", "iou_large", "task_gap")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipping iou_large" in done.stderr
    assert (models / "iou_large" / "model.safetensors").stat().st_mtime_ns == before
    assert (models / "task_gap" / "config.json").is_file()
    done = train("--metrics", "iou_large")
    assert done.returncode == 0 and "nothing to train" in done.stderr


def test_train_all_predictors_maps_flags():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import train_all_predictors as seed
    finally:
        sys.path.pop(0)
    out = seed.overrides(
        ["--train-data", "/c", "--output-dir", "/nonexistent/m", "--val-data", "/v"]
    )
    assert "hpo=smac" in out and "val_container='/v'" in out
    assert not any("augmented" in o for o in out)  # original rows: the default
    out = seed.overrides(["--train-data", "/c", "--output-dir", "/nonexistent/m", "--silent"])
    assert {"trainer.progress=false", "hpo.progress=false"} <= set(out)
    with pytest.raises(SystemExit, match="no containers sav_NNN_x"):
        seed.overrides(["--train-data", "/nonexistent/sav_ALL_x", "--output-dir", "/m"])


def test_augment_dataset_train_subsets_as_numbers(tmp_path, compose_cfg):
    from hydra.utils import instantiate
    from test_sav import make_train

    root = make_train(tmp_path / "SAV")
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import augment_dataset as seed
    finally:
        sys.path.pop(0)

    def reader(*subsets: str):
        args = seed.parse(
            [
                "--dataset",
                "SAV",
                "--split",
                "train",
                "--root",
                str(root),
                "--train-subsets",
                *subsets,
            ]
        )
        return instantiate(compose_cfg("extract", seed.overrides(args)).dataset)

    assert {e.name.split("/")[1] for e in reader("1").entries} == {"sav_001"}
    assert {e.name.split("/")[1] for e in reader("0", "1").entries} == {"sav_000", "sav_001"}
    assert {e.name.split("/")[1] for e in reader("sav_001").entries} == {"sav_001"}


def test_evaluate_cuts_the_split_as_training_did(tmp_path, compose_cfg):
    """filter_model=large: training splits the large rows only. Images without large rows
    shift an all-rows split; evaluation must cut the training's split, not its own."""
    from usam.evaluate import Evaluator

    for g in range(12):
        with_large = g % 3 != 0  # v0, v3, v6, v9: tiny only, and many instances
        write_record(
            tmp_path / "records",
            *make_record(
                f"v{g}/00000.jpg",
                f"v{g}",
                models=["tiny", "large"] if with_large else ["tiny"],
                instances=[(i + 1, 50) for i in range(1 if with_large else 6)],
            ),
        )
    ContainerWriter(roots=[tmp_path / "records"], out=tmp_path / "c").write()
    c = Container.open(tmp_path / "c")
    _, val_large = c.filter(model="large").split(val_fraction=0.3, seed=0)
    _, val_all = c.split(val_fraction=0.3, seed=0)
    assert set(val_large.groups) != set(val_all.groups)  # the case this test is about
    run(
        train_cfg(
            compose_cfg,
            tmp_path / "c",
            "predictor=iou_large",
            "predictor.filter_model=large",
            "predictor.epochs=1",
            "predictor.batch_size=4",
            "trainer.refit_all=false",
            "trainer.val_fraction=0.3",
            f"out_dir={tmp_path / 'm'}",
        )
    )
    summary = Evaluator(device="cpu", plots=False, tensorboard=False).run(
        container=tmp_path / "c", estimators=tmp_path / "m", split="val", run_dir=tmp_path / "e"
    )
    assert summary["protocol"] == "out-of-sample"
    view = c.subset(np.flatnonzero(np.isin(c.groups, sorted(set(val_large.groups)))))
    assert summary["rows"] == len(view)  # every model's rows of the training's validation groups
