"""The published code's command line for stage 3, mapped onto `python -m usam.train -m`.

    python scripts/train_all_predictors.py --train-data ${USAM_INFERENCE}/DAVIS_training_container \\
        --output-dir models [--val-data DIR] [--skip-smac] [--n-trials 100] [--multi-fidelity] \\
        [--metrics iou_large task_gap ...] [--filter-model large] [--no-augmented] [--silent] \\
        [--overwrite] [-- hydra overrides]

Without --skip-smac every target gets a SMAC search (--multi-fidelity: Hyperband over epochs);
with it, the paper's tuned hyperparameters. One Hydra multirun job per target; bundles go to
<output-dir>/<target>/, and a target whose bundle is already there is skipped (as the
published script did; --overwrite retrains it). `--train-data <dir>/sav_ALL_<suffix>` trains
on every `<dir>/sav_NNN_<suffix>` container at once (the published way to use all of SA-V).
`--val-data` validates (and searches) on that container; it is never trained on. Training
uses original-image rows (the published default; `--no-augmented` is accepted and changes
nothing; add `-- predictor.augmented=true` for the variant rows). Anything after `--` is passed
to Hydra (e.g. `device=cpu predictor.epochs=5`).
"""

from __future__ import annotations

import argparse
import re
import runpy
import sys
from pathlib import Path

from usam.overrides import quote
from usam.schema import TARGETS as SCHEMA_TARGETS

TARGETS = list(SCHEMA_TARGETS)  # the nine, in the paper's order


def container_path(value: str) -> str:
    # the seed's containers were `.pth` files; ours are directories without the suffix
    path = Path(value)
    if not path.exists() and path.suffix in (".pth", ".pt") and path.with_suffix("").exists():
        path = path.with_suffix("")
    return quote(str(path.absolute()))


def train_containers(value: str) -> str:
    """`container=` for --train-data: one path, or for `.../sav_ALL_<suffix>` the list of
    every `sav_NNN_<suffix>` container beside it."""
    path = Path(value)
    name = path.name[: -len(path.suffix)] if path.suffix in (".pth", ".pt") else path.name
    if "sav_ALL_" not in name or path.exists():
        return container_path(value)
    prefix, suffix = name.split("sav_ALL_", 1)
    pattern = re.compile(rf"{re.escape(prefix)}sav_\d+_{re.escape(suffix)}")
    parent = path.parent
    found = sorted(
        p
        for p in (parent.iterdir() if parent.is_dir() else [])
        if pattern.fullmatch(p.name) and (p / "meta.json").is_file()
    )
    if not found:
        raise SystemExit(
            f"--train-data {value}: no containers {prefix}sav_NNN_{suffix} in {parent}; build one "
            "per SA-V subset with scripts/create_training_container.py"
        )
    print(f"--train-data {name}: {len(found)} SA-V subset containers", file=sys.stderr)
    return "[" + ",".join(quote(str(p.absolute())) for p in found) + "]"


def overrides(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--train-data", required=True, help="training container (python -m usam.container)"
    )
    parser.add_argument(
        "--val-data", help="validation container (default: 20%% of the groups of --train-data)"
    )
    parser.add_argument(
        "--output-dir", required=True, help="bundles are written to <output-dir>/<target>/"
    )
    parser.add_argument(
        "--skip-smac", action="store_true", help="no search: the paper's tuned values"
    )
    parser.add_argument("--n-trials", type=int, help="SMAC trials per target (default 100)")
    parser.add_argument(
        "--multi-fidelity", action="store_true", help="SMAC with Hyperband over epochs"
    )
    parser.add_argument(
        "--metrics", nargs="+", default=TARGETS, help="targets to train (default: all nine)"
    )
    parser.add_argument(
        "--filter-model", help="train on the rows of this SAM model only (tiny ... large)"
    )
    parser.add_argument(
        "--no-augmented",
        action="store_true",
        help="rows of original images only (the default now; kept for the published command)",
    )
    parser.add_argument(
        "--silent", action="store_true", help="no progress bars (training and SMAC)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="retrain targets already in --output-dir"
    )
    parser.add_argument(
        "hydra_overrides", nargs="*", help="more overrides after --, e.g. device=cpu"
    )
    args = parser.parse_args(argv)
    metrics = [m for item in args.metrics for m in item.split(",") if m]
    unknown = [m for m in metrics if m not in TARGETS]
    if unknown:
        parser.error(f"unknown metric(s) {unknown}; choose from {', '.join(TARGETS)}")
    output = Path(args.output_dir).absolute()
    if not args.overwrite:
        done = [m for m in metrics if (output / m / "config.json").is_file()]
        for m in done:
            print(
                f"skipping {m}: {output / m} holds a trained model (--overwrite retrains)",
                file=sys.stderr,
            )
        metrics = [m for m in metrics if m not in done]
        if not metrics:
            return []
    out = [
        f"predictor={','.join(metrics)}",
        f"container={train_containers(args.train_data)}",
        f"out_dir={quote(str(output))}",
        f"hpo={'none' if args.skip_smac else 'smac_hyperband' if args.multi_fidelity else 'smac'}",
    ]
    if args.silent:
        out.append("trainer.progress=false")
        if not args.skip_smac:
            out.append("hpo.progress=false")
    if args.val_data:
        out.append(f"val_container={container_path(args.val_data)}")
    if args.filter_model:
        out.append(f"predictor.filter_model={quote(args.filter_model)}")
    if args.n_trials is not None and not args.skip_smac:
        out.append(f"hpo.n_trials={args.n_trials}")
    return [*out, *args.hydra_overrides]


if __name__ == "__main__":
    args = overrides()
    if not args:
        print("every target already has a model in --output-dir; nothing to train", file=sys.stderr)
        sys.exit(0)
    sys.argv = [sys.argv[0], "-m", *args]
    # exactly `python -m usam.train -m <overrides>` (run as __main__, Hydra finds its configs)
    runpy.run_module("usam.train", run_name="__main__", alter_sys=True)
