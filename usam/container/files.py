"""The container writer's file side: finding record files, reading their tensors, appending
rows to .npy files, writing meta.json and tables/, and the atomic swap onto `out`.

Everything is built in a hidden temporary folder beside `out` and renamed onto it only
when complete, so plain writes suffice inside it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usam.container.reader import CODES
from usam.container.rows import BadRecord
from usam.errors import UsamError
from usam.schema import TOKEN_DIM
from usam.storage import UMASK, MismatchedPair, make_temp_dir, read_verified


def walk(root: Path, out: Path) -> Iterator[tuple[str, bool, bool]]:
    """(stem, has .json, has .safetensors) for every record-like file pair under `root`, sorted."""
    for folder, dirs, files in os.walk(root):
        # hidden folders hold temporary builds (ours and stage 1's); never read our own output
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(folder, d) != out)
        jsons = {f[:-5] for f in files if f.endswith(".json") and not f.startswith(".")}
        tensors = {f[:-12] for f in files if f.endswith(".safetensors") and not f.startswith(".")}
        for stem in sorted(jsons | tensors):
            yield os.path.join(folder, stem), stem in jsons, stem in tensors


def record_tensors(stem: str, digest: str | None) -> dict[str, np.ndarray]:
    """The record's safetensors, checked against the JSON's `tensors_sha256` when it has one."""
    from safetensors.numpy import load

    try:
        data = read_verified(stem + ".safetensors", digest, stem + ".json")
    except MismatchedPair as err:
        raise BadRecord(f"{err}; re-extract it", "mismatched_pair", ".safetensors") from None
    except UsamError as err:
        raise BadRecord(str(err), suffix=".safetensors") from None
    try:
        return load(data)
    except Exception as err:  # safetensors raises its own error type for broken files
        raise BadRecord(f"unreadable tokens ({err})", suffix=".safetensors") from None


class NpyAppender:
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


class RowFiles:
    """tokens.npy, columns/<col>.npy and codes/<key>.npy of a build folder, appended together."""

    def __init__(self, folder: Path, columns: Sequence[str]) -> None:
        for sub in ("columns", "codes", "tables"):
            (folder / sub).mkdir()
        self.files = {"tokens": NpyAppender(folder / "tokens.npy", np.float32, (2, TOKEN_DIM))}
        self.files |= {c: NpyAppender(folder / "columns" / f"{c}.npy", np.float64) for c in columns}
        self.files |= {
            f"code:{c}": NpyAppender(folder / "codes" / f"{c}.npy", np.int32) for c in CODES
        }

    @property
    def rows(self) -> int:
        return self.files["tokens"].rows

    def append(self, block: dict[str, np.ndarray]) -> None:
        """One record's rows: "tokens", every column and every "code:<key>"."""
        for key, values in block.items():
            self.files[key].append(values)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def write_meta(folder: Path, meta: dict[str, Any], images: list[str], groups: list[str]) -> None:
    """tables/ and meta.json: plain writes, the folder is renamed into place only once complete."""
    with open(folder / "tables" / "image.json", "w") as f:
        json.dump(images, f)
    with open(folder / "tables" / "group.json", "w") as f:
        json.dump(groups, f)
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def build_folder(out: Path) -> Path:
    """A fresh hidden `.<out>.tmp-*` folder beside `out`, as open as the user's umask allows."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out)
    os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes it private; the container is not
    return tmp


def publish(tmp: Path, out: Path) -> None:
    """Rename the finished build onto `out`; an old container there is removed only after."""
    old = None
    if out.exists():
        old = make_temp_dir(out, "old")
        os.replace(out, old / "container")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
