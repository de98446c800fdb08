"""The published code's command line for stage 2, mapped onto `python -m usam.container`.

    python scripts/create_training_container.py --root ${USAM_INFERENCE}/DAVIS \\
        --out-file ${USAM_INFERENCE}/DAVIS_training_container [--offload] [--no-augmentations] \\
        [hydra overrides ...]

`--root` may be repeated (e.g. one per SA-V shard). The container is a directory now, so
a `.pth`/`.pt` suffix on --out-file is dropped. Anything after the flags is passed to Hydra.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

from usam.overrides import quote


def overrides(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", action="append", required=True, help="folder of extraction records"
    )
    parser.add_argument("--out-file", required=True, help="container directory to write")
    parser.add_argument("--offload", action="store_true", help="open the container memory-mapped")
    parser.add_argument(
        "--no-augmentations", action="store_true", help="rows of original images only"
    )
    parser.add_argument("hydra_overrides", nargs="*", help="more overrides, e.g. overwrite=false")
    args = parser.parse_args(argv)
    out = Path(args.out_file)
    if out.suffix in (".pth", ".pt"):
        out = out.with_suffix("")
    roots = ",".join(quote(str(Path(r).absolute())) for r in args.root)
    return [
        f"roots=[{roots}]",
        f"out={quote(str(out.absolute()))}",
        f"offload={str(args.offload).lower()}",
        f"augmented={str(not args.no_augmentations).lower()}",
        *args.hydra_overrides,
    ]


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *overrides()]
    # exactly `python -m usam.container <overrides>` (run as __main__, Hydra finds its configs)
    runpy.run_module("usam.container", run_name="__main__", alter_sys=True)
