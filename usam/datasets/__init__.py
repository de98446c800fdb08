"""Dataset readers: one module per on-disk layout, all yielding `Sample`s."""

from usam.datasets.base import DatasetReader, Entry, Sample, SPLITS

__all__ = ["DatasetReader", "Entry", "Sample", "SPLITS"]
