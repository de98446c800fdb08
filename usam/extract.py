"""Stage 1: python -m usam.extract — SAM 2 tokens and ground-truth quality measures per image.

For every image: sample prompts per GT instance, then for every model and image variant
encode the image once and decode all prompts of all instances in batches. One record per
image (safetensors tokens + JSON fields, see `RecordWriter`) mirrors the image's path.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from usam import CONF_DIR
from usam.cli import run_stage, save_run
from usam.datasets.base import DatasetReader, Sample
from usam.errors import SampleError, UsamError
from usam.measures import entropy, mask_iou, mixture, score_weights
from usam.prefetch import SKIPPED, prefetch
from usam.prompts import instance_rng, prompt_points
from usam.schema import FIELDS, RECORD_SCHEMA  # noqa: F401  (usam.extract.FIELDS)
from usam.storage import (
    inside,
    json_plain,
    read_json,
    read_verified,
    remove_stale_temps,
    write_json,
    write_tensors,
)

log = logging.getLogger(__name__)

Prompts = tuple[list[int], np.ndarray]  # instance ids, points [I, 1 + n_samples, 2]


class RecordWriter:
    """One record per image: `<root>/<image path without suffix>.{safetensors,json}`.

    The tensors are written first and the JSON last, each atomically: a JSON on disk means
    the record is complete, which is what resume and the container stage rely on. The JSON
    holds the SHA-256 of its tensor file (a pair half replaced by a killed rewrite is not
    taken as complete) and the `settings` that made it (`Extractor.settings`): resuming
    over records made with other settings is an error, never a silent mix.
    """

    def __init__(self, *, root: str | Path, dataset: str, split: str):
        self.root = Path(root)
        self.dataset, self.split = dataset, split
        self.settings: dict[str, Any] | None = None  # set by the Extractor before a run
        self._visited: set[Path] = set()

    def stem(self, name: str) -> Path:
        """Where the record of image `name` goes; UsamError when the name leaves `root`."""
        inside(self.root, name, f"record name (image {name!r})")
        rel = Path(name)
        return (
            self.root
            / rel.parent
            / (rel.stem if rel.suffix.lower() in _IMAGE_SUFFIXES else rel.name)
        )

    def _visit(self, folder: Path) -> None:
        """First time in a folder: remove the temporary files a killed run left there."""
        if folder not in self._visited:
            self._visited.add(folder)
            remove_stale_temps(folder)

    def done(self, name: str) -> bool:
        """True when a complete record made with `settings` exists: both files, the tensors
        the JSON describes. UsamError when it was made with other settings."""
        stem = self.stem(name)
        self._visit(stem.parent)
        js, st = _suffixed(stem, ".json"), _suffixed(stem, ".safetensors")
        if not (js.is_file() and st.is_file()):
            return False
        try:
            rec = read_json(js)
        except UsamError as err:
            log.warning("%s; extracting it again", err)
            return False
        if not isinstance(rec, dict) or rec.get("kind") != "usam.record":
            return False
        self.check_settings(rec, js)
        try:
            read_verified(st, rec.get("tensors_sha256"), js)
        except UsamError as err:
            log.warning("%s; extracting it again", err)
            return False
        return True

    def check_settings(self, rec: dict[str, Any], path: Path) -> None:
        """UsamError naming what differs when record `rec` was made with other settings."""
        if self.settings is None or rec.get("settings") == self.settings:
            return
        old = rec.get("settings")
        if not isinstance(old, dict):
            what = "by a usam that did not record its settings"
        else:
            keys = sorted(set(old) | set(self.settings))
            diff = [
                f"{k}: {old.get(k)!r} there, {self.settings.get(k)!r} now"
                for k in keys
                if old.get(k) != self.settings.get(k)
            ]
            what = "with other settings (" + "; ".join(diff) + ")"
        raise UsamError(
            f"{path} was extracted {what}; resuming would mix the two in {self.root}: "
            "choose another out_dir, or pass extractor.resume=false to recompute and replace "
            "its records"
        )

    def check_existing(self) -> None:
        """Before a resumed run: the first record found under `root` must have our settings."""
        if self.settings is None or not self.root.is_dir():
            return
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                if not f.endswith(".json") or f.startswith("."):
                    continue
                try:
                    rec = read_json(Path(folder, f))
                except UsamError:
                    continue
                if isinstance(rec, dict) and rec.get("kind") == "usam.record":
                    self.check_settings(rec, Path(folder, f))
                    return

    def write(self, name: str, record: dict[str, Any], tensors: dict[str, np.ndarray]) -> Path:
        stem = self.stem(name)
        self._visit(stem.parent)
        digest = write_tensors(_suffixed(stem, ".safetensors"), tensors)
        record = {
            "schema": RECORD_SCHEMA,
            "kind": "usam.record",
            "dataset": self.dataset,
            "split": self.split,
            **record,
            "settings": self.settings,
            "tensors_sha256": digest,
        }
        return write_json(_suffixed(stem, ".json"), record)

    def read(self, name: str) -> dict[str, Any]:
        return read_json(_suffixed(self.stem(name), ".json"))


def _suffixed(stem: Path, suffix: str) -> Path:
    """`frame.001` + `.json` -> `frame.001.json` (with_suffix would drop the `.001`)."""
    return stem.with_name(stem.name + suffix)


_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


class Extractor:
    """Runs SAM 2 over a dataset and writes one record per image."""

    def __init__(
        self,
        *,
        models,
        augment,
        writer: RecordWriter,
        seed: int = 0,
        n_samples: int = 7,
        resume: bool = True,
        prefetch: int | str = 0,
        images_per_call: int = 1,
    ):
        self.models = models  # usam.sam.SamModels
        self.augment = augment  # usam.augment.Augmentations
        self.writer = writer
        self.seed, self.n_samples, self.resume = seed, n_samples, resume
        if prefetch == "auto":
            # a GPU waits for JPEG decoding; on a CPU the threads only compete for its cores
            # (measured: no gain on 2 cores, docs/benchmarks.md)
            on_gpu = any(getattr(m, "device", torch.device("cpu")).type == "cuda" for m in models)
            prefetch = 2 if on_gpu else 0
        if (
            isinstance(prefetch, bool)
            or not isinstance(prefetch, int)
            or prefetch < 0
            or int(images_per_call) < 1
        ):
            raise UsamError(
                f"extractor.prefetch must be auto or >= 0 and extractor.images_per_call >= 1, "
                f"got {prefetch!r} and {images_per_call}"
            )
        # background threads reading images and sampling prompts ahead (usam.prefetch)
        self.prefetch = prefetch
        # images (of one variant) per encoder call: SAM 2 encodes a batch in one pass
        self.images_per_call = int(images_per_call)

    def run(self, reader: DatasetReader) -> dict[str, Any]:
        if self.models.random_weights:
            log.warning(
                "SAM 2 has RANDOM weights: every record is marked random_weights=true "
                "and its numbers mean nothing"
            )
        self.writer.settings = self.settings(reader)
        if self.resume:
            self.writer.check_existing()
        done = skipped = instances = 0
        failed: list[dict[str, str]] = []
        start = time.perf_counter()
        batch: list[tuple[Sample, Prompts]] = []

        def flush() -> None:
            nonlocal done, instances
            for sample, result in self._process_batch(batch):
                if isinstance(result, SampleError):
                    log.warning("skipping %s: %s", result.path, result.reason)
                    failed.append({"file": result.path, "reason": result.reason})
                    continue
                self.writer.write(sample.name, *result)
                done += 1
                instances += len(result[0]["instances"])
            batch.clear()

        workers = self.prefetch if reader.parallel_load else min(self.prefetch, 1)
        items = prefetch(
            reader.entries,
            lambda e: self._load(reader, e),
            skip=lambda e: self.resume and self.writer.done(e.name),
            workers=workers,
        )
        desc = f"extract {reader.name}/{reader.split}"
        for _, loaded in tqdm(items, total=len(reader.entries), desc=desc, unit="img"):
            if loaded is SKIPPED:
                skipped += 1
                continue
            sample = reader.count(loaded[0])
            if sample is None:
                continue  # counted in reader.stats.unreadable
            batch.append((sample, loaded[1]))
            if len(batch) == self.images_per_call:
                flush()
        flush()
        seconds = time.perf_counter() - start
        failed = reader.stats.unreadable + failed
        summary = {
            "dataset": reader.name,
            "split": reader.split,
            "out_dir": str(self.writer.root),
            "shard": {"index": reader.shard_index, "count": reader.shard_count},
            "images": len(reader),
            "done": done,
            "skipped": skipped,
            "failed": len(failed),
            "failures": failed,
            "dropped": dict(reader.stats.dropped),
            "instances": instances,
            "seconds": round(seconds, 3),
            "images_per_second": round(done / seconds, 4) if seconds > 0 else None,
            "encoder_passes": sum(m.encoder_passes for m in self.models),
            "models": list(self.models.sizes),
            "variants": list(self.augment.names),
            "sam_version": self.models.version,
            "random_weights": self.models.random_weights,
            "compiled_decoder": all(getattr(m, "compiled", False) for m in self.models),
        }
        log.info(
            "extracted %d images (%d already done, %d failed), %d instances in %.1f s",
            done,
            skipped,
            len(failed),
            instances,
            seconds,
        )
        for f in failed:
            log.warning("failed: %s: %s", f["file"], f["reason"])
        return summary

    def settings(self, reader: DatasetReader) -> dict[str, Any]:
        """Everything that changes a record's numbers (not speed settings such as batch size,
        device or compilation): records carry it and resume checks it."""
        models, augment = self.models, self.augment
        return json_plain(
            {
                "sam_version": getattr(models, "version", None),
                "models": list(models.sizes),
                "weights": getattr(models, "weights", None),
                "random_weights": bool(getattr(models, "random_weights", False)),
                "image_size": getattr(models, "image_size", None),
                "augment": augment.describe()
                if hasattr(augment, "describe")
                else list(augment.names),
                "seed": self.seed,
                "n_samples": self.n_samples,
                "dataset": reader.content_settings(),
            }
        )

    def _load(self, reader: DatasetReader, entry) -> tuple[Sample | SampleError, Prompts | None]:
        """What a prefetch thread does: read and check the sample, sample its prompts."""
        try:
            sample = reader.load_checked(entry)
        except SampleError as err:
            return err, None
        return sample, self.prompts(sample)

    def _process_batch(self, batch: list[tuple[Sample, Prompts]]) -> list[tuple[Sample, Any]]:
        """(sample, (record, tensors) or the SampleError that sample raised), in order."""
        if len(batch) > 1:
            try:
                results = self.process_many([s for s, _ in batch], [p for _, p in batch])
                return list(zip([s for s, _ in batch], results, strict=True))
            except SampleError:
                pass  # one image of the batch failed: find which, one at a time
        out = []
        for sample, prompts in batch:
            try:
                out.append((sample, self.process(sample, prompts)))
            except SampleError as err:
                out.append((sample, err))
        return out

    # -- one image -----------------------------------------------------------------------------
    def prompts(self, sample: Sample) -> Prompts:
        """(instance ids with a non-empty mask, points [I, 1 + n_samples, 2]): seeded per
        image and instance, so any thread, shard or rerun draws the same."""
        ids = sorted(i for i, m in sample.masks.items() if m.any())
        points = (
            np.stack(
                [
                    prompt_points(
                        sample.masks[i], instance_rng(self.seed, sample.name, i), self.n_samples
                    )
                    for i in ids
                ]
            )
            if ids
            else np.zeros((0, 1 + self.n_samples, 2), np.float32)
        )
        return ids, points

    def process(
        self, sample: Sample, prompts: Prompts | None = None
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """All records fields and tokens of one image."""
        return self.process_many([sample], [prompts])[0]

    def process_many(
        self, samples: list[Sample], prompts: list[Prompts | None]
    ) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
        """`process` for several images, each variant of all of them encoded in one call per
        model; per image the same work in the same order as alone."""
        prompts = [
            p if p is not None else self.prompts(s) for s, p in zip(samples, prompts, strict=True)
        ]
        out = [self._start(s, *p) for s, p in zip(samples, prompts, strict=True)]
        todo = [k for k, (record, _, _) in enumerate(out) if record["instances"]]
        if not todo:
            return [(record, tensors) for record, tensors, _ in out]
        gts: dict[tuple[int, torch.device], torch.Tensor] = {}  # each GT goes to each device once
        # each variant is made once per image and shared by all models
        for vi, (variant, apply) in enumerate(self.augment):
            made = [apply(samples[k].image, prompts[k][1], key=samples[k].name) for k in todo]
            for mi, model in enumerate(self.models):
                if len(todo) == 1:
                    model.set_image(made[0][0])
                else:
                    model.set_images([m[0] for m in made])
                for j, k in enumerate(todo):
                    if len(todo) > 1:
                        model.use_image(j)
                    key = (k, model.device)
                    if key not in gts:
                        ids = prompts[k][0]
                        gts[key] = torch.as_tensor(np.stack([samples[k].masks[i] for i in ids])).to(
                            model.device
                        )
                    record, tensors, stats = out[k]
                    _, points_v, unmap = made[j]
                    res = self.decode_instance_prompts(model, points_v, gts[key], unmap)
                    record["fields"][model.size][variant] = stats.add(mi, vi, res)
                    tensors[f"{model.size}/{variant}/iou_token"] = res["iou_token"]
                    tensors[f"{model.size}/{variant}/mask_tokens"] = res["mask_tokens"]
        for k in todo:
            record, _, stats = out[k]
            stats.finish(record["fields"], self.models.sizes, self.augment.names)
        return [(record, tensors) for record, tensors, _ in out]

    def _start(self, sample: Sample, ids: list[int], points: np.ndarray):
        """A record without fields, its tensors and its ImageStats."""
        h, w = sample.image.shape[:2]
        record: dict[str, Any] = {
            "name": sample.name,
            "group": sample.group,
            "width": w,
            "height": h,
            "sam_version": self.models.version,
            "random_weights": self.models.random_weights,
            "models": list(self.models.sizes),
            "variants": list(self.augment.names),
            "instances": [
                {"id": i, "gt_area": int(sample.masks[i].sum()), "points": points[k].tolist()}
                for k, i in enumerate(ids)
            ],
            "fields": {m: {} for m in self.models.sizes} if ids else {},
        }
        stats = ImageStats(len(self.models.sizes), len(self.augment.names))
        return record, {}, stats

    def decode_instance_prompts(self, model, points: np.ndarray, gt: torch.Tensor, unmap) -> dict:
        """Decode the single-point and dense prompts of all instances; reduce to what we keep.

        Full-resolution masks are compared with the GT chunk by chunk and dropped, so memory
        holds only the low-resolution maps, whatever the image size.
        """
        n_inst, n_pts = points.shape[:2]
        single = points.reshape(n_inst * n_pts, 1, 2)
        owner = torch.arange(n_inst, device=gt.device).repeat_interleave(n_pts)
        s = self._decode(model, single, owner, gt, unmap)
        d = self._decode(model, points, torch.arange(n_inst, device=gt.device), gt, unmap)
        return {
            "ious": s["ious"].view(n_inst, n_pts, 3),
            "scores": s["scores"].view(n_inst, n_pts, 3),
            "probs": s["probs"].view(n_inst, n_pts, 3, *s["probs"].shape[-2:]),
            "iou_token": s["iou_token"].view(n_inst, n_pts, -1)[:, 0].cpu().numpy(),
            "mask_tokens": s["mask_tokens"].view(n_inst, n_pts, 3, -1)[:, 0].cpu().numpy(),
            "dense_ious": d["ious"],
        }

    @staticmethod
    def _decode(model, points: np.ndarray, owner: torch.Tensor, gt: torch.Tensor, unmap) -> dict:
        parts: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("ious", "scores", "probs", "iou_token", "mask_tokens")
        }
        labels = np.ones(points.shape[:2], np.int64)
        for lo in range(0, len(points), model.batch_size):  # the only place prompts are chunked
            hi = lo + model.batch_size
            dec, _ = model.decode_once(points[lo:hi], labels[lo:hi])
            masks, probs = unmap(dec.masks), unmap(dec.low_res_probs)
            parts["ious"].append(mask_iou(masks, gt[owner[lo:hi], None]))
            parts["scores"].append(dec.scores)
            parts["probs"].append(probs)
            parts["iou_token"].append(dec.iou_token)
            parts["mask_tokens"].append(dec.mask_tokens)
        return {k: torch.cat(v) for k, v in parts.items()}


class ImageStats:
    """Accumulates the per-(model, variant) fields and the cross-model/variant mixtures.

    Mixtures over variants (h_augmentation) and models (h_theta) keep running sums of the
    best centre-prompt maps instead of every map, and h_all a running weighted sum.
    """

    def __init__(self, n_models: int, n_variants: int):
        self.n_models, self.n_variants = n_models, n_variants
        self.sum_over_variants: dict[int, torch.Tensor] = {}  # model -> [I, h, w]
        self.sum_over_models: dict[int, torch.Tensor] = {}  # variant -> [I, h, w]
        self.all: torch.Tensor | None = None  # [I, h, w] weighted sum over everything

    def add(self, mi: int, vi: int, out: dict) -> dict[str, Any]:
        ious, scores, probs = (
            out["ious"],
            out["scores"],
            out["probs"],
        )  # [I,P,3], [I,P,3], [I,P,3,h,w]
        n_inst = ious.shape[0]
        rows = torch.arange(n_inst, device=ious.device)
        best_all = ious.argmax(-1)  # [I, P]: best mask of every prompt
        best = best_all[:, 0]
        top = scores[:, 0].argmax(-1)
        best_maps = probs.gather(
            2, best_all[..., None, None, None].expand(-1, -1, 1, *probs.shape[-2:])
        )[:, :, 0]
        centre = best_maps[:, 0]  # [I, h, w]
        self.sum_over_variants[mi] = self.sum_over_variants.get(mi, 0) + centre
        self.sum_over_models[vi] = self.sum_over_models.get(vi, 0) + centre
        # h_all: uniform over models, variants and prompts, times the normalised SAM score
        w = score_weights(scores)  # [I, P, 3], sums to 1 per prompt
        part = (w[..., None, None] * probs).sum((1, 2)) / (
            probs.shape[1] * self.n_models * self.n_variants
        )
        self.all = part if self.all is None else self.all + part
        fields = {
            "iou": ious[rows, 0, best],
            "sam_score": scores[rows, 0, best],
            "unsupervised_iou": ious[rows, 0, top],
            "unsupervised_sam_score": scores[rows, 0, top],
            "iou_dense_prompt": out["dense_ious"].max(-1).values,
            "entropy": entropy(centre),
            "h_task": entropy(mixture(probs[:, 0], score_weights(scores[:, 0]))),
            "h_prompt": entropy(best_maps.mean(1)),
            "best": best,
            "ious": ious[:, 0],
            "scores": scores[:, 0],
        }
        return {
            k: v.float().cpu().numpy() if k != "best" else v.cpu().numpy()
            for k, v in fields.items()
        }

    def finish(self, fields: dict, models: list[str], variants: list[str]) -> None:
        """Fill the fields that need every model and variant; NaN where they lose their meaning."""
        h_all = entropy(self.all).float().cpu().numpy()
        nan = np.full_like(h_all, np.nan)
        h_theta = [  # one per variant, shared by every model
            entropy(self.sum_over_models[vi] / self.n_models).float().cpu().numpy()
            if self.n_models > 1
            else nan
            for vi in range(len(variants))
        ]
        for mi, m in enumerate(models):
            h_aug = nan
            if self.n_variants > 1:
                h_aug = entropy(self.sum_over_variants[mi] / self.n_variants).float().cpu().numpy()
            for vi, v in enumerate(variants):
                fields[m][v].update(h_augmentation=h_aug, h_theta=h_theta[vi], h_all=h_all)


def run(cfg: DictConfig) -> dict[str, Any]:
    reader = instantiate(cfg.dataset)
    models = instantiate(cfg.sam_model)
    augment = instantiate(cfg.augment)
    writer = instantiate(cfg.writer)
    extractor = instantiate(cfg.extractor, models=models, augment=augment, writer=writer)
    return save_run(cfg, extractor.run(reader))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="extract")
def main(cfg: DictConfig) -> None:
    run_stage(run, cfg)


if __name__ == "__main__":
    main()
