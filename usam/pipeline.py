"""python -m usam.pipeline — extract -> container -> train (all targets) -> evaluate.

One set of overrides for the whole chain (`dataset`, `sam_model`, `augment`, `predictor`,
`hpo`, `paths`, ...); each stage gets the overrides its own config accepts (found by
composing that config: its groups and top-level keys) and runs as its own Hydra app, in its
own dated run folder `outputs/<stage>/<date>/<time>/`, so every stage's config, log and
summary sit where a single-stage run would put them. An override no stage accepts is an error.

The evaluation is out-of-sample by default (SPEC, Stage 3). Where the dataset has a training
split (`pipeline.train_split`, auto = `train` when the reader has one), both splits are
extracted and contained: the estimators are trained on the training split and evaluated on
every row of `dataset.split`. On a single split (the bundled sample) they are trained with
`trainer.refit_all=false` and evaluated on the group split's validation side, which their fit
never saw. The summary names the protocol; python -m usam.evaluate refuses seen rows.
"""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from usam import CONF_DIR
from usam.cli import run_stage, save_run
from usam.errors import UsamError
from usam.options import unset
from usam.overrides import override
from usam.schema import TARGETS, available_targets

log = logging.getLogger(__name__)

STAGES = ("extract", "container", "train", "evaluate")
# keys the pipeline sets itself in these stages: a user's value would be overridden or clash
SET_BY_PIPELINE = {
    "train": {
        "out_dir": "the bundles go to the train run folder",
        "container": "the training split's container",
    },
    "evaluate": {
        "estimators": "the bundles just trained",
        "predictors": "the bundles just trained",  # the old name of estimators
        "split": "the protocol decides it",
        "container": "the evaluation split's container",
    },
}


def override_key(override: str) -> str:
    """'~+sam_model.sizes=[tiny]' -> 'sam_model'; 'hydra/launcher=joblib' -> 'hydra'."""
    key = override.split("=", 1)[0].lstrip("~+")
    return key.split(".", 1)[0].split("/", 1)[0].split("@", 1)[0]


@functools.cache
def accepted_keys(stage: str) -> frozenset[str]:
    """The config groups and top-level keys of `conf/<stage>.yaml`, as Hydra composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside the pipeline's own Hydra app
        cfg = compose(config_name=stage, return_hydra_config=True)
    else:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name=stage, return_hydra_config=True)
    groups = {g for g in cfg.hydra.runtime.choices if not g.startswith("hydra")}
    # `hydra` is each app's own (the pipeline sets the run folders), `stage` names the command
    return frozenset((set(cfg) | groups) - {"hydra", "stage"})


def route(overrides: list[str], stages: tuple[str, ...] = STAGES) -> dict[str, list[str]]:
    """stage -> the overrides its config accepts; `+key=v` becomes `++key=v` (the stage may
    already have the key). An override that no stage accepts is a UsamError naming it."""
    out: dict[str, list[str]] = {s: [] for s in stages}
    for o in overrides:
        key = override_key(o)
        if key == "pipeline":
            continue  # the pipeline's own options
        if key == "predictor" and "." not in o.split("=", 1)[0]:
            raise UsamError(
                f"override {o!r}: the pipeline trains every target the SAM sizes allow; choose "
                f"targets with pipeline.targets=[...] (predictor.<key>=... applies to all)"
            )
        if key in ("stage", "hydra"):
            raise UsamError(f"override {o!r}: each command sets its own {key}")
        takers = [s for s in stages if key in accepted_keys(s)]
        if not takers:
            known = sorted(set().union(*(accepted_keys(s) for s in stages)) | {"pipeline"})
            raise UsamError(
                f"override {o!r}: no stage of the pipeline accepts {key!r}; "
                f"the stages take {', '.join(known)}"
            )
        for s in takers:
            why = SET_BY_PIPELINE.get(s, {}).get(key)
            if why:
                raise UsamError(
                    f"override {o!r}: the pipeline sets {s}'s {key} itself ({why}); "
                    f"run python -m usam.{s} on its own to choose it"
                )
            plus = o.startswith("+") and not o.startswith("++")
            out[s].append("+" + o if plus else o)
    return out


def check_names(names: list, known, key: str) -> None:
    """Names become overrides (`predictor=<name>`) and module names: only known ones pass."""
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsamError(f"{key}: unknown {unknown}; choose from {', '.join(known)}")


def training_split(setting: Any, splits: list[str], eval_split: str, dataset: str) -> str | None:
    """The split to train on, or None for the single-split (group split) protocol."""
    if unset(setting):
        return None
    if setting == "auto":
        return "train" if "train" in splits and eval_split != "train" else None
    if setting not in splits:
        raise UsamError(
            f"pipeline.train_split={setting}: dataset {dataset!r} has splits {', '.join(splits)}"
        )
    if setting == eval_split:
        raise UsamError(
            f"pipeline.train_split={setting} equals dataset.split: the estimators would be "
            "evaluated on their own training rows; choose another split, or "
            "pipeline.train_split=null for a group split of one split"
        )
    return str(setting)


class Pipeline:
    """Runs each stage as `python -m usam.<stage>` with its share of the overrides."""

    def __init__(
        self,
        *,
        log_dir: str | Path,
        targets: list[str] | None = None,
        stages: list[str] | None = None,
        train_split: str | None = "auto",
    ):
        self.log_dir = Path(log_dir)
        targets, stages = ([x] if isinstance(x, str) else x for x in (targets, stages))
        self.targets = list(targets) if targets else None
        self.stages = list(stages or STAGES)
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise UsamError(f"pipeline.stages: unknown {unknown}; choose from {', '.join(STAGES)}")
        self.train_split = train_split
        check_names(self.targets or [], TARGETS, "pipeline.targets")

    def stage(self, stage: str, args: list[str], folder: Path, multirun: bool = False) -> None:
        cmd = [sys.executable, "-m", f"usam.{stage}", *(["-m"] if multirun else []), *args]
        log.info("stage %s: %s", stage, " ".join(cmd[1:]))
        start = time.perf_counter()
        if subprocess.run(cmd).returncode != 0:
            raise UsamError(f"stage {stage} failed; its log is in {folder}")
        log.info("stage %s finished in %.1f s", stage, time.perf_counter() - start)

    def run(
        self,
        overrides: list[str],
        sizes: list[str],
        *,
        dataset: str = "sample",
        splits: list[str] | None = None,
        eval_split: str = "val",
    ) -> dict[str, Any]:
        routed = route(overrides)
        train_split = training_split(self.train_split, splits or [eval_split], eval_split, dataset)
        stamp = time.strftime("%Y-%m-%d/%H-%M-%S")
        bundles = self.log_dir / "train" / stamp / "estimators"
        targets = self.targets or available_targets(sizes)
        # (name, stage, leading args, trailing args): the leading ones a user may override,
        # the trailing ones fix where each stage reads and writes
        if train_split is None:
            protocol = {
                "name": "group split",
                "statement": (
                    f"trained on the train side of a group split of {dataset} {eval_split} "
                    "(trainer.refit_all=false) and evaluated on its validation side, whose "
                    "groups (videos / images) no estimator was fitted on"
                ),
            }
            steps = [
                ("extract", "extract", [], []),
                ("container", "container", [], []),
                ("train", "train", ["trainer.refit_all=false"], []),
                ("evaluate", "evaluate", [], ["split=val"]),
            ]
        else:
            protocol = {
                "name": "train/test splits",
                "statement": (
                    f"trained on {dataset} {train_split} and evaluated on every row of "
                    f"{dataset} {eval_split}, a separate container that no estimator was fitted on"
                ),
            }
            side = [f"dataset.split={train_split}"]
            steps = [
                (f"extract_{train_split}", "extract", [], side),
                (f"container_{train_split}", "container", [], side),
                ("extract", "extract", [], []),
                ("container", "container", [], []),
                ("train", "train", [], side),
                ("evaluate", "evaluate", [], ["split=all"]),
            ]
        steps = [step for step in steps if step[1] in self.stages]
        dirs = {
            name: self.log_dir
            / stage
            / (stamp if name == stage else f"{stamp}-{name.split('_')[1]}")
            for name, stage, _, _ in steps
        }
        out: dict[str, Any] = {
            "protocol": {**protocol, "train_split": train_split, "eval_split": eval_split},
            "run_folders": {name: str(d) for name, d in dirs.items()},
            "estimators": str(bundles),
            "targets": targets,
            "stages": {},
        }
        log.info("protocol (%s): %s", protocol["name"], protocol["statement"])
        for name, stage, lead, trail in steps:
            args = [*lead, *routed[stage], *trail]
            if stage == "train":
                args += [
                    f"predictor={','.join(targets)}",
                    override("out_dir", bundles),
                    override("hydra.sweep.dir", dirs[name]),
                    "trainer.progress=false",
                ]
                self.stage(stage, args, dirs[name], multirun=True)
                out["stages"][name] = {
                    t: _summary(dirs[name] / str(i)) for i, t in enumerate(targets)
                }
            else:
                args.append(override("hydra.run.dir", dirs[name]))
                if stage == "evaluate":
                    args.append(override("estimators", bundles))
                self.stage(stage, args, dirs[name])
                out["stages"][name] = _summary(dirs[name])
        if "evaluate" in out["stages"]:
            ev = out["stages"]["evaluate"]
            out["protocol"]["evaluation"] = ev.get("protocol")
            out["protocol"]["evaluation_statement"] = ev.get("protocol_statement")
        out["random_weights"] = any(
            bool(s.get("random_weights")) for s in out["stages"].values() if isinstance(s, dict)
        )
        return out


def _summary(folder: Path) -> dict[str, Any]:
    path = folder / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def run(cfg: DictConfig) -> dict[str, Any]:
    overrides = list(HydraConfig.get().overrides.task)
    pipeline = hydra.utils.instantiate(cfg.pipeline)
    reader = hydra.utils.get_class(cfg.dataset._target_)
    summary = pipeline.run(
        overrides,
        list(cfg.sam_model.sizes),
        dataset=str(cfg.dataset.name),
        splits=list(reader.splits),
        eval_split=str(cfg.dataset.split),
    )
    save_run(cfg, summary)
    for stage, folder in summary["run_folders"].items():
        log.info("%-16s -> %s", stage, folder)
    log.info("estimator bundles -> %s", summary["estimators"])
    protocol = summary["protocol"]
    log.info("protocol (%s): %s", protocol["name"], protocol["statement"])
    if protocol.get("evaluation_statement"):
        log.info("evaluation: %s", protocol["evaluation_statement"])
    if summary["random_weights"]:
        log.warning(
            "SAM 2 ran with RANDOM weights: every number above is meaningless; "
            "this run only shows that the pipeline works"
        )
    return summary


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="pipeline")
def main(cfg: DictConfig) -> None:
    run_stage(run, cfg)


if __name__ == "__main__":
    main()
