"""The published code's command line for stage 3, mapped onto `python -m usam.train -m`.

    python scripts/train_all_predictors.py --train-data ${USAM_INFERENCE}/DAVIS_training_container \\
        --output-dir models [--val-data DIR] [--skip-smac] [--n-trials 100] [--multi-fidelity] \\
        [--metrics iou_large task_gap ...] [--filter-model large] [--no-augmented] [-- hydra overrides]

Without --skip-smac every target gets a SMAC search (--multi-fidelity: Hyperband over epochs);
with it, the paper's tuned hyperparameters. One Hydra multirun job per target; bundles go to
<output-dir>/<target>/. Anything after `--` is passed to Hydra (e.g. `device=cpu predictor.epochs=5`).
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

from usam.overrides import quote

TARGETS = [
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


def container_path(value: str) -> str:
    # the seed's containers were `.pth` files; ours are directories without the suffix
    path = Path(value)
    if not path.exists() and path.suffix in (".pth", ".pt") and path.with_suffix("").exists():
        path = path.with_suffix("")
    return quote(str(path.absolute()))


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
    parser.add_argument("--no-augmented", action="store_true", help="rows of original images only")
    parser.add_argument(
        "hydra_overrides", nargs="*", help="more overrides after --, e.g. device=cpu"
    )
    args = parser.parse_args(argv)
    metrics = [m for item in args.metrics for m in item.split(",") if m]
    unknown = [m for m in metrics if m not in TARGETS]
    if unknown:
        parser.error(f"unknown metric(s) {unknown}; choose from {', '.join(TARGETS)}")
    out = [
        f"predictor={','.join(metrics)}",
        f"container={container_path(args.train_data)}",
        f"out_dir={quote(str(Path(args.output_dir).absolute()))}",
        f"hpo={'none' if args.skip_smac else 'smac_hyperband' if args.multi_fidelity else 'smac'}",
        f"predictor.no_augmented={str(args.no_augmented).lower()}",
    ]
    if args.val_data:
        out.append(f"val_container={container_path(args.val_data)}")
    if args.filter_model:
        out.append(f"predictor.filter_model={quote(args.filter_model)}")
    if args.n_trials is not None and not args.skip_smac:
        out.append(f"hpo.n_trials={args.n_trials}")
    return [*out, *args.hydra_overrides]


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "-m", *overrides()]
    # exactly `python -m usam.train -m <overrides>` (run as __main__, Hydra finds its configs)
    runpy.run_module("usam.train", run_name="__main__", alter_sys=True)
