"""Override values the tools build themselves (folders passed from stage to stage, the seed
scripts' flags) are quoted for Hydra's grammar: a folder with a comma, a space, quotes,
brackets, `${` or non-ASCII letters arrives as exactly that folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from usam.overrides import override, quote, quoted_list
from usam.pipeline import Pipeline
from usam.synthetic import make_record, write_record

REPO = Path(__file__).resolve().parents[2]
# each one broke the unquoted override: a sweep, a list, a dict, a quote, an interpolation, ...
NASTY = [
    "/data/a,b",
    "/data/ünïcødé 数据",
    "/data/with space",
    "/data/it's",
    '/data/say "hi"',
    "/data/[x]",
    "/data/{y}",
    "/data/${oc.env:HOME}",
    "/data/back\\slash\\",
    "/data/q\\'",
    "/data/a=b",
    "/data/~+x",
    "/data/(1)",
    "",
]


@pytest.mark.parametrize("value", NASTY)
def test_a_quoted_value_comes_back_exactly(compose_cfg, value):
    cfg = compose_cfg("train", [override("out_dir", value), override("val_container", value)])
    assert cfg.out_dir == value and cfg.val_container == value
    parsed = OverridesParser.create().parse_override(f"x={quoted_list([value, 'b,c'])}")
    assert list(resolved(parsed.value())) == [value, "b,c"]


def resolved(value):
    """What a config holding this parsed override value reads back (OmegaConf unescapes `\\${`)."""
    return OmegaConf.create({"v": value}).v if isinstance(value, (str, list)) else value


def test_quote_by_hand():
    assert quote("a,b") == "'a,b'"
    assert quote("it's") == "'it\\'s'"
    assert quote("end\\") == "'end\\\\'"  # a backslash before the closing quote is doubled
    assert quote("mid\\dle") == "'mid\\dle'"  # elsewhere it stays single
    assert quote("${x}") == "'\\${x}'"  # OmegaConf: a literal ${


def run_stages(monkeypatch, log_dir: Path, stages: list[str]) -> dict[str, list[str]]:
    """Pipeline.run with each stage's command captured instead of run."""
    calls: dict[str, list[str]] = {}
    monkeypatch.setattr(
        Pipeline,
        "stage",
        lambda self, stage, args, folder, multirun=False: calls.update({stage: args}),
    )
    Pipeline(log_dir=log_dir, stages=stages).run(["dataset=davis"], ["tiny", "large"])
    return calls


def test_the_pipeline_passes_folders_on_quoted(monkeypatch, tmp_path):
    log_dir = tmp_path / "out, ü [1] it's ${x}"
    calls = run_stages(monkeypatch, log_dir, ["container", "train", "evaluate"])
    parser = OverridesParser.create()
    values = {
        stage: {o.key_or_group: resolved(o.value()) for o in parser.parse_overrides(args)}
        for stage, args in calls.items()
    }
    stamp = Path(values["container"]["hydra.run.dir"]).relative_to(log_dir / "container")
    assert values["container"]["hydra.run.dir"] == str(log_dir / "container" / stamp)
    assert values["train"]["hydra.sweep.dir"] == str(log_dir / "train" / stamp)
    assert values["train"]["out_dir"] == str(log_dir / "train" / stamp / "estimators")
    assert values["evaluate"]["estimators"] == str(log_dir / "train" / stamp / "estimators")
    assert values["evaluate"]["hydra.run.dir"] == str(log_dir / "evaluate" / stamp)


def test_the_pipeline_refuses_unknown_targets_and_stages(tmp_path):
    from usam.errors import UsamError

    with pytest.raises(UsamError) as err:
        Pipeline(log_dir=tmp_path, targets=["iou_tiny", "iou_huge"])
    assert str(err.value).startswith("pipeline.targets: unknown ['iou_huge']; choose from iou_tiny")
    assert Pipeline(log_dir=tmp_path, targets="task_gap", stages="train").targets == ["task_gap"]
    with pytest.raises(UsamError) as err:
        Pipeline(log_dir=tmp_path, stages=["extract", "predict"])
    assert str(err.value) == (
        "pipeline.stages: unknown ['predict']; choose from extract, container, train, evaluate"
    )


def test_the_pipeline_runs_with_a_comma_and_non_ascii_letters_in_usam_outputs(tmp_path):
    """The real chain: pipeline -> python -m usam.container with hydra.run.dir in that folder."""
    inference = tmp_path / "inference"
    for g, iou in enumerate([0.25, 0.75]):
        write_record(
            inference / "sample" / "val",
            *make_record(
                f"v{g}/00000.jpg",
                f"v{g}",
                dataset="sample",
                models=["tiny"],
                fields={"tiny": {"original": {"iou": [iou]}}},
            ),
        )
    outputs = tmp_path / "runs, ü [é] it's"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "usam.pipeline",
            "pipeline.stages=[container]",
            f"paths.inference={inference}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "USAM_OUTPUTS": str(outputs), "PYTHONPATH": str(REPO)},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    folder = Path(summary["run_folders"]["container"])
    assert folder.parent.parent.parent == outputs
    stage = json.loads((folder / "summary.json").read_text())
    assert stage["rows"] == 2 and stage["out"] == str(inference / "sample" / "val_container")


def load_script(name: str):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def test_the_seed_extraction_script_quotes_root_and_output_dir(compose_cfg, tmp_path):
    seed = load_script("augment_dataset")
    root, out, ckpt = (tmp_path / "DAVIS, ü [x]'s", tmp_path / "out {y}", tmp_path / "c,kpt")
    ckpt.mkdir()
    args = seed.parse(
        [
            "--dataset",
            "SAV",
            "--root",
            str(root),
            "--output-dir",
            str(out),
            "--model-root",
            str(ckpt),
            "--config-root",
            str(ckpt),
            "--train-subsets",
            "sav_000",
            "odd,name",
        ]
    )
    cfg = compose_cfg("extract", seed.overrides(args))
    assert cfg.dataset.root == str(root) and cfg.out_dir == str(out)
    assert cfg.sam_model.checkpoint_dir == str(ckpt)
    assert cfg.sam_model.configs.large == str(ckpt / "sam2.1_hiera_l.yaml")
    assert list(cfg.dataset.train_subsets) == ["sav_000", "odd,name"]


def test_the_seed_training_and_container_scripts_quote_their_folders(compose_cfg, tmp_path):
    train = load_script("train_all_predictors")
    data, out = tmp_path / "DAVIS, ü's", tmp_path / "models [new]"
    ovr = train.overrides(
        [
            "--train-data",
            str(data),
            "--val-data",
            str(data),
            "--output-dir",
            str(out),
            "--skip-smac",
            "--metrics",
            "iou_tiny",
            "--filter-model",
            "large",
        ]
    )
    cfg = compose_cfg("train", ovr)
    assert cfg.container == str(data) and cfg.val_container == str(data)
    assert cfg.out_dir == str(out) and cfg.predictor.filter_model == "large"
    container = load_script("create_training_container")
    ovr = container.overrides(["--root", str(data), "--root", str(out), "--out-file", str(out)])
    cfg = compose_cfg("container", ovr)
    assert list(cfg.roots) == [str(data), str(out)] and cfg.out == str(out)
