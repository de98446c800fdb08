"""Files that other stages read: always written to a temporary name, then renamed.

A reader never sees half a file: a crash leaves at most a `.<name>.tmp-<pid>@<host>-*`
file or folder, which no stage reads and the next run removes (`remove_stale_temps`).
JSON is strict (NaN is written as null and read back as NaN where a number is expected
by the caller); tensors go to safetensors, never pickle. A JSON that describes a tensor
file holds that file's SHA-256 (`write_tensors` returns it), so a reader can tell a pair
written together from a half-replaced one. `inside` is the one guard every writer and
reader uses for names that come from data: they must stay inside their folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from usam.errors import UsamError

log = logging.getLogger(__name__)

# the process umask, read once at import (os.umask can only be read by setting it)
UMASK = os.umask(0)
os.umask(UMASK)

# -- names from data ----------------------------------------------------------------------------


def relative_problem(name: str) -> str | None:
    """Why `name` is not a plain relative path (absolute, drive, `..`, NUL, empty), or None."""
    if not isinstance(name, str) or not name:
        return "empty or not text"
    if "\x00" in name:
        return "contains NUL"
    parts = PurePosixPath(name.replace("\\", "/"))
    if parts.is_absolute() or re.match(r"[A-Za-z]:", name):
        return "is absolute"
    if ".." in parts.parts:
        return "has '..' segments"
    if parts.parts in ((), (".",)):
        return "names the folder itself"
    return None


def inside(root: str | Path, name: str, what: str = "file name") -> Path:
    """`root / name`, or UsamError when `name` leaves `root` (textually or through a link).

    Every name that comes from data (dataset lists, annotation files, archive members,
    record names) goes through this before anything is written under it.
    """
    problem = relative_problem(name)
    if problem:
        raise UsamError(f"{what} {name!r} is not a plain relative path ({problem}); refusing it")
    root = Path(root)
    path = root / name
    if not path.resolve().is_relative_to(root.resolve()):  # e.g. through a symlink
        raise UsamError(f"{what} {name!r} resolves outside {root}; refusing it")
    return path


# -- temporary files of killed runs -------------------------------------------------------------
_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
_TEMP = re.compile(r"^\..+\.(?:tmp|old)-(?:(?P<pid>\d+)@(?P<host>[A-Za-z0-9._]+)-)?")
STALE_AFTER = 6 * 3600  # seconds: a temp whose owner cannot be checked (other host) is stale after


def temp_prefix(name: str, kind: str = "tmp") -> str:
    """`.<name>.tmp-<pid>@<host>-`: the owner is in the name, so a later run can tell a
    killed run's leftovers from a live parallel run's file (shards share folders)."""
    return f".{name}.{kind}-{os.getpid()}@{_HOST}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: alive
    return True


def is_stale_temp(path: Path, now: float | None = None) -> bool:
    """A temporary file/folder of ours whose writer is gone: its process is dead (same host),
    or it was untouched for `STALE_AFTER` seconds (other host, or older name format)."""
    m = _TEMP.match(path.name)
    if not m:
        return False
    if m["pid"] and m["host"] == _HOST:
        pid = int(m["pid"])
        return pid != os.getpid() and not _alive(pid)
    try:
        age = (now or time.time()) - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_AFTER


def remove_stale_temps(folder: str | Path, prefix: str = "") -> list[Path]:
    """Delete the stale temporaries (see `is_stale_temp`) in `folder` whose name starts
    with `.<prefix>`; returns what was removed. Never touches anything else."""
    folder = Path(folder)
    removed = []
    try:
        names = [n for n in os.listdir(folder) if n.startswith("." + prefix)]
    except (FileNotFoundError, NotADirectoryError):
        return removed
    now = time.time()
    for n in names:
        path = folder / n
        if not is_stale_temp(path, now):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) left by a killed run in %s", len(removed), folder)
    return removed


def make_temp_dir(beside: Path, kind: str = "tmp") -> Path:
    """A hidden temporary folder beside `beside`, named with its owner (see `temp_prefix`)."""
    return Path(tempfile.mkdtemp(prefix=temp_prefix(beside.name, kind), dir=beside.parent))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; shared disks need the usual mode
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


def json_plain(obj: Any) -> Any:
    """`obj` as it reads back from our JSON (tuples -> lists, NaN -> None, keys -> str)."""
    return json.loads(json.dumps(_plain(obj), allow_nan=False))


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


def write_bytes(path: str | Path, data: bytes) -> str:
    """Write `data` atomically; returns its SHA-256 (for the JSON that describes the file)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def write_tensors(
    path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> str:
    """numpy arrays -> safetensors, atomically; returns the file's SHA-256."""
    from safetensors.numpy import save

    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    return write_bytes(path, save(arrays, metadata=metadata))


class MismatchedPair(UsamError):
    """A tensor file that is not the one its JSON describes."""


def read_verified(path: str | Path, sha256: str | None, described_by: str | Path) -> bytes:
    """The bytes of `path`, checked against the digest its JSON (`described_by`) recorded.

    A mismatch means the pair is not one version (e.g. a rewrite killed between its two
    renames): UsamError naming both files. `sha256=None` (files from before digests were
    recorded) reads unchecked.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsamError(f"{path} not found (described by {described_by})") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise MismatchedPair(
            f"{path} is not the file {described_by} describes (sha256 differs: the pair "
            "was half replaced or edited)"
        )
    return data
