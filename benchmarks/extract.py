#!/usr/bin/env python
"""Extraction speed: usam's Extractor vs the published code's loop, same images, one process.

The baseline re-encodes the image for every instance and decodes one prompt at a time
(what the published code did); usam encodes once per (model, variant) and decodes all
prompts of all instances in batches. Both compute every SPEC field through the same
reduction code, and the script prints the largest difference between their fields.

  python benchmarks/extract.py                          # random tiny, 256 px, 6 instances, CPU
  python benchmarks/extract.py --augment paper --repeat 1   # with the paper's 4 image variants
  python benchmarks/extract.py --image-size 1024 --compile   # also with the compiled decoder
  python benchmarks/extract.py --sizes tiny small base_plus large --image-size 1024 \
      --checkpoint-dir checkpoints/sam2.1                   # real weights (e.g. on a GPU)
  python benchmarks/extract.py --prefetch 2 --repeat 2     # reading ahead on vs off (sample set)

It also prints the bare encoder time (one encoder pass per model and variant for each image,
nothing else): the floor an extraction can approach, and usam's ratio to it.
With --prefetch N it instead runs the whole stage (Extractor.run: read JPEG/PNG from disk,
sample prompts, SAM 2, write records) over the bundled sample dataset (or --root, a DAVIS
layout) with extractor.prefetch=0 and =N, alternating, and prints both and the ratio.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate

from usam.datasets.base import Sample
from usam.extract import Extractor, ImageStats, RecordWriter
from usam.prompts import instance_rng, prompt_points
from usam.sam import SamModels
from usam.schema import FIELDS, SIZES


def synthetic_images(n: int, instances: int, size: tuple[int, int], seed: int = 0) -> list[Sample]:
    """Images with `instances` non-overlapping rectangles each (known GT masks)."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for k in range(n):
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        masks = {}
        cols = instances
        cw = w // cols
        for i in range(instances):
            m = np.zeros((h, w), bool)
            y0 = int(rng.integers(0, h // 2))
            m[y0 : y0 + h // 3, i * cw + 2 : (i + 1) * cw - 2] = True
            img[m] = rng.integers(0, 255, 3, dtype=np.uint8)
            masks[i + 1] = m
        out.append(Sample(image=img, masks=masks, name=f"bench/{k:05d}.jpg", group="bench"))
    return out


def baseline(extractor: Extractor, images: list[Sample]) -> tuple[float, dict]:
    """The published loop: per instance, encode the image again for every model and variant,
    then decode its prompts one per decoder call. The fields come from the same code as
    usam's (`decode_instance_prompts`, `ImageStats`), so both loops compute the same numbers.
    """
    models, augment = extractor.models, extractor.augment
    batch = [m.batch_size for m in models]
    for m in models:
        m.batch_size = 1
    fields: dict = {}
    start = time.perf_counter()
    try:
        for s in images:
            for iid in sorted(i for i, m in s.masks.items() if m.any()):
                pts = prompt_points(
                    s.masks[iid], instance_rng(extractor.seed, s.name, iid), extractor.n_samples
                )[None]
                stats = ImageStats(len(models), len(augment.names))
                out = fields.setdefault((s.name, iid), {m.size: {} for m in models})
                for vi, (variant, apply) in enumerate(augment):
                    image_v, pts_v, unmap = apply(s.image, pts, key=s.name)
                    for mi, model in enumerate(models):
                        gt = torch.as_tensor(s.masks[iid][None], device=model.device)
                        model.set_image(image_v)
                        dec = extractor.decode_instance_prompts(model, pts_v, gt, unmap)
                        out[model.size][variant] = stats.add(mi, vi, dec)
                stats.finish(out, models.sizes, augment.names)
    finally:
        for m, b in zip(models, batch, strict=True):
            m.batch_size = b
    return time.perf_counter() - start, fields


def process_all(ex: Extractor, images: list[Sample]) -> dict:
    """Records of all images, `ex.images_per_call` images per encoder call."""
    out, k = {}, max(1, ex.images_per_call)
    for lo in range(0, len(images), k):
        chunk = images[lo : lo + k]
        for s, (record, _) in zip(chunk, ex.process_many(chunk, [None] * len(chunk)), strict=True):
            out[s.name] = record
    return out


def encoder_only(ex: Extractor, images: list[Sample]) -> float:
    """Seconds for the encoder passes alone: each variant of each image through each model."""
    made = [[apply(s.image, None, key=s.name)[0] for _, apply in ex.augment] for s in images]
    _sync(ex)
    start = time.perf_counter()
    for variants in made:
        for image in variants:
            for model in ex.models:
                model.set_image(image)
    _sync(ex)
    return time.perf_counter() - start


def _sync(ex: Extractor) -> None:
    if any(m.device.type == "cuda" for m in ex.models):
        torch.cuda.synchronize()


def prefetch_benchmark(args, cfg, random: bool) -> None:
    """The whole stage over a dataset on disk, prefetch off vs on, alternating rounds."""
    import tempfile

    from omegaconf import OmegaConf

    from usam.augment import Augmentations
    from usam.datasets.davis import Davis
    from usam.datasets.sample import SampleDataset

    models = SamModels(**OmegaConf.to_container(cfg))
    times: dict[int, list[float]] = {0: [], args.prefetch: []}
    summaries = {}
    for r in range(args.repeat + 1):  # round 0 warms up
        for workers in times:
            reader = Davis(root=args.root, split="val") if args.root else SampleDataset()
            out = Path(tempfile.mkdtemp(prefix="usam-prefetch-bench-"))
            ex = Extractor(
                models=models,
                augment=Augmentations(),
                writer=RecordWriter(root=out, dataset=reader.name, split=reader.split),
                prefetch=workers,
                images_per_call=args.images_per_call,
            )
            start = time.perf_counter()
            summaries[workers] = ex.run(reader)
            if r:
                times[workers].append(time.perf_counter() - start)
    off, on = (float(np.median(times[k])) for k in times)
    n = summaries[0]["done"]
    print(
        f"device={models.device} sizes={args.sizes} image_size={args.image_size} "
        f"weights={'random' if random else 'checkpoint'} images={n} median of {args.repeat}"
    )
    print(f"{'prefetch 0 (read on the model thread)':44s} {off:8.2f} s {off / n:7.3f} s/img")
    print(
        f"{f'prefetch {args.prefetch} (background threads)':44s} {on:8.2f} s {on / n:7.3f} s/img"
        f"  speed-up {off / on:.2f}x"
    )


def max_field_difference(records: dict, base: dict) -> float:
    """Largest |usam - baseline| over every field of every instance (batching changes rounding only)."""
    worst = 0.0
    for name, record in records.items():
        for k, inst in enumerate(record["instances"]):
            for size, variants in record["fields"].items():
                for variant, f in variants.items():
                    b = base[(name, inst["id"])][size][variant]
                    for field in FIELDS:
                        u, v = (
                            np.asarray(f[field], np.float64)[k],
                            np.asarray(b[field], np.float64)[0],
                        )
                        if np.isfinite(u) or np.isfinite(v):
                            worst = max(worst, abs(u - v))
    return worst


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", nargs="+", default=["tiny"], choices=SIZES)
    p.add_argument("--image-size", type=int, default=256, help="SAM input size (1024 = SAM's own)")
    p.add_argument(
        "--checkpoint-dir", default=None, help="real checkpoints; default: random weights"
    )
    p.add_argument("--version", default="sam2.1", choices=["sam2.1", "sam2.0"])
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--instances", type=int, default=6)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--device", default="auto")
    p.add_argument("--augment", default="none", choices=["none", "paper", "flip"])
    p.add_argument("--repeat", type=int, default=3, help="rounds of the loops; medians are printed")
    p.add_argument(
        "--prefetch",
        type=int,
        default=0,
        help="time Extractor.run over a dataset with prefetch 0 vs this many threads",
    )
    p.add_argument("--root", default=None, help="with --prefetch: a DAVIS-layout root")
    p.add_argument("--images-per-call", type=int, default=1, help="images per encoder call")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time usam with sam_model.compile_decoder=true (after a warm-up compile)",
    )
    args = p.parse_args()

    from importlib.resources import files

    from omegaconf import OmegaConf

    cfg = OmegaConf.load(str(files("usam") / "conf" / "sam_model" / "sam2.1.yaml"))
    if args.version == "sam2.0":
        cfg = OmegaConf.merge(
            cfg, OmegaConf.load(str(files("usam") / "conf" / "sam_model" / "sam2.0.yaml"))
        )
    cfg.pop("_target_"), cfg.pop("defaults", None)
    random = args.checkpoint_dir is None
    cfg.update(
        sizes=list(args.sizes),
        random_weights=random,
        device=args.device,
        image_size=None if args.image_size == 1024 else args.image_size,
        checkpoint_dir=args.checkpoint_dir or "unused",
    )
    if args.prefetch:
        return prefetch_benchmark(args, cfg, random)
    images = synthetic_images(args.images, args.instances, (args.height, args.width))
    writer = RecordWriter(root="unused", dataset="bench", split="bench")
    augment = instantiate(
        OmegaConf.load(str(files("usam") / "conf" / "augment" / f"{args.augment}.yaml"))
    )
    # the baseline always runs the plain decoder (the published code did not compile)
    variants = {"usam": False, "usam, compiled decoder": True} if args.compile else {"usam": False}
    extractors = {
        label: Extractor(
            models=SamModels(**{**OmegaConf.to_container(cfg), "compile_decoder": c}),
            augment=augment,
            writer=writer,
            seed=0,
            images_per_call=args.images_per_call,
        )
        for label, c in variants.items()
    }
    plain = extractors["usam"]
    for ex in extractors.values():
        process_all(ex, images[: ex.images_per_call])  # warm-up (allocator, kernels, compilation)
    baseline(plain, images[:1])

    def passes(ex: Extractor) -> int:
        n = sum(m.encoder_passes for m in ex.models)
        for m in ex.models:
            m.encoder_passes = 0
        return n

    # alternate the loops and keep each one's median: a shared machine's load drifts
    times: dict[str, list[float]] = {k: [] for k in [*extractors, "baseline"]}
    records: dict[str, dict] = {}
    for _ in range(args.repeat):
        for label, ex in extractors.items():
            passes(ex)
            t0 = time.perf_counter()
            records[label] = process_all(ex, images)
            times[label].append(time.perf_counter() - t0)
            n_usam = passes(ex)
        t, fields_base = baseline(plain, images)
        times["baseline"].append(t)
        n_base = passes(plain)
        times.setdefault("encoder", []).append(encoder_only(plain, images))
        passes(plain)
    med = {k: float(np.median(v)) for k, v in times.items()}

    dev = next(iter(plain.models)).device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(
        f"device={name} sizes={args.sizes} image_size={args.image_size} weights="
        f"{'random' if random else 'checkpoint'} augment={args.augment} images={args.images} "
        f"instances/image={args.instances} median of {args.repeat}"
    )
    print(
        f"{'baseline (re-encode per instance, one prompt per call)':56s} {med['baseline']:8.2f} s "
        f"{med['baseline'] / args.images:7.3f} s/img  encoder passes {n_base}"
    )
    print(
        f"{'bare encoder (a pass per model and variant, no more)':56s} "
        f"{med['encoder']:8.2f} s {med['encoder'] / args.images:7.3f} s/img  (the floor)"
    )
    for label in extractors:
        print(
            f"{label + ' / bare encoder':56s} {med[label] / med['encoder']:8.2f}x  "
            f"(target: within 1.3x)"
        )
    for label in extractors:
        print(
            f"{label + ' (encode once, batched prompts)':56s} {med[label]:8.2f} s "
            f"{med[label] / args.images:7.3f} s/img  encoder passes {n_usam}  "
            f"speed-up {med['baseline'] / med[label]:.2f}x  "
            f"largest field difference {max_field_difference(records[label], fields_base):.1e}"
        )


if __name__ == "__main__":
    main()
