"""Every root config composes with every option of every group it uses, and the cheap nodes
instantiate. Root configs and options are discovered from conf/, so a new file is covered
without touching this test."""

from __future__ import annotations

import pytest
from conftest import CONF
from hydra.utils import instantiate
from omegaconf import OmegaConf

from usam import options
from usam.errors import UsamError
from usam.schema import TARGETS

ROOTS = sorted(p.stem for p in CONF.glob("*.yaml"))
GROUPS = {  # group -> its options (files directly in the folder; subfolders hold shared bases)
    d.name: sorted(p.stem for p in d.glob("*.yaml"))
    for d in sorted(CONF.iterdir())
    if d.is_dir() and d.name not in ("hydra", "paths", "experiment")
}
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# Nodes whose constructors touch no dataset, checkpoint or network: built for every option.
CHEAP = ("hpo", "augment", "trainer", "evaluator", "pipeline")


def groups_of(cfg) -> list[str]:
    return [g for g in GROUPS if g in cfg]


def test_the_discovery_sees_every_stage_and_group():
    assert {"extract", "container", "train", "evaluate", "pipeline"} <= set(ROOTS)
    assert {"dataset", "sam_model", "augment", "predictor", "hpo"} <= set(GROUPS)
    assert GROUPS["predictor"] == sorted(TARGETS)  # one option per target of usam.schema


@pytest.mark.parametrize("root", ROOTS)
def test_every_root_config_composes_with_every_option_of_its_groups(root, compose_cfg):
    base = compose_cfg(root)
    assert base.stage == root or root in ("datasets", "download_checkpoints")
    for group in groups_of(base):
        for option in GROUPS[group]:
            cfg = compose_cfg(root, [f"{group}={option}"])
            # resolve everything except the run-time hydra interpolations
            OmegaConf.to_container(cfg, resolve=True)
            for key in CHEAP:
                if key in cfg and "_target_" in cfg[key]:
                    instantiate(cfg[key])


@pytest.mark.parametrize("option", GROUPS["predictor"])
def test_each_predictor_option_is_the_shared_base_plus_its_own_target(option, compose_cfg):
    cfg = compose_cfg("train", [f"predictor={option}"])
    assert cfg.predictor.target == option
    assert list(cfg.predictor.hidden) == [512, 512] and cfg.predictor.weight_decay == 0.001


# the stages that read bundle folders: `estimators=`, and `predictors=` as its old name
BUNDLE_READERS = ["evaluate", "evaluate_video", "predict", "track"]


def test_the_bundle_readers_are_every_root_with_the_old_predictors_key():
    assert BUNDLE_READERS == [
        r for r in ROOTS if "\npredictors:" in (CONF / f"{r}.yaml").read_text()
    ]


@pytest.mark.parametrize("root", BUNDLE_READERS)
def test_predictors_is_still_the_old_name_of_estimators(root, compose_cfg):
    assert options.estimators(compose_cfg(root, ["predictors=/m"])) == "/m"
    assert options.estimators(compose_cfg(root, ["estimators=/m"])) == "/m"
    assert options.estimators(compose_cfg(root, ["estimators=/m", "predictors=/m"])) == "/m"
    with pytest.raises(UsamError, match="give estimators= only"):
        options.estimators(compose_cfg(root, ["estimators=/m", "predictors=/n"]))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_with_the_pipeline(experiment, compose_cfg):
    cfg = compose_cfg("pipeline", [f"+experiment={experiment}"])
    OmegaConf.to_container(cfg, resolve=True)
    instantiate(cfg.pipeline)


def test_only_the_stages_that_read_a_shard_have_a_shard_block(compose_cfg):
    sharded = {root for root in ROOTS if "shard" in compose_cfg(root)}
    assert sharded == {"datasets", "extract", "extract_video", "evaluate_video"}
    # elsewhere the dataset configs fall back to the whole split
    train = compose_cfg("train", ["dataset=davis"])
    assert (train.dataset.shard_index, train.dataset.shard_count) == (0, 1)
    extract = compose_cfg("extract", ["dataset=davis", "shard.index=2", "shard.count=3"])
    assert (extract.dataset.shard_index, extract.dataset.shard_count) == (2, 3)
