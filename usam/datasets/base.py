"""What every dataset reader shares: the sample type, split names, subsampling, sharding.

A reader indexes its split once into lightweight `Entry` objects (paths only, no pixels),
then `load(entry)` reads one image and its instance masks. Iterating a reader yields
`Sample`s and skips broken ones: each skip is logged with the file and the reason and
counted in `reader.stats`; with `strict=True` the first broken sample raises instead.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from usam.errors import SampleError, UsamError
from usam.storage import relative_problem

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class Sample:
    """One image with its ground-truth instances."""

    image: np.ndarray  # H x W x 3, uint8, RGB
    masks: dict[int, np.ndarray]  # instance id -> H x W bool
    name: str  # image path relative to the dataset root (posix), unique within the dataset
    group: str  # video name, or image id for still-image datasets


@dataclass
class Entry:
    """Where one sample lives; cheap to create for millions of images."""

    name: str
    group: str
    index_in_group: int = 0  # frame position inside its video (0 for still images)
    info: dict[str, Any] = field(default_factory=dict)  # reader-specific: paths, ids, ...


@dataclass
class Stats:
    images: int = 0
    instances: int = 0
    empty: int = 0  # images read fine but without any instance
    unreadable: list[dict[str, str]] = field(default_factory=list)
    # parts of a readable sample left out, by reason (e.g. COCO polygons under 6 numbers)
    dropped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "instances": self.instances,
            "images_without_instances": self.empty,
            "unreadable": len(self.unreadable),
            "unreadable_files": self.unreadable,
            "dropped": dict(self.dropped),
        }


class DatasetReader:
    """Base class. Subclasses set `splits`, `video`, `layout` and implement `index`, `load`.

    `splits` maps usam's split names (train/val/test) to the dataset's own.
    `video=True` makes `sample=k` keep every k-th frame of each video; for still
    images it keeps every k-th image of the sorted split.
    `start`/`end` then keep a slice of that list (the seed's --start/--end).
    `max_instances` caps the instances of one sample: more is a counted skip (a noise
    image read as a mask would otherwise become thousands of "objects").
    Shards are contiguous blocks of the (subsampled) entry list, so a video's frames
    mostly stay in one shard; together the shards cover the split exactly once.
    """

    splits: dict[str, str] = {}
    video: bool = False
    layout: str = ""  # human description of the expected tree, used in error messages
    parallel_load: bool = True  # `load` keeps no state between calls: several threads may call it

    def __init__(
        self,
        *,
        root: str | Path,
        split: str = "val",
        name: str | None = None,
        sample: int = 1,
        shard_index: int = 0,
        shard_count: int = 1,
        strict: bool = False,
        start: int = 0,
        end: int | None = None,
        max_instances: int = 1000,
    ):
        self.root = Path(root).expanduser()
        self.name = name or type(self).__name__.lower()
        if split not in self.splits:
            have = ", ".join(self.splits) or "none"
            raise UsamError(
                f"dataset {self.name!r} has no split {split!r}; it has: {have} "
                f"(usam names splits train/val/test)"
            )
        self.split = split
        self.native_split = self.splits[split]
        if int(sample) < 1:
            raise UsamError(f"dataset.sample must be >= 1, got {sample}")
        if not 0 <= int(shard_index) < int(shard_count):
            raise UsamError(
                f"need 0 <= shard.index < shard.count, got {shard_index} / {shard_count}"
            )
        self.sample, self.shard_index, self.shard_count = (
            int(sample),
            int(shard_index),
            int(shard_count),
        )
        self.strict = bool(strict)
        self.start, self.end = int(start), (None if end is None else int(end))
        try:
            self.max_instances = int(max_instances)
        except (TypeError, ValueError):
            self.max_instances = 0
        if self.max_instances < 1:
            raise UsamError(f"dataset.max_instances must be an integer >= 1, got {max_instances!r}")
        self.stats = Stats()
        if not self.root.is_dir():
            raise UsamError(f"dataset root {self.root} does not exist; expected {self.layout}")
        self._entries: list[Entry] | None = None

    # -- to implement -------------------------------------------------------------------
    def index(self) -> list[Entry]:
        """All entries of the split, in a stable order."""
        raise NotImplementedError

    def load(self, entry: Entry) -> Sample:
        """Read one sample; raise SampleError naming the file when it is broken."""
        raise NotImplementedError

    def content_settings(self) -> dict[str, Any]:
        """Reader options that change what a sample holds (recorded with every extraction)."""
        return {}

    # -- shared ---------------------------------------------------------------------------
    def name_problem(self, name: str) -> str | None:
        """Why a name read from the dataset's own files may not be used as a path, or None."""
        problem = relative_problem(name)
        return f"{name!r} leaves the dataset root ({problem})" if problem else None

    def skip_indexed(self, path: Path | str, reason: str) -> None:
        """Something found unusable while indexing: logged and counted (once over all shards,
        since every shard indexes the whole split), or an error with strict=True."""
        if self.strict:
            raise SampleError(path, reason)
        log.warning("skipping %s: %s", path, reason)
        if self.shard_index == 0:
            self.stats.unreadable.append({"file": str(path), "reason": reason})

    def check_count(self, n: int, path: Path | str) -> None:
        """SampleError when a sample has more than `max_instances` instances."""
        if n > self.max_instances:
            raise SampleError(
                path,
                f"{n} instances, more than dataset.max_instances={self.max_instances} "
                "(not a label map of objects? raise the cap if it is)",
            )

    def require(self, path: Path, what: str) -> Path:
        """Fail at once, naming the path and the expected layout, when `path` is missing."""
        if not path.exists():
            raise UsamError(f"{path} not found ({what}); expected {self.layout}")
        return path

    @property
    def entries(self) -> list[Entry]:
        if self._entries is None:
            entries = self.index()
            if self.video:
                entries = [e for e in entries if e.index_in_group % self.sample == 0]
            else:
                entries = entries[:: self.sample]
            entries = entries[self.start : self.end]  # the seed's --start/--end, before sharding
            n, k, i = len(entries), self.shard_count, self.shard_index
            self._entries = entries[i * n // k : (i + 1) * n // k]
        return self._entries

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Sample]:
        for entry in self.entries:
            sample = self.try_load(entry)
            if sample is not None:
                yield sample

    def try_load(self, entry: Entry) -> Sample | None:
        """Load and count one entry; a broken one is logged, counted and returns None."""
        try:
            return self.count(self.load_checked(entry))
        except SampleError as err:
            return self.count(err)

    def load_checked(self, entry: Entry) -> Sample:
        """`load` plus the shape checks, counting nothing: safe in a background thread
        (usam.prefetch) when `parallel_load` is true."""
        sample = self.load(entry)
        check_sample(sample, entry.name)
        self.check_count(len(sample.masks), entry.name)
        return sample

    def count(self, loaded: Sample | SampleError) -> Sample | None:
        """The accounting of `try_load`, in the caller's thread: a SampleError is logged and
        counted (or raised with strict=True) and gives None."""
        if isinstance(loaded, SampleError):
            if self.strict:
                raise loaded
            log.warning("skipping %s: %s", loaded.path, loaded.reason)
            self.stats.unreadable.append({"file": loaded.path, "reason": loaded.reason})
            return None
        self.stats.images += 1
        self.stats.instances += len(loaded.masks)
        self.stats.empty += not loaded.masks
        return loaded


# -- file helpers shared by the readers -------------------------------------------------------
def _too_big(err: Exception) -> str:
    return (
        f"{err} (PIL's decompression-bomb guard: Image.MAX_IMAGE_PIXELS="
        f"{Image.MAX_IMAGE_PIXELS}; raise it in your own code if the file is genuine)"
    )


def read_rgb(path: Path) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB, or SampleError naming the file."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as err:
        raise SampleError(path, f"image too large: {_too_big(err)}") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise SampleError(path, f"unreadable image ({err})") from None


LABEL_MODES = ("P", "L", "1")  # palette, 8-bit grey, 1-bit: one id per pixel


def read_label_png(path: Path) -> np.ndarray:
    """A palette or 8-bit grey PNG as its raw index values (object or class id per pixel).

    Other modes are refused: an RGB mask converted to grey turns every colour edge into a
    new "object", and a 16-bit image is not an id map any dataset here ships.
    """
    try:
        with Image.open(path) as im:
            if im.mode not in LABEL_MODES:
                raise SampleError(
                    path,
                    f"mask is a {im.mode} image; expected a palette (P) or 8-bit single-channel "
                    "(L) PNG whose pixel values are ids",
                )
            return np.asarray(im)
    except Image.DecompressionBombError as err:
        raise SampleError(path, f"mask too large: {_too_big(err)}") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise SampleError(path, f"unreadable mask ({err})") from None


def masks_from_labels(labels: np.ndarray, ignore: tuple[int, ...] = (0,)) -> dict[int, np.ndarray]:
    """One boolean mask per label value present, except `ignore` (background, void)."""
    ids = [int(v) for v in np.unique(labels) if int(v) not in ignore]
    return {i: labels == i for i in ids}


def check_sample(sample: Sample, name: str) -> None:
    """Shape checks every reader gets for free: RGB uint8 image, masks of the image's size."""
    img = sample.image
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise SampleError(name, f"image is {img.dtype} {img.shape}, expected H x W x 3 uint8")
    h, w = img.shape[:2]
    for iid, m in sample.masks.items():
        if m.shape != (h, w):
            raise SampleError(
                name, f"mask of instance {iid} is {m.shape[1]}x{m.shape[0]}, image is {w}x{h}"
            )
    sample.masks = {i: m.astype(bool, copy=False) for i, m in sample.masks.items()}
