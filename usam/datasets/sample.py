"""The bundled sample: 2 tiny synthetic videos in DAVIS layout, shipped inside the package.

It lets every stage run end to end without downloading a dataset (tests, first tries).
The data is made by scripts/make_sample.py; see usam/sample/README.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from usam.datasets.davis import Davis

SAMPLE_ROOT = Path(__file__).resolve().parent.parent / "sample"


class SampleDataset(Davis):
    """DAVIS reader over the packaged sample; `root=None` means the copy in the package."""

    splits: ClassVar[dict[str, str]] = {"val": "val"}

    def __init__(
        self, *, root: str | Path | None = None, resolution: str = "480p", **kwargs
    ) -> None:
        kwargs["name"] = kwargs.get("name") or "sample"
        super().__init__(
            root=SAMPLE_ROOT if root is None else root, resolution=resolution, **kwargs
        )
