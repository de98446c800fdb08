"""The SAM 2 checkpoints usam knows: one row per (version, size), as sam2's own build_sam.py
keeps its tables. Each row names the model config inside the installed `sam2` package, Meta's
file name (also its name in the hub repository), Meta's download URL and the Hugging Face hub id.

The model loaders (`usam.sam.SamModels`, `UncertainSAM.from_pretrained`, `usam.video`), the hub
(`usam.hub`), the checkpoint name parser and the downloader (`usam.download_checkpoints`) all
read this table. `conf/sam_model/*.yaml` choose a version, sizes and where the files are; their
`checkpoints` / `configs` / `urls` maps may replace a row's file name, config or URL per size
(a local mirror, a config file of one's own), null keeping the row's.

Pure Python (no torch, no Hydra), like usam.schema.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usam.errors import UsamError


@dataclass(frozen=True)
class SamCheckpoint:
    version: str  # usam's name: sam2.1 or sam2.0 (Meta's files say "sam2" for the latter)
    size: str  # one of usam.schema.SIZES
    config: str  # model config inside the installed sam2 package
    file: str  # Meta's file name, the same in the hub repository
    url: str  # Meta's download server
    hub_id: str  # Hugging Face model repository


_META = "https://dl.fbaipublicfiles.com/segment_anything_2"

TABLE = (
    SamCheckpoint(
        "sam2.1",
        "tiny",
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        "sam2.1_hiera_tiny.pt",
        f"{_META}/092824/sam2.1_hiera_tiny.pt",
        "facebook/sam2.1-hiera-tiny",
    ),
    SamCheckpoint(
        "sam2.1",
        "small",
        "configs/sam2.1/sam2.1_hiera_s.yaml",
        "sam2.1_hiera_small.pt",
        f"{_META}/092824/sam2.1_hiera_small.pt",
        "facebook/sam2.1-hiera-small",
    ),
    SamCheckpoint(
        "sam2.1",
        "base_plus",
        "configs/sam2.1/sam2.1_hiera_b+.yaml",
        "sam2.1_hiera_base_plus.pt",
        f"{_META}/092824/sam2.1_hiera_base_plus.pt",
        "facebook/sam2.1-hiera-base-plus",
    ),
    SamCheckpoint(
        "sam2.1",
        "large",
        "configs/sam2.1/sam2.1_hiera_l.yaml",
        "sam2.1_hiera_large.pt",
        f"{_META}/092824/sam2.1_hiera_large.pt",
        "facebook/sam2.1-hiera-large",
    ),
    SamCheckpoint(
        "sam2.0",
        "tiny",
        "configs/sam2/sam2_hiera_t.yaml",
        "sam2_hiera_tiny.pt",
        f"{_META}/072824/sam2_hiera_tiny.pt",
        "facebook/sam2-hiera-tiny",
    ),
    SamCheckpoint(
        "sam2.0",
        "small",
        "configs/sam2/sam2_hiera_s.yaml",
        "sam2_hiera_small.pt",
        f"{_META}/072824/sam2_hiera_small.pt",
        "facebook/sam2-hiera-small",
    ),
    SamCheckpoint(
        "sam2.0",
        "base_plus",
        "configs/sam2/sam2_hiera_b+.yaml",
        "sam2_hiera_base_plus.pt",
        f"{_META}/072824/sam2_hiera_base_plus.pt",
        "facebook/sam2-hiera-base-plus",
    ),
    SamCheckpoint(
        "sam2.0",
        "large",
        "configs/sam2/sam2_hiera_l.yaml",
        "sam2_hiera_large.pt",
        f"{_META}/072824/sam2_hiera_large.pt",
        "facebook/sam2-hiera-large",
    ),
)
# every reader goes through this dict (not TABLE), so a test can swap one row for all of them
CHECKPOINTS: dict[tuple[str, str], SamCheckpoint] = {(r.version, r.size): r for r in TABLE}
VERSIONS = tuple(dict.fromkeys(r.version for r in TABLE))  # newest first

# sam_model config key -> the SamCheckpoint field it replaces
_OVERRIDES = {"checkpoints": "file", "configs": "config", "urls": "url"}


def sizes(version: str) -> list[str]:
    """The sizes the table has for `version`; an unknown version is a UsamError."""
    found = [s for v, s in CHECKPOINTS if v == str(version)]
    if not found:
        versions = list(dict.fromkeys(v for v, _ in CHECKPOINTS))
        raise UsamError(f"SAM version {version!r} is unknown; use one of {', '.join(versions)}")
    return found


def lookup(version: str, size: str) -> SamCheckpoint:
    """The row of (version, size); an unknown one is a UsamError listing the known ones."""
    known = sizes(version)
    if str(size) not in known:
        raise UsamError(f"SAM {version} size {size!r} is unknown; use one of {', '.join(known)}")
    return CHECKPOINTS[str(version), str(size)]


def resolve(version: str, size: str, overrides: Mapping[str, Any] | None = None) -> SamCheckpoint:
    """The row of (version, size) with a sam_model config's own choices on top: a non-null
    `checkpoints[size]`, `configs[size]` or `urls[size]` of `overrides` replaces the row's."""
    row = lookup(version, size)
    given = {}
    for key, field in _OVERRIDES.items():
        value = ((overrides or {}).get(key) or {}).get(size)
        if value is not None:
            given[field] = str(value)
    return dataclasses.replace(row, **given)


def parse_checkpoint_name(path: str | Path) -> tuple[str | None, str | None]:
    """(version, size) from a Meta checkpoint file name, (None, None) where it does not say."""
    name = Path(path).name
    hits = [r for r in CHECKPOINTS.values() if Path(r.file).stem in name]
    if not hits:
        return None, None
    # the longest name that fits: sam2.1_hiera_tiny.pt is not a sam2_hiera_tiny.pt
    best = max(hits, key=lambda r: len(r.file))
    return best.version, best.size


def parse_hub_id(repo_id: str) -> tuple[str, str] | None:
    """(version, size) of a SAM 2 hub id (facebook/sam2.1-hiera-base-plus), None otherwise."""
    for (version, size), row in CHECKPOINTS.items():
        if row.hub_id == str(repo_id):
            return version, size
    return None
