"""What verifying a record pair costs, against the unverified reads it replaced.

    python benchmarks/resume.py [--records 300] [--instances 5] [--dir /tmp/usam-bench-resume]

Writes records of 4 models x 5 variants x `--instances` with `RecordWriter`, then times,
on the same records in the same run: the baseline (both files exist: what resume checked
before records carried digests and settings) and `RecordWriter.done` (reads the JSON,
compares its settings, hashes the tensor file); then the container's token read: lazy
`safe_open` of every tensor (baseline) against the verified read (whole file, hashed,
parsed). Files come from the page cache, so the figures are for a warm disk; a cold one
adds the read of each tensor file.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from safetensors.numpy import load

from usam.extract import RecordWriter, _suffixed
from usam.storage import read_json, read_verified
from usam.synthetic import VARIANTS, make_record


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=300)
    ap.add_argument("--instances", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="usam-bench-resume-"))
    w = RecordWriter(root=root, dataset="bench", split="val")
    w.settings = {"models": ["tiny", "small", "base_plus", "large"], "seed": 0}
    names = [f"v{i // 50:03d}/{i % 50:05d}.jpg" for i in range(args.records)]
    rec, tensors = make_record(
        "x.jpg", "x", instances=[(i + 1, 100 + i) for i in range(args.instances)], variants=VARIANTS
    )
    for n in names:
        w.write(n, {**rec, "name": n}, tensors)
    size = _suffixed(w.stem(names[0]), ".safetensors").stat().st_size

    def baseline(n: str) -> bool:
        stem = w.stem(n)
        return _suffixed(stem, ".json").is_file() and _suffixed(stem, ".safetensors").is_file()

    def lazy(n: str) -> bool:
        from safetensors import safe_open

        with safe_open(str(_suffixed(w.stem(n), ".safetensors")), framework="np") as f:
            return all(f.get_tensor(k) is not None for k in f.keys())

    def verified(n: str) -> bool:
        stem = w.stem(n)
        digest = read_json(_suffixed(stem, ".json"))["tensors_sha256"]
        return bool(load(read_verified(_suffixed(stem, ".safetensors"), digest, stem)))

    report(names, {"exists (baseline)": baseline, "verified done()": w.done})
    report(names, {"safe_open (baseline)": lazy, "verified read": verified})
    print(f"({args.records} records, tensors {size / 1024:.0f} KiB each, warm page cache)")
    if args.dir is None:
        shutil.rmtree(root)


def report(names: list[str], checks: dict) -> None:
    times = {}
    for label, check in checks.items():
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            assert all(check(n) for n in names)
            best = min(best, time.perf_counter() - t0)
        times[label] = best / len(names)
    base = next(iter(times.values()))
    for label, t in times.items():
        print(f"  {label:22s} {t * 1e3:8.3f} ms/record  {t / base:6.1f}x baseline")


if __name__ == "__main__":
    main()
