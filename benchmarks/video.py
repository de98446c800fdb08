#!/usr/bin/env python
"""Video overhead of USAM: SAM 2's propagation alone vs with per-frame estimates, one process.

Per repeat, on the same video, prompts and model (interleaved, so drift hits both alike):
  sam2   SAM2VideoPredictor.propagate_in_video, masks to numpy (what a user does per frame)
  usam   VideoUSAM.propagate_in_video with nine bundles: token hooks, kept-mask pairing,
         entropies and every estimate per (frame, object), masks to numpy
Then video-mode extraction (`usam.extract_video.VideoExtractor`, one SAM size) on the same
video as a DAVIS tree: frames per second, records written included.

  python benchmarks/video.py                          # random tiny SAM, 256 px, CPU, 6 frames
  python benchmarks/video.py --image-size 1024 --frames 20 --objects 3 --device cuda
  python benchmarks/video.py --checkpoint checkpoints/sam2.1/sam2.1_hiera_large.pt --size large
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
from PIL import Image

from usam.inference import load_bundles
from usam.mlp import UsamMLP, save_bundle
from usam.registry import lookup, parse_checkpoint_name
from usam.schema import SIZES, TARGETS
from usam.video import VideoUSAM, _float_memory, build_video_model


def untrained_bundles(directory: Path, seed: int = 0) -> Path:
    for i, target in enumerate(TARGETS):
        torch.manual_seed(seed + i)
        config = {"target": target, "output_shift": TARGETS[target], "random_weights": True}
        save_bundle(directory / target, UsamMLP(), config)
    return directory


def synthetic_video(root: Path, frames: int, objects: int, h: int = 480, w: int = 640) -> dict:
    """A DAVIS tree (JPEGs + palette PNGs) with `objects` moving rectangles; returns prompts."""
    rng = np.random.default_rng(0)
    video = root / "JPEGImages" / "480p" / "bench"
    ann = root / "Annotations" / "480p" / "bench"
    video.mkdir(parents=True)
    ann.mkdir(parents=True)
    prompts = {}
    for f in range(frames):
        img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        lab = np.zeros((h, w), np.uint8)
        for k in range(objects):
            y, x = 40 + 120 * k, 30 + 8 * f + 60 * k
            img[y : y + 90, x : x + 120] = (200, 60 + 50 * k, 40)
            lab[y : y + 90, x : x + 120] = k + 1
            if f == 0:
                prompts[k + 1] = [[x + 60, y + 45]]
        Image.fromarray(img).save(video / f"{f:05d}.jpg", quality=95)
        im = Image.frombytes("P", (w, h), lab.tobytes())
        im.putpalette([c for i in range(256) for c in (i, 255 - i, (7 * i) % 256)])
        im.save(ann / f"{f:05d}.png")
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("bench\n")
    return {"video": video, "prompts": prompts}


def propagate(vusam: VideoUSAM, video: Path, prompts: dict) -> float:
    """Seconds of usam's propagation (prompts and state set-up not counted)."""
    state = vusam.init_state(video)
    for oid, pts in prompts.items():
        vusam.add_new_points_or_box(state, 0, oid, points=pts, labels=[1] * len(pts))
    sync = torch.cuda.synchronize if vusam.device.type == "cuda" else lambda: None
    sync()
    t0 = time.perf_counter()
    for res in vusam.propagate_in_video(state):
        assert res.objects[0] is not None
    sync()
    seconds = time.perf_counter() - t0
    vusam.reset_state(state)
    return seconds


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
    p.add_argument("--image-size", type=int, default=256, help="SAM input size (1024 = its own)")
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--objects", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's own)"
    )
    args = p.parse_args()
    if args.threads:
        # on a shared machine, OpenMP threads spinning against other jobs make small ops
        # (usam's per-frame work) about 20x slower; one thread measures the work itself
        torch.set_num_threads(args.threads)
    version = parse_checkpoint_name(args.checkpoint or "")[0] or "sam2.1"
    config = lookup(version, args.size).config
    model = build_video_model(
        config,
        args.checkpoint,
        device=args.device,
        image_size=None if args.image_size == 1024 else args.image_size,
        random_weights=args.checkpoint is None,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundles = args.estimators or untrained_bundles(tmp / "bundles")
        estimators = load_bundles(bundles)
        data = synthetic_video(tmp / "DAVIS", args.frames, args.objects)

        def with_estimates() -> float:
            vusam = VideoUSAM(
                model,
                size=args.size,
                version="sam2.1",
                estimators=estimators,
                random_weights=args.checkpoint is None,
                check=False,
            )
            try:
                return propagate(vusam, data["video"], data["prompts"])
            finally:
                vusam.remove_hooks()  # the model is SAM 2's own again

        with_estimates()  # warm-up

        # usam's own work per decoder call (pairing, entropies, estimators), timed alone on a
        # recorded call: stable even when the machine is too busy for the end-to-end ratio
        vusam = VideoUSAM(
            model, size=args.size, version="sam2.1", estimators=estimators, check=False
        )
        calls = []
        record = vusam._record
        vusam._record = lambda *a: (calls.append(a), record(*a))
        propagate(vusam, data["video"], data["prompts"])
        vusam._record = record
        last = [c for c in calls if c[0] == calls[-1][0]]  # every object's call of one frame
        t0 = time.perf_counter()
        for _ in range(50):
            for c in last:
                record(*c)
            parts = [vusam._pending.pop(k) for k in list(vusam._pending)]
            vusam.estimate(*(torch.stack(x) for x in zip(*parts, strict=True)))
        record_s = (time.perf_counter() - t0) / 50
        vusam.remove_hooks()
        times: dict[str, list[float]] = {"sam2": [], "usam": []}
        for _ in range(args.repeats):
            times["sam2"].append(propagate_plain(model, data))
            times["usam"].append(with_estimates())

        from usam.datasets.davis import Davis
        from usam.evaluate_video import videos_of
        from usam.extract import RecordWriter
        from usam.extract_video import VideoExtractor

        reader = Davis(root=tmp / "DAVIS", split="val", resolution="480p")
        extract = VideoUSAM(
            model,
            size=args.size,
            version="sam2.1",
            random_weights=args.checkpoint is None,
            keep_tokens=True,
            check=False,
        )
        writer = RecordWriter(root=tmp / "records", dataset="bench", split="val")
        t0 = time.perf_counter()
        summary = VideoExtractor(writer=writer, resume=False).run(
            reader, videos_of(reader), [extract]
        )
        extract_s = time.perf_counter() - t0
        extract.remove_hooks()

    n = args.frames
    sam2, usam = statistics.median(times["sam2"]), statistics.median(times["usam"])
    print(
        f"SAM 2.1 {args.size}, {args.image_size} px, {model.device}, {n} frames x "
        f"{args.objects} objects, {len(estimators)} estimators, median of {args.repeats}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"  sam2 propagation               {sam2 / n * 1000:9.1f} ms/frame")
    print(f"  usam propagation + estimates   {usam / n * 1000:9.1f} ms/frame")
    print(f"  overhead                       {100 * (usam / sam2 - 1):+9.2f} %")
    per_frame = record_s
    print(
        f"  usam's work alone              {per_frame * 1000:9.2f} ms/frame "
        f"= {100 * per_frame / (sam2 / n):.2f} % of sam2's propagation"
    )
    print(f"  runs (s): sam2 {times['sam2']}, usam {times['usam']}")
    print(
        f"  video-mode extraction          {summary['records'] / extract_s:9.2f} frames/s "
        f"({summary['instances']} (frame, object) rows in {extract_s:.1f} s, "
        f"propagation alone {n / sam2:.2f} frames/s)"
    )


def propagate_plain(model, data: dict) -> float:
    """SAM 2 alone, its own JPEG loader, masks to numpy: the baseline of the overhead."""
    cuda = model.device.type == "cuda"
    # on a CPU sam2 needs its bf16 memories cast back (usam's one hook that is not a cost)
    hook = (
        None
        if cuda
        else model.memory_attention.register_forward_pre_hook(_float_memory, with_kwargs=True)
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    try:
        with autocast:
            state = model.init_state(str(data["video"]))
            for oid, pts in data["prompts"].items():
                model.add_new_points_or_box(state, 0, oid, points=pts, labels=[1] * len(pts))
            sync = torch.cuda.synchronize if cuda else lambda: None
            sync()
            t0 = time.perf_counter()
            for _, _, logits in model.propagate_in_video(state):
                (logits > 0.0).cpu().numpy()
            sync()
            seconds = time.perf_counter() - t0
        model.reset_state(state)
    finally:
        if hook is not None:
            hook.remove()
    return seconds


if __name__ == "__main__":
    main()
