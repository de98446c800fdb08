"""Stage 4 entrypoint (usam.evaluate): synthetic containers built through the real writer,
estimator bundles with hand-set weights whose ranking is known, outputs under tmp_path."""

from __future__ import annotations

import csv
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
from usam.evaluate import Evaluator, run
from usam.mlp import UsamMLP, save_bundle
from usam.protocol import write_seen
from usam.schema import TARGETS
from usam.synthetic import make_record, write_record

REPO = Path(__file__).resolve().parents[1]
GROUPS, INSTANCES = 20, 3  # 60 instances per model


pytestmark = pytest.mark.usefixtures("one_thread")


def designed_container(
    root: Path,
    out: Path,
    *,
    models=("tiny", "large"),
    random_weights=False,
    nan_h_prompt: bool = True,
    seed: int = 0,
) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """Records whose measures rank some use cases perfectly.

    Per model: sam_score = iou (perfect for segmentation), entropy = iou_dense_prompt - iou
    (perfect for prompt refinement), h_task = iou - unsupervised_iou (perfect for task
    supervision), h_augmentation = NaN (no augmentations). IoU token coordinate 0 = iou,
    coordinate 1 = the prompt gain, for the hand-set estimators below. One large row has no
    h_prompt if `nan_h_prompt`. Returns the container and the per-model arrays in row order.
    """
    rng = np.random.default_rng(seed)
    truth = {m: {k: [] for k in ("iou", "dense", "unsup")} for m in models}
    for g in range(GROUPS):
        fields, tokens = {}, {}
        for m in models:
            iou = rng.uniform(0.3, 0.9, INSTANCES)
            dense = iou + rng.uniform(0.001, 0.1, INSTANCES)
            unsup = iou - rng.uniform(0.001, 0.2, INSTANCES)
            h_prompt = [
                None if (nan_h_prompt and m == "large" and g == 0 and i == 1) else 0.5
                for i in range(INSTANCES)
            ]
            fields[m] = {
                "original": {
                    "iou": iou.tolist(),
                    "iou_dense_prompt": dense.tolist(),
                    "unsupervised_iou": unsup.tolist(),
                    "sam_score": iou.tolist(),
                    "entropy": (dense - iou).tolist(),
                    "h_task": (iou - unsup).tolist(),
                    "h_augmentation": [None] * INSTANCES,
                    "h_prompt": h_prompt,
                }
            }
            it = np.zeros((INSTANCES, 256), np.float32)
            it[:, 0], it[:, 1] = iou, dense - iou
            tokens[m] = it
            for k, v in (("iou", iou), ("dense", dense), ("unsup", unsup)):
                truth[m][k].append(v)
        rec, tens = make_record(
            f"JPEGImages/480p/v{g:03d}/00000.jpg",
            f"v{g:03d}",
            models=list(models),
            instances=[(i + 1, 100) for i in range(INSTANCES)],
            fields=fields,
            random_weights=random_weights,
        )
        for m, it in tokens.items():
            tens[f"{m}/original/iou_token"] = it
            tens[f"{m}/original/mask_tokens"] = np.zeros((INSTANCES, 3, 256), np.float32)
        write_record(root, rec, tens)
    ContainerWriter(roots=[root], out=out).write()
    return out, {m: {k: np.concatenate(v) for k, v in d.items()} for m, d in truth.items()}


ELSEWHERE = {"davis": ["elsewhere"]}  # a fit on groups that no test container holds


def fit_record(seen: dict[str, list[str]], bundle: Path, **record) -> dict:
    """The `data` entry python -m usam.train writes, with `seen` as the fitted groups."""
    record = {
        "containers": [{"path": "/elsewhere/c", "meta_sha256": "0" * 64, "rows": 1}],
        "val_container": None,
        "filters": {"model": None, "augmented": False},
        "split": {"by": "group", "val_fraction": 0.2, "seed": 0},
        "fit": "train+val",
        **record,
    }
    return {**record, **write_seen(bundle, seen)}


def hand_bundle(
    directory: Path, target: str, coordinate: int, seen: dict | None = ELSEWHERE, **config
) -> Path:
    """An MLP whose output is sigmoid(token coordinate): strictly increasing in it.

    `seen`: the groups its (pretended) fit used; None = a bundle without that record."""
    model = UsamMLP()
    with torch.no_grad():
        for layer in model.net:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.zero_()
                layer.bias.zero_()
        model.net[0].weight[0, 0] = model.net[0].weight[1, 1] = 1.0
        model.net[2].weight[0, 0] = model.net[2].weight[1, 1] = 1.0
        model.net[4].weight[0, coordinate] = 1.0
    if seen is not None:
        config["data"] = fit_record(seen, directory / target, **config.pop("record", {}))
    return save_bundle(
        directory / target,
        model,
        {"target": target, "output_shift": TARGETS[target], "random_weights": False, **config},
    )


@pytest.fixture(scope="module")
def designed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("designed")
    container, truth = designed_container(tmp / "records", tmp / "container")
    hand_bundle(
        tmp / "models",
        "iou_large",
        0,
        container="/elsewhere/test_container",
        trained_on="train+val",
    )
    hand_bundle(
        tmp / "models",
        "prompt_gap",
        1,
        container="/elsewhere/test_container",
        trained_on="train+val",
    )
    return container, tmp / "models", truth


def eval_cfg(compose_cfg, container, estimators, *overrides):
    return compose_cfg(
        "evaluate", [f"container={container}", f"estimators={estimators}", "device=cpu", *overrides]
    )


def test_known_rankings_end_to_end(designed, compose_cfg, tmp_path, capsys):
    container, models, truth = designed
    summary = run(eval_cfg(compose_cfg, container, models, "split=all"))
    out = tmp_path / "run"
    report = json.loads((out / "report.json").read_text())
    cases = report["use_cases"]
    n = GROUPS * INSTANCES
    assert (
        report["model"] == "large" and report["rows"] == 2 * n and report["random_weights"] is False
    )
    for name, case in cases.items():
        assert case["relative_auc"]["oracle"] == 1.0, name
        assert case["left_out"] == {
            "h_augmentation": "NaN on every row (not measured for this container)"
        }
        assert "h_augmentation" not in case["curves"]
    # perfect measures and hand-set estimators reach the oracle
    assert cases["prompt_refinement"]["relative_auc"]["entropy"] == pytest.approx(1.0)
    assert cases["prompt_refinement"]["relative_auc"]["usam_prompt_gap"] == pytest.approx(
        1.0, abs=1e-6
    )
    assert cases["task_supervision"]["relative_auc"]["h_task"] == pytest.approx(1.0)
    assert cases["segmentation"]["relative_auc"]["sam_score"] == pytest.approx(1.0)
    assert cases["segmentation"]["relative_auc"]["usam_iou_large"] == pytest.approx(1.0, abs=1e-6)
    # the one large row without h_prompt is dropped (and counted) wherever large rows are used
    for name in ("prompt_refinement", "task_supervision", "segmentation"):
        assert cases[name]["rows"] == n - 1 and cases[name]["rows_dropped_nan"] == {"h_prompt": 1}
    # model selection: tiny's rows, nothing dropped; its oracle at r = 0.5 refines the best half
    ms = cases["model_selection"]
    assert ms["rows_model"] == "tiny" and ms["rows"] == n and ms["rows_dropped_nan"] == {}
    gain = truth["large"]["iou"] - truth["tiny"]["iou"]
    assert ms["curves"]["oracle"][0] == pytest.approx(truth["tiny"]["iou"].mean())
    assert ms["curves"]["oracle"][-1] == pytest.approx(
        truth["tiny"]["iou"].mean() + np.sort(gain)[::-1][: n // 2].sum() / n
    )
    # random = the straight line: its area is mean gain * 0.5^2 / 2
    oracle_area = np.trapezoid(
        np.array(ms["curves"]["oracle"]) - ms["curves"]["oracle"][0], ms["r"]
    )
    assert ms["relative_auc"]["random"] == pytest.approx(gain.mean() * 0.125 / oracle_area)
    assert "usam_model_gap" not in ms["curves"]  # no bundle for it
    assert any("no model_gap estimator bundle" in s for s in report["notes"])
    # segmentation: refining never hurts, so every curve rises
    for curve in cases["segmentation"]["curves"].values():
        assert np.all(np.diff(curve) >= -1e-12)
    # correlations: sam_score == iou; the IoU estimator is sigmoid(iou), nearly linear on [0.3, 0.9]
    corr = report["correlation"]
    assert corr["names"][0] == "iou" and "h_augmentation" not in corr["names"]
    assert corr["with_iou"]["sam_score"] == pytest.approx(1.0)
    assert corr["with_iou"]["usam_iou_large"] > 0.99
    assert np.allclose(np.diag(corr["matrix"])[[0, 1]], 1.0)
    # files
    for name in cases:
        with open(out / f"curves_{name}.csv") as f:
            rows = list(csv.reader(f))
        assert rows[0][:3] == ["r", "oracle", "random"] and len(rows) == 52
        assert (out / f"curves_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "relative_auc.csv") as f:
        aucs = list(csv.reader(f))
    assert aucs[0] == ["measure", *cases] and aucs[1] == ["oracle", "1", "1", "1", "1"]
    assert (out / "correlation.csv").is_file() and (out / "correlation.png").stat().st_size > 0
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "config.yaml").is_file() and json.loads((out / "summary.json").read_text())[
        "rows"
    ] == 2 * n
    assert not list(out.glob(".*tmp-*"))  # no leftovers of the atomic writes
    assert summary["relative_auc"]["segmentation"]["oracle"] == 1.0
    table = capsys.readouterr().out
    assert "usam_prompt_gap" in table and "100.0" in table and "RANDOM" not in table
    assert "left out (NaN on every row): h_augmentation" in table


def test_tensorboard_scalars(designed, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    container, models, _ = designed
    Evaluator(device="cpu", plots=False, use_cases=["segmentation"]).run(
        container=container, estimators=models, split="all", run_dir=tmp_path
    )
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {
        "relative_auc/segmentation/oracle",
        "curve/segmentation/usam_iou_large",
        "pearson_iou/sam_score",
    } <= tags
    steps = [e.step for e in acc.Scalars("curve/segmentation/oracle")]
    assert steps[0] == 0 and steps[-1] == 500 and len(steps) == 51  # step = r in per mille
    assert acc.Scalars("relative_auc/segmentation/oracle")[0].value == 1.0
    assert not (tmp_path / "curves_segmentation.png").exists()


def test_seen_rows_are_refused_unless_allowed_and_then_labelled(designed, tmp_path):
    container, _, _ = designed
    c = Container.open(container)
    _, val = c.split(val_fraction=0.2, seed=0)
    val_groups = sorted(set(val.groups))
    models = tmp_path / "models"
    # iou_large's fit saw one validation group (not the first one): 3 instances x 2 models
    hand_bundle(models, "iou_large", 0, seen={"davis": ["v900", val_groups[-1]]})
    hand_bundle(models, "prompt_gap", 1)  # saw nothing evaluated here
    ev = Evaluator(device="cpu", plots=True, tensorboard=False)
    with pytest.raises(UsamError, match=r"estimators iou_large were trained on up to 6 of the"):
        ev.run(container=container, estimators=models, split="val", run_dir=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()  # refused before anything was written
    ev = Evaluator(device="cpu", plots=True, tensorboard=False, allow_in_sample_results=True)
    summary = ev.run(container=container, estimators=models, split="val", run_dir=tmp_path / "r")
    assert summary["rows"] == len(val) < 2 * GROUPS * INSTANCES
    assert summary["protocol"] == "in-sample"
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["protocol"]["estimators"]["iou_large"]["rows_seen"] == 6
    assert report["protocol"]["estimators"]["prompt_gap"]["rows_seen"] == 0
    assert report["protocol"]["statement"].startswith("IN-SAMPLE: iou_large")
    large_val = int((val.models == "large").sum())
    seg = report["use_cases"]["segmentation"]
    assert seg["rows"] + sum(seg["rows_dropped_nan"].values()) == large_val
    # the plots say so too: their title is drawn from the same label
    from usam.report import LABELS, format_table

    assert format_table(report).splitlines()[0].startswith("USAM evaluation [IN-SAMPLE]")
    assert (
        LABELS["in-sample"] == " [IN-SAMPLE]"
        and (tmp_path / "r" / "curves_segmentation.png").is_file()
    )


def test_unseen_rows_pass_and_a_bundle_without_record_is_unverified(designed, tmp_path):
    container, _, _ = designed
    c = Container.open(container)
    train, val = c.split(val_fraction=0.2, seed=0)
    models = tmp_path / "models"
    hand_bundle(models, "iou_large", 0, seen={"davis": sorted(set(train.groups))})
    ev = Evaluator(device="cpu", plots=False, tensorboard=False)
    summary = ev.run(container=container, estimators=models, split="val", run_dir=tmp_path / "a")
    assert summary["protocol"] == "out-of-sample" and summary["rows"] == len(val)
    assert f"none of the {len(set(val.groups))} groups" in summary["protocol_statement"]
    # the same rows, but the fit was of another dataset's groups of the same names: unseen
    hand_bundle(models, "iou_large", 0, seen={"mose": sorted(set(c.groups))})
    summary = ev.run(container=container, estimators=models, split="all", run_dir=tmp_path / "b")
    assert summary["protocol"] == "out-of-sample"
    # validated and searched on this container (a val_container): unseen, but a note says so
    from usam.protocol import container_identity

    hand_bundle(
        models,
        "iou_large",
        0,
        hpo={"method": "smac"},
        record={"val_container": container_identity(c), "split": None, "fit": "all"},
    )
    summary = ev.run(container=container, estimators=models, split="all", run_dir=tmp_path / "s")
    assert summary["protocol"] == "out-of-sample"
    notes = json.loads((tmp_path / "s" / "report.json").read_text())["notes"]
    assert any("hyperparameters of iou_large were searched on these rows" in n for n in notes)
    hand_bundle(
        models,
        "iou_large",
        0,
        hpo={"method": "none"},
        record={"val_container": container_identity(c)},
    )
    ev.run(container=container, estimators=models, split="all", run_dir=tmp_path / "t")
    notes = json.loads((tmp_path / "t" / "report.json").read_text())["notes"]
    assert not any("were searched on" in n for n in notes)
    hand_bundle(models, "iou_large", 0, seen=None)
    summary = ev.run(container=container, estimators=models, split="all", run_dir=tmp_path / "c")
    assert summary["protocol"] == "unverified"
    # an edited record of seen groups is caught
    hand_bundle(models, "iou_large", 0)
    (models / "iou_large" / "seen_groups.json").write_text('{"groups": {}}')
    with pytest.raises(UsamError, match="does not match the digest"):
        ev.run(container=container, estimators=models, split="all", run_dir=tmp_path / "d")


def test_random_weights_are_loud(tmp_path, compose_cfg, capsys):
    container, _ = designed_container(
        tmp_path / "records", tmp_path / "container", random_weights=True
    )
    summary = run(
        eval_cfg(
            compose_cfg,
            container,
            "null",
            "split=all",
            "evaluator.plots=false",
            "evaluator.tensorboard=false",
        )
    )
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert summary["random_weights"] is True and report["random_weights"] is True
    assert "RANDOM SAM WEIGHTS" in report["warning"]
    assert "RANDOM SAM WEIGHTS" in capsys.readouterr().out
    # estimators=null: the stage-1 measures only, and a note says so
    assert not any(m.startswith("usam_") for m in report["use_cases"]["segmentation"]["curves"])
    assert any("estimators=null" in s for s in report["notes"])


def test_one_model_skips_model_selection_and_leaves_out_nan_measures(tmp_path):
    root = tmp_path / "records"
    for g in range(4):
        write_record(
            root,
            *make_record(
                f"img/{g}.jpg",
                f"g{g}",
                models=["large"],
                instances=[(1, 50), (2, 60)],
                fields={
                    "large": {"original": {"h_theta": [None, None], "h_augmentation": [None, None]}}
                },
            ),
        )
    ContainerWriter(roots=[root], out=tmp_path / "c").write()
    summary = Evaluator(device="cpu", plots=False, tensorboard=False).run(
        container=tmp_path / "c", estimators=None, split="all", run_dir=tmp_path / "run"
    )
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert "needs models" in report["use_cases"]["model_selection"]["skipped"]
    assert "model_selection" not in summary["relative_auc"]
    seg = report["use_cases"]["segmentation"]
    assert set(seg["left_out"]) == {"h_theta", "h_augmentation"} and seg["rows"] == 8
    assert "h_theta" not in report["correlation"]["names"]


def test_bad_inputs(designed, tmp_path):
    container, models, _ = designed
    ev = Evaluator(device="cpu", plots=False, tensorboard=False)
    with pytest.raises(UsamError, match="not found"):
        ev.run(container=tmp_path / "nope", estimators=None, split="all", run_dir=tmp_path)
    with pytest.raises(UsamError, match="not a directory"):
        ev.run(container=container, estimators=tmp_path / "nope", split="all", run_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsamError, match="holds no estimator bundle"):
        ev.run(container=container, estimators=tmp_path / "empty", split="all", run_dir=tmp_path)
    with pytest.raises(UsamError, match="split="):
        ev.run(container=container, estimators=None, split="test", run_dir=tmp_path)
    with pytest.raises(UsamError, match="evaluator.model='small'"):
        Evaluator(device="cpu", model="small").run(
            container=container, estimators=None, split="all", run_dir=tmp_path
        )
    with pytest.raises(UsamError, match="unknown use case"):
        Evaluator(use_cases=["selection"])
    wide = UsamMLP(in_features=256)
    save_bundle(tmp_path / "wide" / "iou_large", wide, {"target": "iou_large", "output_shift": 0.0})
    with pytest.raises(UsamError, match="takes 256 inputs"):
        ev.run(container=container, estimators=tmp_path / "wide", split="all", run_dir=tmp_path)


def test_with_bundles_from_usam_train(designed, compose_cfg, tmp_path):
    """The layout python -m usam.train writes (<out_dir>/<target>/) is what evaluate reads,
    and its record of the fitted rows decides what evaluate may score."""
    from usam.train import run as train_run

    container, _, _ = designed

    def train(out: str, *overrides: str) -> Path:
        train_run(
            compose_cfg(
                "train",
                [
                    f"container={container}",
                    "predictor=task_gap",
                    "predictor.epochs=1",
                    "predictor.batch_size=64",
                    "predictor.lr=0.01",
                    "predictor.momentum=0.5",
                    "trainer.progress=false",
                    "device=cpu",
                    f"out_dir={tmp_path / out}",
                    *overrides,
                ],
            )
        )
        return tmp_path / out

    ev = Evaluator(device="cpu", plots=False, tensorboard=False, use_cases=["task_supervision"])
    refit = train("refit")  # trainer.refit_all=true: the validation split is in the fit
    with pytest.raises(UsamError, match="estimators task_gap were trained on"):
        ev.run(container=container, estimators=refit, split="val", run_dir=tmp_path / "e1")
    # refit_all=false with a 30% split: evaluate takes that split from the bundle
    held = train("held", "trainer.refit_all=false", "trainer.val_fraction=0.3")
    summary = ev.run(container=container, estimators=held, split="val", run_dir=tmp_path / "e2")
    _, val = Container.open(container).split(val_fraction=0.3, seed=0)
    assert summary["rows"] == len(val) and summary["protocol"] == "out-of-sample"
    aucs = summary["relative_auc"]["task_supervision"]
    assert np.isfinite(aucs["usam_task_gap"]) and aucs["oracle"] == 1.0
    # a split chosen by hand that reaches into the training groups is refused
    with pytest.raises(UsamError, match="trained on up to"):
        Evaluator(device="cpu", val_fraction=0.6).run(
            container=container, estimators=held, split="val", run_dir=tmp_path / "e3"
        )
    with pytest.raises(UsamError, match="trained on up to"):
        ev.run(container=container, estimators=held, split="all", run_dir=tmp_path / "e4")


def test_cli_prints_table_then_json(designed, tmp_path):
    container, models, _ = designed
    env = {**os.environ, "USAM_OUTPUTS": str(tmp_path / "logs"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "usam.evaluate",
            f"container={container}",
            f"estimators={models}",
            "split=all",
            "device=cpu",
            "evaluator.plots=false",
            "evaluator.use_cases=[segmentation]",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert json.loads(lines[-1])["model"] == "large"
    assert any(line.startswith("usam_iou_large") for line in lines[:-1])
    bad = subprocess.run(
        [sys.executable, "-m", "usam.evaluate", f"container={tmp_path / 'missing'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1 and "not found" in bad.stderr and "Traceback" not in bad.stderr


def test_default_config_composes(compose_cfg, tmp_path):
    from hydra.utils import instantiate

    cfg = compose_cfg("evaluate")
    assert cfg.container == str(tmp_path / "inference" / "sample" / "val_container")
    assert cfg.split == "val" and cfg.estimators is None
    ev = instantiate(cfg.evaluator)
    assert isinstance(ev, Evaluator) and ev.model is None and len(ev.r) == 51
    assert ev.use_cases == [
        "model_selection",
        "prompt_refinement",
        "task_supervision",
        "segmentation",
    ]
