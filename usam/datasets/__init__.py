"""Dataset readers: one module per on-disk layout, all yielding `Sample`s."""

from usam.datasets.base import SPLITS, DatasetReader, Entry, Sample

__all__ = ["DatasetReader", "Entry", "Sample", "SPLITS"]
