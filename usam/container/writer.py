"""Stage 2's writer: turns stage 1's per-image records into one training container, a directory
with one row per image x instance x model x variant:

  meta.json           schema, kind, rows, models, variants, columns, sources, random_weights
  tokens.npy          float32 [rows, 2, 256]: the IoU token and the token of the best mask
  columns/<col>.npy   float64 [rows], one file per metric, so a column reads contiguously
  codes/<key>.npy     int32 [rows] for image, group, dataset, model, variant
  tables/<key>.json   image names and group names (read only when asked for)

Only .npy and JSON: no pickle, and every array opens memory-mapped, so opening costs
the same for 1k or 100M rows. The build always streams (two passes over the records,
rows appended to the files), so its memory does not grow with the dataset; `offload`
only decides whether `Container.open` maps the files (offload) or loads them (default).

This module is the orchestration: the scan, the two passes, the overwrite rules. A record's
rows are computed by usam/container/rows.py (pure numpy), the files are written by
usam/container/files.py, the reader is usam/container/reader.py and the entrypoint
`python -m usam.container` is usam/container/__main__.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from usam.container import files, rows
from usam.container.reader import CODES, SCHEMA, Container, column_names, is_container
from usam.container.rows import BadRecord
from usam.errors import UsamError
from usam.options import flag
from usam.schema import SIZES, TOKEN_DIM
from usam.storage import remove_stale_temps

log = logging.getLogger(__name__)

__all__ = ["ContainerWriter"]

MAX_LISTED = 100  # skipped files / missing-model images named one by one; the rest only counted


class ContainerWriter:
    """Builds a container directory at `out` from the stage-1 records under `roots`.

    Pass 1 reads every record's JSON to find the models and variants (they fix the
    columns) and drops unfinished, unreadable and duplicate records. Pass 2 reads each
    record again with its tokens and appends its rows. Broken records are skipped and
    counted; the container is built in a hidden `.<out>.tmp-*` folder beside `out` and
    renamed onto `out` at the end, so `out` never holds half a container.
    """

    def __init__(
        self,
        *,
        roots: str | Path | Sequence[str | Path],
        out: str | Path,
        offload: bool = False,
        augmented: bool = True,
        overwrite: bool | str = "auto",
    ) -> None:
        if isinstance(roots, (str, Path)):
            roots = [roots]
        # the same root twice would make every record a duplicate
        self.roots = list(dict.fromkeys(Path(os.path.abspath(Path(r).expanduser())) for r in roots))
        if not self.roots:
            raise UsamError("no record roots given; set roots=[<dir>, ...]")
        self.out = Path(os.path.abspath(Path(out).expanduser()))
        self.offload = flag(offload, "offload")
        self.augmented = flag(augmented, "augmented")
        if not (isinstance(overwrite, bool) or overwrite == "auto"):  # 1 == True: not a flag
            raise UsamError(f"overwrite must be auto, true or false, got {overwrite!r}")
        self.overwrite = overwrite
        self.replaced: dict[str, Any] | None = None  # the container found at `out`, described
        self.skipped: Counter[str] = Counter()
        self.skipped_files: list[dict[str, str]] = []
        self.missing_models: list[dict[str, Any]] = []
        self.images_missing_models = 0
        self.unverified = 0

    # ---- the stage -------------------------------------------------------------------------
    def write(self) -> dict[str, Any]:
        """Build the container; returns a summary (rows, images, skipped records, ...)."""
        start = time.perf_counter()
        self._check_out()
        stems = self._scan()
        if not stems:
            raise UsamError(
                f"no usable extraction records under {', '.join(map(str, self.roots))} "
                f"(skipped: {dict(self.skipped) or 'none'}); run `python -m usam.extract` first "
                "or point roots=[...] at its output"
            )
        self._check_replace(self.scanned)  # before the long pass: fail fast
        tmp = files.build_folder(self.out)
        try:
            total = self._fill(stems, tmp)
            if total == 0:
                raise UsamError(
                    f"the records under {', '.join(map(str, self.roots))} have no instances "
                    f"(skipped: {dict(self.skipped) or 'none'}): nothing to train on"
                )
            self._check_replace(_images(Container.open(tmp, mmap=True)))  # pass 2 may skip some
            self._say_replaced()
            files.publish(tmp, self.out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        seconds = time.perf_counter() - start
        if self.images_missing_models > len(self.missing_models):
            log.warning(
                "%d more images miss a model (see summary.json)",
                self.images_missing_models - len(self.missing_models),
            )
        log.info(
            "container %s: %d rows from %d images, %d records skipped, %.1f s",
            self.out,
            total,
            len(self.images),
            sum(self.skipped.values()),
            seconds,
        )
        return {
            "out": str(self.out),
            "rows": total,
            "images": len(self.images),
            "groups": len(self.groups),
            "models": self.models,
            "variants": self.variants,
            "random_weights": self.random_weights,
            "offload": self.offload,
            "skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(self.skipped),
            "skipped_files": self.skipped_files,
            "images_missing_models": self.images_missing_models,
            "records_without_digest": self.unverified,
            "missing_models": self.missing_models,
            "seconds": round(seconds, 3),
            "rows_per_second": round(total / max(seconds, 1e-9), 1),
            "replaced": self.replaced,
        }

    def _check_out(self) -> None:
        """Refuse an `out` that is not ours to replace; describe a container found there."""
        # builds and replaced containers of killed runs (their owner's process is gone)
        remove_stale_temps(self.out.parent, prefix=f"{self.out.name}.")
        self.replaced, self._old_images, self._old_error = None, None, None
        if not self.out.exists():
            return
        if self.overwrite is False:
            raise UsamError(
                f"{self.out} already exists; pass overwrite=true to replace it or choose another out="
            )
        if not self.out.is_dir() or (any(self.out.iterdir()) and not is_container(self.out)):
            raise UsamError(
                f"{self.out} exists and is not a usam container; choose another out= or remove it"
            )
        if not is_container(self.out):
            return  # an empty folder
        try:
            old = Container.open(self.out, mmap=True)
            self._old_images = _images(old)
            self.replaced = {
                k: old.meta.get(k)
                for k in ("rows", "images", "models", "variants", "datasets", "sources", "created")
            }
        except (UsamError, OSError, ValueError, KeyError, IndexError, TypeError) as err:
            self._old_error = str(err)
            self.replaced = {"unreadable": self._old_error}

    def _check_replace(self, images: set[tuple[str, str]]) -> None:
        """overwrite=auto replaces a container only by one built from a superset of its sources.

        Superset: every image (dataset, name) of the old container, every model and every
        variant it had are in the new one. Anything less would silently lose rows.
        """
        if self.replaced is None or self.overwrite is True:
            return
        fix = "pass overwrite=true to replace it, or choose another out="
        if self._old_error is not None:
            raise UsamError(
                f"{self.out} holds a container that cannot be read ({self._old_error}); {fix}"
            )
        old = self.replaced
        lost = sorted(self._old_images - images)
        lost_models = [m for m in old["models"] or [] if m not in self.models]
        lost_variants = [v for v in old["variants"] or [] if v not in self.variants]
        if lost or lost_models or lost_variants:
            what = []
            if lost:
                shown = ", ".join(f"{d}/{n}" for d, n in lost[:3])
                what.append(f"{len(lost)} of its {len(self._old_images)} images (e.g. {shown})")
            if lost_models:
                what.append(f"models {lost_models}")
            if lost_variants:
                what.append(f"variants {lost_variants}")
            raise UsamError(
                f"{self.out} already holds a container of {old['rows']} rows "
                f"({old['images']} images, built {old['created']} from {old['sources']}); the "
                f"new one from {[str(r) for r in self.roots]} would lose {'; '.join(what)}. "
                f"Nothing was changed; {fix}"
            )

    def _say_replaced(self) -> None:
        if self.replaced is not None:
            log.warning(
                "replacing the container at %s (overwrite=%s): %s",
                self.out,
                self.overwrite,
                ", ".join(f"{k}={v}" for k, v in self.replaced.items()),
            )

    def _skip(self, path: Path | str, reason: str, kind: str) -> None:
        self.skipped[kind] += 1
        if len(self.skipped_files) < MAX_LISTED:
            log.warning("skipping record %s: %s", path, reason)
            self.skipped_files.append({"file": str(path), "reason": reason, "kind": kind})

    # ---- pass 1: find records, models, variants --------------------------------------------
    def _scan(self) -> list[str]:
        models: set[str] = set()
        variants: set[str] = set()
        seen: set[tuple[str, str, str]] = set()
        versions: set[str] = set()
        self.random_weights = False
        stems = []
        for root in self.roots:
            if not root.is_dir():
                raise UsamError(
                    f"record root {root} does not exist; run `python -m usam.extract` "
                    "for this dataset first or fix roots=[...]"
                )
            for stem, has_json, has_tensors in tqdm(
                files.walk(root, self.out), desc=f"scan {root.name}", unit="file"
            ):
                if not has_json:
                    self._skip(
                        stem + ".safetensors",
                        "no .json beside it: the image was not finished",
                        "unfinished",
                    )
                    continue
                try:
                    rec = json.loads(Path(stem + ".json").read_text())
                except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                    self._skip(stem + ".json", f"unreadable JSON ({err})", "incomplete")
                    continue
                if not isinstance(rec, dict) or rec.get("kind") != "usam.record":
                    if has_tensors:
                        self._skip(stem + ".json", "not a usam.record JSON", "incomplete")
                    continue  # some other JSON (a stage summary): not ours to read
                try:
                    rows.check_header(rec)
                except BadRecord as err:
                    self._skip(stem + ".json", err.reason, err.kind)
                    continue
                if not has_tensors:
                    self._skip(stem + ".json", "its .safetensors file is missing", "incomplete")
                    continue
                key = (str(rec["dataset"]), str(rec["split"]), str(rec["name"]))
                if key in seen:
                    self._skip(
                        stem + ".json",
                        f"duplicate of an earlier record of {'/'.join(key)}",
                        "duplicate",
                    )
                    continue
                seen.add(key)
                models.update(rec["models"])
                variants.update(v for v in rec["variants"] if self.augmented or v == "original")
                versions.add(str(rec.get("sam_version")))
                self.random_weights |= bool(rec.get("random_weights"))
                stems.append(stem)
        self.scanned = {(d, n) for d, _, n in seen}  # the images a build would hold at most
        self.models = rows.ordered(models, SIZES)
        self.variants = rows.ordered(variants, rows.VARIANT_ORDER)
        self.sam_versions = sorted(versions)
        if len(versions) > 1:
            log.warning(
                "records come from different SAM versions %s; the container mixes them",
                self.sam_versions,
            )
        if self.random_weights:
            log.warning(
                "some records were extracted with random SAM weights (a smoke test, not real data)"
            )
        return stems

    # ---- pass 2: rows ------------------------------------------------------------------------
    def _fill(self, stems: list[str], tmp: Path) -> int:
        self.columns = column_names(self.models)
        self.images: list[str] = []
        self.groups: dict[tuple[str, str], int] = {}
        self.datasets: dict[str, int] = {}
        out = files.RowFiles(tmp, self.columns)
        try:
            for stem in tqdm(stems, desc="container", unit="img"):
                try:
                    out.append(self._rows(stem))
                except BadRecord as err:
                    self._skip(stem + err.suffix, err.reason, err.kind)
        finally:
            out.close()
        meta = {
            "schema": SCHEMA,
            "kind": "usam.container",
            "rows": out.rows,
            "images": len(self.images),
            "groups": len(self.groups),
            "token_dim": TOKEN_DIM,
            "tokens": ["iou_token", "best_mask_token"],
            "columns": self.columns,
            "codes": list(CODES),
            "models": self.models,
            "variants": self.variants,
            "datasets": list(self.datasets),
            "sources": [str(r) for r in self.roots],
            "random_weights": self.random_weights,
            "sam_versions": self.sam_versions,
            "offload": self.offload,
            "augmented": self.augmented,
            "skipped": dict(self.skipped),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        files.write_meta(tmp, meta, self.images, [g for _, g in self.groups])
        return out.rows

    def _rows(self, stem: str) -> dict[str, np.ndarray]:
        """All rows of one record: "tokens" [R, 2, 256], each column and each "code:<key>" [R]."""
        try:
            rec = json.loads(Path(stem + ".json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BadRecord(f"changed or vanished while building ({err})") from None
        parsed = rows.parse(rec, self.models, self.variants)
        digest = rec.get("tensors_sha256")
        if digest is None:
            self.unverified += 1  # a record from before digests: its pair cannot be checked
        P, V, n = parsed.shape
        if n:
            tokens = rows.tokens(parsed, files.record_tensors(stem, digest))
        else:  # a record without instances has no rows; its tensors are not read
            tokens = np.empty((0, 2, TOKEN_DIM), dtype=np.float32)
        block = {"tokens": tokens, **rows.columns(parsed, self.variants)}
        if parsed.missing:
            self._say_missing(rec, parsed.missing)
        image = len(self.images)
        self.images.append(str(rec["name"]))
        dataset = self.datasets.setdefault(str(rec["dataset"]), len(self.datasets))
        group = self.groups.setdefault((str(rec["dataset"]), str(rec["group"])), len(self.groups))
        for key, code in (("image", image), ("group", group), ("dataset", dataset)):
            block[f"code:{key}"] = np.full(P * V * n, code)
        return block

    def _say_missing(self, rec: dict[str, Any], missing: list[str]) -> None:
        self.images_missing_models += 1
        if len(self.missing_models) < MAX_LISTED:
            log.warning(
                "image %s (%s/%s) has no results for model %s: its %s are NaN",
                rec["name"],
                rec["dataset"],
                rec["split"],
                ", ".join(missing),
                ", ".join(f"iou_{m}" for m in missing) + " and the gaps that need them",
            )
            self.missing_models.append(
                {"image": rec["name"], "dataset": rec["dataset"], "models": missing}
            )


def _images(c: Container) -> set[tuple[str, str]]:
    """(dataset, image name) of every image with rows in container `c`."""
    codes, first = np.unique(np.asarray(c.code("image")), return_index=True)
    names, datasets = c.table("image"), list(c.meta["datasets"])
    dataset_codes = np.asarray(c.code("dataset"))[first]
    return {(datasets[dataset_codes[k]], names[i]) for k, i in enumerate(codes)}
