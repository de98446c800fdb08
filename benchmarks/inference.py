#!/usr/bin/env python
"""Inference overhead of USAM: SAM 2 alone vs SAM 2 with all nine bundles, one process.

Per repeat, on the same image and prompts (interleaved, so drift hits both alike):
  sam2   SAM2ImagePredictor.set_image + predict (upstream, numpy out)
  usam   UncertainSAM.set_image + predict with every bundle attached (same decoder pass)
The two share one model; usam's token hooks stay installed during the sam2 runs but do
nothing there (one Python call per hooked module). Also times the MLPs alone.
Paper (RTX 3050 Ti, s/img): Tiny 0.122 -> 0.139, Large 0.437 -> 0.441.

  python benchmarks/inference.py                           # random tiny SAM, 1024 px, CPU
  python benchmarks/inference.py --image-size 256          # quicker, larger relative overhead
  python benchmarks/inference.py --checkpoint checkpoints/sam2.1/sam2.1_hiera_large.pt \
      --estimators models --device cuda                   # real weights and bundles
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from usam.inference import UncertainSAM
from usam.mlp import UsamMLP, save_bundle
from usam.schema import SIZES, TARGETS


def untrained_bundles(directory: Path, seed: int = 0) -> Path:
    """Nine bundles of seeded untrained MLPs (the paper's 512-512-512-1): same cost as trained."""
    for i, target in enumerate(TARGETS):
        torch.manual_seed(seed + i)
        save_bundle(
            directory / target,
            UsamMLP(),
            {"target": target, "output_shift": TARGETS[target], "random_weights": True},
        )
    return directory


def synthetic_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] += np.array([180, 40, 20], np.uint8)
    return img


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", default="tiny", choices=SIZES)
    p.add_argument("--checkpoint", default=None, help="SAM 2 checkpoint; default: random weights")
    p.add_argument(
        "--estimators",
        "--predictors",  # the old name
        default=None,
        help="bundle dir; default: 9 untrained MLPs",
    )
    p.add_argument("--image-size", type=int, default=1024, help="SAM input size (1024 = its own)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--prompts", type=int, default=1, help="single-point prompts per predict call")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        bundles = args.estimators or untrained_bundles(Path(tmp))
        usam = UncertainSAM.from_pretrained(
            args.checkpoint,
            bundles,
            size=args.size,
            device=args.device,
            image_size=None if args.image_size == 1024 else args.image_size,
            random_weights=args.checkpoint is None,
        )
    sam = usam.sam
    # upstream's own predictor on the same weights (with the feature sizes of this image size)
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    upstream = SAM2ImagePredictor(sam.model)
    upstream._bb_feat_sizes = sam.sam_predictor._bb_feat_sizes
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if sam.device.type == "cuda"
        else contextlib.nullcontext()
    )

    image = synthetic_image(args.height, args.width)
    rng = np.random.default_rng(0)
    points = rng.uniform((0, 0), (args.width, args.height), (args.prompts, 1, 2))
    labels = np.ones((args.prompts, 1), np.int64)

    def sync() -> None:
        if sam.device.type == "cuda":
            torch.cuda.synchronize(sam.device)

    def run_sam2() -> None:
        with torch.inference_mode(), autocast:
            upstream.set_image(image)
            upstream.predict(points, labels, multimask_output=True)

    def run_usam() -> None:
        usam.set_image(image)
        usam.predict(points, labels)

    def timed(fn) -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    run_sam2(), run_usam()  # warm-up: allocator, kernels, lazy init
    times: dict[str, list[float]] = {"sam2": [], "usam": []}
    for _ in range(args.repeats):
        times["sam2"].append(timed(run_sam2))
        times["usam"].append(timed(run_usam))

    # the MLPs alone, on tokens of the shape one predict call gives them
    x = torch.randn(args.prompts * 3, 512, device=sam.device)
    n_mlp = 200
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(n_mlp):
            for heads in usam.heads.values():  # one stacked evaluation per token pairing
                heads(x)
    sync()
    t_mlp = (time.perf_counter() - t0) / n_mlp

    name = torch.cuda.get_device_name(sam.device) if sam.device.type == "cuda" else "cpu"
    print(
        f"device={name} threads={torch.get_num_threads()} SAM {sam.version} {args.size} "
        f"({'random' if sam.random_weights else 'checkpoint'} weights) image_size={sam.image_size} "
        f"image={args.height}x{args.width} prompts/call={args.prompts} repeats={args.repeats} "
        f"bundles={len(usam.estimators)}"
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(
            f"{k:5s} set_image+predict: median {med[k]:.4f} s  min {min(v):.4f} s  "
            f"({', '.join(f'{t:.3f}' for t in v)})"
        )
    print(f"MLPs alone ({len(usam.estimators)} bundles): {t_mlp * 1e3:.3f} ms per predict call")
    print(
        f"overhead: {100 * (med['usam'] / med['sam2'] - 1):+.2f}% (median), "
        f"{100 * (min(times['usam']) / min(times['sam2']) - 1):+.2f}% (min); "
        f"MLPs alone {100 * t_mlp / med['sam2']:.3f}% of SAM 2's time"
    )


if __name__ == "__main__":
    main()
