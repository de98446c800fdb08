"""Stage 2 speed and memory: build a container from synthetic records, with and without offload.

    python benchmarks/container.py [--rows 200000] [--instances 5] [--dir /tmp/usam-bench]

Prints, per mode: build rows/s and peak RSS (each build in a fresh process, so the
numbers are its own), container open time, and random-batch token reads per second.
Targets: offload build peak RSS < 1 GB whatever the row count; opening a 1M-row
offloaded container < 1 s. Reads right after the build come from the page cache, so
they are an upper bound for a cold disk.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from usam.synthetic import MODELS, VARIANTS, make_record, write_record


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_records(root: Path, rows: int, instances: int, frames_per_video: int = 10) -> int:
    """Records of 4 models x 5 variants x `instances`, enough for `rows` rows; returns images."""
    per_image = len(MODELS) * len(VARIANTS) * instances
    images = -(-rows // per_image)
    record, tensors = make_record(
        "x.jpg", "x", instances=[(i + 1, 100 + i) for i in range(instances)], variants=VARIANTS
    )
    for k in range(images):
        video = f"v{k // frames_per_video:05d}"
        record["name"], record["group"] = (
            f"JPEGImages/{video}/{k % frames_per_video:05d}.jpg",
            video,
        )
        write_record(root, record, tensors)
    return images


def child_build(records: str, out: str, offload: bool) -> dict:
    from usam.container import ContainerWriter

    s = ContainerWriter(roots=[records], out=out, offload=offload).write()
    return {
        "rows": s["rows"],
        "build_s": s["seconds"],
        "rows_per_s": s["rows_per_second"],
        "build_peak_rss_mb": round(peak_rss_mb(), 1),
    }


def child_read(out: str, batch: int = 256, batches: int = 200) -> dict:
    from usam.container import Container

    start = time.perf_counter()
    c = Container.open(out)
    open_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(batches):
        positions = rng.integers(0, len(c), batch)
        tokens, target = c.read_tokens(positions), c["iou"][positions]
    read_s = time.perf_counter() - start
    assert tokens.shape == (batch, 2, 256) and target.shape == (batch,)
    return {
        "open_s": round(open_s, 4),
        "mmap": c.mmap,
        "batch_rows_per_s": round(batch * batches / read_s),
        "batch_mb_per_s": round(batch * batches * 2 * 256 * 4 / read_s / 2**20, 1),
        "open_read_peak_rss_mb": round(peak_rss_mb(), 1),
    }


def in_child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--instances", type=int, default=5)
    parser.add_argument(
        "--dir", type=Path, default=None, help="work folder (default: a temp folder)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the records and containers")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = (
            child_build(rest[0], rest[1], rest[2] == "1")
            if kind == "build"
            else child_read(rest[0])
        )
        print(json.dumps(result))
        return

    work = args.dir or Path(tempfile.mkdtemp(prefix="usam-bench-"))
    records = work / "records"
    try:
        start = time.perf_counter()
        images = make_records(records, args.rows, args.instances)
        print(
            f"{images} synthetic records ({args.instances} instances, 4 models, 5 variants) "
            f"in {time.perf_counter() - start:.1f} s",
            flush=True,
        )
        for offload in (False, True):
            out = work / f"container_offload_{int(offload)}"
            result = in_child("--child", "build", str(records), str(out), str(int(offload)))
            result |= in_child("--child", "read", str(out))
            print(json.dumps({"offload": offload, **result}), flush=True)
            shutil.rmtree(out)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
