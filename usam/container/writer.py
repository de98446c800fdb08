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
The reader is `usam.container.Container` (usam/container/reader.py); the entrypoint
`python -m usam.container` is usam/container/__main__.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from usam.container.reader import (
    CODES,
    PER_MODEL,
    SCHEMA,
    Container,
    column_names,
    is_container,
)
from usam.errors import SampleError, UsamError
from usam.options import flag
from usam.schema import FIELDS, RECORD_SCHEMA, SIZES, TOKEN_DIM
from usam.storage import MismatchedPair, make_temp_dir, read_verified, remove_stale_temps

log = logging.getLogger(__name__)

__all__ = ["ContainerWriter"]

VARIANT_ORDER = ("original", "jpeg10", "jpeg30", "noise", "blur")
RECORD_KEYS = (
    "dataset",
    "split",
    "name",
    "group",
    "width",
    "height",
    "models",
    "variants",
    "instances",
    "fields",
)
MAX_LISTED = 100  # skipped files / missing-model images named one by one; the rest only counted


def _ordered(names: set[str], canonical: Sequence[str]) -> list[str]:
    """Known names in their usual order (small to large, original first), others sorted after."""
    return [n for n in canonical if n in names] + sorted(names - set(canonical))


class _NpyAppender:
    """An .npy file written row block by row block; the header gets the final row count on close.

    numpy pads the header so that the first axis can grow to any size without
    changing its length, which is what lets us rewrite it in place.
    """

    def __init__(self, path: Path, dtype: Any, row_shape: tuple[int, ...] = ()) -> None:
        self.file = open(path, "wb")
        self.dtype = np.dtype(dtype)
        self.row_shape = row_shape
        self.rows = 0
        self._header()
        self.data_start = self.file.tell()

    def _header(self) -> None:
        self.file.seek(0)
        np.lib.format.write_array_header_1_0(
            self.file,
            {
                "descr": np.lib.format.dtype_to_descr(self.dtype),
                "fortran_order": False,
                "shape": (self.rows, *self.row_shape),
            },
        )

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        assert block.shape[1:] == self.row_shape, (block.shape, self.row_shape)
        self.file.write(block.tobytes())
        self.rows += len(block)

    def close(self) -> None:
        try:
            self.file.flush()
            self._header()
            # numpy reserves room for any row count; if a future numpy stops, fail loudly
            if self.file.tell() != self.data_start:
                raise RuntimeError(f"{self.file.name}: the .npy header changed length")
        finally:
            self.file.close()


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
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(self.out)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the container is not
        try:
            rows = self._fill(stems, tmp)
            if rows == 0:
                raise UsamError(
                    f"the records under {', '.join(map(str, self.roots))} have no instances "
                    f"(skipped: {dict(self.skipped) or 'none'}): nothing to train on"
                )
            self._check_replace(_images(Container.open(tmp, mmap=True)))  # pass 2 may skip some
            self._publish(tmp)
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
            rows,
            len(self.images),
            sum(self.skipped.values()),
            seconds,
        )
        return {
            "out": str(self.out),
            "rows": rows,
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
            "rows_per_second": round(rows / max(seconds, 1e-9), 1),
            "replaced": self.replaced,
        }

    def _check_out(self) -> None:
        # builds and replaced containers of killed runs (their owner's process is gone)
        remove_stale_temps(self.out.parent, prefix=f"{self.out.name}.")
        """Refuse an `out` that is not ours to replace; describe a container found there."""
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

    def _publish(self, tmp: Path) -> None:
        """Rename the finished build onto `out`; an old container there is removed only after."""
        old = None
        self._say_replaced()
        if self.out.exists():
            old = make_temp_dir(self.out, "old")
            os.replace(self.out, old / "container")
        os.replace(tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _skip(self, path: Path | str, reason: str, kind: str) -> None:
        self.skipped[kind] += 1
        if len(self.skipped_files) < MAX_LISTED:
            log.warning("skipping record %s: %s", path, reason)
            self.skipped_files.append({"file": str(path), "reason": reason, "kind": kind})

    # ---- pass 1: find records, models, variants --------------------------------------------
    def _walk(self, root: Path) -> Iterator[tuple[str, bool, bool]]:
        """(stem, has .json, has .safetensors) for every record-like file pair, sorted."""
        for folder, dirs, files in os.walk(root):
            # hidden folders hold temporary builds (ours and stage 1's); never read our own output
            dirs[:] = sorted(
                d for d in dirs if not d.startswith(".") and Path(folder, d) != self.out
            )
            jsons = {f[:-5] for f in files if f.endswith(".json") and not f.startswith(".")}
            tensors = {
                f[:-12] for f in files if f.endswith(".safetensors") and not f.startswith(".")
            }
            for stem in sorted(jsons | tensors):
                yield os.path.join(folder, stem), stem in jsons, stem in tensors

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
                self._walk(root), desc=f"scan {root.name}", unit="file"
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
                    self._check_header(rec)
                except _Bad as err:
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
                self.random_weights |= bool(rec.get("random_weights", False))
                stems.append(stem)
        self.scanned = {(d, n) for d, _, n in seen}  # the images a build would hold at most
        self.models = _ordered(models, SIZES)
        self.variants = _ordered(variants, VARIANT_ORDER)
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

    @staticmethod
    def _check_header(rec: dict) -> None:
        """What pass 1 needs to trust; the per-field checks happen in pass 2."""
        if not isinstance(rec, dict) or rec.get("kind") != "usam.record":
            raise _Bad("not a usam.record JSON")
        schema = rec.get("schema")
        if schema != RECORD_SCHEMA:
            raise _Bad(
                f"record schema {schema!r} is not supported (this usam reads schema "
                f"{RECORD_SCHEMA}); re-extract with this usam version",
                "schema",
            )
        missing = [k for k in RECORD_KEYS if k not in rec]
        if missing:
            raise _Bad(f"missing keys {missing}")
        models, variants = rec["models"], rec["variants"]
        if (
            not isinstance(models, list)
            or not models
            or not all(isinstance(m, str) for m in models)
        ):
            raise _Bad(f"'models' must be a non-empty list of names, got {models!r}")
        if (
            not isinstance(variants, list)
            or not variants
            or variants[0] != "original"
            or not all(isinstance(v, str) for v in variants)
        ):
            raise _Bad(
                f"'variants' must be a list of names starting with 'original', got {variants!r}"
            )

    # ---- pass 2: rows ------------------------------------------------------------------------
    def _fill(self, stems: list[str], tmp: Path) -> int:
        self.columns = column_names(self.models)
        (tmp / "columns").mkdir()
        (tmp / "codes").mkdir()
        (tmp / "tables").mkdir()
        files = {"tokens": _NpyAppender(tmp / "tokens.npy", np.float32, (2, TOKEN_DIM))}
        files |= {c: _NpyAppender(tmp / "columns" / f"{c}.npy", np.float64) for c in self.columns}
        files |= {f"code:{c}": _NpyAppender(tmp / "codes" / f"{c}.npy", np.int32) for c in CODES}
        self.images: list[str] = []
        self.groups: dict[tuple[str, str], int] = {}
        self.datasets: dict[str, int] = {}
        try:
            for stem in tqdm(stems, desc="container", unit="img"):
                try:
                    block = self._rows(stem)
                except _Bad as err:
                    self._skip(stem + err.suffix, err.reason, err.kind)
                    continue
                files["tokens"].append(block.pop("tokens"))
                for key, values in block.items():
                    files[key].append(values)
        finally:
            for f in files.values():
                f.close()
        rows = files["tokens"].rows
        with open(tmp / "tables" / "image.json", "w") as f:
            json.dump(self.images, f)
        with open(tmp / "tables" / "group.json", "w") as f:
            json.dump([g for _, g in self.groups], f)
        meta = {
            "schema": SCHEMA,
            "kind": "usam.container",
            "rows": rows,
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
        # plain writes: the whole folder is renamed into place only once it is complete
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        return rows

    def _rows(self, stem: str) -> dict[str, np.ndarray]:
        """All rows of one record: tokens [R, 2, 256] and each column / code [R].

        Row order: record models (container order) x variants x instances. Arrays are
        built as [models, variants, instances] and flattened, one model's block at a time.
        """
        path = Path(stem + ".json")
        try:
            rec = json.loads(path.read_text())
            self._check_header(rec)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise _Bad(f"changed or vanished while building ({err})") from None
        instances = rec["instances"]
        if not isinstance(instances, list) or not all(
            isinstance(i, dict) and "id" in i and "gt_area" in i for i in instances
        ):
            raise _Bad("'instances' must be a list of {id, gt_area, ...}")
        n = len(instances)
        ids = _numbers([i["id"] for i in instances], "instances.id")
        areas = _numbers([i["gt_area"] for i in instances], "instances.gt_area")
        width = _numbers([rec["width"]], "width")[0]
        height = _numbers([rec["height"]], "height")[0]

        mi = {m: j for j, m in enumerate(self.models)}
        present = [mi[m] for m in self.models if m in rec["models"]]  # container order
        variants = [v for v in self.variants if v in rec["variants"]]
        M, P, V = len(self.models), len(present), len(variants)
        table = np.full((len(FIELDS), M, V, n), np.nan)
        values = dict(zip(FIELDS, table, strict=True))  # field -> [M, V, n] view
        best = np.zeros((M, V, n), dtype=np.int64)
        fields = rec["fields"]
        for j in present:
            for k, v in enumerate(variants):
                where = f"fields.{self.models[j]}.{v}"
                per_model = fields.get(self.models[j]) if isinstance(fields, dict) else None
                block = per_model.get(v) if isinstance(per_model, dict) else None
                if not isinstance(block, dict):
                    raise _Bad(f"{where} is missing")
                try:  # one conversion for all fields; null -> NaN
                    table[:, j, k] = _numbers([block[f] for f in FIELDS], where, (len(FIELDS), n))
                except (KeyError, _Bad):
                    for f in FIELDS:  # find the field to blame
                        _numbers(block.get(f), f"{where}.{f}", (n,))
                    raise
                b = block.get("best")
                if (
                    not isinstance(b, list)
                    or len(b) != n
                    or not all(type(x) is int and 0 <= x <= 2 for x in b)
                ):
                    raise _Bad(f"{where}.best must be {n} mask indices 0..2, got {b!r}")
                best[j, k] = b

        tokens = np.empty((P, V, n, 2, TOKEN_DIM), dtype=np.float32)
        digest = rec.get("tensors_sha256")
        if digest is None:
            self.unverified += 1  # a record from before digests: its pair cannot be checked
        if n:
            self._tokens(stem, present, variants, best, tokens, digest)

        missing = [m for m in self.models if m not in rec["models"]]
        if missing:
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

        image = len(self.images)
        self.images.append(str(rec["name"]))
        dataset = self.datasets.setdefault(str(rec["dataset"]), len(self.datasets))
        group = self.groups.setdefault((str(rec["dataset"]), str(rec["group"])), len(self.groups))

        def rows_of(a: np.ndarray) -> np.ndarray:  # [M, V, n] -> the present models' rows
            return a[present].reshape(-1)

        def each_model(a: np.ndarray) -> np.ndarray:  # [V, n] -> the same for every row model
            return np.broadcast_to(a, (P, V, n)).reshape(-1)

        out: dict[str, np.ndarray] = {"tokens": tokens.reshape(-1, 2, TOKEN_DIM)}
        out |= {f: rows_of(values[f]) for f in FIELDS}
        out["best"] = rows_of(best.astype(np.float64))
        for j, m in enumerate(self.models):
            for f in PER_MODEL:
                out[f"{f}_{m}"] = each_model(values[f][j])
        iou = values["iou"]
        gap = (
            (iou[mi["large"]] - iou[mi["tiny"]])
            if {"large", "tiny"} <= mi.keys()
            else np.full((V, n), np.nan)
        )
        out["model_gap"] = each_model(gap)
        out["task_gap"] = rows_of(iou - values["unsupervised_iou"])
        out["prompt_gap"] = rows_of(values["iou_dense_prompt"] - iou)
        model_code = np.repeat(np.asarray(present, dtype=np.int64), V * n)
        for j, m in enumerate(self.models):
            out[f"is_{m}"] = (model_code == j).astype(np.float64)
        variant_code = np.tile(np.repeat([self.variants.index(v) for v in variants], n), P)
        out["is_augmented"] = np.tile(np.repeat([v != "original" for v in variants], n), P).astype(
            np.float64
        )
        out["gt_size"] = np.tile(areas, P * V)
        out["width"] = np.full(P * V * n, width)
        out["height"] = np.full(P * V * n, height)
        out["instance_id"] = np.tile(ids, P * V)
        R = P * V * n
        out["code:image"] = np.full(R, image)
        out["code:group"] = np.full(R, group)
        out["code:dataset"] = np.full(R, dataset)
        out["code:model"] = model_code
        out["code:variant"] = variant_code
        return out

    def _tokens(
        self,
        stem: str,
        present: list[int],
        variants: list[str],
        best: np.ndarray,
        out: np.ndarray,
        digest: str | None = None,
    ) -> None:
        """Fill out[p, v, i] = [iou_token, mask_tokens[best]] from the record's safetensors."""
        from safetensors.numpy import load

        path = stem + ".safetensors"
        n = out.shape[2]
        try:
            data = read_verified(path, digest, stem + ".json")
        except MismatchedPair as err:
            raise _Bad(f"{err}; re-extract it", "mismatched_pair", ".safetensors") from None
        except UsamError as err:
            raise _Bad(str(err), suffix=".safetensors") from None
        try:
            f = load(data)
        except Exception as err:  # safetensors raises its own error type for broken files
            raise _Bad(f"unreadable tokens ({err})", suffix=".safetensors") from None
        keys = set(f)
        for p, j in enumerate(present):
            m = self.models[j]
            for k, v in enumerate(variants):
                names = (f"{m}/{v}/iou_token", f"{m}/{v}/mask_tokens")
                for name in names:
                    if name not in keys:
                        raise _Bad(f"tensor {name} is missing", suffix=".safetensors")
                iou_token, mask_tokens = f[names[0]], f[names[1]]
                if iou_token.shape != (n, TOKEN_DIM) or mask_tokens.shape != (
                    n,
                    3,
                    TOKEN_DIM,
                ):
                    raise _Bad(
                        f"{m}/{v}: tokens of shape {iou_token.shape} and {mask_tokens.shape}, "
                        f"expected ({n}, {TOKEN_DIM}) and ({n}, 3, {TOKEN_DIM})",
                        suffix=".safetensors",
                    )
                if not (np.isfinite(iou_token).all() and np.isfinite(mask_tokens).all()):
                    raise _Bad(f"{m}/{v}: tokens are not finite", "non_finite", ".safetensors")
                out[p, k, :, 0] = iou_token
                out[p, k, :, 1] = mask_tokens[np.arange(n), best[j, k]]


def _images(c: Container) -> set[tuple[str, str]]:
    """(dataset, image name) of every image with rows in container `c`."""
    codes, first = np.unique(np.asarray(c.code("image")), return_index=True)
    names, datasets = c.table("image"), list(c.meta["datasets"])
    dataset_codes = np.asarray(c.code("dataset"))[first]
    return {(datasets[d], names[i]) for i, d in zip(codes, dataset_codes, strict=True)}


class _Bad(SampleError):
    """A record that cannot be used, with the skip counter it goes to."""

    def __init__(self, reason: str, kind: str = "incomplete", suffix: str = ".json") -> None:
        super().__init__("", reason)
        self.kind = kind
        self.suffix = suffix


def _numbers(values: Any, where: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """JSON numbers (null = NaN) -> float64 of `shape` (default: a flat list), or a clear reason why not."""
    try:
        a = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        a = None
    if a is None or a.shape != (shape or (len(values),)):
        expected = f"{shape[-1]} numbers" if shape else "numbers"
        raise _Bad(f"{where} must be a list of {expected}, got {str(values)[:80]}")
    return a
