#!/usr/bin/env python
"""The published code's extraction command, kept for its users: translates its flags to
Hydra overrides and runs `python -m usam.extract` with them.

  python scripts/augment_dataset.py --dataset DAVIS --output-dir $USAM_INFERENCE/DAVIS --split val \
      --model-root $SAM_ROOT/models/sam/checkpoints_2.0 --root $SAM_ROOT/data/DAVIS --skip-augs

SA-V training subsets: `--split train --train-subsets 0 1` (numbers, as the published flag took
them) or folder names (`sav_000 sav_001`). Add --print-overrides to see the equivalent
`python -m usam.extract ...` command without running it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from usam.overrides import override, quoted_list
from usam.registry import lookup, parse_checkpoint_name
from usam.schema import SIZES

DATASETS = {
    "davis": "davis",
    "mose": "mose",
    "sav": "sav",
    "sa-v": "sav",
    "ade20k": "ade20k",
    "ade": "ade20k",
    "coco": "coco",
    "sample": "sample",
}
SPLITS = {
    "train": "train",
    "training": "train",
    "train2017": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "val2017": "val",
    "test": "test",
    "test-dev": "test",
}


def sam_version(model_root: Path) -> str:
    """sam2.1 if the folder holds SAM 2.1 checkpoints, else sam2.0 (the seed's checkpoints_2.0)."""
    named = {parse_checkpoint_name(p)[0] for p in model_root.glob("*.pt")}
    if "sam2.1" in named:
        return "sam2.1"
    if "sam2.0" in named or "2.0" in model_root.name:
        return "sam2.0"
    return "sam2.1"


def sav_subset(value: str) -> str:
    """`0` -> `sav_000` (the published flag took subset numbers); folder names pass through."""
    return f"sav_{int(value):03d}" if value.isdigit() else value


def overrides(args: argparse.Namespace) -> list[str]:
    dataset = DATASETS.get(args.dataset.lower())
    if dataset is None:
        raise SystemExit(
            f"--dataset {args.dataset!r}: expected one of DAVIS, MOSE, SAV, ADE20k, COCO"
        )
    split = SPLITS.get(args.split.lower())
    if split is None:
        raise SystemExit(f"--split {args.split!r}: expected train, val or test")
    out = [
        f"dataset={dataset}",
        f"dataset.split={split}",
        f"augment={'none' if args.skip_augs else 'paper'}",
    ]
    if args.root:
        out.append(override("dataset.root", Path(args.root).resolve()))
    if args.output_dir:
        out.append(override("out_dir", Path(args.output_dir).resolve()))
    if args.model_root:
        root = Path(args.model_root).resolve()
        version = sam_version(root)
        out += [f"sam_model={version}", override("sam_model.checkpoint_dir", root)]
        if args.config_root:
            # the seed's config folder holds sam2's own files under their packaged names
            croot = Path(args.config_root).resolve()
            out += [
                override(f"sam_model.configs.{s}", croot / Path(lookup(version, s).config).name)
                for s in SIZES
            ]
    if args.sample and args.sample > 1:
        out.append(f"dataset.sample={args.sample}")
    if args.start:
        out.append(f"++dataset.start={args.start}")
    if args.end is not None:
        out.append(f"++dataset.end={args.end}")
    if args.train_subsets:
        out.append(
            f"dataset.train_subsets={quoted_list([sav_subset(s) for s in args.train_subsets])}"
        )
    return out + list(args.overrides)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", required=True, help="DAVIS, MOSE, SAV, ADE20k or COCO")
    p.add_argument(
        "--output-dir", help="where the records go (default: $USAM_INFERENCE/<dataset>/<split>)"
    )
    p.add_argument(
        "--split", default="val", help="train, val or test (dataset names such as valid work)"
    )
    p.add_argument("--model-root", help="folder with the SAM 2 checkpoints")
    p.add_argument(
        "--config-root", help="folder with the SAM 2 model YAMLs (default: the sam2 package's)"
    )
    p.add_argument("--root", help="dataset root")
    p.add_argument("--skip-augs", action="store_true", help="original images only (augment=none)")
    p.add_argument("--start", type=int, default=0, help="first image index (after --sample)")
    p.add_argument("--end", type=int, default=None, help="one past the last image index")
    p.add_argument("--sample", type=int, default=1, help="keep every k-th frame")
    p.add_argument(
        "--train-subsets",
        nargs="+",
        help="SA-V: subsets to read, as numbers (0 1) or folders (sav_000)",
    )
    p.add_argument(
        "--print-overrides", action="store_true", help="print the usam.extract command and exit"
    )
    p.add_argument("overrides", nargs="*", help="further Hydra overrides, passed through")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    ovr = overrides(args)
    if args.print_overrides:
        print("python -m usam.extract " + " ".join(shlex.quote(o) for o in ovr))
        return
    from usam import extract

    sys.argv = ["usam.extract", *ovr]
    extract.main()


if __name__ == "__main__":
    main()
