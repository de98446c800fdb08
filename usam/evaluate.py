"""Stage 4: python -m usam.evaluate — how well each UQ score finds the predictions worth refining.

On the rows of a container (its group-aware validation split, or all rows of a separate
test container) and a directory of trained USAM estimator bundles: correction curves and
relative AUCs for the four use cases (usam.evaluation.USE_CASES) of every UQ score, and the
Pearson correlation of every measure with the GT IoU. The maths is usam.evaluation's; the
files (`report.json`, CSV tables, PNG plots, TensorBoard scalars under `<run>/tb`) and the
printed table are usam.report's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from usam import CONF_DIR, options
from usam.cli import run_stage, save_run
from usam.container import Container
from usam.errors import UsamError
from usam.evaluation import (
    ESTIMATOR_DIRECTION,
    MEASURES,
    USE_CASES,
    compare,
    orient,
    pearson_matrix,
    r_grid,
)
from usam.options import flag, integer, number, unset
from usam.protocol import container_identity, describe, group_table, read_seen, seen_rows
from usam.report import format_table, write_report
from usam.sam import resolve_device
from usam.schema import SIZES

log = logging.getLogger(__name__)

REPORT_SCHEMA = 1
RANDOM_WARNING = (
    "RANDOM SAM WEIGHTS: the container or an estimator was made with untrained SAM 2 weights; "
    "these numbers test the pipeline and mean nothing about SAM or USAM"
)


class Evaluator:
    """Curves, relative AUCs and correlations of one container split; see the module docstring."""

    def __init__(
        self,
        *,
        model: str | None = None,
        use_cases: Sequence[str] = tuple(USE_CASES),
        augmented: bool = False,
        val_fraction: float | None = None,
        seed: int | None = None,
        allow_in_sample_results: bool = False,
        r_max: float = 0.5,
        r_points: int = 51,
        device: str = "auto",
        batch_size: int = 8192,
        plots: bool = True,
        tensorboard: bool = True,
    ):
        if isinstance(use_cases, str):
            use_cases = [use_cases]
        if not use_cases:
            raise UsamError(
                f"evaluator.use_cases is empty; name at least one of {', '.join(USE_CASES)}"
            )
        unknown = [u for u in use_cases if u not in USE_CASES]
        if unknown:
            raise UsamError(f"unknown use case(s) {unknown}; choose from {', '.join(USE_CASES)}")
        # every option in its type and range before any file is read
        if val_fraction is not None:  # null: the split the estimators' training held out
            val_fraction = number(
                val_fraction, "evaluator.val_fraction", low=0, high=1, low_open=True, high_open=True
            )
        r_max = number(r_max, "evaluator.r_max", low=0, high=1, low_open=True)
        r_points = integer(r_points, "evaluator.r_points", low=2, high=100_001)
        self.r = r_grid(r_max, r_points)
        self.model = None if unset(model) else str(model)
        self.use_cases = list(use_cases)
        self.augmented = flag(augmented, "evaluator.augmented")
        self.val_fraction = val_fraction
        self.seed = None if seed is None else integer(seed, "evaluator.seed", low=0)
        self.allow_in_sample = flag(allow_in_sample_results, "evaluator.allow_in_sample_results")
        self.device = resolve_device(str(device), key="evaluator.device")
        self.batch_size = integer(batch_size, "evaluator.batch_size", low=1)
        self.plots = flag(plots, "evaluator.plots")
        self.tensorboard = flag(tensorboard, "evaluator.tensorboard")
        self.notes: list[str] = []
        self.bundle_dirs: dict[str, Path] = {}

    def note(self, message: str, level: int = logging.INFO) -> None:
        """Something the reader of the report must know (also logged)."""
        log.log(level, "%s", message)
        self.notes.append(message)

    # ---- inputs ----------------------------------------------------------------------------
    def rows(self, c: Container, split: str, how: dict[str, Any]) -> Container:
        """The rows to evaluate: the validation split (as training held it out) or all rows.

        The split is cut as python -m usam.train cut it (`how`: val_fraction, seed and the
        training filters, see `split_of`); the evaluated rows are then those of its groups,
        with or without the variant rows (`evaluator.augmented`).
        """
        if split not in ("all", "val", "train"):
            raise UsamError(f"split={split!r}; use val (the container's validation split) or all")
        view = c if self.augmented else c.filter(augmented=False)
        if split != "all" and len(view):
            base = c.filter(model=how["model"], augmented=None if how["augmented"] else False)
            train, val = base.split(val_fraction=how["val_fraction"], seed=how["seed"])
            groups = group_table([val if split == "val" else train])
            view = view.subset(
                np.flatnonzero(seen_rows(view, {d: set(g) for d, g in groups.items()}))
            )
        if len(view) == 0:
            raise UsamError(f"{c.path}: no rows in split={split} (augmented={self.augmented})")
        return view

    def split_of(self, c: Container, bundles: dict[str, Any]) -> dict[str, Any]:
        """How training split `c`: val_fraction and seed (the evaluator's if set) and the
        training filters, from the records of the bundles trained on `c` alone; else 0.2, 0
        and original-image rows of every model."""
        ident = container_identity(c)
        used = set()
        for p in bundles.values():
            record = p.config.get("data") or {}
            mine = [
                x["meta_sha256"] == ident["meta_sha256"] or x["path"] == ident["path"]
                for x in record.get("containers", [])
            ]
            if mine == [True] and record.get("split"):
                f = record.get("filters") or {}
                used.add(
                    (
                        float(record["split"]["val_fraction"]),
                        int(record["split"]["seed"]),
                        f.get("model"),
                        bool(f.get("augmented", False)),
                    )
                )
        fraction, seed, model, augmented = next(iter(used)) if used else (0.2, 0, None, False)
        if self.val_fraction is not None or self.seed is not None:
            fraction = fraction if self.val_fraction is None else self.val_fraction
            seed = seed if self.seed is None else self.seed
        elif len(used) > 1:
            raise UsamError(
                f"the estimators were validated on different splits of {c.path} (val_fraction, "
                f"seed, filter_model, augmented: {sorted(used, key=str)}); evaluate them apart, "
                "or set evaluator.val_fraction and evaluator.seed"
            )
        return {"val_fraction": fraction, "seed": seed, "model": model, "augmented": augmented}

    def pick_model(self, c: Container) -> str:
        models = list(c.meta["models"])
        if self.model is not None:
            if self.model not in models:
                raise UsamError(
                    f"{c.path}: evaluator.model={self.model!r} but the container holds {models}"
                )
            return self.model
        known = [m for m in SIZES if m in models]
        return known[-1] if known else models[-1]

    def load_bundles(self, directory: Any, container: Container) -> dict[str, Any]:
        """target -> Estimator for every bundle under `directory` (`<dir>/<target>/` or one
        bundle), found by the loader inference uses (usam.inference.load_bundles)."""
        from usam.inference import load_bundles

        if unset(directory):
            self.note("estimators=null: USAM estimators are not evaluated, only the other measures")
            return {}
        found = load_bundles(Path(str(directory)), device=self.device)
        out = {}
        for target, p in found.items():
            where = p.directory
            if target not in ESTIMATOR_DIRECTION:
                self.note(
                    f"{where}: target {target!r} has no known direction; left out", logging.WARNING
                )
                continue
            width = 2 * int(container.meta["token_dim"])
            if p.model.in_features != width:
                raise UsamError(
                    f"{where}: the estimator takes {p.model.in_features} inputs but the container's "
                    f"tokens give {width}; retrain it on this kind of container"
                )
            self._check_trained_on(p.config, target, container)
            out[target] = p
            self.bundle_dirs[target] = where
        log.info("estimators from %s: %s", directory, ", ".join(out))
        return out

    def _check_trained_on(self, config: dict[str, Any], target: str, container: Container) -> None:
        """Refuse a bundle whose SAM version or sizes differ from the rows it would score.

        The same check as inference (usam.inference.check_trained_on): the rows scored are
        the evaluated model's, plus tiny's when model selection ranks by this target.
        """
        from usam.inference import check_trained_on

        versions = [v for v in container.meta.get("sam_versions") or [] if not unset(v)]
        model = self.pick_model(container)
        sizes = [model]
        for name in self.use_cases:
            case = USE_CASES[name]
            if (
                case.rows_model
                and case.rows_model in container.meta["models"]
                and target in case.columns(model)[3]
                and case.rows_model not in sizes
            ):
                sizes.append(case.rows_model)
        check_trained_on(
            target,
            config,
            versions=versions,
            sizes=sizes,
            against=f"the container {container.path} (rows evaluated here)",
        )

    def check_leak(self, bundles: dict[str, Any], view: Container, split: str) -> dict[str, Any]:
        """Which evaluated rows each estimator's fit saw; refuse any unless explicitly allowed.

        A row counts as seen when its (dataset, group) was in the fit (usam.protocol).
        Returns the report's `protocol` entry: status out-of-sample, in-sample, unverified
        (a bundle without a record of its rows) or no-estimators.
        """
        n = len(view)
        groups = sum(len(g) for g in group_table([view]).values())
        where = f"{view.path}, split={split}"
        per: dict[str, Any] = {}
        seen_by: dict[str, int] = {}
        unverified = []
        for target, p in bundles.items():
            record = p.config.get("data")
            if not record:
                unverified.append(target)
                per[target] = {"fitted_on": None, "rows_seen": None}
                continue
            k = int(seen_rows(view, read_seen(self.bundle_dirs[target], record)).sum())
            per[target] = {"fitted_on": describe(record), "rows_seen": k}
            if k:
                seen_by[target] = k
        if seen_by and not self.allow_in_sample:
            worst = max(seen_by.values())
            raise UsamError(
                f"estimators {', '.join(seen_by)} were trained on up to {worst} of the {n} rows "
                f"this evaluation would score ({where}): in-sample numbers are not results. "
                "Evaluate rows they never saw (a separate container with split=all, or train with "
                "trainer.refit_all=false and evaluate split=val), or set "
                "evaluator.allow_in_sample_results=true to report them labelled IN-SAMPLE"
            )
        if not bundles:
            status, text = "no-estimators", "no USAM estimators evaluated (nothing was trained)"
        elif seen_by:
            status = "in-sample"
            text = (
                f"IN-SAMPLE: {', '.join(seen_by)} were trained on up to {max(seen_by.values())} of "
                f"the {n} rows evaluated ({where}); their numbers are optimistic, not results"
            )
        elif unverified:
            status = "unverified"
            text = (
                f"UNVERIFIED: {', '.join(unverified)} do not record the rows they were trained on "
                "(a bundle from an older usam or imported); the other estimators never saw these rows"
            )
        else:
            status = "out-of-sample"
            text = (
                f"out-of-sample: none of the {groups} group{'s' if groups != 1 else ''} ({n} rows) "
                f"evaluated ({where}) was in any estimator's training fit"
            )
        level = logging.INFO if status in ("out-of-sample", "no-estimators") else logging.WARNING
        self.note(text, level)
        tuned = [t for t, p in bundles.items() if searched_on(p.config, view, split)]
        if tuned:
            self.note(
                f"the hyperparameters of {', '.join(tuned)} were searched on these rows (their "
                "validation rows): unseen by the fit, but the choice of settings is mildly "
                "optimistic here",
                logging.WARNING,
            )
        return {
            "status": status,
            "statement": text,
            "rows": n,
            "groups": groups,
            "allow_in_sample_results": self.allow_in_sample,
            "estimators": per,
        }

    def predict(self, estimators: dict[str, Any], view: Container) -> dict[str, np.ndarray]:
        """Each estimator's value for every row of `view`, in the target's units."""
        out = {t: np.empty(len(view)) for t in estimators}
        for start in range(0, len(view), self.batch_size):
            tokens = torch.from_numpy(
                view.read_tokens(np.arange(start, min(start + self.batch_size, len(view))))
            )
            for t, p in estimators.items():
                out[t][start : start + len(tokens)] = p(tokens).double().cpu().numpy()
        return out

    # ---- the numbers -----------------------------------------------------------------------
    def use_case(
        self, name: str, view: Container, preds: dict[str, np.ndarray], model: str
    ) -> dict[str, Any]:
        """Curves and relative AUCs of one use case, or {"skipped": why}."""
        case = USE_CASES[name]
        models = list(view.meta["models"])
        missing = [m for m in case.needs_models if m not in models]
        if missing:
            why = f"needs models {list(case.needs_models)}, the container holds {models}"
            self.note(f"{name} skipped: {why}", logging.WARNING)
            return {"skipped": why}
        rows_model = case.rows_model or model
        cheap_col, refined_col, sam_col, targets = case.columns(model)
        pos = model_positions(view, rows_model)
        sub = view.subset(pos)
        cheap = sub[cheap_col]
        refined = np.ones(len(sub)) if refined_col is None else sub[refined_col]
        raw: dict[str, tuple[np.ndarray, str]] = {
            "sam_score": (sub[sam_col], MEASURES["sam_score"])
        }
        raw |= {m: (sub[m], d) for m, d in MEASURES.items() if m != "sam_score"}
        for t in targets:
            if t in preds:
                raw[f"usam_{t}"] = (preds[t][pos], ESTIMATOR_DIRECTION[t])
            elif preds:
                self.note(f"{name}: no {t} estimator bundle, usam_{t} left out")
        dropped: dict[str, int] = {}
        keep = np.ones(len(sub), dtype=bool)
        for col, values in ((cheap_col, cheap), (refined_col or "1", refined)):
            bad = keep & ~np.isfinite(values)
            if bad.any():
                dropped[col] = int(bad.sum())
            keep &= ~bad
        left_out: dict[str, str] = {}
        for m in list(raw):
            if not np.isfinite(raw[m][0][keep]).any():
                left_out[m] = "NaN on every row (not measured for this container)"
                del raw[m]
        for m, (values, _) in raw.items():
            bad = keep & ~np.isfinite(values)
            if bad.any():
                dropped[m] = int(bad.sum())
            keep &= ~bad
        if left_out:
            self.note(f"{name}: left out {', '.join(left_out)} (NaN on every row)")
        if dropped:
            self.note(f"{name}: dropped rows with NaN: {dropped}", logging.WARNING)
        n = int(keep.sum())
        if n == 0:
            why = f"no {rows_model} rows with finite {cheap_col} / {refined_col or '1'} and scores"
            self.note(f"{name} skipped: {why}", logging.WARNING)
            return {"skipped": why, "rows_dropped_nan": dropped}
        cheap, refined = cheap[keep], refined[keep]
        scores = {m: orient(v[keep], d) for m, (v, d) in raw.items()}
        curves, aucs = compare(cheap, refined, scores, self.r)
        if not np.isfinite(aucs["oracle"]):
            self.note(
                f"{name}: no sample gains from refinement, relative AUCs are undefined",
                logging.WARNING,
            )
        return {
            "label": case.label,
            "rows_model": rows_model,
            "cheap": cheap_col,
            "refined": refined_col or "1",
            "sam_score": sam_col,
            "rows": n,
            "rows_dropped_nan": dropped,
            "left_out": left_out,
            "directions": {m: d for m, (_, d) in raw.items()},
            "mean_cheap": float(cheap.mean()),
            "mean_refined": float(refined.mean()),
            "share_improved": float((refined > cheap).mean()),
            "r": self.r.tolist(),
            "curves": {k: v.tolist() for k, v in curves.items()},
            "relative_auc": aucs,
        }

    def correlations(
        self, view: Container, preds: dict[str, np.ndarray], model: str
    ) -> dict[str, Any]:
        """Pearson r of GT IoU, the stage-1 measures and every USAM prediction, on `model`'s rows."""
        pos = model_positions(view, model)
        sub = view.subset(pos)
        cols = {"iou": sub["iou"]} | {m: sub[m] for m in MEASURES}
        cols |= {f"usam_{t}": v[pos] for t, v in preds.items()}
        cols = {k: v for k, v in cols.items() if np.isfinite(v).any()}
        matrix = pearson_matrix(cols)
        names = list(cols)
        return {
            "model": model,
            "rows": len(sub),
            "names": names,
            "matrix": matrix.tolist(),
            "with_iou": {k: float(matrix[0, i]) for i, k in enumerate(names) if k != "iou"},
        }

    # ---- the stage -------------------------------------------------------------------------
    def run(
        self, *, container: Any, estimators: Any, split: str, run_dir: str | Path
    ) -> dict[str, Any]:
        start = time.time()
        self.notes, self.bundle_dirs = [], {}
        run_dir = Path(run_dir)
        c = Container.open(container)
        model = self.pick_model(c)
        bundles = self.load_bundles(estimators, c)
        how = self.split_of(c, bundles)
        view = self.rows(c, str(split), how)
        protocol = self.check_leak(bundles, view, str(split))
        random_weights = c.random_weights or any(
            p.config.get("random_weights", False) for p in bundles.values()
        )
        if random_weights:
            self.note(RANDOM_WARNING, logging.WARNING)
        preds = self.predict(bundles, view) if bundles else {}
        log.info("evaluating %d rows of %s (split=%s, model=%s)", len(view), c.path, split, model)
        cases = {name: self.use_case(name, view, preds, model) for name in self.use_cases}
        corr = self.correlations(view, preds, model)
        report = {
            "schema": REPORT_SCHEMA,
            "kind": "usam.evaluation",
            "random_weights": random_weights,
            "warning": RANDOM_WARNING if random_weights else None,
            "container": str(c.path),
            "datasets": c.meta.get("datasets"),
            "sam_versions": c.meta.get("sam_versions"),
            "split": str(split),
            "val_fraction": how["val_fraction"] if split != "all" else None,
            "seed": how["seed"] if split != "all" else None,
            "augmented": self.augmented,
            "protocol": protocol,
            "model": model,
            "rows": len(view),
            "estimators": {
                t: {
                    "bundle": str(self.bundle_dirs[t]),
                    "random_weights": bool(p.config.get("random_weights", False)),
                    "trained_on": p.config.get("trained_on"),
                    **protocol["estimators"][t],
                }
                for t, p in bundles.items()
            },
            "relative_auc_definition": "area between the curve and its r=0 level / the same for the oracle "
            "(trapezoid over r); oracle = 1, random = analytic straight line",
            "use_cases": cases,
            "correlation": corr,
            "notes": self.notes,
        }
        files = write_report(report, run_dir, plots=self.plots, tensorboard=self.tensorboard)
        table = format_table(report)
        print(table, flush=True)
        summary = {
            "container": str(c.path),
            "split": str(split),
            "model": model,
            "rows": len(view),
            "random_weights": random_weights,
            "protocol": protocol["status"],
            "protocol_statement": protocol["statement"],
            "relative_auc": {k: v["relative_auc"] for k, v in cases.items() if "relative_auc" in v},
            "pearson_iou": corr["with_iou"],
            "report": str(files["report"]),
            "seconds": round(time.time() - start, 3),
        }
        return summary


def searched_on(config: dict[str, Any], view: Container, split: str) -> bool:
    """Did a hyperparameter search of this bundle score itself on the rows of `view`?"""
    record = config.get("data") or {}
    if (config.get("hpo") or {}).get("method", "none") == "none" or not record:
        return False
    digest = container_identity(view)["meta_sha256"]
    if record.get("val_container"):  # validated (and searched) on a container of its own
        return record["val_container"]["meta_sha256"] == digest
    return split == "val" and any(x["meta_sha256"] == digest for x in record["containers"])


def model_positions(view: Container, model: str) -> np.ndarray:
    """Positions in `view` of the rows of one SAM model."""
    return np.flatnonzero(view.code("model") == view.table("model").index(model))


def run(cfg: DictConfig) -> dict[str, Any]:
    evaluator = instantiate(cfg.evaluator)
    summary = evaluator.run(
        container=cfg.container,
        estimators=options.estimators(cfg),
        split=cfg.split,
        run_dir=cfg.paths.output_dir,
    )
    return save_run(cfg, summary)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_stage(run, cfg)


if __name__ == "__main__":
    main()
