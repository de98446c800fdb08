"""One stage-1 record -> its container rows, in pure numpy: no files, no logging, no state.

`parse` checks a record's JSON and turns it into arrays laid out [models, variants,
instances]; `columns` flattens those into the float columns (the stage-1 fields, the
per-model copies, the gaps of SPEC.md, the one-hots) and the model / variant codes;
`tokens` picks each row's IoU token and best mask token from the record's tensors.
Row order: container models the record has x the record's variants (container order) x
instances. The writer (writer.py) reads the files and appends what these return.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from usam.container.reader import PER_MODEL
from usam.errors import UsamError
from usam.schema import FIELDS, RECORD_SCHEMA, TOKEN_DIM

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


class BadRecord(UsamError):
    """A record that cannot be used: why, the skip counter it goes to, and the file to blame
    (the record's stem + `suffix`; the writer knows the stem, these functions do not)."""

    def __init__(self, reason: str, kind: str = "incomplete", suffix: str = ".json") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.suffix = suffix


def ordered(names: set[str], canonical: Sequence[str]) -> list[str]:
    """Known names in their usual order (small to large, original first), others sorted after."""
    return [n for n in canonical if n in names] + sorted(names - set(canonical))


def numbers(values: Any, where: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """JSON numbers (null = NaN) -> float64 of `shape` (default: a flat list), or a clear reason why not."""
    try:
        a = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        a = None
    if a is None or a.shape != (shape or (len(values),)):
        expected = f"{shape[-1]} numbers" if shape else "numbers"
        raise BadRecord(f"{where} must be a list of {expected}, got {str(values)[:80]}")
    return a


def check_header(rec: Any) -> None:
    """What the scan needs to trust (kind, schema, keys, models, variants); `parse` checks the rest."""
    if not isinstance(rec, dict) or rec.get("kind") != "usam.record":
        raise BadRecord("not a usam.record JSON")
    schema = rec.get("schema")
    if schema != RECORD_SCHEMA:
        raise BadRecord(
            f"record schema {schema!r} is not supported (this usam reads schema "
            f"{RECORD_SCHEMA}); re-extract with this usam version",
            "schema",
        )
    missing = [k for k in RECORD_KEYS if k not in rec]
    if missing:
        raise BadRecord(f"missing keys {missing}")
    models, variants = rec["models"], rec["variants"]
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        raise BadRecord(f"'models' must be a non-empty list of names, got {models!r}")
    if (
        not isinstance(variants, list)
        or not variants
        or variants[0] != "original"
        or not all(isinstance(v, str) for v in variants)
    ):
        raise BadRecord(
            f"'variants' must be a list of names starting with 'original', got {variants!r}"
        )


@dataclass
class Parsed:
    """One record as arrays over the container's models (M), the record's kept variants (V)
    and its instances (n); models the record lacks are NaN in `values`."""

    models: list[str]  # the container's models
    present: list[int]  # indices into `models` of those the record has, container order
    variants: list[str]  # the record's variants that the container keeps, container order
    values: np.ndarray  # float64 [len(FIELDS), M, V, n], FIELDS order
    best: np.ndarray  # int64 [M, V, n]: index 0..2 of the best mask
    ids: np.ndarray  # float64 [n]
    areas: np.ndarray  # float64 [n]
    width: float
    height: float

    def field(self, name: str) -> np.ndarray:
        """[M, V, n] of one stage-1 field."""
        return self.values[FIELDS.index(name)]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(models with rows, variants, instances): the rows are their product."""
        return len(self.present), len(self.variants), len(self.ids)

    @property
    def missing(self) -> list[str]:
        """Container models this record has no results for."""
        return [m for j, m in enumerate(self.models) if j not in self.present]


def parse(rec: Any, models: Sequence[str], variants: Sequence[str]) -> Parsed:
    """Check a record's JSON and lay it out over the container's `models` and `variants`."""
    check_header(rec)
    instances = rec["instances"]
    if not isinstance(instances, list) or not all(
        isinstance(i, dict) and "id" in i and "gt_area" in i for i in instances
    ):
        raise BadRecord("'instances' must be a list of {id, gt_area, ...}")
    n = len(instances)
    ids = numbers([i["id"] for i in instances], "instances.id")
    areas = numbers([i["gt_area"] for i in instances], "instances.gt_area")
    width = numbers([rec["width"]], "width")[0]
    height = numbers([rec["height"]], "height")[0]

    models = list(models)
    present = [j for j, m in enumerate(models) if m in rec["models"]]
    kept = [v for v in variants if v in rec["variants"]]
    M, V = len(models), len(kept)
    values = np.full((len(FIELDS), M, V, n), np.nan)
    best = np.zeros((M, V, n), dtype=np.int64)
    fields = rec["fields"]
    for j in present:
        for k, v in enumerate(kept):
            where = f"fields.{models[j]}.{v}"
            per_model = fields.get(models[j]) if isinstance(fields, dict) else None
            block = per_model.get(v) if isinstance(per_model, dict) else None
            if not isinstance(block, dict):
                raise BadRecord(f"{where} is missing")
            try:  # one conversion for all fields; null -> NaN
                values[:, j, k] = numbers([block[f] for f in FIELDS], where, (len(FIELDS), n))
            except (KeyError, BadRecord):
                for f in FIELDS:  # find the field to blame
                    numbers(block.get(f), f"{where}.{f}", (n,))
                raise
            b = block.get("best")
            if (
                not isinstance(b, list)
                or len(b) != n
                or not all(type(x) is int and 0 <= x <= 2 for x in b)
            ):
                raise BadRecord(f"{where}.best must be {n} mask indices 0..2, got {b!r}")
            best[j, k] = b
    return Parsed(models, present, kept, values, best, ids, areas, width, height)


def columns(p: Parsed, variants: Sequence[str]) -> dict[str, np.ndarray]:
    """Every float column of `column_names(p.models)` and the codes `code:model`,
    `code:variant` (indices into p.models / the container's `variants`), one value per row."""
    P, V, n = p.shape
    mi = {m: j for j, m in enumerate(p.models)}

    def rows_of(a: np.ndarray) -> np.ndarray:  # [M, V, n] -> the present models' rows
        return a[p.present].reshape(-1)

    def each_model(a: np.ndarray) -> np.ndarray:  # [V, n] -> the same for every row model
        return np.broadcast_to(a, (P, V, n)).reshape(-1)

    out = {f: rows_of(p.values[i]) for i, f in enumerate(FIELDS)}
    out["best"] = rows_of(p.best.astype(np.float64))
    for j, m in enumerate(p.models):
        for f in PER_MODEL:
            out[f"{f}_{m}"] = each_model(p.field(f)[j])
    iou = p.field("iou")
    # SPEC: model_gap = iou_large - iou_tiny, NaN for a container without both
    gap = (
        (iou[mi["large"]] - iou[mi["tiny"]])
        if {"large", "tiny"} <= mi.keys()
        else np.full((V, n), np.nan)
    )
    out["model_gap"] = each_model(gap)
    out["task_gap"] = rows_of(iou - p.field("unsupervised_iou"))
    out["prompt_gap"] = rows_of(p.field("iou_dense_prompt") - iou)
    model_code = np.repeat(np.asarray(p.present, dtype=np.int64), V * n)
    for j, m in enumerate(p.models):
        out[f"is_{m}"] = (model_code == j).astype(np.float64)
    out["is_augmented"] = np.tile(np.repeat([v != "original" for v in p.variants], n), P).astype(
        np.float64
    )
    out["gt_size"] = np.tile(p.areas, P * V)
    out["width"] = np.full(P * V * n, p.width)
    out["height"] = np.full(P * V * n, p.height)
    out["instance_id"] = np.tile(p.ids, P * V)
    out["code:model"] = model_code
    out["code:variant"] = np.tile(np.repeat([variants.index(v) for v in p.variants], n), P)
    return out


def tokens(p: Parsed, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
    """float32 [rows, 2, 256]: each row's IoU token and the token of its best mask.

    `tensors` is the record's safetensors content (`<model>/<variant>/iou_token` [n, 256],
    `<model>/<variant>/mask_tokens` [n, 3, 256]); a problem is a BadRecord blaming that file.
    """
    P, V, n = p.shape
    out = np.empty((P, V, n, 2, TOKEN_DIM), dtype=np.float32)
    for q, j in enumerate(p.present):
        m = p.models[j]
        for k, v in enumerate(p.variants):
            names = (f"{m}/{v}/iou_token", f"{m}/{v}/mask_tokens")
            for name in names:
                if name not in tensors:
                    raise BadRecord(f"tensor {name} is missing", suffix=".safetensors")
            iou_token, mask_tokens = tensors[names[0]], tensors[names[1]]
            if iou_token.shape != (n, TOKEN_DIM) or mask_tokens.shape != (n, 3, TOKEN_DIM):
                raise BadRecord(
                    f"{m}/{v}: tokens of shape {iou_token.shape} and {mask_tokens.shape}, "
                    f"expected ({n}, {TOKEN_DIM}) and ({n}, 3, {TOKEN_DIM})",
                    suffix=".safetensors",
                )
            if not (np.isfinite(iou_token).all() and np.isfinite(mask_tokens).all()):
                raise BadRecord(f"{m}/{v}: tokens are not finite", "non_finite", ".safetensors")
            out[q, k, :, 0] = iou_token
            out[q, k, :, 1] = mask_tokens[np.arange(n), p.best[j, k]]
    return out.reshape(-1, 2, TOKEN_DIM)
