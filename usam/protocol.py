"""Which rows an estimator saw, and whether an evaluation scores any of them.

An estimator's bundle records the rows its final fit used (`training_record`): the identity
of each training container (path and a digest of its `meta.json`), the filters, the group
split (fraction and seed) and which side of it went into the fit, and, in a file of its own
(`seen_groups.json`), the groups (video / image) of those rows. A row counts as seen when
its (dataset, group) was in the fit: frames of one video, variants of one image and the
rows of the other SAM sizes on that image are near-copies of the fitted rows, so the check
is per group, not per row. `seen_rows` then tells evaluation which of its rows were seen,
whatever container they come from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usam.container.reader import Container, _group_rank
from usam.errors import UsamError
from usam.storage import write_json

SEEN_FILE = "seen_groups.json"
SEEN_SCHEMA = 1


def container_identity(c: Container) -> dict[str, Any]:
    """Path and content digest of a container (its meta.json names rows, sources and build time)."""
    meta_file = Path(c.path) / "meta.json"
    digest = hashlib.sha256(meta_file.read_bytes()).hexdigest()
    return {"path": str(Path(c.path).resolve()), "meta_sha256": digest, "rows": c.meta["rows"]}


def group_table(views: Sequence[Container]) -> dict[str, list[str]]:
    """{dataset: sorted group names} of the rows of `views`."""
    out: dict[str, set[str]] = {}
    for v in views:
        if len(v) == 0:
            continue
        groups, datasets = v.table("group"), v.table("dataset")
        pairs = np.unique(np.stack([v.code("dataset"), v.code("group")], axis=1), axis=0)
        for d, g in pairs:
            out.setdefault(datasets[int(d)], set()).add(groups[int(g)])
    return {d: sorted(gs) for d, gs in sorted(out.items())}


def split_groups(
    parts: Sequence[Container], val_fraction: float, seed: int
) -> list[tuple[Container, Container]]:
    """(train, val) views of each part, by one group split over all parts together.

    The same rule as `Container.split` (groups ranked by a seeded hash of (dataset, group),
    taken into val until it holds about `val_fraction` of the rows, at least one group on
    each side), applied to the union, so a group held by two containers lands on one side.
    For a single container it equals `Container.split`.
    """
    if not 0 < val_fraction < 1:
        raise UsamError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    counts: dict[tuple[str, str], int] = {}
    keys_per_part = []
    for p in parts:
        names, datasets = p.table("group"), p.table("dataset")
        pairs, inverse, n = np.unique(
            np.stack([p.code("dataset"), p.code("group")], axis=1),
            axis=0,
            return_inverse=True,
            return_counts=True,
        )
        keys = [(datasets[int(d)], names[int(g)]) for d, g in pairs]
        for k, c in zip(keys, n, strict=True):
            counts[k] = counts.get(k, 0) + int(c)
        keys_per_part.append((keys, np.asarray(inverse).reshape(-1)))
    if len(counts) < 2:
        where = ", ".join(str(p.path) for p in parts)
        raise UsamError(
            f"{where}: {len(counts)} group(s) in these rows; a split by group needs two"
        )
    order = sorted(counts, key=lambda k: (_group_rank(seed, k[0], k[1]), k[0], k[1]))
    cum = np.cumsum([counts[k] for k in order])
    k = int(np.argmin(np.abs(cum - val_fraction * cum[-1]))) + 1  # groups in val
    val_keys = set(order[: min(max(k, 1), len(order) - 1)])
    out = []
    for p, (keys, inverse) in zip(parts, keys_per_part, strict=True):
        is_val = np.array([key in val_keys for key in keys], dtype=bool)[inverse]
        out.append((p.subset(np.flatnonzero(~is_val)), p.subset(np.flatnonzero(is_val))))
    return out


def write_seen(bundle: Path, groups: dict[str, list[str]]) -> dict[str, Any]:
    """Write `<bundle>/seen_groups.json`; returns the fields the bundle config keeps about it."""
    doc = {"schema": SEEN_SCHEMA, "kind": "usam.seen_groups", "groups": groups}
    path = write_json(Path(bundle) / SEEN_FILE, doc)
    return {
        "seen_groups_file": SEEN_FILE,
        "seen_groups": sum(len(g) for g in groups.values()),
        "seen_groups_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def read_seen(bundle: Path, record: dict[str, Any]) -> dict[str, set[str]]:
    """The seen groups of a bundle, checked against the digest its config.json recorded."""
    path = Path(bundle) / record.get("seen_groups_file", SEEN_FILE)
    try:
        raw = path.read_bytes()
    except OSError:
        raise UsamError(
            f"{path} is missing: this bundle cannot show which rows it was trained on; "
            "retrain it with python -m usam.train"
        ) from None
    if hashlib.sha256(raw).hexdigest() != record.get("seen_groups_sha256"):
        raise UsamError(
            f"{path} does not match the digest in {Path(bundle) / 'config.json'} (a half-written "
            "or edited bundle); retrain it with python -m usam.train"
        )
    doc = json.loads(raw)
    return {d: set(gs) for d, gs in doc["groups"].items()}


def seen_rows(view: Container, seen: dict[str, set[str]]) -> np.ndarray:
    """Boolean per row of `view`: its (dataset, group) is among `seen`."""
    names, datasets = view.table("group"), view.table("dataset")
    pairs, inverse = np.unique(
        np.stack([view.code("dataset"), view.code("group")], axis=1), axis=0, return_inverse=True
    )
    hit = np.array([names[int(g)] in seen.get(datasets[int(d)], ()) for d, g in pairs], dtype=bool)
    return hit[np.asarray(inverse).reshape(-1)]  # an empty view: an empty bool array too


def describe(record: dict[str, Any]) -> str:
    """One line: what a bundle was fitted on."""
    names = ", ".join(c["path"] for c in record.get("containers", []))
    split = record.get("split")
    fit = record.get("fit")
    if record.get("val_container"):
        how = f"all rows (validated on {record['val_container']['path']})"
    elif fit == "train":
        how = (
            f"the train side of the group split (val_fraction={split['val_fraction']}, "
            f"seed={split['seed']})"
        )
    else:
        how = "all rows (train + validation split)"
    filters = record.get("filters", {})
    rows = "variant rows included" if filters.get("augmented") else "original-image rows"
    model = f", {filters['model']} rows only" if filters.get("model") else ""
    return f"{names}: {how}, {rows}{model}"
