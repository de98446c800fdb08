"""python -m usam.pipeline — extract -> container -> train (all targets) -> evaluate.

One set of overrides for the whole chain (`dataset`, `sam_model`, `augment`, `predictor`,
`hpo`, `paths`, ...); each stage gets the overrides its own config knows and runs as its
own Hydra app, in its own dated run folder `outputs/<stage>/<date>/<time>/`, so every
stage's config, log and summary sit where a single-stage run would put them.
"""

from __future__ import annotations

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
from usam.mlp import TARGETS
from usam.overrides import override

log = logging.getLogger(__name__)

# Which top-level keys / groups each stage's root config understands.
STAGE_KEYS = {
    "extract": {
        "paths",
        "dataset",
        "sam_model",
        "augment",
        "shard",
        "seed",
        "out_dir",
        "extractor",
        "writer",
    },
    "container": {
        "paths",
        "dataset",
        "shard",
        "roots",
        "out",
        "offload",
        "augmented",
        "overwrite",
        "writer",
    },
    "train": {
        "paths",
        "dataset",
        "shard",
        "predictor",
        "hpo",
        "container",
        "seed",
        "device",
        "trainer",
    },
    "evaluate": {"paths", "dataset", "shard", "container", "split", "evaluator"},
}


def override_key(override: str) -> str:
    """'~+sam_model.sizes=[tiny]' -> 'sam_model'; 'hydra/launcher=joblib' -> 'hydra'."""
    key = override.split("=", 1)[0].lstrip("~+")
    return key.split(".", 1)[0].split("/", 1)[0].split("@", 1)[0]


def stage_overrides(stage: str, overrides: list[str]) -> list[str]:
    """The overrides a stage's config knows; `+key=v` becomes `++key=v` (the stage may have it)."""
    out = []
    for o in overrides:
        if override_key(o) not in STAGE_KEYS[stage] or o.split("=", 1)[0] == "predictor":
            continue  # the pipeline chooses the predictors itself (pipeline.targets)
        out.append("+" + o if o.startswith("+") and not o.startswith("++") else o)
    return out


def check_names(names: list, known, key: str) -> None:
    """Names become overrides (`predictor=<name>`) and module names: only known ones pass."""
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsamError(f"{key}: unknown {unknown}; choose from {', '.join(known)}")


def available_targets(sizes: list[str]) -> list[str]:
    """Targets whose columns the container will have for these SAM sizes."""
    out = [
        t for t in TARGETS if not t.startswith("iou_") or t == "iou_dense_prompt" or t[4:] in sizes
    ]
    return [t for t in out if t != "model_gap" or {"tiny", "large"} <= set(sizes)]


class Pipeline:
    """Runs each stage as `python -m usam.<stage>` with its share of the overrides."""

    def __init__(
        self,
        *,
        log_dir: str | Path,
        targets: list[str] | None = None,
        stages: list[str] | None = None,
    ):
        self.log_dir = Path(log_dir)
        targets, stages = ([x] if isinstance(x, str) else x for x in (targets, stages))
        self.targets = list(targets) if targets else None
        self.stages = list(stages or ("extract", "container", "train", "evaluate"))
        check_names(self.targets or [], TARGETS, "pipeline.targets")
        check_names(self.stages, STAGE_KEYS, "pipeline.stages")

    def stage(self, stage: str, args: list[str], folder: Path, multirun: bool = False) -> None:
        cmd = [sys.executable, "-m", f"usam.{stage}", *(["-m"] if multirun else []), *args]
        log.info("stage %s: %s", stage, " ".join(cmd[1:]))
        start = time.perf_counter()
        if subprocess.run(cmd).returncode != 0:
            raise UsamError(f"stage {stage} failed; its log is in {folder}")
        log.info("stage %s finished in %.1f s", stage, time.perf_counter() - start)

    def run(self, overrides: list[str], sizes: list[str]) -> dict[str, Any]:
        stamp = time.strftime("%Y-%m-%d/%H-%M-%S")
        dirs = {s: self.log_dir / s / stamp for s in self.stages}
        predictors = self.log_dir / "train" / stamp / "predictors"
        targets = self.targets or available_targets(sizes)
        out: dict[str, Any] = {
            "run_folders": {s: str(d) for s, d in dirs.items()},
            "predictors": str(predictors),
            "targets": targets,
            "stages": {},
        }
        for stage in self.stages:
            args = stage_overrides(stage, overrides)
            if stage == "train":
                args += [
                    f"predictor={','.join(targets)}",
                    override("out_dir", predictors),
                    override("hydra.sweep.dir", dirs[stage]),
                    "trainer.progress=false",
                ]
                self.stage(stage, args, dirs[stage], multirun=True)
                out["stages"][stage] = {
                    t: _summary(dirs[stage] / str(i)) for i, t in enumerate(targets)
                }
            else:
                args.append(override("hydra.run.dir", dirs[stage]))
                if stage == "evaluate":
                    args.append(override("predictors", predictors))
                self.stage(stage, args, dirs[stage])
                out["stages"][stage] = _summary(dirs[stage])
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
    summary = pipeline.run(overrides, list(cfg.sam_model.sizes))
    save_run(cfg, summary)
    for stage, folder in summary["run_folders"].items():
        log.info("%-9s -> %s", stage, folder)
    log.info("predictor bundles -> %s", summary["predictors"])
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
