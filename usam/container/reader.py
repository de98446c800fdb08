"""Reading a training container (written by `python -m usam.container`): rows, columns, views, split.

A `Container` is the directory opened either memory-mapped (nothing read until used,
for datasets larger than RAM) or loaded into memory. `filter`, `subset` and `split`
return views that share the arrays and keep an index of their rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usam.errors import UsamError
from usam.options import unset
from usam.schema import FIELDS

SCHEMA = 1
# stage-1 fields copied for every model of the container as `<field>_<model>`
PER_MODEL = ("iou", "unsupervised_iou", "sam_score")
# per-row int codes into a table: models/variants/datasets in meta.json, the rest in tables/
CODES = ("image", "group", "dataset", "model", "variant")


def column_names(models: Sequence[str]) -> list[str]:
    """The float columns of a container with these models, in file order."""
    return [
        *FIELDS,
        "best",  # index 0..2 of the mask whose token is in the row
        *(f"{f}_{m}" for m in models for f in PER_MODEL),
        "model_gap",  # iou_large - iou_tiny
        "task_gap",  # iou - unsupervised_iou
        "prompt_gap",  # iou_dense_prompt - iou
        *(f"is_{m}" for m in models),
        "is_augmented",
        "gt_size",
        "width",
        "height",
        "instance_id",
    ]


def is_container(path: str | Path) -> bool:
    """True if `path` holds a container's meta.json (any schema), which is safe to replace."""
    try:
        return json.loads((Path(path) / "meta.json").read_text()).get("kind") == "usam.container"
    except (OSError, ValueError, AttributeError):
        return False


def _group_rank(seed: int, dataset: str, group: str) -> int:
    # a hash, not Python's hash(): the same on every run and machine
    digest = hashlib.blake2b(f"{seed}\0{dataset}\0{group}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class Container:
    """One training container, or a view of some of its rows.

    `len(c)`, `c["iou"]` / `c.column("iou")` (float64 per row), `c.tokens` / `c.read_tokens(i)`
    (float32 [n, 2, 256]: IoU token, best mask token), `c.names/groups/models/variants` (strings
    per row), `c.filter(...)`, `c.split(...)`.
    """

    def __init__(
        self,
        path: Path,
        meta: dict[str, Any],
        arrays: dict[str, np.ndarray],
        mmap: bool,
        index: np.ndarray | None = None,
        tables: dict[str, list[str]] | None = None,
    ) -> None:
        self.path = path
        self.meta = meta
        self.mmap = mmap
        self._arrays = arrays  # "tokens", column names, "code:<key>"; shared by all views
        self._index = index  # rows of this view, None = all
        self._tables = {} if tables is None else tables  # loaded on first use, shared by views

    @classmethod
    def open(
        cls, path: str | Path | None, mmap: bool | None = None, *, what: str = "container"
    ) -> Container:
        """Open a container directory; `mmap=None` maps it if it was built with offload=true.

        `what` is the option that named `path` (container, val_container), for the errors:
        every stage that reads a container gets the same ones from here.
        """
        if unset(path):  # `container=None` on a command line is the string "None"
            raise UsamError(
                f"no {what} given; set {what}=<dir written by python -m usam.container>"
            )
        path = Path(str(path)).expanduser()
        if not path.exists():
            raise UsamError(
                f"{what} {path} not found; build it with python -m usam.container "
                f"(or pass {what}=<path>)"
            )
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise UsamError(
                f"{path} is not a usam container (no meta.json); build one with "
                "`python -m usam.container dataset=<name>`"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as err:
            raise UsamError(
                f"{meta_path} is not readable JSON ({err}); rebuild the container"
            ) from None
        if not isinstance(meta, dict) or meta.get("kind") != "usam.container":
            raise UsamError(
                f"{meta_path} is not a usam container's meta.json (kind "
                f"{meta.get('kind') if isinstance(meta, dict) else None!r})"
            )
        schema = meta.get("schema")
        if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
            raise UsamError(
                f"{meta_path}: unknown container schema {schema!r}; rebuild it with "
                "`python -m usam.container`"
            )
        if schema > SCHEMA:
            raise UsamError(
                f"{meta_path}: container schema {schema} is newer than this usam reads "
                f"({SCHEMA}); update usam or rebuild the container with this version"
            )
        if mmap is None:
            mmap = bool(meta.get("offload", False))
        rows = meta["rows"]
        files = {"tokens": path / "tokens.npy"}
        files |= {c: path / "columns" / f"{c}.npy" for c in meta["columns"]}
        files |= {f"code:{c}": path / "codes" / f"{c}.npy" for c in meta["codes"]}
        arrays = {}
        for key, file in files.items():
            try:
                a = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise UsamError(
                    f"{file} is missing or damaged ({err}); rebuild the container"
                ) from None
            if len(a) != rows:
                raise UsamError(
                    f"{file} has {len(a)} rows but {meta_path} says {rows}; rebuild the container"
                )
            arrays[key] = a
        if (
            arrays["tokens"].shape[1:] != (2, meta["token_dim"])
            or arrays["tokens"].dtype != np.float32
        ):
            raise UsamError(
                f"{files['tokens']} is float32 [rows, 2, {meta['token_dim']}] in a container, "
                f"got {arrays['tokens'].dtype} {arrays['tokens'].shape}; rebuild it"
            )
        return cls(path, meta, arrays, mmap)

    # ---- size and columns --------------------------------------------------------------------
    def __len__(self) -> int:
        return self.meta["rows"] if self._index is None else len(self._index)

    def __repr__(self) -> str:
        return (
            f"Container({str(self.path)!r}, rows={len(self)}, models={self.meta['models']}, "
            f"mmap={self.mmap}{', view' if self._index is not None else ''})"
        )

    @property
    def columns(self) -> list[str]:
        return list(self.meta["columns"])

    @property
    def random_weights(self) -> bool:
        return bool(self.meta["random_weights"])

    @property
    def rows(self) -> np.ndarray:
        """This view's row numbers in the container file (0..len-1 for the whole container)."""
        return np.arange(self.meta["rows"]) if self._index is None else self._index

    def __contains__(self, column: object) -> bool:
        return column in self.meta["columns"]

    def __getitem__(self, column: str) -> np.ndarray:
        return self.column(column)

    def column(self, column: str) -> np.ndarray:
        """One float64 value per row of this view."""
        if column not in self.meta["columns"]:
            raise UsamError(
                f"{self.path}: no column {column!r}; it has {', '.join(self.meta['columns'])}"
            )
        return self._take(self._arrays[column])

    def code(self, key: str) -> np.ndarray:
        """Per-row int codes of image/group/dataset/model/variant (index into `table(key)`)."""
        if key not in CODES:
            raise UsamError(f"no code {key!r}; codes are {', '.join(CODES)}")
        return self._take(self._arrays[f"code:{key}"])

    def table(self, key: str) -> list[str]:
        """The strings that `code(key)` indexes."""
        if key in ("model", "variant", "dataset"):
            return list(self.meta[f"{key}s"])
        if key not in self._tables:
            file = self.path / "tables" / f"{key}.json"
            try:
                self._tables[key] = json.loads(file.read_text())
            except (OSError, ValueError) as err:
                raise UsamError(
                    f"{file} is missing or damaged ({err}); rebuild the container"
                ) from None
        return self._tables[key]

    def strings(self, key: str) -> np.ndarray:
        """Per-row strings (object array) of image/group/dataset/model/variant."""
        return np.asarray(self.table(key), dtype=object)[self.code(key)]

    names = property(lambda self: self.strings("image"), doc="image name of each row")
    groups = property(
        lambda self: self.strings("group"), doc="group (video / image id) of each row"
    )
    models = property(lambda self: self.strings("model"), doc="model name of each row")
    variants = property(lambda self: self.strings("variant"), doc="image variant of each row")

    # ---- tokens ------------------------------------------------------------------------------
    @property
    def tokens(self) -> np.ndarray:
        """float32 [rows, 2, 256]; the mapped file itself for a whole mapped container, else read."""
        return self._take(self._arrays["tokens"])

    def read_tokens(self, positions: np.ndarray | Sequence[int]) -> np.ndarray:
        """Tokens of some rows of this view (a training batch), as a new float32 array."""
        rows = self._rows_at(positions)
        if not self.mmap:
            return self._arrays["tokens"][rows]
        order = np.argsort(rows, kind="stable")  # a mapped file reads faster front to back
        out = np.empty((len(rows), 2, self.meta["token_dim"]), dtype=np.float32)
        out[order] = self._arrays["tokens"][rows[order]]
        return out

    def _rows_at(self, positions: np.ndarray | Sequence[int]) -> np.ndarray:
        positions = np.array(positions, dtype=np.int64)  # a copy: views must not change under us
        return positions if self._index is None else self._index[positions]

    def _take(self, a: np.ndarray) -> np.ndarray:
        return a if self._index is None else a[self._index]

    # ---- views -------------------------------------------------------------------------------
    def subset(self, positions: np.ndarray | Sequence[int]) -> Container:
        """A view of some rows of this view (positions 0..len-1)."""
        return Container(
            self.path,
            self.meta,
            self._arrays,
            self.mmap,
            self._rows_at(positions),
            self._tables,
        )

    def filter(
        self,
        model: str | Sequence[str] | None = None,
        augmented: bool | None = None,
        variant: str | Sequence[str] | None = None,
    ) -> Container:
        """Rows of some models / variants; `augmented=False` keeps original images only."""
        keep = np.ones(len(self), dtype=bool)
        for key, wanted in (("model", model), ("variant", variant)):
            if wanted is None:
                continue
            wanted = [wanted] if isinstance(wanted, str) else list(wanted)
            table = self.table(key)
            unknown = [w for w in wanted if w not in table]
            if unknown:
                raise UsamError(f"{self.path}: no {key} {unknown}; the container has {table}")
            keep &= np.isin(self.code(key), [table.index(w) for w in wanted])
        if augmented is not None:
            keep &= (self.column("is_augmented") > 0.5) == bool(augmented)
        return self.subset(np.flatnonzero(keep))

    def split(self, val_fraction: float = 0.2, seed: int = 0) -> tuple[Container, Container]:
        """(train, val) by group: frames of one video never on both sides.

        Groups are ranked by a seeded hash of (dataset, group) and taken into val in that
        order until val holds about `val_fraction` of the rows (at least one group on each
        side). Depends only on the groups and their row counts, not on row order.
        """
        if not 0 < val_fraction < 1:
            raise UsamError(f"val_fraction must be between 0 and 1, got {val_fraction}")
        codes = self.code("group")
        groups, first, counts = np.unique(codes, return_index=True, return_counts=True)
        if len(groups) < 2:
            raise UsamError(
                f"{self.path}: {len(groups)} group(s) in these rows; a split by group needs two"
            )
        names, datasets = self.table("group"), self.table("dataset")
        dataset_of = self.code("dataset")[first]
        ranks = [
            (_group_rank(seed, datasets[d], names[g]), datasets[d], names[g])
            for g, d in zip(groups, dataset_of, strict=True)
        ]
        order = sorted(range(len(groups)), key=ranks.__getitem__)
        cum = np.cumsum(counts[order])
        k = int(np.argmin(np.abs(cum - val_fraction * len(self)))) + 1  # groups in val
        k = min(max(k, 1), len(groups) - 1)
        is_val = np.isin(codes, groups[order[:k]])
        return self.subset(np.flatnonzero(~is_val)), self.subset(np.flatnonzero(is_val))
