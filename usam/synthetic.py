"""Synthetic stage-1 records (the format `usam.extract` writes), for tests and benchmarks: a
container, a training run or an evaluation on data whose every value is known, without SAM 2.

`make_record` fills every field with a value you can predict from its position, unless
you pass your own; `write_record` writes it exactly as stage 1 does (tensors first, then
the JSON that marks the image complete).

Synthetic tokens encode where they came from, so a test can tell which one landed in a
row: iou_token[i] is filled with `token_code(m, v, i)`, mask_tokens[i, j] with that code
plus (j + 1) / 4 (all exact in float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usam.schema import FIELDS, RECORD_SCHEMA, SIZES, TOKEN_DIM
from usam.storage import write_json, write_tensors

MODELS = SIZES
VARIANTS = ("original", "jpeg10", "jpeg30", "noise", "blur")


def token_code(model_index: int, variant_index: int, instance: int) -> float:
    return 1000.0 * model_index + 100.0 * variant_index + instance


def default_value(field: str, model_index: int, variant_index: int, instance: int) -> float:
    """A distinct, exactly representable number per field / model / variant / instance."""
    return (FIELDS.index(field) + 1) / 16 + model_index / 4 + variant_index / 64 + instance / 1024


def make_record(
    name: str,
    group: str,
    *,
    dataset: str = "davis",
    split: str = "val",
    instances: Sequence[tuple[int, int]] = ((1, 100),),
    models: Sequence[str] = MODELS,
    variants: Sequence[str] = ("original",),
    fields: dict[str, dict[str, dict[str, list[Any]]]] | None = None,
    best: int | dict[tuple[str, str], list[int]] = 0,
    width: int = 8,
    height: int = 6,
    random_weights: bool = False,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(record JSON, tensors) for one image; `instances` = [(id, gt_area), ...].

    `fields[model][variant][field]` overrides a field's list; model / variant indices in
    `default_value` and `token_code` are positions in MODELS / VARIANTS.
    """
    n = len(instances)
    out_fields: dict[str, Any] = {}
    tensors: dict[str, np.ndarray] = {}
    for m in models:
        mi = MODELS.index(m) if m in MODELS else len(MODELS)
        out_fields[m] = {}
        for v in variants:
            vi = VARIANTS.index(v) if v in VARIANTS else len(VARIANTS)
            b = best.get((m, v), [0] * n) if isinstance(best, dict) else [best] * n
            block = {f: [default_value(f, mi, vi, i) for i in range(n)] for f in FIELDS}
            block.update((fields or {}).get(m, {}).get(v, {}))
            block["best"] = list(b)
            block["ious"] = [[0.25, 0.5, 0.75]] * n
            block["scores"] = [[0.5, 0.25, 0.125]] * n
            out_fields[m][v] = block
            codes = np.array([token_code(mi, vi, i) for i in range(n)], dtype=np.float32)
            tensors[f"{m}/{v}/iou_token"] = np.repeat(codes[:, None], TOKEN_DIM, axis=1)
            mask = codes[:, None, None] + (np.arange(3, dtype=np.float32)[None, :, None] + 1) / 4
            tensors[f"{m}/{v}/mask_tokens"] = np.ascontiguousarray(
                np.broadcast_to(mask, (n, 3, TOKEN_DIM))
            )
    record = {
        "schema": RECORD_SCHEMA,
        "kind": "usam.record",
        "dataset": dataset,
        "split": split,
        "name": name,
        "group": group,
        "width": width,
        "height": height,
        "sam_version": "sam2.1",
        "random_weights": random_weights,
        "models": list(models),
        "variants": list(variants),
        "instances": [{"id": i, "gt_area": a, "points": [[1, 1]] * 8} for i, a in instances],
        "fields": out_fields,
    }
    return record, tensors


def _stem(root: str | Path, name: str) -> Path:
    """Where stage 1 puts the record of image `name`: the name without its suffix."""
    return Path(root) / Path(name).with_suffix("")


def write_record(
    root: str | Path,
    record: dict[str, Any],
    tensors: dict[str, np.ndarray],
    *,
    json: bool = True,
    safetensors: bool = True,
) -> Path:
    """Write a record under `root` like stage 1 (json=False leaves an unfinished image)."""
    stem = _stem(root, record["name"])
    if safetensors:
        write_tensors(stem.with_name(stem.name + ".safetensors"), tensors)
    if json:
        write_json(stem.with_name(stem.name + ".json"), record)
    return stem
