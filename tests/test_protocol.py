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


# -- from the mutation run: split_groups and describe (issue 16) -----------------------------------
def groups_container(root: Path, counts: dict[str, int]) -> Container:
    """One row per record: `counts[g]` images of video g (dataset davis)."""
    for g, n in counts.items():
        for i in range(n):
            write_record(root / "records", *make_record(f"{g}/{i:05d}.jpg", g, models=["large"]))
    ContainerWriter(roots=[root / "records"], out=root / "c").write()
    return Container.open(root / "c")


def val_groups(split) -> list[str]:
    return sorted(set().union(*(set(v.groups) for _, v in split)))


def test_split_sums_a_groups_rows_over_the_containers_and_cuts_at_the_nearest_share(tmp_path):
    # seed 0 ranks davis' g1, g3, g2 in that order (a blake2b hash: the same everywhere)
    from usam.protocol import _group_rank

    assert sorted(["g1", "g2", "g3"], key=lambda g: _group_rank(0, "davis", g)) == [
        "g1",
        "g3",
        "g2",
    ]
    a = groups_container(tmp_path / "a", {"g1": 3, "g2": 6})
    b = groups_container(tmp_path / "b", {"g1": 2, "g3": 1})
    # rows in rank order g1 = 3 + 2, g3 = 1, g2 = 6: cumulative 5, 6, 12. A share of 0.42
    # wants 5.04 rows: g1 alone (5) is nearest. With g1 counted in one container only
    # (2 rows: 2, 3, 9 wanting 3.78) g1 + g3 would be nearest instead.
    split = split_groups([a, b], 0.42, 0)
    assert val_groups(split) == ["g1"]
    assert [len(v.rows) for _, v in split] == [3, 2] and [len(t.rows) for t, _ in split] == [6, 1]
    assert val_groups(split_groups([a, b], 0.5, 0)) == ["g1", "g3"]  # 6 rows of 12


def test_split_keeps_one_group_on_each_side_and_counts_small_groups_exactly(tmp_path):
    c = groups_container(tmp_path, {"g1": 1, "g3": 1, "g2": 8})  # rank order g1, g3, g2
    # 0.2 of 10 rows = 2: g1 + g3 exactly (one extra row per group would make it 2.6 of 13)
    assert val_groups(split_groups([c], 0.2, 0)) == ["g1", "g3"]
    assert val_groups(split_groups([c], 0.01, 0)) == ["g1"]  # at least one group in val
    assert val_groups(split_groups([c], 0.99, 0)) == ["g1", "g3"]  # at least one in train
    two = groups_container(tmp_path / "two", {"g1": 1, "g2": 1})
    ((train, val),) = split_groups([two], 0.5, 0)
    assert sorted([*train.groups, *val.groups]) == ["g1", "g2"] and len(val.rows) == 1


def test_split_refusals_word_for_word(tmp_path):
    a = groups_container(tmp_path / "a", {"g1": 2})
    b = groups_container(tmp_path / "b", {"g1": 1})
    with pytest.raises(UsamError) as e:
        split_groups([a, b], 0.3, 0)
    assert (
        str(e.value) == f"{a.path}, {b.path}: 1 group(s) in these rows; a split by group needs two"
    )
    for bad in (0, 1, 1.5, -0.2):
        with pytest.raises(UsamError) as e:
            split_groups([a], bad, 0)
        assert str(e.value) == f"val_fraction must be between 0 and 1, got {bad}"


def test_split_takes_an_empty_part_along(tmp_path):
    c = groups_container(tmp_path, {"g1": 1, "g3": 1, "g2": 8})
    empty = c.subset(np.array([], dtype=np.int64))
    (t, v), (te, ve) = split_groups([c, empty], 0.2, 0)
    assert sorted(set(v.groups)) == ["g1", "g3"] and len(te.rows) == len(ve.rows) == 0


def test_describe_names_every_container_and_how_the_bundle_was_fitted():
    from usam.protocol import describe

    record = {
        "containers": [{"path": "runs/a"}, {"path": "runs/b"}],
        "fit": "train",
        "split": {"val_fraction": 0.2, "seed": 3},
        "filters": {"augmented": True, "model": "large"},
    }
    assert describe(record) == (
        "runs/a, runs/b: the train side of the group split (val_fraction=0.2, seed=3), "
        "variant rows included, large rows only"
    )
    assert describe({}) == ": all rows (train + validation split), original-image rows"


def test_seen_groups_file_and_rows_word_for_word(tmp_path):
    from usam.protocol import SEEN_FILE, SEEN_SCHEMA, write_seen

    groups = {"davis": ["g2", "g1"], "mose": ["m7"]}
    fields = write_seen(tmp_path, groups)
    raw = (tmp_path / SEEN_FILE).read_bytes()
    assert json.loads(raw) == {"schema": SEEN_SCHEMA, "kind": "usam.seen_groups", "groups": groups}
    assert fields == {
        "seen_groups_file": SEEN_FILE,
        "seen_groups": 3,
        "seen_groups_sha256": hashlib.sha256(raw).hexdigest(),
    }
    c = groups_container(tmp_path / "c", {"g1": 1, "g3": 2, "g2": 1})
    hit = seen_rows(c, read_seen(tmp_path, fields))
    assert hit.dtype == bool and sorted(np.asarray(c.groups)[hit]) == ["g1", "g2"]
    empty = seen_rows(c.subset(np.array([], dtype=np.int64)), {"davis": {"g1"}})
    assert empty.dtype == bool and empty.shape == (0,)


def test_describe_says_which_rows_a_refit_or_a_val_container_fit_used():
    from usam.protocol import describe

    assert describe(
        {"containers": [{"path": "a"}], "fit": "all", "split": {"val_fraction": 0.2, "seed": 0}}
    ) == ("a: all rows (train + validation split), original-image rows")
    assert (
        describe(
            {
                "containers": [{"path": "a"}],
                "fit": "train",
                "val_container": {"path": "v"},
                "filters": {"model": "tiny"},
            }
        )
        == "a: all rows (validated on v), original-image rows, tiny rows only"
    )


def test_read_seen_follows_the_recorded_file_name_and_refuses_word_for_word(tmp_path):
    from usam.protocol import write_seen

    fields = write_seen(tmp_path, {"davis": ["g1"]})
    (tmp_path / "seen_groups.json").rename(tmp_path / "elsewhere.json")
    moved = {**fields, "seen_groups_file": "elsewhere.json"}
    assert read_seen(tmp_path, moved) == {"davis": {"g1"}}
    # a config.json without the file's name: the default seen_groups.json
    old = tmp_path / "old"
    digest = write_seen(old, {"mose": ["m2"]})["seen_groups_sha256"]
    assert read_seen(old, {"seen_groups_sha256": digest}) == {"mose": {"m2"}}
    with pytest.raises(UsamError) as e:
        read_seen(tmp_path, fields)
    assert str(e.value) == (
        f"{tmp_path / 'seen_groups.json'} is missing: this bundle cannot show which rows it was "
        "trained on; retrain it with python -m usam.train"
    )
    with pytest.raises(UsamError) as e:
        read_seen(tmp_path, {**moved, "seen_groups_sha256": "0" * 64})
    assert str(e.value) == (
        f"{tmp_path / 'elsewhere.json'} does not match the digest in {tmp_path / 'config.json'} "
        "(a half-written or edited bundle); retrain it with python -m usam.train"
    )


def test_container_identity_and_group_table_word_for_word(tmp_path):
    from usam.protocol import container_identity

    a = groups_container(tmp_path / "a", {"g2": 2, "g1": 1})
    b = groups_container(tmp_path / "b", {"g3": 1})
    meta = (tmp_path / "a" / "c" / "meta.json").read_bytes()
    assert container_identity(a) == {
        "path": str((tmp_path / "a" / "c").resolve()),
        "meta_sha256": hashlib.sha256(meta).hexdigest(),
        "rows": 3,
    }
    one_row = a.subset(np.array([2]))
    empty = a.subset(np.array([], dtype=np.int64))
    assert group_table([empty, b, a]) == {"davis": ["g1", "g2", "g3"]}
    assert group_table([one_row, empty]) == {"davis": [a.groups[2]]}
