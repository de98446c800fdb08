"""Files that other stages read: always written to a temporary name, then renamed.

A reader never sees half a file: a crash leaves at most a `*.tmp-*` file, which no
stage reads. JSON is strict (NaN is written as null and read back as NaN where a
number is expected by the caller); tensors go to safetensors, never pickle.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from usam.errors import UsamError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; shared disks need the usual mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _plain(obj: Any) -> Any:
    """numpy scalars/arrays -> Python; NaN/inf -> None so the JSON stays standard."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        obj = float(obj)
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_plain(obj), indent=1, allow_nan=False) + "\n")
    return Path(path)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsamError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsamError(f"{path} is not valid JSON ({err})") from None


def write_tensors(
    path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> Path:
    """numpy arrays -> safetensors, atomically."""
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(arrays, str(tmp), metadata=metadata)
    return Path(path)


def read_tensors(path: str | Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    path = Path(path)
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise UsamError(f"{path} not found") from None
    except Exception as err:  # safetensors raises its own SafetensorError for broken headers
        raise UsamError(f"{path} is not a readable safetensors file ({err})") from None
